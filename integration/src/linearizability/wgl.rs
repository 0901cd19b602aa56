//! The Wing & Gong linearizability search, with Lowe's memoization.
//!
//! The history becomes a doubly linked list of call and return entries in time order.
//! The search repeatedly takes the earliest call it can: an operation may be linearized
//! next if its call precedes every remaining return, and the model accepts it in the
//! current state. Linearizing an operation unlinks its two entries and starts over from
//! the head of the list. Reaching a return entry means that operation had to be
//! linearized by now and wasn't, so the last choice is undone (its entries relinked)
//! and the next candidate after it is tried. Every (set of linearized operations,
//! state) configuration reached is remembered, so none is explored twice; without that
//! the search is exponential even on easy histories.
//!
//! Unknown-outcome mutations need more care: they may be linearized at any later point
//! or never, and keeping them optional to the end multiplies the configurations by two
//! for each of them. But once every operation that could observe such a mutation's
//! result has been linearized, it no longer matters: wherever it took effect later, the
//! next mutation would overwrite it unseen. So it gets an expiry entry after the returns
//! of all its observers, where the search drops it (as if linearized, so that both
//! kinds of configuration share memo entries); with no observers it is dropped at once.

use std::collections::{HashMap, HashSet};

use super::model::{Event, Model, State, Step};

/// The answer of one search.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Verdict {
    /// Some order of the operations is a legal, real-time respecting execution.
    Linearizable,
    /// No such order exists.
    NotLinearizable,
    /// The step budget ran out first.
    Exhausted,
}

/// A verdict with the work it took.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Outcome {
    /// The answer.
    pub verdict: Verdict,
    /// Search steps taken (each visit to a list entry is one step).
    pub steps: u64,
}

/// Searches for a linearization of `events`, starting from `initial`, under `model`,
/// taking at most `budget` steps.
pub(super) fn search(events: &[Event], initial: State, model: &mut Model, budget: u64) -> Outcome {
    let mut search = Search::new(events, model, initial);
    let mut steps = 0;
    let mut cursor = search.next[HEAD];
    let verdict = loop {
        if cursor == search.tail {
            break Verdict::Linearizable;
        }
        if steps >= budget {
            break Verdict::Exhausted;
        }
        steps += 1;
        let entry = search.entries[cursor];
        let next = match entry.kind {
            Kind::Call => Some(if search.linearize(model, events, entry.op, 0) {
                search.next[HEAD]
            } else {
                search.next[cursor]
            }),
            Kind::Expire if search.drop_expired(entry.op) => Some(search.next[HEAD]),
            Kind::Expire | Kind::Return => search.backtrack(model, events),
            // Every entry left is the end of an unknown-outcome operation that never
            // expires, or a call before one, so every other operation is linearized and
            // these can be left out.
            Kind::Unknown => break Verdict::Linearizable,
        };
        match next {
            Some(next) => cursor = next,
            None => break Verdict::NotLinearizable,
        }
    };
    Outcome { verdict, steps }
}

/// The list index of the head sentinel.
const HEAD: usize = 0;

/// What a list entry marks; at equal times entries sort in this order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    /// An operation's invocation. Calls sort before returns at the same time, so
    /// operations that merely touch are concurrent rather than ordered.
    Call,
    /// A completed operation's response.
    Return,
    /// The point after which an unknown-outcome operation can no longer be observed.
    /// Sorts after the returns of its observers at the same time.
    Expire,
    /// The end of an unknown-outcome operation that may be observed until the end:
    /// after everything else.
    Unknown,
}

/// One node of the list.
#[derive(Debug, Clone, Copy)]
struct Entry {
    /// The operation, as an index into the events.
    op: usize,
    /// Which end of the operation this is.
    kind: Kind,
}

/// A choice that may have to be undone.
#[derive(Debug)]
struct Frame {
    /// The operation linearized or dropped.
    op: usize,
    /// The state before it.
    state: State,
    /// Which of the model's successor states was taken; `None` if the operation was
    /// dropped at its expiry.
    alternative: Option<usize>,
}

