//! The register model: one key's history in compact, interned form, and the
//! sequential specification of a register that the search replays it against.

use std::collections::{HashMap, HashSet};

use super::{Op, Operation};

/// A register value, interned per key so the search compares and hashes integers:
/// [`ABSENT`] or one plus the index of a distinct value seen for the key.
pub(super) type State = usize;

/// The state of an absent key.
const ABSENT: State = 0;

/// Canonical stand-in for every state the free mutations of a relaxed [`Model`] can
/// produce. Which of them the register holds doesn't matter: the free mutations can
/// turn any of them into any other, so they all allow exactly the same futures.
const FREE: State = State::MAX;

/// What an operation does to, or asserts about, the register.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Step {
    /// Asserts that the register holds this state.
    Read(State),
    /// Stores this state (a write, or a delete storing [`ABSENT`]).
    Set(State),
    /// If the register holds `expected`, stores `new`; otherwise cannot take effect.
    Cas { expected: State, new: State },
    /// Asserts that the register does not hold `expected`.
    CasFailed { expected: State },
}

impl Step {
    /// Whether the step can change the register (as opposed to only observing it).
    pub fn mutates(self) -> bool {
        matches!(self, Step::Set(_) | Step::Cas { .. })
    }
}

/// One operation of a key's history, ready for the search.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Event {
    /// When the operation was invoked.
    pub call: u64,
    /// When it returned, never before `call`; `None` if its outcome is unknown.
    pub ret: Option<u64>,
    /// Its effect on the register.
    pub step: Step,
}

/// One key's history with values interned, plus a way back to the recorded operations.
#[derive(Debug)]
pub(super) struct KeyHistory<'a> {
    /// The informative operations; unknown-outcome reads are left out.
    pub events: Vec<Event>,
    /// `sources[i]` is the recorded operation `events[i]` came from.
    pub sources: Vec<&'a Operation>,
    /// The register's state before the history starts.
    pub initial: State,
    /// How many distinct states occur (all interned states are below this).
    pub states: usize,
}

impl<'a> KeyHistory<'a> {
    /// Interns the operations of one key, whose value before the history is `initial`.
    pub fn new(operations: &[&'a Operation], initial: Option<&'a [u8]>) -> Self {
        let mut interner = Interner::default();
        let initial = interner.state(initial);
        let mut interned = Vec::with_capacity(operations.len());
        for &operation in operations {
            let ret = operation.ret.map(|ret| ret.max(operation.call));
            let step = match &operation.op {
                // A read that never returned observed nothing.
                Op::Read { .. } if ret.is_none() => continue,
                Op::Read { observed, .. } => Step::Read(interner.state(observed.as_deref())),
                Op::Write { value, .. } => Step::Set(interner.state(Some(value))),
                Op::Delete { .. } => Step::Set(ABSENT),
                Op::Cas {
                    expected,
                    new,
                    succeeded,
                    ..
                } => {
                    let expected = interner.state(expected.as_deref());
                    // A CAS whose outcome is unknown may have succeeded; if it failed
                    // it had no effect, which the search covers by omitting it.
                    if *succeeded || ret.is_none() {
                        let new = interner.state(Some(new));
                        Step::Cas { expected, new }
                    } else {
                        Step::CasFailed { expected }
                    }
                }
            };
            let event = Event {
                call: operation.call,
                ret,
                step,
            };
            interned.push((event, operation));
        }
        let states = interner.states.len() + 1;
        let (events, sources) = interned.into_iter().unzip();
        KeyHistory {
            events,
            sources,
            initial,
            states,
        }
    }
}

/// Maps each distinct value of a key to its [`State`].
#[derive(Default)]
struct Interner<'a> {
    states: HashMap<&'a [u8], State>,
}

impl<'a> Interner<'a> {
    /// The state for `value` (`None`: absent), allocating one if the value is new.
    fn state(&mut self, value: Option<&'a [u8]>) -> State {
        let Some(value) = value else {
            return ABSENT;
        };
        // Below `FREE`: a key can't have `usize::MAX - 1` distinct values in memory.
        let next = self.states.len() + 1;
        *self.states.entry(value).or_insert(next)
    }
}

/// The sequential specification of a register, optionally relaxed by "free" mutations.
///
/// A relaxed model is how a window of a failing history is checked without the rest of
/// the history: every mutation outside the window may take effect at any moment, any
/// number of times. That over-approximates what those mutations could really do, so a
/// window that fails against a relaxed model fails for a reason inside the window.
///
/// Between two operations the register may move, via free mutations, from a state `s`
/// to any state in `closure(s)`: the states reachable from `s` or from a freely written
/// state through free CASes. Everything freely writable (and what free CASes lead to
/// from there) is closed under the free mutations, so it is represented by [`FREE`].
#[derive(Debug)]
pub(super) struct Model {
    /// `free[s]`: the free mutations can put the register in state `s` at any moment.
    free: Vec<bool>,
    /// How many states are free.
    free_count: usize,
    /// `cas_edges[s]`: states a free CAS turns `s` into.
    cas_edges: Vec<Vec<State>>,
    /// States reachable from a state through free CASes, sorted, computed on demand.
    reachable: HashMap<State, Vec<State>>,
}

