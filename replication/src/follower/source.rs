//! Fetching leader-cluster snapshots into staged SSTs ([`SnapshotSource`] for the
//! follower's tables): Snapshot/Stream chunks are decoded as they arrive on a blocking
//! thread that writes the SST, so a 1 GiB table never sits in memory.
//!
//! A download a worker makes ahead of its load marker is kept durably as
//! `<table id>-<leader index>.sst` in the staging directory: the marker names this node
//! as its holder, and only the holder may load it (see `flotilla_tables::import`), even
//! after a restart.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use flotilla_proto::mvcc::v1::command::CommandType;
use flotilla_proto::replication::v1::SnapshotRequest;
use flotilla_proto::replication::v1::snapshot_client::SnapshotClient;
use flotilla_tables::import::{Fetch, LoadedSnapshot, SnapshotSource, Wanted};
use flotilla_tables::replace::{StagedTable, TableSstWriter};
use flotilla_tables::values::StoredValue;
use tokio::sync::mpsc;
use tonic::transport::Channel;

use super::metrics::ReplicationMetrics;
use crate::error::{Error, Result};
use crate::format::RecordReader;

/// Largest message accepted from the leader cluster.
pub const MAX_LEADER_MESSAGE_BYTES: usize = 64 << 20;

/// Downloads snapshots from the leader cluster and keeps the ones this node's load
/// markers name.
#[derive(Clone)]
pub struct LeaderSnapshots {
    inner: Arc<Inner>,
}

struct Inner {
    channel: Channel,
    staging: PathBuf,
    runtime: tokio::runtime::Handle,
    metrics: ReplicationMetrics,
}

impl std::fmt::Debug for LeaderSnapshots {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeaderSnapshots")
            .field("staging", &self.inner.staging)
            .finish()
    }
}

/// Distinguishes downloads in progress within one process.
static DOWNLOADS: AtomicU64 = AtomicU64::new(0);

impl LeaderSnapshots {
    /// Snapshots from the leader behind `channel`, staged in `staging`. Partial downloads
    /// a previous run left there are removed; kept ones stay for their load markers.
    /// Downloads run on `runtime`.
    pub fn new(
        channel: Channel,
        staging: PathBuf,
        runtime: tokio::runtime::Handle,
        metrics: ReplicationMetrics,
    ) -> Result<Self> {
        std::fs::create_dir_all(&staging).map_err(Error::io("creating", &staging))?;
        let entries = std::fs::read_dir(&staging).map_err(Error::io("listing", &staging))?;
        for entry in entries.flatten() {
            let path = entry.path();
            if kept_name(&path).is_none() {
                std::fs::remove_file(&path).map_err(Error::io("removing", &path))?;
            }
        }
        Ok(Self {
            inner: Arc::new(Inner {
                channel,
                staging,
                runtime,
                metrics,
            }),
        })
    }

    /// Downloads table `name`'s snapshot now and keeps it (durably) for this node's
    /// replica of local table `table_id`, replacing older kept ones; returns the leader
    /// index it reflects.
    /// `source_id`, if known, is the leader table it must come from.
    pub async fn prefetch(&self, name: &str, table_id: u64, source_id: Option<u64>) -> Result<u64> {
        let loaded = self.download(name, table_id, source_id).await?;
        let index = loaded.leader_index;
        let kept = self.kept_path(table_id, index);
        // Kept for the load marker: the group adopts the file by its name.
        let _ = loaded.staged.rename(&kept)?.into_path();
        self.forget_older(table_id, index)?;
        Ok(index)
    }

    fn kept_path(&self, table_id: u64, leader_index: u64) -> PathBuf {
        self.inner
            .staging
            .join(format!("{table_id}-{leader_index}.sst"))
    }

    /// Removes kept downloads of `table_id` other than the one at `keep`.
    fn forget_older(&self, table_id: u64, keep: u64) -> Result<()> {
        let staging = &self.inner.staging;
        let entries = std::fs::read_dir(staging).map_err(Error::io("listing", staging))?;
        for entry in entries.flatten() {
            let path = entry.path();
            if let Some((id, index)) = kept_name(&path)
                && id == table_id
                && index != keep
            {
                std::fs::remove_file(&path).map_err(Error::io("removing", &path))?;
            }
        }
        Ok(())
    }

    async fn download(
        &self,
        name: &str,
        table_id: u64,
        source_id: Option<u64>,
    ) -> Result<LoadedSnapshot> {
        let inner = self.inner.clone();
        let name = name.to_owned();
        let task = self
            .inner
            .runtime
            .spawn(async move { download(&inner, &name, table_id, source_id).await });
        task.await.map_err(|e| Error::TaskFailed(e.to_string()))?
    }
}