/// The mutable state of one search.
struct Search {
    /// List nodes: the head sentinel, the entries in time order, the tail sentinel.
    entries: Vec<Entry>,
    /// Successor links of the list.
    next: Vec<usize>,
    /// Predecessor links of the list.
    prev: Vec<usize>,
    /// The list index of the tail sentinel.
    tail: usize,
    /// `start[op]` and `end[op]`: where the operation's entries are.
    start: Vec<usize>,
    end: Vec<usize>,
    /// Bitset of the operations linearized (or dropped) so far.
    done: Vec<u64>,
    /// The register's state after the operations linearized so far.
    state: State,
    /// The choices that led here, oldest first.
    stack: Vec<Frame>,
    /// Configurations already explored.
    seen: HashSet<(Box<[u64]>, State)>,
    /// Scratch space for the model's successor states.
    successors: Vec<State>,
}

impl Search {
    /// Lays out the list for `events`, starting in `initial`.
    fn new(events: &[Event], model: &Model, initial: State) -> Self {
        let expiries = expiries(events, model);
        let mut order: Vec<(u64, Kind, usize)> = Vec::with_capacity(2 * events.len());
        for (op, event) in events.iter().enumerate() {
            let end = match (event.ret, expiries[op]) {
                (Some(ret), _) => (ret, Kind::Return),
                (None, Expiry::Never) => (u64::MAX, Kind::Unknown),
                (None, Expiry::At(time)) => (time, Kind::Expire),
                // Leaving it out of the list leaves it out of the search.
                (None, Expiry::Immediate) => continue,
            };
            order.push((event.call, Kind::Call, op));
            order.push((end.0, end.1, op));
        }
        order.sort_unstable();

        let placeholder = Entry {
            op: 0,
            kind: Kind::Call,
        };
        let tail = order.len() + 1;
        let mut entries = vec![placeholder; tail + 1];
        let mut start = vec![0; events.len()];
        let mut end = vec![0; events.len()];
        for (index, &(_, kind, op)) in order.iter().enumerate() {
            let node = index + 1;
            entries[node] = Entry { op, kind };
            if kind == Kind::Call {
                start[op] = node;
            } else {
                end[op] = node;
            }
        }
        Search {
            entries,
            next: (1..=tail + 1).collect(),
            prev: (0..=tail).map(|node| node.saturating_sub(1)).collect(),
            tail,
            start,
            end,
            done: vec![0; events.len().div_ceil(64)],
            state: model.canonical(initial),
            stack: Vec::new(),
            seen: HashSet::new(),
            successors: Vec::new(),
        }
    }

    /// Tries to linearize `op` next, taking the first of the model's successor states
    /// from index `first` on that leads to an unexplored configuration. On success the
    /// choice is pushed and the operation unlinked; otherwise nothing changes.
    fn linearize(&mut self, model: &mut Model, events: &[Event], op: usize, first: usize) -> bool {
        model.successors(events[op].step, self.state, &mut self.successors);
        self.mark(op, true);
        for (alternative, &next) in self.successors.iter().enumerate().skip(first) {
            if self.seen.insert((self.done.as_slice().into(), next)) {
                self.push(op, Some(alternative));
                self.state = next;
                return true;
            }
        }
        self.mark(op, false);
        false
    }

    /// Drops the expired, unlinearized `op` if that leads to an unexplored
    /// configuration; otherwise nothing changes.
    fn drop_expired(&mut self, op: usize) -> bool {
        self.mark(op, true);
        if self.seen.insert((self.done.as_slice().into(), self.state)) {
            self.push(op, None);
            true
        } else {
            self.mark(op, false);
            false
        }
    }

