//! Reading one table's live keys: straight from RocksDB ([`DbView`], optionally pinned to
//! one RocksDB snapshot so that every read sees the same instant), or through the
//! uncommitted writes of the command being applied ([`Overlay`]), so that later ops of a
//! Txn or Sequence see what earlier ops wrote.

use std::collections::BTreeMap;
use std::ops::Bound;

use rocksdb::{DB, ReadOptions, SnapshotWithThreadMode};

use crate::engine::{Engine, iter_status};
use crate::error::{Error, Result};
use crate::keys;
use crate::values::StoredValue;

/// Where a scan stops: before `Key(k)` or at the end of the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End<'a> {
    /// Exclusive end key.
    Key(&'a [u8]),
    /// Up to the last key of the table.
    TableEnd,
}

/// Inclusive start and end bounds of a key range, as `BTreeMap::range` takes them.
type KeyBounds<'s> = (Bound<&'s [u8]>, Bound<&'s [u8]>);

impl<'a> End<'a> {
    /// `[start, self)` as map range bounds; `None` when the range is empty.
    fn bounds_from<'s>(self, start: &'s [u8]) -> Option<KeyBounds<'s>>
    where
        'a: 's,
    {
        match self {
            End::Key(k) if k <= start => None,
            End::Key(k) => Some((Bound::Included(start), Bound::Excluded(k))),
            End::TableEnd => Some((Bound::Included(start), Bound::Unbounded)),
        }
    }

    /// Whether `key` is before this end.
    fn above(self, key: &[u8]) -> bool {
        match self {
            End::Key(k) => key < k,
            End::TableEnd => true,
        }
    }
}

/// Read access to the latest live state of one table.
pub trait KvRead {
    /// The live value of `key`, if any.
    fn get(&self, key: &[u8]) -> Result<Option<StoredValue>>;
    /// Visits live keys in `[start, end)` in ascending order until `visit` returns false.
    fn scan(
        &self,
        start: &[u8],
        end: End<'_>,
        visit: &mut dyn FnMut(&[u8], &StoredValue) -> bool,
    ) -> Result<()>;
}

/// A RocksDB snapshot of the node's database.
pub type DbSnapshot<'a> = SnapshotWithThreadMode<'a, DB>;

/// Reads one table straight from the engine, at the latest state or at one snapshot.
#[derive(Clone)]
pub struct DbView<'a> {
    engine: &'a Engine,
    table_id: u64,
    snapshot: Option<&'a DbSnapshot<'a>>,
}

impl std::fmt::Debug for DbView<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DbView")
            .field("table_id", &self.table_id)
            .field("pinned", &self.snapshot.is_some())
            .finish()
    }
}

impl<'a> DbView<'a> {
    /// A view of table `table_id` at its latest state.
    pub fn new(engine: &'a Engine, table_id: u64) -> Self {
        Self {
            engine,
            table_id,
            snapshot: None,
        }
    }

    /// A view of table `table_id` as of `snapshot`: every read sees that instant.
    pub fn at(engine: &'a Engine, table_id: u64, snapshot: &'a DbSnapshot<'a>) -> Self {
        Self {
            engine,
            table_id,
            snapshot: Some(snapshot),
        }
    }

    fn decode(&self, key: &[u8], bytes: &[u8]) -> Result<StoredValue> {
        decode_stored(self.table_id, key, bytes)
    }
}

/// Decodes the stored value of `key` in table `table_id`; too few bytes is corruption
/// naming the table and key, never a default.
pub(crate) fn decode_stored(table_id: u64, key: &[u8], bytes: &[u8]) -> Result<StoredValue> {
    StoredValue::decode(bytes).ok_or_else(|| {
        Error::corrupt(
            table_id,
            format!(
                "the value of key {:?} is {} bytes, too short for its revisions",
                String::from_utf8_lossy(key),
                bytes.len()
            ),
        )
    })
}

