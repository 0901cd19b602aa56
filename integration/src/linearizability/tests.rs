use std::collections::HashSet;

use super::*;

const KEY: &str = "k";

fn operation(client: u64, op: Op, call: u64, ret: Option<u64>) -> Operation {
    Operation {
        client,
        op,
        call,
        ret,
    }
}

fn read(client: u64, observed: Option<&str>, call: u64, ret: Option<u64>) -> Operation {
    read_key(client, KEY, observed, call, ret)
}

fn read_key(
    client: u64,
    key: &str,
    observed: Option<&str>,
    call: u64,
    ret: Option<u64>,
) -> Operation {
    let op = Op::Read {
        key: key.into(),
        observed: observed.map(Into::into),
    };
    operation(client, op, call, ret)
}

fn write(client: u64, value: &str, call: u64, ret: Option<u64>) -> Operation {
    write_key(client, KEY, value, call, ret)
}

fn write_key(client: u64, key: &str, value: &str, call: u64, ret: Option<u64>) -> Operation {
    let op = Op::Write {
        key: key.into(),
        value: value.into(),
    };
    operation(client, op, call, ret)
}

fn cas(
    client: u64,
    expected: Option<&str>,
    new: &str,
    succeeded: bool,
    call: u64,
    ret: Option<u64>,
) -> Operation {
    let op = Op::Cas {
        key: KEY.into(),
        expected: expected.map(Into::into),
        new: new.into(),
        succeeded,
    };
    operation(client, op, call, ret)
}

fn delete(client: u64, call: u64, ret: Option<u64>) -> Operation {
    operation(client, Op::Delete { key: KEY.into() }, call, ret)
}

fn check(history: &[Operation]) -> Result<Report, Failure> {
    Checker::default().check(history)
}

fn assert_linearizable(history: &[Operation]) -> Report {
    match check(history) {
        Ok(report) => report,
        Err(failure) => panic!("expected linearizable, got {failure}"),
    }
}

fn violation(history: &[Operation]) -> Violation {
    match check(history) {
        Err(Failure::NotLinearizable(violation)) => violation,
        other => panic!("expected a violation, got {other:?}"),
    }
}

#[test]
fn empty_history_is_linearizable() {
    let report = assert_linearizable(&[]);
    assert_eq!(
        report,
        Report {
            keys: 0,
            operations: 0,
            steps: 0
        }
    );
}

#[test]
fn sequential_write_then_read_is_linearizable() {
    let report =
        assert_linearizable(&[write(1, "a", 0, Some(10)), read(2, Some("a"), 20, Some(30))]);
    assert_eq!((report.keys, report.operations), (1, 2));
}

#[test]
fn reading_the_initial_absent_value_is_linearizable() {
    assert_linearizable(&[read(1, None, 0, Some(1))]);
}

#[test]
fn read_of_never_written_value_fails() {
    let history = [write(1, "a", 0, Some(10)), read(2, Some("b"), 20, Some(30))];
    let violation = violation(&history);
    assert_eq!(violation.key, b"k");
    assert_eq!(violation.window, [history[1].clone()]);
}

#[test]
fn stale_read_after_completed_writes_fails() {
    let history = [
        write(1, "w1", 0, Some(10)),
        write(2, "w2", 20, Some(30)),
        read(3, Some("w1"), 40, Some(50)),
    ];
    assert_eq!(violation(&history).window, history);
}

#[test]
fn read_concurrent_with_write_may_see_either_value() {
    for observed in [None, Some("a")] {
        assert_linearizable(&[write(1, "a", 0, Some(100)), read(2, observed, 50, Some(60))]);
    }
    // Either write may take effect last when they overlap.
    for last in ["a", "b"] {
        assert_linearizable(&[
            write(1, "a", 0, Some(100)),
            write(2, "b", 10, Some(90)),
            read(3, Some(last), 200, Some(210)),
        ]);
    }
}

#[test]
fn operations_that_only_touch_are_concurrent() {
    // The read returns at the very instant the write is invoked: either order is allowed.
    assert_linearizable(&[read(1, Some("a"), 0, Some(10)), write(2, "a", 10, Some(20))]);
}

