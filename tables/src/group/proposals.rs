//! Who waits for which proposal, and what each is told when its fate is decided: its
//! output once applied here, or exactly what is known when it never will be (overwritten
//! by another leader: safe to retry; dropped by a leader change or a snapshot: unknown).

use std::collections::{BTreeMap, HashMap};
use std::sync::LazyLock;

use tokio::sync::oneshot;

use crate::error::{Error, NotProposed, Result, Uncertain};

/// Where a proposer's answer goes.
pub(super) type Reply<O> = oneshot::Sender<Result<O>>;

/// A value unique to this process, in every proposal's context: a restarted node must not
/// mistake an entry proposed by its previous incarnation (replayed from the log) for one
/// of its own current proposals.
static INCARNATION: LazyLock<u64> = LazyLock::new(|| {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    nanos ^ (u64::from(std::process::id()) << 40)
});

/// Who proposed an entry, carried in the entry's context. The replica that proposed it
/// (leader or not: followers forward proposals to the leader inside raft) answers its
/// caller when it applies the entry, with its own state machine's output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct ProposalId {
    node: u64,
    incarnation: u64,
    pub(super) seq: u64,
}

impl ProposalId {
    pub(super) fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(24);
        out.extend_from_slice(&self.node.to_be_bytes());
        out.extend_from_slice(&self.incarnation.to_be_bytes());
        out.extend_from_slice(&self.seq.to_be_bytes());
        out
    }

    fn decode(ctx: &[u8]) -> Option<Self> {
        if ctx.len() != 24 {
            return None;
        }
        Some(Self {
            node: crate::keys::decode_u64(&ctx[..8])?,
            incarnation: crate::keys::decode_u64(&ctx[8..16])?,
            seq: crate::keys::decode_u64(&ctx[16..])?,
        })
    }
}

/// The proposals made on this replica and not yet answered.
pub(super) struct Proposals<O> {
    node: u64,
    next: u64,
    /// By sequence number, with the leader they were forwarded to (0: proposed as leader).
    waiting: HashMap<u64, (u64, Reply<O>)>,
    /// Index -> (term, seq) of proposals appended while this replica led: if another
    /// entry is applied there, the proposal was overwritten and can never commit.
    appended: BTreeMap<u64, (u64, u64)>,
}

impl<O> Proposals<O> {
    pub(super) fn new(node: u64) -> Self {
        Self {
            node,
            next: 0,
            waiting: HashMap::new(),
            appended: BTreeMap::new(),
        }
    }

    /// Whether no proposal made here waits for an answer.
    pub(super) fn is_empty(&self) -> bool {
        self.waiting.is_empty() && self.appended.is_empty()
    }

    /// A fresh id for the next proposal.
    pub(super) fn next_id(&mut self) -> ProposalId {
        self.next += 1;
        ProposalId {
            node: self.node,
            incarnation: *INCARNATION,
            seq: self.next,
        }
    }

    /// `id` is in raft: forwarded to leader `via` (0 if this replica leads), appended at
    /// `appended` = (index, term) when this replica leads.
    pub(super) fn add(
        &mut self,
        id: ProposalId,
        via: u64,
        appended: Option<(u64, u64)>,
        reply: Reply<O>,
    ) {
        if let Some((index, term)) = appended {
            self.appended.insert(index, (term, id.seq));
        }
        self.waiting.insert(id.seq, (via, reply));
    }

    /// The entry at `index` with `context` was applied with `output`: answers its
    /// proposer if it is ours, and tells proposals overwritten at or before `index`.
    pub(super) fn applied(&mut self, index: u64, context: &[u8], output: O) {
        let mine = ProposalId::decode(context)
            .filter(|id| id.node == self.node && id.incarnation == *INCARNATION);
        if let Some(id) = mine
            && let Some((_, reply)) = self.waiting.remove(&id.seq)
        {
            let _ = reply.send(Ok(output));
        }
        while let Some(first) = self.appended.first_entry() {
            if *first.key() > index {
                break;
            }
            let (_, (_, seq)) = first.remove_entry();
            if mine.is_none_or(|id| id.seq != seq)
                && let Some((_, reply)) = self.waiting.remove(&seq)
            {
                // Another entry holds its index in the committed log: it never applies.
                let _ = reply.send(Err(Error::NotProposed(NotProposed::Overwritten)));
            }
        }
    }

