//! A node's entry point for raft traffic: messages and snapshots from peers go to their
//! group through the [`Router`], and the transport reports delivery problems back.

use std::path::PathBuf;
use std::sync::Arc;

use dashmap::DashMap;
use flotilla_proto::flotilla::raft::v1::SnapshotChunk;
use protobuf::Message as _;
use raft::eraftpb::{Message, MessageType};

use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::group::GroupHandle;
use crate::snapshot;

/// What the router needs from a group, whatever its state machine.
pub(crate) trait Inbox: Send + Sync {
    fn step(&self, msg: Message) -> Result<()>;
    fn report_unreachable(&self, peer: u64) -> Result<()>;
    fn report_snapshot(&self, peer: u64, ok: bool) -> Result<()>;
    fn wake(&self) -> Result<()>;
}

impl<O: Send + 'static> Inbox for GroupHandle<O> {
    fn step(&self, msg: Message) -> Result<()> {
        GroupHandle::step(self, msg)
    }

    fn report_unreachable(&self, peer: u64) -> Result<()> {
        GroupHandle::report_unreachable(self, peer)
    }

    fn report_snapshot(&self, peer: u64, ok: bool) -> Result<()> {
        GroupHandle::report_snapshot(self, peer, ok)
    }

    fn wake(&self) -> Result<()> {
        GroupHandle::wake(self)
    }
}

/// Routes raft traffic to this node's groups; cheap to clone.
#[derive(Clone)]
pub struct Router {
    inner: Arc<Inner>,
}

struct Inner {
    node_id: u64,
    engine: Engine,
    /// Where received snapshots are staged until their group installs them.
    snapshot_dir: PathBuf,
    groups: DashMap<u64, Arc<dyn Inbox>>,
}

impl std::fmt::Debug for Router {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Router")
            .field("node_id", &self.inner.node_id)
            .field("groups", &self.inner.groups.len())
            .finish()
    }
}

impl Router {
    pub(crate) fn new(node_id: u64, engine: Engine, snapshot_dir: PathBuf) -> Self {
        Self {
            inner: Arc::new(Inner {
                node_id,
                engine,
                snapshot_dir,
                groups: DashMap::new(),
            }),
        }
    }

    pub(crate) fn register(&self, group_id: u64, inbox: Arc<dyn Inbox>) {
        self.inner.groups.insert(group_id, inbox);
    }

    pub(crate) fn unregister(&self, group_id: u64) {
        self.inner.groups.remove(&group_id);
    }

    /// This node's raft id.
    pub fn node_id(&self) -> u64 {
        self.inner.node_id
    }

    fn group(&self, group_id: u64) -> Result<Arc<dyn Inbox>> {
        self.inner
            .groups
            .get(&group_id)
            .map(|g| g.value().clone())
            // A group this node does not have (yet): its catalog has not applied the
            // create. Raft retries, so the message is simply not delivered.
            .ok_or(Error::TableNotFound)
    }

    /// Delivers a raft message from a peer. Snapshots travel on their own stream
    /// ([`Router::receive_snapshot`]) and are refused here.
    pub fn step(&self, group_id: u64, msg: Message) -> Result<()> {
        if msg.to != self.inner.node_id {
            return Err(Error::InvalidArgument(format!(
                "message for node {} delivered to node {}",
                msg.to, self.inner.node_id
            )));
        }
        if msg.get_msg_type() == MessageType::MsgSnapshot {
            return Err(Error::InvalidArgument(
                "raft snapshots must come through the snapshot stream".into(),
            ));
        }
        self.group(group_id)?.step(msg)
    }

    /// Decodes a raft message that node `sender` sent (raft crate encoding) and steps it
    /// into its group; a message whose `from` is not `sender` is refused
    /// ([`Error::WrongSender`]), so one peer cannot speak for another.
    pub fn step_from(&self, group_id: u64, bytes: &[u8], sender: u64) -> Result<()> {
        let msg = Message::parse_from_bytes(bytes)
            .map_err(|e| Error::InvalidArgument(format!("undecodable raft message: {e}")))?;
        if msg.from != sender {
            return Err(Error::WrongSender { claimed: msg.from });
        }
        self.step(group_id, msg)
    }

    /// Wakes every hibernating group of this node: a peer connected (it may have
    /// restarted and need catching up) or went away (it may have led some of them, and
    /// only ticking groups notice a lost leader).
    pub fn wake_all(&self) {
        for g in self.inner.groups.iter() {
            // A full mailbox means a busy group, awake anyway.
            let _ = g.value().wake();
        }
    }

    /// Tells group `group_id` that `peer` could not be reached.
    pub fn report_unreachable(&self, group_id: u64, peer: u64) {
        if let Ok(g) = self.group(group_id) {
            let _ = g.report_unreachable(peer);
        }
    }

    /// Tells group `group_id` how sending a snapshot to `peer` ended.
    pub fn report_snapshot(&self, group_id: u64, peer: u64, ok: bool) {
        if let Ok(g) = self.group(group_id) {
            let _ = g.report_snapshot(peer, ok);
        }
    }

    /// Streams the snapshot that `msg` (a `MsgSnapshot` of group `group_id`) announces,
    /// chunk by chunk into `emit`. Blocking: run it on a blocking thread.
    pub fn read_snapshot(
        &self,
        group_id: u64,
        msg: &Message,
        emit: impl FnMut(SnapshotChunk) -> bool,
    ) -> Result<()> {
        let message = msg
            .write_to_bytes()
            .map_err(|e| Error::SnapshotStream(format!("encoding the raft message: {e}")))?;
        snapshot::read_chunks(&self.inner.engine, group_id, message, emit)
    }

    /// Stages a snapshot stream from a peer and hands it to its group, if its sender is
    /// one `may_send` accepts (the nodes the connection speaks for). Blocking.
    pub fn receive_snapshot(
        &self,
        chunks: impl IntoIterator<Item = Result<SnapshotChunk>>,
        may_send: impl Fn(u64) -> bool,
    ) -> Result<()> {
        let (group_id, msg) = snapshot::receive(&self.inner.snapshot_dir, chunks, may_send)?;
        let data = msg.get_snapshot().data.clone();
        let delivered = self.group(group_id).and_then(|g| g.step(msg));
        if delivered.is_err() {
            snapshot::discard(&data);
        }
        delivered
    }
}