#[test]
fn read_cannot_see_a_write_invoked_after_it_returned() {
    let history = [read(1, Some("a"), 0, Some(10)), write(2, "a", 11, Some(20))];
    assert_eq!(violation(&history).window, history);
}

#[test]
fn reads_must_agree_on_the_order_of_concurrent_writes() {
    // Writes a and b overlap, but two later reads can't see b then a then b.
    let history = [
        write(1, "a", 0, Some(100)),
        write(2, "b", 0, Some(100)),
        read(3, Some("b"), 200, Some(210)),
        read(3, Some("a"), 220, Some(230)),
    ];
    assert_eq!(violation(&history).window.len(), 3);
}

#[test]
fn cas_semantics() {
    // A chain of successful CASes, and a failed one that saw a different value.
    assert_linearizable(&[
        cas(1, None, "a", true, 0, Some(10)),
        cas(2, Some("a"), "b", true, 20, Some(30)),
        cas(3, Some("a"), "c", false, 40, Some(50)),
        read(1, Some("b"), 60, Some(70)),
    ]);
    // A CAS can't succeed if the value differs, nor fail if it matches.
    violation(&[
        write(1, "a", 0, Some(10)),
        cas(2, Some("x"), "b", true, 20, Some(30)),
    ]);
    violation(&[
        write(1, "a", 0, Some(10)),
        cas(2, Some("a"), "b", false, 20, Some(30)),
    ]);
    violation(&[cas(1, None, "a", false, 0, Some(10))]);
    // A successful CAS takes effect: a later read can't see the old value.
    violation(&[
        write(1, "a", 0, Some(10)),
        cas(2, Some("a"), "b", true, 20, Some(30)),
        read(3, Some("a"), 40, Some(50)),
    ]);
}

#[test]
fn concurrent_cas_from_the_same_value_cannot_both_succeed() {
    let history = [
        cas(1, None, "a", true, 0, Some(100)),
        cas(2, None, "b", true, 10, Some(90)),
    ];
    assert_eq!(violation(&history).window, history);
    // One winner and one loser is fine, whichever returns first.
    assert_linearizable(&[
        cas(1, None, "a", true, 0, Some(100)),
        cas(2, None, "b", false, 10, Some(90)),
    ]);
    assert_linearizable(&[
        cas(1, None, "a", false, 0, Some(100)),
        cas(2, None, "b", true, 10, Some(90)),
    ]);
}

#[test]
fn unknown_outcome_write_may_take_effect() {
    assert_linearizable(&[
        write(1, "a", 0, None),
        read(2, Some("a"), 1_000, Some(1_010)),
    ]);
    // Even long after it was invoked, and after reads that didn't see it.
    assert_linearizable(&[
        write(1, "a", 0, None),
        read(2, None, 100, Some(110)),
        read(2, Some("a"), 1_000, Some(1_010)),
    ]);
}

#[test]
fn unknown_outcome_write_may_never_take_effect() {
    assert_linearizable(&[write(1, "a", 0, None), read(2, None, 1_000, Some(1_010))]);
    assert_linearizable(&[
        write(1, "a", 0, Some(10)),
        delete(2, 20, None),
        cas(3, Some("a"), "b", false, 30, None),
        read(1, Some("a"), 1_000, Some(1_010)),
    ]);
}

#[test]
fn unknown_outcome_write_cannot_take_effect_before_its_call() {
    let history = [read(1, Some("a"), 0, Some(10)), write(2, "a", 20, None)];
    assert_eq!(violation(&history).window, history);
}

#[test]
fn unknown_outcome_cas_may_have_succeeded_whatever_its_flag() {
    assert_linearizable(&[
        cas(1, None, "a", false, 0, None),
        read(2, Some("a"), 100, Some(110)),
    ]);
}

#[test]
fn unknown_outcome_reads_are_ignored() {
    let report = assert_linearizable(&[write(1, "a", 0, Some(10)), read(2, Some("zzz"), 20, None)]);
    assert_eq!(report.operations, 1);
}