impl Model {
    /// The plain register specification, for checking a complete history.
    pub fn strict() -> Self {
        Model {
            free: Vec::new(),
            free_count: 0,
            cas_edges: Vec::new(),
            reachable: HashMap::new(),
        }
    }

    /// A register that, besides the checked operations, undergoes each of the `free`
    /// mutations at any moment and any number of times; all states are below `states`.
    pub fn relaxed(states: usize, free: impl IntoIterator<Item = Step>) -> Self {
        let mut cas_edges = vec![Vec::new(); states];
        let mut pending = Vec::new();
        for step in free {
            match step {
                Step::Set(state) => pending.push(state),
                Step::Cas { expected, new } => cas_edges[expected].push(new),
                Step::Read(_) | Step::CasFailed { .. } => {}
            }
        }
        let mut free = vec![false; states];
        let mut free_count = 0;
        while let Some(state) = pending.pop() {
            if !free[state] {
                free[state] = true;
                free_count += 1;
                pending.extend_from_slice(&cas_edges[state]);
            }
        }
        Model {
            free,
            free_count,
            cas_edges,
            reachable: HashMap::new(),
        }
    }

    /// The representative of `state`: [`FREE`] if the free mutations can produce it.
    pub fn canonical(&self, state: State) -> State {
        if self.is_free(state) { FREE } else { state }
    }

    /// Writes into `out` every (canonical) state the register can be in right after
    /// `step` takes effect, given it was in `state` after the previous operation; empty
    /// if `step` cannot take effect at all.
    pub fn successors(&mut self, step: Step, state: State, out: &mut Vec<State>) {
        out.clear();
        match step {
            Step::Read(value) => {
                if self.can_reach(state, value) {
                    out.push(self.canonical(value));
                }
            }
            Step::Set(value) => out.push(self.canonical(value)),
            Step::Cas { expected, new } => {
                if self.can_reach(state, expected) {
                    out.push(self.canonical(new));
                }
            }
            Step::CasFailed { expected } => {
                if state != expected && state != FREE {
                    // Staying put is enough: `closure(state)` contains the closure of
                    // every state the register could move to first, so no move allows
                    // a future that staying doesn't.
                    out.push(state);
                    return;
                }
                // The register must first move to some other state.
                if self.free_count > usize::from(self.is_free(expected)) {
                    out.push(FREE);
                }
                if state != FREE && self.free_cas_expects(state) {
                    let reached = reachable(&mut self.reachable, &self.cas_edges, state);
                    out.extend(reached.iter().copied().filter(|&other| {
                        other != expected && !self.free.get(other).copied().unwrap_or(false)
                    }));
                }
            }
        }
    }

    /// Whether a free CAS can act on the register holding `state`, which thereby
    /// influences what happens next at any moment.
    pub fn free_cas_expects(&self, state: State) -> bool {
        self.cas_edges
            .get(state)
            .is_some_and(|edges| !edges.is_empty())
    }

    /// Whether the free mutations can produce `state` at any moment.
    fn is_free(&self, state: State) -> bool {
        self.free.get(state).copied().unwrap_or(false)
    }

    /// Whether `target` (never [`FREE`]) is in `closure(state)`.
    fn can_reach(&mut self, state: State, target: State) -> bool {
        if state == target || self.is_free(target) {
            return true;
        }
        self.free_cas_expects(state)
            && reachable(&mut self.reachable, &self.cas_edges, state)
                .binary_search(&target)
                .is_ok()
    }
}

/// The states reachable from `state` (not [`FREE`]) through the CASes in `cas_edges`,
/// `state` included, sorted; memoized in `cache`.
fn reachable<'m>(
    cache: &'m mut HashMap<State, Vec<State>>,
    cas_edges: &[Vec<State>],
    state: State,
) -> &'m [State] {
    cache.entry(state).or_insert_with(|| {
        let mut reached = HashSet::new();
        let mut pending = vec![state];
        while let Some(next) = pending.pop() {
            if reached.insert(next) {
                pending.extend(cas_edges.get(next).into_iter().flatten().copied());
            }
        }
        let mut reached: Vec<State> = reached.into_iter().collect();
        reached.sort_unstable();
        reached
    })
}
