//! Applying a [`Schedule`] to real clusters: each fault begins at its time, lasts its
//! hold, and is healed before the next one begins.

use std::time::Instant;

use super::schedule::{Fault, Schedule};
use crate::cluster::Cluster;
use crate::proxy::LinkProxy;

/// A follower cluster and its link to the leader cluster.
#[derive(Debug)]
pub struct Follower {
    /// The follower cluster.
    pub cluster: Cluster,
    /// Follower cluster -> one leader node's replication port.
    pub link: LinkProxy,
}

/// The clusters faults are applied to.
#[derive(Debug)]
pub struct Clusters {
    /// The leader cluster, with a proxy on every node-to-node link.
    pub leader: Cluster,
    /// The follower cluster, if the run has one.
    pub follower: Option<Follower>,
}

impl Clusters {
    fn follower(&mut self) -> &mut Follower {
        self.follower
            .as_mut()
            .expect("follower faults are scheduled only with a follower cluster")
    }

    /// Begins `fault`.
    pub async fn inject(&mut self, fault: Fault) {
        match fault {
            Fault::Kill(n) => self.leader.kill9(n).await,
            Fault::Pause(n) => self.leader.pause(n).await,
            Fault::Isolate(n) => self.leader.isolate(n),
            Fault::Blackhole(n) => {
                for other in Cluster::ids().filter(|&o| o != n) {
                    self.leader.blackhole(n, other);
                }
            }
            Fault::KillFollower(n) => self.follower().cluster.kill9(n).await,
            Fault::CutReplication => self.follower().link.cut(),
            Fault::BlackholeReplication => self.follower().link.blackhole(),
        }
    }

    /// Ends `fault`: restarts, continues or reconnects what it took out.
    pub async fn heal(&mut self, fault: Fault) {
        match fault {
            Fault::Kill(n) => self.leader.restart(n).await,
            Fault::Pause(n) => self.leader.resume(n).await,
            Fault::Isolate(_) | Fault::Blackhole(_) => self.leader.heal_all(),
            Fault::KillFollower(n) => self.follower().cluster.restart(n).await,
            Fault::CutReplication | Fault::BlackholeReplication => self.follower().link.heal(),
        }
    }

    /// Runs `schedule` from `start` (the history's clock, so log times match operation
    /// times), logging each fault as it begins and ends; returns once the schedule's
    /// duration has passed, with every fault healed.
    pub async fn run(&mut self, schedule: &Schedule, start: Instant) {
        for step in &schedule.steps {
            tokio::time::sleep_until((start + step.at).into()).await;
            log(start, &format!("begin {}", step.fault));
            self.inject(step.fault).await;
            tokio::time::sleep(step.hold).await;
            self.heal(step.fault).await;
            log(start, &format!("healed {}", step.fault));
        }
        tokio::time::sleep_until((start + schedule.duration).into()).await;
        log(start, "schedule over, every fault healed");
    }
}

/// Prints `what` with the time since `start` in seconds and in the nanoseconds the
/// history uses.
pub fn log(start: Instant, what: &str) {
    let t = start.elapsed();
    println!(
        "chaos [t={:7.3} s = {} ns] {what}",
        t.as_secs_f64(),
        t.as_nanos()
    );
}
