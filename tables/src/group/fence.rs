//! The vote fence of a replica that lost its raft state.
//!
//! Raft assumes a vote, once cast, is never forgotten. A node whose data directory was
//! wiped rejoins with its old raft id and term 0: asked for a vote in a term it had
//! already voted in, it would vote again, and two leaders could be elected in one term
//! (each with a majority counting this node), breaking the log matching property.
//!
//! The fence: such a replica casts no vote (and asks for none) until it has heard from
//! every other voter of its group, and then only in terms above every term it heard
//! (`floor`). That is safe: if it voted in term T before the wipe, it voted for a
//! candidate whose term has been ≥ T ever since (terms only grow and are persisted), and
//! that candidate is among the voters it heard from, so T ≤ floor. Pre-votes record
//! nothing and pass; they are also how fenced replicas of a brand-new cluster learn
//! each other's terms. The price: while a voter is unreachable, a fenced replica does
//! not vote, so a group whose fenced replica is needed for a majority (a wiped node plus
//! a down one, or a new cluster with an initial member missing) waits for that voter.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use raft::eraftpb::{Message, MessageType};

/// See the module docs.
#[derive(Debug)]
pub(super) struct VoteFence {
    /// The other voters of the group.
    peers: Vec<u64>,
    /// The highest real term each peer showed so far.
    heard: HashMap<u64, u64>,
    /// Set once every peer was heard: votes only in terms above it.
    floor: Option<u64>,
    /// Told the leader's commit index of the first append this replica gets (the
    /// catalog's: tables created up to it existed before this node lost its state).
    first_commit: Option<Arc<AtomicU64>>,
}

impl VoteFence {
    /// The fence of node `me` in a group of `voters`.
    pub(super) fn new(voters: &[u64], me: u64, first_commit: Option<Arc<AtomicU64>>) -> Self {
        Self {
            peers: voters.iter().copied().filter(|&v| v != me).collect(),
            heard: HashMap::new(),
            floor: None,
            first_commit,
        }
        .settled()
    }

    fn settled(mut self) -> Self {
        self.settle();
        self
    }

    /// Learns what `msg`, received from a peer, shows of its sender's term.
    pub(super) fn observe(&mut self, msg: &Message) {
        if let Some(cell) = &self.first_commit
            && matches!(
                msg.get_msg_type(),
                MessageType::MsgAppend | MessageType::MsgSnapshot
            )
        {
            let commit = msg.commit.max(msg.get_snapshot().get_metadata().index);
            let _ = cell.compare_exchange(0, commit.max(1), Ordering::AcqRel, Ordering::Acquire);
        }
        if self.floor.is_some() || !self.peers.contains(&msg.from) {
            return;
        }
        let term = match msg.get_msg_type() {
            // A pre-vote asks for the sender's next term.
            MessageType::MsgRequestPreVote => msg.term.saturating_sub(1),
            // A granted pre-vote echoes the candidate's term, not the voter's.
            MessageType::MsgRequestPreVoteResponse if !msg.reject => return,
            MessageType::MsgRequestPreVoteResponse
            | MessageType::MsgRequestVote
            | MessageType::MsgRequestVoteResponse
            | MessageType::MsgAppend
            | MessageType::MsgAppendResponse
            | MessageType::MsgHeartbeat
            | MessageType::MsgHeartbeatResponse
            | MessageType::MsgSnapshot
            | MessageType::MsgTimeoutNow => msg.term,
            _ => return,
        };
        let seen = self.heard.entry(msg.from).or_insert(term);
        *seen = (*seen).max(term);
        self.settle();
    }

    fn settle(&mut self) {
        if self.floor.is_none() && self.peers.iter().all(|p| self.heard.contains_key(p)) {
            self.floor = Some(self.heard.values().copied().max().unwrap_or(0));
        }
    }

    /// Whether `msg` (to or from this replica) must not pass: a vote request in a term
    /// this replica may not vote in.
    pub(super) fn blocks(&self, msg: &Message) -> bool {
        msg.get_msg_type() == MessageType::MsgRequestVote
            && self.floor.is_none_or(|floor| msg.term <= floor)
    }

    /// Whether the fence no longer matters: this replica's own term is above the floor,
    /// so every vote it can still cast is in a term it never voted in before.
    pub(super) fn is_lifted(&self, own_term: u64) -> bool {
        self.floor.is_some_and(|floor| own_term > floor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(t: MessageType, from: u64, term: u64, reject: bool) -> Message {
        let mut m = Message::default();
        m.set_msg_type(t);
        m.from = from;
        m.term = term;
        m.reject = reject;
        m
    }

    #[test]
    fn votes_wait_for_every_peer_then_only_above_their_terms() {
        let mut f = VoteFence::new(&[1, 2, 3], 2, None);
        let vote = |term| msg(MessageType::MsgRequestVote, 3, term, false);
        assert!(f.blocks(&vote(9)), "nobody heard yet");
        f.observe(&msg(MessageType::MsgHeartbeat, 1, 6, false));
        assert!(f.blocks(&vote(9)), "node 3 not heard yet");
        // A granted pre-vote response says nothing of the voter's term.
        f.observe(&msg(MessageType::MsgRequestPreVoteResponse, 3, 9, false));
        assert!(f.blocks(&vote(9)));
        f.observe(&msg(MessageType::MsgRequestPreVote, 3, 5, false));
        // Heard both: floor = max(6, 4) = 6.
        assert!(f.blocks(&vote(6)), "node 1 may have been voted for in 6");
        assert!(!f.blocks(&vote(7)));
        assert!(
            !f.blocks(&msg(MessageType::MsgRequestPreVote, 3, 1, false)),
            "pre-votes pass"
        );
        assert!(!f.is_lifted(6) && f.is_lifted(7));
    }

    #[test]
    fn a_single_voter_is_never_fenced_and_the_first_append_is_recorded() {
        let f = VoteFence::new(&[1], 1, None);
        assert!(!f.blocks(&msg(MessageType::MsgRequestVote, 1, 1, false)));
        let cell = Arc::new(AtomicU64::new(0));
        let mut f = VoteFence::new(&[1, 2], 2, Some(cell.clone()));
        let mut append = msg(MessageType::MsgAppend, 1, 3, false);
        append.commit = 17;
        f.observe(&append);
        append.commit = 40;
        f.observe(&append);
        assert_eq!(
            cell.load(Ordering::Acquire),
            17,
            "the first append's commit"
        );
    }
}
