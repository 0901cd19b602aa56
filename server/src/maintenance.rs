//! `maintenance.v1.Maintenance` (WIRE.md §4, §5.9). A follower cluster serves Reset
//! (re-pull a table from the leader cluster); a leader cluster serves Backup (a table's
//! data as snapshot chunks) and Restore (a backup taken back in, atomically on every
//! replica, see `flotilla_replication::restore`).

use std::pin::Pin;

use flotilla_proto::maintenance::v1::maintenance_server::Maintenance;
use flotilla_proto::maintenance::v1::restore_message::Data;
use flotilla_proto::maintenance::v1::{
    BackupRequest, ResetRequest, ResetResponse, RestoreMessage, RestoreResponse,
};
use flotilla_proto::replication::v1::SnapshotChunk;
use flotilla_replication::Error as ReplicationError;
use flotilla_tables::import::LoadMarker;
use flotilla_tables::{Error as TablesError, Table};
use futures::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};

use crate::api::{Api, Backups, table_name};
use crate::status::{kv_status, replication_status, restore_status};

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

impl MaintenanceService {
    fn backups(&self, method: &str) -> Result<&Backups, Status> {
        self.api
            .backups
            .as_ref()
            .ok_or_else(|| Status::unimplemented(format!("method {method} not implemented")))
    }

    async fn backup_impl(&self, req: BackupRequest) -> Result<ChunkStream, Status> {
        let stream = self
            .backups("Backup")?
            .exporter
            .backup(&req.table)
            .await
            .ok_or_else(|| Status::unknown("table not found"))?;
        Ok(Box::pin(
            stream.map(|item| item.map_err(replication_status)),
        ))
    }

    async fn restore_impl(
        &self,
        mut stream: Streaming<RestoreMessage>,
    ) -> Result<RestoreResponse, Status> {
        let backups = self.backups("Restore")?;
        let info = match stream.message().await?.and_then(|m| m.data) {
            Some(Data::Info(info)) => info,
            _ => return Err(Status::unknown("first message should contain info")),
        };
        if info.table.is_empty() {
            return Err(Status::invalid_argument("table must be set"));
        }
        let name = table_name(&info.table)?.to_owned();
        let table = self.table_for_restore(&name).await?;
        let uploads = backups.uploads.clone();
        let holder = self.api.node.node_id();
        // Receiving and applying run in a task of their own: a client that goes away
        // mid-stream ends the receive with an error (nothing kept), and once the upload
        // is whole its restore is carried out and its file removed whether or not the
        // client waits for the answer.
        let restored = tokio::spawn(async move {
            let chunks = stream.map(|message| match message {
                Ok(RestoreMessage {
                    data: Some(Data::Chunk(chunk)),
                }) => Ok(chunk.data),
                Ok(_) => Err(ReplicationError::ChunkExpected),
                Err(status) => Err(ReplicationError::RestoreStream(status)),
            });
            let id = table.id();
            let upload = uploads.receive(id, chunks).await.map_err(restore_status)?;
            tracing::info!(
                table = table.name(),
                keys = upload.keys,
                bytes = upload.bytes,
                "restore received; swapping it in on every replica"
            );
            let out = table
                .propose_load(LoadMarker::restore(upload.number, holder))
                .await;
            // Once installed, the upload is removed by the install itself; an unknown
            // outcome keeps it, since the marker may still apply.
            if matches!(out, Err(TablesError::NotProposed(_))) {
                uploads.discard(id, upload.number);
            }
            out.map_err(kv_status)
        });
        let out = restored
            .await
            .map_err(|e| Status::internal(format!("restore task: {e}")))??;
        tracing::info!(table = %name, revision = out.revision, "restore applied");
        Ok(RestoreResponse {})
    }

    /// The table a restore replaces, created if absent (WIRE.md §5.9).
    async fn table_for_restore(&self, name: &str) -> Result<Table, Status> {
        if let Ok(table) = self.api.node.table(name) {
            return Ok(table);
        }
        match self.api.node.create_table(name).await {
            Ok(_) | Err(TablesError::TableExists) => {}
            Err(e) => return Err(kv_status(e)),
        }
        self.api.node.table(name).map_err(kv_status)
    }
}

#[tonic::async_trait]
impl Maintenance for MaintenanceService {
    type BackupStream = ChunkStream;

    async fn backup(
        &self,
        request: Request<BackupRequest>,
    ) -> Result<Response<Self::BackupStream>, Status> {
        self.api
            .grpc
            .observe("Backup", self.backup_impl(request.into_inner()))
            .await
            .map(Response::new)
    }

    async fn restore(
        &self,
        request: Request<Streaming<RestoreMessage>>,
    ) -> Result<Response<RestoreResponse>, Status> {
        self.api
            .grpc
            .observe("Restore", self.restore_impl(request.into_inner()))
            .await
            .map(Response::new)
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