impl KvRead for DbView<'_> {
    fn get(&self, key: &[u8]) -> Result<Option<StoredValue>> {
        let dkey = keys::data_key(self.table_id, key);
        let bytes = match self.snapshot {
            Some(snap) => snap.get_cf(self.engine.cf(keys::CF_DATA), dkey)?,
            None => self.engine.get(keys::CF_DATA, &dkey)?,
        };
        bytes.map(|b| self.decode(key, &b)).transpose()
    }

    fn scan(
        &self,
        start: &[u8],
        end: End<'_>,
        visit: &mut dyn FnMut(&[u8], &StoredValue) -> bool,
    ) -> Result<()> {
        let lower = keys::data_key(self.table_id, start);
        let upper = match end {
            End::Key(k) => keys::data_key(self.table_id, k),
            End::TableEnd => keys::table_end(self.table_id),
        };
        if lower >= upper {
            return Ok(());
        }
        let mut opts = ReadOptions::default();
        opts.set_iterate_lower_bound(lower.clone());
        opts.set_iterate_upper_bound(upper);
        if let Some(snap) = self.snapshot {
            opts.set_snapshot(snap);
        }
        let mut iter = self.engine.raw_iter_opt(keys::CF_DATA, opts);
        iter.seek(&lower);
        while iter.valid() {
            let (Some(k), Some(v)) = (iter.key(), iter.value()) else {
                break;
            };
            let user_key = keys::user_key(k);
            if !visit(user_key, &self.decode(user_key, v)?) {
                return Ok(());
            }
            iter.next();
        }
        iter_status(&iter)
    }
}

/// An exclusive range end owned by the overlay: `None` is the end of the table.
type OwnedEnd = Option<Vec<u8>>;

fn as_end(end: &OwnedEnd) -> End<'_> {
    match end {
        Some(k) => End::Key(k),
        None => End::TableEnd,
    }
}

fn end_le(a: &OwnedEnd, b: &OwnedEnd) -> bool {
    match (a, b) {
        (_, None) => true,
        (None, Some(_)) => false,
        (Some(a), Some(b)) => a <= b,
    }
}

/// What a command's overlay leaves to write: range deletes first, then the key writes
/// (`None`: a point delete), which are all newer than every range delete covering them.
#[derive(Debug, Default)]
pub struct OverlayWrites {
    /// Deleted ranges `[start, end)`, disjoint and sorted; `None` ends at the table end.
    pub ranges: Vec<(Vec<u8>, OwnedEnd)>,
    /// Writes by key.
    pub writes: BTreeMap<Vec<u8>, Option<StoredValue>>,
}

/// Pending writes of the command being applied, layered over a base view: key writes
/// (`None` marks a key deleted by this command) and deleted ranges.
#[derive(Debug)]
pub struct Overlay<'a, R: KvRead> {
    base: &'a R,
    pending: OverlayWrites,
}

impl<'a, R: KvRead> Overlay<'a, R> {
    /// An empty overlay over `base`.
    pub fn new(base: &'a R) -> Self {
        Self {
            base,
            pending: OverlayWrites::default(),
        }
    }

    /// Records a put of `key`.
    pub fn put(&mut self, key: Vec<u8>, value: StoredValue) {
        self.pending.writes.insert(key, Some(value));
    }

    /// Records a delete of `key`.
    pub fn delete(&mut self, key: Vec<u8>) {
        self.pending.writes.insert(key, None);
    }

    /// Records the deletion of every key in `[start, end)` without reading them: one
    /// range delete in storage, however many keys the range holds.
    pub fn delete_range(&mut self, start: &[u8], end: End<'_>) {
        let end: OwnedEnd = match end {
            End::Key(k) if k <= start => return,
            End::Key(k) => Some(k.to_vec()),
            End::TableEnd => None,
        };
        let covered: Vec<Vec<u8>> = self
            .pending
            .writes
            .range::<[u8], _>((Bound::Included(start), bound_of(&end)))
            .map(|(k, _)| k.clone())
            .collect();
        for key in covered {
            self.pending.writes.remove(&key);
        }
        // Merge into the disjoint, sorted list.
        let (mut start, mut end) = (start.to_vec(), end);
        let mut kept = Vec::with_capacity(self.pending.ranges.len() + 1);
        for (s, e) in std::mem::take(&mut self.pending.ranges) {
            let overlaps = end_le(&Some(s.clone()), &end) && end_le(&Some(start.clone()), &e);
            if overlaps {
                start = start.min(s);
                if end_le(&end, &e) {
                    end = e;
                }
            } else {
                kept.push((s, e));
            }
        }
        kept.push((start, end));
        kept.sort_by(|a, b| a.0.cmp(&b.0));
        self.pending.ranges = kept;
    }

    /// Discards all pending writes (a command that failed half-way leaves no trace).
    pub fn clear(&mut self) {
        self.pending = OverlayWrites::default();
    }

    /// The pending writes.
    pub fn into_writes(self) -> OverlayWrites {
        self.pending
    }

