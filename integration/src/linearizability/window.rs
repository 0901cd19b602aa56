//! Shrinking a failing key history to a small window that still fails.
//!
//! A window is checked against a relaxed model in which every mutation outside it may
//! take effect at any moment, any number of times (see [`Model::relaxed`]). That makes
//! failing monotone: if a window fails, so does every larger one, since growing it only
//! turns free mutations into constrained ones and adds reads. Monotonicity is what
//! makes the shrinking sound and cheap: binary search finds the shortest failing prefix
//! (in call order) and then that prefix's shortest failing suffix; removing runs of
//! halving length, then single operations, leaves a window from which no operation can
//! be removed.

use super::model::{Event, KeyHistory, Model};
use super::wgl::{self, Verdict};

/// Returns the indices (into `history.events`, sorted by call) of a small window of a
/// history that fails to linearize, using at most `budget` search steps in total. If the
/// budget runs out, the smallest window found so far is returned.
pub(super) fn minimize(history: &KeyHistory<'_>, budget: u64) -> Vec<usize> {
    let mut order: Vec<usize> = (0..history.events.len()).collect();
    order.sort_by_key(|&index| (history.events[index].call, index));
    let mut shrinker = Shrinker {
        history,
        remaining: budget,
    };

    // Invariant: the prefix of length `fails` fails (the whole history does) and the
    // prefix of length `passes` does not (the empty one can't).
    let (mut passes, mut fails) = (0, order.len());
    while fails - passes > 1 {
        let middle = passes + (fails - passes) / 2;
        if shrinker.fails(&order[..middle]) {
            fails = middle;
        } else {
            passes = middle;
        }
    }
    let end = fails;

    // The same for suffixes of that prefix, by their first position.
    let (mut fails, mut passes) = (0, end);
    while passes - fails > 1 {
        let middle = fails + (passes - fails) / 2;
        if shrinker.fails(&order[middle..end]) {
            fails = middle;
        } else {
            passes = middle;
        }
    }
    let mut window = order[fails..end].to_vec();

    // Then drop ever smaller runs of operations (those far from the violation go in
    // a few big runs), and finally single operations. By monotonicity an operation that
    // can't be removed now can't be removed later either, so one pass of single
    // removals leaves a window from which nothing can be removed. Reads go first in it,
    // so that where a read and a write would explain the violation equally well, the
    // window shows the write.
    let mut run = window.len() / 2;
    while run > 1 {
        let mut start = 0;
        while start < window.len() {
            let end = (start + run).min(window.len());
            let candidate = [&window[..start], &window[end..]].concat();
            if shrinker.fails(&candidate) {
                window = candidate;
            } else {
                start = end;
            }
        }
        run /= 2;
    }
    let mut attempts = window.clone();
    attempts.sort_by_key(|&index| history.events[index].step.mutates());
    for attempt in attempts {
        let candidate: Vec<usize> = window
            .iter()
            .copied()
            .filter(|&index| index != attempt)
            .collect();
        if shrinker.fails(&candidate) {
            window = candidate;
        }
    }
    window
}

/// Checks windows of one history against a shared step budget.
struct Shrinker<'h, 'a> {
    /// The failing history.
    history: &'h KeyHistory<'a>,
    /// Search steps left.
    remaining: u64,
}

impl Shrinker<'_, '_> {
    /// Whether the operations at `window` (indices into the events) are shown not to
    /// linearize on their own. Running out of budget counts as "not shown".
    fn fails(&mut self, window: &[usize]) -> bool {
        let events = &self.history.events;
        let mut inside = vec![false; events.len()];
        for &index in window {
            inside[index] = true;
        }
        let mut model = Model::relaxed(
            self.history.states,
            events
                .iter()
                .zip(&inside)
                .filter(|&(_, &inside)| !inside)
                .map(|(event, _)| event.step),
        );
        let selected: Vec<Event> = window.iter().map(|&index| events[index]).collect();
        let outcome = wgl::search(&selected, self.history.initial, &mut model, self.remaining);
        self.remaining -= outcome.steps;
        outcome.verdict == Verdict::NotLinearizable
    }
}
