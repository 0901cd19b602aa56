//! The byte layout of every key Flotilla writes to RocksDB. Nothing outside this module
//! builds or parses a storage key, so the layout can change in exactly one place.
//!
//! Every key starts with the owning table's numeric id as a big-endian `u64`, so a table
//! is one contiguous range in each column family and dropping it is a range delete.
//!
//! | family | key                                   | value                          |
//! |--------|---------------------------------------|--------------------------------|
//! | data   | `id ++ user_key`                      | [`crate::values::StoredValue`] |
//! | raft   | `id ++ 0x01 ++ index(be)`             | raft `Entry` (protobuf)        |
//! | raft   | `id ++ 0x02`                          | raft `HardState` (protobuf)    |
//! | raft   | `id ++ 0x03`                          | truncated log state            |
//! | meta   | `id ++ 0x01`                          | applied state                  |
//! | meta   | `id ++ 0x02`                          | raft `ConfState` (protobuf)    |
//! | meta   | `id ++ 0x03 ++ revision(be) ++ user_key` | empty: `user_key` was deleted at `revision` (leader tables; incremental snapshots) |
//! | meta   | `id ++ 0x04 ++ revision(be) ++ start ++ 0x00 ++ end` | empty: the live keys of `[start, end)` were deleted at `revision` (`end` empty: to the table's end) |
//! | meta   | `CATALOG_ID ++ 0x10 ++ name`          | table id (be)                  |
//! | meta   | `CATALOG_ID ++ 0x11 ++ id(be)`        | empty: a dropped table whose data still has to be removed |
//! | meta   | `CATALOG_ID ++ 0x12 ++ id(be)`        | table `id`'s data being replaced from a staged file (redone at start) |

/// Column family holding user keys and values.
pub const CF_DATA: &str = "data";
/// Column family holding raft log entries, hard state and truncation state.
pub const CF_RAFT: &str = "raft";
/// Column family holding applied state, conf state and the table catalog.
pub const CF_META: &str = "meta";
/// All column families Flotilla opens (besides RocksDB's mandatory `default`).
pub const COLUMN_FAMILIES: [&str; 3] = [CF_DATA, CF_RAFT, CF_META];

/// The catalog is itself a raft group; it uses id 0, which no table ever gets.
pub const CATALOG_ID: u64 = 0;

const RAFT_LOG: u8 = 0x01;
const RAFT_HARD_STATE: u8 = 0x02;
const RAFT_TRUNCATED: u8 = 0x03;
const META_APPLIED: u8 = 0x01;
const META_CONF_STATE: u8 = 0x02;
const META_TOMBSTONE: u8 = 0x03;
const META_RANGE_TOMBSTONE: u8 = 0x04;
const META_CATALOG_TABLE: u8 = 0x10;
const META_CATALOG_DROPPED: u8 = 0x11;
const META_REPLACE: u8 = 0x12;

fn with_id(id: u64, extra: usize) -> Vec<u8> {
    let mut key = Vec::with_capacity(8 + extra);
    key.extend_from_slice(&id.to_be_bytes());
    key
}

/// The first key of table `id` in any family.
pub fn table_start(id: u64) -> Vec<u8> {
    with_id(id, 0)
}

/// The first key after table `id` in any family (exclusive end of its range).
pub fn table_end(id: u64) -> Vec<u8> {
    match id.checked_add(1) {
        Some(next) => with_id(next, 0),
        // u64::MAX never exists as a table id (ids come from raft indexes), but stay total:
        None => vec![0xff; 9],
    }
}

/// Data-family key of `user_key` in table `id`.
pub fn data_key(id: u64, user_key: &[u8]) -> Vec<u8> {
    let mut key = with_id(id, user_key.len());
    key.extend_from_slice(user_key);
    key
}

/// The user key inside a data-family key (the table prefix removed).
pub fn user_key(data_key: &[u8]) -> &[u8] {
    data_key.get(8..).unwrap_or_default()
}

/// Raft-family key of log entry `index` of group `id`.
pub fn raft_log_key(id: u64, index: u64) -> Vec<u8> {
    let mut key = with_id(id, 9);
    key.push(RAFT_LOG);
    key.extend_from_slice(&index.to_be_bytes());
    key
}

