//! The range read shared by Range, IterateRange and Txn range ops (WIRE.md §5.1–5.2).

use flotilla_proto::keys::is_all_sentinel;
use flotilla_proto::mvcc::v1::KeyValue;

use crate::error::Result;
use crate::view::{End, KvRead};

/// Largest sum of key and value bytes in one response piece: 4 MiB less 1 KiB of room
/// for framing, as Armada splits.
pub const RESPONSE_BYTE_BUDGET: usize = 4 * 1024 * 1024 - 1024;

/// What to read. Keys follow WIRE.md §5.1: empty `range_end` is a single key, `[0]` as
/// `range_end` means "to the end", `[0]` (or empty) as start with a range means "from the
/// first key".
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RangeQuery {
    /// Start key, or the single key.
    pub key: Vec<u8>,
    /// Exclusive end; see above.
    pub range_end: Vec<u8>,
    /// Most keys to return; 0 = unlimited.
    pub limit: u64,
    /// Return keys without values.
    pub keys_only: bool,
    /// Return only the count.
    pub count_only: bool,
    /// Revision filters; 0 = no bound.
    pub min_mod_revision: u64,
    /// See `min_mod_revision`.
    pub max_mod_revision: u64,
    /// See `min_mod_revision`.
    pub min_create_revision: u64,
    /// See `min_mod_revision`.
    pub max_create_revision: u64,
}

/// One piece of a range result.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RangePage {
    /// The pairs of this piece (empty for count_only).
    pub kvs: Vec<KeyValue>,
    /// Keys in this piece, or keys counted for count_only.
    pub count: u64,
    /// Another matching key exists after this piece (limit or size cut).
    pub more: bool,
    /// Where the next piece starts when the byte budget (not the limit) cut this one.
    pub resume_key: Option<Vec<u8>>,
}

impl RangeQuery {
    fn matches(&self, create: u64, modr: u64) -> bool {
        (self.min_mod_revision == 0 || modr >= self.min_mod_revision)
            && (self.max_mod_revision == 0 || modr <= self.max_mod_revision)
            && (self.min_create_revision == 0 || create >= self.min_create_revision)
            && (self.max_create_revision == 0 || create <= self.max_create_revision)
    }

    fn start(&self) -> &[u8] {
        if !self.range_end.is_empty() && is_all_sentinel(&self.key) {
            &[]
        } else {
            &self.key
        }
    }

