//! Linearizable reads (raft ReadIndex): each waits for raft's read index, and is asked
//! again when raft drops it silently (a leader change, a lost message).

use std::collections::{HashMap, VecDeque};

use raft::{RawNode, Ready, StateRole};
use tokio::sync::oneshot;

use crate::error::{Error, Result};
use crate::raft_storage::RaftStorage;

/// Ticks before an unanswered read index is asked again.
const READ_RETRY_TICKS: u64 = 10;

/// A linearizable read waiting for raft's read index.
struct PendingRead {
    reply: oneshot::Sender<Result<u64>>,
    /// Tick at which it was last handed to raft (`None`: not yet).
    issued_at: Option<u64>,
}

/// The reads of one group.
pub(super) struct Reads {
    node: u64,
    /// By context id.
    pending: HashMap<u64, PendingRead>,
    /// Reads to hand to raft as soon as it can take them (in arrival order).
    unissued: VecDeque<u64>,
    next: u64,
}

impl Reads {
    pub(super) fn new(node: u64) -> Self {
        Self {
            node,
            pending: HashMap::new(),
            unissued: VecDeque::new(),
            next: 0,
        }
    }

    /// Whether no read waits for its index.
    pub(super) fn is_empty(&self) -> bool {
        self.pending.is_empty() && self.unissued.is_empty()
    }

    /// Queues a read; [`Reads::release`] hands it to raft.
    pub(super) fn add(&mut self, reply: oneshot::Sender<Result<u64>>) {
        self.next += 1;
        self.pending.insert(
            self.next,
            PendingRead {
                reply,
                issued_at: None,
            },
        );
        self.unissued.push_back(self.next);
    }

    /// Hands waiting reads to raft once it can answer them: a follower needs to know
    /// the leader; a leader must have committed an entry in its term (raft-rs silently
    /// drops earlier ones).
    pub(super) fn release(&mut self, raw_node: &mut RawNode<RaftStorage>, now: u64) {
        let raft = &raw_node.raft;
        if self.unissued.is_empty()
            || raft.leader_id == 0
            || (raft.state == StateRole::Leader && !raft.commit_to_current_term())
        {
            return;
        }
        while let Some(ctx) = self.unissued.pop_front() {
            let Some(read) = self.pending.get_mut(&ctx) else {
                continue;
            };
            read.issued_at = Some(now);
            raw_node.read_index(read_context(self.node, ctx));
        }
    }

    /// Answers the reads whose read index a Ready carries.
    pub(super) fn answer(&mut self, rd: &mut Ready) {
        for rs in rd.take_read_states() {
            let Some(ctx) = read_context_id(self.node, &rs.request_ctx) else {
                continue;
            };
            if let Some(read) = self.pending.remove(&ctx) {
                let _ = read.reply.send(Ok(rs.index));
            }
        }
    }

    /// Asks again for reads raft has held too long (called every tick).
    pub(super) fn retry_stale(&mut self, now: u64) {
        if !now.is_multiple_of(READ_RETRY_TICKS) {
            return;
        }
        for (ctx, read) in &mut self.pending {
            if read
                .issued_at
                .is_some_and(|at| now - at >= READ_RETRY_TICKS)
            {
                read.issued_at = None;
                self.unissued.push_back(*ctx);
            }
        }
    }

    /// A read raft was working on is lost with a leader change; ask again.
    pub(super) fn leader_changed(&mut self) {
        for (ctx, read) in &mut self.pending {
            if read.issued_at.take().is_some() {
                self.unissued.push_back(*ctx);
            }
        }
    }

    /// Forgets reads whose callers gave up.
    pub(super) fn sweep(&mut self) {
        self.pending.retain(|_, read| !read.reply.is_closed());
    }

    /// The group stops: every read fails.
    pub(super) fn stopped(&mut self) {
        for (_, read) in self.pending.drain() {
            let _ = read.reply.send(Err(Error::ShuttingDown));
        }
        self.unissued.clear();
    }
}

/// A read's context as raft carries it: the leader keys pending reads by context, so
/// contexts from different nodes must never collide.
fn read_context(node: u64, id: u64) -> Vec<u8> {
    let mut ctx = node.to_be_bytes().to_vec();
    ctx.extend_from_slice(&id.to_be_bytes());
    ctx
}

/// The id of one of this node's reads from its context.
fn read_context_id(node: u64, ctx: &[u8]) -> Option<u64> {
    if ctx.len() != 16 || crate::keys::decode_u64(&ctx[..8])? != node {
        return None;
    }
    crate::keys::decode_u64(&ctx[8..])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_contexts_are_per_node() {
        let ctx = read_context(2, 7);
        assert_eq!(read_context_id(2, &ctx), Some(7));
        assert_eq!(read_context_id(1, &ctx), None);
        assert_eq!(read_context_id(2, &ctx[..8]), None);
    }
}
