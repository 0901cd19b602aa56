//! Cross-cluster replication (WIRE.md §3, §5.7-5.8): the leader cluster serves committed
//! commands and snapshots ([`leader`]); follower clusters pull them into their own raft
//! groups ([`follower`]), in the snapshot byte format of [`format`]. The same format
//! carries Maintenance backups; [`restore`] takes them back in.

pub mod error;
pub mod follower;
pub mod format;
pub mod identity;
pub mod leader;
pub mod restore;
mod stall;

pub use error::{Error, Result};
