//! How raft messages leave a node. The trait is the seam: the gRPC implementation lives in
//! the server crate (cluster issue); tests use an in-memory one.

use raft::eraftpb::Message;

/// Delivers raft messages of group `group_id` to other nodes. Must not block: queue and
/// return; a message that cannot be delivered is dropped (raft retries).
pub trait Transport: Send + Sync + 'static {
    /// Sends `msgs` (each names its destination node in `to`).
    fn send(&self, group_id: u64, msgs: Vec<Message>);
}

/// Transport of a node that has no peers (a single-node cluster). A single voter never
/// addresses anyone, so any message here is a configuration error worth a log line.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoPeers;

impl Transport for NoPeers {
    fn send(&self, group_id: u64, msgs: Vec<Message>) {
        if let Some(m) = msgs.first() {
            tracing::warn!(
                group = group_id,
                to = m.to,
                count = msgs.len(),
                "no transport to peers; dropping raft messages"
            );
        }
    }
}
