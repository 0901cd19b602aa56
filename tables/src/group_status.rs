//! What a group publishes about itself for the rest of the node (tables, metrics) to read
//! without asking its task. A leaf module, so metrics need not depend on the group.

use std::sync::atomic::AtomicU64;

/// The latest raft status of a group as this node sees it; read without asking the task.
#[derive(Debug, Default)]
pub struct GroupStatus {
    /// Current term.
    pub term: AtomicU64,
    /// Raft id of the leader (0 = unknown).
    pub leader: AtomicU64,
    /// Commit index.
    pub commit: AtomicU64,
    /// Applied index.
    pub applied: AtomicU64,
    /// First index still in the log.
    pub first_index: AtomicU64,
    /// Last index in the log.
    pub last_index: AtomicU64,
    /// Raft snapshots this replica installed since it started.
    pub snapshots_installed: AtomicU64,
}
