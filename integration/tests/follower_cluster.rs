//! A 3-node leader cluster and a 3-node follower cluster as real processes on loopback. The
//! follower cluster reaches the leader cluster through a [`LinkProxy`] (its "WAN link")
//! in front of one leader node's replication port. Under writes through both clusters:
//! steady replication; kill -9 of the follower node holding the table's worker (the lease
//! moves); kill -9 of the leader cluster's raft leader (failover); the link cut, then
//! blackholed, then restored. After each step every node of both clusters holds exactly
//! the acknowledged writes, with the revisions the leader acknowledged.

use std::time::Duration;

use flotilla_integration::cluster::{Cluster, ClusterOptions};
use flotilla_integration::proxy::LinkProxy;
use flotilla_integration::workload::{SharedLog, WriteLog, Writers, assert_converged};
use flotilla_testkit::leases;
use tonic::transport::Channel;

/// Clusters start, elect and create tables well within this.
const SETUP: Duration = Duration::from_secs(30);
/// Writers acknowledge this many more writes within this after a failure.
const RESUME: Duration = Duration::from_secs(15);
/// Both clusters converge within this after a step.
const CONVERGE: Duration = Duration::from_secs(60);
/// A new worker takes the table within this after its holder dies (an election in the
/// follower cluster, about 1 s at 50 ms ticks, plus slack).
const LEASE_MOVES: Duration = Duration::from_secs(15);
const WRITERS: usize = 4;
const TABLE: &str = "t";

/// Both clusters, and the link between them.
struct Clusters {
    leader: Cluster,
    follower: Cluster,
    /// Follower cluster -> leader node `source`'s replication port.
    link: LinkProxy,
    /// The leader node the follower cluster replicates from.
    source: u64,
    log: SharedLog,
    /// Holds both clusters' data dirs; removed when the test ends.
    _root: tempfile::TempDir,
}

impl Clusters {
    /// The running nodes of both clusters (follower ids offset by 10 in messages).
    fn running_nodes(&self) -> Vec<(u64, Channel)> {
        let leaders = self
            .leader
            .running()
            .into_iter()
            .map(|id| (id, self.leader.channel(id)));
        let followers = self
            .follower
            .running()
            .into_iter()
            .map(|id| (10 + id, self.follower.channel(id)));
        leaders.chain(followers).collect()
    }

    /// Channels to every running node of both clusters (follower writes are forwarded).
    fn write_targets(&self) -> Vec<Channel> {
        self.running_nodes().into_iter().map(|(_, c)| c).collect()
    }

    fn start_writers(&self, prefix: &str) -> Writers {
        Writers::start(
            TABLE,
            prefix,
            WRITERS,
            self.write_targets(),
            self.log.clone(),
        )
    }

    /// Stops `writers`, then waits until every running node of both clusters holds exactly
    /// what was acknowledged, identically.
    async fn assert_converged(&self, writers: Writers, step: &str) {
        let log: WriteLog = writers.stop().await;
        eprintln!("{step}: {} writes acknowledged so far", log.acked.len());
        assert_converged(&self.running_nodes(), TABLE, &log, CONVERGE).await;
    }

    /// The follower nodes (id, metrics address) that are running.
    fn follower_metrics(&self) -> Vec<(u64, String)> {
        self.follower
            .running()
            .into_iter()
            .map(|id| (id, self.follower.node(id).metrics_addr.clone()))
            .collect()
    }

    /// Waits until exactly one follower node holds the worker of the table; its id.
    async fn wait_lease_holder(&self, timeout: Duration) -> u64 {
        leases::one_holder(&self.follower_metrics(), TABLE, timeout)
            .await
            .unwrap_or_else(|seen| panic!("one follower node holds the worker, not {seen:?}"))
    }
}

