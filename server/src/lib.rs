//! The Flotilla server: the gRPC API and admin HTTP over one node's tables.
//!
//! [`start`] binds the listeners and serves until [`Running::shutdown`]; the `flotilla`
//! binary wraps it with a CLI, and tests start it in-process on loopback.

pub mod api;
pub mod auth;
pub mod cluster;
pub mod grpc_metrics;
pub mod inspect;
pub mod kv;
mod listen;
pub mod maintenance;
pub mod metrics_svc;
pub mod peers;
pub mod replication_svc;
pub mod rest;
mod serve;
pub mod snapshot_http;
pub mod status;
pub mod tables_svc;
pub mod validate;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use flotilla_ops::Settings;
use flotilla_replication::follower::{self, FollowerConfig, LeaderSnapshots, ReplicationMetrics};
use flotilla_replication::leader::LeaderService;
use flotilla_replication::restore::Uploads;
use flotilla_tables::group::GroupConfig;
use flotilla_tables::transport::{NoPeers, Transport};
use flotilla_tables::{Node, NodeConfig};
use flotilla_tls::ListenerOptions;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::api::Api;

/// Largest gRPC message accepted (Armada's default).
pub const MAX_RECV_MESSAGE_BYTES: usize = 4 * 1024 * 1024;
/// Largest gRPC message sent: a 4 MiB response page plus headers and framing.
pub const MAX_SEND_MESSAGE_BYTES: usize = 8 * 1024 * 1024;

/// Which kind of cluster the node belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Takes writes; serves replication to follower clusters.
    Leader,
    /// Pulls every table from a leader cluster; forwards writes to it.
    Follower,
}

/// A started server.
#[derive(Debug)]
pub struct Running {
    /// Where the gRPC API listens (`None` on a Unix socket).
    pub api_addr: Option<SocketAddr>,
    /// The API's Unix socket (`unix://` / `unixs://` addresses).
    pub api_socket: Option<PathBuf>,
    /// Where /metrics and /healthz listen.
    pub rest_addr: SocketAddr,
    /// Where peers' raft traffic arrives (multi-node clusters only).
    pub raft_addr: Option<SocketAddr>,
    /// Where follower clusters pull from (leader clusters only).
    pub replication_addr: Option<SocketAddr>,
    node: Arc<Node>,
    stop: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
}

impl Running {
    /// Stops accepting, drains in-flight calls, stops the tables and flushes storage.
    pub async fn shutdown(self) {
        self.stop.cancel();
        for task in self.tasks {
            let _ = task.await;
        }
        self.node.shutdown().await;
    }

    /// The node's tables (for in-process tests).
    pub fn node(&self) -> &Node {
        &self.node
    }

    /// Resolves when the server stops (on [`Running::shutdown`] or a serving failure).
    pub async fn stopped(&self) {
        self.stop.cancelled().await;
    }
}