    fn in_deleted_range(&self, key: &[u8]) -> bool {
        self.pending
            .ranges
            .iter()
            .any(|(s, e)| s.as_slice() <= key && as_end(e).above(key))
    }

    /// The parts of `[start, end)` that no deleted range covers, in order.
    fn live_intervals(&self, start: &[u8], end: End<'_>) -> Vec<(Vec<u8>, OwnedEnd)> {
        let mut out = Vec::new();
        let mut from: Option<Vec<u8>> = Some(start.to_vec());
        let end_owned: OwnedEnd = match end {
            End::Key(k) => Some(k.to_vec()),
            End::TableEnd => None,
        };
        for (s, e) in &self.pending.ranges {
            let Some(cur) = from.clone() else { break };
            if end_le(&end_owned, &Some(s.clone())) {
                break; // this and later ranges start after the scan's end
            }
            if end_le(e, &Some(cur.clone())) {
                continue; // ends before the cursor
            }
            if s.as_slice() > cur.as_slice() {
                out.push((cur, Some(s.clone())));
            }
            from = e.clone();
        }
        if let Some(cur) = from
            && !end_le(&end_owned, &Some(cur.clone()))
        {
            out.push((cur, end_owned));
        }
        out
    }
}

fn bound_of(end: &OwnedEnd) -> Bound<&[u8]> {
    match end {
        Some(k) => Bound::Excluded(k.as_slice()),
        None => Bound::Unbounded,
    }
}

impl<R: KvRead> KvRead for Overlay<'_, R> {
    fn get(&self, key: &[u8]) -> Result<Option<StoredValue>> {
        match self.pending.writes.get(key) {
            Some(pending) => Ok(pending.clone()),
            None if self.in_deleted_range(key) => Ok(None),
            None => self.base.get(key),
        }
    }

    fn scan(
        &self,
        start: &[u8],
        end: End<'_>,
        visit: &mut dyn FnMut(&[u8], &StoredValue) -> bool,
    ) -> Result<()> {
        let Some(bounds) = end.bounds_from(start) else {
            return Ok(());
        };
        let mut pending = self.pending.writes.range::<[u8], _>(bounds).peekable();
        let mut stopped = false;
        // Merge: before each base key, emit pending writes that sort before it; a pending
        // write of the same key replaces (or hides) the base version. Base keys come only
        // from the parts of the range no deleted range covers.
        for (from, to) in self.live_intervals(start, end) {
            self.base.scan(&from, as_end(&to), &mut |key, value| {
                while let Some((pk, pv)) = pending.peek() {
                    if pk.as_slice() >= key {
                        break;
                    }
                    if let Some(v) = pv
                        && !visit(pk, v)
                    {
                        stopped = true;
                        return false;
                    }
                    pending.next();
                }
                if let Some((pk, pv)) = pending.peek()
                    && pk.as_slice() == key
                {
                    let keep_going = match pv {
                        Some(v) => visit(key, v),
                        None => true,
                    };
                    pending.next();
                    stopped = !keep_going;
                    return keep_going;
                }
                let keep_going = visit(key, value);
                stopped = !keep_going;
                keep_going
            })?;
            if stopped {
                return Ok(());
            }
        }
        for (pk, pv) in pending {
            if let Some(v) = pv
                && !visit(pk, v)
            {
                break;
            }
        }
        Ok(())
    }
}

/// A plain in-memory table, the model for tests of everything built on [`KvRead`].
#[cfg(test)]
#[derive(Debug, Default)]
pub struct MemView(pub BTreeMap<Vec<u8>, StoredValue>);

#[cfg(test)]
impl KvRead for MemView {
    fn get(&self, key: &[u8]) -> Result<Option<StoredValue>> {
        Ok(self.0.get(key).cloned())
    }