    /// Undoes the latest choice and returns where to continue: after the undone
    /// operation's call if it has no other successor state to try, or at the head if
    /// it has and that was taken. `None` if there was no choice left to undo.
    fn backtrack(&mut self, model: &mut Model, events: &[Event]) -> Option<usize> {
        let frame = self.stack.pop()?;
        // Relink in the reverse order of unlinking.
        for node in [self.end[frame.op], self.start[frame.op]] {
            let (prev, next) = (self.prev[node], self.next[node]);
            self.next[prev] = node;
            self.prev[next] = node;
        }
        self.mark(frame.op, false);
        self.state = frame.state;
        Some(match frame.alternative {
            Some(taken) if self.linearize(model, events, frame.op, taken + 1) => self.next[HEAD],
            Some(_) => self.next[self.start[frame.op]],
            // Revisiting the expiry finds this configuration explored and backtracks on.
            None => self.end[frame.op],
        })
    }

    /// Records the choice of `op` (with `alternative`, see [`Frame`]) and unlinks it.
    fn push(&mut self, op: usize, alternative: Option<usize>) {
        self.stack.push(Frame {
            op,
            state: self.state,
            alternative,
        });
        for node in [self.start[op], self.end[op]] {
            let (prev, next) = (self.prev[node], self.next[node]);
            self.next[prev] = next;
            self.prev[next] = prev;
        }
    }

    /// Sets or clears `op` in the set of operations done.
    fn mark(&mut self, op: usize, done: bool) {
        let (word, bit) = (op / 64, 1u64 << (op % 64));
        if done {
            self.done[word] |= bit;
        } else {
            self.done[word] &= !bit;
        }
    }
}

/// When an unknown-outcome mutation stops mattering; later expiries sort greater.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Expiry {
    /// Nothing can observe it; it might as well never take effect.
    Immediate,
    /// Once every observer has been linearized, which they must be by this time.
    At(u64),
    /// Something can observe it at any time (an unknown-outcome or free CAS).
    Never,
}

/// For each event, when it expires if it is an unknown-outcome mutation (`Never` for
/// the others). An operation observes a mutation that stores `s` if it could take
/// effect right after it only because the register holds `s`: a read of `s`, a CAS
/// expecting `s`, or a failed CAS expecting something else.
fn expiries(events: &[Event], model: &Model) -> Vec<Expiry> {
    // The latest expiry of the observers of each state, and of the failed CASes by
    // the state they expected.
    let mut observed: HashMap<State, Expiry> = HashMap::new();
    let mut failed: HashMap<State, Expiry> = HashMap::new();
    for event in events {
        let (latest, state) = match event.step {
            Step::Read(state)
            | Step::Cas {
                expected: state, ..
            } => (&mut observed, state),
            Step::CasFailed { expected } => (&mut failed, expected),
            Step::Set(_) => continue,
        };
        let until = event.ret.map_or(Expiry::Never, Expiry::At);
        let entry = latest.entry(state).or_insert(Expiry::Immediate);
        *entry = (*entry).max(until);
    }
    // A failed CAS observes every state but its expected one, so the latest two with
    // different expected states cover all.
    let mut failed: Vec<(Expiry, State)> = failed
        .into_iter()
        .map(|(expected, until)| (until, expected))
        .collect();
    failed.sort_unstable_by(|a, b| b.cmp(a));
    failed.truncate(2);

    events
        .iter()
        .map(|event| {
            let (Step::Set(stored) | Step::Cas { new: stored, .. }) = event.step else {
                return Expiry::Never;
            };
            if event.ret.is_some() || model.free_cas_expects(stored) {
                return Expiry::Never;
            }
            let by_failed = failed
                .iter()
                .find(|&&(_, expected)| expected != stored)
                .map_or(Expiry::Immediate, |&(until, _)| until);
            let by_others = observed.get(&stored).copied().unwrap_or(Expiry::Immediate);
            match by_others.max(by_failed) {
                // Observers that returned before the call can't follow it.
                Expiry::At(time) if time < event.call => Expiry::Immediate,
                expiry => expiry,
            }
        })
        .collect()
}
