//! Errors of the tables crate: what happened, typed, so that the server can tell a
//! client exactly what it may do next (retry, give up, or find out whether its write
//! landed). The server maps them to gRPC status codes in one place.

use std::path::PathBuf;

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
    /// The request is malformed or asks for more than one command may do; the message
    /// says how. Refused before anything changed.
    #[error("{0}")]
    InvalidArgument(String),
    /// A peer sent a raft message claiming to come from another node (a forged `from`):
    /// dropped unread.
    #[error("raft message from node {claimed} arrived on a connection that does not speak for it")]
    WrongSender {
        /// The `from` the message carries.
        claimed: u64,
    },
    /// The group did not take the request: nothing was proposed, so retrying is safe.
    #[error("{0}")]
    NotProposed(NotProposed),
    /// The proposal reached raft, but whether it was applied is not known here: a
    /// client must find out (read) before it retries a write that is not idempotent.
    #[error("outcome unknown: {0}; the write may or may not have been applied")]
    OutcomeUnknown(Uncertain),
    /// The write was committed at `revision` (a raft snapshot that covers it was
    /// installed here), but what it returned (previous values, a Txn's branch) is lost.
    #[error("committed at revision {revision}, but its result is not known")]
    CommittedWithoutResult {
        /// The revision the write got.
        revision: u64,
    },
    /// A linearizable read did not get a read index from the leader in time. Nothing
    /// changed; retrying is safe.
    #[error("timeout")]
    ReadTimeout,
    /// RocksDB failed (an I/O or fsync error, a full disk): not something to retry.
    #[error("storage: {0}")]
    Storage(#[from] rocksdb::Error),
    /// A file operation of the node's own (staging snapshots, syncing a directory) failed.
    #[error("{what} {}: {source}", path.display())]
    Io {
        /// What was being done.
        what: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The operating system's error.
        source: std::io::Error,
    },
    /// Raft-rs refused an operation (an internal invariant broke).
    #[error("raft: {0}")]
    Raft(#[from] raft::Error),
    /// Bytes on disk or in the log could not be decoded: corruption or a bug. Never
    /// replaced by a default.
    #[error("corrupt data of table {table}: {what}")]
    Corrupt {
        /// The table (group) id whose bytes are bad; 0 is the catalog.
        table: u64,
        /// What did not decode.
        what: String,
    },
    /// A snapshot stream from a peer or a leader cluster is malformed or was cut short.
    #[error("snapshot stream: {0}")]
    SnapshotStream(String),
    /// The receiver of a stream this node was producing went away.
    #[error("the receiver went away")]
    ReceiverGone,
    /// A follower's replicated batch continues from a leader index beyond what this
    /// replica stored: applying it would skip commands, so it was refused.
    #[error(
        "replicated batch continues from leader index {continues_from}, but {stored} is stored: a gap"
    )]
    ReplicationGap {
        /// The leader index this replica holds.
        stored: u64,
        /// The leader index the batch continues from.
        continues_from: u64,
    },
    /// A load marker names a snapshot no source here can provide (see `crate::import`).
    #[error("no source has the snapshot at leader index {leader_index}")]
    LoadUnavailable {
        /// The leader index the marker asks for.
        leader_index: u64,
    },
    /// The snapshot source of a load marker failed (e.g. the leader cluster could not
    /// be reached); the group retries.
    #[error("fetching a snapshot: {0}")]
    SourceFailed(Box<dyn std::error::Error + Send + Sync>),
    /// A blocking task running a read or an install panicked (a bug).
    #[error("a storage task failed: {0}")]
    TaskFailed(String),
    /// The node could not start (metrics registration, threads).
    #[error("starting: {0}")]
    Startup(String),
    /// The node is shutting down.
    #[error("shutting down")]
    ShuttingDown,
}

/// Why a request was not proposed (safe to retry, here or on another node).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum NotProposed {
    /// The group's mailbox is full.
    #[error("busy")]
    Busy,
    /// No leader is known, and too many requests already wait for one.
    #[error("no leader")]
    NoLeader,
    /// The group stopped (the table is being dropped or the node stops).
    #[error("shard closed")]
    Closed,
    /// It reached raft, but a new leader's entry took its place in the log: it was
    /// certainly not applied.
    #[error("lost in a leader change, not applied")]
    Overwritten,
    /// Too many writes wait for the disk (raft's uncommitted bytes, or the log writer's
    /// queue, are over their limit): back off and retry.
    #[error("too many writes waiting for the disk")]
    Overloaded,
}

/// Why a proposal's outcome is unknown.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum Uncertain {
    /// Leadership moved before the proposal was applied; it may still commit.
    #[error("leadership changed")]
    LeaderChanged,
    /// The group stopped (shutdown, table dropped) with the proposal in flight.
    #[error("the shard stopped")]
    Stopped,
    /// A raft snapshot replaced this replica's log while the proposal was in flight.
    #[error("a snapshot replaced the log")]
    Snapshot,
}

impl Error {
    /// A [`Error::Corrupt`] for table `table`.
    pub fn corrupt(table: u64, what: impl Into<String>) -> Self {
        Error::Corrupt {
            table,
            what: what.into(),
        }
    }

    /// A closure making [`Error::Io`] for `what` on `path`, for `map_err`.
    pub fn io(what: &'static str, path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| Error::Io { what, path, source }
    }
}

/// Result with the crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
