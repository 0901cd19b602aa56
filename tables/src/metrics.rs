//! Raft metrics of the tables on this node, labelled by table.

use std::sync::atomic::Ordering;

use prometheus::{IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};

use crate::group_status::GroupStatus;

/// All per-table raft gauges and counters of a node.
#[derive(Debug, Clone)]
pub struct TablesMetrics {
    term: IntGaugeVec,
    leader: IntGaugeVec,
    commit: IntGaugeVec,
    applied: IntGaugeVec,
    snapshots: IntGaugeVec,
    proposals: IntCounterVec,
    /// Groups of this node that sleep for lack of work (see `group/hibernate.rs`).
    hibernating: IntGauge,
    /// Approximate size of the node's RocksDB in bytes (SST files plus memtables).
    pub db_size: IntGauge,
}

impl TablesMetrics {
    /// Creates the metrics and registers them in `registry`.
    pub fn new(registry: &Registry) -> prometheus::Result<Self> {
        let gauge = |name: &str, help: &str| IntGaugeVec::new(Opts::new(name, help), &["table"]);
        let m = Self {
            term: gauge("flotilla_raft_term", "Raft term of the table's group")?,
            leader: gauge(
                "flotilla_raft_leader_id",
                "Raft id of the group's leader (0 = none)",
            )?,
            commit: gauge(
                "flotilla_raft_commit_index",
                "Commit index of the table's group",
            )?,
            applied: gauge(
                "flotilla_raft_applied_index",
                "Applied index of the table's group",
            )?,
            snapshots: gauge(
                "flotilla_raft_snapshots_installed",
                "Raft snapshots this replica installed since it started",
            )?,
            proposals: IntCounterVec::new(
                Opts::new(
                    "flotilla_raft_proposals_total",
                    "Proposals made to the table's group",
                ),
                &["table"],
            )?,
            hibernating: IntGauge::new(
                "flotilla_raft_hibernating_groups",
                "Raft groups on this node that stopped ticking for lack of work",
            )?,
            db_size: IntGauge::new(
                "flotilla_rocksdb_size_bytes",
                "Approximate RocksDB size (SST + memtables)",
            )?,
        };
        registry.register(Box::new(m.term.clone()))?;
        registry.register(Box::new(m.leader.clone()))?;
        registry.register(Box::new(m.commit.clone()))?;
        registry.register(Box::new(m.applied.clone()))?;
        registry.register(Box::new(m.snapshots.clone()))?;
        registry.register(Box::new(m.proposals.clone()))?;
        registry.register(Box::new(m.hibernating.clone()))?;
        registry.register(Box::new(m.db_size.clone()))?;
        Ok(m)
    }

    /// The metrics of one table.
    pub fn group(&self, table: &str) -> GroupMetrics {
        GroupMetrics {
            term: self.term.with_label_values(&[table]),
            leader: self.leader.with_label_values(&[table]),
            commit: self.commit.with_label_values(&[table]),
            applied: self.applied.with_label_values(&[table]),
            snapshots: self.snapshots.with_label_values(&[table]),
            proposals: self.proposals.with_label_values(&[table]),
            hibernating: self.hibernating.clone(),
        }
    }

    /// Forgets a dropped table's series.
    pub fn remove(&self, table: &str) {
        for vec in [
            &self.term,
            &self.leader,
            &self.commit,
            &self.applied,
            &self.snapshots,
        ] {
            let _ = vec.remove_label_values(&[table]);
        }
        let _ = self.proposals.remove_label_values(&[table]);
    }
}

/// The metrics of one group.
#[derive(Debug, Clone)]
pub struct GroupMetrics {
    term: IntGauge,
    leader: IntGauge,
    commit: IntGauge,
    applied: IntGauge,
    snapshots: IntGauge,
    /// Proposals made through this node.
    pub proposals: IntCounter,
    /// The node's count of hibernating groups (shared by all its groups).
    pub hibernating: IntGauge,
}

impl GroupMetrics {
    /// Copies the group's status into its gauges.
    pub fn publish(&self, s: &GroupStatus) {
        let get = |a: &std::sync::atomic::AtomicU64| {
            i64::try_from(a.load(Ordering::Relaxed)).unwrap_or(i64::MAX)
        };
        self.term.set(get(&s.term));
        self.leader.set(get(&s.leader));
        self.commit.set(get(&s.commit));
        self.applied.set(get(&s.applied));
        self.snapshots.set(get(&s.snapshots_installed));
    }
}
