//! Raft snapshots of a table, streamed in chunks rather than held in memory.
//!
//! - Sending ([`read_chunks`]): one [`TableAt`] gives the table's applied state and its
//!   data at the same instant; chunks of at most [`CHUNK_BYTES`] go out as they are read.
//!   The data may reflect a later index than the raft message that asked for it (applying
//!   continued meanwhile); the chunks say which.
//! - Receiving ([`receive`]): chunks are staged into an SST file with
//!   [`TableSstWriter`]; the raft message's metadata is rewritten to the index and term
//!   the data reflects (committed, since it was applied on the sender) and its data names
//!   the staged file ([`StagedSnapshot`]).
//! - Installing ([`installer`], run off the group task when raft hands the snapshot
//!   back): [`replace_table`] swaps the file in atomically with the group's new raft
//!   state, so readers never see an empty table and a crash at any point is finished
//!   when the node opens.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use flotilla_proto::flotilla::raft::v1::{Pair, SnapshotChunk};
use prost::Message as _;
use protobuf::Message as _;
use raft::eraftpb::{Message, MessageType};
use rocksdb::WriteBatch;

use crate::applied::AppliedState;
use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::files;
use crate::point_in_time::TableAt;
use crate::replace::{StagedTable, TableSstWriter, replace_table};

/// Largest amount of key/value bytes in one chunk.
pub const CHUNK_BYTES: usize = 1 << 20;

/// What a received snapshot's raft `data` holds on the receiving node.
#[derive(Clone, PartialEq, prost::Message)]
pub struct StagedSnapshot {
    /// The staged SST file of the table's data (a range tombstone and the keys).
    #[prost(string, tag = "1")]
    pub sst_path: String,
    /// The sender's applied state, which the data reflects.
    #[prost(bytes = "vec", tag = "2")]
    pub applied_state: Vec<u8>,
}

/// Streams group `group_id`'s snapshot: first a chunk with the raft `message` (encoded
/// `MsgSnapshot`), then one with the applied state, then the data, the last chunk marked
/// `last`. Blocking: run it off the async reactor. `emit` returns false when the receiver
/// is gone, which ends the stream with [`Error::ReceiverGone`].
pub fn read_chunks(
    engine: &Engine,
    group_id: u64,
    message: Vec<u8>,
    mut emit: impl FnMut(SnapshotChunk) -> bool,
) -> Result<()> {
    let at = TableAt::new(engine, group_id);
    let applied = at
        .applied_bytes()?
        .ok_or_else(|| Error::SnapshotStream(format!("group {group_id} has applied nothing")))?;
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
        return Err(Error::ReceiverGone);
    }
    let mut pairs = Vec::new();
    let mut bytes = 0;
    at.for_each_stored(|key, value| {
        bytes += key.len() + value.len();
        pairs.push(Pair {
            key: key.to_vec(),
            value: value.to_vec(),
        });
        if bytes < CHUNK_BYTES {
            return true;
        }
        bytes = 0;
        emit(SnapshotChunk {
            pairs: std::mem::take(&mut pairs),
            ..Default::default()
        })
    })?;
    let last = SnapshotChunk {
        pairs,
        last: true,
        ..Default::default()
    };
    if emit(last) {
        Ok(())
    } else {
        Err(Error::ReceiverGone)
    }
}

/// Distinguishes staged files of the same group and index within one process.
static STAGED: AtomicU64 = AtomicU64::new(0);

