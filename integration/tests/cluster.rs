//! Three-node clusters under failure: kill -9 of the leader or of every node, a wiped node
//! rejoining, and cut links. Throughout, every acknowledged write must survive on every
//! replica at its acknowledged revision, nothing never written may appear, and the
//! replicas must end identical.

use std::time::Duration;

use flotilla_integration::cluster::{Cluster, ClusterOptions};
use flotilla_integration::eventually;
use flotilla_integration::workload::{
    SharedLog, WriteLog, Writers, assert_converged, put, read_table,
};
use tonic::transport::Channel;

/// A cluster's nodes start, elect and create tables well within this.
const SETUP: Duration = Duration::from_secs(30);
/// An election after a leader failure (about 1 s at 50 ms ticks), with plenty of slack.
const FAILOVER: Duration = Duration::from_secs(10);
/// Writers acknowledge this many more writes within this after a failure.
const RESUME: Duration = Duration::from_secs(15);
/// Replicas (including restarted or wiped ones) catch up within this.
const CONVERGE: Duration = Duration::from_secs(60);
const WRITERS: usize = 6;

/// One cluster at a time: these tests measure failover and catch-up against deadlines,
/// and four 3-process clusters sharing the CI machine's two cores distort exactly that
/// (it made elections and rejoins miss their deadlines now and then).
static ONE_CLUSTER_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Every node with its channel, for [`assert_converged`].
fn all_nodes(cluster: &Cluster) -> Vec<(u64, Channel)> {
    Cluster::ids().map(|id| (id, cluster.channel(id))).collect()
}

fn all_channels(cluster: &Cluster) -> Vec<Channel> {
    cluster.channels(&Cluster::ids().collect::<Vec<_>>())
}

/// The nodes other than `id`.
fn others(id: u64) -> Vec<u64> {
    Cluster::ids().filter(|&o| o != id).collect()
}

/// Writes unique keys `{prefix}-{n}` through node `id` until one is acknowledged (true) or
/// `timeout` passes (false).
async fn write_through(
    cluster: &Cluster,
    id: u64,
    table: &str,
    log: &SharedLog,
    prefix: &str,
    timeout: Duration,
) -> bool {
    let mut n = 0u32;
    eventually(timeout, async || {
        n += 1;
        let key = format!("{prefix}-{n:04}").into_bytes();
        put(cluster.channel(id), log, table, key, b"direct".to_vec())
            .await
            .is_ok()
    })
    .await
}

/// A write through each node of `vias` succeeds within [`FAILOVER`].
async fn assert_writes_through(
    cluster: &Cluster,
    vias: &[u64],
    table: &str,
    log: &SharedLog,
    phase: &str,
    while_what: &str,
) {
    for &via in vias {
        assert!(
            write_through(
                cluster,
                via,
                table,
                log,
                &format!("{phase}-via{via}"),
                FAILOVER
            )
            .await,
            "a write through node {via} succeeds while {while_what}"
        );
    }
}

