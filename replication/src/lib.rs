//! Cross-cluster replication (WIRE.md §3, §5.7-5.8): the leader cluster serves committed
//! commands and snapshots ([`leader`]); follower clusters pull them into their own raft
//! groups ([`follower`]), in the snapshot byte format of [`format`].

pub mod error;
pub mod follower;
pub mod format;
pub mod identity;
pub mod leader;
mod stall;

pub use error::{Error, Result};
