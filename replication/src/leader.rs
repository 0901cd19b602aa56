//! The leader cluster's side (WIRE.md §3, §5.8): what Metadata/Get, Log/Replicate,
//! Snapshot/Stream and Snapshot/Query answer, served by every node of the leader cluster
//! from its own replica of each table. Typed: the server's gRPC services wrap these
//! calls and map [`Error`]s to statuses in its one status module.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use flotilla_proto::mvcc::v1::{Command, KeyValue, command::CommandType};
use flotilla_proto::replication::v1::{
    MetadataResponse, ReplicateCommand, ReplicateCommandsResponse, ReplicateErrResponse,
    ReplicateError, ReplicateRequest, ReplicateResponse, SnapshotChunk, SnapshotQueryRequest,
    SnapshotQueryResponse, SnapshotRequest, Table, replicate_response, table,
};
use flotilla_tables::export::{Change, ChangesRead, LogRead};
use flotilla_tables::{Node, Table as LocalTable};
use futures::Stream;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::error::{Error, Result};
use crate::format::RecordWriter;
use crate::stall::StallingSender;

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
    /// How long a snapshot export waits for a reader that takes nothing.
    reader_stall: Duration,
}

impl LeaderService {
    /// Services over `node`'s tables; `max_send_bytes` bounds one replicate message.
    pub fn new(node: Arc<Node>, max_send_bytes: usize, stop: CancellationToken) -> Self {
        Self {
            node,
            max_batch_bytes: max_send_bytes.saturating_sub(BATCH_OVERHEAD).max(1),
            stop,
            reader_stall: crate::stall::READER_STALL,
        }
    }

    /// Cancels snapshot exports whose reader takes nothing for `stall` (default
    /// [`crate::stall::READER_STALL`]).
    pub fn with_reader_stall(mut self, stall: Duration) -> Self {
        self.reader_stall = stall;
        self
    }

    /// The table named `name`, if this node has it and (when the follower names one)
    /// its id is `expected_id`: a re-created table is another table.
    async fn table(&self, name: &[u8], expected_id: Option<u64>) -> Option<LocalTable> {
        let name = std::str::from_utf8(name).ok()?;
        let table = match self.node.table(name) {
            Ok(t) => t,
            Err(_) => {
                let _ = self.node.catalog_barrier().await;
                self.node.table(name).ok()?
            }
        };
        expected_id
            .is_none_or(|id| id == table.id())
            .then_some(table)
    }
}

/// A stream of replies, each an item or the error that ends the stream.
pub type ItemStream<T> = Pin<Box<dyn Stream<Item = Result<T>> + Send>>;

/// A table's snapshot as a stream of ≤1 MiB chunks of the WIRE.md §5.8-7 byte format.
pub type SnapshotStream = ItemStream<SnapshotChunk>;

/// Metadata/Get's answer: the tables, and their ids (for `crate::identity`).
#[derive(Debug, Clone)]
pub struct MetadataAnswer {
    /// The response message.
    pub response: MetadataResponse,
    /// (name, id) of every listed table.
    pub ids: Vec<(String, u64)>,
}

impl LeaderService {
    /// Starts streaming the full snapshot of `table` (what Snapshot/Stream and the
    /// `snapshots-live/<table>` HTTP object send); `None` if there is no such table.
    pub async fn live_snapshot(&self, table: &[u8]) -> Option<SnapshotStream> {
        self.full_snapshot(table, None, Trailer::Dummy).await
    }

    /// Starts streaming a backup of `table` (Maintenance/Backup, WIRE.md §5.9): the full
    /// snapshot without its trailing DUMMY; every chunk carries the applied index the data
    /// reflects. `None` if there is no such table.
    pub async fn backup(&self, table: &[u8]) -> Option<SnapshotStream> {
        self.full_snapshot(table, None, Trailer::None).await
    }

