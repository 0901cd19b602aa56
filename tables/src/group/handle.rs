//! How the rest of the node talks to a group task: requests into its mailbox, and the
//! status and applied index it publishes without being asked.

use crate::group_status::GroupStatus;
use std::sync::Arc;
use std::time::Duration;

use raft::eraftpb::Message;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;

use crate::error::{Error, NotProposed, Result, Uncertain};

pub(super) enum Request<O> {
    Propose {
        data: Vec<u8>,
        reply: oneshot::Sender<Result<O>>,
    },
    ReadIndex {
        reply: oneshot::Sender<Result<u64>>,
    },
    Step(Box<Message>),
    /// The transport could not reach `peer`.
    Unreachable {
        peer: u64,
    },
    /// A snapshot stream to `peer` finished (`ok`) or failed.
    SnapshotSent {
        peer: u64,
        ok: bool,
    },
    /// Start an election now instead of after the election timeout.
    Campaign,
    /// Tick again if hibernating (a peer connected or went away).
    Wake,
}

/// Longest wait for raft to answer a ReadIndex.
const READ_INDEX_TIMEOUT: Duration = Duration::from_secs(10);

/// Handle to a running group; cheap to clone.
pub struct GroupHandle<O> {
    pub(super) id: u64,
    pub(super) tx: mpsc::Sender<Request<O>>,
    pub(super) status: Arc<GroupStatus>,
    pub(super) applied: watch::Receiver<u64>,
    pub(super) stopped: CancellationToken,
}

impl<O> Clone for GroupHandle<O> {
    fn clone(&self) -> Self {
        Self {
            id: self.id,
            tx: self.tx.clone(),
            status: self.status.clone(),
            applied: self.applied.clone(),
            stopped: self.stopped.clone(),
        }
    }
}

impl<O> std::fmt::Debug for GroupHandle<O> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GroupHandle").field("id", &self.id).finish()
    }
}

impl<O: Send + 'static> GroupHandle<O> {
    /// The group id (table id).
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Raft status as last published by the group task.
    pub fn status(&self) -> &GroupStatus {
        &self.status
    }

    fn send(&self, req: Request<O>) -> Result<()> {
        self.tx.try_send(req).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => Error::NotProposed(NotProposed::Busy),
            mpsc::error::TrySendError::Closed(_) => Error::NotProposed(NotProposed::Closed),
        })
    }

    /// Proposes `data` and waits until it is durable on a quorum and applied here.
    pub async fn propose(&self, data: Vec<u8>) -> Result<O> {
        let (reply, rx) = oneshot::channel();
        self.send(Request::Propose { data, reply })?;
        // The group took it: if the task goes away without an answer, the proposal may
        // already be in the log.
        rx.await
            .map_err(|_| Error::OutcomeUnknown(Uncertain::Stopped))?
    }

    /// Linearizable read barrier: returns once this replica has applied everything
    /// committed before the call (raft ReadIndex).
    pub async fn read_barrier(&self) -> Result<()> {
        let (reply, rx) = oneshot::channel();
        self.send(Request::ReadIndex { reply })?;
        // Raft may drop a ReadIndex (e.g. leadership moves while it is in flight) without
        // an answer; never wait for it forever.
        let index = tokio::time::timeout(READ_INDEX_TIMEOUT, rx)
            .await
            .map_err(|_| Error::ReadTimeout)?
            .map_err(|_| Error::ShuttingDown)??;
        self.wait_applied(index).await
    }

    /// Waits until this replica has applied `index`.
    pub async fn wait_applied(&self, index: u64) -> Result<()> {
        let mut applied = self.applied.clone();
        applied
            .wait_for(|a| *a >= index)
            .await
            .map_err(|_| Error::ShuttingDown)?;
        Ok(())
    }

    /// Feeds a raft message from a peer into the group.
    pub fn step(&self, msg: Message) -> Result<()> {
        self.send(Request::Step(Box::new(msg)))
    }

    /// Tells raft that messages to `peer` could not be delivered.
    pub fn report_unreachable(&self, peer: u64) -> Result<()> {
        self.send(Request::Unreachable { peer })
    }

    /// Starts an election at once: the node that created a table leads it right away
    /// instead of every replica waiting out an election timeout.
    pub fn campaign(&self) -> Result<()> {
        self.send(Request::Campaign)
    }

    /// Makes a hibernating group tick again (see `hibernate.rs`).
    pub fn wake(&self) -> Result<()> {
        self.send(Request::Wake)
    }

    /// Tells raft how sending a snapshot to `peer` ended.
    pub fn report_snapshot(&self, peer: u64, ok: bool) -> Result<()> {
        self.send(Request::SnapshotSent { peer, ok })
    }

    /// Resolves once the group task has exited (stopped, or failed).
    pub async fn stopped(&self) {
        self.stopped.cancelled().await;
    }

    /// The applied index, watched. The receiver has seen the current value: its first
    /// `changed()` waits for the next apply.
    pub fn applied_watch(&self) -> watch::Receiver<u64> {
        let mut rx = self.applied.clone();
        rx.borrow_and_update();
        rx
    }
}
