//! Idle groups hibernate (stop ticking and heartbeating) and wake without disturbing
//! anything: a write through a follower is taken by the same leader in the same term, a
//! lost leader is still replaced, and a wiped replica is still caught up.

mod common;

use std::sync::atomic::Ordering::Relaxed;

use common::*;

const HIBERNATING: &str = "flotilla_raft_hibernating_groups";

/// Waits until every group (the catalog and `tables` tables) sleeps on every node in
/// `among`.
async fn all_asleep(c: &Cluster, among: &[u64], tables: usize) {
    let groups = (tables + 1) as f64;
    wait(async || among.iter().all(|&id| c.gauge(id, HIBERNATING) == groups)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_groups_sleep_and_a_write_wakes_them_without_an_election() {
    let c = Cluster::start(10_000);
    c.create("t").await;
    let leader = c.leader("t", &IDS).await;
    let follower = IDS
        .into_iter()
        .find(|&id| id != leader)
        .expect("a follower");
    let mut acked = Data::new();
    let rev = retry(async || try_put(&c.table(leader, "t"), b"a", b"1").await).await;
    acked.insert(b"a".to_vec(), (b"1".to_vec(), rev));

    all_asleep(&c, &IDS, 1).await;
    let term = c.table(leader, "t").status().term.load(Relaxed);

    // A write through a follower wakes its group, reaches the sleeping leader, and is
    // replicated everywhere: no election on the way.
    let rev = retry(async || try_put(&c.table(follower, "t"), b"b", b"2").await).await;
    acked.insert(b"b".to_vec(), (b"2".to_vec(), rev));
    assert_holds(&converged(&c, "t").await, &acked);
    for id in IDS {
        let table = c.table(id, "t");
        let status = table.status();
        assert_eq!(status.term.load(Relaxed), term, "node {id}: same term");
        assert_eq!(
            status.leader.load(Relaxed),
            leader,
            "node {id}: same leader"
        );
    }
    // ...and once idle again, they go back to sleep.
    all_asleep(&c, &IDS, 1).await;
    assert_eq!(c.table(leader, "t").status().term.load(Relaxed), term);
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sleeping_groups_lost_leader_is_replaced_without_any_write() {
    let c = Cluster::start(10_000);
    c.create("t").await;
    let old = c.leader("t", &IDS).await;
    all_asleep(&c, &IDS, 1).await;
    let others: Vec<u64> = IDS.into_iter().filter(|&id| id != old).collect();
    // Losing the link to a peer wakes every group (as a closed peer stream does in the
    // server), so the followers notice their leader is gone.
    c.net.isolate(old, &others);
    let new = c.leader("t", &others).await;
    assert_ne!(new, old);
    c.net.heal();
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_wiped_while_its_groups_sleep_is_caught_up() {
    let mut c = Cluster::start(10_000);
    c.create("t").await;
    let leader = c.leader("t", &IDS).await;
    let mut acked = Data::new();
    for i in 0..20u32 {
        let key = format!("k{i:02}").into_bytes();
        let rev = retry(async || try_put(&c.table(leader, "t"), &key, b"v").await).await;
        acked.insert(key, (b"v".to_vec(), rev));
    }
    all_asleep(&c, &IDS, 1).await;
    let wiped = IDS
        .into_iter()
        .find(|&id| id != leader)
        .expect("a follower");
    c.wipe(wiped).await;
    // Its return wakes the sleeping groups, which catch it up with no write to prompt them.
    wait(async || c.node(wiped).table("t").is_ok()).await;
    assert_holds(&converged(&c, "t").await, &acked);
    c.shutdown().await;
}