/// Parses the index out of a raft log key, if it is one.
pub fn raft_log_index(key: &[u8]) -> Option<u64> {
    if key.len() != 17 || key[8] != RAFT_LOG {
        return None;
    }
    let bytes: [u8; 8] = key[9..17].try_into().ok()?;
    Some(u64::from_be_bytes(bytes))
}

/// Raft-family key of the hard state of group `id`.
pub fn hard_state_key(id: u64) -> Vec<u8> {
    suffixed(id, RAFT_HARD_STATE)
}

/// Raft-family key of the truncated-log state (index and term of the last compacted entry).
pub fn truncated_key(id: u64) -> Vec<u8> {
    suffixed(id, RAFT_TRUNCATED)
}

/// Meta-family key of the applied state of group `id`.
pub fn applied_key(id: u64) -> Vec<u8> {
    suffixed(id, META_APPLIED)
}

/// Meta-family key of the conf state of group `id`.
pub fn conf_state_key(id: u64) -> Vec<u8> {
    suffixed(id, META_CONF_STATE)
}

/// Meta-family key recording that `user_key` of table `id` was deleted at `revision`.
/// Tombstones sort by revision, so forgetting those up to a point is one range delete.
pub fn tombstone_key(id: u64, revision: u64, user_key: &[u8]) -> Vec<u8> {
    let mut key = suffixed(id, META_TOMBSTONE);
    key.reserve(8 + user_key.len());
    key.extend_from_slice(&revision.to_be_bytes());
    key.extend_from_slice(user_key);
    key
}

/// Exclusive end of table `id`'s point tombstones.
pub fn tombstones_end(id: u64) -> Vec<u8> {
    prefix_end(&suffixed(id, META_TOMBSTONE))
}

/// The revision and user key inside a [`tombstone_key`].
pub fn tombstone_parts(key: &[u8]) -> Option<(u64, &[u8])> {
    let revision = decode_u64(key.get(9..17)?)?;
    Some((revision, &key[17..]))
}

/// Meta-family key recording that the live keys of `[start, end)` of table `id` were
/// deleted at `revision` (`end` empty: to the end of the table). User keys never hold
/// 0x00, so it separates the two. Sorted by revision, like point tombstones.
pub fn range_tombstone_key(id: u64, revision: u64, start: &[u8], end: &[u8]) -> Vec<u8> {
    let mut key = suffixed(id, META_RANGE_TOMBSTONE);
    key.reserve(9 + start.len() + end.len());
    key.extend_from_slice(&revision.to_be_bytes());
    key.extend_from_slice(start);
    key.push(0);
    key.extend_from_slice(end);
    key
}

/// First [`range_tombstone_key`] of table `id` at or after `revision`.
pub fn range_tombstones_from(id: u64, revision: u64) -> Vec<u8> {
    let mut key = suffixed(id, META_RANGE_TOMBSTONE);
    key.extend_from_slice(&revision.to_be_bytes());
    key
}

/// Exclusive end of table `id`'s range tombstones.
pub fn range_tombstones_end(id: u64) -> Vec<u8> {
    prefix_end(&suffixed(id, META_RANGE_TOMBSTONE))
}

/// The revision, start and end inside a [`range_tombstone_key`].
pub fn range_tombstone_parts(key: &[u8]) -> Option<(u64, &[u8], &[u8])> {
    let revision = decode_u64(key.get(9..17)?)?;
    let rest = key.get(17..)?;
    let split = rest.iter().position(|b| *b == 0)?;
    Some((revision, &rest[..split], &rest[split + 1..]))
}

/// Meta-family key of the catalog entry for table `name`.
pub fn catalog_table_key(name: &[u8]) -> Vec<u8> {
    let mut key = suffixed(CATALOG_ID, META_CATALOG_TABLE);
    key.extend_from_slice(name);
    key
}

/// Prefix of all catalog table entries (for listing).
pub fn catalog_table_prefix() -> Vec<u8> {
    suffixed(CATALOG_ID, META_CATALOG_TABLE)
}

/// Meta-family key marking table `id` as dropped but not yet erased.
pub fn catalog_dropped_key(id: u64) -> Vec<u8> {
    let mut key = suffixed(CATALOG_ID, META_CATALOG_DROPPED);
    key.extend_from_slice(&id.to_be_bytes());
    key
}

