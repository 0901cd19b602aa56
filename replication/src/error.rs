//! Errors of cross-cluster replication, on both sides: what happened, typed, so the
//! server can map each to its gRPC status (WIRE.md §5.6) in one place and a follower's
//! worker can tell what to do next.

use std::path::PathBuf;

use thiserror::Error;

/// What can go wrong pulling from or serving to another cluster.
#[derive(Debug, Error)]
pub enum Error {
    /// Snapshot bytes that do not follow the format (WIRE.md §5.8-7).
    #[error("snapshot format: {0}")]
    Format(String),
    /// Reading or writing the (Snappy-framed) snapshot bytes failed.
    #[error("snapshot bytes: {0}")]
    SnapshotBytes(#[from] std::io::Error),
    /// A staging file operation failed.
    #[error("{what} {}: {source}", path.display())]
    Io {
        /// What was being done.
        what: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The operating system's error.
        source: std::io::Error,
    },
    /// A snapshot record did not decode.
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
    /// The leader's Log/Replicate stream said nothing for too long.
    #[error("replication stream went silent")]
    StreamSilent,
    /// The leader sent a batch that does not continue from what this follower applied.
    #[error("leader sent leader index {first} after {applied}: a gap")]
    LeaderGap {
        /// The last leader index this follower applied.
        applied: u64,
        /// The first index of the batch.
        first: u64,
    },
    /// A `ReplicateCommand` arrived without its command.
    #[error("replicated command {leader_index} carries no command")]
    MissingCommand {
        /// Its leader index.
        leader_index: u64,
    },
    /// The leader cluster's snapshot is behind what this follower already has.
    #[error("leader is behind: its snapshot of {table} reflects {leader} < {wanted}")]
    LeaderBehind {
        /// The table.
        table: String,
        /// The leader index the snapshot reflects.
        leader: u64,
        /// The least leader index this follower can take.
        wanted: u64,
    },
    /// Log/Replicate asked for leader index 0 (serving side).
    #[error("invalid leaderIndex: leaderIndex must be greater than 0")]
    ZeroLeaderIndex,
    /// Snapshot/Stream for a table this leader does not have (serving side).
    #[error("unable to stream from table '{0}': table not found")]
    StreamTableNotFound(String),
    /// An incremental snapshot from a base older than the deletes the table remembers.
    #[error(
        "requested leader_index {since} is at or below GC horizon {horizon}; use a full snapshot"
    )]
    BelowHorizon {
        /// The requested base.
        since: u64,
        /// The oldest base that can be served.
        horizon: u64,
    },
    /// An incremental snapshot from a base the leader has not applied yet.
    #[error("requested leader_index {since} is ahead of leader applied index {applied}")]
    AheadOfLeader {
        /// The requested base.
        since: u64,
        /// The leader's applied index.
        applied: u64,
    },
    /// Snapshot/Query without a table.
    #[error("table is required")]
    TableRequired,
    /// Snapshot/Query: this leader has no shared snapshot store.
    #[error("shared snapshot store is not configured")]
    NoSharedStore,
    /// The table's group stopped while a stream was serving it.
    #[error("table stopped")]
    TableStopped,
    /// Maintenance/Restore: a message after the first carries no chunk.
    #[error("chunk expected")]
    ChunkExpected,
    /// Maintenance/Restore: the client's stream failed before it ended.
    #[error("restore stream: {}", .0.message())]
    RestoreStream(tonic::Status),
    /// A blocking task serving a stream panicked (a bug).
    #[error("a replication task failed: {0}")]
    TaskFailed(String),
}

impl Error {
    /// A closure making [`Error::Io`] for `what` on `path`, for `map_err`.
    pub fn io(what: &'static str, path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| Error::Io { what, path, source }
    }
}

impl From<Error> for flotilla_tables::Error {
    /// For a snapshot source's fetch, whose errors the table's group logs and retries.
    fn from(e: Error) -> Self {
        match e {
            Error::Tables(t) => t,
            other => flotilla_tables::Error::SourceFailed(Box::new(other)),
        }
    }
}

/// Result with the crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