/// Opens the node's storage and serves the API and admin endpoints; a leader also serves
/// replication, a follower starts pulling from its leader cluster.
pub async fn start(settings: Settings, role: Role) -> anyhow::Result<Running> {
    let registry = flotilla_ops::telemetry::new_registry();
    let members = settings.members()?;
    let stop = CancellationToken::new();
    // Every TLS file is read (and refused, naming its flag) before anything binds.
    let tls = listen::Tls::load(&settings, role, stop.clone())?;
    // A leader node's restores are staged here until their marker applies.
    let uploads = match role {
        Role::Leader => Some(
            Uploads::new(settings.data_dir.join("restore"))
                .context("preparing the restore staging directory")?,
        ),
        Role::Follower => None,
    };
    let replication = match role {
        Role::Leader => None,
        Role::Follower => {
            let channel = follower::leader_channel(
                &settings.replication.leader_address,
                tls.leader_connector.clone(),
            )
            .context("replication.leader-address")?;
            let metrics = ReplicationMetrics::new(&registry)?;
            let source = LeaderSnapshots::new(
                channel.clone(),
                settings.data_dir.join("replication"),
                tokio::runtime::Handle::current(),
                metrics.clone(),
            )
            .context("preparing the replication staging directory")?;
            Some((channel, source, metrics))
        }
    };
    let node_config = NodeConfig {
        data_dir: settings.data_dir.clone(),
        voters: members.keys().copied().collect(),
        group: GroupConfig {
            node_id: settings.raft.node_id,
            tick: settings.tick()?,
            election_ticks: usize::try_from(settings.raft.election_rtt)?,
            heartbeat_ticks: usize::try_from(settings.raft.heartbeat_rtt)?,
            hibernate_after_ticks: settings.raft.hibernate_rtt,
            log_retention_entries: settings.raft.log_retention_entries,
            log_retention_bytes: settings.raft.log_retention_bytes,
            ..GroupConfig::default()
        },
        raft_threads: settings.raft.threads,
        snapshot_source: match (&replication, &uploads) {
            (Some((_, source, _)), _) => Some(Arc::new(source.clone()) as _),
            (None, Some(uploads)) => Some(Arc::new(uploads.clone()) as _),
            (None, None) => None,
        },
    };
    let peer_directory = peers::PeerDirectory::default();
    // Bound before the node opens: peers may dial as soon as our groups talk to them.
    let raft_listener = if members.len() > 1 {
        let addr = settings.raft_listen()?;
        if tls.peer_server.is_none() && !addr.ip().is_loopback() {
            tracing::warn!(
                %addr,
                "raft.address is reachable from other machines without TLS: peers are not \
                 authenticated, so this is for trusted networks only (set raft.tls-cert-file, \
                 raft.tls-key-file and raft.tls-ca-file)"
            );
        }
        let listener = TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding raft.address {}", settings.raft.address))?;
        Some(listener)
    } else {
        None
    };
    let transport: Arc<dyn Transport> = if members.len() > 1 {
        peers::GrpcTransport::new(
            settings.raft.node_id,
            &members,
            settings.api.advertise_address.clone(),
            tls.peer_connector.clone(),
            &registry,
            stop.clone(),
        )?
    } else {
        Arc::new(NoPeers)
    };
    let reg = registry.clone();
    let node = tokio::task::spawn_blocking(move || Node::open(node_config, transport, &reg))
        .await?
        .with_context(|| format!("opening data dir {}", settings.data_dir.display()))?;
    let node = Arc::new(node);
    let grpc = grpc_metrics::GrpcMetrics::new(&registry)?;
    let mut tasks = Vec::new();
    let follower = match replication {
        Some((channel, source, metrics)) => {
            let config = FollowerConfig {
                reconcile_interval: settings.reconcile_interval()?,
            };
            let (follower, task) =
                follower::start(node.clone(), channel, source, metrics, config, stop.clone());
            tasks.push(task);
            Some(follower)
        }
        None => None,
    };
    let peer_auth = peers::PeerAuth::new(tls.peer_server.is_some(), &members, &registry)?;
    let api = Api {
        node: node.clone(),
        settings: Arc::new(settings.clone()),
        registry,
        grpc,
        peers: peer_directory.clone(),
        follower,
        backups: uploads.map(|uploads| api::Backups {
            // Backups stream like snapshots; the replicate batch budget does not apply.
            exporter: LeaderService::new(node.clone(), MAX_SEND_MESSAGE_BYTES, stop.clone()),
            uploads,
        }),
    };

    let api_listen = settings.api_listen()?;
    let api_listener = listen::bind(&api_listen.addr, "api.address", &settings.api.address).await?;
    let rest_listener = TcpListener::bind(settings.rest_listen()?)
        .await
        .with_context(|| format!("binding rest.address {}", settings.rest.address))?;
    let api_addr = api_listener.local_addr();
    let api_socket = match &api_listen.addr {
        flotilla_ops::settings::ListenAddr::Unix(path) => Some(path.clone()),
        flotilla_ops::settings::ListenAddr::Tcp(_) => None,
    };
    let rest_addr = rest_listener.local_addr()?;

    let replication_addr = match role {
        Role::Leader if settings.replication.enabled => {
            let listen = settings.replication_listen()?;
            let listener = listen::bind(
                &listen.addr,
                "replication.address",
                &settings.replication.address,
            )
            .await?;
            let addr = listener.local_addr();
            let max_send = usize::try_from(settings.replication.max_send_message_size_bytes)?;
            let options = ListenerOptions {
                tls: tls.replication_server.clone(),
                max_connections: None,
                tcp_keepalive: Some(Duration::from_secs(60)),
            };
            tasks.push(tokio::spawn(serve::serve_replication(
                api.clone(),
                LeaderService::new(node.clone(), max_send, stop.clone()),
                listener,
                options,
                stop.clone(),
            )));
            addr
        }
        Role::Leader | Role::Follower => None,
    };
    let raft_addr = match raft_listener {
        Some(listener) => {
            let addr = listener.local_addr()?;
            let service = peers::RaftService::new(
                node.router(),
                peer_directory,
                peer_auth,
                settings.raft.max_snapshot_size_bytes,
                stop.clone(),
            );
            let options = ListenerOptions {
                tls: tls.peer_server.clone(),
                max_connections: None,
                tcp_keepalive: Some(Duration::from_secs(10)),
            };
            tasks.push(tokio::spawn(serve::serve_raft(
                service,
                flotilla_tls::Listener::Tcp(listener),
                options,
                stop.clone(),
            )));
            Some(addr)
        }
        None => None,
    };
    let api_options = ListenerOptions {
        tls: tls.api_server.clone(),
        max_connections: match settings.api.max_concurrent_connections {
            0 => None,
            n => Some(usize::try_from(n)?),
        },
        tcp_keepalive: Some(Duration::from_secs(60)),
    };
    let limits = serve::ApiLimits {
        max_concurrent_streams: match settings.api.max_concurrent_streams {
            0 => None,
            n => Some(n),
        },
    };
    let grpc_task = tokio::spawn(serve::serve_api(
        api.clone(),
        api_listener,
        api_options,
        limits,
        stop.clone(),
    ));
    let rest_task = {
        let stop = stop.clone();
        let router = rest::router(api);
        tokio::spawn(async move {
            let served = axum::serve(rest_listener, router)
                .with_graceful_shutdown(stop.clone().cancelled_owned())
                .await;
            if let Err(e) = served {
                tracing::error!("REST server failed: {e}");
                stop.cancel();
            }
        })
    };
    tracing::info!(?api_addr, ?api_socket, %rest_addr, ?raft_addr, ?replication_addr, ?role, "flotilla serving");
    tasks.push(grpc_task);
    tasks.push(rest_task);
    Ok(Running {
        api_addr,
        api_socket,
        rest_addr,
        raft_addr,
        replication_addr,
        node,
        stop,
        tasks,
    })
}
