//! Hibernation: a group with nothing to do stops ticking (tikv's hibernate regions), so
//! idle tables cost neither CPU nor heartbeats.
//!
//! A leader whose group has been idle for `hibernate_after_ticks` (nothing proposed,
//! read, applied or in flight, and every replica holding its whole log) sends each
//! follower a last heartbeat marked with [`NOTICE_CONTEXT`] and stops ticking. A follower
//! that receives the notice from its leader, in its term, holding exactly the leader's
//! log and with nothing of its own pending, stops ticking too; one that is not there yet
//! keeps ticking, and its next election timeout wakes the group up again (its pre-vote
//! is a message). Any request or event wakes a sleeping group: a proposal, a read, a
//! peer's message, or the node noticing that a peer connected or went away (so a
//! replica that restarted is caught up, and a leader's loss is noticed within the
//! election timeout even by idle groups).
//!
//! The notice is an ordinary raft heartbeat: raft handles it as one (the follower resets
//! its election clock and answers), and the leader ignores the answer's context, which
//! names no pending read.

use raft::eraftpb::{Message, MessageType};
use raft::{RawNode, StateRole};

use super::{RaftGroup, StateMachine};
use crate::raft_storage::RaftStorage;

/// The context of the heartbeat that tells followers their leader went to sleep.
pub(super) const NOTICE_CONTEXT: &[u8] = b"flotilla/hibernate";

/// What a follower learned from its leader's notice.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Notice {
    leader: u64,
    term: u64,
    commit: u64,
}

/// One group's hibernation state.
#[derive(Debug, Default)]
pub(super) struct Hibernation {
    /// Consecutive ticks a leader had nothing to do.
    idle_ticks: u64,
    /// Not ticking until something wakes the group.
    asleep: bool,
    /// Set when the group woke: the ticker restarts its period.
    woke: bool,
    /// A follower's notice, acted on once the Ready it caused is handled.
    notice: Option<Notice>,
}

impl Hibernation {
    pub(super) fn is_asleep(&self) -> bool {
        self.asleep
    }

    /// Wakes the group (or keeps it awake); true if it was asleep.
    pub(super) fn wake(&mut self) -> bool {
        self.notice = None;
        let was = std::mem::replace(&mut self.asleep, false);
        self.woke |= was;
        was
    }

    /// Work arrived: the idle count starts over.
    pub(super) fn busy(&mut self) {
        self.idle_ticks = 0;
    }

    /// Whether the group woke since the last call (the caller restarts its ticker).
    pub(super) fn take_woke(&mut self) -> bool {
        std::mem::take(&mut self.woke)
    }

    /// A leader's tick: counts idle ticks; true once `after` of them passed in a row.
    pub(super) fn leader_tick(&mut self, idle: bool, after: u64) -> bool {
        if !idle {
            self.idle_ticks = 0;
            return false;
        }
        self.idle_ticks += 1;
        after > 0 && self.idle_ticks >= after
    }

    /// Marks the group asleep (a leader that sent its notices, or a follower that
    /// acted on one); true if it was awake.
    pub(super) fn sleep(&mut self) -> bool {
        self.woke = false;
        self.idle_ticks = 0;
        self.notice = None;
        !std::mem::replace(&mut self.asleep, true)
    }

    /// Remembers a leader's notice, if `msg` is one.
    pub(super) fn observe(&mut self, msg: &Message) {
        if is_notice(msg) {
            self.notice = Some(Notice {
                leader: msg.from,
                term: msg.term,
                commit: msg.commit,
            });
        }
    }

    /// A follower with a notice: whether it may sleep now (`quiet`: nothing of its own
    /// pending), given its raft state. The notice is used up either way.
    pub(super) fn follower_may_sleep(
        &mut self,
        raw_node: &RawNode<RaftStorage>,
        quiet: bool,
    ) -> bool {
        let Some(notice) = self.notice.take() else {
            return false;
        };
        let raft = &raw_node.raft;
        quiet
            && raft.state == StateRole::Follower
            && raft.leader_id == notice.leader
            && raft.term == notice.term
            && raft.raft_log.last_index() == notice.commit
            && raft.raft_log.committed == notice.commit
    }
}

impl<M: StateMachine> RaftGroup<M> {
    /// Nothing pending on this replica, in raft or around it.
    pub(super) fn is_quiet(&self) -> bool {
        self.proposals.is_empty()
            && self.reads.is_empty()
            && self.waiting.is_empty()
            && self.own_proposals.is_empty()
            && self.in_flight.is_empty()
            && self.installing.is_none()
            && self.paused.is_none()
            && raft_is_idle(&self.raw_node)
    }

