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
use crate::format::{ChannelReader, RecordReader};

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
                // Restores happen on leader clusters only.
                Wanted::Upload { .. } => {
                    Err(flotilla_tables::Error::LoadUnavailable { leader_index: 0 })
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
    let mut reader = RecordReader::new(ChannelReader::new(rx));
    let mut writer = TableSstWriter::create(&path, table_id)?;
    let mut leader_index = None;
    while let Some(cmd) = reader.next_command()? {
        if leader_index.is_some() {
            return Err(Error::Format("records after the trailing DUMMY".into()));
        }
        // `r#type()` would read an unknown type as PUT (the default).
        let kind = CommandType::try_from(cmd.r#type)
            .map_err(|_| Error::Format(format!("a record of unknown type {}", cmd.r#type)))?;
        match kind {
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

/// Property tests of [`build_sst`] over framed record sequences: valid snapshots, and
/// valid ones damaged (bad PUTs, keys out of order, a missing or bad trailing DUMMY,
/// records after it, other command types, arbitrary commands, a cut stream), split into
/// arbitrary chunks. Bad input is an error, never a snapshot. See docs/FUZZING.md.
#[cfg(test)]
mod fuzz {
    use std::collections::BTreeMap;

    use flotilla_proto::mvcc::v1::{Command, KeyValue};
    use proptest::collection::vec;
    use proptest::prelude::*;
    use proptest::sample::Index;

    use super::*;
    use crate::format::RecordWriter;
    use crate::format::fuzz::{command, config, key_value};

    /// A valid snapshot: PUTs of distinct keys in ascending order, then the DUMMY.
    fn valid() -> impl Strategy<Value = Vec<Command>> {
        let pairs = proptest::collection::btree_map(
            vec(any::<u8>(), 0..6),
            (0i64..50, 0i64..50, vec(any::<u8>(), 0..8)),
            0..8,
        );
        (pairs, any::<u64>()).prop_map(|(pairs, leader_index): (BTreeMap<_, _>, _)| {
            let mut cmds: Vec<Command> = pairs
                .into_iter()
                .map(|(key, (create_revision, mod_revision, value))| Command {
                    table: b"t".to_vec(),
                    r#type: CommandType::Put as i32,
                    kv: Some(KeyValue {
                        key,
                        create_revision,
                        mod_revision,
                        value,
                    }),
                    ..Default::default()
                })
                .collect();
            cmds.push(Command {
                table: b"t".to_vec(),
                r#type: CommandType::Dummy as i32,
                leader_index: Some(leader_index),
                ..Default::default()
            });
            cmds
        })
    }

    /// One way to damage a record sequence.
    #[derive(Debug, Clone)]
    enum Damage {
        NegativeRevision(Index, i64),
        NoKv(Index),
        Duplicate(Index),
        Swap(Index, Index),
        NoLeaderIndex,
        Append(Command),
        Insert(Index, Command),
        Retype(Index, i32),
        Remove(Index),
        SetKv(Index, KeyValue),
    }

    fn damage() -> impl Strategy<Value = Damage> {
        let idx = any::<Index>;
        prop_oneof![
            (idx(), i64::MIN..0).prop_map(|(i, r)| Damage::NegativeRevision(i, r)),
            idx().prop_map(Damage::NoKv),
            idx().prop_map(Damage::Duplicate),
            (idx(), idx()).prop_map(|(i, j)| Damage::Swap(i, j)),
            Just(Damage::NoLeaderIndex),
            command().prop_map(Damage::Append),
            (idx(), command()).prop_map(|(i, c)| Damage::Insert(i, c)),
            (idx(), prop_oneof![1i32..8, 8i32..1000, any::<i32>()])
                .prop_map(|(i, t)| Damage::Retype(i, t)),
            idx().prop_map(Damage::Remove),
            (idx(), key_value()).prop_map(|(i, kv)| Damage::SetKv(i, kv)),
        ]
    }

    fn apply(cmds: &mut Vec<Command>, damage: Damage) {
        let n = cmds.len();
        if n == 0 {
            // Everything was removed: only adding a record is left to do.
            if let Damage::Append(c) | Damage::Insert(_, c) = damage {
                cmds.push(c);
            }
            return;
        }
        match damage {
            Damage::NegativeRevision(i, r) => {
                if let Some(kv) = cmds[i.index(n)].kv.as_mut() {
                    if r % 2 == 0 {
                        kv.create_revision = r;
                    } else {
                        kv.mod_revision = r;
                    }
                }
            }
            Damage::NoKv(i) => cmds[i.index(n)].kv = None,
            Damage::Duplicate(i) => {
                let c = cmds[i.index(n)].clone();
                cmds.insert(i.index(n), c);
            }
            Damage::Swap(i, j) => cmds.swap(i.index(n), j.index(n)),
            Damage::NoLeaderIndex => cmds[n - 1].leader_index = None,
            Damage::Append(c) => cmds.push(c),
            Damage::Insert(i, c) => cmds.insert(i.index(n + 1), c),
            Damage::Retype(i, t) => cmds[i.index(n)].r#type = t,
            Damage::Remove(i) => {
                cmds.remove(i.index(n));
            }
            Damage::SetKv(i, kv) => cmds[i.index(n)].kv = Some(kv),
        }
    }

    /// What a snapshot of `cmds` holds (keys, leader index), or `None` if it is not one:
    /// PUTs with a key-value, revisions >= 0 and strictly ascending keys, then exactly
    /// one DUMMY with a leader index, last.
    fn model(cmds: &[Command]) -> Option<(u64, u64)> {
        let (dummy, puts) = cmds.split_last()?;
        if dummy.r#type != CommandType::Dummy as i32 {
            return None;
        }
        let mut last: Option<&[u8]> = None;
        for cmd in puts {
            let kv = cmd.kv.as_ref()?;
            let ok = cmd.r#type == CommandType::Put as i32
                && kv.create_revision >= 0
                && kv.mod_revision >= 0
                && last < Some(&kv.key[..]);
            if !ok {
                return None;
            }
            last = Some(&kv.key);
        }
        Some((puts.len() as u64, dummy.leader_index?))
    }

    /// The framed bytes of `cmds`, split at `cuts` (empty chunks included) and cut
    /// short if `truncate`.
    fn chunks(cmds: &[Command], cuts: &[Index], truncate: Option<Index>) -> Vec<Vec<u8>> {
        let mut w = RecordWriter::default();
        let mut bytes = Vec::new();
        for cmd in cmds {
            bytes.extend(w.push(cmd).expect("push").unwrap_or_default());
        }
        bytes.extend(w.finish().expect("finish").concat());
        if let Some(t) = truncate
            && !bytes.is_empty()
        {
            bytes.truncate(t.index(bytes.len()));
        }
        let mut at: Vec<usize> = cuts.iter().map(|c| c.index(bytes.len() + 1)).collect();
        at.push(bytes.len());
        at.sort_unstable();
        let mut from = 0;
        at.into_iter()
            .map(|to| {
                let chunk = bytes[from..to].to_vec();
                from = to;
                chunk
            })
            .collect()
    }

    /// Builds from `chunks` sent into a channel whose sender is then dropped.
    fn build(chunks: Vec<Vec<u8>>) -> (tempfile::TempDir, PathBuf, Result<LoadedSnapshot>) {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("5-download-0.partial");
        let (tx, rx) = mpsc::channel(chunks.len().max(1));
        for chunk in chunks {
            tx.try_send(chunk).expect("room for every chunk");
        }
        drop(tx);
        let built = build_sst(rx, path.clone(), 5);
        (dir, path, built)
    }

    proptest! {
        #![proptest_config(config(1000))]

        #[test]
        fn fuzz_build_sst(
            mut cmds in valid(),
            damages in vec(damage(), 0..3),
            cuts in vec(any::<Index>(), 0..6),
            truncate in proptest::option::weighted(0.1, any::<Index>()),
        ) {
            for d in damages {
                apply(&mut cmds, d);
            }
            let expected = if truncate.is_some() { None } else { model(&cmds) };
            let (_dir, path, built) = build(chunks(&cmds, &cuts, truncate));
            match (built, expected) {
                (Ok(loaded), Some((keys, leader_index))) => {
                    prop_assert_eq!(loaded.staged.keys, keys);
                    prop_assert_eq!(loaded.leader_index, leader_index);
                    prop_assert!(path.exists());
                    drop(loaded);
                    prop_assert!(!path.exists(), "an unused download is removed");
                }
                (Err(_), None) => {}
                (Ok(loaded), None) => prop_assert!(
                    false,
                    "bad input gave a snapshot of {} keys at {}: {:?}",
                    loaded.staged.keys,
                    loaded.leader_index,
                    cmds
                ),
                (Err(e), Some(_)) => prop_assert!(false, "a valid snapshot failed: {e}"),
            }
        }
    }
}
