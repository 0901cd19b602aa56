//! A linearizability checker for histories recorded against a key-value store.
//!
//! The test harness records every client operation with the time it was invoked and
//! the time its response arrived (or that the response never arrived), then asks the
//! [`Checker`] whether some total order of the operations exists that respects
//! real-time order (an operation that returned before another was invoked comes
//! first) and is a legal sequential execution of one register per key.
//!
//! # Semantics
//!
//! * Keys are independent registers. Linearizability is compositional (a history is
//!   linearizable iff every per-key sub-history is), so each key is checked on its own,
//!   which keeps the search small.
//! * Every key starts absent unless [`Checker::initial_value`] says otherwise.
//! * An operation with `ret: None` has an unknown outcome. A read of that kind tells
//!   nothing and is dropped. A write, delete or CAS of that kind may take effect at any
//!   moment after its call, or never; a CAS with unknown outcome is treated as one that
//!   may have succeeded, whatever its `succeeded` flag says.
//! * Two operations are ordered only if one's `ret` is strictly less than the other's
//!   `call`; operations that merely touch (`ret == call`) count as concurrent, so clock
//!   granularity can't produce a false violation. A `ret` earlier than its `call` is
//!   read as `ret == call`.
//!
//! # Algorithm
//!
//! Wing & Gong's backtracking search with Lowe's memoization of (set of linearized
//! operations, register value) pairs, so that each configuration is explored at most
//! once. An unknown-outcome mutation stays optional only while something that could
//! observe its result is left; after that it is dropped, which keeps histories with
//! many lost writes of distinct values cheap. (Results observable until late, such as
//! a lost delete when reads of absent keys are common, or any value while failed CASes
//! keep coming, still multiply the work.) The search is bounded by a per-key step
//! budget; running out yields [`Failure::Inconclusive`] rather than a guess.
//!
//! When a key fails, the checker shrinks its history to a small window that still
//! fails (see [`Violation`]) so a human can see the problem without wading through
//! thousands of operations.

mod display;
mod model;
mod wgl;
mod window;

#[cfg(test)]
mod tests;

use std::collections::BTreeMap;

use model::{KeyHistory, Model};
use wgl::Verdict;

/// One client request against a single key, with the outcome the client observed.
///
/// Values are `Option<Vec<u8>>` where `None` means the key is absent.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Op {
    /// A read of `key` that returned `observed` (`None`: the key was absent).
    Read {
        /// The key read.
        key: Vec<u8>,
        /// The value returned, `None` if the key was absent.
        observed: Option<Vec<u8>>,
    },
    /// An unconditional write of `value` to `key`.
    Write {
        /// The key written.
        key: Vec<u8>,
        /// The value written.
        value: Vec<u8>,
    },
    /// A compare-and-swap: if `key` holds `expected` (`None`: the key is absent), set it
    /// to `new`. A CAS that did not succeed changes nothing and asserts that the value
    /// differed from `expected` at the moment it took effect.
    Cas {
        /// The key compared and swapped.
        key: Vec<u8>,
        /// The value required for the swap, `None` meaning "key absent".
        expected: Option<Vec<u8>>,
        /// The value stored if the comparison held.
        new: Vec<u8>,
        /// Whether the store reported that the swap happened.
        succeeded: bool,
    },
    /// A delete of `key`; afterwards the key is absent.
    Delete {
        /// The key deleted.
        key: Vec<u8>,
    },
}

impl Op {
    /// The key the operation acts on, which decides the register it is checked against.
    fn key(&self) -> &[u8] {
        match self {
            Op::Read { key, .. }
            | Op::Write { key, .. }
            | Op::Cas { key, .. }
            | Op::Delete { key } => key,
        }
    }
}

/// One recorded operation: who issued it, what it was, and when.
///
/// `call` and `ret` are readings of one monotonic clock shared by all clients (e.g.
/// nanoseconds since the test started).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Operation {
    /// The client that issued the operation; only used in reports.
    pub client: u64,
    /// The request and the outcome the client observed.
    pub op: Op,
    /// When the request was sent.
    pub call: u64,
    /// When the response arrived; `None` if it never did (timeout, crash), in which
    /// case the operation may or may not have taken effect.
    pub ret: Option<u64>,
}

/// Checks histories for linearizability; configure it with the builder methods.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checker {
    /// Values keys hold before the history starts; keys not listed start absent.
    initial: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
    /// Search steps allowed per key (and again for shrinking a failing key's window).
    step_budget: u64,
}

