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

use super::auth::{PeerAuth, Rejected};

/// Client API addresses peers announced on their streams (raft id -> address), for
/// Cluster/MemberList.
pub type PeerDirectory = Arc<DashMap<u64, String>>;

/// `flotilla.raft.v1.Raft`.
#[derive(Debug, Clone)]
pub struct RaftService {
    router: Router,
    peers: PeerDirectory,
    /// Which raft ids each connection may speak for.
    auth: PeerAuth,
    /// Largest snapshot stream staged (`raft.max-snapshot-size-bytes`).
    max_snapshot_bytes: u64,
    /// Ends the peers' long-lived streams, which graceful shutdown would otherwise wait
    /// for forever.
    stop: CancellationToken,
}

impl RaftService {
    /// Serves peers' traffic into `router`, recording their API addresses in `peers`,
    /// dropping what a connection may not send (`auth`) and snapshot streams larger than
    /// `max_snapshot_bytes`, until `stop`.
    pub fn new(
        router: Router,
        peers: PeerDirectory,
        auth: PeerAuth,
        max_snapshot_bytes: u64,
        stop: CancellationToken,
    ) -> Self {
        Self {
            router,
            peers,
            auth,
            max_snapshot_bytes,
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
        let speaks_for = self
            .auth
            .speaks_for(request.extensions().get::<flotilla_tls::ConnInfo>());
        let mut stream = request.into_inner();
        let mut warned = false;
        // Set once the peer is heard from: its arrival and its departure wake this
        // node's hibernating groups.
        let mut presence: Option<PeerPresence> = None;
        loop {
            let batch = tokio::select! {
                _ = self.stop.cancelled() => break,
                next = stream.message() => match next? {
                    Some(batch) => batch,
                    None => break,
                },
            };
            if let Some(ids) = &speaks_for
                && !ids.contains(&batch.from)
            {
                self.auth
                    .reject(Rejected::UnverifiedSender, batch.messages.len().max(1));
                if !std::mem::replace(&mut warned, true) {
                    tracing::warn!(
                        from = batch.from,
                        ?ids,
                        "dropping raft traffic: the peer's certificate does not cover the \
                         raft address of the node it claims to be"
                    );
                }
                continue;
            }
            if presence.is_none() {
                presence = Some(PeerPresence::arrived(&self.router, &self.stop));
            }
            if !batch.api_address.is_empty() {
                self.peers.insert(batch.from, batch.api_address);
            }
            for m in batch.messages {
                // Undeliverable messages (a group this node does not have yet, a full
                // mailbox) are dropped: raft resends.
                match self.router.step_from(m.group_id, &m.message, batch.from) {
                    Ok(()) => {}
                    Err(e @ Error::WrongSender { .. }) => {
                        self.auth.reject(Rejected::ForgedFrom, 1);
                        tracing::debug!(group = m.group_id, from = batch.from, "dropped: {e}");
                    }
                    Err(e) => {
                        tracing::trace!(group = m.group_id, from = batch.from, "dropped: {e}");
                    }
                }
            }
        }
        Ok(Response::new(Done {}))
    }

    async fn snapshot(
        &self,
        request: Request<Streaming<SnapshotChunk>>,
    ) -> Result<Response<Done>, Status> {
        let speaks_for = self
            .auth
            .speaks_for(request.extensions().get::<flotilla_tls::ConnInfo>());
        let mut stream = request.into_inner();
        // Staging writes a file: it runs on a blocking thread fed chunk by chunk, so at
        // most a couple of chunks are in memory.
        let (tx, mut rx) = mpsc::channel::<Result<SnapshotChunk, Error>>(2);
        let router = self.router.clone();
        let staged = tokio::task::spawn_blocking(move || {
            router.receive_snapshot(std::iter::from_fn(move || rx.blocking_recv()), |from| {
                speaks_for.as_ref().is_none_or(|ids| ids.contains(&from))
            })
        });
        let mut received = 0u64;
        loop {
            let next = match stream.message().await {
                Ok(Some(chunk)) => {
                    received += prost::Message::encoded_len(&chunk) as u64;
                    if received > self.max_snapshot_bytes {
                        Err(Error::SnapshotStream(format!(
                            "the snapshot exceeds raft.max-snapshot-size-bytes ({} bytes)",
                            self.max_snapshot_bytes
                        )))
                    } else {
                        Ok(chunk)
                    }
                }
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
            Ok(Err(e @ Error::WrongSender { .. })) => {
                self.auth.reject(Rejected::UnverifiedSnapshot, 1);
                tracing::warn!("dropping a raft snapshot: {e}");
                Err(crate::status::kv_status(e))
            }
            Ok(Err(e)) => Err(crate::status::kv_status(e)),
            Err(e) => Err(crate::status::kv_status(Error::TaskFailed(e.to_string()))),
        }
    }
}

/// A peer's stream, seen from the groups: hibernating groups wake when it opens (the
/// peer may have restarted and need catching up) and when it ends however it ends (the
/// peer may have led some of them; only ticking groups notice a lost leader).
struct PeerPresence {
    router: Router,
    stop: CancellationToken,
}

impl PeerPresence {
    fn arrived(router: &Router, stop: &CancellationToken) -> Self {
        router.wake_all();
        Self {
            router: router.clone(),
            stop: stop.clone(),
        }
    }
}

impl Drop for PeerPresence {
    fn drop(&mut self) {
        if !self.stop.is_cancelled() {
            self.router.wake_all();
        }
    }
}
