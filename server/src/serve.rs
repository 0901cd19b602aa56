//! The three gRPC ports as tonic servers over our TLS-capable listener: the API port,
//! a leader's replication port, and the node-to-node raft port.

use std::time::Duration;

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
use flotilla_replication::follower;
use flotilla_replication::leader::LeaderService;
use flotilla_tls::{Listener, ListenerOptions};
use tokio_util::sync::CancellationToken;
use tonic::codec::CompressionEncoding;
use tonic::service::interceptor::InterceptedService;
use tonic::service::{Routes, RoutesBuilder};

use crate::api::Api;
use crate::auth::{BearerToken, unknown_service};
use crate::replication_svc::ReplicationService;
use crate::{MAX_RECV_MESSAGE_BYTES, MAX_SEND_MESSAGE_BYTES, kv, peers, snapshot_http};

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

/// How the API port is served beyond its listener.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ApiLimits {
    /// Concurrent calls per connection (`None` = h2's default, unbounded by us).
    pub max_concurrent_streams: Option<u32>,
}

pub(crate) async fn serve_raft(
    service: peers::RaftService,
    listener: Listener,
    options: ListenerOptions,
    stop: CancellationToken,
) {
    let server = RaftServer::new(service)
        .max_decoding_message_size(peers::MAX_PEER_MESSAGE_BYTES)
        .max_encoding_message_size(peers::MAX_PEER_MESSAGE_BYTES);
    let incoming = listener.incoming(options, stop.clone());
    let served = tonic::transport::Server::builder()
        // Notice a peer that vanished without closing its streams.
        .http2_keepalive_interval(Some(Duration::from_secs(1)))
        .http2_keepalive_timeout(Some(Duration::from_secs(3)))
        .add_service(server)
        .serve_with_incoming_shutdown(incoming, stop.clone().cancelled_owned())
        .await;
    if let Err(e) = served {
        tracing::error!("raft server failed: {e}");
        stop.cancel();
    }
}

/// The replication port of a leader cluster node: Metadata, Log, Snapshot, and KV for
/// writes forwarded by followers (Armada followers send them gzip-compressed). With
/// `replication.client-cert-auth` only holders of a certificate from the replication CA
/// get past the handshake, so strangers can neither pull tables nor write.
pub(crate) async fn serve_replication(
    api: Api,
    service: LeaderService,
    listener: Listener,
    options: ListenerOptions,
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
        .merge(snapshot_http::router(service))
        .fallback(unknown_service);
    let incoming = listener.incoming(options, stop.clone());
    let served = tonic::transport::Server::builder()
        .accept_http1(true)
        .http2_keepalive_interval(Some(Duration::from_secs(5)))
        .http2_keepalive_timeout(Some(Duration::from_secs(10)))
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

/// The API port: KV, Cluster, Metrics, Inspect always; Tables and Maintenance unless
/// switched off, behind their bearer tokens when configured.
pub(crate) async fn serve_api(
    api: Api,
    listener: Listener,
    options: ListenerOptions,
    limits: ApiLimits,
    stop: CancellationToken,
) {
    let settings = api.settings.clone();
    let mut routes = Routes::builder();
    routes
        .add_service(svc!(
            KvServer,
            MAX_SEND_MESSAGE_BYTES,
            kv::KvService::new(api.clone())
        ))
        .add_service(svc!(
            ClusterServer,
            MAX_SEND_MESSAGE_BYTES,
            crate::cluster::ClusterService::new(api.clone())
        ))
        .add_service(svc!(
            MetricsServer,
            MAX_SEND_MESSAGE_BYTES,
            crate::metrics_svc::MetricsService::new(api.clone())
        ))
        .add_service(svc!(
            InspectServer,
            MAX_SEND_MESSAGE_BYTES,
            crate::inspect::InspectService::new(api.clone())
        ));
    if settings.tables.enabled {
        routes.add_service(InterceptedService::new(
            svc!(
                TablesServer,
                MAX_SEND_MESSAGE_BYTES,
                crate::tables_svc::TablesService::new(api.clone())
            ),
            BearerToken::new(&settings.tables.token),
        ));
    }
    if settings.maintenance.enabled {
        routes.add_service(InterceptedService::new(
            svc!(
                MaintenanceServer,
                MAX_SEND_MESSAGE_BYTES,
                crate::maintenance::MaintenanceService::new(api.clone())
            ),
            BearerToken::new(&settings.maintenance.token),
        ));
    }
    add_reflection(&mut routes);
    let app = routes.routes().into_axum_router().fallback(unknown_service);
    let incoming = listener.incoming(options, stop.clone());
    let served = tonic::transport::Server::builder()
        .max_concurrent_streams(limits.max_concurrent_streams)
        .add_routes(Routes::from(app))
        .serve_with_incoming_shutdown(incoming, stop.clone().cancelled_owned())
        .await;
    if let Err(e) = served {
        tracing::error!("gRPC server failed: {e}");
        stop.cancel();
    }
}
