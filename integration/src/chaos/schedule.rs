//! The seeded fault schedule: which fault, on which node, when and for how long.
//!
//! Faults never overlap: each one is healed (a killed node restarted, a stopped one
//! continued, a cut link restored) before the next begins, so at most one node of each
//! cluster (a minority of three) is faulty at any time, and the last is healed before
//! the schedule's end. The schedule depends on the seed alone, so a seed reproduces it.

use std::fmt;
use std::time::Duration;

use super::rng::Rng;
use crate::cluster::{Cluster, NODES};

/// Quiet time before the first fault, so the workload has a baseline.
const LEAD_IN: Duration = Duration::from_secs(2);
/// How long a fault lasts, at least and at most.
const HOLD: (Duration, Duration) = (Duration::from_secs(2), Duration::from_secs(6));
/// Quiet time between one fault's heal and the next fault, at least and at most.
const GAP: (Duration, Duration) = (Duration::from_secs(1), Duration::from_secs(3));

/// One fault; nodes are raft ids `1..=3` of the cluster named.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// kill -9 a leader-cluster node; healed by restarting it on its data dir.
    Kill(u64),
    /// SIGSTOP a leader-cluster node (connections stay open, nothing answers); healed by
    /// SIGCONT.
    Pause(u64),
    /// Cut every link between a leader-cluster node and its peers (connections reset).
    Isolate(u64),
    /// Silence every link between a leader-cluster node and its peers (connections stay
    /// open and carry nothing, as a real partition).
    Blackhole(u64),
    /// kill -9 a follower-cluster node; healed by restarting it.
    KillFollower(u64),
    /// Cut the link between the clusters (connections reset).
    CutReplication,
    /// Silence the link between the clusters.
    BlackholeReplication,
}

/// Which part of the system a fault takes out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Faulty {
    /// One node of the leader cluster.
    LeaderNode(u64),
    /// One node of the follower cluster.
    FollowerNode(u64),
    /// The link between the clusters.
    ReplicationLink,
}

impl Fault {
    /// What the fault takes out: always a single node or the single inter-cluster link.
    pub fn faulty(self) -> Faulty {
        match self {
            Fault::Kill(n) | Fault::Pause(n) | Fault::Isolate(n) | Fault::Blackhole(n) => {
                Faulty::LeaderNode(n)
            }
            Fault::KillFollower(n) => Faulty::FollowerNode(n),
            Fault::CutReplication | Fault::BlackholeReplication => Faulty::ReplicationLink,
        }
    }

    /// Whether the fault needs a follower cluster.
    pub fn needs_follower(self) -> bool {
        !matches!(self.faulty(), Faulty::LeaderNode(_))
    }
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Fault::Kill(n) => write!(f, "kill -9 leader node {n}, then restart it"),
            Fault::Pause(n) => write!(f, "SIGSTOP leader node {n}, then SIGCONT"),
            Fault::Isolate(n) => write!(f, "cut leader node {n} off its peers"),
            Fault::Blackhole(n) => write!(f, "blackhole leader node {n}'s links"),
            Fault::KillFollower(n) => write!(f, "kill -9 follower node {n}, then restart it"),
            Fault::CutReplication => f.write_str("cut the link between the clusters"),
            Fault::BlackholeReplication => f.write_str("blackhole the link between the clusters"),
        }
    }
}

/// One scheduled fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Step {
    /// When it begins, from the schedule's start (later if the previous heal ran late).
    pub at: Duration,
    /// The fault.
    pub fault: Fault,
    /// How long it lasts before it is healed.
    pub hold: Duration,
}

/// Non-overlapping faults over `duration`, generated from `seed`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Schedule {
    /// The seed it was generated from.
    pub seed: u64,
    /// How long the schedule runs; every fault is healed by then.
    pub duration: Duration,
    /// Whether follower-cluster faults were allowed.
    pub follower: bool,
    /// The faults, by start time.
    pub steps: Vec<Step>,
}

impl Schedule {
    /// The schedule for `seed` over `duration`; with `follower`, faults of the follower
    /// cluster and of the link between the clusters are mixed in.
    pub fn generate(seed: u64, duration: Duration, follower: bool) -> Self {
        let mut rng = Rng::new(seed);
        let mut steps = Vec::new();
        let mut at = LEAD_IN;
        loop {
            let node = 1 + rng.below(NODES);
            let mut kinds = vec![
                (20, Fault::Kill(node)),
                (20, Fault::Pause(node)),
                (15, Fault::Isolate(node)),
                (10, Fault::Blackhole(node)),
            ];
            if follower {
                kinds.extend([
                    (15, Fault::KillFollower(node)),
                    (10, Fault::CutReplication),
                    (5, Fault::BlackholeReplication),
                ]);
            }
            let fault = rng.weighted(&kinds);
            let hold = rng.duration(HOLD.0, HOLD.1);
            if at + hold > duration {
                break;
            }
            steps.push(Step { at, fault, hold });
            at += hold + rng.duration(GAP.0, GAP.1);
        }
        Self {
            seed,
            duration,
            follower,
            steps,
        }
    }

