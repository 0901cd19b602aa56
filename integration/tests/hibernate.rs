//! Hibernating tables on real processes: once every group of a 3-node cluster sleeps, a
//! kill -9 of a table's leader still gets the table a new leader with no write to prompt
//! it (the survivors' raft services see the dead peer's streams end and wake their
//! groups).

use std::time::Duration;

use flotilla_integration::cluster::{Cluster, ClusterOptions};
use flotilla_integration::eventually;

/// A cluster starts, elects, creates a table and lets it fall asleep within this.
const SETUP: Duration = Duration::from_secs(30);
/// A new leader is elected within this of the kill (an election timeout is ~1-2 s).
const FAILOVER: Duration = Duration::from_secs(10);

const HIBERNATING: &str = "flotilla_raft_hibernating_groups";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_killed_leader_of_sleeping_tables_is_replaced_without_any_write() {
    const TABLE: &str = "idle";
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cluster = Cluster::start(dir.path(), ClusterOptions::default()).await;
    cluster.create_table(TABLE, SETUP).await;
    let leader = cluster.wait_leader(TABLE, SETUP).await;

    // The catalog and the table sleep on every node.
    let mut asleep = Vec::new();
    let all_asleep = eventually(SETUP, async || {
        asleep.clear();
        for id in Cluster::ids() {
            asleep.push(cluster.node(id).metric(HIBERNATING).await.unwrap_or(0.0));
        }
        asleep.iter().all(|&n| n == 2.0)
    })
    .await;
    assert!(all_asleep, "every group sleeps on every node: {asleep:?}");

    cluster.kill9(leader).await;
    let survivors: Vec<u64> = Cluster::ids().filter(|&id| id != leader).collect();
    let new = cluster.wait_leader_among(TABLE, &survivors, FAILOVER).await;
    assert_ne!(new, leader, "a survivor leads the idle table");
    cluster.stop().await;
}
