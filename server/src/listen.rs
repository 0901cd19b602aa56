//! Binding the listeners and loading each port's TLS material from the settings.

use std::sync::Arc;

use anyhow::Context as _;
use flotilla_ops::Settings;
use flotilla_ops::settings::ListenAddr;
use flotilla_tls::{Listener, RELOAD_INTERVAL, ServerTls, TlsConnector};
use tokio_util::sync::CancellationToken;

use crate::Role;

/// Every port's TLS, loaded (files read and checked) and watched for rotation.
pub(crate) struct Tls {
    /// The API listener's.
    pub api_server: Option<Arc<ServerTls>>,
    /// A leader's replication listener's.
    pub replication_server: Option<Arc<ServerTls>>,
    /// How a follower dials its leader cluster (replication and forwarded writes).
    pub leader_connector: TlsConnector,
    /// The raft listener's (mTLS).
    pub peer_server: Option<Arc<ServerTls>>,
    /// How this node dials its peers.
    pub peer_connector: TlsConnector,
}

impl Tls {
    /// Loads what `settings` ask for; an unusable file is an error naming its flag.
    pub(crate) fn load(
        settings: &Settings,
        role: Role,
        stop: CancellationToken,
    ) -> anyhow::Result<Self> {
        let watch = |tls: Arc<ServerTls>| {
            tls.watch(RELOAD_INTERVAL, stop.clone());
            tls
        };
        let api_server = settings
            .api_tls()?
            .map(|f| f.load())
            .transpose()?
            .map(watch);
        let replication_server = match role {
            Role::Leader if settings.replication.enabled => settings
                .replication_server_tls()?
                .map(|f| f.load())
                .transpose()?
                .map(watch),
            Role::Leader | Role::Follower => None,
        };
        let leader_connector = match role {
            Role::Follower => match settings.leader_client_tls()? {
                Some(client) => {
                    if client.files.insecure_skip_verify {
                        tracing::warn!(
                            "replication.insecure-skip-verify is set: the leader cluster's \
                             certificate is not verified, so anyone on the path can pose as it"
                        );
                    }
                    let tls = client.files.load()?;
                    tls.watch(RELOAD_INTERVAL, stop.clone());
                    TlsConnector::tls(
                        tls,
                        client.server_name.as_deref(),
                        "replication.server-name",
                    )?
                }
                None => TlsConnector::plain(),
            },
            Role::Leader => TlsConnector::plain(),
        };
        let (peer_server, peer_connector) = match settings.peer_tls()? {
            Some(peer) => {
                let server = watch(peer.server.load()?);
                let client = peer.client.load()?;
                client.watch(RELOAD_INTERVAL, stop.clone());
                (
                    Some(server),
                    TlsConnector::tls(client, None, "raft.address")?,
                )
            }
            None => (None, TlsConnector::plain()),
        };
        Ok(Self {
            api_server,
            replication_server,
            leader_connector,
            peer_server,
            peer_connector,
        })
    }
}

/// Binds `addr` (setting `key`, configured as `value`). A Unix socket left behind by a
/// previous run (nothing listening) is replaced.
pub(crate) async fn bind(addr: &ListenAddr, key: &str, value: &str) -> anyhow::Result<Listener> {
    match addr {
        ListenAddr::Tcp(addr) => Ok(Listener::Tcp(
            tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("binding {key} {value}"))?,
        )),
        ListenAddr::Unix(path) => {
            if std::os::unix::net::UnixStream::connect(path).is_err() {
                use std::os::unix::fs::FileTypeExt as _;
                if std::fs::metadata(path).is_ok_and(|m| m.file_type().is_socket()) {
                    std::fs::remove_file(path)
                        .with_context(|| format!("removing the stale socket of {key} {value}"))?;
                }
            }
            Ok(Listener::Unix(
                tokio::net::UnixListener::bind(path)
                    .with_context(|| format!("binding {key} {value}"))?,
            ))
        }
    }
}
