//! Loading a table's state from outside its raft log: how a follower cluster takes a
//! leader cluster's snapshot without replaying it key by key through raft.
//!
//! The follower's worker proposes a small *load marker* ([`encode_marker`]) naming the
//! least leader index the loaded data must reflect. Every replica that applies the marker
//! pauses its group's apply, fetches a snapshot through the node's [`SnapshotSource`]
//! (off the group task), and swaps it in with one RocksDB ingest: the SST carries a range
//! tombstone over the whole table plus the new keys, so readers see the old data until
//! the ingest and the new data after it, never a mix or an empty table. Then the applied
//! state (marker index, loaded leader index) is written and the group applies on.
//!
//! Replicas may load different leader indexes (each at least the marker's); later
//! commands at or below a replica's loaded index are skipped by the FSM's leader-index
//! check, so all replicas converge on the leader's state.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;

use rocksdb::{Options, SstFileWriter, WriteBatch};

use crate::applied::AppliedState;
use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::keys;
use crate::values::StoredValue;

/// First bytes of a load marker entry. A protobuf message never starts with 0x00 (field
/// number 0 is invalid), so markers cannot be mistaken for commands.
const MARKER_PREFIX: [u8; 2] = [0x00, b'L'];

/// The log entry data of a load marker.
pub fn encode_marker(min_leader_index: u64) -> Vec<u8> {
    let mut out = MARKER_PREFIX.to_vec();
    out.extend_from_slice(&min_leader_index.to_be_bytes());
    out
}

/// The least leader index a load marker asks for, if `data` is one.
pub fn decode_marker(data: &[u8]) -> Option<u64> {
    let rest = data.strip_prefix(&MARKER_PREFIX[..])?;
    keys::decode_u64(rest)
}

/// A future that fetches a snapshot.
pub type Fetch = Pin<Box<dyn Future<Output = Result<LoadedSnapshot>> + Send>>;

/// Where a replica gets the snapshot a load marker asks for (a follower cluster's
/// connection to its leader cluster).
pub trait SnapshotSource: Send + Sync + 'static {
    /// Fetches table `name`'s data (local id `table_id`) reflecting at least leader index
    /// `min_leader_index`, staged as an SST built with [`ImportWriter`]. Errors are
    /// retried by the group.
    fn fetch(&self, name: &str, table_id: u64, min_leader_index: u64) -> Fetch;
}

impl std::fmt::Debug for dyn SnapshotSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SnapshotSource")
    }
}

/// A fetched snapshot ready to be swapped in. The staged file is removed when this is
/// dropped unused (a superseded or failed load).
#[derive(Debug)]
pub struct LoadedSnapshot {
    sst: Option<PathBuf>,
    /// The leader index the data reflects.
    pub leader_index: u64,
    /// Keys in it.
    pub keys: u64,
    /// Bytes of keys and values in it.
    pub bytes: u64,
}

impl Drop for LoadedSnapshot {
    fn drop(&mut self) {
        if let Some(path) = self.sst.take() {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// Builds the SST that replaces one table's data: a range tombstone over the table, then
/// its keys in ascending order.
pub struct ImportWriter {
    writer: SstFileWriter<'static>,
    path: PathBuf,
    table_id: u64,
    last_key: Option<Vec<u8>>,
    keys: u64,
    bytes: u64,
}

impl std::fmt::Debug for ImportWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ImportWriter")
            .field("path", &self.path)
            .field("keys", &self.keys)
            .finish()
    }
}

impl ImportWriter {
    /// Starts the file at `path` for local table `table_id`.
    pub fn create(path: &Path, table_id: u64) -> Result<Self> {
        static OPTS: std::sync::LazyLock<Options> = std::sync::LazyLock::new(|| {
            let mut opts = Options::default();
            opts.set_compression_type(rocksdb::DBCompressionType::Lz4);
            opts
        });
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
        if key.is_empty() {
            return Err(Error::InvalidArgument("snapshot holds an empty key".into()));
        }
        if self.last_key.as_deref() >= Some(key) {
            return Err(Error::InvalidArgument(
                "snapshot keys are not in ascending order".into(),
            ));
        }
        self.writer
            .put(keys::data_key(self.table_id, key), value.encode())?;
        self.keys += 1;
        self.bytes += (key.len() + value.value.len()) as u64;
        self.last_key = Some(key.to_vec());
        Ok(())
    }

