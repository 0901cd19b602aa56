//! Fetching a leader-cluster snapshot into a staged SST ([`SnapshotSource`] for the
//! follower's tables): Snapshot/Stream chunks are decoded as they arrive on a blocking
//! thread that writes the SST, so a 1 GiB table never sits in memory.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use flotilla_proto::mvcc::v1::command::CommandType;
use flotilla_proto::replication::v1::SnapshotRequest;
use flotilla_proto::replication::v1::snapshot_client::SnapshotClient;
use flotilla_tables::import::{Fetch, ImportWriter, LoadedSnapshot, SnapshotSource};
use flotilla_tables::values::StoredValue;
use parking_lot::Mutex;
use tokio::sync::mpsc;
use tonic::transport::Channel;

use super::metrics::ReplicationMetrics;
use crate::error::{Error, Result};
use crate::format::RecordReader;

/// Largest message accepted from the leader cluster.
pub const MAX_LEADER_MESSAGE_BYTES: usize = 64 << 20;

/// Downloads snapshots from the leader cluster; keeps the one a worker fetched ahead of
/// its load marker so that replica does not download it twice.
#[derive(Clone)]
pub struct LeaderSnapshots {
    inner: Arc<Inner>,
}

struct Inner {
    channel: Channel,
    staging: PathBuf,
    runtime: tokio::runtime::Handle,
    metrics: ReplicationMetrics,
    /// Prefetched snapshots by local table id.
    ready: Mutex<HashMap<u64, LoadedSnapshot>>,
}

impl std::fmt::Debug for LeaderSnapshots {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeaderSnapshots")
            .field("staging", &self.inner.staging)
            .finish()
    }
}

impl LeaderSnapshots {
    /// Snapshots from the leader behind `channel`, staged in `staging` (emptied now:
    /// files left there by a previous run belong to nothing). Downloads run on `runtime`.
    pub fn new(
        channel: Channel,
        staging: PathBuf,
        runtime: tokio::runtime::Handle,
        metrics: ReplicationMetrics,
    ) -> Result<Self> {
        if staging.exists() {
            std::fs::remove_dir_all(&staging)?;
        }
        std::fs::create_dir_all(&staging)?;
        Ok(Self {
            inner: Arc::new(Inner {
                channel,
                staging,
                runtime,
                metrics,
                ready: Mutex::new(HashMap::new()),
            }),
        })
    }

    /// Downloads table `name`'s snapshot now and keeps it for this node's replica of
    /// local table `table_id`; returns the leader index it reflects.
    pub async fn prefetch(&self, name: &str, table_id: u64) -> Result<u64> {
        let loaded = self.download(name, table_id).await?;
        let index = loaded.leader_index;
        self.inner.ready.lock().insert(table_id, loaded);
        Ok(index)
    }

    async fn download(&self, name: &str, table_id: u64) -> Result<LoadedSnapshot> {
        let inner = self.inner.clone();
        let name = name.to_owned();
        let task = self
            .inner
            .runtime
            .spawn(async move { download(&inner, &name, table_id).await });
        task.await
            .map_err(|e| Error::Format(format!("download task: {e}")))?
    }
}

impl SnapshotSource for LeaderSnapshots {
    fn fetch(&self, name: &str, table_id: u64, min_leader_index: u64) -> Fetch {
        let this = self.clone();
        let name = name.to_owned();
        Box::pin(async move {
            let ready = this.inner.ready.lock().remove(&table_id);
            if let Some(loaded) = ready.filter(|l| l.leader_index >= min_leader_index) {
                return Ok(loaded);
            }
            let loaded = this.download(&name, table_id).await?;
            if loaded.leader_index < min_leader_index {
                // A leader-cluster node that lags the one the worker read from.
                return Err(Error::LeaderBehind(format!(
                    "snapshot of {name} reflects {} < {min_leader_index}",
                    loaded.leader_index
                ))
                .into());
            }
            Ok(loaded)
        })
    }
}