/// Prefix of all dropped-table markers.
pub fn catalog_dropped_prefix() -> Vec<u8> {
    suffixed(CATALOG_ID, META_CATALOG_DROPPED)
}

/// Meta-family key marking that table `id`'s data is being replaced from a staged file
/// (a raft snapshot or a loaded leader snapshot): redone when the node opens.
pub fn replace_marker_key(id: u64) -> Vec<u8> {
    let mut key = suffixed(CATALOG_ID, META_REPLACE);
    key.extend_from_slice(&id.to_be_bytes());
    key
}

/// Prefix of all replace markers.
pub fn replace_marker_prefix() -> Vec<u8> {
    suffixed(CATALOG_ID, META_REPLACE)
}

/// The table id inside a dropped-table or replace marker key.
pub fn marker_id(key: &[u8]) -> Option<u64> {
    decode_u64(key.get(9..)?)
}

fn suffixed(id: u64, tag: u8) -> Vec<u8> {
    let mut key = with_id(id, 1);
    key.push(tag);
    key
}

/// Exclusive end for all keys that start with `prefix` (none of our prefixes end in 0xff).
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0xff; prefix.len() + 1]
}

/// Decodes a big-endian u64 value, if it has exactly 8 bytes.
pub fn decode_u64(bytes: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(bytes.try_into().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_are_contiguous_and_ordered() {
        let a = data_key(7, b"zzz");
        let b = data_key(8, b"");
        assert!(a < b);
        assert!(table_start(7) <= data_key(7, b""));
        assert!(data_key(7, &[0xff; 4]) < table_end(7));
        assert_eq!(user_key(&a), b"zzz");
    }

    #[test]
    fn log_keys_sort_by_index_and_round_trip() {
        assert!(raft_log_key(3, 9) < raft_log_key(3, 10));
        assert!(raft_log_key(3, u64::MAX) < hard_state_key(3));
        assert_eq!(raft_log_index(&raft_log_key(3, 42)), Some(42));
        assert_eq!(raft_log_index(&hard_state_key(3)), None);
    }

    #[test]
    fn tombstones_sort_by_revision_and_stay_in_their_table() {
        let a = tombstone_key(4, 9, b"zz");
        let b = tombstone_key(4, 10, b"a");
        assert!(a < b && b < tombstones_end(4));
        assert!(applied_key(4) < tombstone_key(4, 0, b""));
        assert!(tombstones_end(4) <= table_end(4));
        assert_eq!(tombstone_parts(&b), Some((10, &b"a"[..])));
        assert_eq!(
            tombstone_parts(&tombstone_key(4, 1, b"")),
            Some((1, &b""[..]))
        );
    }

    #[test]
    fn range_tombstones_round_trip_sort_by_revision_and_follow_point_ones() {
        let a = range_tombstone_key(4, 9, b"a", b"zz");
        let b = range_tombstone_key(4, 10, b"", b"");
        assert!(tombstones_end(4) <= range_tombstones_from(4, 0));
        assert!(range_tombstones_from(4, 9) <= a && a < range_tombstones_from(4, 10));
        assert!(a < b && b < range_tombstones_end(4) && range_tombstones_end(4) <= table_end(4));
        assert_eq!(range_tombstone_parts(&a), Some((9, &b"a"[..], &b"zz"[..])));
        assert_eq!(range_tombstone_parts(&b), Some((10, &b""[..], &b""[..])));
        assert_eq!(range_tombstone_parts(&tombstone_key(4, 1, b"x")), None);
    }

    #[test]
    fn catalog_keys_stay_inside_the_catalog_range() {
        let k = catalog_table_key(b"\xff\xff");
        assert!(k >= table_start(CATALOG_ID) && k < table_end(CATALOG_ID));
        assert!(catalog_dropped_key(5) < prefix_end(&catalog_dropped_prefix()));
        assert!(catalog_table_key(b"t") < prefix_end(&catalog_table_prefix()));
        let m = replace_marker_key(77);
        assert!(m >= replace_marker_prefix() && m < prefix_end(&replace_marker_prefix()));
        assert_eq!(marker_id(&m), Some(77));
        assert_eq!(marker_id(&catalog_dropped_key(5)), Some(5));
    }
}