#[test]
fn delete_then_read_absent_is_linearizable() {
    assert_linearizable(&[
        write(1, "a", 0, Some(10)),
        delete(2, 20, Some(30)),
        read(3, None, 40, Some(50)),
    ]);
    violation(&[
        write(1, "a", 0, Some(10)),
        delete(2, 20, Some(30)),
        read(3, Some("a"), 40, Some(50)),
    ]);
}

#[test]
fn initial_values_are_respected() {
    let history = [read(1, Some("seed"), 0, Some(10))];
    violation(&history);
    let checker = Checker::default().initial_value(b"k", Some(b"seed".to_vec()));
    assert!(checker.check(&history).is_ok());
    let checker = checker.initial_value(b"k", None);
    assert!(checker.check(&history).is_err());
}

#[test]
fn keys_are_independent_registers() {
    // Interleaved in time, each key's own history is fine.
    let history = [
        write_key(1, "x", "1", 0, Some(10)),
        write_key(2, "y", "2", 5, Some(15)),
        read_key(3, "y", Some("2"), 20, Some(30)),
        read_key(4, "x", Some("1"), 25, Some(35)),
        read_key(5, "z", None, 40, Some(50)),
    ];
    let report = assert_linearizable(&history);
    assert_eq!((report.keys, report.operations), (3, 5));

    // A value written to one key can't be read from another.
    let mut history = history.to_vec();
    history.push(read_key(6, "y", Some("1"), 60, Some(70)));
    let violation = violation(&history);
    assert_eq!(violation.key, b"y");
    assert!(violation.window.iter().all(|op| op.op.key() == b"y"));
}

#[test]
fn violation_window_is_small_and_contains_the_offending_operations() {
    let stale_read = read(3, Some("w1"), 300, Some(310));
    let mut history = vec![
        write(1, "w0", 0, Some(10)),
        read(2, Some("w0"), 20, Some(30)),
        // Concurrent with the write it observes, which is invoked after it.
        read(2, Some("w1"), 40, Some(120)),
        write(1, "w1", 100, Some(110)),
        read(2, Some("w1"), 130, Some(140)),
        write(1, "w2", 200, Some(210)),
        read(2, Some("w2"), 220, Some(230)),
        stale_read.clone(),
        write(1, "w3", 400, Some(410)),
        read(2, Some("w3"), 420, Some(430)),
        delete(1, 500, Some(510)),
        read(2, None, 520, Some(530)),
    ];
    // The checker doesn't rely on the history being sorted.
    history.reverse();
    let violation = violation(&history);
    // The read observing w1 from before w1's call is explained by w1 itself and so is
    // not blamed; what can't be explained is the stale read after w2 completed.
    assert_eq!(
        violation.window,
        [
            write(1, "w1", 100, Some(110)),
            write(1, "w2", 200, Some(210)),
            stale_read
        ]
    );
    // The window fails on its own too.
    assert!(check(&violation.window).is_err());
}

#[test]
fn windows_let_omitted_cas_operations_take_effect() {
    // The failed CAS is only explained by the successful one taking effect first; a
    // window leaving that one out must still let it happen, or an innocent prefix of
    // the history would be blamed instead of the impossible read.
    let impossible = read(5, Some("x"), 60, Some(70));
    let history = [
        write(1, "a", 0, Some(10)),
        cas(2, Some("a"), "c", false, 20, Some(30)),
        cas(3, Some("a"), "b", true, 25, Some(28)),
        read(4, Some("b"), 40, Some(50)),
        impossible.clone(),
    ];
    assert_eq!(violation(&history).window, [impossible]);
}

#[test]
fn windows_keep_unknown_outcome_writes_that_omitted_cas_operations_may_observe() {
    // Nothing in a window without the CAS observes the lost write of v, but the CAS
    // left out of it may act on v at any time, so that write may still matter.
    let read_n = read(3, Some("n"), 100, Some(110));
    let late_cas = cas(4, Some("v"), "n", true, 200, Some(210));
    let history = [
        write(1, "v", 20, None),
        write(2, "z", 50, Some(60)),
        read_n.clone(),
        late_cas.clone(),
    ];
    assert_eq!(violation(&history).window, [read_n, late_cas]);
}

