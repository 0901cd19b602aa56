//! The range read shared by Range, IterateRange and Txn range ops (WIRE.md §5.1–5.2).

use flotilla_proto::keys::is_all_sentinel;
use flotilla_proto::mvcc::v1::KeyValue;
use prost::Message as _;

use crate::error::Result;
use crate::values::StoredValue;
use crate::view::{End, KvRead};

/// Largest encoded response message a stock gRPC client accepts (4 MiB): no page, Txn
/// response or returned set of previous values may be larger.
pub const MAX_RESPONSE_BYTES: usize = 4 * 1024 * 1024;

/// Room kept for everything of a response besides its key-values: the header (five
/// varints), `more`, `count`, and for a Txn `succeeded`.
pub const RESPONSE_OVERHEAD: usize = 128;

/// Room kept per op of a Txn response for the framing of its `ResponseOp`.
pub const TXN_OP_OVERHEAD: usize = 32;

/// The encoded bytes a response may still spend on key-values (each counted with its
/// protobuf framing), so the whole message stays within [`MAX_RESPONSE_BYTES`].
#[derive(Debug, Clone)]
pub struct ResponseBudget {
    remaining: usize,
    /// A standalone page takes its first pair even if it does not fit, so a (legacy)
    /// oversized value never stalls a scan; within a Txn nothing is forced.
    force_first: bool,
}

impl ResponseBudget {
    /// The budget of one Range or IterateRange page.
    pub fn page() -> Self {
        Self {
            remaining: MAX_RESPONSE_BYTES - RESPONSE_OVERHEAD,
            force_first: true,
        }
    }

    /// The budget of one Txn response with `ops` ops in its longer branch.
    pub fn txn(ops: usize) -> Self {
        Self {
            remaining: (MAX_RESPONSE_BYTES - RESPONSE_OVERHEAD)
                .saturating_sub(ops.saturating_mul(TXN_OP_OVERHEAD)),
            force_first: false,
        }
    }

    /// A budget of `bytes` (tests).
    pub fn of(bytes: usize) -> Self {
        Self {
            remaining: bytes,
            force_first: true,
        }
    }

    /// No limit: for outputs nobody reads (commands replicated from a leader cluster).
    pub fn unlimited() -> Self {
        Self {
            remaining: usize::MAX,
            force_first: true,
        }
    }

    /// Spends the framed size of `kv` if it fits (or if `first` and forcing is on).
    pub fn take(&mut self, kv: &KeyValue, first: bool) -> bool {
        let cost = framed_len(kv);
        if cost <= self.remaining {
            self.remaining -= cost;
            true
        } else if first && self.force_first {
            self.remaining = 0;
            true
        } else {
            false
        }
    }
}

