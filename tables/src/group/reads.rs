//! Linearizable reads (raft ReadIndex). Reads that arrive together share one read index:
//! raft-rs confirms leadership with a heartbeat round per ReadIndex request, so asking
//! once per batch instead of once per read saves a round of messages to every peer per
//! read (an index taken after every read of the batch arrived is valid for all of them).
//! A batch is asked again when raft drops it silently (a leader change, a lost message).

use std::collections::{HashMap, VecDeque};

use raft::{RawNode, Ready, StateRole};
use tokio::sync::oneshot;

use crate::error::{Error, Result};
use crate::raft_storage::RaftStorage;

/// Ticks before an unanswered read index is asked again.
const READ_RETRY_TICKS: u64 = 10;

type Reply = oneshot::Sender<Result<u64>>;

/// Reads waiting for one read index.
struct Batch {
    replies: Vec<Reply>,
    /// Tick at which it was last handed to raft (`None`: not yet).
    issued_at: Option<u64>,
}

/// The reads of one group.
pub(super) struct Reads {
    node: u64,
    /// Reads that arrived since the last batch was formed.
    arrived: Vec<Reply>,
    /// Batches by context id.
    batches: HashMap<u64, Batch>,
    /// Batches to hand to raft as soon as it can take them (in order).
    unissued: VecDeque<u64>,
    next: u64,
}

impl Reads {
    pub(super) fn new(node: u64) -> Self {
        Self {
            node,
            arrived: Vec::new(),
            batches: HashMap::new(),
            unissued: VecDeque::new(),
            next: 0,
        }
    }

    /// Whether no read waits for its index.
    pub(super) fn is_empty(&self) -> bool {
        self.arrived.is_empty() && self.batches.is_empty()
    }

    /// Queues a read; the next [`Reads::release`] hands it to raft with every other read
    /// that arrived meanwhile.
    pub(super) fn add(&mut self, reply: Reply) {
        self.arrived.push(reply);
    }

    /// Hands waiting reads to raft once it can answer them: a follower needs to know
    /// the leader; a leader must have committed an entry in its term (raft-rs silently
    /// drops earlier ones).
    pub(super) fn release(&mut self, raw_node: &mut RawNode<RaftStorage>, now: u64) {
        if self.unissued.is_empty() && self.arrived.is_empty() {
            return;
        }
        let raft = &raw_node.raft;
        if raft.leader_id == 0
            || (raft.state == StateRole::Leader && !raft.commit_to_current_term())
        {
            return;
        }
        if !self.arrived.is_empty() {
            self.next += 1;
            let replies = std::mem::take(&mut self.arrived);
            self.batches.insert(
                self.next,
                Batch {
                    replies,
                    issued_at: None,
                },
            );
            self.unissued.push_back(self.next);
        }
        while let Some(ctx) = self.unissued.pop_front() {
            let Some(batch) = self.batches.get_mut(&ctx) else {
                continue;
            };
            batch.issued_at = Some(now);
            raw_node.read_index(read_context(self.node, ctx));
        }
    }

    /// Answers the reads whose read index a Ready carries.
    pub(super) fn answer(&mut self, rd: &mut Ready) {
        for rs in rd.take_read_states() {
            let Some(ctx) = read_context_id(self.node, &rs.request_ctx) else {
                continue;
            };
            if let Some(batch) = self.batches.remove(&ctx) {
                for reply in batch.replies {
                    let _ = reply.send(Ok(rs.index));
                }
            }
        }
    }

    /// Asks again for batches raft has held too long (called every tick).
    pub(super) fn retry_stale(&mut self, now: u64) {
        if !now.is_multiple_of(READ_RETRY_TICKS) {
            return;
        }
        for (ctx, batch) in &mut self.batches {
            if batch
                .issued_at
                .is_some_and(|at| now - at >= READ_RETRY_TICKS)
            {
                batch.issued_at = None;
                self.unissued.push_back(*ctx);
            }
        }
    }

    /// A read raft was working on is lost with a leader change; ask again.
    pub(super) fn leader_changed(&mut self) {
        for (ctx, batch) in &mut self.batches {
            if batch.issued_at.take().is_some() {
                self.unissued.push_back(*ctx);
            }
        }
    }

