//! Stepping a peer's raft message into the group: the vote fence first, then the repair
//! of a replica that lost its log, then raft; a snapshot raft does not take has its staged
//! file removed.

use raft::StateRole;
use raft::eraftpb::{Message, MessageType};

use super::{RaftGroup, StateMachine};

impl<M: StateMachine> RaftGroup<M> {
    pub(super) fn step(&mut self, mut msg: Message) {
        if let Some(fence) = &mut self.fence {
            fence.observe(&msg);
            if fence.blocks(&msg) {
                tracing::debug!(from = msg.from, term = msg.term, "vote request fenced");
                return;
            }
        }
        self.repair_lost_log(&mut msg);
        let snapshot = (msg.get_msg_type() == MessageType::MsgSnapshot).then(|| {
            (
                msg.get_snapshot().get_metadata().index,
                msg.get_snapshot().data.clone(),
            )
        });
        if let Err(e) = self.raw_node.step(msg) {
            tracing::debug!("step: {e}");
        }
        if let Some((index, data)) = snapshot {
            let taken = self
                .raw_node
                .raft
                .raft_log
                .unstable_snapshot()
                .as_ref()
                .is_some_and(|s| s.get_metadata().index == index && s.data == data);
            if !taken {
                crate::snapshot::discard(&data);
            }
        }
    }

    /// Lets a replica that lost its log (restarted with a fresh data dir) rejoin. Raft
    /// assumes persisted state is never lost: the leader still believes the replica holds
    /// what it acknowledged, sends it heartbeats committing entries it no longer has (on
    /// which raft-rs panics) and ignores its rejections as stale. So a follower commits
    /// only entries it holds and answers such a heartbeat with a rejection naming its last
    /// index; a leader that hears a rejection hinting at less than the replica had
    /// acknowledged starts replicating to it afresh (from the log, or by snapshot).
    /// Lowering `matched` is conservative: it can only delay commits.
    fn repair_lost_log(&mut self, msg: &mut Message) {
        let raft = &mut self.raw_node.raft;
        match msg.get_msg_type() {
            MessageType::MsgHeartbeat if msg.commit > raft.raft_log.last_index() => {
                // The leader believes we hold entries we do not have; tell it, in the
                // form it acts on (a rejection hinting at our last index).
                let last = raft.raft_log.last_index();
                let mut reply = Message::default();
                reply.set_msg_type(MessageType::MsgAppendResponse);
                reply.to = msg.from;
                reply.from = self.config.node_id;
                reply.term = msg.term;
                reply.reject = true;
                reply.index = msg.commit;
                reply.reject_hint = last;
                msg.commit = last;
                self.send(vec![reply]);
            }
            MessageType::MsgAppendResponse if msg.reject && raft.state == StateRole::Leader => {
                if let Some(pr) = raft.mut_prs().get_mut(msg.from)
                    && msg.reject_hint < pr.matched
                {
                    tracing::warn!(
                        peer = msg.from,
                        acknowledged = pr.matched,
                        holds = msg.reject_hint,
                        "a replica lost log entries it had acknowledged; replicating to it afresh"
                    );
                    pr.matched = msg.reject_hint;
                    pr.become_probe();
                }
            }
            _ => {}
        }
    }
}
