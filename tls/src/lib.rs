//! TLS for every Flotilla port (issue 11).
//!
//! rustls with the ring provider, driven by our own listener ([`incoming`]) and connector
//! ([`connector`]) rather than tonic's built-in TLS, for two reasons: certificates are
//! re-read from disk while the node runs ([`reload`]), and the verified client certificate
//! of each connection reaches the services ([`ConnInfo`]), so the raft service can check
//! that a peer speaks only for its own raft id.
//!
//! Settings name their flag ([`FileFlag`]), so every refusal at start-up says which flag
//! and which file is wrong.

mod client;
mod error;
mod incoming;
mod pem;
mod reload;
mod server;
mod verify;

pub use client::{ClientTls, ClientTlsFiles, TlsConnector};
pub use error::TlsError;
pub use incoming::{Conn, ConnInfo, Listener, ListenerOptions};
pub use pem::FileFlag;
pub use reload::{RELOAD_INTERVAL, Reloading};
pub use server::{ClientAuth, ServerTls, ServerTlsFiles};
pub use verify::certificate_covers_host;
