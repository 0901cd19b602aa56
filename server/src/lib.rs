//! The Flotilla server: the gRPC API and admin HTTP over one node's tables.
//!
//! [`start`] binds the listeners and serves until [`Running::shutdown`]; the `flotilla`
//! binary wraps it with a CLI, and tests start it in-process on loopback.

pub mod api;
pub mod cluster;
pub mod grpc_metrics;
pub mod inspect;
pub mod kv;
pub mod maintenance;
pub mod metrics_svc;
pub mod peers;
pub mod replication_svc;
pub mod rest;
pub mod snapshot_http;
pub mod status;
pub mod tables_svc;
pub mod validate;

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context as _;
use flotilla_ops::Settings;
use flotilla_proto::flotilla::raft::v1::raft_server::RaftServer;
use flotilla_proto::flotilla::v1::inspect_server::InspectServer;
use flotilla_proto::maintenance::v1::maintenance_server::MaintenanceServer;
use flotilla_proto::regatta::v1::{
    cluster_server::ClusterServer, kv_server::KvServer, metrics_server::MetricsServer,
    tables_server::TablesServer,
};
use flotilla_proto::replication::v1::{
    log_server::LogServer, metadata_server::MetadataServer, snapshot_server::SnapshotServer,
};
use flotilla_replication::follower::{self, FollowerConfig, LeaderSnapshots, ReplicationMetrics};
use flotilla_replication::leader::LeaderService;
use flotilla_tables::group::GroupConfig;
use flotilla_tables::transport::{NoPeers, Transport};
use flotilla_tables::{Node, NodeConfig};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic::codec::CompressionEncoding;
use tonic::service::{Routes, RoutesBuilder};

use crate::api::Api;
use crate::replication_svc::ReplicationService;

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
    /// Where the gRPC API listens.
    pub api_addr: SocketAddr,
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
    let replication = match role {
        Role::Leader => None,
        Role::Follower => {
            let channel = follower::leader_channel(&settings.replication.leader_address)
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
            log_retention_entries: settings.raft.log_retention_entries,
            log_retention_bytes: settings.raft.log_retention_bytes,
            ..GroupConfig::default()
        },
        raft_threads: settings.raft.threads,
        snapshot_source: replication
            .as_ref()
            .map(|(_, source, _)| Arc::new(source.clone()) as _),
    };
    let stop = CancellationToken::new();
    let peer_directory = peers::PeerDirectory::default();
    // Bound before the node opens: peers may dial as soon as our groups talk to them.
    let raft_listener = if members.len() > 1 {
        let addr = settings.raft_listen()?;
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
    let api = Api {
        node: node.clone(),
        settings: Arc::new(settings.clone()),
        registry,
        grpc,
        peers: peer_directory.clone(),
        follower,
    };

    let api_listener = TcpListener::bind(settings.api_listen()?)
        .await
        .with_context(|| format!("binding api.address {}", settings.api.address))?;
    let rest_listener = TcpListener::bind(settings.rest_listen()?)
        .await
        .with_context(|| format!("binding rest.address {}", settings.rest.address))?;
    let api_addr = api_listener.local_addr()?;
    let rest_addr = rest_listener.local_addr()?;

    let replication_addr = match role {
        Role::Leader => {
            let listener = TcpListener::bind(settings.replication_listen()?)
                .await
                .with_context(|| {
                    format!(
                        "binding replication.address {}",
                        settings.replication.address
                    )
                })?;
            let addr = listener.local_addr()?;
            let max_send = usize::try_from(settings.replication.max_send_message_size_bytes)?;
            tasks.push(tokio::spawn(serve_replication(
                api.clone(),
                LeaderService::new(node.clone(), max_send, stop.clone()),
                listener,
                stop.clone(),
            )));
            Some(addr)
        }
        Role::Follower => None,
    };
    let raft_addr = match raft_listener {
        Some(listener) => {
            let addr = listener.local_addr()?;
            let service = peers::RaftService::new(node.router(), peer_directory, stop.clone());
            tasks.push(tokio::spawn(serve_raft(service, listener, stop.clone())));
            Some(addr)
        }
        None => None,
    };
    let grpc_task = tokio::spawn(serve_grpc(api.clone(), api_listener, stop.clone()));
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
    tracing::info!(%api_addr, %rest_addr, ?raft_addr, ?replication_addr, ?role, "flotilla serving");
    tasks.push(grpc_task);
    tasks.push(rest_task);
    Ok(Running {
        api_addr,
        rest_addr,
        raft_addr,
        replication_addr,
        node,
        stop,
        tasks,
    })
}

async fn serve_raft(service: peers::RaftService, listener: TcpListener, stop: CancellationToken) {
    let server = RaftServer::new(service)
        .max_decoding_message_size(peers::MAX_PEER_MESSAGE_BYTES)
        .max_encoding_message_size(peers::MAX_PEER_MESSAGE_BYTES);
    let incoming = tonic::transport::server::TcpIncoming::from(listener)
        .with_nodelay(Some(true))
        .with_keepalive(Some(std::time::Duration::from_secs(10)));
    let served = tonic::transport::Server::builder()
        // Notice a peer that vanished without closing its streams.
        .http2_keepalive_interval(Some(std::time::Duration::from_secs(1)))
        .http2_keepalive_timeout(Some(std::time::Duration::from_secs(3)))
        .add_service(server)
        .serve_with_incoming_shutdown(incoming, stop.clone().cancelled_owned())
        .await;
    if let Err(e) = served {
        tracing::error!("raft server failed: {e}");
        stop.cancel();
    }
}

