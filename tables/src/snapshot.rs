//! Raft snapshots of a table, streamed in chunks rather than held in memory.
//!
//! - Sending ([`read_chunks`]): one RocksDB snapshot gives the table's applied state and
//!   its data range at the same instant; chunks of at most [`CHUNK_BYTES`] go out as they
//!   are read. The data may reflect a later index than the raft message that asked for it
//!   (applying continued meanwhile); the chunks say which.
//! - Receiving ([`receive`]): chunks are staged into an SST file; the raft message's
//!   metadata is rewritten to the index and term the data reflects (committed, since it was
//!   applied on the sender) and its data names the staged file ([`StagedSnapshot`]).
//! - Installing ([`install`], on the group task when raft hands the snapshot back): the new
//!   raft state and an install marker go in one synced batch; then the table's data range
//!   is replaced by the file and the applied state written, and the marker removed.
//!   [`redo_installs`] finishes an install a crash interrupted, before groups load.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use flotilla_proto::flotilla::raft::v1::{Pair, SnapshotChunk};
use prost::Message as _;
use protobuf::Message as _;
use raft::eraftpb::{Message, MessageType};
use rocksdb::{Options, ReadOptions, SstFileWriter, WriteBatch};

use crate::applied::AppliedState;
use crate::engine::{Engine, iter_status};
use crate::error::{Error, Result};
use crate::keys;

/// Largest amount of key/value bytes in one chunk.
pub const CHUNK_BYTES: usize = 1 << 20;

/// What a received snapshot's raft `data` holds on the receiving node.
#[derive(Clone, PartialEq, prost::Message)]
pub struct StagedSnapshot {
    /// The staged SST file of the table's data; empty when the table had no keys.
    #[prost(string, tag = "1")]
    pub sst_path: String,
    /// The sender's applied state, which the data reflects.
    #[prost(bytes = "vec", tag = "2")]
    pub applied_state: Vec<u8>,
}

/// Streams group `group_id`'s snapshot: first a chunk with the raft `message` (encoded
/// `MsgSnapshot`), then one with the applied state, then the data, the last chunk marked
/// `last`. Blocking: run it off the async reactor. `emit` returns false when the receiver
/// is gone, which ends the stream with an error.
pub fn read_chunks(
    engine: &Engine,
    group_id: u64,
    message: Vec<u8>,
    mut emit: impl FnMut(SnapshotChunk) -> bool,
) -> Result<()> {
    let gone = || Error::Unavailable("snapshot receiver went away".into());
    let snap = engine.snapshot();
    let applied = snap
        .get_cf(engine.cf(keys::CF_META), keys::applied_key(group_id))?
        .ok_or_else(|| Error::Unavailable(format!("group {group_id} has applied nothing")))?;
    let header = SnapshotChunk {
        group_id,
        message,
        ..Default::default()
    };
    let state = SnapshotChunk {
        applied_state: applied,
        ..Default::default()
    };
    if !emit(header) || !emit(state) {
        return Err(gone());
    }
    let mut opts = ReadOptions::default();
    opts.set_iterate_lower_bound(keys::table_start(group_id));
    opts.set_iterate_upper_bound(keys::table_end(group_id));
    let mut iter = snap.raw_iterator_cf_opt(engine.cf(keys::CF_DATA), opts);
    iter.seek_to_first();
    let mut pairs = Vec::new();
    let mut bytes = 0;
    while let (Some(k), Some(v)) = (iter.key(), iter.value()) {
        bytes += k.len() + v.len();
        pairs.push(Pair {
            key: keys::user_key(k).to_vec(),
            value: v.to_vec(),
        });
        if bytes >= CHUNK_BYTES {
            let chunk = SnapshotChunk {
                pairs: std::mem::take(&mut pairs),
                ..Default::default()
            };
            if !emit(chunk) {
                return Err(gone());
            }
            bytes = 0;
        }
        iter.next();
    }
    iter_status(&iter)?;
    let last = SnapshotChunk {
        pairs,
        last: true,
        ..Default::default()
    };
    if emit(last) { Ok(()) } else { Err(gone()) }
}

