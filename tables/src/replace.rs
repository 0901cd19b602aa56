//! Replacing one table's whole data atomically from a staged SST file: the one writer and
//! the one install procedure behind raft snapshots, follower snapshot loads and restores.
//!
//! - [`TableSstWriter`] builds the file: first a range tombstone over the table's data
//!   range, then the keys in ascending order. Ingesting it is one atomic step, so readers
//!   see the old data until the ingest and the new data after it, never a mix and never
//!   an empty table.
//! - [`replace_table`] installs it durably: a replace marker naming the file and the new
//!   applied state is written (synced) with the caller's other state (e.g. raft's), then
//!   the file is ingested through a hard link (the staged name stays for a redo), then the
//!   applied state is written and the marker removed (synced), then the file is removed.
//!   [`redo_replaces`] finishes any replace a crash interrupted, before groups load: the
//!   ingest is idempotent (the file's range tombstone deletes whatever an earlier ingest
//!   of the same file left).
//!
//! Blocking (file writes, fsyncs, ingest): run it off the async reactor and off the raft
//! threads.

use std::path::{Path, PathBuf};

use prost::Message as _;
use rocksdb::{Options, SstFileWriter, WriteBatch};

use crate::applied::AppliedState;
use crate::engine::{Engine, iter_status};
use crate::error::{Error, Result};
use crate::files;
use crate::keys;
use crate::values::StoredValue;

/// Builds the SST that replaces one table's data (see the module docs).
pub struct TableSstWriter {
    writer: SstFileWriter<'static>,
    path: PathBuf,
    table_id: u64,
    last_key: Option<Vec<u8>>,
    keys: u64,
    bytes: u64,
}

impl std::fmt::Debug for TableSstWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TableSstWriter")
            .field("path", &self.path)
            .field("keys", &self.keys)
            .finish()
    }
}

impl TableSstWriter {
    /// Starts the file at `path` (replacing any file there) for table `table_id`.
    pub fn create(path: &Path, table_id: u64) -> Result<Self> {
        static OPTS: std::sync::LazyLock<Options> = std::sync::LazyLock::new(|| {
            let mut opts = Options::default();
            opts.set_compression_type(rocksdb::DBCompressionType::Lz4);
            opts
        });
        files::remove_if_exists(path)?;
        let mut writer = SstFileWriter::create(&OPTS);
        writer.open(path)?;
        writer.delete_range(keys::table_start(table_id), keys::table_end(table_id))?;
        Ok(Self {
            writer,
            path: path.to_owned(),
            table_id,
            last_key: None,
            keys: 0,
            bytes: 0,
        })
    }

    /// Adds one key; keys must come in strictly ascending order.
    pub fn put(&mut self, key: &[u8], value: &StoredValue) -> Result<()> {
        self.put_encoded(key, &value.encode(), value.value.len())
    }

    /// Adds one key whose value is already encoded as a [`StoredValue`] (a raft
    /// snapshot's pairs). The encoding is checked: bad bytes are refused, not stored.
    pub fn put_stored(&mut self, key: &[u8], encoded: &[u8]) -> Result<()> {
        let value = StoredValue::decode(encoded).ok_or_else(|| {
            Error::SnapshotStream(format!(
                "the value of a key of table {} is not a stored value",
                self.table_id
            ))
        })?;
        self.put_encoded(key, encoded, value.value.len())
    }

    fn put_encoded(&mut self, key: &[u8], encoded: &[u8], value_len: usize) -> Result<()> {
        if self.last_key.as_deref() >= Some(key) {
            return Err(Error::SnapshotStream(format!(
                "the keys of table {} are not in ascending order",
                self.table_id
            )));
        }
        self.writer
            .put(keys::data_key(self.table_id, key), encoded)?;
        self.keys += 1;
        self.bytes += (key.len() + value_len) as u64;
        self.last_key = Some(key.to_vec());
        Ok(())
    }

    /// Keys added so far.
    pub fn keys(&self) -> u64 {
        self.keys
    }

    /// Finishes the file and makes it durable (file and directory synced).
    pub fn finish(self) -> Result<StagedTable> {
        let Self {
            mut writer,
            path,
            keys,
            bytes,
            ..
        } = self;
        let finished = writer.finish();
        let staged = StagedTable { path, keys, bytes };
        finished?;
        files::sync_file_and_dir(&staged.path)?;
        Ok(staged)
    }
}

/// A finished, durable SST holding one table's whole data. The file is removed when
/// this is dropped without being installed.
#[derive(Debug)]
pub struct StagedTable {
    path: PathBuf,
    /// Keys in it.
    pub keys: u64,
    /// Bytes of keys and values in it.
    pub bytes: u64,
}

impl StagedTable {
    /// Where the file is.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Moves the file to `to` (durably) and returns it there.
    pub fn rename(mut self, to: &Path) -> Result<StagedTable> {
        files::rename(&self.path, to)?;
        self.path = to.to_owned();
        Ok(self)
    }