impl Default for Checker {
    /// A checker where every key starts absent and each key gets 5,000,000 steps.
    fn default() -> Self {
        Checker {
            initial: BTreeMap::new(),
            step_budget: 5_000_000,
        }
    }
}

impl Checker {
    /// Declares the value `key` holds before the history starts (`None`: absent), for
    /// histories recorded against a pre-populated store.
    #[must_use]
    pub fn initial_value(mut self, key: &[u8], value: Option<Vec<u8>>) -> Self {
        self.initial.insert(key.to_vec(), value);
        self
    }

    /// Sets how many search steps each key may use before the check gives up with
    /// [`Failure::Inconclusive`]; the search is exponential in the worst case, so this
    /// bounds the time (and the memoization memory) a pathological history can take.
    /// Shrinking a failing key's window gets the same budget again.
    #[must_use]
    pub fn step_budget(mut self, steps: u64) -> Self {
        self.step_budget = steps;
        self
    }

    /// Checks `history` (in any order) and, if it is linearizable, returns what was
    /// checked.
    ///
    /// # Errors
    ///
    /// [`Failure::NotLinearizable`] for the first key (in byte order) without a
    /// linearization, which takes precedence over any key whose search ran out of
    /// budget; otherwise [`Failure::Inconclusive`] for the first such key.
    pub fn check(&self, history: &[Operation]) -> Result<Report, Failure> {
        let mut by_key: BTreeMap<&[u8], Vec<&Operation>> = BTreeMap::new();
        for operation in history {
            by_key
                .entry(operation.op.key())
                .or_default()
                .push(operation);
        }

        let mut report = Report {
            keys: by_key.len(),
            operations: 0,
            steps: 0,
        };
        let mut inconclusive = None;
        for (key, operations) in by_key {
            let initial = self.initial.get(key).and_then(Option::as_deref);
            let key_history = KeyHistory::new(&operations, initial);
            report.operations += key_history.events.len();
            let outcome = wgl::search(
                &key_history.events,
                key_history.initial,
                &mut Model::strict(),
                self.step_budget,
            );
            report.steps += outcome.steps;
            match outcome.verdict {
                Verdict::Linearizable => {}
                Verdict::NotLinearizable => {
                    let window = window::minimize(&key_history, self.step_budget)
                        .into_iter()
                        .map(|index| key_history.sources[index].clone())
                        .collect();
                    return Err(Failure::NotLinearizable(Violation {
                        key: key.to_vec(),
                        window,
                    }));
                }
                Verdict::Exhausted => {
                    inconclusive.get_or_insert(Failure::Inconclusive {
                        key: key.to_vec(),
                        steps: outcome.steps,
                    });
                }
            }
        }
        match inconclusive {
            Some(failure) => Err(failure),
            None => Ok(report),
        }
    }
}

/// What a successful check covered, for logging alongside test results.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Report {
    /// Distinct keys in the history.
    pub keys: usize,
    /// Operations checked; reads with unknown outcome are dropped and not counted.
    pub operations: usize,
    /// Search steps used over all keys, a measure of how hard the history was.
    pub steps: u64,
}

/// Why a history could not be shown linearizable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// Some key's history has no linearization: the store is buggy (or the history
    /// was recorded wrongly).
    NotLinearizable(Violation),
    /// The search for `key` used up its step budget without an answer; the history may
    /// or may not be linearizable. Raise the budget or record shorter histories.
    Inconclusive {
        /// The key whose search ran out of steps.
        key: Vec<u8>,
        /// The steps spent on that key.
        steps: u64,
    },
}

/// A key whose history is not linearizable, with the operations that show it.
///
/// `window` is a subset of the key's operations, sorted by call, that cannot be
/// linearized even if every operation of the key left out of it is assumed to take
/// effect at any moment, any number of times (reads left out are simply dropped). So
/// the window's failure does not rest on anything omitted from it and is a
/// self-contained explanation. It is found by trimming operations from the end and the
/// start of the history and then dropping single operations while it still fails; if
/// that finishes within the step budget, no operation can be removed from the window
/// without the rest becoming explainable in that way.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// The key whose history is not linearizable.
    pub key: Vec<u8>,
    /// The operations that cannot be linearized together, sorted by call.
    pub window: Vec<Operation>,
}