/// Distinguishes staged files of the same group and index within one process.
static STAGED: AtomicU64 = AtomicU64::new(0);

/// Stages a snapshot streamed by [`read_chunks`] into a file under `dir`. Returns the
/// group id and the `MsgSnapshot` to step into that group (see the module docs).
/// Blocking. A stream that ends without its `last` chunk is an error, never a snapshot.
pub fn receive(
    dir: &Path,
    chunks: impl IntoIterator<Item = Result<SnapshotChunk>>,
) -> Result<(u64, Message)> {
    let mut chunks = chunks.into_iter();
    let truncated = || Error::Unavailable("snapshot stream ended early".into());
    let header = chunks.next().ok_or_else(truncated)??;
    let group_id = header.group_id;
    let mut msg = Message::parse_from_bytes(&header.message)?;
    if msg.get_msg_type() != MessageType::MsgSnapshot {
        return Err(Error::InvalidArgument(format!(
            "snapshot stream carries a {:?}",
            msg.get_msg_type()
        )));
    }
    let applied_bytes = chunks.next().ok_or_else(truncated)??.applied_state;
    let applied = AppliedState::decode(&applied_bytes)?;
    std::fs::create_dir_all(dir).map_err(io_error("creating the snapshot dir"))?;
    let path = dir.join(format!(
        "{group_id}-{}-{}.sst",
        applied.index,
        STAGED.fetch_add(1, Ordering::Relaxed)
    ));
    let staged = stage_pairs(group_id, &path, chunks);
    let has_data = match staged {
        Ok(has_data) => has_data,
        Err(e) => {
            let _ = std::fs::remove_file(&path);
            return Err(e);
        }
    };
    let snapshot = msg.mut_snapshot();
    let meta = snapshot.mut_metadata();
    meta.index = applied.index;
    meta.term = applied.term;
    let descriptor = StagedSnapshot {
        sst_path: if has_data {
            path.to_string_lossy().into_owned()
        } else {
            String::new()
        },
        applied_state: applied_bytes,
    };
    snapshot.data = descriptor.encode_to_vec().into();
    Ok((group_id, msg))
}

/// Writes the data chunks into an SST file at `path`; returns whether it has any key.
fn stage_pairs(
    group_id: u64,
    path: &Path,
    chunks: impl Iterator<Item = Result<SnapshotChunk>>,
) -> Result<bool> {
    let opts = Options::default();
    let mut writer = SstFileWriter::create(&opts);
    let mut last_key: Option<Vec<u8>> = None;
    let mut finished = false;
    for chunk in chunks {
        let chunk = chunk?;
        for pair in chunk.pairs {
            let key = keys::data_key(group_id, &pair.key);
            if last_key.is_none() {
                writer.open(path)?;
            } else if last_key.as_deref() >= Some(key.as_slice()) {
                return Err(Error::InvalidArgument(
                    "snapshot keys are not in ascending order".into(),
                ));
            }
            writer.put(&key, &pair.value)?;
            last_key = Some(key);
        }
        if chunk.last {
            finished = true;
            break;
        }
    }
    if !finished {
        return Err(Error::Unavailable("snapshot stream ended early".into()));
    }
    if last_key.is_none() {
        return Ok(false);
    }
    writer.finish()?;
    std::fs::File::open(path)
        .and_then(|f| f.sync_all())
        .map_err(io_error("syncing the staged snapshot"))?;
    Ok(true)
}

/// Removes the staged file of a snapshot that raft did not take.
pub fn discard(data: &[u8]) {
    if let Ok(staged) = StagedSnapshot::decode(data)
        && !staged.sst_path.is_empty()
        && let Err(e) = std::fs::remove_file(&staged.sst_path)
    {
        tracing::warn!(path = staged.sst_path, "removing unused snapshot: {e}");
    }
}

