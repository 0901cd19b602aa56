//! State shared by the gRPC services, and helpers every handler uses.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use flotilla_ops::Settings;
use flotilla_proto::regatta::v1::ResponseHeader;
use flotilla_tables::{Node, Table};
use prometheus::Registry;
use tonic::{Request, Status};

use crate::grpc_metrics::GrpcMetrics;
use crate::status::deadline_exceeded;

/// What every service needs.
#[derive(Debug, Clone)]
pub struct Api {
    /// The node's tables.
    pub node: Arc<Node>,
    /// Effective settings (Cluster/Status may return them).
    pub settings: Arc<Settings>,
    /// The process registry (Metrics/GetMetrics renders it).
    pub registry: Registry,
    /// Call counts and latencies.
    pub grpc: GrpcMetrics,
    /// Client API addresses of the other members, as they announced them.
    pub peers: crate::peers::PeerDirectory,
    /// Set on a follower cluster: its link to the leader cluster.
    pub follower: Option<flotilla_replication::follower::Follower>,
    /// Set on a leader cluster: what Maintenance Backup and Restore work with.
    pub backups: Option<Backups>,
}

/// A leader node's backup and restore machinery.
#[derive(Debug, Clone)]
pub struct Backups {
    /// Streams a table's data (the snapshot export, without its trailer).
    pub exporter: flotilla_replication::leader::LeaderService,
    /// Where restores are received and staged.
    pub uploads: flotilla_replication::restore::Uploads,
}

/// Applied when a client sends no deadline (Armada's default).
pub const DEFAULT_DEADLINE: Duration = Duration::from_secs(5);

impl Api {
    /// Runs a unary handler under the client's deadline (or [`DEFAULT_DEADLINE`]) and
    /// records it in the gRPC metrics.
    pub async fn unary<Req, T, F>(
        &self,
        method: &str,
        request: Request<Req>,
        handler: impl FnOnce(Req) -> F,
    ) -> Result<T, Status>
    where
        F: Future<Output = Result<T, Status>>,
    {
        let deadline = client_deadline(&request).unwrap_or(DEFAULT_DEADLINE);
        let call = handler(request.into_inner());
        self.grpc
            .observe(method, async {
                tokio::time::timeout(deadline, call)
                    .await
                    .unwrap_or_else(|_| Err(deadline_exceeded()))
            })
            .await
    }

    /// The header of a response served by `table`; `revision` 0 for reads.
    pub fn header(&self, table: &Table, revision: u64) -> ResponseHeader {
        use std::sync::atomic::Ordering::Relaxed;
        let s = table.status();
        ResponseHeader {
            shard_id: table.id(),
            replica_id: self.node.node_id(),
            revision,
            raft_term: s.term.load(Relaxed),
            raft_leader_id: s.leader.load(Relaxed),
        }
    }
}

/// Parses the `grpc-timeout` header (e.g. `100m`, `5S`) if the client sent one.
pub fn client_deadline<T>(request: &Request<T>) -> Option<Duration> {
    let v = request.metadata().get("grpc-timeout")?.to_str().ok()?;
    let (num, unit) = v.split_at(v.len().checked_sub(1)?);
    let n: u64 = num.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.saturating_mul(3600)),
        "M" => Duration::from_secs(n.saturating_mul(60)),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// Table names arrive as bytes on the KV API; they are UTF-8 in the catalog.
pub fn table_name(bytes: &[u8]) -> Result<&str, Status> {
    std::str::from_utf8(bytes).map_err(|_| Status::not_found("table not found"))
}