    /// Forgets reads whose callers gave up, and batches left with none.
    pub(super) fn sweep(&mut self) {
        self.arrived.retain(|reply| !reply.is_closed());
        for batch in self.batches.values_mut() {
            batch.replies.retain(|reply| !reply.is_closed());
        }
        self.batches.retain(|_, batch| !batch.replies.is_empty());
    }

    /// The group stops: every read fails.
    pub(super) fn stopped(&mut self) {
        let batched = self.batches.drain().flat_map(|(_, b)| b.replies);
        for reply in self.arrived.drain(..).chain(batched) {
            let _ = reply.send(Err(Error::ShuttingDown));
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
    use crate::engine::Engine;
    use raft::eraftpb::{Message, MessageType};
    use rocksdb::WriteBatch;

    /// Node 1 of a 3-voter group, made leader by hand with its first entry committed,
    /// so it can take read indexes.
    fn leader() -> (tempfile::TempDir, RawNode<RaftStorage>) {
        let dir = tempfile::tempdir().expect("tempdir");
        let engine = Engine::open(dir.path()).expect("open");
        let mut batch = WriteBatch::default();
        crate::raft_storage::bootstrap(&engine, &mut batch, 9, &[1, 2, 3]);
        engine.write(batch, true).expect("bootstrap");
        let storage = RaftStorage::load(engine, 9).expect("load");
        let config = raft::Config {
            id: 1,
            ..Default::default()
        };
        let mut node =
            RawNode::new(&config, storage, &crate::raft_log::logger(9)).expect("raw node");
        node.campaign().expect("campaign");
        let mut vote = Message::default();
        vote.set_msg_type(MessageType::MsgRequestVoteResponse);
        (vote.from, vote.to, vote.term) = (2, 1, node.raft.term);
        node.step(vote).expect("vote");
        assert_eq!(node.raft.state, StateRole::Leader);
        let rd = node.ready();
        let write = node
            .mut_store()
            .stage(rd.entries(), rd.hs())
            .expect("stage");
        drop(write); // the test's storage need not persist: entries stay in its tail
        let mut light = node.advance(rd);
        node.advance_apply_to(light.commit_index().unwrap_or(0));
        light.take_messages();
        let mut ack = Message::default();
        ack.set_msg_type(MessageType::MsgAppendResponse);
        (ack.from, ack.to, ack.term, ack.index) =
            (2, 1, node.raft.term, node.raft.raft_log.last_index());
        node.step(ack).expect("append response");
        assert!(node.raft.commit_to_current_term());
        let rd = node.ready();
        let light = node.advance(rd);
        drop(light);
        (dir, node)
    }

    #[test]
    fn reads_that_arrive_together_share_one_read_index() {
        let (_dir, mut node) = leader();
        let mut reads = Reads::new(1);
        let waiting: Vec<_> = (0..5)
            .map(|_| {
                let (tx, rx) = oneshot::channel();
                reads.add(tx);
                rx
            })
            .collect();
        reads.release(&mut node, 0);
        let mut rd = node.ready();
        let heartbeats: Vec<Message> = rd
            .take_messages()
            .into_iter()
            .filter(|m| m.get_msg_type() == MessageType::MsgHeartbeat)
            .collect();
        assert_eq!(
            heartbeats.len(),
            2,
            "one round to the two peers for five reads"
        );
        let _ = node.advance(rd);
        let mut pong = Message::default();
        pong.set_msg_type(MessageType::MsgHeartbeatResponse);
        (pong.from, pong.to, pong.term) = (2, 1, node.raft.term);
        pong.context = heartbeats[0].context.clone();
        node.step(pong).expect("heartbeat response");
        let mut rd = node.ready();
        reads.answer(&mut rd);
        let index = node.raft.raft_log.committed;
        for mut rx in waiting {
            assert_eq!(rx.try_recv().expect("answered").expect("ok"), index);
        }
        assert!(reads.is_empty());
    }

    #[test]
    fn read_contexts_are_per_node() {
        let ctx = read_context(2, 7);
        assert_eq!(read_context_id(2, &ctx), Some(7));
        assert_eq!(read_context_id(1, &ctx), None);
        assert_eq!(read_context_id(2, &ctx[..8]), None);
    }
}
