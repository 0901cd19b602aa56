//! A 1-node leader cluster and a 1-node follower cluster as real processes on loopback:
//! steady writes replicate with the leader's revisions; writes through the follower are
//! read back at once; a follower killed with -9 while the leader writes past its log
//! retention comes back by snapshot; a brand-new follower of a leader with data catches
//! up. After each step both copies are compared key by key (values and revisions).

use std::time::Duration;

use flotilla_integration::cluster::{port, reserve_ports};
use flotilla_integration::workload::read_table;
use flotilla_integration::{Process, eventually};
use flotilla_proto::regatta::v1::{
    CreateTableRequest, PutRequest, RangeRequest, tables_client::TablesClient,
};

const START: Duration = Duration::from_secs(30);
const CONVERGE: Duration = Duration::from_secs(60);

async fn put(p: &Process, key: String, value: &[u8]) -> u64 {
    p.kv()
        .await
        .put(PutRequest {
            table: b"t".to_vec(),
            key: key.into_bytes(),
            value: value.to_vec(),
            prev_kv: false,
        })
        .await
        .expect("put")
        .into_inner()
        .header
        .expect("header")
        .revision
}

async fn assert_same(leader: &Process, follower: &Process) {
    let want = read_table(leader.channel().await, "t")
        .await
        .expect("leader read");
    let same = eventually(CONVERGE, async || {
        read_table(follower.channel().await, "t")
            .await
            .ok()
            .as_ref()
            == Some(&want)
    })
    .await;
    let got = read_table(follower.channel().await, "t")
        .await
        .map(|d| d.len());
    assert!(
        same,
        "follower differs: leader {} keys, follower {got:?}",
        want.len()
    );
}

async fn follower(dir: &std::path::Path, leader_replication: u16) -> Process {
    Process::start_role(
        "follower",
        dir,
        "127.0.0.1:0",
        &[
            "--replication.leader-address".into(),
            format!("http://127.0.0.1:{leader_replication}"),
            "--replication.reconcile-interval".into(),
            "200ms".into(),
        ],
        START,
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follower_keeps_up_survives_kill9_past_retention_and_new_followers_catch_up() {
    let ports = reserve_ports(1);
    let replication = port(&ports[0]);
    drop(ports);
    let leader_dir = tempfile::tempdir().expect("dir");
    let leader = Process::start_with(
        leader_dir.path(),
        "127.0.0.1:0",
        &[
            "--replication.address".into(),
            format!("127.0.0.1:{replication}"),
            "--raft.log-retention-entries".into(),
            "100".into(),
        ],
        START,
    )
    .await;
    TablesClient::new(leader.channel().await)
        .create(CreateTableRequest {
            name: "t".into(),
            config: None,
        })
        .await
        .expect("create");
    let follower_dir = tempfile::tempdir().expect("dir");
    let f = follower(follower_dir.path(), replication).await;

    // Steady writes replicate.
    for i in 0..300 {
        put(&leader, format!("k{i:05}"), b"v").await;
    }
    assert_same(&leader, &f).await;

    // Read-your-writes through the follower.
    for i in 0..20 {
        let key = format!("via-follower-{i}");
        let revision = put(&f, key.clone(), b"mine").await;
        let got = f
            .kv()
            .await
            .range(RangeRequest {
                table: b"t".to_vec(),
                key: key.into_bytes(),
                ..Default::default()
            })
            .await
            .expect("range")
            .into_inner();
        assert_eq!(got.kvs.len(), 1);
        assert_eq!(got.kvs[0].mod_revision as u64, revision);
    }
    assert_same(&leader, &f).await;

    // kill -9 the follower; the leader writes far past its log retention meanwhile.
    f.kill9().await;
    for i in 0..1_000 {
        put(&leader, format!("while-down{i:05}"), b"w").await;
    }
    let f = follower(follower_dir.path(), replication).await;
    assert_same(&leader, &f).await;
    let recoveries = "flotilla_replication_snapshot_recoveries_total{table=\"t\"}";
    assert!(
        f.metric(recoveries).await.unwrap_or(0.0) >= 1.0,
        "the restarted follower recovered by snapshot"
    );
    for i in 0..50 {
        put(&leader, format!("after{i}"), b"a").await;
    }
    assert_same(&leader, &f).await;

    // A brand-new follower of a leader with data.
    let fresh_dir = tempfile::tempdir().expect("dir");
    let fresh = follower(fresh_dir.path(), replication).await;
    assert_same(&leader, &fresh).await;
    fresh.kill9().await;
    f.kill9().await;
    leader.kill9().await;
}