/// Stages a snapshot streamed by [`read_chunks`] into a file under `dir`. Returns the
/// group id and the `MsgSnapshot` to step into that group (see the module docs).
/// Blocking. A stream that ends without its `last` chunk is an error, never a snapshot;
/// one whose raft sender `may_send` refuses is [`Error::WrongSender`], before any staging.
pub fn receive(
    dir: &Path,
    chunks: impl IntoIterator<Item = Result<SnapshotChunk>>,
    may_send: impl Fn(u64) -> bool,
) -> Result<(u64, Message)> {
    let mut chunks = chunks.into_iter();
    let truncated = || Error::SnapshotStream("the stream ended early".into());
    let header = chunks.next().ok_or_else(truncated)??;
    let group_id = header.group_id;
    let mut msg = Message::parse_from_bytes(&header.message)
        .map_err(|e| Error::SnapshotStream(format!("raft message: {e}")))?;
    if msg.get_msg_type() != MessageType::MsgSnapshot {
        return Err(Error::SnapshotStream(format!(
            "the stream carries a {:?}",
            msg.get_msg_type()
        )));
    }
    // Checked before anything is staged: a peer speaking for another node gets no disk.
    if !may_send(msg.from) {
        return Err(Error::WrongSender { claimed: msg.from });
    }
    let applied_bytes = chunks.next().ok_or_else(truncated)??.applied_state;
    let applied = AppliedState::decode(group_id, &applied_bytes)
        .map_err(|e| Error::SnapshotStream(e.to_string()))?;
    files::create_dir(dir)?;
    let path = dir.join(format!(
        "{group_id}-{}-{}.sst",
        applied.index,
        STAGED.fetch_add(1, Ordering::Relaxed)
    ));
    let staged = stage_pairs(group_id, &path, chunks)?;
    let snapshot = msg.mut_snapshot();
    let meta = snapshot.mut_metadata();
    meta.index = applied.index;
    meta.term = applied.term;
    // From here the raft message owns the file: `discard` or the install removes it.
    let descriptor = StagedSnapshot {
        sst_path: staged.into_path().to_string_lossy().into_owned(),
        applied_state: applied_bytes,
    };
    snapshot.data = descriptor.encode_to_vec().into();
    Ok((group_id, msg))
}

/// Writes the data chunks into a durable SST file at `path`; on any error, removes it.
fn stage_pairs(
    group_id: u64,
    path: &Path,
    chunks: impl Iterator<Item = Result<SnapshotChunk>>,
) -> Result<StagedTable> {
    let mut writer = TableSstWriter::create(path, group_id)?;
    let copied = copy_pairs(&mut writer, chunks);
    if let Ok(true) = copied {
        return writer.finish();
    }
    drop(writer);
    let _ = std::fs::remove_file(path);
    copied?;
    Err(Error::SnapshotStream("the stream ended early".into()))
}

