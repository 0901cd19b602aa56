//! `maintenance.v1.Maintenance`. A follower cluster serves Reset (re-pull a table from
//! the leader cluster); Backup and Restore belong to leader clusters and are not built yet.

use std::pin::Pin;

use flotilla_proto::maintenance::v1::maintenance_server::Maintenance;
use flotilla_proto::maintenance::v1::{
    BackupRequest, ResetRequest, ResetResponse, RestoreMessage, RestoreResponse,
};
use flotilla_proto::replication::v1::SnapshotChunk;
use futures::Stream;
use tonic::{Request, Response, Status, Streaming};

use crate::api::{Api, table_name};
use crate::status::replication_status;

/// The Maintenance service.
#[derive(Debug, Clone)]
pub struct MaintenanceService {
    api: Api,
}

impl MaintenanceService {
    /// A Maintenance service over `api`.
    pub fn new(api: Api) -> Self {
        Self { api }
    }

    async fn reset_impl(&self, req: ResetRequest) -> Result<ResetResponse, Status> {
        let Some(follower) = &self.api.follower else {
            return Err(Status::unimplemented("method Reset not implemented"));
        };
        let tables = if req.reset_all {
            self.api.node.tables()
        } else {
            if req.table.is_empty() {
                return Err(Status::invalid_argument("table must be set"));
            }
            let name = table_name(&req.table)?;
            vec![
                self.api
                    .node
                    .table(name)
                    .map_err(|_| Status::unknown("table not found"))?,
            ]
        };
        for table in tables {
            follower.reset(&table).await.map_err(replication_status)?;
        }
        Ok(ResetResponse {})
    }
}

type ChunkStream = Pin<Box<dyn Stream<Item = Result<SnapshotChunk, Status>> + Send>>;

#[tonic::async_trait]
impl Maintenance for MaintenanceService {
    type BackupStream = ChunkStream;

    async fn backup(
        &self,
        _request: Request<BackupRequest>,
    ) -> Result<Response<Self::BackupStream>, Status> {
        Err(Status::unimplemented("method Backup not implemented"))
    }

    async fn restore(
        &self,
        _request: Request<Streaming<RestoreMessage>>,
    ) -> Result<Response<RestoreResponse>, Status> {
        Err(Status::unimplemented("method Restore not implemented"))
    }

    async fn reset(
        &self,
        request: Request<ResetRequest>,
    ) -> Result<Response<ResetResponse>, Status> {
        self.api
            .unary("Reset", request, |r| self.reset_impl(r))
            .await
            .map(Response::new)
    }
}
