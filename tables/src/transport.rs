//! How raft messages leave a node. The trait is the seam: the gRPC implementation lives in
//! the server crate; `flotilla_testkit::memory_network` is the in-process one for tests.

use raft::eraftpb::Message;

use crate::router::Router;

/// Delivers raft messages of group `group_id` to other nodes. Must not block: queue and
/// return; a message that cannot be delivered is dropped (raft retries). A `MsgSnapshot`
/// announces a snapshot the transport streams itself ([`Router::read_snapshot`] on this
/// node, [`Router::receive_snapshot`] on the peer), reporting the outcome with
/// [`Router::report_snapshot`].
pub trait Transport: Send + Sync + 'static {
    /// Called once by `Node::open` before any group starts, with this node's router: where
    /// reports go and snapshots are read from.
    fn attach(&self, router: Router) {
        let _ = router;
    }

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