#[test]
fn exhausted_budget_is_inconclusive() {
    // Many concurrent writes and a concurrent read of a value none wrote: every order
    // of the writes must be ruled out, which takes far more than the budget.
    let mut history: Vec<Operation> = (0..16)
        .map(|client| write(client, &format!("v{client}"), client, Some(100)))
        .collect();
    history.push(read(99, Some("never"), 50, Some(100)));
    let checker = Checker::default().step_budget(1_000);
    assert_eq!(
        checker.check(&history),
        Err(Failure::Inconclusive {
            key: b"k".to_vec(),
            steps: 1_000
        })
    );
    // A definite violation on another key still wins over the inconclusive one.
    history.push(read_key(1, "other", Some("never"), 0, Some(1)));
    assert!(matches!(
        checker.check(&history),
        Err(Failure::NotLinearizable(Violation { key, .. })) if key == b"other"
    ));
}

#[test]
fn display_is_readable() {
    let history = [
        write(7, "a", 0, Some(10)),
        operation(
            8,
            Op::Write {
                key: KEY.into(),
                value: vec![0, 0xff],
            },
            5,
            None,
        ),
        read(9, Some("b"), 20, Some(30)),
    ];
    let failure = match check(&history) {
        Err(failure) => failure,
        Ok(report) => panic!("expected a violation, got {report}"),
    };
    assert_eq!(
        failure.to_string(),
        "key \"k\" is not linearizable; these operations admit no legal order:\n  \
         client 9: read \"k\" -> \"b\" @ 20..30"
    );
    let violation = Violation {
        key: b"k\n".to_vec(),
        window: vec![history[2].clone(), history[1].clone(), history[0].clone()],
    };
    assert_eq!(
        violation.to_string(),
        "key 0x6b0a is not linearizable; these operations admit no legal order:\n  \
         client 7: write \"k\" := \"a\" @ 0..10\n  \
         client 8: write \"k\" := 0x00ff @ 5..?\n  \
         client 9: read \"k\" -> \"b\" @ 20..30"
    );
    let failed_cas = cas(1, None, "x\"y", false, 1, Some(2));
    assert_eq!(
        failed_cas.to_string(),
        "client 1: cas \"k\" absent -> \"x\\\"y\" failed @ 1..2"
    );
    assert_eq!(
        assert_linearizable(&[delete(1, 0, Some(1))]).to_string(),
        "linearizable (keys: 1, operations: 1, search steps: 1)"
    );
    let error: Box<dyn std::error::Error> = Box::new(Failure::Inconclusive {
        key: b"k".to_vec(),
        steps: 5,
    });
    assert_eq!(
        error.to_string(),
        "linearizability check inconclusive: the search for key \"k\" used its budget of 5 \
         steps"
    );
}

/// A tiny xorshift generator, so randomized tests are reproducible without dependencies.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    fn below(&mut self, bound: u64) -> u64 {
        self.next() % bound
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

