//! The receiving side of node-to-node traffic: raft messages are routed to their groups,
//! snapshot streams are staged and handed to theirs.

use std::sync::Arc;

use dashmap::DashMap;
use flotilla_proto::flotilla::raft::v1::raft_server::Raft;
use flotilla_proto::flotilla::raft::v1::{Done, MessageBatch, SnapshotChunk};
use flotilla_tables::{Error, Router};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};

/// Client API addresses peers announced on their streams (raft id -> address), for
/// Cluster/MemberList.
pub type PeerDirectory = Arc<DashMap<u64, String>>;

/// `flotilla.raft.v1.Raft`.
#[derive(Debug, Clone)]
pub struct RaftService {
    router: Router,
    peers: PeerDirectory,
    /// Ends the peers' long-lived streams, which graceful shutdown would otherwise wait
    /// for forever.
    stop: CancellationToken,
}

impl RaftService {
    /// Serves peers' traffic into `router`, recording their API addresses in `peers`,
    /// until `stop`.
    pub fn new(router: Router, peers: PeerDirectory, stop: CancellationToken) -> Self {
        Self {
            router,
            peers,
            stop,
        }
    }
}

#[tonic::async_trait]
impl Raft for RaftService {
    async fn send(
        &self,
        request: Request<Streaming<MessageBatch>>,
    ) -> Result<Response<Done>, Status> {
        let mut stream = request.into_inner();
        loop {
            let batch = tokio::select! {
                _ = self.stop.cancelled() => break,
                next = stream.message() => match next? {
                    Some(batch) => batch,
                    None => break,
                },
            };
            if !batch.api_address.is_empty() {
                self.peers.insert(batch.from, batch.api_address);
            }
            for m in batch.messages {
                // Undeliverable messages (a group this node does not have yet, a full
                // mailbox) are dropped: raft resends.
                if let Err(e) = self.router.step_bytes(m.group_id, &m.message) {
                    tracing::trace!(group = m.group_id, from = batch.from, "dropped: {e}");
                }
            }
        }
        Ok(Response::new(Done {}))
    }

    async fn snapshot(
        &self,
        request: Request<Streaming<SnapshotChunk>>,
    ) -> Result<Response<Done>, Status> {
        let mut stream = request.into_inner();
        // Staging writes a file: it runs on a blocking thread fed chunk by chunk, so at
        // most a couple of chunks are in memory.
        let (tx, mut rx) = mpsc::channel::<Result<SnapshotChunk, Error>>(2);
        let router = self.router.clone();
        let staged = tokio::task::spawn_blocking(move || {
            router.receive_snapshot(std::iter::from_fn(move || rx.blocking_recv()))
        });
        loop {
            let next = match stream.message().await {
                Ok(Some(chunk)) => Ok(chunk),
                Ok(None) => break,
                Err(e) => Err(Error::SnapshotStream(e.to_string())),
            };
            let failed = next.is_err();
            if tx.send(next).await.is_err() || failed {
                break;
            }
        }
        drop(tx);
        match staged.await {
            Ok(Ok(())) => Ok(Response::new(Done {})),
            Ok(Err(e)) => Err(crate::status::kv_status(e)),
            Err(e) => Err(crate::status::kv_status(Error::TaskFailed(e.to_string()))),
        }
    }
}