    /// Whether no two faults overlap, each takes out one node of a cluster (a minority)
    /// or the inter-cluster link, nodes exist, follower faults appear only with a follower
    /// cluster, and everything is healed by the end.
    pub fn is_minority_only(&self) -> bool {
        let valid_node = |n: u64| Cluster::ids().any(|id| id == n);
        let each = self.steps.iter().all(|s| {
            let node_ok = match s.fault.faulty() {
                Faulty::LeaderNode(n) | Faulty::FollowerNode(n) => valid_node(n),
                Faulty::ReplicationLink => true,
            };
            node_ok && (self.follower || !s.fault.needs_follower())
        });
        let apart = self.steps.windows(2).all(|w| w[0].at + w[0].hold < w[1].at);
        let healed = self
            .steps
            .last()
            .is_none_or(|s| s.at + s.hold <= self.duration);
        each && apart && healed
    }
}

fn seconds(d: Duration) -> f64 {
    d.as_secs_f64()
}

/// A header with the seed, then one line per fault: start, duration, what.
impl fmt::Display for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "chaos schedule: seed {}, {:.0} s, {} faults{}",
            self.seed,
            seconds(self.duration),
            self.steps.len(),
            if self.follower {
                " (leader and follower clusters)"
            } else {
                " (leader cluster)"
            }
        )?;
        for step in &self.steps {
            write!(
                f,
                "\n  at {:>5.1} s for {:.1} s: {}",
                seconds(step.at),
                seconds(step.hold),
                step.fault
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINUTE: Duration = Duration::from_secs(60);

    #[test]
    fn the_same_seed_gives_the_same_schedule() {
        for seed in [0, 1, 42, u64::MAX] {
            let a = Schedule::generate(seed, MINUTE, true);
            let b = Schedule::generate(seed, MINUTE, true);
            assert_eq!(a, b);
            assert_eq!(a.to_string(), b.to_string());
        }
        assert_ne!(
            Schedule::generate(1, MINUTE, true).steps,
            Schedule::generate(2, MINUTE, true).steps
        );
    }

    #[test]
    fn faults_take_out_a_minority_one_at_a_time_and_end_healed() {
        for seed in 0..500 {
            for follower in [false, true] {
                let s = Schedule::generate(seed, MINUTE, follower);
                assert!(s.is_minority_only(), "{s}");
                assert!(s.steps.len() >= 5, "a minute holds several faults: {s}");
            }
        }
        let short = Schedule::generate(3, Duration::from_secs(1), true);
        assert!(short.steps.is_empty() && short.is_minority_only());
    }

    #[test]
    fn schedules_cover_every_kind_of_fault() {
        let kinds: Vec<Fault> = (0..50)
            .flat_map(|seed| Schedule::generate(seed, MINUTE, true).steps)
            .map(|s| s.fault)
            .collect();
        let has = |p: fn(&Fault) -> bool| kinds.iter().any(p);
        assert!(has(|f| matches!(f, Fault::Kill(_))));
        assert!(has(|f| matches!(f, Fault::Pause(_))));
        assert!(has(|f| matches!(f, Fault::Isolate(_))));
        assert!(has(|f| matches!(f, Fault::Blackhole(_))));
        assert!(has(|f| matches!(f, Fault::KillFollower(_))));
        assert!(has(|f| matches!(f, Fault::CutReplication)));
        assert!(has(|f| matches!(f, Fault::BlackholeReplication)));
        for n in Cluster::ids() {
            assert!(kinds.iter().any(|f| f.faulty() == Faulty::LeaderNode(n)));
        }
    }

    #[test]
    fn the_schedule_prints_its_seed_and_every_fault() {
        let s = Schedule::generate(9, MINUTE, false);
        let text = s.to_string();
        assert!(text.starts_with("chaos schedule: seed 9, 60 s"), "{text}");
        assert_eq!(text.lines().count(), 1 + s.steps.len(), "{text}");
        assert!(!text.contains("follower node"), "{text}");
    }
}