/// Generates a linearizable history: sequential clients issue random operations with
/// random durations on a few keys, each operation takes effect at a random instant
/// inside its interval, and outcomes come from replaying a sequential register in that
/// order. About a tenth of the operations lose their response (and then take effect
/// only half the time, possibly after the client gave up on them). Out of every ten
/// operations, four are reads, three writes, two CASes and one a delete, unless
/// `kinds` is less than ten, which keeps only the first `kinds` of them.
fn random_history(rng: &mut XorShift, operations: usize, kinds: u64) -> Vec<Operation> {
    const CLIENTS: u64 = 4;
    const KEYS: [&str; 2] = ["a", "b"];
    let mut free_at = [0u64; CLIENTS as usize];
    // (instant the operation takes effect, if it does; its index in `history`)
    let mut effects = Vec::new();
    let mut history = Vec::new();
    for index in 0..operations {
        let client = rng.below(CLIENTS);
        let call = free_at[client as usize] + rng.below(20);
        let ret = call + 1 + rng.below(60);
        free_at[client as usize] = ret + 1;
        let lost = rng.chance(10);
        let effect = if !lost {
            Some(call + rng.below(ret - call + 1))
        } else if rng.chance(50) {
            Some(call + rng.below(200))
        } else {
            None
        };
        if let Some(effect) = effect {
            effects.push((effect, index));
        }
        let key: Vec<u8> = KEYS[rng.below(KEYS.len() as u64) as usize].into();
        let value = format!("v{index}").into_bytes();
        // Outcomes (observed, expected, succeeded) are filled in by the replay below.
        let op = match rng.below(kinds) {
            0..=3 => Op::Read {
                key,
                observed: Some(b"unset".to_vec()),
            },
            4..=6 => Op::Write { key, value },
            7..=8 => Op::Cas {
                key,
                expected: None,
                new: value,
                succeeded: false,
            },
            _ => Op::Delete { key },
        };
        history.push(Operation {
            client,
            op,
            call,
            ret: (!lost).then_some(ret),
        });
    }

    effects.sort_unstable();
    let mut registers: BTreeMap<Vec<u8>, Option<Vec<u8>>> = BTreeMap::new();
    // Every value each key held, so CASes can expect stale ones.
    let mut held: BTreeMap<Vec<u8>, Vec<Option<Vec<u8>>>> = BTreeMap::new();
    for (_, index) in effects {
        let (coin, pick) = (rng.chance(50), rng.next());
        match &mut history[index].op {
            Op::Read { key, observed } => {
                *observed = registers.get(key).cloned().flatten();
            }
            Op::Write { key, value } => {
                registers.insert(key.clone(), Some(value.clone()));
                held.entry(key.clone())
                    .or_default()
                    .push(Some(value.clone()));
            }
            Op::Delete { key } => {
                registers.insert(key.clone(), None);
                held.entry(key.clone()).or_default().push(None);
            }
            Op::Cas {
                key,
                expected,
                new,
                succeeded,
            } => {
                let current = registers.get(key).cloned().flatten();
                // Half the time expect the current value, so many CASes succeed, and
                // otherwise one the key held before (or absent), which mostly fail.
                let before = held.get(key).map_or(&[][..], Vec::as_slice);
                *expected = if coin || before.is_empty() {
                    current.clone()
                } else {
                    before[(pick % before.len() as u64) as usize].clone()
                };
                *succeeded = *expected == current;
                if *succeeded {
                    registers.insert(key.clone(), Some(new.clone()));
                    held.entry(key.clone()).or_default().push(Some(new.clone()));
                }
            }
        }
    }
    history
}

#[test]
fn random_linearizable_histories_pass_and_corrupted_ones_mostly_fail() {
    let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
    let (mut corrupted, mut caught) = (0, 0);
    for _ in 0..300 {
        let mut history = random_history(&mut rng, 40, 10);
        assert_linearizable(&history);

        // Make one completed read observe some other value the key held or was given.
        let reads: Vec<usize> = (0..history.len())
            .filter(|&index| {
                matches!(history[index].op, Op::Read { .. }) && history[index].ret.is_some()
            })
            .collect();
        if reads.is_empty() {
            continue;
        }
        let target = reads[rng.below(reads.len() as u64) as usize];
        let (key, original) = match &history[target].op {
            Op::Read { key, observed } => (key.clone(), observed.clone()),
            _ => unreachable!("filtered to reads"),
        };
        let mut alternatives: Vec<Option<Vec<u8>>> = vec![None];
        for operation in &history {
            match &operation.op {
                Op::Write { key: k, value } if *k == key => alternatives.push(Some(value.clone())),
                Op::Cas { key: k, new, .. } if *k == key => alternatives.push(Some(new.clone())),
                _ => {}
            }
        }
        alternatives.retain(|value| *value != original);
        if alternatives.is_empty() {
            continue;
        }
        let replacement = alternatives[rng.below(alternatives.len() as u64) as usize].clone();
        history[target].op = Op::Read {
            key: key.clone(),
            observed: replacement,
        };
        let corrupted_read = history[target].clone();
        corrupted += 1;
        match check(&history) {
            Ok(_) => {}
            Err(Failure::NotLinearizable(violation)) => {
                caught += 1;
                assert_eq!(violation.key, key);
                // The rest of the history was linearizable, so the window must blame
                // the corrupted read, and must fail on its own.
                assert!(violation.window.contains(&corrupted_read), "{violation}");
                assert!(violation.window.len() < history.len());
                assert!(check(&violation.window).is_err(), "{violation}");
            }
            Err(failure) => panic!("unexpected {failure}"),
        }
    }
    assert!(corrupted >= 250, "only {corrupted} histories corrupted");
    assert!(
        caught * 10 >= corrupted * 7,
        "only {caught} of {corrupted} corrupted histories failed"
    );
}