async fn download(inner: &Inner, name: &str, table_id: u64) -> Result<LoadedSnapshot> {
    let started = Instant::now();
    let mut client = SnapshotClient::new(inner.channel.clone())
        .max_decoding_message_size(MAX_LEADER_MESSAGE_BYTES);
    // Deprecated in Armada's proto in favour of Query + HTTP objects from a shared
    // store, which this leader does not have; Stream is what both sides implement.
    #[allow(deprecated)]
    let mut stream = client
        .stream(SnapshotRequest {
            table: name.as_bytes().to_vec(),
            incremental: false,
            leader_index: 0,
        })
        .await?
        .into_inner();
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let path = inner.staging.join(format!("{table_id}-{nanos}.sst"));
    let (tx, rx) = mpsc::channel::<Vec<u8>>(8);
    let builder = tokio::task::spawn_blocking(move || build_sst(rx, path, table_id));
    let mut received = 0u64;
    let streamed: Result<()> = async {
        while let Some(chunk) = stream.message().await? {
            received += chunk.data.len() as u64;
            if tx.send(chunk.data).await.is_err() {
                break; // the builder failed; its error says why
            }
        }
        Ok(())
    }
    .await;
    drop(tx);
    let built = builder
        .await
        .map_err(|e| Error::Format(format!("snapshot builder: {e}")))?;
    streamed?;
    let loaded = built?;
    let secs = started.elapsed().as_secs_f64().max(1e-6);
    inner
        .metrics
        .snapshot_done(name, received, loaded.bytes, secs);
    tracing::info!(
        table = name,
        keys = loaded.keys,
        bytes = loaded.bytes,
        compressed = received,
        leader_index = loaded.leader_index,
        mb_per_s = loaded.bytes as f64 / secs / 1e6,
        "downloaded a snapshot from the leader cluster"
    );
    Ok(loaded)
}

/// Reads the compressed stream from `rx` and writes the SST; the trailing DUMMY gives
/// the leader index, and its absence means the stream was cut short.
fn build_sst(rx: mpsc::Receiver<Vec<u8>>, path: PathBuf, table_id: u64) -> Result<LoadedSnapshot> {
    let mut reader = RecordReader::new(ChannelReader {
        rx,
        buf: Vec::new(),
        pos: 0,
    });
    let mut writer = ImportWriter::create(&path, table_id)?;
    let mut leader_index = None;
    while let Some(cmd) = reader.next_command()? {
        if leader_index.is_some() {
            return Err(Error::Format("records after the trailing DUMMY".into()));
        }
        match cmd.r#type() {
            CommandType::Put => {
                let kv = cmd.kv.unwrap_or_default();
                let value = StoredValue {
                    create_revision: kv.create_revision.max(0) as u64,
                    mod_revision: kv.mod_revision.max(0) as u64,
                    value: kv.value,
                };
                writer.put(&kv.key, &value)?;
            }
            CommandType::Dummy => leader_index = Some(cmd.leader_index.unwrap_or(0)),
            other => {
                return Err(Error::Format(format!(
                    "unexpected {other:?} record in a full snapshot"
                )));
            }
        }
    }
    let Some(leader_index) = leader_index else {
        let _ = std::fs::remove_file(&path);
        return Err(Error::Format("snapshot stream ended early".into()));
    };
    Ok(writer.finish(leader_index)?)
}

/// `Read` over chunks arriving on a channel (used on a blocking thread).
struct ChannelReader {
    rx: mpsc::Receiver<Vec<u8>>,
    buf: Vec<u8>,
    pos: usize,
}

impl std::io::Read for ChannelReader {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        while self.pos == self.buf.len() {
            match self.rx.blocking_recv() {
                Some(chunk) => {
                    self.buf = chunk;
                    self.pos = 0;
                }
                None => return Ok(0),
            }
        }
        let n = out.len().min(self.buf.len() - self.pos);
        out[..n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}
