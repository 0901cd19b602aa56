//! The sending side of node-to-node traffic. Each peer has one long-lived gRPC stream fed
//! by a bounded queue: raft messages of every group are batched onto it, a slow or dead
//! peer only fills (and overflows) its own queue, and a broken stream is reopened with
//! backoff. Snapshots go on streams of their own, read from a RocksDB snapshot as they
//! are sent.

use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use flotilla_proto::flotilla::raft::v1::raft_client::RaftClient;
use flotilla_proto::flotilla::raft::v1::{GroupMessage, MessageBatch, SnapshotChunk};
use flotilla_tables::Router;
use flotilla_tables::transport::{Outbox, Transport};
use flotilla_tls::TlsConnector;
use prometheus::{IntCounterVec, Opts, Registry};
use protobuf::Message as _;
use raft::eraftpb::{Message, MessageType};
use tokio::sync::{Semaphore, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::transport::{Channel, Endpoint};
use tracing::Instrument;

use super::MAX_PEER_MESSAGE_BYTES;

/// Raft messages queued per peer; beyond this they are dropped (raft resends).
const QUEUE_CAPACITY: usize = 16_384;
/// Most messages, and bytes, in one batch on the stream.
const MAX_BATCH_MESSAGES: usize = 1024;
const MAX_BATCH_BYTES: usize = 4 << 20;
/// Reconnect backoff bounds.
const MIN_BACKOFF: Duration = Duration::from_millis(50);
const MAX_BACKOFF: Duration = Duration::from_secs(2);
/// Longest wait for a stream to take one batch before the link is reopened.
const SEND_STALL: Duration = Duration::from_secs(3);
/// Longest a snapshot stream may go without taking a chunk (or, after the last one,
/// without the receiver answering) before it is abandoned and reported failed.
const SNAPSHOT_IDLE: Duration = Duration::from_secs(15);
/// Snapshots streamed to one peer at the same time.
const SNAPSHOTS_PER_PEER: usize = 2;

/// Sends raft traffic to the other members over gRPC.
pub struct GrpcTransport {
    me: u64,
    /// Dials peers: plain TCP, or mutual TLS with the peer certificate.
    connector: TlsConnector,
    /// This node's client API address, announced on the first batch of every stream.
    api_address: String,
    peers: BTreeMap<u64, Peer>,
    router: OnceLock<Router>,
    runtime: tokio::runtime::Handle,
    cancel: CancellationToken,
    dropped: IntCounterVec,
}

struct Peer {
    addr: String,
    queue: mpsc::Sender<(u64, Message)>,
    /// Taken by the link task when the transport is attached.
    receiver: parking_lot::Mutex<Option<mpsc::Receiver<(u64, Message)>>>,
    snapshots: Arc<Semaphore>,
}

impl std::fmt::Debug for GrpcTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GrpcTransport")
            .field("me", &self.me)
            .field("peers", &self.peers.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl GrpcTransport {
    /// A transport from node `me` to `members` (raft id -> raft address; `me` is
    /// skipped), dialled through `connector`. `api_address` is announced to peers for
    /// their MemberList. Link tasks start on the current runtime when a node attaches, and
    /// stop on `cancel`.
    pub fn new(
        me: u64,
        members: &BTreeMap<u64, String>,
        api_address: String,
        connector: TlsConnector,
        registry: &Registry,
        cancel: CancellationToken,
    ) -> prometheus::Result<Arc<Self>> {
        let dropped = IntCounterVec::new(
            Opts::new(
                "flotilla_peer_messages_dropped_total",
                "Raft messages to a peer dropped because its queue was full",
            ),
            &["peer"],
        )?;
        registry.register(Box::new(dropped.clone()))?;
        let peers = members
            .iter()
            .filter(|(id, _)| **id != me)
            .map(|(id, addr)| {
                let (queue, receiver) = mpsc::channel(QUEUE_CAPACITY);
                let peer = Peer {
                    addr: addr.clone(),
                    queue,
                    receiver: parking_lot::Mutex::new(Some(receiver)),
                    snapshots: Arc::new(Semaphore::new(SNAPSHOTS_PER_PEER)),
                };
                (*id, peer)
            })
            .collect();
        let transport = Arc::new(Self {
            me,
            connector,
            api_address,
            peers,
            router: OnceLock::new(),
            runtime: tokio::runtime::Handle::current(),
            cancel,
            dropped,
        });
        Ok(transport)
    }

    fn send_snapshot(&self, group_id: u64, msg: Message) {
        let to = msg.to;
        let (Some(peer), Some(router)) = (self.peers.get(&to), self.router.get()) else {
            return;
        };
        let (addr, permits, router) = (peer.addr.clone(), peer.snapshots.clone(), router.clone());
        let connector = self.connector.clone();
        let span = tracing::info_span!("snapshot", group = group_id, to);
        self.runtime.spawn(
            async move {
                let sent = async {
                    let _permit = permits.acquire_owned().await.ok()?;
                    stream_snapshot(&connector, &addr, group_id, msg, router.clone()).await
                }
                .await;
                match &sent {
                    Some(()) => tracing::info!("snapshot sent"),
                    None => tracing::warn!("snapshot not delivered; raft will retry"),
                }
                router.report_snapshot(group_id, to, sent.is_some());
            }
            .instrument(span),
        );
    }
}

impl Transport for GrpcTransport {
    fn attach(&self, router: Router) {
        if self.router.set(router.clone()).is_err() {
            return;
        }
        for (id, peer) in &self.peers {
            let Some(queue) = peer.receiver.lock().take() else {
                continue;
            };
            let link = Link {
                me: self.me,
                connector: self.connector.clone(),
                api_address: self.api_address.clone(),
                peer: *id,
                addr: peer.addr.clone(),
                cancel: self.cancel.clone(),
            };
            let span = tracing::info_span!("peer", id, addr = %peer.addr);
            self.runtime.spawn(link.run(queue).instrument(span));
        }
    }
}

impl Outbox for GrpcTransport {
    fn send(&self, group_id: u64, msgs: Vec<Message>) {
        for msg in msgs {
            if msg.get_msg_type() == MessageType::MsgSnapshot {
                self.send_snapshot(group_id, msg);
                continue;
            }
            let to = msg.to;
            let Some(peer) = self.peers.get(&to) else {
                tracing::warn!(group = group_id, to, "raft message for an unknown member");
                continue;
            };
            if peer.queue.try_send((group_id, msg)).is_err() {
                self.dropped.with_label_values(&[&to.to_string()]).inc();
                if let Some(router) = self.router.get() {
                    router.report_unreachable(group_id, to);
                }
            }
        }
    }
}

/// The task that keeps one peer's stream open and feeds it from the queue.
struct Link {
    me: u64,
    connector: TlsConnector,
    api_address: String,
    peer: u64,
    addr: String,
    cancel: CancellationToken,
}

impl Link {
    async fn run(self, mut queue: mpsc::Receiver<(u64, Message)>) {
        let mut backoff = MIN_BACKOFF;
        loop {
            match connect(&self.connector, &self.addr).await {
                Ok(channel) => {
                    tracing::debug!("connected");
                    backoff = MIN_BACKOFF;
                    match self.stream(channel, &mut queue).await {
                        Ok(()) => return,
                        Err(e) => tracing::debug!("stream ended: {e}"),
                    }
                }
                Err(e) => tracing::debug!("connect: {e}"),
            }
            // While the link is down, what queues is stale by the time it is back (raft
            // resends what matters): discard it, so senders never find the queue full.
            let pause = tokio::time::sleep(backoff);
            tokio::pin!(pause);
            loop {
                tokio::select! {
                    _ = self.cancel.cancelled() => return,
                    _ = &mut pause => break,
                    next = queue.recv() => if next.is_none() { return },
                }
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    /// Streams batches until the stream breaks (`Err`) or the node stops (`Ok`).
    async fn stream(
        &self,
        channel: Channel,
        queue: &mut mpsc::Receiver<(u64, Message)>,
    ) -> Result<(), tonic::Status> {
        let (tx, rx) = mpsc::channel::<MessageBatch>(4);
        let mut client = RaftClient::new(channel)
            .max_encoding_message_size(MAX_PEER_MESSAGE_BYTES)
            .max_decoding_message_size(MAX_PEER_MESSAGE_BYTES);
        let call = client.send(ReceiverStream::new(rx));
        tokio::pin!(call);
        // Introduce ourselves at once: a follower may have no raft traffic for a peer
        // that is not its leader, and MemberList should not wait for some.
        let hello = MessageBatch {
            from: self.me,
            messages: Vec::new(),
            api_address: self.api_address.clone(),
        };
        if tx.send(hello).await.is_err() {
            return Err(tonic::Status::aborted("stream closed"));
        }
        let closed = |ended: Result<tonic::Response<_>, tonic::Status>| {
            ended
                .err()
                .unwrap_or_else(|| tonic::Status::aborted("peer closed the stream"))
        };
        loop {
            let first = tokio::select! {
                _ = self.cancel.cancelled() => return Ok(()),
                ended = &mut call => return Err(closed(ended)),
                next = queue.recv() => match next {
                    Some(m) => m,
                    None => return Ok(()),
                },
            };
            let mut batch = MessageBatch {
                from: self.me,
                messages: Vec::new(),
                api_address: String::new(),
            };
            let mut bytes = 0;
            let mut next = Some(first);
            while let Some((group_id, msg)) = next.take() {
                let message = msg.write_to_bytes().unwrap_or_default();
                bytes += message.len();
                batch.messages.push(GroupMessage { group_id, message });
                if batch.messages.len() < MAX_BATCH_MESSAGES && bytes < MAX_BATCH_BYTES {
                    next = queue.try_recv().ok();
                }
            }
            tokio::select! {
                sent = tokio::time::timeout(SEND_STALL, tx.send(batch)) => match sent {
                    Ok(Ok(())) => {}
                    Ok(Err(_)) => return Err(tonic::Status::aborted("stream closed")),
                    // The stream takes nothing (flow control never reopened) although the
                    // connection looks alive: start over on a fresh one.
                    Err(_) => return Err(tonic::Status::deadline_exceeded("stream stalled")),
                },
                ended = &mut call => return Err(closed(ended)),
            }
            tracing::trace!(peer = self.peer, "batch sent");
        }
    }
}

async fn connect(connector: &TlsConnector, addr: &str) -> Result<Channel, tonic::transport::Error> {
    let scheme = if connector.is_tls() { "https" } else { "http" };
    Endpoint::from_shared(format!("{scheme}://{addr}"))?
        .connect_timeout(Duration::from_secs(2))
        // A peer that vanishes without closing its socket is noticed within seconds.
        .http2_keep_alive_interval(Duration::from_secs(1))
        .keep_alive_timeout(Duration::from_secs(3))
        .keep_alive_while_idle(true)
        .connect_with_connector(connector.clone())
        .await
}

/// Streams one snapshot to the peer at `addr`; `Some` once the peer has taken it.
async fn stream_snapshot(
    connector: &TlsConnector,
    addr: &str,
    group_id: u64,
    msg: Message,
    router: Router,
) -> Option<()> {
    let channel = connect(connector, addr).await.ok()?;
    let (tx, rx) = mpsc::channel::<SnapshotChunk>(2);
    // Chunks taken by the stream so far: a transfer that stops taking them is abandoned,
    // or raft would wait for its outcome (and not replicate to that peer) forever.
    let progress = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let counter = progress.clone();
    let reader = tokio::task::spawn_blocking(move || {
        router.read_snapshot(group_id, &msg, |chunk| {
            counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            tx.blocking_send(chunk).is_ok()
        })
    });
    let mut client = RaftClient::new(channel).max_encoding_message_size(MAX_PEER_MESSAGE_BYTES);
    // Boxed so it can be dropped (closing its request stream) before the reader is awaited.
    let mut call = Box::pin(client.snapshot(ReceiverStream::new(rx)));
    let mut seen = 0;
    let sent = loop {
        tokio::select! {
            sent = &mut call => break sent,
            () = tokio::time::sleep(SNAPSHOT_IDLE) => {
                let now = progress.load(std::sync::atomic::Ordering::Relaxed);
                if now == seen {
                    break Err(tonic::Status::deadline_exceeded("snapshot stream stalled"));
                }
                seen = now;
            }
        }
    };
    // Dropping the call (if it stalled) closes the channel, which ends the reader.
    drop(call);
    let read = reader.await;
    match (sent, read) {
        (Ok(_), Ok(Ok(()))) => Some(()),
        (sent, read) => {
            tracing::debug!(?read, "snapshot stream failed: {:?}", sent.err());
            None
        }
    }
}
