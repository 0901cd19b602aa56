//! The one RocksDB of a node, shared by every table's raft group.
//!
//! Column families are by kind (see [`crate::keys`]), never per table, so thousands of
//! tables cost no extra files or memtables.

use std::path::Path;
use std::sync::Arc;

use rocksdb::{
    BlockBasedOptions, Cache, ColumnFamily, ColumnFamilyDescriptor, DB,
    DBRawIteratorWithThreadMode, ErrorKind, IngestExternalFileOptions, Options, ReadOptions,
    ReadTier, WriteBatch, WriteOptions,
};

use crate::error::{Error, Result};
use crate::keys;

/// Shared handle to the node's RocksDB.
#[derive(Clone)]
pub struct Engine {
    db: Arc<DB>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("path", &self.db.path())
            .finish()
    }
}

/// A raw iterator over one column family (see [`Engine::iter`]).
pub type RawIter<'a> = DBRawIteratorWithThreadMode<'a, DB>;

impl Engine {
    /// Opens (creating if needed) the RocksDB at `path` with Flotilla's column families.
    pub fn open(path: &Path) -> Result<Self> {
        let mut opts = Options::default();
        opts.create_if_missing(true);
        opts.create_missing_column_families(true);
        opts.set_max_background_jobs(2);
        // All column families share one WAL; keep it from growing without bound when
        // the raft family is written constantly but the data family rarely flushes.
        opts.set_max_total_wal_size(256 << 20);
        let cache = Cache::new_lru_cache(128 << 20);
        let cfs = keys::COLUMN_FAMILIES.iter().map(|name| {
            let mut cf_opts = Options::default();
            let mut table = BlockBasedOptions::default();
            table.set_block_cache(&cache);
            if *name == keys::CF_DATA {
                table.set_bloom_filter(10.0, false);
            }
            cf_opts.set_block_based_table_factory(&table);
            cf_opts.set_compression_type(rocksdb::DBCompressionType::Lz4);
            ColumnFamilyDescriptor::new(*name, cf_opts)
        });
        let db = DB::open_cf_descriptors(&opts, path, cfs)?;
        Ok(Self { db: Arc::new(db) })
    }

    /// The column family `name`; all of [`keys::COLUMN_FAMILIES`] exist once open succeeded.
    pub fn cf(&self, name: &str) -> &ColumnFamily {
        #[allow(clippy::expect_used)]
        self.db
            .cf_handle(name)
            .expect("column families are created when the engine opens")
    }

    /// Writes `batch` atomically; `sync` makes it durable (fsync) before returning.
    pub fn write(&self, batch: WriteBatch, sync: bool) -> Result<()> {
        Ok(self.write_batch(batch, sync)?)
    }

    /// [`Engine::write`] with RocksDB's own error (cloneable, for the log writer that
    /// tells many waiters of one failure).
    pub fn write_batch(&self, batch: WriteBatch, sync: bool) -> Result<(), rocksdb::Error> {
        let mut opts = WriteOptions::default();
        opts.set_sync(sync);
        self.db.write_opt(batch, &opts)
    }

    /// Reads one key of family `cf`.
    pub fn get(&self, cf: &str, key: &[u8]) -> Result<Option<Vec<u8>>> {
        Ok(self.db.get_cf(self.cf(cf), key)?)
    }

    /// Reads one key of family `cf` only if memory answers (memtables and block cache,
    /// no file read): `None` when it would have to read a file. Cheap enough to call on
    /// the async reactor, which a possibly-blocking [`Engine::get`] is not.
    pub fn get_from_memory(&self, cf: &str, key: &[u8]) -> Result<Option<Option<Vec<u8>>>> {
        let mut opts = ReadOptions::default();
        opts.set_read_tier(ReadTier::BlockCache);
        match self.db.get_cf_opt(self.cf(cf), key, &opts) {
            Ok(value) => Ok(Some(value)),
            Err(e) if e.kind() == ErrorKind::Incomplete => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// A raw iterator over `[lower, upper)` of family `cf`, positioned nowhere yet.
    pub fn iter(&self, cf: &str, lower: Vec<u8>, upper: Vec<u8>) -> RawIter<'_> {
        let mut opts = ReadOptions::default();
        opts.set_iterate_lower_bound(lower);
        opts.set_iterate_upper_bound(upper);
        self.db.raw_iterator_cf_opt(self.cf(cf), opts)
    }

    /// A raw iterator over family `cf` with caller-chosen options (bounds, snapshot).
    pub fn raw_iter_opt(&self, cf: &str, opts: ReadOptions) -> RawIter<'_> {
        self.db.raw_iterator_cf_opt(self.cf(cf), opts)
    }