/// Installs a received snapshot (`data` is its [`StagedSnapshot`]) as table `id`'s state.
/// `raft_state` holds the group's new raft state; it is written with the install marker
/// in one synced batch, so a crash at any later point is finished by [`redo_installs`].
pub fn install(
    engine: &Engine,
    id: u64,
    mut raft_state: WriteBatch,
    data: &[u8],
) -> Result<AppliedState> {
    let staged = StagedSnapshot::decode(data)?;
    let applied = AppliedState::decode(&staged.applied_state)?;
    raft_state.put_cf(
        engine.cf(keys::CF_META),
        keys::snapshot_install_key(id),
        data,
    );
    engine.write(raft_state, true)?;
    finish_install(engine, id, &staged)?;
    Ok(applied)
}

/// Replaces table `id`'s data with the staged file, writes its applied state and removes
/// the install marker. Idempotent: redoing it after a crash gives the same result.
fn finish_install(engine: &Engine, id: u64, staged: &StagedSnapshot) -> Result<()> {
    let (start, end) = (keys::table_start(id), keys::table_end(id));
    let mut clear = WriteBatch::default();
    clear.delete_range_cf(engine.cf(keys::CF_DATA), &start, &end);
    engine.write(clear, false)?;
    if !staged.sst_path.is_empty() {
        // Ingested after the range delete, so the file's keys get newer sequence numbers
        // and survive it.
        engine.ingest(keys::CF_DATA, Path::new(&staged.sst_path))?;
    }
    let mut done = WriteBatch::default();
    let meta = engine.cf(keys::CF_META);
    done.put_cf(meta, keys::applied_key(id), &staged.applied_state);
    done.delete_cf(meta, keys::snapshot_install_key(id));
    engine.write(done, true)?;
    if !staged.sst_path.is_empty() {
        let _ = std::fs::remove_file(&staged.sst_path);
    }
    Ok(())
}

/// Finishes installs a crash interrupted, then removes staged files nobody needs. Runs
/// when the node opens, before any group loads.
pub fn redo_installs(engine: &Engine, dir: &Path) -> Result<()> {
    let prefix = keys::snapshot_install_prefix();
    let mut markers = Vec::new();
    {
        let mut iter = engine.iter(keys::CF_META, prefix.clone(), keys::prefix_end(&prefix));
        iter.seek_to_first();
        while let (Some(k), Some(v)) = (iter.key(), iter.value()) {
            let id = keys::marker_id(k).ok_or_else(|| Error::Corrupt("install marker".into()))?;
            markers.push((id, StagedSnapshot::decode(v)?));
            iter.next();
        }
        iter_status(&iter)?;
    }
    for (id, staged) in &markers {
        tracing::info!(id, "finishing an interrupted snapshot install");
        finish_install(engine, *id, staged)?;
    }
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Ok(());
    };
    for entry in entries.flatten() {
        let path: PathBuf = entry.path();
        tracing::info!(path = %path.display(), "removing a staged snapshot nobody installed");
        let _ = std::fs::remove_file(&path);
    }
    Ok(())
}