    /// A follower that got its leader's hibernation notice sleeps if it holds exactly
    /// the leader's log and has nothing pending.
    pub(super) fn maybe_follow_to_sleep(&mut self) {
        // Runs after every Ready: the quiet check is for the rare turn with a notice.
        if self.hibernation.notice.is_none() {
            return;
        }
        let quiet = self.is_quiet();
        if self.hibernation.follower_may_sleep(&self.raw_node, quiet) && self.hibernation.sleep() {
            self.metrics.hibernating.inc();
            tracing::debug!(
                term = self.raw_node.raft.term,
                "leader hibernated: hibernating"
            );
        }
    }

    /// Wakes the group if it sleeps.
    pub(super) fn wake(&mut self) {
        if self.hibernation.wake() {
            self.metrics.hibernating.dec();
        }
    }
}

/// Whether `msg` is a leader's hibernation notice.
pub(super) fn is_notice(msg: &Message) -> bool {
    msg.get_msg_type() == MessageType::MsgHeartbeat && msg.context == NOTICE_CONTEXT
}

/// Whether `msg` is a leader's heartbeat: routine traffic, not work.
pub(super) fn is_heartbeat(msg: &Message) -> bool {
    msg.get_msg_type() == MessageType::MsgHeartbeat
}

/// Whether `msg` answers a heartbeat (or a notice): raft takes it whether the leader
/// sleeps or not, and it never needs the leader awake.
pub(super) fn is_heartbeat_answer(msg: &Message) -> bool {
    msg.get_msg_type() == MessageType::MsgHeartbeatResponse
}

/// Whether raft itself has nothing left to do: everything committed and applied, no
/// reads or transfers pending, and (for a leader) every replica holding the whole log.
pub(super) fn raft_is_idle(raw_node: &RawNode<RaftStorage>) -> bool {
    let raft = &raw_node.raft;
    let last = raft.raft_log.last_index();
    if raft.raft_log.committed != last
        || raft.raft_log.applied != last
        || raft.pending_read_count() > 0
        || raft.lead_transferee.is_some()
        || raw_node.has_ready()
    {
        return false;
    }
    match raft.state {
        // Whatever state raft keeps a replica's progress in (after a rejection or an
        // unreachable report it stays in probe until the next append), holding the
        // whole log is what counts.
        StateRole::Leader => raft.prs().iter().all(|(_, pr)| pr.matched == last),
        StateRole::Follower => true,
        StateRole::Candidate | StateRole::PreCandidate => false,
    }
}

/// The notices a leader sends its followers before it stops ticking.
pub(super) fn notices(raw_node: &RawNode<RaftStorage>) -> Vec<Message> {
    let raft = &raw_node.raft;
    raft.prs()
        .iter()
        .filter(|(id, _)| **id != raft.id)
        .map(|(id, pr)| {
            let mut m = Message::default();
            m.set_msg_type(MessageType::MsgHeartbeat);
            m.from = raft.id;
            m.to = *id;
            m.term = raft.term;
            // As raft's own heartbeats: never commit past what the follower holds.
            m.commit = pr.matched.min(raft.raft_log.committed);
            m.context = NOTICE_CONTEXT.to_vec().into();
            m
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_leader_sleeps_after_enough_idle_ticks_in_a_row() {
        let mut h = Hibernation::default();
        assert!(!h.leader_tick(true, 3));
        assert!(!h.leader_tick(true, 3));
        assert!(!h.leader_tick(false, 3), "a busy tick resets the count");
        assert!(!h.leader_tick(true, 3));
        h.busy();
        assert!(!h.leader_tick(true, 3), "so does work between ticks");
        assert!(!h.leader_tick(true, 3));
        assert!(h.leader_tick(true, 3), "the third idle tick in a row");
        assert!(h.sleep());
        assert!(h.is_asleep());
        assert!(!h.sleep(), "already asleep");
        assert!(h.wake());
        assert!(h.take_woke(), "the ticker restarts");
        assert!(!h.take_woke());
        assert!(!h.wake(), "already awake");
        assert!(!h.leader_tick(true, 0), "0 never hibernates");
    }

    #[test]
    fn only_a_marked_heartbeat_is_a_notice() {
        let mut m = Message::default();
        m.set_msg_type(MessageType::MsgHeartbeat);
        assert!(!is_notice(&m));
        m.context = NOTICE_CONTEXT.to_vec().into();
        assert!(is_notice(&m));
        m.set_msg_type(MessageType::MsgHeartbeatResponse);
        assert!(!is_notice(&m));
        m.set_msg_type(MessageType::MsgAppend);
        assert!(!is_notice(&m));
    }
}
