//! The leader cluster's side (WIRE.md §3, §5.8): Metadata/Get, Log/Replicate,
//! Snapshot/Stream and Snapshot/Query, served by every node of the leader cluster from
//! its own replica of each table.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use flotilla_proto::mvcc::v1::{Command, KeyValue, command::CommandType};
use flotilla_proto::replication::v1::{
    MetadataRequest, MetadataResponse, ReplicateCommand, ReplicateCommandsResponse,
    ReplicateErrResponse, ReplicateError, ReplicateRequest, ReplicateResponse, SnapshotChunk,
    SnapshotQueryRequest, SnapshotQueryResponse, SnapshotRequest, Table, log_server::Log,
    metadata_server::Metadata, replicate_response, snapshot_server::Snapshot, table,
};
use flotilla_tables::export::{Change, ChangesRead, LogRead};
use flotilla_tables::{Node, Table as LocalTable};
use futures::Stream;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

use crate::format::RecordWriter;

/// Request metadata a Flotilla follower sends on Log/Replicate to keep the stream open
/// once caught up (long poll); without it the stream ends there, as Armada's does.
pub const FOLLOW_HEADER: &str = "flotilla-follow";

/// While a followed stream has nothing new, a message carrying only the leader's applied
/// index goes out this often: the follower measures lag and notices a dead stream by it.
const IDLE_PROGRESS: Duration = Duration::from_secs(1);

/// Room left in a batch for the response framing around the commands.
const BATCH_OVERHEAD: usize = 4 << 10;

/// Messages of one stream queued ahead of the network.
const STREAM_QUEUE: usize = 4;

/// The replication services of one leader-cluster node.
#[derive(Debug, Clone)]
pub struct LeaderService {
    node: Arc<Node>,
    /// Byte budget of one Log/Replicate batch (`replication.max-send-message-size-bytes`).
    max_batch_bytes: usize,
    /// Ends open streams on shutdown.
    stop: CancellationToken,
}

impl LeaderService {
    /// Services over `node`'s tables; `max_send_bytes` bounds one replicate message.
    pub fn new(node: Arc<Node>, max_send_bytes: usize, stop: CancellationToken) -> Self {
        Self {
            node,
            max_batch_bytes: max_send_bytes.saturating_sub(BATCH_OVERHEAD).max(1),
            stop,
        }
    }

    async fn table(&self, name: &[u8]) -> Option<LocalTable> {
        let name = std::str::from_utf8(name).ok()?;
        if let Ok(t) = self.node.table(name) {
            return Some(t);
        }
        let _ = self.node.catalog_barrier().await;
        self.node.table(name).ok()
    }
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// A table's snapshot as a stream of ≤1 MiB chunks of the WIRE.md §5.8-7 byte format.
pub type SnapshotStream = BoxStream<SnapshotChunk>;

impl LeaderService {
    /// Starts streaming the full snapshot of `table` (what Snapshot/Stream and the
    /// `snapshots-live/<table>` HTTP object send); `None` if there is no such table.
    pub async fn live_snapshot(&self, table: &[u8]) -> Option<SnapshotStream> {
        let table = self.table(table).await?;
        let (tx, rx) = mpsc::channel(STREAM_QUEUE);
        tokio::task::spawn_blocking(move || {
            if let Err(e) = write_full_snapshot(&table, &tx) {
                let _ = tx.blocking_send(Err(Status::unavailable(e)));
            }
        });
        Some(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx)))
    }
}

fn applied(table: &LocalTable) -> u64 {
    table
        .status()
        .applied
        .load(std::sync::atomic::Ordering::Relaxed)
}

fn error_response(error: ReplicateError, leader_index: u64) -> ReplicateResponse {
    ReplicateResponse {
        response: Some(replicate_response::Response::ErrorResponse(
            ReplicateErrResponse {
                error: error as i32,
            },
        )),
        leader_index,
    }
}

