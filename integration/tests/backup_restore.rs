//! Backup and restore across real processes (issue 13, item 2): a 3-node leader cluster
//! and a 3-node follower cluster on loopback. `flotilla backup` of one table, then
//! `flotilla restore` of it over another through one leader node: every node of both
//! clusters ends up serving exactly the restored data, with the same revisions, without a
//! Reset; writes after the restore reach every node as usual.

use std::process::Output;
use std::time::Duration;

use flotilla_integration::cluster::{Cluster, ClusterOptions};
use flotilla_proto::mvcc::v1::KeyValue;
use flotilla_proto::regatta::v1::kv_client::KvClient;
use flotilla_proto::regatta::v1::{PutRequest, RangeRequest};
use flotilla_testkit::eventually;
use tonic::transport::Channel;

const SETUP: Duration = Duration::from_secs(30);
const CONVERGE: Duration = Duration::from_secs(60);

fn flotilla(args: &[&str]) -> Output {
    std::process::Command::new(flotilla_integration::flotilla_bin())
        .args(args)
        .output()
        .expect("run flotilla")
}

async fn put(channel: &Channel, table: &str, key: String, value: &str) {
    let ok = eventually(SETUP, async || {
        KvClient::new(channel.clone())
            .put(PutRequest {
                table: table.into(),
                key: key.clone().into_bytes(),
                value: value.into(),
                prev_kv: false,
            })
            .await
            .is_ok()
    })
    .await;
    assert!(ok, "put {key}");
}

/// Every key of `table` on the node behind `channel` (serializable: that node's own).
async fn local(channel: &Channel, table: &str) -> Option<Vec<KeyValue>> {
    let resp = KvClient::new(channel.clone())
        .range(RangeRequest {
            table: table.into(),
            key: vec![0],
            range_end: vec![0],
            ..Default::default()
        })
        .await
        .ok()?;
    Some(resp.into_inner().kvs)
}

/// Waits until every node behind `channels` serves exactly `want` for `table`.
async fn all_serve(channels: &[(String, Channel)], table: &str, want: &[KeyValue]) {
    for (name, channel) in channels {
        let same = eventually(CONVERGE, async || {
            local(channel, table).await.as_deref() == Some(want)
        })
        .await;
        assert!(
            same,
            "{name} does not serve the restored {table}: {:?} keys",
            local(channel, table).await.map(|k| k.len())
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restore_reaches_every_node_of_both_clusters() {
    let root = tempfile::tempdir().expect("dir");
    let leader = Cluster::start(
        &root.path().join("leader"),
        ClusterOptions {
            replication: true,
            ..ClusterOptions::default()
        },
    )
    .await;
    for table in ["t", "src"] {
        leader.create_table(table, SETUP).await;
        leader.wait_leader(table, SETUP).await;
    }
    let via = leader.channel(1);
    for i in 0..100 {
        put(&via, "t", format!("old/{i:04}"), "old").await;
    }
    for i in 0..150 {
        put(&via, "src", format!("new/{i:04}"), "new").await;
    }
    let follower = Cluster::start(
        &root.path().join("follower"),
        ClusterOptions {
            role: "follower".into(),
            extra_args: vec![
                "--replication.leader-address".into(),
                format!("http://{}", leader.replication_addr(2)),
                "--replication.reconcile-interval".into(),
                "200ms".into(),
            ],
            ..ClusterOptions::default()
        },
    )
    .await;
    follower.wait_leader("t", SETUP).await;
    let nodes: Vec<(String, Channel)> = Cluster::ids()
        .map(|id| (format!("leader node {id}"), leader.channel(id)))
        .chain(Cluster::ids().map(|id| (format!("follower node {id}"), follower.channel(id))))
        .collect();
    let old = local(&via, "t").await.expect("t");
    all_serve(&nodes, "t", &old).await;

    // Back up `src`, and restore it as `t` through a node that may not lead `t`.
    let dir = root.path().join("backup");
    let dir = dir.to_str().expect("utf-8");
    let out = flotilla(&[
        "backup",
        "--address",
        &format!("http://{}", leader.api_addr(1)),
        "--dir",
        dir,
        "--tables",
        "src",
    ]);
    assert!(
        out.status.success(),
        "backup: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let manifest = std::fs::read_to_string(format!("{dir}/manifest.json")).expect("manifest");
    std::fs::write(
        format!("{dir}/manifest.json"),
        manifest.replace("\"name\": \"src\"", "\"name\": \"t\""),
    )
    .expect("rename the table in the manifest");
    let out = flotilla(&[
        "restore",
        "--address",
        &format!("http://{}", leader.api_addr(3)),
        "--dir",
        dir,
    ]);
    assert!(
        out.status.success(),
        "restore: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Every node of both clusters: the restored pairs, every key at one revision.
    let restored = local(&leader.channel(3), "t").await.expect("t");
    assert_eq!(restored.len(), 150);
    assert!(restored.iter().all(|kv| kv.value == b"new"
        && kv.mod_revision == restored[0].mod_revision
        && kv.create_revision == restored[0].mod_revision));
    all_serve(&nodes, "t", &restored).await;

    // Writes after the restore replicate as usual.
    put(&via, "t", "after".into(), "x").await;
    let after = local(&via, "t").await.expect("t");
    assert_eq!(after.len(), 151);
    all_serve(&nodes, "t", &after).await;
    follower.stop().await;
    leader.stop().await;
}