/// A register value in the brute-force reference below.
type Value = Option<Vec<u8>>;

/// Reference semantics, straight from the definitions: whether `window` has a legal,
/// real-time respecting order when, between any two of its operations, each mutation in
/// `free` may additionally take effect any number of times. Exhaustive (memoized), so
/// only for tiny histories.
fn brute_force(window: &[Operation], free: &[Operation]) -> bool {
    let ops: Vec<&Operation> = window
        .iter()
        .filter(|operation| !matches!(operation.op, Op::Read { .. }) || operation.ret.is_some())
        .collect();
    let mut writes: Vec<Value> = Vec::new();
    let mut edges: Vec<(Value, Value)> = Vec::new();
    for operation in free {
        match &operation.op {
            Op::Write { value, .. } => writes.push(Some(value.clone())),
            Op::Delete { .. } => writes.push(None),
            Op::Cas {
                expected,
                new,
                succeeded,
                ..
            } if *succeeded || operation.ret.is_none() => {
                edges.push((expected.clone(), Some(new.clone())));
            }
            Op::Read { .. } | Op::Cas { .. } => {}
        }
    }
    let closure = |state: &Value| {
        let mut reached: Vec<Value> = Vec::new();
        let mut pending: Vec<Value> = writes.clone();
        pending.push(state.clone());
        while let Some(value) = pending.pop() {
            if !reached.contains(&value) {
                pending.extend(
                    edges
                        .iter()
                        .filter(|(from, _)| *from == value)
                        .map(|(_, to)| to.clone()),
                );
                reached.push(value);
            }
        }
        reached
    };
    let apply = |operation: &Operation, state: &Value| -> Option<Value> {
        match &operation.op {
            Op::Read { observed, .. } => (observed == state).then(|| state.clone()),
            Op::Write { value, .. } => Some(Some(value.clone())),
            Op::Delete { .. } => Some(None),
            Op::Cas {
                expected,
                new,
                succeeded,
                ..
            } => {
                if *succeeded || operation.ret.is_none() {
                    (expected == state).then(|| Some(new.clone()))
                } else {
                    (expected != state).then(|| state.clone())
                }
            }
        }
    };

    fn search(
        ops: &[&Operation],
        used: u64,
        state: &Value,
        closure: &dyn Fn(&Value) -> Vec<Value>,
        apply: &dyn Fn(&Operation, &Value) -> Option<Value>,
        dead: &mut HashSet<(u64, Value)>,
    ) -> bool {
        let unused = |index: usize| used & (1 << index) == 0;
        if (0..ops.len()).all(|index| !unused(index) || ops[index].ret.is_none()) {
            return true;
        }
        if dead.contains(&(used, state.clone())) {
            return false;
        }
        for (index, operation) in ops.iter().enumerate() {
            let blocked = (0..ops.len()).any(|other| {
                unused(other) && ops[other].ret.is_some_and(|ret| ret < operation.call)
            });
            if !unused(index) || blocked {
                continue;
            }
            for before in closure(state) {
                let found = apply(operation, &before).is_some_and(|after| {
                    search(ops, used | 1 << index, &after, closure, apply, dead)
                });
                if found {
                    return true;
                }
            }
        }
        dead.insert((used, state.clone()));
        false
    }
    search(&ops, 0, &None, &closure, &apply, &mut HashSet::new())
}

