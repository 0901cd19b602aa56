//! Human-readable rendering of operations, reports and failures, for test logs.

use std::fmt;

use super::{Failure, Op, Operation, Report, Violation};

/// Renders bytes as a quoted string if they are printable UTF-8, otherwise as hex, so
/// keys and values are readable yet unambiguous.
struct Bytes<'a>(&'a [u8]);

impl fmt::Display for Bytes<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match std::str::from_utf8(self.0) {
            Ok(text) if !text.chars().any(char::is_control) => {
                write!(f, "\"{}\"", text.escape_debug())
            }
            _ => {
                f.write_str("0x")?;
                self.0.iter().try_for_each(|byte| write!(f, "{byte:02x}"))
            }
        }
    }
}

/// Renders a register value: the bytes, or `absent`.
struct Value<'a>(Option<&'a [u8]>);

impl fmt::Display for Value<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(bytes) => Bytes(bytes).fmt(f),
            None => f.write_str("absent"),
        }
    }
}

/// For example `read "k" -> "v"`, `write "k" := "v"`, `cas "k" absent -> "v" ok`,
/// `delete "k"`.
impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Op::Read { key, observed } => {
                write!(f, "read {} -> {}", Bytes(key), Value(observed.as_deref()))
            }
            Op::Write { key, value } => write!(f, "write {} := {}", Bytes(key), Bytes(value)),
            Op::Cas {
                key,
                expected,
                new,
                succeeded,
            } => write!(
                f,
                "cas {} {} -> {} {}",
                Bytes(key),
                Value(expected.as_deref()),
                Bytes(new),
                if *succeeded { "ok" } else { "failed" }
            ),
            Op::Delete { key } => write!(f, "delete {}", Bytes(key)),
        }
    }
}

/// For example `client 3: write "k" := "v" @ 100..250`; an unknown return is `?`.
impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "client {}: {} @ {}..", self.client, self.op, self.call)?;
        match self.ret {
            Some(ret) => write!(f, "{ret}"),
            None => f.write_str("?"),
        }
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "linearizable (keys: {}, operations: {}, search steps: {})",
            self.keys, self.operations, self.steps
        )
    }
}

/// The key on one line, then one indented line per operation of the window, by call.
impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "key {} is not linearizable; these operations admit no legal order:",
            Bytes(&self.key)
        )?;
        let mut window: Vec<&Operation> = self.window.iter().collect();
        window.sort_by_key(|operation| operation.call);
        window
            .iter()
            .try_for_each(|operation| write!(f, "\n  {operation}"))
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::NotLinearizable(violation) => violation.fmt(f),
            Failure::Inconclusive { key, steps } => write!(
                f,
                "linearizability check inconclusive: the search for key {} used its budget \
                 of {steps} steps",
                Bytes(key)
            ),
        }
    }
}

impl std::error::Error for Failure {}
