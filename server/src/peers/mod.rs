//! Node-to-node traffic of a multi-node cluster over gRPC (`flotilla.raft.v1.Raft` on
//! `--raft.address`): [`GrpcTransport`] sends, [`RaftService`] receives.

mod auth;
mod service;
mod transport;

pub use auth::PeerAuth;
pub use service::{PeerDirectory, RaftService};
pub use transport::GrpcTransport;

/// Largest node-to-node gRPC message: a batch of raft messages or a snapshot chunk can
/// carry entries up to the API's 4 MiB request limit, several at a time.
pub const MAX_PEER_MESSAGE_BYTES: usize = 64 << 20;
