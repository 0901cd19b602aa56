//! The recorded history: every operation with its call and return time on one clock, and
//! how each gRPC outcome counts.
//!
//! Per `server/src/status.rs`: OK means applied; UNAVAILABLE and RESOURCE_EXHAUSTED from the
//! server mean not applied (the operation is dropped from the history); everything else
//! (UNKNOWN, DEADLINE_EXCEEDED, CANCELLED, a connection lost mid-call, ...) leaves the
//! outcome unknown (`ret: None`). A client-side UNAVAILABLE counts as "not applied" only
//! when the connection could not even be made; tonic also reports a keepalive timeout of
//! a call already sent as UNAVAILABLE, which says nothing about its outcome.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tonic::{Code, Status};

use crate::linearizability::{Checker, Failure, Op, Operation, Report};

/// What a failed call says about whether the operation took effect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// It was not applied: leave it out of the history.
    NotApplied,
    /// It may or may not have been applied: record it with `ret: None`.
    Unknown,
}

/// How `status` (an error of a mutating call) counts.
pub fn classify(status: &Status) -> Outcome {
    let retryable = matches!(status.code(), Code::Unavailable | Code::ResourceExhausted);
    // A status the server sent carries its response headers (content-type at least); one
    // tonic made up on the client carries none.
    let from_server = !status.metadata().is_empty();
    if retryable && (from_server || never_connected(status)) {
        Outcome::NotApplied
    } else {
        Outcome::Unknown
    }
}

/// Whether the call failed because no connection could be made, so nothing was sent.
fn never_connected(status: &Status) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(status);
    while let Some(e) = source {
        if e.is::<tonic::ConnectError>() {
            return true;
        }
        source = e.source();
    }
    false
}

/// Search steps the checker may spend on one register (and again on shrinking a failing
/// one's window). Histories of a minute take at most a few hundred thousand per register,
/// but many writes of unknown outcome whose values failed CASes keep observable can take
/// millions, and one CI-sized run (seed 1, 60 s, 769 mutations of unknown outcome) used
/// up 20 million on one register in 6.8 s; this is sixteen times the checker's default,
/// about half a minute at worst.
pub const STEP_BUDGET: u64 = 80_000_000;

/// What a passing check covered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checked {
    /// Registers, operations and search steps, over all registers.
    pub report: Report,
    /// The register that took the most search steps, and how many.
    pub hardest: (String, u64),
    /// How long the check took.
    pub time: Duration,
}

impl fmt::Display for Checked {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}; hardest register {:?}: {} steps (budget {STEP_BUDGET}); checked in {:.2} s",
            self.report,
            self.hardest.0,
            self.hardest.1,
            self.time.as_secs_f64()
        )
    }
}

fn register_of(op: &Op) -> &[u8] {
    match op {
        Op::Read { key, .. } | Op::Write { key, .. } | Op::Cas { key, .. } | Op::Delete { key } => {
            key
        }
    }
}

/// Checks `operations` with [`STEP_BUDGET`] per register, one register at a time (as the
/// checker does anyway), to report the hardest. Like [`Checker::check`], a register
/// that does not linearize takes precedence over one whose search ran out of steps.
///
/// # Errors
///
/// The checker's [`Failure`].
pub fn check(operations: &[Operation]) -> Result<Checked, Failure> {
    let started = Instant::now();
    let mut by_register: BTreeMap<&[u8], Vec<Operation>> = BTreeMap::new();
    for operation in operations {
        by_register
            .entry(register_of(&operation.op))
            .or_default()
            .push(operation.clone());
    }
    let checker = Checker::default().step_budget(STEP_BUDGET);
    let mut report = Report {
        keys: 0,
        operations: 0,
        steps: 0,
    };
    let mut hardest = (String::new(), 0);
    let mut inconclusive = None;
    for (register, operations) in by_register {
        match checker.check(&operations) {
            Ok(r) => {
                report.keys += r.keys;
                report.operations += r.operations;
                report.steps += r.steps;
                if r.steps >= hardest.1 {
                    hardest = (String::from_utf8_lossy(register).into_owned(), r.steps);
                }
            }
            Err(failure @ Failure::NotLinearizable(_)) => return Err(failure),
            Err(failure @ Failure::Inconclusive { .. }) => {
                inconclusive.get_or_insert(failure);
            }
        }
    }
    match inconclusive {
        Some(failure) => Err(failure),
        None => Ok(Checked {
            report,
            hardest,
            time: started.elapsed(),
        }),
    }
}

/// Counts of what the clients did, for the run's summary.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    /// Operations by kind (`read`, `put`, `cas`, `delete`) and result (`ok`, `unknown`,
    /// `not applied`, `failed` for reads); CAS successes are counted as `cas`/`swapped`,
    /// writes sent to a follower-cluster node also as `via follower`/`ok` or `failed`.
    pub by_kind: BTreeMap<(&'static str, &'static str), u64>,
    /// Errors by gRPC code (those of writes sent to a follower-cluster node prefixed
    /// `follower:`); `(client)` marks statuses tonic made on the client (lost
    /// connections, deadlines) rather than ones the server sent.
    pub errors: BTreeMap<String, u64>,
    /// The first message seen for each key of [`Self::errors`].
    pub examples: BTreeMap<String, String>,
}

