//! The seeded fault harness (`flotilla_integration::chaos`, docs/CHAOS.md): a fault
//! schedule over a leader cluster and a follower cluster under a register workload, then
//! a linearizability check of the whole history and a digest comparison of every replica;
//! and a self-test showing the harness catches a stale read.
//!
//! `CHAOS_SEED` and `CHAOS_SECONDS` choose the schedule (`scripts/chaos.sh` sets them).

use std::sync::Arc;
use std::time::Duration;

use flotilla_integration::chaos::history::History;
use flotilla_integration::chaos::register::{ReadMode, RegisterClient, channel, register};
use flotilla_integration::chaos::{self, ChaosOptions};
use flotilla_integration::cluster::{Cluster, ClusterOptions};
use flotilla_integration::eventually;
use flotilla_integration::linearizability::{Checker, Failure};
use tonic::transport::Channel;

/// One cluster at a time: two test clusters on the CI machine's two cores would distort
/// the elections and catch-ups the deadlines here measure.
static ONE_CLUSTER_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A cluster starts, elects and creates a table within this.
const SETUP: Duration = Duration::from_secs(30);
/// A write through a healthy majority is acknowledged within this.
const WRITE: Duration = Duration::from_secs(15);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seeded_faults_keep_the_history_linearizable_and_followers_identical() {
    let _serial = ONE_CLUSTER_AT_A_TIME.lock().await;
    let options = ChaosOptions::from_env();
    println!(
        "CHAOS_SEED={} CHAOS_SECONDS={} (set them to choose another schedule)",
        options.seed,
        options.duration.as_secs()
    );
    let dir = tempfile::tempdir().expect("tempdir");
    match chaos::run(&options, dir.path()).await {
        Ok(summary) => println!("{summary}"),
        Err(report) => {
            // Keep the nodes' data for a look inside.
            let kept = dir.keep();
            panic!("{report}\ndata dirs kept in {}", kept.display());
        }
    }
}

/// Puts fresh values into `key` through `via` until one is acknowledged; returns it.
async fn put_acked(client: &mut RegisterClient, via: &Channel, table: &str, key: &str) -> Vec<u8> {
    let mut acked = None;
    let ok = eventually(WRITE, async || {
        acked = client.put(via.clone(), table, key).await.ok();
        acked.is_some()
    })
    .await;
    assert!(
        ok,
        "a put through the majority is acknowledged within {WRITE:?}"
    );
    acked.expect("acknowledged value")
}

/// The harness can fail: serializable reads from a node cut off from the majority, counted
/// as linearizable, return a value older than a write acknowledged before they began, and
/// the checker must say so. Deterministic: the isolated node cannot learn the new value.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_reads_from_an_isolated_node_are_caught() {
    let _serial = ONE_CLUSTER_AT_A_TIME.lock().await;
    const TABLE: &str = "stale";
    const KEY: &str = "k0";
    let dir = tempfile::tempdir().expect("tempdir");
    let cluster = Cluster::start(
        dir.path(),
        ClusterOptions {
            proxies: true,
            ..ClusterOptions::default()
        },
    )
    .await;
    cluster.create_table(TABLE, SETUP).await;
    let leader = cluster.wait_leader(TABLE, SETUP).await;
    // Isolate a follower: the majority keeps its leader and takes writes at once.
    let isolated = Cluster::ids().find(|&id| id != leader).expect("a follower");
    let (via, isolated_channel) = (
        channel(cluster.api_addr(leader)),
        channel(cluster.api_addr(isolated)),
    );

    let history = Arc::new(History::new());
    let mut writer = RegisterClient::new(1, history.clone(), ReadMode::Linearizable);
    let mut stale_reader = RegisterClient::new(2, history.clone(), ReadMode::Serializable);
    let mut honest_reader = RegisterClient::new(3, history.clone(), ReadMode::Linearizable);

    let old = put_acked(&mut writer, &via, TABLE, KEY).await;
    // The isolated-to-be node has applied the old value (an unrecorded probe).
    let mut probe = RegisterClient::new(9, Arc::new(History::new()), ReadMode::Serializable);
    assert!(
        eventually(SETUP, async || probe
            .read(isolated_channel.clone(), TABLE, KEY)
            .await
            == Some(Some(old.clone())))
        .await,
        "node {isolated} applies the first write"
    );
    cluster.isolate(isolated);
    let new = put_acked(&mut writer, &via, TABLE, KEY).await;
    let observed = stale_reader
        .read(isolated_channel.clone(), TABLE, KEY)
        .await
        .expect("a serializable read on the isolated node answers from its replica");
    assert_eq!(
        observed,
        Some(old.clone()),
        "the isolated node still holds the old value"
    );
    // A linearizable read there must not answer (it cannot reach the leader); if it
    // answers, it must not be stale either, which the check below would catch.
    let honest = honest_reader.read(isolated_channel, TABLE, KEY).await;
    println!("linearizable read on isolated node {isolated}: {honest:?}");

    let operations = history.operations();
    match Checker::default().check(&operations) {
        Err(Failure::NotLinearizable(violation)) => {
            println!("caught, as it must be:\n{violation}");
            assert_eq!(violation.key, register(TABLE, KEY));
            assert!(
                violation
                    .window
                    .iter()
                    .any(|op| op.client == 2 && op.ret.is_some()),
                "the window shows the stale read: {violation}"
            );
        }
        other => {
            panic!("a read of {old:?} after {new:?} was acknowledged must not linearize: {other:?}")
        }
    }
    // Without the serializable read, the same history is linearizable.
    let honest_only: Vec<_> = operations.into_iter().filter(|op| op.client != 2).collect();
    let report = Checker::default()
        .check(&honest_only)
        .unwrap_or_else(|failure| panic!("the history without the stale read: {failure}"));
    println!("without the serializable read: {report}");
    cluster.stop().await;
}
