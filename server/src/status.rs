//! The one place that turns errors into gRPC status codes (WIRE.md §5.6).

use flotilla_tables::Error;
use tonic::{Code, Status};

/// Status for an error of the KV service (and anything else table-scoped).
pub fn kv_status(e: Error) -> Status {
    match e {
        Error::TableNotFound => Status::not_found("table not found"),
        Error::TableExists => Status::invalid_argument("table already exists"),
        Error::InvalidArgument(msg) => Status::invalid_argument(msg),
        Error::Timeout => Status::unavailable("timeout"),
        e @ (Error::Unavailable(_)
        | Error::ProposalDropped
        | Error::ShuttingDown
        | Error::Raft(_)) => Status::unavailable(e.to_string()),
        e @ (Error::Storage(_) | Error::Corrupt(_)) => Status::failed_precondition(e.to_string()),
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

/// Status for a request that ran past its deadline.
pub fn deadline_exceeded() -> Status {
    Status::new(Code::DeadlineExceeded, "deadline exceeded")
}

#[cfg(test)]
mod tests {
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
        assert_eq!(kv_status(Error::Timeout).message(), "timeout");
        assert_eq!(kv_status(Error::ProposalDropped).code(), Code::Unavailable);
        assert_eq!(
            kv_status(Error::Corrupt("x".into())).code(),
            Code::FailedPrecondition
        );
    }
}
