//! Errors of cross-cluster replication.

use thiserror::Error;

/// What can go wrong pulling from or serving to another cluster.
#[derive(Debug, Error)]
pub enum Error {
    /// Snapshot bytes that do not follow the format.
    #[error("snapshot format: {0}")]
    Format(String),
    /// Reading or writing snapshot bytes failed.
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    /// A record did not decode.
    #[error("decode: {0}")]
    Decode(#[from] prost::DecodeError),
    /// The local tables failed.
    #[error(transparent)]
    Tables(#[from] flotilla_tables::Error),
    /// The leader cluster answered with an error.
    #[error("leader: {0}")]
    Leader(#[from] tonic::Status),
    /// The leader cluster could not be reached.
    #[error("connecting to the leader: {0}")]
    Connect(#[from] tonic::transport::Error),
    /// The leader cluster's data is behind what this follower already has.
    #[error("leader is behind: {0}")]
    LeaderBehind(String),
}

impl From<Error> for flotilla_tables::Error {
    fn from(e: Error) -> Self {
        match e {
            Error::Tables(t) => t,
            other => flotilla_tables::Error::Unavailable(other.to_string()),
        }
    }
}

/// Result with the crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
