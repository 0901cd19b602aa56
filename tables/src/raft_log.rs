//! Routes raft-rs's slog output into `tracing`, so one subscriber sees everything.

use slog::{Drain, Level, Never, OwnedKVList, Record};

/// A slog drain that forwards records to `tracing` (raft's chatty info goes to debug).
#[derive(Debug, Clone, Copy, Default)]
pub struct TracingDrain;

impl Drain for TracingDrain {
    type Ok = ();
    type Err = Never;

    fn log(&self, record: &Record<'_>, _values: &OwnedKVList) -> Result<(), Never> {
        match record.level() {
            Level::Critical | Level::Error => tracing::error!(target: "raft", "{}", record.msg()),
            Level::Warning => tracing::warn!(target: "raft", "{}", record.msg()),
            Level::Info => tracing::debug!(target: "raft", "{}", record.msg()),
            Level::Debug | Level::Trace => tracing::trace!(target: "raft", "{}", record.msg()),
        }
        Ok(())
    }
}

/// A logger for one raft group.
pub fn logger(group_id: u64) -> slog::Logger {
    slog::Logger::root(TracingDrain, slog::o!("group" => group_id))
}