/// Encoded size of `kv` as an element of a repeated field: tag, length, message.
pub fn framed_len(kv: &KeyValue) -> usize {
    let len = kv.encoded_len();
    1 + prost::encoding::encoded_len_varint(len as u64) + len
}

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

    /// Whether this reads one key (no `range_end`).
    pub fn is_point(&self) -> bool {
        self.range_end.is_empty()
    }

    /// The answer of a point query whose key holds `value`, spending from `budget`.
    pub fn point_page(&self, value: Option<StoredValue>, budget: &mut ResponseBudget) -> RangePage {
        let mut page = RangePage::default();
        if let Some(v) = value
            && self.matches(v.create_revision, v.mod_revision)
        {
            if self.count_only {
                page.count = 1;
            } else {
                let kv = self.to_kv(&self.key, &v);
                if budget.take(&kv, true) {
                    page.count = 1;
                    page.kvs.push(kv);
                } else {
                    page.more = true;
                }
            }
        }
        page
    }

    /// Reads one piece that fits `budget` (see [`ResponseBudget`]), spending from it.
    pub fn read_page(&self, view: &impl KvRead, budget: &mut ResponseBudget) -> Result<RangePage> {
        if self.is_point() {
            return Ok(self.point_page(view.get(&self.key)?, budget));
        }
        let mut page = RangePage::default();
        let limit = if self.limit == 0 {
            u64::MAX
        } else {
            self.limit
        };
        view.scan(self.start(), self.end(), &mut |key, v| {
            if !self.matches(v.create_revision, v.mod_revision) {
                return true;
            }
            if page.count >= limit {
                page.more = true;
                return false;
            }
            if !self.count_only {
                let kv = self.to_kv(key, v);
                if !budget.take(&kv, page.kvs.is_empty()) {
                    page.more = true;
                    page.resume_key = Some(key.to_vec());
                    return false;
                }
                page.kvs.push(kv);
            }
            page.count += 1;
            true
        })?;
        Ok(page)
    }

    fn to_kv(&self, key: &[u8], v: &StoredValue) -> KeyValue {
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
        let p = q("a", b"")
            .read_page(&v, &mut ResponseBudget::unlimited())
            .expect("read");
        assert_eq!((keys_of(&p), p.count, p.more), (vec!["a".into()], 1, false));
        assert_eq!(p.kvs[0].create_revision, 1);
        assert_eq!(p.kvs[0].mod_revision, 10);
        let p = q("zz", b"")
            .read_page(&v, &mut ResponseBudget::unlimited())
            .expect("read");
        assert_eq!((p.kvs.len(), p.count), (0, 0));
    }

    #[test]
    fn sentinels_select_whole_table() {
        let v = view(&["a", "b", "c"]);
        let p = q("\0", b"\0")
            .read_page(&v, &mut ResponseBudget::unlimited())
            .expect("read");
        assert_eq!(p.count, 3);
        let p = q("", b"c")
            .read_page(&v, &mut ResponseBudget::unlimited())
            .expect("read");
        assert_eq!(keys_of(&p), vec!["a", "b"]);
        let p = q("b", b"\0")
            .read_page(&v, &mut ResponseBudget::unlimited())
            .expect("read");
        assert_eq!(keys_of(&p), vec!["b", "c"]);
    }

    #[test]
    fn limit_sets_more_only_when_another_key_exists() {
        let v = view(&["a", "b", "c"]);
        let mut query = q("a", b"\0");
        query.limit = 2;
        let p = query
            .read_page(&v, &mut ResponseBudget::unlimited())
            .expect("read");
        assert_eq!((p.count, p.more), (2, true));
        query.limit = 3;
        let p = query
            .read_page(&v, &mut ResponseBudget::unlimited())
            .expect("read");
        assert_eq!((p.count, p.more), (3, false));
    }

    #[test]
    fn count_only_and_keys_only() {
        let v = view(&["a", "b", "c"]);
        let mut query = q("a", b"\0");
        query.count_only = true;
        query.limit = 2;
        let p = query
            .read_page(&v, &mut ResponseBudget::unlimited())
            .expect("read");
        assert_eq!((p.kvs.len(), p.count, p.more), (0, 2, true));
        let mut query = q("a", b"\0");
        query.keys_only = true;
        let p = query
            .read_page(&v, &mut ResponseBudget::unlimited())
            .expect("read");
        assert!(p.kvs.iter().all(|kv| kv.value.is_empty()));
    }

    /// Framed size of one pair of `view`: key 1 byte, value 4, both revisions < 128.
    const PAIR: usize = 2 + (2 + 1) + (2 + 4) + 2 + 2;

    #[test]
    fn byte_budget_pages_and_resumes_with_remaining_limit() {
        let v = view(&["a", "b", "c", "d"]);
        let mut query = q("a", b"\0");
        query.limit = 3;
        // a budget of two framed pairs fits two.
        let p1 = query
            .read_page(&v, &mut ResponseBudget::of(2 * PAIR))
            .expect("read");
        assert_eq!(
            (keys_of(&p1), p1.more),
            (vec!["a".into(), "b".into()], true)
        );
        let next = query.next_page(&p1).expect("next page");
        let p2 = next
            .read_page(&v, &mut ResponseBudget::of(2 * PAIR))
            .expect("read");
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
        let p = query
            .read_page(&v, &mut ResponseBudget::unlimited())
            .expect("read");
        assert_eq!(keys_of(&p), vec!["b"]);
    }
}