impl fmt::Display for Stats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        for ((kind, result), n) in &self.by_kind {
            write!(f, "{}{kind} {result}: {n}", if first { "" } else { ", " })?;
            first = false;
        }
        if !self.errors.is_empty() {
            f.write_str("; errors by code:")?;
            for (code, n) in &self.errors {
                write!(f, " {code} {n}")?;
            }
        }
        for (code, message) in &self.examples {
            let short: String = message.chars().take(160).collect();
            write!(f, "\n    first {code}: {short}")?;
        }
        Ok(())
    }
}

/// The operations of every client, on one monotonic clock.
#[derive(Debug)]
pub struct History {
    start: Instant,
    operations: Mutex<Vec<Operation>>,
    stats: Mutex<Stats>,
}

impl Default for History {
    fn default() -> Self {
        Self::new()
    }
}

impl History {
    /// An empty history whose clock starts now.
    pub fn new() -> Self {
        Self {
            start: Instant::now(),
            operations: Mutex::default(),
            stats: Mutex::default(),
        }
    }

    /// When the clock started.
    pub fn start(&self) -> Instant {
        self.start
    }

    /// Nanoseconds since the clock started.
    pub fn now(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_nanos()).expect("elapsed nanoseconds fit u64")
    }

    /// Records an operation that completed (`ret: Some`) or whose outcome is unknown.
    pub fn record(&self, client: u64, op: Op, call: u64, ret: Option<u64>) {
        self.operations
            .lock()
            .expect("history lock")
            .push(Operation {
                client,
                op,
                call,
                ret,
            });
    }

    /// Counts one operation of `kind` with `result`.
    pub fn count(&self, kind: &'static str, result: &'static str) {
        *self
            .stats
            .lock()
            .expect("stats lock")
            .by_kind
            .entry((kind, result))
            .or_default() += 1;
    }

    /// Counts one error, under `prefix` and its code.
    pub fn count_error(&self, prefix: &str, status: &Status) {
        let origin = if status.metadata().is_empty() {
            "(client)"
        } else {
            ""
        };
        let key = format!("{prefix}{:?}{origin}", status.code());
        let mut stats = self.stats.lock().expect("stats lock");
        stats
            .examples
            .entry(key.clone())
            .or_insert_with(|| status.message().to_owned());
        *stats.errors.entry(key).or_default() += 1;
    }

    /// A copy of the operations recorded so far.
    pub fn operations(&self) -> Vec<Operation> {
        self.operations.lock().expect("history lock").clone()
    }

    /// A copy of the counts so far.
    pub fn stats(&self) -> Stats {
        self.stats.lock().expect("stats lock").clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(client: u64, op: Op, call: u64, ret: Option<u64>) -> Operation {
        Operation {
            client,
            op,
            call,
            ret,
        }
    }

    #[test]
    fn check_goes_register_by_register_and_names_the_hardest() {
        let write = |key: &str, value: &str| Op::Write {
            key: key.into(),
            value: value.into(),
        };
        let read = |key: &str, value: Option<&str>| Op::Read {
            key: key.into(),
            observed: value.map(Into::into),
        };
        let mut history = vec![
            op(1, write("t/a", "1"), 0, Some(10)),
            op(2, read("t/a", Some("1")), 20, Some(30)),
            op(1, write("t/b", "2"), 0, None),
            op(2, read("t/b", None), 5, Some(6)),
            op(2, read("t/b", Some("2")), 40, Some(50)),
            op(3, write("t/b", "3"), 1, None),
        ];
        let checked = check(&history).expect("linearizable");
        assert_eq!((checked.report.keys, checked.report.operations), (2, 6));
        assert_eq!(checked.hardest.0, "t/b");
        // A read of the old value after a newer write was acknowledged.
        history.push(op(1, write("t/a", "4"), 60, Some(70)));
        history.push(op(2, read("t/a", Some("1")), 80, Some(90)));
        match check(&history) {
            Err(Failure::NotLinearizable(v)) => assert_eq!(v.key, b"t/a"),
            other => panic!("the stale read must fail: {other:?}"),
        }
    }

    #[test]
    fn only_a_refusal_known_to_be_unsent_or_server_made_drops_an_operation() {
        // Made on the client (no headers): e.g. a keepalive timeout after the call went out.
        assert_eq!(
            classify(&Status::unavailable("keepalive")),
            Outcome::Unknown
        );
        let mut server = Status::unavailable("no leader");
        server
            .metadata_mut()
            .insert("content-type", "application/grpc".parse().expect("value"));
        assert_eq!(classify(&server), Outcome::NotApplied);
        let mut unknown = Status::unknown("outcome unknown: leader changed");
        unknown
            .metadata_mut()
            .insert("content-type", "application/grpc".parse().expect("value"));
        assert_eq!(classify(&unknown), Outcome::Unknown);
        assert_eq!(
            classify(&Status::deadline_exceeded("deadline")),
            Outcome::Unknown
        );
        assert_eq!(classify(&Status::cancelled("timeout")), Outcome::Unknown);
        let refused = Status::from_error(Box::new(tonic::ConnectError(
            std::io::Error::from(std::io::ErrorKind::ConnectionRefused).into(),
        )));
        assert_eq!(refused.code(), Code::Unavailable);
        assert_eq!(classify(&refused), Outcome::NotApplied);
    }
}
