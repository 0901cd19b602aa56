//! How raft messages leave a node. The trait is the seam: the gRPC implementation lives in
//! the server crate; `flotilla_testkit::memory_network` is the in-process one for tests.

use raft::eraftpb::Message;

pub use crate::outbox::Outbox;
use crate::router::Router;

/// An [`Outbox`] that a node attaches to its router before any group starts. A `MsgSnapshot`
/// announces a snapshot the transport streams itself ([`Router::read_snapshot`] on this
/// node, [`Router::receive_snapshot`] on the peer), reporting the outcome with
/// [`Router::report_snapshot`].
pub trait Transport: Outbox {
    /// Called once by `Node::open` before any group starts, with this node's router: where
    /// reports go and snapshots are read from.
    fn attach(&self, router: Router) {
        let _ = router;
    }
}

/// Transport of a node that has no peers (a single-node cluster). A single voter never
/// addresses anyone, so any message here is a configuration error worth a log line.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoPeers;

impl Transport for NoPeers {}

impl Outbox for NoPeers {
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