/// A tiny history with arbitrary (often impossible) outcomes over three values.
fn arbitrary_history(rng: &mut XorShift) -> Vec<Operation> {
    let value = |rng: &mut XorShift| -> Vec<u8> { vec![b'a' + rng.below(3) as u8] };
    let maybe = |rng: &mut XorShift| -> Value {
        if rng.chance(30) {
            None
        } else {
            Some(value(rng))
        }
    };
    let length = 1 + rng.below(8);
    (0..length)
        .map(|client| {
            let key = KEY.into();
            let op = match rng.below(4) {
                0 => Op::Read {
                    key,
                    observed: maybe(rng),
                },
                1 => Op::Write {
                    key,
                    value: value(rng),
                },
                2 => Op::Cas {
                    key,
                    expected: maybe(rng),
                    new: value(rng),
                    succeeded: rng.chance(50),
                },
                _ => Op::Delete { key },
            };
            let call = rng.below(40);
            let ret = (!rng.chance(25)).then(|| call + rng.below(15));
            operation(client, op, call, ret)
        })
        .collect()
}

#[test]
fn agrees_with_brute_force_and_windows_are_minimal() {
    let mut rng = XorShift(0x2545_f491_4f6c_dd1d);
    let mut failing = 0;
    for _ in 0..3_000 {
        let history = arbitrary_history(&mut rng);
        let expected = brute_force(&history, &[]);
        match check(&history) {
            Ok(_) => assert!(expected, "accepted {history:?}"),
            Err(Failure::NotLinearizable(violation)) => {
                assert!(!expected, "rejected {history:?}");
                failing += 1;
                let outside: Vec<Operation> = history
                    .iter()
                    .filter(|operation| !violation.window.contains(operation))
                    .cloned()
                    .collect();
                assert!(
                    !brute_force(&violation.window, &outside),
                    "window passes: {violation}\nof {history:?}"
                );
                for dropped in &violation.window {
                    let smaller: Vec<Operation> = violation
                        .window
                        .iter()
                        .filter(|operation| *operation != dropped)
                        .cloned()
                        .collect();
                    let mut outside = outside.clone();
                    outside.push(dropped.clone());
                    assert!(
                        brute_force(&smaller, &outside),
                        "window not minimal without {dropped}: {violation}\nof {history:?}"
                    );
                }
            }
            Err(failure) => panic!("unexpected {failure}"),
        }
    }
    assert!(failing > 500, "only {failing} failing histories");
}

#[test]
fn long_histories_with_lost_writes_are_decided() {
    // Lost writes could take effect at any later time; they must stop multiplying the
    // search once nothing can observe them any more, or this would be inconclusive.
    let mut rng = XorShift(0x5851_f42d_4c95_7f2d);
    let mut history = random_history(&mut rng, 600, 7);
    let report = assert_linearizable(&history);
    assert_eq!(report.keys, 2);

    // Make the last completed read see the key's first write again, long overwritten.
    let Some(last) = (0..history.len()).rev().find(|&index| {
        matches!(history[index].op, Op::Read { .. }) && history[index].ret.is_some()
    }) else {
        panic!("no completed read");
    };
    let key = history[last].op.key().to_vec();
    let Some(first) = history.iter().find_map(|operation| match &operation.op {
        Op::Write { key: k, value } if *k == key && operation.ret.is_some() => Some(value.clone()),
        _ => None,
    }) else {
        panic!("no completed write");
    };
    history[last].op = Op::Read {
        key: key.clone(),
        observed: Some(first),
    };
    let violation = violation(&history);
    assert_eq!(violation.key, key);
    assert!(violation.window.contains(&history[last]), "{violation}");
    assert!(violation.window.len() <= 5, "{violation}");
}
