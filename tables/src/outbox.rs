//! Where a group's raft messages go: the one thing a group needs of the transport. A leaf
//! module, so the group does not depend on the transport (which knows the router, which
//! holds the groups).

use raft::eraftpb::Message;

/// Delivers raft messages of group `group_id` to other nodes. Must not block: queue and
/// return; a message that cannot be delivered is dropped (raft retries).
pub trait Outbox: Send + Sync + 'static {
    /// Sends `msgs` (each names its destination node in `to`).
    fn send(&self, group_id: u64, msgs: Vec<Message>);
}
