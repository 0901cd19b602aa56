//! Reading one table's live keys: straight from RocksDB ([`DbView`]), or through the
//! uncommitted writes of the command being applied ([`Overlay`]), so that later ops of a
//! Txn or Sequence see what earlier ops wrote.

use std::collections::BTreeMap;
use std::ops::Bound;

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

/// Reads one table straight from the engine.
#[derive(Debug, Clone)]
pub struct DbView<'a> {
    engine: &'a Engine,
    table_id: u64,
}

impl<'a> DbView<'a> {
    /// A view of table `table_id`.
    pub fn new(engine: &'a Engine, table_id: u64) -> Self {
        Self { engine, table_id }
    }
}

fn decode(bytes: &[u8]) -> Result<StoredValue> {
    StoredValue::decode(bytes).ok_or_else(|| Error::Corrupt("stored value too short".into()))
}

impl KvRead for DbView<'_> {
    fn get(&self, key: &[u8]) -> Result<Option<StoredValue>> {
        self.engine
            .get(keys::CF_DATA, &keys::data_key(self.table_id, key))?
            .map(|b| decode(&b))
            .transpose()
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
        let mut iter = self.engine.iter(keys::CF_DATA, lower.clone(), upper);
        iter.seek(&lower);
        while iter.valid() {
            let (Some(k), Some(v)) = (iter.key(), iter.value()) else {
                break;
            };
            if !visit(keys::user_key(k), &decode(v)?) {
                return Ok(());
            }
            iter.next();
        }
        iter_status(&iter)
    }
}

/// Pending writes of the command being applied, layered over a base view.
/// `None` marks a key deleted by this command.
#[derive(Debug)]
pub struct Overlay<'a, R: KvRead> {
    base: &'a R,
    writes: BTreeMap<Vec<u8>, Option<StoredValue>>,
}

impl<'a, R: KvRead> Overlay<'a, R> {
    /// An empty overlay over `base`.
    pub fn new(base: &'a R) -> Self {
        Self {
            base,
            writes: BTreeMap::new(),
        }
    }

    /// Records a put of `key`.
    pub fn put(&mut self, key: Vec<u8>, value: StoredValue) {
        self.writes.insert(key, Some(value));
    }

    /// Records a delete of `key`.
    pub fn delete(&mut self, key: Vec<u8>) {
        self.writes.insert(key, None);
    }

    /// Discards all pending writes (a command that failed half-way leaves no trace).
    pub fn clear(&mut self) {
        self.writes.clear();
    }

    /// The pending writes, in key order.
    pub fn into_writes(self) -> BTreeMap<Vec<u8>, Option<StoredValue>> {
        self.writes
    }
}

impl<R: KvRead> KvRead for Overlay<'_, R> {
    fn get(&self, key: &[u8]) -> Result<Option<StoredValue>> {
        match self.writes.get(key) {
            Some(pending) => Ok(pending.clone()),
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
        let mut pending = self.writes.range::<[u8], _>(bounds).peekable();
        let mut stopped = false;
        // Merge: before each base key, emit pending writes that sort before it; a pending
        // write of the same key replaces (or hides) the base version.
        self.base.scan(start, end, &mut |key, value| {
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

    #[test]
    fn overlay_merges_puts_and_hides_deletes() {
        let mut base = MemView::default();
        for k in ["a", "c", "e"] {
            base.0.insert(k.as_bytes().to_vec(), sv(k));
        }
        let mut ov = Overlay::new(&base);
        ov.put(b"b".to_vec(), sv("B"));
        ov.put(b"c".to_vec(), sv("C"));
        ov.delete(b"e".to_vec());
        ov.put(b"f".to_vec(), sv("F"));
        let got = collect(&ov, b"", End::TableEnd);
        let want: Vec<(Vec<u8>, Vec<u8>)> = [("a", "a"), ("b", "B"), ("c", "C"), ("f", "F")]
            .iter()
            .map(|(k, v)| (k.as_bytes().to_vec(), v.as_bytes().to_vec()))
            .collect();
        assert_eq!(got, want);
        assert_eq!(collect(&ov, b"b", End::Key(b"d")).len(), 2);
        assert!(ov.get(b"e").expect("get").is_none());
        assert_eq!(
            ov.get(b"c").expect("get").map(|v| v.value),
            Some(b"C".to_vec())
        );
    }

    #[test]
    fn overlay_scan_stops_when_asked() {
        let mut base = MemView::default();
        base.0.insert(b"a".to_vec(), sv("a"));
        base.0.insert(b"c".to_vec(), sv("c"));
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
}