/// The (table id, leader index) of a kept download's file name.
fn kept_name(path: &Path) -> Option<(u64, u64)> {
    let name = path.file_name()?.to_str()?.strip_suffix(".sst")?;
    let (id, index) = name.split_once('-')?;
    Some((id.parse().ok()?, index.parse().ok()?))
}

impl SnapshotSource for LeaderSnapshots {
    fn fetch(&self, name: &str, table_id: u64, wanted: Wanted) -> Fetch {
        let this = self.clone();
        let name = name.to_owned();
        Box::pin(async move {
            match wanted {
                Wanted::Exactly(leader_index) => {
                    let path = this.kept_path(table_id, leader_index);
                    if !path.exists() {
                        return Err(flotilla_tables::Error::LoadUnavailable { leader_index });
                    }
                    let staged = StagedTable::adopt(path, 0, 0);
                    Ok(LoadedSnapshot {
                        staged,
                        leader_index,
                    })
                }
                Wanted::AtLeast(wanted) => {
                    let loaded = this.download(&name, table_id, None).await?;
                    if loaded.leader_index < wanted {
                        // A leader-cluster node that lags the one the worker read from.
                        return Err(Error::LeaderBehind {
                            table: name,
                            leader: loaded.leader_index,
                            wanted,
                        }
                        .into());
                    }
                    Ok(loaded)
                }
            }
        })
    }
}

async fn download(
    inner: &Inner,
    name: &str,
    table_id: u64,
    source_id: Option<u64>,
) -> Result<LoadedSnapshot> {
    let started = Instant::now();
    let mut client = SnapshotClient::new(inner.channel.clone())
        .max_decoding_message_size(MAX_LEADER_MESSAGE_BYTES);
    // Deprecated in Armada's proto in favour of Query + HTTP objects from a shared
    // store, which this leader does not have; Stream is what both sides implement.
    let mut request = tonic::Request::new(SnapshotRequest {
        table: name.as_bytes().to_vec(),
        incremental: false,
        leader_index: 0,
    });
    if let Some(id) = source_id {
        crate::identity::write_table_id(request.metadata_mut(), id);
    }
    #[allow(deprecated)]
    let mut stream = client.stream(request).await?.into_inner();
    let path = inner.staging.join(format!(
        "{table_id}-download-{}.partial",
        DOWNLOADS.fetch_add(1, Ordering::Relaxed)
    ));
    let (tx, rx) = mpsc::channel::<Vec<u8>>(8);
    let partial = path.clone();
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
        .map_err(|e| Error::TaskFailed(e.to_string()))?;
    let loaded = match (streamed, built) {
        (Ok(()), Ok(loaded)) => loaded,
        (Err(e), _) | (Ok(()), Err(e)) => {
            let _ = std::fs::remove_file(&partial);
            return Err(e);
        }
    };
    let secs = started.elapsed().as_secs_f64().max(1e-6);
    inner
        .metrics
        .snapshot_done(name, received, loaded.staged.bytes, secs);
    tracing::info!(
        table = name,
        keys = loaded.staged.keys,
        bytes = loaded.staged.bytes,
        compressed = received,
        leader_index = loaded.leader_index,
        mb_per_s = loaded.staged.bytes as f64 / secs / 1e6,
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
    let mut writer = TableSstWriter::create(&path, table_id)?;
    let mut leader_index = None;
    while let Some(cmd) = reader.next_command()? {
        if leader_index.is_some() {
            return Err(Error::Format("records after the trailing DUMMY".into()));
        }
        match cmd.r#type() {
            CommandType::Put => {
                let kv = cmd
                    .kv
                    .ok_or_else(|| Error::Format("a PUT record without a key-value".into()))?;
                let revision = |r: i64| {
                    u64::try_from(r)
                        .map_err(|_| Error::Format(format!("a PUT record with revision {r}")))
                };
                let value = StoredValue {
                    create_revision: revision(kv.create_revision)?,
                    mod_revision: revision(kv.mod_revision)?,
                    value: kv.value,
                };
                writer.put(&kv.key, &value)?;
            }
            CommandType::Dummy => {
                leader_index = Some(cmd.leader_index.ok_or_else(|| {
                    Error::Format("the trailing DUMMY carries no leader index".into())
                })?);
            }
            other => {
                return Err(Error::Format(format!(
                    "unexpected {other:?} record in a full snapshot"
                )));
            }
        }
    }
    let Some(leader_index) = leader_index else {
        drop(writer);
        let _ = std::fs::remove_file(&path);
        return Err(Error::Format("snapshot stream ended early".into()));
    };
    Ok(LoadedSnapshot {
        staged: writer.finish()?,
        leader_index,
    })
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