#[tonic::async_trait]
impl Metadata for LeaderService {
    async fn get(
        &self,
        _request: Request<MetadataRequest>,
    ) -> Result<Response<MetadataResponse>, Status> {
        if let Err(e) = self.node.catalog_barrier().await {
            return Err(Status::unavailable(format!("unknown err {e}")));
        }
        let tables = self
            .node
            .tables()
            .into_iter()
            .map(|t| Table {
                name: t.name().to_owned(),
                r#type: table::Type::Replicated as i32,
            })
            .collect();
        Ok(Response::new(MetadataResponse { tables }))
    }
}

#[tonic::async_trait]
impl Log for LeaderService {
    type ReplicateStream = BoxStream<ReplicateResponse>;

    async fn replicate(
        &self,
        request: Request<ReplicateRequest>,
    ) -> Result<Response<Self::ReplicateStream>, Status> {
        let follow = request.metadata().contains_key(FOLLOW_HEADER);
        let req = request.into_inner();
        if req.leader_index == 0 {
            return Err(Status::invalid_argument(
                "invalid leaderIndex: leaderIndex must be greater than 0",
            ));
        }
        let table = self
            .table(&req.table)
            .await
            .ok_or_else(|| Status::not_found("table not found"))?;
        let (tx, rx) = mpsc::channel(STREAM_QUEUE);
        let stream = ReplicateStream {
            table,
            next: req.leader_index,
            follow,
            max_batch_bytes: self.max_batch_bytes,
            tx,
        };
        let stop = self.stop.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = stop.cancelled() => {}
                _ = stream.run() => {}
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }
}

/// One Log/Replicate call in progress.
struct ReplicateStream {
    table: LocalTable,
    /// Next index to send.
    next: u64,
    follow: bool,
    max_batch_bytes: usize,
    tx: mpsc::Sender<Result<ReplicateResponse, Status>>,
}

impl ReplicateStream {
    async fn run(mut self) {
        let mut applied_rx = self.table.applied_watch();
        let start = applied(&self.table);
        if start.saturating_add(1) < self.next {
            let _ = self
                .tx
                .send(Ok(error_response(ReplicateError::LeaderBehind, start)))
                .await;
            return;
        }
        // Without the follow header, send what was applied when the call came, then a
        // final message with the applied index, as Armada does.
        let mut until = start;
        // Whether the follower has heard the applied index yet (see below).
        let mut told = false;
        loop {
            while self.next <= until {
                match self
                    .table
                    .read_log(self.next, until, self.max_batch_bytes)
                    .await
                {
                    Ok(LogRead::Compacted) => {
                        let msg = error_response(ReplicateError::UseSnapshot, applied(&self.table));
                        let _ = self.tx.send(Ok(msg)).await;
                        return;
                    }
                    Ok(LogRead::Commands(cmds)) if cmds.is_empty() => {
                        // Applied here before its log write landed: give it a moment.
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    }
                    Ok(LogRead::Commands(cmds)) => {
                        self.next += cmds.len() as u64;
                        let commands = cmds
                            .into_iter()
                            .map(|command| ReplicateCommand {
                                leader_index: command.leader_index.unwrap_or_default(),
                                command: Some(command),
                            })
                            .collect();
                        let msg = ReplicateResponse {
                            response: Some(replicate_response::Response::CommandsResponse(
                                ReplicateCommandsResponse { commands },
                            )),
                            leader_index: start.max(applied(&self.table)),
                        };
                        if self.tx.send(Ok(msg)).await.is_err() {
                            return; // the follower went away
                        }
                        told = true;
                    }
                    Err(e) => {
                        let _ = self.tx.send(Err(Status::unavailable(e.to_string()))).await;
                        return;
                    }
                }
            }
            if !self.follow {
                let msg = ReplicateResponse {
                    response: None,
                    leader_index: applied(&self.table),
                };
                let _ = self.tx.send(Ok(msg)).await;
                return;
            }
            // A follower that starts caught up (e.g. right after a snapshot recovery)
            // learns it at once rather than at the first idle progress message.
            if !told {
                let msg = ReplicateResponse {
                    response: None,
                    leader_index: applied(&self.table),
                };
                if self.tx.send(Ok(msg)).await.is_err() {
                    return;
                }
                told = true;
            }
            // Caught up: wait for the next apply, saying where we are now and then.
            loop {
                match tokio::time::timeout(IDLE_PROGRESS, applied_rx.changed()).await {
                    Ok(Ok(())) => break,
                    Ok(Err(_)) => {
                        let _ = self
                            .tx
                            .send(Err(Status::unavailable("table stopped")))
                            .await;
                        return;
                    }
                    Err(_) => {
                        let msg = ReplicateResponse {
                            response: None,
                            leader_index: applied(&self.table),
                        };
                        if self.tx.send(Ok(msg)).await.is_err() {
                            return;
                        }
                    }
                }
            }
            until = *applied_rx.borrow_and_update();
        }
    }
}