    async fn full_snapshot(
        &self,
        table: &[u8],
        expected_id: Option<u64>,
        trailer: Trailer,
    ) -> Option<SnapshotStream> {
        let table = self.table(table, expected_id).await?;
        let (tx, rx) = mpsc::channel(STREAM_QUEUE);
        let tx = StallingSender::new(tx, self.reader_stall);
        tokio::task::spawn_blocking(move || {
            if let Err(e) = write_full_snapshot(&table, &tx, trailer) {
                tx.send(Err(e));
            }
        });
        Some(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx)))
    }

    /// Metadata/Get: every table of the catalog, including one whose group failed to
    /// open on this node (a follower would otherwise take it for dropped and erase it).
    pub async fn metadata(&self) -> Result<MetadataAnswer> {
        self.node.catalog_barrier().await?;
        let entries = self.node.catalog().await?;
        let tables = entries
            .iter()
            .map(|e| Table {
                name: e.name.clone(),
                r#type: table::Type::Replicated as i32,
            })
            .collect();
        Ok(MetadataAnswer {
            response: MetadataResponse { tables },
            ids: entries.into_iter().map(|e| (e.name, e.id)).collect(),
        })
    }

    /// Log/Replicate: committed commands from `req.leader_index` on (WIRE.md §5.8-2);
    /// `follow` keeps the stream open once caught up. `expected_id` is the table id the
    /// follower replicates, if it names one.
    pub async fn replicate(
        &self,
        req: ReplicateRequest,
        follow: bool,
        expected_id: Option<u64>,
    ) -> Result<ItemStream<ReplicateResponse>> {
        if req.leader_index == 0 {
            return Err(Error::ZeroLeaderIndex);
        }
        let table = self
            .table(&req.table, expected_id)
            .await
            .ok_or(Error::Tables(flotilla_tables::Error::TableNotFound))?;
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
        Ok(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx)))
    }

    /// Snapshot/Stream: the full snapshot, or with `incremental` the changes after
    /// `req.leader_index` (WIRE.md §5.8-7).
    pub async fn snapshot(
        &self,
        req: SnapshotRequest,
        expected_id: Option<u64>,
    ) -> Result<SnapshotStream> {
        let name = String::from_utf8_lossy(&req.table).into_owned();
        if req.incremental {
            let table = self
                .table(&req.table, expected_id)
                .await
                .ok_or(Error::StreamTableNotFound(name))?;
            return incremental_stream(table, req.leader_index, self.reader_stall).await;
        }
        self.full_snapshot(&req.table, expected_id, Trailer::Dummy)
            .await
            .ok_or(Error::StreamTableNotFound(name))
    }

    /// Snapshot/Query: this leader has no shared snapshot store, so followers fall back
    /// to Snapshot/Stream (WIRE.md §5.8-6).
    pub fn query(&self, req: &SnapshotQueryRequest) -> Result<SnapshotQueryResponse> {
        if req.table.is_empty() {
            return Err(Error::TableRequired);
        }
        Err(Error::NoSharedStore)
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

/// One Log/Replicate call in progress.
struct ReplicateStream {
    table: LocalTable,
    /// Next index to send.
    next: u64,
    follow: bool,
    max_batch_bytes: usize,
    tx: mpsc::Sender<Result<ReplicateResponse>>,
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
                        let _ = self.tx.send(Err(e.into())).await;
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
                        let _ = self.tx.send(Err(Error::TableStopped)).await;
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

/// Whether an incremental export can go ahead: known once it emits its first record or
/// ends, so a refusal is the call's status rather than an error inside the stream.
type Verdict = Result<()>;

/// Snapshot/Stream with `incremental`: the changes after `since` (WIRE.md §5.8-7), or
/// the reason they cannot be told (a base before the GC horizon, or ahead of the leader).
async fn incremental_stream(
    table: LocalTable,
    since: u64,
    stall: Duration,
) -> Result<SnapshotStream> {
    let (tx, rx) = mpsc::channel(STREAM_QUEUE);
    let tx = StallingSender::new(tx, stall);
    let (verdict_tx, verdict_rx) = tokio::sync::oneshot::channel::<Verdict>();
    tokio::task::spawn_blocking(move || {
        let mut verdict = Some(verdict_tx);
        let outcome = write_incremental_snapshot(&table, since, &tx, &mut verdict);
        let refusal = match outcome {
            Ok(ChangesRead::Done(_)) => Ok(()),
            Ok(ChangesRead::BeforeHorizon { horizon }) => {
                Err(Error::BelowHorizon { since, horizon })
            }
            Ok(ChangesRead::Ahead { applied }) => Err(Error::AheadOfLeader { since, applied }),
            Err(e) => Err(e),
        };
        match verdict.take() {
            Some(v) => {
                let _ = v.send(refusal);
            }
            None => {
                if let Err(status) = refusal {
                    tx.send(Err(status));
                }
            }
        }
    });
    verdict_rx
        .await
        .map_err(|_| Error::TaskFailed("the incremental snapshot task ended early".into()))??;
    Ok(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx)))
}