fn io_error(what: &'static str) -> impl Fn(std::io::Error) -> Error {
    move |e| Error::Unavailable(format!("{what}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use raft::eraftpb::Snapshot;

    fn engine() -> (tempfile::TempDir, Engine) {
        let dir = tempfile::tempdir().expect("tempdir");
        let engine = Engine::open(&dir.path().join("db")).expect("open");
        (dir, engine)
    }

    fn put(engine: &Engine, cf: &str, key: Vec<u8>, value: &[u8]) {
        let mut b = WriteBatch::default();
        b.put_cf(engine.cf(cf), key, value);
        engine.write(b, false).expect("write");
    }

    fn table(engine: &Engine, id: u64) -> Vec<(Vec<u8>, Vec<u8>)> {
        let mut iter = engine.iter(keys::CF_DATA, keys::table_start(id), keys::table_end(id));
        iter.seek_to_first();
        let mut out = Vec::new();
        while let (Some(k), Some(v)) = (iter.key(), iter.value()) {
            out.push((k.to_vec(), v.to_vec()));
            iter.next();
        }
        out
    }

    /// A MsgSnapshot as the leader's raft builds it (metadata only).
    fn header(index: u64) -> Vec<u8> {
        let mut msg = Message::default();
        msg.set_msg_type(MessageType::MsgSnapshot);
        msg.to = 2;
        let mut snap = Snapshot::default();
        snap.mut_metadata().index = index;
        snap.mut_metadata().term = 1;
        msg.set_snapshot(snap);
        msg.write_to_bytes().expect("encode")
    }

    fn chunks_of(engine: &Engine, id: u64, index: u64) -> Vec<SnapshotChunk> {
        let mut chunks = Vec::new();
        read_chunks(engine, id, header(index), |c| {
            chunks.push(c);
            true
        })
        .expect("read");
        chunks
    }

    /// Table 5 on the sender: 3000 keys of 1 KiB (several chunks), applied at 10 / term 2.
    fn sender() -> (tempfile::TempDir, Engine) {
        let (dir, engine) = engine();
        for i in 0..3000u32 {
            put(
                &engine,
                keys::CF_DATA,
                keys::data_key(5, format!("k{i:05}").as_bytes()),
                &[7; 1024],
            );
        }
        let applied = AppliedState {
            index: 10,
            term: 2,
            leader_index: Some(4),
            gc_horizon: 0,
        };
        put(
            &engine,
            keys::CF_META,
            keys::applied_key(5),
            &applied.encode(),
        );
        (dir, engine)
    }

    #[test]
    fn a_streamed_snapshot_replaces_the_table_and_nothing_else() {
        let (_a, a) = sender();
        let chunks = chunks_of(&a, 5, 7);
        assert!(chunks.len() > 3, "{} chunks", chunks.len());
        assert!(chunks.last().is_some_and(|c| c.last));

        let (b_dir, b) = engine();
        put(&b, keys::CF_DATA, keys::data_key(5, b"stale"), b"x");
        put(&b, keys::CF_DATA, keys::data_key(6, b"other"), b"y");
        let staging = b_dir.path().join("snapshots");
        let (group, msg) = receive(&staging, chunks.into_iter().map(Ok)).expect("receive");
        assert_eq!(group, 5);
        // The metadata says what the data reflects, not what the message asked for.
        let meta = msg.get_snapshot().get_metadata();
        assert_eq!((meta.index, meta.term), (10, 2));

        let applied =
            install(&b, 5, WriteBatch::default(), &msg.get_snapshot().data).expect("install");
        assert_eq!(applied.index, 10);
        assert_eq!(applied.leader_index, Some(4));
        assert_eq!(table(&b, 5), table(&a, 5));
        assert_eq!(table(&b, 6).len(), 1, "other tables are untouched");
        assert_eq!(
            b.get(keys::CF_META, &keys::snapshot_install_key(5))
                .expect("get"),
            None
        );
        assert_eq!(
            std::fs::read_dir(&staging).expect("dir").count(),
            0,
            "staged file removed"
        );
    }

    #[test]
    fn a_stream_cut_short_is_refused_and_leaves_no_file() {
        let (_a, a) = sender();
        let mut chunks = chunks_of(&a, 5, 7);
        chunks.pop();
        let dir = tempfile::tempdir().expect("tempdir");
        assert!(receive(dir.path(), chunks.into_iter().map(Ok)).is_err());
        assert_eq!(std::fs::read_dir(dir.path()).expect("dir").count(), 0);
    }

    #[test]
    fn an_interrupted_install_is_finished_at_open() {
        let (_a, a) = sender();
        let (b_dir, b) = engine();
        let staging = b_dir.path().join("snapshots");
        let (_, msg) = receive(&staging, chunks_of(&a, 5, 7).into_iter().map(Ok)).expect("receive");
        // Crash right after the synced raft-state batch: only the marker is written.
        put(
            &b,
            keys::CF_META,
            keys::snapshot_install_key(5),
            &msg.get_snapshot().data,
        );
        put(&b, keys::CF_DATA, keys::data_key(5, b"stale"), b"x");
        redo_installs(&b, &staging).expect("redo");
        assert_eq!(table(&b, 5), table(&a, 5));
        let applied = b
            .get(keys::CF_META, &keys::applied_key(5))
            .expect("get")
            .expect("applied");
        assert_eq!(AppliedState::decode(&applied).expect("decode").index, 10);
        assert_eq!(
            b.get(keys::CF_META, &keys::snapshot_install_key(5))
                .expect("get"),
            None
        );
    }
}
