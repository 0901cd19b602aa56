//! `replication.v1` Metadata, Log and Snapshot on a leader cluster's replication port:
//! thin gRPC wrappers over [`LeaderService`], whose typed errors become statuses in
//! [`crate::status`].

use std::pin::Pin;

use flotilla_proto::replication::v1::{
    MetadataRequest, MetadataResponse, ReplicateRequest, ReplicateResponse, SnapshotChunk,
    SnapshotQueryRequest, SnapshotQueryResponse, SnapshotRequest, log_server::Log,
    metadata_server::Metadata, snapshot_server::Snapshot,
};
use flotilla_replication::identity;
use flotilla_replication::leader::{FOLLOW_HEADER, ItemStream, LeaderService};
use futures::{Stream, StreamExt as _};
use tonic::{Request, Response, Status};

use crate::status::{metadata_status, replication_status};

/// The replication services of one leader-cluster node.
#[derive(Debug, Clone)]
pub struct ReplicationService {
    leader: LeaderService,
}

impl ReplicationService {
    /// The services over `leader`.
    pub fn new(leader: LeaderService) -> Self {
        Self { leader }
    }
}

type StatusStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

fn statuses<T: Send + 'static>(items: ItemStream<T>) -> StatusStream<T> {
    Box::pin(items.map(|item| item.map_err(replication_status)))
}

/// The table id a follower's request names (see [`identity`]).
fn expected_id<T>(request: &Request<T>) -> Result<Option<u64>, Status> {
    identity::read_table_id(request.metadata()).map_err(|e| Status::invalid_argument(e.to_string()))
}

#[tonic::async_trait]
impl Metadata for ReplicationService {
    async fn get(
        &self,
        _request: Request<MetadataRequest>,
    ) -> Result<Response<MetadataResponse>, Status> {
        let answer = self.leader.metadata().await.map_err(metadata_status)?;
        let mut response = Response::new(answer.response);
        identity::write_table_ids(
            response.metadata_mut(),
            answer.ids.iter().map(|(name, id)| (name.as_str(), *id)),
        );
        Ok(response)
    }
}

#[tonic::async_trait]
impl Log for ReplicationService {
    type ReplicateStream = StatusStream<ReplicateResponse>;

    async fn replicate(
        &self,
        request: Request<ReplicateRequest>,
    ) -> Result<Response<Self::ReplicateStream>, Status> {
        let follow = request.metadata().contains_key(FOLLOW_HEADER);
        let expected = expected_id(&request)?;
        let stream = self
            .leader
            .replicate(request.into_inner(), follow, expected)
            .await
            .map_err(replication_status)?;
        Ok(Response::new(statuses(stream)))
    }
}

#[tonic::async_trait]
impl Snapshot for ReplicationService {
    type StreamStream = StatusStream<SnapshotChunk>;

    async fn stream(
        &self,
        request: Request<SnapshotRequest>,
    ) -> Result<Response<Self::StreamStream>, Status> {
        let expected = expected_id(&request)?;
        let stream = self
            .leader
            .snapshot(request.into_inner(), expected)
            .await
            .map_err(replication_status)?;
        Ok(Response::new(statuses(stream)))
    }

    async fn query(
        &self,
        request: Request<SnapshotQueryRequest>,
    ) -> Result<Response<SnapshotQueryResponse>, Status> {
        self.leader
            .query(request.get_ref())
            .map(Response::new)
            .map_err(replication_status)
    }
}
