//! Errors of the tables crate. The server maps them to gRPC status codes in one place.

use thiserror::Error;

/// What can go wrong storing, replicating or applying table data.
#[derive(Debug, Error)]
pub enum Error {
    /// The named table does not exist (or was dropped).
    #[error("table not found")]
    TableNotFound,
    /// A table of that name already exists.
    #[error("table already exists")]
    TableExists,
    /// The request is malformed; the message says how.
    #[error("{0}")]
    InvalidArgument(String),
    /// The group cannot take the request now (no leader yet, queue full, stopping);
    /// the client may retry.
    #[error("{0}")]
    Unavailable(String),
    /// The request did not finish within its deadline.
    #[error("timeout")]
    Timeout,
    /// Leadership changed before the proposal committed; its outcome is unknown to us.
    #[error("proposal dropped: leadership changed")]
    ProposalDropped,
    /// RocksDB failed.
    #[error("storage: {0}")]
    Storage(#[from] rocksdb::Error),
    /// Raft-rs refused an operation.
    #[error("raft: {0}")]
    Raft(#[from] raft::Error),
    /// Bytes on disk or in the log could not be decoded: corruption or a bug.
    #[error("corrupt data: {0}")]
    Corrupt(String),
    /// The node is shutting down.
    #[error("shutting down")]
    ShuttingDown,
}

impl From<prost::DecodeError> for Error {
    fn from(e: prost::DecodeError) -> Self {
        Error::Corrupt(e.to_string())
    }
}

impl From<protobuf::ProtobufError> for Error {
    fn from(e: protobuf::ProtobufError) -> Self {
        Error::Corrupt(e.to_string())
    }
}

/// Result with the crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