    /// A consistent point-in-time view of the whole database.
    pub fn snapshot(&self) -> rocksdb::SnapshotWithThreadMode<'_, DB> {
        self.db.snapshot()
    }

    /// Loads an SST file (written by `rocksdb::SstFileWriter`) into family `cf` by moving
    /// it (RocksDB hard-links it into the database and unlinks `path`), never copying.
    pub fn ingest_moving(&self, cf: &str, path: &Path) -> Result<()> {
        let mut opts = IngestExternalFileOptions::default();
        opts.set_move_files(true);
        self.db
            .ingest_external_file_cf_opts(self.cf(cf), &opts, vec![path])?;
        Ok(())
    }

    /// Removes every key of table `id` from every family and hints RocksDB to reclaim space.
    pub fn erase_table(&self, id: u64) -> Result<()> {
        let (start, end) = (keys::table_start(id), keys::table_end(id));
        let mut batch = WriteBatch::default();
        for name in keys::COLUMN_FAMILIES {
            batch.delete_range_cf(self.cf(name), &start, &end);
        }
        self.write(batch, false)?;
        for name in keys::COLUMN_FAMILIES {
            self.db
                .compact_range_cf(self.cf(name), Some(&start), Some(&end));
        }
        Ok(())
    }

    /// Approximate bytes on disk (SST files) plus memtables, over all families.
    pub fn approximate_size(&self) -> u64 {
        keys::COLUMN_FAMILIES
            .iter()
            .map(|name| {
                let cf = self.cf(name);
                let sst = self
                    .db
                    .property_int_value_cf(cf, "rocksdb.total-sst-files-size")
                    .ok()
                    .flatten()
                    .unwrap_or(0);
                let mem = self
                    .db
                    .property_int_value_cf(cf, "rocksdb.cur-size-all-mem-tables")
                    .ok()
                    .flatten()
                    .unwrap_or(0);
                sst + mem
            })
            .sum()
    }

    /// Flushes memtables and the WAL, used on graceful shutdown.
    pub fn flush(&self) -> Result<()> {
        self.db.flush_wal(true)?;
        for name in keys::COLUMN_FAMILIES {
            self.db.flush_cf(self.cf(name))?;
        }
        Ok(())
    }
}

/// Turns a RocksDB iterator status into our error.
pub fn iter_status(iter: &RawIter<'_>) -> Result<()> {
    iter.status().map_err(Error::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_reads_answer_from_memtables_and_cache_and_decline_file_reads() {
        let dir = tempfile::tempdir().expect("tempdir");
        let engine = Engine::open(dir.path()).expect("open");
        let mut batch = WriteBatch::default();
        batch.put_cf(engine.cf(keys::CF_DATA), b"k", b"v");
        engine.write(batch, true).expect("write");
        let from_memtable = engine.get_from_memory(keys::CF_DATA, b"k").expect("read");
        assert_eq!(from_memtable, Some(Some(b"v".to_vec())));
        engine.flush().expect("flush");
        drop(engine);

        // Reopened: the value is only in a file, which a memory read must not touch.
        let engine = Engine::open(dir.path()).expect("reopen");
        assert_eq!(
            engine.get_from_memory(keys::CF_DATA, b"k").expect("read"),
            None
        );
        assert_eq!(
            engine.get(keys::CF_DATA, b"k").expect("read"),
            Some(b"v".to_vec())
        );
        // The file read cached the block: memory answers now.
        let cached = engine.get_from_memory(keys::CF_DATA, b"k").expect("read");
        assert_eq!(cached, Some(Some(b"v".to_vec())));
    }
}