async fn start() -> Clusters {
    let root = tempfile::tempdir().expect("dir");
    let leader = Cluster::start(
        &root.path().join("leader"),
        ClusterOptions {
            replication: true,
            ..ClusterOptions::default()
        },
    )
    .await;
    leader.create_table(TABLE, SETUP).await;
    // Replicate from a node that does not lead the table, so killing the leader below is a
    // raft failover behind a source that stays up.
    let table_leader = leader.wait_leader(TABLE, SETUP).await;
    let source = Cluster::ids()
        .find(|&id| id != table_leader)
        .expect("another node");
    let link = LinkProxy::start(leader.replication_addr(source)).await;
    let follower = Cluster::start(
        &root.path().join("follower"),
        ClusterOptions {
            role: "follower".into(),
            extra_args: vec![
                "--replication.leader-address".into(),
                format!("http://{}", link.addr()),
                "--replication.reconcile-interval".into(),
                "200ms".into(),
            ],
            ..ClusterOptions::default()
        },
    )
    .await;
    // The table appears in the follower cluster by itself and gets a local raft leader.
    follower.wait_leader(TABLE, SETUP).await;
    Clusters {
        leader,
        follower,
        link,
        source,
        log: SharedLog::default(),
        _root: root,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_plus_three_survive_worker_kill_leader_failover_and_link_cuts() {
    let mut c = start().await;

    // Steady writes through both clusters replicate; one follower node holds the worker.
    let writers = c.start_writers("steady");
    assert!(writers.wait_acked(300, RESUME).await, "steady writes");
    c.assert_converged(writers, "steady").await;
    let holder = c.wait_lease_holder(LEASE_MOVES).await;

    // kill -9 the follower node holding the worker: another node takes the table over and
    // the two survivors keep up; the restarted node catches up.
    let writers = c.start_writers("worker-kill");
    assert!(writers.wait_acked(writers.acked() + 100, RESUME).await);
    c.follower.kill9(holder).await;
    writers.set_targets(c.write_targets());
    let new_holder = c.wait_lease_holder(LEASE_MOVES).await;
    assert_ne!(new_holder, holder, "the worker moved off the killed node");
    writers
        .assert_more_acked(200, RESUME, "after the worker's node died")
        .await;
    c.assert_converged(writers, "worker killed").await;
    c.follower.restart(holder).await;
    let writers = c.start_writers("worker-back");
    writers
        .assert_more_acked(100, RESUME, "with the old worker node back")
        .await;
    c.assert_converged(writers, "worker node restarted").await;

    // Leader cluster failover: kill -9 the table's raft leader under writes.
    let writers = c.start_writers("failover");
    assert!(writers.wait_acked(writers.acked() + 100, RESUME).await);
    let table_leader = c.leader.wait_leader(TABLE, SETUP).await;
    c.leader.kill9(table_leader).await;
    writers.set_targets(c.write_targets());
    writers
        .assert_more_acked(200, RESUME, "after the leader cluster failed over")
        .await;
    if table_leader != c.source {
        // The follower's source node survived: it keeps replicating during the outage.
        c.assert_converged(writers, "leader killed").await;
    } else {
        // Leadership moved to the source node after start; its death cuts the follower off.
        eprintln!("the killed leader was the follower's source; checking after its restart");
        writers.stop().await;
    }
    c.leader.restart(table_leader).await;
    let writers = c.start_writers("leader-back");
    writers
        .assert_more_acked(100, RESUME, "with the old leader back")
        .await;
    c.assert_converged(writers, "old leader restarted").await;

    // Cut the link between the clusters (connections reset), write on, restore it.
    let writers = c.start_writers("cut");
    c.link.cut();
    writers.set_targets(
        Cluster::ids()
            .map(|id| c.leader.channel(id))
            .collect::<Vec<_>>(),
    );
    writers
        .assert_more_acked(300, RESUME, "on the leader while the link is cut")
        .await;
    c.link.heal();
    c.assert_converged(writers, "link cut and restored").await;

    // Blackhole it (connections open but silent), write on, restore it.
    let writers = c.start_writers("blackhole");
    c.link.blackhole();
    writers.set_targets(
        Cluster::ids()
            .map(|id| c.leader.channel(id))
            .collect::<Vec<_>>(),
    );
    writers
        .assert_more_acked(300, RESUME, "on the leader while the link is silent")
        .await;
    c.link.heal();
    c.assert_converged(writers, "link blackholed and restored")
        .await;
    c.wait_lease_holder(LEASE_MOVES).await; // still exactly one worker

    c.follower.stop().await;
    c.leader.stop().await;
}