    /// Takes ownership of a durable staged file at `path` (e.g. one found at start-up).
    pub fn adopt(path: PathBuf, keys: u64, bytes: u64) -> Self {
        Self { path, keys, bytes }
    }

    /// Gives up the file without removing it: whoever takes the path owns the file.
    pub fn into_path(mut self) -> PathBuf {
        std::mem::take(&mut self.path)
    }
}

impl Drop for StagedTable {
    fn drop(&mut self) {
        if !self.path.as_os_str().is_empty() {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// What a replace marker records: enough to finish the replace after a crash.
#[derive(Clone, PartialEq, prost::Message)]
struct ReplaceRecord {
    /// The staged SST file.
    #[prost(string, tag = "1")]
    sst_path: String,
    /// The applied state to write once the data is in.
    #[prost(bytes = "vec", tag = "2")]
    applied_state: Vec<u8>,
}

/// Replaces table `id`'s data with `staged` and its applied state with `applied`;
/// `also` (e.g. the group's new raft state) becomes durable with the replace marker,
/// before anything else changes. On return the replace is complete and durable; after a
/// crash at any point, [`redo_replaces`] completes it.
pub fn replace_table(
    engine: &Engine,
    id: u64,
    staged: StagedTable,
    applied: &AppliedState,
    mut also: WriteBatch,
) -> Result<()> {
    let path = staged.into_path();
    let record = ReplaceRecord {
        sst_path: path.to_string_lossy().into_owned(),
        applied_state: applied.encode(),
    };
    also.put_cf(
        engine.cf(keys::CF_META),
        keys::replace_marker_key(id),
        record.encode_to_vec(),
    );
    if let Err(e) = engine.write(also, true) {
        let _ = std::fs::remove_file(&path);
        return Err(e);
    }
    finish_replace(engine, id, &record)
}

/// Ingests the recorded file, writes the applied state, removes the marker and the file.
/// Idempotent.
fn finish_replace(engine: &Engine, id: u64, record: &ReplaceRecord) -> Result<()> {
    let path = PathBuf::from(&record.sst_path);
    // RocksDB moves (unlinks) what it ingests; it gets a second name of the same file,
    // so the staged name survives for a redo until the applied state is written.
    let link = path.with_extension("ingesting");
    files::remove_if_exists(&link)?;
    std::fs::hard_link(&path, &link).map_err(Error::io("linking for ingest", &path))?;
    let ingested = engine.ingest_moving(keys::CF_DATA, &link);
    let _ = std::fs::remove_file(&link);
    ingested?;
    let mut done = WriteBatch::default();
    let meta = engine.cf(keys::CF_META);
    done.put_cf(meta, keys::applied_key(id), &record.applied_state);
    done.delete_cf(meta, keys::replace_marker_key(id));
    engine.write(done, true)?;
    files::remove_if_exists(&path)?;
    Ok(())
}

/// Finishes every replace a crash interrupted. Runs when the node opens, before any
/// group loads.
pub fn redo_replaces(engine: &Engine) -> Result<()> {
    let prefix = keys::replace_marker_prefix();
    let mut records = Vec::new();
    {
        let mut iter = engine.iter(keys::CF_META, prefix.clone(), keys::prefix_end(&prefix));
        iter.seek_to_first();
        while let (Some(k), Some(v)) = (iter.key(), iter.value()) {
            let id = keys::marker_id(k).ok_or_else(|| Error::corrupt(0, "replace marker key"))?;
            let record = ReplaceRecord::decode(v)
                .map_err(|e| Error::corrupt(id, format!("replace marker: {e}")))?;
            records.push((id, record));
            iter.next();
        }
        iter_status(&iter)?;
    }
    for (id, record) in &records {
        tracing::info!(id, "finishing an interrupted replace of a table's data");
        if !Path::new(&record.sst_path).exists() {
            return Err(Error::corrupt(
                *id,
                format!(
                    "an interrupted replace needs {}, which is gone",
                    record.sst_path
                ),
            ));
        }
        finish_replace(engine, *id, record)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn value(v: &[u8], rev: u64) -> StoredValue {
        StoredValue {
            create_revision: rev,
            mod_revision: rev,
            value: v.to_vec(),
        }
    }

    fn dump(engine: &Engine, id: u64) -> Vec<(Vec<u8>, Vec<u8>)> {
        let mut iter = engine.iter(keys::CF_DATA, keys::table_start(id), keys::table_end(id));
        iter.seek_to_first();
        let mut out = Vec::new();
        while let (Some(k), Some(v)) = (iter.key(), iter.value()) {
            out.push((keys::user_key(k).to_vec(), v.to_vec()));
            iter.next();
        }
        out
    }

    fn applied(engine: &Engine, id: u64) -> AppliedState {
        AppliedState::decode(
            id,
            &engine
                .get(keys::CF_META, &keys::applied_key(id))
                .expect("get")
                .expect("applied"),
        )
        .expect("decode")
    }

    fn seeded() -> (tempfile::TempDir, Engine) {
        let dir = tempfile::tempdir().expect("dir");
        let engine = Engine::open(&dir.path().join("db")).expect("open");
        let mut batch = WriteBatch::default();
        for (id, k) in [(5u64, "old"), (5, "zzz"), (6, "other")] {
            batch.put_cf(
                engine.cf(keys::CF_DATA),
                keys::data_key(id, k.as_bytes()),
                value(b"x", 1).encode(),
            );
        }
        engine.write(batch, false).expect("write");
        (dir, engine)
    }

    fn state(index: u64) -> AppliedState {
        AppliedState {
            index,
            term: 2,
            leader_index: Some(40),
            gc_horizon: 0,
        }
    }

    #[test]
    fn a_replace_swaps_one_table_and_writes_its_applied_state() {
        let (dir, engine) = seeded();
        let mut w = TableSstWriter::create(&dir.path().join("t.sst"), 5).expect("create");
        w.put(b"", &value(b"empty key is a key", 9)).expect("put");
        w.put(b"a", &value(b"1", 10)).expect("put");
        w.put_stored(b"b", &value(b"2", 11).encode()).expect("put");
        assert!(w.put(b"a", &value(b"3", 12)).is_err(), "order is enforced");
        assert!(
            w.put_stored(b"c", &[1, 2]).is_err(),
            "bad values are refused"
        );
        let staged = w.finish().expect("finish");
        let path = staged.path().to_owned();
        assert_eq!((staged.keys, staged.bytes), (3, 22));
        replace_table(&engine, 5, staged, &state(9), WriteBatch::default()).expect("replace");
        let keys: Vec<Vec<u8>> = dump(&engine, 5).into_iter().map(|(k, _)| k).collect();
        assert_eq!(keys, vec![b"".to_vec(), b"a".to_vec(), b"b".to_vec()]);
        assert_eq!(
            dump(&engine, 6).len(),
            1,
            "the neighbouring table is untouched"
        );
        assert_eq!(applied(&engine, 5), state(9));
        assert!(!path.exists(), "the staged file is removed");
        assert_eq!(
            engine
                .get(keys::CF_META, &keys::replace_marker_key(5))
                .expect("get"),
            None
        );
    }

    #[test]
    fn an_empty_file_empties_the_table_and_a_dropped_one_removes_itself() {
        let (dir, engine) = seeded();
        let staged = TableSstWriter::create(&dir.path().join("e.sst"), 5)
            .expect("create")
            .finish()
            .expect("finish");
        replace_table(&engine, 5, staged, &state(3), WriteBatch::default()).expect("replace");
        assert!(dump(&engine, 5).is_empty());
        let path = dir.path().join("d.sst");
        let staged = TableSstWriter::create(&path, 1)
            .expect("create")
            .finish()
            .expect("finish");
        assert!(path.exists());
        drop(staged);
        assert!(!path.exists());
    }

    #[test]
    fn a_replace_interrupted_at_any_step_is_finished_at_open() {
        let (dir, engine) = seeded();
        let mut w = TableSstWriter::create(&dir.path().join("r.sst"), 5).expect("create");
        w.put(b"new", &value(b"n", 20)).expect("put");
        let staged = w.finish().expect("finish");
        let record = ReplaceRecord {
            sst_path: staged.into_path().to_string_lossy().into_owned(),
            applied_state: state(20).encode(),
        };
        // Crash 1: the marker is durable, nothing else happened.
        let mut batch = WriteBatch::default();
        batch.put_cf(
            engine.cf(keys::CF_META),
            keys::replace_marker_key(5),
            record.encode_to_vec(),
        );
        engine.write(batch, true).expect("marker");
        // Crash 2 (worse): the file was also ingested once already.
        let link = PathBuf::from(&record.sst_path).with_extension("ingesting");
        std::fs::hard_link(&record.sst_path, &link).expect("link");
        engine.ingest_moving(keys::CF_DATA, &link).expect("ingest");
        // Whatever the table holds besides the file's keys is replaced by the redo.
        let mut batch = WriteBatch::default();
        batch.put_cf(
            engine.cf(keys::CF_DATA),
            keys::data_key(5, b"stale"),
            value(b"s", 2).encode(),
        );
        engine.write(batch, false).expect("write");
        redo_replaces(&engine).expect("redo");
        let keys: Vec<Vec<u8>> = dump(&engine, 5).into_iter().map(|(k, _)| k).collect();
        assert_eq!(keys, vec![b"new".to_vec()]);
        assert_eq!(applied(&engine, 5), state(20));
        assert!(!Path::new(&record.sst_path).exists());
        redo_replaces(&engine).expect("nothing left to redo");
    }
}
