//! One consistent view of a table, read from one RocksDB snapshot: its applied state, its
//! log's truncation point, every live pair and the deletes it remembers. Raft snapshots,
//! the replication export and digests walk a table through [`TableAt`]; read-only Txns
//! and IterateRange read through it (IterateRange through [`OwnedTableAt`], which lives
//! across pages), so none of them can see a torn state.

use flotilla_proto::mvcc::v1::KeyValue;
use rocksdb::ReadOptions;
use sha2::{Digest as _, Sha256};

use crate::applied::AppliedState;
use crate::engine::{Engine, iter_status};
use crate::error::{Error, Result};
use crate::keys;
use crate::range::{RangePage, RangeQuery, ResponseBudget};
use crate::values::StoredValue;
use crate::view::{DbSnapshot, DbView};

/// Table `id` as of one instant.
pub struct TableAt<'a> {
    engine: &'a Engine,
    snap: DbSnapshot<'a>,
    id: u64,
}

impl std::fmt::Debug for TableAt<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TableAt").field("id", &self.id).finish()
    }
}

/// A digest of a table's live data: equal digests mean equal keys, values and revisions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TableDigest {
    /// Live keys.
    pub keys: u64,
    /// SHA-256 over every pair in key order (key, value, both revisions, length-prefixed).
    pub sha256: [u8; 32],
    /// The applied state the data reflects (its leader index on a follower cluster).
    pub applied: AppliedState,
}

impl<'a> TableAt<'a> {
    /// Table `id` as of now.
    pub fn new(engine: &'a Engine, id: u64) -> Self {
        Self {
            engine,
            snap: engine.snapshot(),
            id,
        }
    }

    /// The table's id.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The encoded applied state, if the table has applied anything.
    pub fn applied_bytes(&self) -> Result<Option<Vec<u8>>> {
        Ok(self
            .snap
            .get_cf(self.engine.cf(keys::CF_META), keys::applied_key(self.id))?)
    }

    /// The applied state (the default for a table that applied nothing yet).
    pub fn applied(&self) -> Result<AppliedState> {
        match self.applied_bytes()? {
            Some(b) => AppliedState::decode(self.id, &b),
            None => Ok(AppliedState::default()),
        }
    }

    /// The last log index compaction removed (0 if none).
    pub fn truncated_index(&self) -> Result<u64> {
        let bytes = self
            .snap
            .get_cf(self.engine.cf(keys::CF_RAFT), keys::truncated_key(self.id))?;
        match bytes {
            None => Ok(0),
            Some(b) => crate::raft_storage::decode_truncated(self.id, &b).map(|(index, _)| index),
        }
    }

    /// A [`crate::view::KvRead`] over this instant.
    pub fn view(&self) -> DbView<'_> {
        DbView::at(self.engine, self.id, &self.snap)
    }

    fn options(&self, lower: Vec<u8>, upper: Vec<u8>) -> ReadOptions {
        let mut opts = ReadOptions::default();
        opts.set_snapshot(&self.snap);
        opts.set_iterate_lower_bound(lower);
        opts.set_iterate_upper_bound(upper);
        // A bulk read: do not evict what point reads keep warm.
        opts.fill_cache(false);
        opts
    }

    /// Visits every live pair in key order as stored (user key, encoded value) until
    /// `visit` returns false, which ends the walk with [`Error::ReceiverGone`].
    pub fn for_each_stored(&self, mut visit: impl FnMut(&[u8], &[u8]) -> bool) -> Result<()> {
        let opts = self.options(keys::table_start(self.id), keys::table_end(self.id));
        let mut iter = self.engine.raw_iter_opt(keys::CF_DATA, opts);
        iter.seek_to_first();
        while let (Some(k), Some(v)) = (iter.key(), iter.value()) {
            if !visit(keys::user_key(k), v) {
                return Err(Error::ReceiverGone);
            }
            iter.next();
        }
        iter_status(&iter)
    }

    /// Visits every live pair in key order, decoded, until `visit` returns false (then
    /// [`Error::ReceiverGone`]).
    pub fn for_each_pair(&self, mut visit: impl FnMut(KeyValue) -> bool) -> Result<()> {
        let id = self.id;
        let mut bad = None;
        let walked = self.for_each_stored(|key, bytes| {
            let Some(stored) = StoredValue::decode(bytes) else {
                bad = Some(Error::corrupt(
                    id,
                    format!("the value of key {:?}", String::from_utf8_lossy(key)),
                ));
                return false;
            };
            visit(KeyValue {
                key: key.to_vec(),
                create_revision: stored.create_revision as i64,
                mod_revision: stored.mod_revision as i64,
                value: stored.value,
            })
        });
        match bad {
            Some(e) => Err(e),
            None => walked,
        }
    }

    /// Visits the point deletes remembered after revision `since`, by revision: (revision,
    /// user key). `visit` returning false ends the walk with [`Error::ReceiverGone`].
    pub fn for_each_point_delete(
        &self,
        since: u64,
        mut visit: impl FnMut(u64, &[u8]) -> bool,
    ) -> Result<()> {
        let lower = keys::tombstone_key(self.id, since.saturating_add(1), &[]);
        let opts = self.options(lower, keys::tombstones_end(self.id));
        let mut iter = self.engine.raw_iter_opt(keys::CF_META, opts);
        iter.seek_to_first();
        while let Some(k) = iter.key() {
            let (revision, key) = keys::tombstone_parts(k)
                .ok_or_else(|| Error::corrupt(self.id, "a tombstone key"))?;
            if !visit(revision, key) {
                return Err(Error::ReceiverGone);
            }
            iter.next();
        }
        iter_status(&iter)
    }

    /// Visits the range deletes remembered after revision `since`, by revision:
    /// (revision, start, end; an empty end is the table's end).
    pub fn for_each_range_delete(
        &self,
        since: u64,
        mut visit: impl FnMut(u64, &[u8], &[u8]) -> bool,
    ) -> Result<()> {
        let lower = keys::range_tombstones_from(self.id, since.saturating_add(1));
        let opts = self.options(lower, keys::range_tombstones_end(self.id));
        let mut iter = self.engine.raw_iter_opt(keys::CF_META, opts);
        iter.seek_to_first();
        while let Some(k) = iter.key() {
            let (revision, start, end) = keys::range_tombstone_parts(k)
                .ok_or_else(|| Error::corrupt(self.id, "a range tombstone key"))?;
            if !visit(revision, start, end) {
                return Err(Error::ReceiverGone);
            }
            iter.next();
        }
        iter_status(&iter)
    }

    /// Whether `key` is live at this instant.
    pub fn is_live(&self, key: &[u8]) -> Result<bool> {
        Ok(self
            .snap
            .get_cf(self.engine.cf(keys::CF_DATA), keys::data_key(self.id, key))?
            .is_some())
    }

    /// The digest of the live data (see [`TableDigest`]).
    pub fn digest(&self) -> Result<TableDigest> {
        let mut hash = Sha256::new();
        let mut count = 0u64;
        self.for_each_pair(|kv| {
            count += 1;
            hash.update((kv.key.len() as u64).to_be_bytes());
            hash.update(&kv.key);
            hash.update((kv.value.len() as u64).to_be_bytes());
            hash.update(&kv.value);
            hash.update(kv.create_revision.to_be_bytes());
            hash.update(kv.mod_revision.to_be_bytes());
            true
        })?;
        Ok(TableDigest {
            keys: count,
            sha256: hash.finalize().into(),
            applied: self.applied()?,
        })
    }
}