/// Starts a cluster, checks every node lists all three members, creates `table` and
/// returns the cluster with the table's leader.
async fn setup(root: &std::path::Path, opts: ClusterOptions, table: &str) -> (Cluster, u64) {
    let cluster = Cluster::start(root, opts).await;
    for id in Cluster::ids() {
        assert!(
            eventually(SETUP, async || cluster
                .member_list(id)
                .await
                .is_some_and(|m| m.members.len() == 3))
            .await,
            "node {id} lists 3 members: {:?}",
            cluster.member_list(id).await
        );
    }
    cluster.create_table(table, SETUP).await;
    let leader = cluster.wait_leader(table, SETUP).await;
    (cluster, leader)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill9_leader_under_writes_loses_no_acknowledged_write() {
    let _serial = ONE_CLUSTER_AT_A_TIME.lock().await;
    const TABLE: &str = "failover";
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut cluster, leader) = setup(dir.path(), ClusterOptions::default(), TABLE).await;

    let log = SharedLog::default();
    let writers = Writers::start(TABLE, "", WRITERS, all_channels(&cluster), log.clone());
    assert!(
        writers.wait_acked(500, Duration::from_secs(60)).await,
        "writers made progress before the kill ({} acknowledged)",
        writers.acked()
    );

    cluster.kill9(leader).await;
    let at_kill = writers.acked();
    let new_leader = cluster.wait_leader(TABLE, FAILOVER).await;
    assert_ne!(new_leader, leader, "a surviving node leads");
    assert!(
        writers.wait_acked(at_kill + 300, RESUME).await,
        "writes resume after the leader's kill ({at_kill} at the kill, {} now)",
        writers.acked()
    );
    let log = writers.stop().await;

    cluster.restart(leader).await;
    let data = assert_converged(&all_nodes(&cluster), TABLE, &log, CONVERGE).await;
    println!(
        "{} acknowledged, {} present on all 3 nodes; leader {leader} killed, {new_leader} took over",
        log.acked.len(),
        data.len()
    );
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn restart_all_three_keeps_every_acknowledged_write() {
    let _serial = ONE_CLUSTER_AT_A_TIME.lock().await;
    const TABLE: &str = "restart";
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut cluster, _) = setup(dir.path(), ClusterOptions::default(), TABLE).await;

    let log = SharedLog::default();
    let writers = Writers::start(TABLE, "", WRITERS, all_channels(&cluster), log.clone());
    assert!(
        writers.wait_acked(1_000, Duration::from_secs(60)).await,
        "writers made progress ({} acknowledged)",
        writers.acked()
    );
    // Kill mid-load: the writers are still running.
    cluster.kill9_all().await;
    let log_after_kill = writers.stop().await;

    cluster.restart_all().await;
    cluster.wait_leader(TABLE, SETUP).await;
    assert_converged(&all_nodes(&cluster), TABLE, &log_after_kill, CONVERGE).await;

    // And the cluster takes writes again, which reach every node.
    assert!(
        write_through(&cluster, 1, TABLE, &log, "after-restart", FAILOVER).await,
        "a write after the restart is acknowledged"
    );
    let log = log.lock().expect("log lock").clone();
    let data = assert_converged(&all_nodes(&cluster), TABLE, &log, CONVERGE).await;
    println!(
        "{} acknowledged, {} present on all 3 nodes after restarting all",
        log.acked.len(),
        data.len()
    );
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn wiped_node_rejoins_via_snapshot() {
    let _serial = ONE_CLUSTER_AT_A_TIME.lock().await;
    const TABLE: &str = "snapshot";
    let dir = tempfile::tempdir().expect("tempdir");
    // Logs keep only 100 entries, so after thousands of writes a fresh node can only
    // catch up from a snapshot.
    let opts = ClusterOptions {
        extra_args: vec!["--raft.log-retention-entries".into(), "100".into()],
        ..ClusterOptions::default()
    };
    let (mut cluster, leader) = setup(dir.path(), opts, TABLE).await;
    let wiped = others(leader)[0];

    let log = SharedLog::default();
    let writers = Writers::start(TABLE, "", WRITERS, all_channels(&cluster), log.clone());
    assert!(
        writers.wait_acked(3_000, Duration::from_secs(120)).await,
        "writers made progress ({} acknowledged)",
        writers.acked()
    );

    // Writers keep going while the follower is wiped and rejoins.
    cluster.wipe_and_restart(wiped).await;
    let at_restart = writers.acked();
    assert!(
        writers.wait_acked(at_restart + 300, RESUME).await,
        "writes continue while node {wiped} rejoins ({at_restart} at the restart, {} now)",
        writers.acked()
    );
    let log: WriteLog = writers.stop().await;

    // Every node, the wiped one included, holds every acknowledged write at its revision,
    // and all three hold the very same table.
    let data = assert_converged(&all_nodes(&cluster), TABLE, &log, CONVERGE).await;
    // The gauge is refreshed on its own schedule: wait for it, never read it once.
    let series = format!("flotilla_raft_snapshots_installed{{table=\"{TABLE}\"}}");
    let mut installed = None;
    let caught_up = eventually(CONVERGE, async || {
        installed = cluster.node(wiped).metric(&series).await;
        installed.is_some_and(|n| n >= 1.0)
    })
    .await;
    assert!(
        caught_up,
        "node {wiped} caught up through a raft snapshot (installed: {installed:?})"
    );
    println!(
        "{} acknowledged, {} present on all 3 nodes; node {wiped} wiped and rejoined",
        log.acked.len(),
        data.len()
    );
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn link_cut_majority_keeps_serving() {
    let _serial = ONE_CLUSTER_AT_A_TIME.lock().await;
    const TABLE: &str = "links";
    let dir = tempfile::tempdir().expect("tempdir");
    let opts = ClusterOptions {
        proxies: true,
        ..ClusterOptions::default()
    };
    let (cluster, leader) = setup(dir.path(), opts, TABLE).await;

    let log = SharedLog::default();
    let writers = Writers::start(TABLE, "", WRITERS, all_channels(&cluster), log.clone());
    assert!(
        writers.wait_acked(200, Duration::from_secs(60)).await,
        "writers made progress ({} acknowledged)",
        writers.acked()
    );

    // Phase 1: cut the leader from one follower. Every node still reaches another, and
    // the leader with the other follower is a majority.
    let [cut_off, other] = <[u64; 2]>::try_from(others(leader)).expect("two followers");
    cluster.cut(leader, cut_off);
    writers.set_targets(cluster.channels(&[leader, other]));
    let while_what = format!("{leader} and {cut_off} are cut apart");
    assert_writes_through(&cluster, &[leader, other], TABLE, &log, "cut1", &while_what).await;
    writers
        .assert_more_acked(200, RESUME, "through the majority side")
        .await;
    cluster.heal(leader, cut_off);
    writers.set_targets(all_channels(&cluster));

    // Phase 2: isolate the current leader completely.
    let old = cluster.wait_leader(TABLE, FAILOVER).await;
    let majority = others(old);
    cluster.isolate(old);
    writers.set_targets(cluster.channels(&majority));
    let new = cluster.wait_leader_among(TABLE, &majority, FAILOVER).await;
    let while_what = format!("{old} is isolated");
    assert_writes_through(&cluster, &majority, TABLE, &log, "cut2", &while_what).await;
    writers
        .assert_more_acked(200, RESUME, &format!("through the new leader {new}"))
        .await;
    // CheckQuorum: the old leader notices it lost its majority and steps down. It must
    // answer Status to count: silence proves nothing.
    assert!(
        eventually(FAILOVER, async || {
            cluster
                .leader_seen_by(old, TABLE)
                .await
                .is_some_and(|l| l != old)
        })
        .await,
        "isolated node {old} still reports itself leader (or no status) after {FAILOVER:?}"
    );
    // It really is cut off: it has none of the writes acknowledged since it was isolated.
    let on_old = read_table(cluster.channel(old), TABLE)
        .await
        .expect("read the isolated node");
    {
        let log = log.lock().expect("log lock");
        let since = log
            .acked
            .keys()
            .filter(|k| k.starts_with(b"cut2-"))
            .collect::<Vec<_>>();
        assert!(!since.is_empty());
        for key in since {
            assert!(
                !on_old.contains_key(key),
                "isolated node {old} has {}",
                String::from_utf8_lossy(key)
            );
        }
    }

    cluster.heal_all();
    writers.set_targets(all_channels(&cluster));
    let mark = writers.acked();
    if !writers.wait_acked(mark + 100, RESUME).await {
        for id in Cluster::ids() {
            eprintln!(
                "DIAG node {id}: {:?}",
                cluster.status(id).await.map(|s| s.tables)
            );
        }
        panic!(
            "writers keep going through every node after the heal ({mark} then {})",
            writers.acked()
        );
    }

    // Phase 3: a silent partition. The leader's links stay open but carry nothing, so
    // only raft timeouts and HTTP/2 keepalives can notice.
    let silent = cluster.wait_leader(TABLE, FAILOVER).await;
    let majority = others(silent);
    for &o in &majority {
        cluster.blackhole(silent, o);
    }
    writers.set_targets(cluster.channels(&majority));
    let replacement = cluster.wait_leader_among(TABLE, &majority, FAILOVER).await;
    let what = format!("through {replacement} while {silent} is blackholed");
    writers.assert_more_acked(100, RESUME, &what).await;
    cluster.heal_all();
    writers.set_targets(all_channels(&cluster));
    writers
        .assert_more_acked(100, RESUME, "after the blackhole heals")
        .await;
    let log = writers.stop().await;
    let data = assert_converged(&all_nodes(&cluster), TABLE, &log, CONVERGE).await;
    let leader_after = cluster.wait_leader(TABLE, FAILOVER).await;
    println!(
        "{} acknowledged, {} present on all 3 nodes; leaders {leader} -> {old} -> {new} -> {replacement} -> {leader_after}",
        log.acked.len(),
        data.len()
    );
    cluster.stop().await;
}
