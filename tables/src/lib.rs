//! One Flotilla node's storage, consensus and state machine: named tables, each its own
//! raft group, all over one shared RocksDB.

pub mod applied;
pub mod catalog;
pub mod engine;
pub mod error;
pub mod export;
pub mod files;
pub mod fsm;
pub mod group;
pub mod group_status;
pub mod import;
pub mod keys;
pub mod log_writer;
pub mod metrics;
pub mod node;
pub mod outbox;
pub mod point_in_time;
pub mod raft_log;
pub mod raft_storage;
pub mod range;
pub mod replace;
pub mod router;
pub mod snapshot;
pub mod table;
pub mod transport;
pub mod values;
pub mod view;

pub use error::{Error, Result};
pub use node::{Node, NodeConfig};
pub use router::Router;
pub use table::Table;