/// A public gRPC service as both ports serve it: gzip/zstd requests accepted (Armada
/// followers send gzip), Armada's receive limit, and the given send limit.
macro_rules! svc {
    ($server:ident, $max_send:expr, $svc:expr) => {
        $server::new($svc)
            .accept_compressed(CompressionEncoding::Gzip)
            .accept_compressed(CompressionEncoding::Zstd)
            .max_decoding_message_size(MAX_RECV_MESSAGE_BYTES)
            .max_encoding_message_size($max_send)
    };
}

/// Largest message the replication port sends (a batch can exceed its byte budget by one
/// large command).
const LEADER_SEND: usize = follower::source::MAX_LEADER_MESSAGE_BYTES;

/// The replication port of a leader cluster node: Metadata, Log, Snapshot, and KV for
/// writes forwarded by followers (Armada followers send them gzip-compressed).
async fn serve_replication(
    api: Api,
    service: LeaderService,
    listener: TcpListener,
    stop: CancellationToken,
) {
    let mut routes = Routes::builder();
    routes
        .add_service(svc!(
            MetadataServer,
            LEADER_SEND,
            ReplicationService::new(service.clone())
        ))
        .add_service(svc!(
            LogServer,
            LEADER_SEND,
            ReplicationService::new(service.clone())
        ))
        .add_service(svc!(
            SnapshotServer,
            LEADER_SEND,
            ReplicationService::new(service.clone())
        ))
        .add_service(svc!(KvServer, LEADER_SEND, kv::KvService::new(api)));
    add_reflection(&mut routes);
    // Plain HTTP GETs of snapshot objects share the port with gRPC (HTTP/1.1 or h2c).
    let app = routes
        .routes()
        .into_axum_router()
        .merge(snapshot_http::router(service));
    let incoming = tonic::transport::server::TcpIncoming::from(listener)
        .with_nodelay(Some(true))
        .with_keepalive(Some(std::time::Duration::from_secs(60)));
    let served = tonic::transport::Server::builder()
        .accept_http1(true)
        .http2_keepalive_interval(Some(std::time::Duration::from_secs(5)))
        .http2_keepalive_timeout(Some(std::time::Duration::from_secs(10)))
        .add_routes(Routes::from(app))
        .serve_with_incoming_shutdown(incoming, stop.clone().cancelled_owned())
        .await;
    if let Err(e) = served {
        tracing::error!("replication server failed: {e}");
        stop.cancel();
    }
}

/// Adds gRPC server reflection over the public protos (WIRE.md §5.11).
fn add_reflection(routes: &mut RoutesBuilder) {
    let v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(flotilla_proto::FILE_DESCRIPTOR_SET)
        .build_v1();
    let alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(flotilla_proto::FILE_DESCRIPTOR_SET)
        .build_v1alpha();
    match (v1, alpha) {
        (Ok(r), Ok(a)) => {
            routes.add_service(r).add_service(a);
        }
        (r, a) => tracing::warn!("gRPC reflection unavailable: {:?} {:?}", r.err(), a.err()),
    }
}

async fn serve_grpc(api: Api, listener: TcpListener, stop: CancellationToken) {
    let mut routes = Routes::builder();
    routes
        .add_service(svc!(
            KvServer,
            MAX_SEND_MESSAGE_BYTES,
            kv::KvService::new(api.clone())
        ))
        .add_service(svc!(
            TablesServer,
            MAX_SEND_MESSAGE_BYTES,
            tables_svc::TablesService::new(api.clone())
        ))
        .add_service(svc!(
            ClusterServer,
            MAX_SEND_MESSAGE_BYTES,
            cluster::ClusterService::new(api.clone())
        ))
        .add_service(svc!(
            MetricsServer,
            MAX_SEND_MESSAGE_BYTES,
            metrics_svc::MetricsService::new(api.clone())
        ))
        .add_service(svc!(
            MaintenanceServer,
            MAX_SEND_MESSAGE_BYTES,
            maintenance::MaintenanceService::new(api.clone())
        ))
        .add_service(svc!(
            InspectServer,
            MAX_SEND_MESSAGE_BYTES,
            inspect::InspectService::new(api.clone())
        ));
    add_reflection(&mut routes);
    // Small responses are written as several HTTP/2 frames; without TCP_NODELAY, Nagle
    // holds the last one until the client's delayed ACK (~40 ms per call).
    let incoming = tonic::transport::server::TcpIncoming::from(listener)
        .with_nodelay(Some(true))
        .with_keepalive(Some(std::time::Duration::from_secs(60)));
    let served = tonic::transport::Server::builder()
        .add_routes(routes.routes())
        .serve_with_incoming_shutdown(incoming, stop.clone().cancelled_owned())
        .await;
    if let Err(e) = served {
        tracing::error!("gRPC server failed: {e}");
        stop.cancel();
    }
}