    fn end(&self) -> End<'_> {
        if is_all_sentinel(&self.range_end) {
            End::TableEnd
        } else {
            End::Key(&self.range_end)
        }
    }

    /// Reads one piece of at most `byte_budget` key+value bytes (always at least one pair).
    pub fn read_page(&self, view: &impl KvRead, byte_budget: usize) -> Result<RangePage> {
        let mut page = RangePage::default();
        if self.range_end.is_empty() {
            if let Some(v) = view.get(&self.key)?
                && self.matches(v.create_revision, v.mod_revision)
            {
                page.count = 1;
                if !self.count_only {
                    page.kvs.push(self.to_kv(&self.key, &v));
                }
            }
            return Ok(page);
        }
        let limit = if self.limit == 0 {
            u64::MAX
        } else {
            self.limit
        };
        let mut bytes = 0usize;
        view.scan(self.start(), self.end(), &mut |key, v| {
            if !self.matches(v.create_revision, v.mod_revision) {
                return true;
            }
            if page.count >= limit {
                page.more = true;
                return false;
            }
            if !self.count_only {
                let size = key.len() + if self.keys_only { 0 } else { v.value.len() };
                if !page.kvs.is_empty() && bytes + size > byte_budget {
                    page.more = true;
                    page.resume_key = Some(key.to_vec());
                    return false;
                }
                bytes += size;
                page.kvs.push(self.to_kv(key, v));
            }
            page.count += 1;
            true
        })?;
        Ok(page)
    }

    fn to_kv(&self, key: &[u8], v: &crate::values::StoredValue) -> KeyValue {
        KeyValue {
            key: key.to_vec(),
            create_revision: v.create_revision as i64,
            mod_revision: v.mod_revision as i64,
            value: if self.keys_only {
                Vec::new()
            } else {
                v.value.clone()
            },
        }
    }

    /// The query for the piece after `page`, or `None` if `page` was the last.
    pub fn next_page(&self, page: &RangePage) -> Option<RangeQuery> {
        let resume = page.resume_key.as_ref()?;
        let mut next = self.clone();
        next.key = resume.clone();
        if next.limit != 0 {
            next.limit = next.limit.saturating_sub(page.count);
        }
        Some(next)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::values::StoredValue;
    use crate::view::MemView;

    fn view(keys: &[&str]) -> MemView {
        let mut v = MemView::default();
        for (i, k) in keys.iter().enumerate() {
            v.0.insert(
                k.as_bytes().to_vec(),
                StoredValue {
                    create_revision: i as u64 + 1,
                    mod_revision: i as u64 + 10,
                    value: vec![b'v'; 4],
                },
            );
        }
        v
    }

    fn keys_of(p: &RangePage) -> Vec<String> {
        p.kvs
            .iter()
            .map(|kv| String::from_utf8_lossy(&kv.key).into_owned())
            .collect()
    }

    fn q(key: &str, end: &[u8]) -> RangeQuery {
        RangeQuery {
            key: key.as_bytes().to_vec(),
            range_end: end.to_vec(),
            ..Default::default()
        }
    }

    #[test]
    fn single_key_and_missing_key() {
        let v = view(&["a", "b"]);
        let p = q("a", b"").read_page(&v, usize::MAX).expect("read");
        assert_eq!((keys_of(&p), p.count, p.more), (vec!["a".into()], 1, false));
        assert_eq!(p.kvs[0].create_revision, 1);
        assert_eq!(p.kvs[0].mod_revision, 10);
        let p = q("zz", b"").read_page(&v, usize::MAX).expect("read");
        assert_eq!((p.kvs.len(), p.count), (0, 0));
    }

    #[test]
    fn sentinels_select_whole_table() {
        let v = view(&["a", "b", "c"]);
        let p = q("\0", b"\0").read_page(&v, usize::MAX).expect("read");
        assert_eq!(p.count, 3);
        let p = q("", b"c").read_page(&v, usize::MAX).expect("read");
        assert_eq!(keys_of(&p), vec!["a", "b"]);
        let p = q("b", b"\0").read_page(&v, usize::MAX).expect("read");
        assert_eq!(keys_of(&p), vec!["b", "c"]);
    }

    #[test]
    fn limit_sets_more_only_when_another_key_exists() {
        let v = view(&["a", "b", "c"]);
        let mut query = q("a", b"\0");
        query.limit = 2;
        let p = query.read_page(&v, usize::MAX).expect("read");
        assert_eq!((p.count, p.more), (2, true));
        query.limit = 3;
        let p = query.read_page(&v, usize::MAX).expect("read");
        assert_eq!((p.count, p.more), (3, false));
    }

    #[test]
    fn count_only_and_keys_only() {
        let v = view(&["a", "b", "c"]);
        let mut query = q("a", b"\0");
        query.count_only = true;
        query.limit = 2;
        let p = query.read_page(&v, usize::MAX).expect("read");
        assert_eq!((p.kvs.len(), p.count, p.more), (0, 2, true));
        let mut query = q("a", b"\0");
        query.keys_only = true;
        let p = query.read_page(&v, usize::MAX).expect("read");
        assert!(p.kvs.iter().all(|kv| kv.value.is_empty()));
    }

    #[test]
    fn byte_budget_pages_and_resumes_with_remaining_limit() {
        let v = view(&["a", "b", "c", "d"]);
        let mut query = q("a", b"\0");
        query.limit = 3;
        // each pair is 1 + 4 bytes: a budget of 10 fits two.
        let p1 = query.read_page(&v, 10).expect("read");
        assert_eq!(
            (keys_of(&p1), p1.more),
            (vec!["a".into(), "b".into()], true)
        );
        let next = query.next_page(&p1).expect("next page");
        let p2 = next.read_page(&v, 10).expect("read");
        assert_eq!((keys_of(&p2), p2.more), (vec!["c".into()], true));
        assert!(
            next.next_page(&p2).is_none(),
            "limit, not size, ended page 2"
        );
    }

    #[test]
    fn revision_filters() {
        let v = view(&["a", "b", "c"]);
        let mut query = q("a", b"\0");
        query.min_mod_revision = 11;
        query.max_create_revision = 2;
        let p = query.read_page(&v, usize::MAX).expect("read");
        assert_eq!(keys_of(&p), vec!["b"]);
    }
}