#[tonic::async_trait]
impl Snapshot for LeaderService {
    type StreamStream = SnapshotStream;

    async fn stream(
        &self,
        request: Request<SnapshotRequest>,
    ) -> Result<Response<Self::StreamStream>, Status> {
        let req = request.into_inner();
        let name = String::from_utf8_lossy(&req.table).into_owned();
        let not_found = || {
            Status::unavailable(format!(
                "unable to stream from table '{name}': table not found"
            ))
        };
        if req.incremental {
            let table = self.table(&req.table).await.ok_or_else(not_found)?;
            return incremental_stream(table, req.leader_index).await;
        }
        let stream = self.live_snapshot(&req.table).await.ok_or_else(not_found)?;
        Ok(Response::new(stream))
    }

    async fn query(
        &self,
        request: Request<SnapshotQueryRequest>,
    ) -> Result<Response<SnapshotQueryResponse>, Status> {
        if request.get_ref().table.is_empty() {
            return Err(Status::invalid_argument("table is required"));
        }
        // No shared snapshot store: followers fall back to Snapshot/Stream.
        Err(Status::failed_precondition(
            "shared snapshot store is not configured",
        ))
    }
}

/// Whether an incremental export can go ahead: known once it emits its first record or
/// ends, so a refusal is the call's status rather than an error inside the stream.
type Verdict = Result<(), Status>;

/// Snapshot/Stream with `incremental`: the changes after `since` (WIRE.md §5.8-7), or
/// FAILED_PRECONDITION when deletes that old are forgotten.
async fn incremental_stream(
    table: LocalTable,
    since: u64,
) -> Result<Response<SnapshotStream>, Status> {
    let (tx, rx) = mpsc::channel(STREAM_QUEUE);
    let (verdict_tx, verdict_rx) = tokio::sync::oneshot::channel::<Verdict>();
    tokio::task::spawn_blocking(move || {
        let mut verdict = Some(verdict_tx);
        let outcome = write_incremental_snapshot(&table, since, &tx, &mut verdict);
        let refusal = match outcome {
            Ok(None) => Ok(()),
            Ok(Some(horizon)) => Err(Status::failed_precondition(format!(
                "requested leader_index {since} is at or below GC horizon {horizon}; use a full snapshot"
            ))),
            Err(e) => Err(Status::unavailable(e)),
        };
        match verdict.take() {
            Some(v) => {
                let _ = v.send(refusal);
            }
            None => {
                if let Err(status) = refusal {
                    let _ = tx.blocking_send(Err(status));
                }
            }
        }
    });
    verdict_rx
        .await
        .map_err(|_| Status::internal("incremental snapshot task failed"))??;
    Ok(Response::new(Box::pin(
        tokio_stream::wrappers::ReceiverStream::new(rx),
    )))
}

