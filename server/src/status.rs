//! The one place that turns errors into gRPC status codes, for every service (WIRE.md
//! §5.6, and the codes Flotilla adds for outcomes Armada leaves ambiguous):
//!
//! | what happened | code | may the client retry? |
//! |---|---|---|
//! | not proposed (busy, no leader, closed, lost before the log) | UNAVAILABLE | yes |
//! | too many writes waiting for the disk | RESOURCE_EXHAUSTED | yes, after backing off |
//! | linearizable read timed out | UNAVAILABLE `timeout` | yes (a read) |
//! | proposed, outcome unknown | UNKNOWN `outcome unknown: …` | only after reading what landed |
//! | committed, result lost (a snapshot covered it) | OK with the revision where the reply needs nothing else, else UNKNOWN `committed at revision N, …` | no |
//! | storage, I/O or raft failure | INTERNAL | no |
//! | corrupt data on disk | DATA_LOSS | no |

use flotilla_replication::Error as ReplicationError;
use flotilla_tables::Error;
use tonic::{Code, Status};

/// Status for an error of the KV service (and anything else table-scoped).
pub fn kv_status(e: Error) -> Status {
    match e {
        Error::TableNotFound => Status::not_found("table not found"),
        Error::TableExists => Status::invalid_argument("table already exists"),
        Error::InvalidArgument(msg) => Status::invalid_argument(msg),
        e @ Error::WrongSender { .. } => Status::permission_denied(e.to_string()),
        Error::ReadTimeout => Status::unavailable("timeout"),
        Error::NotProposed(why) => match why {
            flotilla_tables::error::NotProposed::Overloaded => {
                Status::resource_exhausted(why.to_string())
            }
            _ => Status::unavailable(why.to_string()),
        },
        e
        @ (Error::ShuttingDown | Error::ReplicationGap { .. } | Error::LoadUnavailable { .. }) => {
            Status::unavailable(e.to_string())
        }
        e @ (Error::OutcomeUnknown(_) | Error::CommittedWithoutResult { .. }) => {
            Status::unknown(e.to_string())
        }
        e @ Error::Corrupt { .. } => Status::data_loss(e.to_string()),
        e @ (Error::Storage(_)
        | Error::Io { .. }
        | Error::Raft(_)
        | Error::SnapshotStream(_)
        | Error::ReceiverGone
        | Error::SourceFailed(_)
        | Error::TaskFailed(_)
        | Error::Startup(_)) => Status::internal(e.to_string()),
    }
}

/// Status for an error of the Tables service: a missing table there is a bad argument,
/// not NOT_FOUND (Armada's behaviour).
pub fn tables_status(e: Error) -> Status {
    match e {
        Error::TableNotFound => Status::invalid_argument("table not found"),
        other => kv_status(other),
    }
}

/// Status for an error of the replication services (Metadata, Log, Snapshot) on the
/// leader, WIRE.md §5.6.
pub fn replication_status(e: ReplicationError) -> Status {
    match e {
        ReplicationError::ZeroLeaderIndex | ReplicationError::TableRequired => {
            Status::invalid_argument(e.to_string())
        }
        ReplicationError::StreamTableNotFound(_) | ReplicationError::TableStopped => {
            Status::unavailable(e.to_string())
        }
        ReplicationError::BelowHorizon { .. } | ReplicationError::NoSharedStore => {
            Status::failed_precondition(e.to_string())
        }
        ReplicationError::AheadOfLeader { .. } => Status::out_of_range(e.to_string()),
        ReplicationError::Tables(t) => kv_status(t),
        ReplicationError::Leader(status) | ReplicationError::RestoreStream(status) => status,
        ReplicationError::ChunkExpected => Status::unknown(e.to_string()),
        e @ (ReplicationError::Format(_)
        | ReplicationError::SnapshotBytes(_)
        | ReplicationError::Io { .. }
        | ReplicationError::Decode(_)
        | ReplicationError::Connect(_)
        | ReplicationError::StreamSilent
        | ReplicationError::LeaderGap { .. }
        | ReplicationError::MissingCommand { .. }
        | ReplicationError::LeaderBehind { .. }
        | ReplicationError::TaskFailed(_)) => Status::internal(e.to_string()),
    }
}

/// Status for a failed Maintenance/Restore (WIRE.md §5.6): bad backup bytes are the
/// client's to fix.
pub fn restore_status(e: ReplicationError) -> Status {
    match e {
        e @ (ReplicationError::Format(_)
        | ReplicationError::SnapshotBytes(_)
        | ReplicationError::Decode(_)) => {
            Status::invalid_argument(format!("restore data is not a backup: {e}"))
        }
        other => replication_status(other),
    }
}

/// Status for Metadata/Get's failure (WIRE.md §5.6: `unknown err <err>`).
pub fn metadata_status(e: ReplicationError) -> Status {
    Status::unavailable(format!("unknown err {e}"))
}

/// Status for a request that ran past its deadline.
pub fn deadline_exceeded() -> Status {
    Status::new(Code::DeadlineExceeded, "deadline exceeded")
}

#[cfg(test)]
mod tests {
    use flotilla_tables::error::{NotProposed, Uncertain};

    use super::*;

    #[test]
    fn codes_follow_the_wire_contract() {
        assert_eq!(kv_status(Error::TableNotFound).code(), Code::NotFound);
        assert_eq!(
            tables_status(Error::TableNotFound).code(),
            Code::InvalidArgument
        );
        assert_eq!(
            tables_status(Error::TableExists).message(),
            "table already exists"
        );
        assert_eq!(kv_status(Error::ReadTimeout).message(), "timeout");
        assert_eq!(
            kv_status(Error::NotProposed(NotProposed::Busy)).code(),
            Code::Unavailable
        );
        assert_eq!(
            kv_status(Error::NotProposed(NotProposed::Overloaded)).code(),
            Code::ResourceExhausted
        );
        assert_eq!(kv_status(Error::corrupt(3, "x")).code(), Code::DataLoss);
        assert_eq!(
            replication_status(ReplicationError::AheadOfLeader {
                since: 9,
                applied: 5
            })
            .message(),
            "requested leader_index 9 is ahead of leader applied index 5"
        );
        assert_eq!(
            replication_status(ReplicationError::ZeroLeaderIndex).code(),
            Code::InvalidArgument
        );
    }

    #[test]
    fn an_uncertain_outcome_is_never_a_retryable_code() {
        for e in [
            Error::OutcomeUnknown(Uncertain::LeaderChanged),
            Error::OutcomeUnknown(Uncertain::Stopped),
            Error::OutcomeUnknown(Uncertain::Snapshot),
            Error::CommittedWithoutResult { revision: 7 },
        ] {
            let status = kv_status(e);
            assert_eq!(status.code(), Code::Unknown, "{status:?}");
            assert!(
                status.message().starts_with("outcome unknown")
                    || status.message().starts_with("committed at revision 7"),
                "{}",
                status.message()
            );
        }
        let fsync = Error::Io {
            what: "syncing",
            path: "/x".into(),
            source: std::io::Error::other("EIO"),
        };
        assert_eq!(kv_status(fsync).code(), Code::Internal);
    }
}