/// Streams the changes of `table` after `since`: a DELETE with a range_end per range
/// deleted since, a PUT per live key written since (key order), a DELETE (key only) per
/// key deleted since, then a DUMMY with the applied index, every chunk carrying that
/// index. Says in the returned [`ChangesRead`] why nothing was sent when the export cannot
/// go ahead. Tells `verdict` it may stream before the first chunk goes out.
fn write_incremental_snapshot(
    table: &LocalTable,
    since: u64,
    tx: &StallingSender<Result<SnapshotChunk>>,
    verdict: &mut Option<tokio::sync::oneshot::Sender<Verdict>>,
) -> Result<ChangesRead> {
    let name = table.name().as_bytes().to_vec();
    table.read_at_blocking(|at| {
        let index = at.applied()?.index;
        let mut send = |data: Vec<u8>| {
            if let Some(v) = verdict.take() {
                let _ = v.send(Ok(()));
            }
            send_chunk(tx, data, index)
        };
        let mut writer = RecordWriter::default();
        let mut failed = None;
        let read = flotilla_tables::export::for_each_change(at, since, |change| {
            let cmd = match change {
                Change::DeleteRange { start, end } => Command {
                    table: name.clone(),
                    r#type: CommandType::Delete as i32,
                    kv: Some(KeyValue {
                        key: start,
                        ..Default::default()
                    }),
                    // To the end of the table: the all-keys sentinel (WIRE.md §5.1).
                    range_end: Some(end.unwrap_or_else(|| vec![0])),
                    ..Default::default()
                },
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
        });
        let read = match read {
            Ok(read) => read,
            Err(e) => return Err(failed.take().unwrap_or(Error::Tables(e))),
        };
        if let ChangesRead::Done(state) = &read {
            finish_snapshot(&mut writer, name, state.index, Trailer::Dummy, &mut send)?;
        }
        Ok(read)
    })
}

/// Sends one chunk of a snapshot stream reflecting leader index `index`; false once the
/// receiver is gone.
fn send_chunk(tx: &StallingSender<Result<SnapshotChunk>>, data: Vec<u8>, index: u64) -> bool {
    tx.send(Ok(SnapshotChunk {
        len: data.len() as u64,
        data,
        index,
    }))
}

/// Encodes `cmd` and sends a chunk when one fills. False stops the export: the receiver
/// is gone, or encoding failed (the error is left in `failed`).
fn push_record(
    writer: &mut RecordWriter,
    cmd: &Command,
    send: &mut impl FnMut(Vec<u8>) -> bool,
    failed: &mut Option<Error>,
) -> bool {
    match writer.push(cmd) {
        Ok(Some(chunk)) => send(chunk),
        Ok(None) => true,
        Err(e) => {
            *failed = Some(e);
            false
        }
    }
}

/// How a full export ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Trailer {
    /// A DUMMY carrying the applied index (snapshots: the loader's leader index).
    Dummy,
    /// Nothing (backups, WIRE.md §5.8-7).
    None,
}

/// Appends the trailing DUMMY carrying `index` (if `trailer` asks for it) and sends what
/// is left of the stream.
fn finish_snapshot(
    writer: &mut RecordWriter,
    table: Vec<u8>,
    index: u64,
    trailer: Trailer,
    send: &mut impl FnMut(Vec<u8>) -> bool,
) -> Result<()> {
    let dummy = Command {
        table,
        r#type: CommandType::Dummy as i32,
        leader_index: Some(index),
        ..Default::default()
    };
    if trailer == Trailer::Dummy
        && let Some(chunk) = writer.push(&dummy)?
        && !send(chunk)
    {
        return Ok(());
    }
    for chunk in std::mem::take(writer).finish()? {
        if !send(chunk) {
            return Ok(());
        }
    }
    Ok(())
}

/// Streams table's full snapshot: one PUT per live key (with its revisions) in key
/// order, then a DUMMY carrying the applied index the data reflects, which every chunk
/// carries too.
fn write_full_snapshot(
    table: &LocalTable,
    tx: &StallingSender<Result<SnapshotChunk>>,
    trailer: Trailer,
) -> Result<()> {
    let name = table.name().as_bytes().to_vec();
    table.read_at_blocking(|at| {
        let index = at.applied()?.index;
        let mut send = |data: Vec<u8>| send_chunk(tx, data, index);
        let mut writer = RecordWriter::default();
        let mut failed = None;
        let walked = at.for_each_pair(|kv| {
            let cmd = Command {
                table: name.clone(),
                r#type: CommandType::Put as i32,
                kv: Some(kv),
                ..Default::default()
            };
            push_record(&mut writer, &cmd, &mut send, &mut failed)
        });
        match walked {
            Ok(()) => {}
            // The follower went away: nothing to tell it.
            Err(flotilla_tables::Error::ReceiverGone) if failed.is_none() => return Ok(()),
            Err(e) => return Err(failed.take().unwrap_or(Error::Tables(e))),
        }
        finish_snapshot(&mut writer, name, index, trailer, &mut send)
            .map_err(|e| failed.take().unwrap_or(e))
    })
}