/// Adds the pairs of `chunks` up to the one marked last; false if none is.
fn copy_pairs(
    writer: &mut TableSstWriter,
    chunks: impl Iterator<Item = Result<SnapshotChunk>>,
) -> Result<bool> {
    for chunk in chunks {
        let chunk = chunk?;
        for pair in chunk.pairs {
            writer.put_stored(&pair.key, &pair.value)?;
        }
        if chunk.last {
            return Ok(true);
        }
    }
    Ok(false)
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

/// A blocking install job (see [`installer`]).
pub type InstallJob = Box<dyn FnOnce() -> Result<()> + Send>;

/// The job that installs a received snapshot (`data` is its [`StagedSnapshot`]) as table
/// `id`'s state, with `raft_state` (the group's new raft state) made durable first, in
/// the same batch as the replace marker. Run it off the group task.
pub fn installer(
    engine: &Engine,
    id: u64,
    raft_state: WriteBatch,
    data: &[u8],
) -> Result<InstallJob> {
    let staged = StagedSnapshot::decode(data)
        .map_err(|e| Error::corrupt(id, format!("staged snapshot descriptor: {e}")))?;
    let applied = AppliedState::decode(id, &staged.applied_state)?;
    let engine = engine.clone();
    let file = StagedTable::adopt(PathBuf::from(staged.sst_path), 0, 0);
    Ok(Box::new(move || {
        replace_table(&engine, id, file, &applied, raft_state)
    }))
}

/// Removes staged snapshot files nobody will install: what is left in `dir` when the
/// node opens (interrupted installs were finished before).
pub fn clean_staging(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        tracing::info!(path = %path.display(), "removing a staged snapshot nobody installed");
        let _ = std::fs::remove_file(&path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys;
    use crate::replace::redo_replaces;
    use crate::values::StoredValue;
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
            let value = StoredValue {
                create_revision: 1,
                mod_revision: 2,
                value: vec![7; 1024],
            };
            put(
                &engine,
                keys::CF_DATA,
                keys::data_key(5, format!("k{i:05}").as_bytes()),
                &value.encode(),
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

    fn applied(engine: &Engine, id: u64) -> AppliedState {
        let bytes = engine
            .get(keys::CF_META, &keys::applied_key(id))
            .expect("get")
            .expect("applied");
        AppliedState::decode(id, &bytes).expect("decode")
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
        let (group, msg) =
            receive(&staging, chunks.into_iter().map(Ok), |_| true).expect("receive");
        assert_eq!(group, 5);
        // The metadata says what the data reflects, not what the message asked for.
        let meta = msg.get_snapshot().get_metadata();
        assert_eq!((meta.index, meta.term), (10, 2));

        let job =
            installer(&b, 5, WriteBatch::default(), &msg.get_snapshot().data).expect("installer");
        job().expect("install");
        assert_eq!(applied(&b, 5).leader_index, Some(4));
        assert_eq!(table(&b, 5), table(&a, 5));
        assert_eq!(table(&b, 6).len(), 1, "other tables are untouched");
        assert_eq!(
            std::fs::read_dir(&staging).expect("dir").count(),
            0,
            "staged file removed"
        );
    }

    #[test]
    fn readers_see_the_old_data_or_the_new_never_an_empty_table() {
        let (_a, a) = sender();
        let (b_dir, b) = engine();
        for i in 0..2000u32 {
            put(
                &b,
                keys::CF_DATA,
                keys::data_key(5, format!("old{i:05}").as_bytes()),
                b"x",
            );
        }
        let (_, msg) = receive(
            &b_dir.path().join("snapshots"),
            chunks_of(&a, 5, 7).into_iter().map(Ok),
            |_| true,
        )
        .expect("receive");
        let job =
            installer(&b, 5, WriteBatch::default(), &msg.get_snapshot().data).expect("installer");
        let reader_engine = b.clone();
        let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stop = done.clone();
        let reader = std::thread::spawn(move || {
            let mut reads = 0u64;
            loop {
                let finished = stop.load(Ordering::Acquire);
                let mut n = 0usize;
                TableAt::new(&reader_engine, 5)
                    .for_each_stored(|_, _| {
                        n += 1;
                        true
                    })
                    .expect("read");
                assert!(n == 2000 || n == 3000, "a reader saw {n} keys");
                reads += 1;
                if finished {
                    return reads;
                }
            }
        });
        job().expect("install");
        done.store(true, Ordering::Release);
        let reads = reader.join().expect("reader");
        assert!(reads > 0);
        assert_eq!(table(&b, 5), table(&a, 5));
    }

    #[test]
    fn a_stream_cut_short_is_refused_and_leaves_no_file() {
        let (_a, a) = sender();
        let mut chunks = chunks_of(&a, 5, 7);
        chunks.pop();
        let dir = tempfile::tempdir().expect("tempdir");
        assert!(matches!(
            receive(dir.path(), chunks.into_iter().map(Ok), |_| true),
            Err(Error::SnapshotStream(_))
        ));
        assert_eq!(std::fs::read_dir(dir.path()).expect("dir").count(), 0);
    }

    #[test]
    fn an_interrupted_install_is_finished_at_open() {
        let (_a, a) = sender();
        let (b_dir, b) = engine();
        let staging = b_dir.path().join("snapshots");
        let (_, msg) =
            receive(&staging, chunks_of(&a, 5, 7).into_iter().map(Ok), |_| true).expect("receive");
        let staged = StagedSnapshot::decode(&msg.get_snapshot().data[..]).expect("decode");
        // Crash right after the synced marker batch: written as replace_table writes it.
        let mut record = Vec::new();
        prost::encoding::string::encode(1, &staged.sst_path, &mut record);
        prost::encoding::bytes::encode(2, &staged.applied_state, &mut record);
        put(&b, keys::CF_META, keys::replace_marker_key(5), &record);
        put(&b, keys::CF_DATA, keys::data_key(5, b"stale"), b"x");
        redo_replaces(&b).expect("redo");
        assert_eq!(table(&b, 5), table(&a, 5));
        assert_eq!(applied(&b, 5).index, 10);
        clean_staging(&staging);
        assert_eq!(std::fs::read_dir(&staging).expect("dir").count(), 0);
    }
}

#[cfg(test)]
#[path = "snapshot_fuzz.rs"]
mod fuzz;