    fn scan(
        &self,
        start: &[u8],
        end: End<'_>,
        visit: &mut dyn FnMut(&[u8], &StoredValue) -> bool,
    ) -> Result<()> {
        let Some(bounds) = end.bounds_from(start) else {
            return Ok(());
        };
        for (k, v) in self.0.range::<[u8], _>(bounds) {
            if !visit(k, v) {
                break;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sv(v: &str) -> StoredValue {
        StoredValue {
            create_revision: 1,
            mod_revision: 1,
            value: v.as_bytes().to_vec(),
        }
    }

    fn collect(r: &impl KvRead, start: &[u8], end: End<'_>) -> Vec<(Vec<u8>, Vec<u8>)> {
        let mut out = Vec::new();
        r.scan(start, end, &mut |k, v| {
            out.push((k.to_vec(), v.value.clone()));
            true
        })
        .expect("scan");
        out
    }

    fn base(keys: &[&str]) -> MemView {
        let mut base = MemView::default();
        for k in keys {
            base.0.insert(k.as_bytes().to_vec(), sv(k));
        }
        base
    }

    fn pairs(kv: &[(&str, &str)]) -> Vec<(Vec<u8>, Vec<u8>)> {
        kv.iter()
            .map(|(k, v)| (k.as_bytes().to_vec(), v.as_bytes().to_vec()))
            .collect()
    }

    #[test]
    fn overlay_merges_puts_and_hides_deletes() {
        let base = base(&["a", "c", "e"]);
        let mut ov = Overlay::new(&base);
        ov.put(b"b".to_vec(), sv("B"));
        ov.put(b"c".to_vec(), sv("C"));
        ov.delete(b"e".to_vec());
        ov.put(b"f".to_vec(), sv("F"));
        let got = collect(&ov, b"", End::TableEnd);
        assert_eq!(
            got,
            pairs(&[("a", "a"), ("b", "B"), ("c", "C"), ("f", "F")])
        );
        assert_eq!(collect(&ov, b"b", End::Key(b"d")).len(), 2);
        assert!(ov.get(b"e").expect("get").is_none());
        assert_eq!(
            ov.get(b"c").expect("get").map(|v| v.value),
            Some(b"C".to_vec())
        );
    }

    #[test]
    fn overlay_scan_stops_when_asked() {
        let base = base(&["a", "c"]);
        let mut ov = Overlay::new(&base);
        ov.put(b"b".to_vec(), sv("b"));
        ov.put(b"d".to_vec(), sv("d"));
        let mut seen = 0;
        ov.scan(b"", End::TableEnd, &mut |_, _| {
            seen += 1;
            seen < 2
        })
        .expect("scan");
        assert_eq!(seen, 2);
    }

    #[test]
    fn deleted_ranges_hide_base_keys_and_earlier_writes_but_not_later_ones() {
        let base = base(&["a", "b", "c", "d", "e", "f"]);
        let mut ov = Overlay::new(&base);
        ov.put(b"bb".to_vec(), sv("BB"));
        ov.delete_range(b"b", End::Key(b"d"));
        ov.put(b"c".to_vec(), sv("C"));
        ov.delete_range(b"e", End::TableEnd);
        ov.delete_range(b"cc", End::Key(b"e")); // joins the two
        assert_eq!(
            collect(&ov, b"", End::TableEnd),
            pairs(&[("a", "a"), ("c", "C")])
        );
        assert_eq!(ov.get(b"b").expect("get"), None);
        assert_eq!(ov.get(b"bb").expect("get"), None);
        assert_eq!(ov.get(b"f").expect("get"), None);
        assert!(ov.get(b"a").expect("get").is_some());
        let writes = ov.into_writes();
        assert_eq!(
            writes.ranges,
            vec![(b"b".to_vec(), None)],
            "[b, d), [cc, e) and [e, end) overlap into one"
        );
        assert_eq!(
            writes.writes.len(),
            1,
            "only the put after the ranges is left"
        );
    }

    #[test]
    fn pinned_views_read_one_instant() {
        let dir = tempfile::tempdir().expect("dir");
        let engine = Engine::open(dir.path()).expect("open");
        let write = |k: &[u8], v: &str| {
            let mut b = rocksdb::WriteBatch::default();
            b.put_cf(
                engine.cf(keys::CF_DATA),
                keys::data_key(3, k),
                sv(v).encode(),
            );
            engine.write(b, false).expect("write");
        };
        write(b"a", "1");
        let snap = engine.snapshot();
        write(b"a", "2");
        write(b"b", "2");
        let pinned = DbView::at(&engine, 3, &snap);
        assert_eq!(collect(&pinned, b"", End::TableEnd), pairs(&[("a", "1")]));
        let latest = DbView::new(&engine, 3);
        assert_eq!(
            collect(&latest, b"", End::TableEnd),
            pairs(&[("a", "2"), ("b", "2")])
        );
        let mut b = rocksdb::WriteBatch::default();
        b.put_cf(engine.cf(keys::CF_DATA), keys::data_key(3, b"bad"), [1u8]);
        engine.write(b, false).expect("write");
        assert!(matches!(
            latest.get(b"bad"),
            Err(Error::Corrupt { table: 3, .. })
        ));
    }
}