/// Streams the changes of `table` after `since`: a PUT per live key written since (key
/// order), a DELETE (key only) per key deleted since, then a DUMMY with the applied index.
/// Returns the horizon when `since` is older than the deletes the table remembers. Tells
/// `verdict` it may stream before the first chunk goes out.
fn write_incremental_snapshot(
    table: &LocalTable,
    since: u64,
    tx: &mpsc::Sender<Result<SnapshotChunk, Status>>,
    verdict: &mut Option<tokio::sync::oneshot::Sender<Verdict>>,
) -> Result<Option<u64>, String> {
    let name = table.name().as_bytes().to_vec();
    let mut send = |data: Vec<u8>| {
        if let Some(v) = verdict.take() {
            let _ = v.send(Ok(()));
        }
        send_chunk(tx, data)
    };
    let mut writer = RecordWriter::default();
    let mut failed = None;
    let read = table
        .changes_blocking(since, |change| {
            let cmd = match change {
                Change::Put(kv) => Command {
                    table: name.clone(),
                    r#type: CommandType::Put as i32,
                    kv: Some(kv),
                    ..Default::default()
                },
                Change::Delete(key) => Command {
                    table: name.clone(),
                    r#type: CommandType::Delete as i32,
                    kv: Some(KeyValue {
                        key,
                        ..Default::default()
                    }),
                    ..Default::default()
                },
            };
            push_record(&mut writer, &cmd, &mut send, &mut failed)
        })
        .map_err(|e| failed.take().unwrap_or_else(|| e.to_string()))?;
    let state = match read {
        ChangesRead::Done(state) => state,
        ChangesRead::BeforeHorizon { horizon } => return Ok(Some(horizon)),
    };
    finish_snapshot(&mut writer, name, state.index, &mut send)?;
    Ok(None)
}

/// Sends one chunk of a snapshot stream; false once the receiver is gone.
fn send_chunk(tx: &mpsc::Sender<Result<SnapshotChunk, Status>>, data: Vec<u8>) -> bool {
    tx.blocking_send(Ok(SnapshotChunk {
        len: data.len() as u64,
        data,
        index: 0,
    }))
    .is_ok()
}

/// Encodes `cmd` and sends a chunk when one fills. False stops the export: the receiver
/// is gone, or encoding failed (the reason is left in `failed`).
fn push_record(
    writer: &mut RecordWriter,
    cmd: &Command,
    send: &mut impl FnMut(Vec<u8>) -> bool,
    failed: &mut Option<String>,
) -> bool {
    match writer.push(cmd) {
        Ok(Some(chunk)) => send(chunk),
        Ok(None) => true,
        Err(e) => {
            *failed = Some(e.to_string());
            false
        }
    }
}

/// Appends the trailing DUMMY carrying `index` and sends what is left of the stream.
fn finish_snapshot(
    writer: &mut RecordWriter,
    table: Vec<u8>,
    index: u64,
    send: &mut impl FnMut(Vec<u8>) -> bool,
) -> Result<(), String> {
    let dummy = Command {
        table,
        r#type: CommandType::Dummy as i32,
        leader_index: Some(index),
        ..Default::default()
    };
    if let Some(chunk) = writer.push(&dummy).map_err(|e| e.to_string())?
        && !send(chunk)
    {
        return Ok(());
    }
    for chunk in std::mem::take(writer).finish().map_err(|e| e.to_string())? {
        if !send(chunk) {
            return Ok(());
        }
    }
    Ok(())
}

/// Streams table's full snapshot: one PUT per live key (with its revisions) in key
/// order, then a DUMMY carrying the applied index the data reflects.
fn write_full_snapshot(
    table: &LocalTable,
    tx: &mpsc::Sender<Result<SnapshotChunk, Status>>,
) -> Result<(), String> {
    let name = table.name().as_bytes().to_vec();
    let mut send = |data: Vec<u8>| send_chunk(tx, data);
    let mut writer = RecordWriter::default();
    let mut failed = None;
    let state = table
        .export_blocking(|kv| {
            let cmd = Command {
                table: name.clone(),
                r#type: CommandType::Put as i32,
                kv: Some(kv),
                ..Default::default()
            };
            push_record(&mut writer, &cmd, &mut send, &mut failed)
        })
        .map_err(|e| failed.take().unwrap_or_else(|| e.to_string()))?;
    finish_snapshot(&mut writer, name, state.index, &mut send)
}