self_cell::self_cell!(
    /// A RocksDB snapshot together with the engine handle it borrows.
    struct SnapshotCell {
        owner: Engine,
        #[covariant]
        dependent: DbSnapshot,
    }
);

/// Table `id` as of one instant, owning its snapshot: it can be kept across `await`s and
/// read from blocking tasks one page at a time (IterateRange). It pins the data of that
/// instant in RocksDB while it lives, so keep it only as long as the stream.
pub struct OwnedTableAt {
    cell: SnapshotCell,
    id: u64,
}

impl std::fmt::Debug for OwnedTableAt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OwnedTableAt")
            .field("id", &self.id)
            .finish()
    }
}

impl OwnedTableAt {
    /// Table `id` of `engine` as of now.
    pub fn new(engine: Engine, id: u64) -> Self {
        Self {
            cell: SnapshotCell::new(engine, |engine| engine.snapshot()),
            id,
        }
    }

    /// Reads one page of `query` at this instant (blocking).
    pub fn read_page(&self, query: &RangeQuery, budget: &mut ResponseBudget) -> Result<RangePage> {
        self.cell.with_dependent(|engine, snap| {
            query.read_page(&DbView::at(engine, self.id, snap), budget)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::view::{End, KvRead};
    use rocksdb::WriteBatch;

    fn put(engine: &Engine, key: &[u8], value: &[u8], rev: u64) {
        let mut b = WriteBatch::default();
        let v = StoredValue {
            create_revision: rev,
            mod_revision: rev,
            value: value.to_vec(),
        };
        b.put_cf(engine.cf(keys::CF_DATA), keys::data_key(9, key), v.encode());
        engine.write(b, false).expect("write");
    }

    #[test]
    fn a_view_and_its_digest_do_not_move_with_later_writes() {
        let dir = tempfile::tempdir().expect("dir");
        let engine = Engine::open(dir.path()).expect("open");
        put(&engine, b"a", b"1", 1);
        put(&engine, b"b", b"2", 2);
        let at = TableAt::new(&engine, 9);
        let before = at.digest().expect("digest");
        put(&engine, b"c", b"3", 3);
        assert_eq!(
            at.digest().expect("digest"),
            before,
            "pinned to its instant"
        );
        assert_eq!(before.keys, 2);
        let mut seen = 0;
        at.view()
            .scan(b"", End::TableEnd, &mut |_, _| {
                seen += 1;
                true
            })
            .expect("scan");
        assert_eq!(seen, 2);
        let now = TableAt::new(&engine, 9).digest().expect("digest");
        assert_ne!(now, before);
        assert_eq!(now.keys, 3);
        assert!(matches!(
            at.for_each_pair(|_| false),
            Err(Error::ReceiverGone)
        ));
    }

    #[test]
    fn an_owned_view_pages_from_one_instant() {
        let dir = tempfile::tempdir().expect("dir");
        let engine = Engine::open(dir.path()).expect("open");
        for i in 0..10u8 {
            put(&engine, &[b'a' + i], b"v", 1);
        }
        let owned = std::sync::Arc::new(OwnedTableAt::new(engine.clone(), 9));
        let query = RangeQuery {
            key: b"a".to_vec(),
            range_end: b"\0".to_vec(),
            limit: 4,
            ..Default::default()
        };
        let first = owned
            .read_page(&query, &mut ResponseBudget::page())
            .expect("page");
        for i in 0..10u8 {
            put(&engine, &[b'a' + i], b"changed", 2);
        }
        let reader = owned.clone();
        let second = std::thread::spawn(move || {
            let mut q = query.clone();
            q.key = b"e".to_vec();
            reader
                .read_page(&q, &mut ResponseBudget::page())
                .expect("page")
        })
        .join()
        .expect("thread");
        assert!(
            first
                .kvs
                .iter()
                .chain(&second.kvs)
                .all(|kv| kv.value == b"v"),
            "both pages read the instant the view was taken"
        );
    }
}