    /// Leadership moved to `leader`: a proposal forwarded to a leader that no longer
    /// leads may have been lost with it (raft drops forwarded proposals silently) or may
    /// still commit; saying so now beats letting the caller wait out its deadline. The
    /// entries in `committed` (committed here, not yet applied: e.g. held back behind a
    /// load marker) are not in doubt; their proposers wait for the apply.
    pub(super) fn leader_changed<'a>(
        &mut self,
        leader: u64,
        committed: impl Iterator<Item = &'a [u8]>,
    ) {
        let certain: std::collections::HashSet<u64> = committed
            .filter_map(ProposalId::decode)
            .filter(|id| id.node == self.node && id.incarnation == *INCARNATION)
            .map(|id| id.seq)
            .collect();
        let lost: Vec<u64> = self
            .waiting
            .iter()
            .filter(|(seq, (via, _))| *via != 0 && *via != leader && !certain.contains(seq))
            .map(|(seq, _)| *seq)
            .collect();
        for seq in lost {
            if let Some((_, reply)) = self.waiting.remove(&seq) {
                let _ = reply.send(Err(Error::OutcomeUnknown(Uncertain::LeaderChanged)));
            }
        }
    }

    /// A raft snapshot at `index` (last entry of term `term`) replaced the log. A
    /// proposal appended at or before `index` in the same term is in it (one leader per
    /// term never overwrites its own entries), so it committed, result unknown; any other
    /// waiting proposal may or may not be in it.
    pub(super) fn snapshot_installed(&mut self, index: u64, term: u64) {
        let covered: Vec<(u64, (u64, u64))> = self
            .appended
            .range(..=index)
            .map(|(i, e)| (*i, *e))
            .collect();
        for (i, (appended_term, seq)) in covered {
            self.appended.remove(&i);
            if let Some((_, reply)) = self.waiting.remove(&seq) {
                let error = if appended_term == term {
                    Error::CommittedWithoutResult { revision: i }
                } else {
                    Error::OutcomeUnknown(Uncertain::Snapshot)
                };
                let _ = reply.send(Err(error));
            }
        }
        let forwarded: Vec<u64> = self
            .waiting
            .iter()
            .filter(|(_, (via, _))| *via != 0)
            .map(|(seq, _)| *seq)
            .collect();
        for seq in forwarded {
            if let Some((_, reply)) = self.waiting.remove(&seq) {
                let _ = reply.send(Err(Error::OutcomeUnknown(Uncertain::Snapshot)));
            }
        }
    }

    /// Forgets proposals whose callers gave up.
    pub(super) fn sweep(&mut self) {
        self.waiting.retain(|_, (_, reply)| !reply.is_closed());
    }

    /// The group stops: every waiting proposal's outcome is unknown.
    pub(super) fn stopped(&mut self) {
        for (_, (_, reply)) in self.waiting.drain() {
            let _ = reply.send(Err(Error::OutcomeUnknown(Uncertain::Stopped)));
        }
        self.appended.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(rx: &mut oneshot::Receiver<Result<u8>>) -> String {
        match rx.try_recv().expect("answered") {
            Ok(v) => format!("ok {v}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn proposal_ids_round_trip_and_reject_other_shapes() {
        let mut p = Proposals::<u8>::new(3);
        let id = p.next_id();
        assert_eq!(ProposalId::decode(&id.encode()), Some(id));
        assert_eq!(ProposalId::decode(&[]), None);
        assert_eq!(ProposalId::decode(&[1; 23]), None);
    }

    #[test]
    fn each_fate_is_told_as_what_it_is() {
        let mut p = Proposals::<u8>::new(1);
        let mut rx = Vec::new();
        let mut ids = Vec::new();
        for (i, (via, appended)) in [
            (0, Some((10, 2))), // applied
            (0, Some((11, 2))), // overwritten by another leader's entry at 11
            (2, None),          // forwarded to 2, which loses leadership
            (0, Some((12, 2))), // covered by a snapshot of term 2
            (0, Some((13, 1))), // covered by a snapshot, appended in an older term
        ]
        .into_iter()
        .enumerate()
        {
            let (tx, r) = oneshot::channel();
            let id = p.next_id();
            assert_eq!(id.seq, i as u64 + 1);
            p.add(id, via, appended, tx);
            rx.push(r);
            ids.push(id);
        }
        p.applied(10, &ids[0].encode(), 7);
        assert_eq!(answer(&mut rx[0]), "ok 7");
        p.applied(11, b"someone else's", 0);
        assert!(answer(&mut rx[1]).contains("not applied"));
        p.leader_changed(3, std::iter::empty());
        assert!(answer(&mut rx[2]).starts_with("outcome unknown"));
        p.snapshot_installed(13, 2);
        assert!(answer(&mut rx[3]).contains("committed at revision 12"));
        assert!(answer(&mut rx[4]).starts_with("outcome unknown"));
    }

    #[test]
    fn a_forwarded_proposal_known_committed_outlives_a_leader_change() {
        let mut p = Proposals::<u8>::new(1);
        let (tx, mut rx) = oneshot::channel();
        let id = p.next_id();
        p.add(id, 2, None, tx);
        let context = id.encode();
        p.leader_changed(1, std::iter::once(context.as_slice()));
        assert!(rx.try_recv().is_err(), "still waiting for its apply");
        p.applied(20, &context, 5);
        assert_eq!(answer(&mut rx), "ok 5");
    }
}