    /// Finishes and syncs the file; the result reflects `leader_index`.
    pub fn finish(mut self, leader_index: u64) -> Result<LoadedSnapshot> {
        self.writer.finish()?;
        std::fs::File::open(&self.path)
            .and_then(|f| f.sync_all())
            .map_err(|e| Error::Unavailable(format!("syncing {}: {e}", self.path.display())))?;
        Ok(LoadedSnapshot {
            sst: Some(std::mem::take(&mut self.path)),
            leader_index,
            keys: self.keys,
            bytes: self.bytes,
        })
    }
}

/// Swaps `loaded` in as table `id`'s data and records the marker entry (`index`, `term`)
/// as applied with the loaded leader index. A crash before the applied state lands
/// replays the marker, which loads again: the swap is idempotent.
pub fn install(
    engine: &Engine,
    id: u64,
    index: u64,
    term: u64,
    mut loaded: LoadedSnapshot,
    previous: &AppliedState,
) -> Result<AppliedState> {
    let Some(path) = loaded.sst.take() else {
        return Err(Error::Corrupt(
            "a loaded snapshot was installed twice".into(),
        ));
    };
    let ingested = engine.ingest_moving(keys::CF_DATA, &path);
    let _ = std::fs::remove_file(&path);
    ingested?;
    let state = AppliedState {
        index,
        term,
        leader_index: Some(loaded.leader_index),
        gc_horizon: previous.gc_horizon,
    };
    let mut batch = WriteBatch::default();
    batch.put_cf(
        engine.cf(keys::CF_META),
        keys::applied_key(id),
        state.encode(),
    );
    engine.write(batch, true)?;
    Ok(state)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::export::for_each_pair;

    fn value(v: &[u8], rev: u64) -> StoredValue {
        StoredValue {
            create_revision: rev,
            mod_revision: rev,
            value: v.to_vec(),
        }
    }

    #[test]
    fn markers_round_trip_and_are_not_commands() {
        assert_eq!(decode_marker(&encode_marker(42)), Some(42));
        assert_eq!(decode_marker(b"\x0a\x01t"), None);
        assert!(
            <flotilla_proto::mvcc::v1::Command as prost::Message>::decode(&encode_marker(1)[..])
                .is_err()
        );
    }

    #[test]
    fn install_replaces_the_table_and_leaves_others_alone() {
        let dir = tempfile::tempdir().expect("dir");
        let engine = Engine::open(&dir.path().join("db")).expect("open");
        let mut batch = WriteBatch::default();
        let data = engine.cf(keys::CF_DATA);
        for (id, k) in [(5u64, "old"), (5, "zzz"), (6, "other")] {
            batch.put_cf(
                data,
                keys::data_key(id, k.as_bytes()),
                value(b"x", 1).encode(),
            );
        }
        engine.write(batch, false).expect("write");

        let mut w = ImportWriter::create(&dir.path().join("load.sst"), 5).expect("create");
        w.put(b"a", &value(b"1", 10)).expect("put");
        w.put(b"b", &value(b"2", 11)).expect("put");
        assert!(w.put(b"a", &value(b"3", 12)).is_err(), "order is enforced");
        let loaded = w.finish(11).expect("finish");
        assert_eq!((loaded.keys, loaded.bytes), (2, 4));

        let state = install(&engine, 5, 9, 2, loaded, &AppliedState::default()).expect("install");
        assert_eq!(state.leader_index, Some(11));
        let mut seen = Vec::new();
        let applied = for_each_pair(&engine, 5, |kv| {
            seen.push((kv.key, kv.mod_revision));
            true
        })
        .expect("scan");
        assert_eq!(seen, vec![(b"a".to_vec(), 10), (b"b".to_vec(), 11)]);
        assert_eq!(applied, state);
        let mut other = 0;
        for_each_pair(&engine, 6, |_| {
            other += 1;
            true
        })
        .expect("scan");
        assert_eq!(other, 1, "the neighbouring table is untouched");
    }

    #[test]
    fn an_empty_snapshot_empties_the_table() {
        let dir = tempfile::tempdir().expect("dir");
        let engine = Engine::open(&dir.path().join("db")).expect("open");
        let mut batch = WriteBatch::default();
        batch.put_cf(
            engine.cf(keys::CF_DATA),
            keys::data_key(5, b"k"),
            value(b"x", 1).encode(),
        );
        engine.write(batch, false).expect("write");
        let loaded = ImportWriter::create(&dir.path().join("e.sst"), 5)
            .expect("create")
            .finish(3)
            .expect("finish");
        install(&engine, 5, 4, 1, loaded, &AppliedState::default()).expect("install");
        let mut n = 0;
        for_each_pair(&engine, 5, |_| {
            n += 1;
            true
        })
        .expect("scan");
        assert_eq!(n, 0);
    }

    #[test]
    fn a_dropped_load_removes_its_file() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("d.sst");
        let loaded = ImportWriter::create(&path, 1)
            .expect("create")
            .finish(1)
            .expect("finish");
        assert!(path.exists());
        drop(loaded);
        assert!(!path.exists());
    }
}
