//! Key-range conventions of the Armada KV wire contract (WIRE.md §5.1), as pure functions.
//!
//! * A range is `[key, range_end)` in byte-wise lexicographic order.
//! * An empty `range_end` means "only `key`".
//! * A `range_end` of exactly one `0x00` byte ([`ALL_SENTINEL`]) means "every key `>= key`";
//!   `key = "\x00", range_end = "\x00"` means the whole table.
//! * User keys never contain `0x00`; the single-zero-byte sentinel is the only exception.
//! * Prefix scans are expressed by the client as `[prefix, prefix_end(prefix))`; the server
//!   does no prefix logic of its own.

/// The single-zero-byte sentinel: as `range_end` it means "to the end of the table", as start
/// key (Range and Txn Range ops only) it means "from the start of the table".
pub const ALL_SENTINEL: &[u8] = &[0];

/// Returns `true` if `b` is exactly the sentinel `"\x00"` (one zero byte, nothing else).
#[must_use]
pub fn is_all_sentinel(b: &[u8]) -> bool {
    b == ALL_SENTINEL
}

/// Returns `true` if `b` contains a `0x00` byte anywhere (such keys are rejected unless they are
/// the [`ALL_SENTINEL`] in a position where the sentinel is allowed).
#[must_use]
pub fn contains_null(b: &[u8]) -> bool {
    b.contains(&0)
}

/// Computes the client-style exclusive end of a prefix scan: trailing `0xFF` bytes are dropped
/// and the last remaining byte is incremented (`"aa"` → `"ab"`, `"a\xff"` → `"b"`).
///
/// When there is no such end (`prefix` is empty or consists only of `0xFF` bytes) the result is
/// [`ALL_SENTINEL`] (`vec![0]`), meaning "to the end of the table".
#[must_use]
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    match prefix.iter().rposition(|&b| b != 0xFF) {
        Some(i) => {
            let mut end = prefix[..=i].to_vec();
            end[i] += 1;
            end
        }
        None => ALL_SENTINEL.to_vec(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sentinel_is_exactly_one_zero_byte() {
        assert!(is_all_sentinel(b"\x00"));
        assert!(is_all_sentinel(&[0]));
        assert!(!is_all_sentinel(b""));
        assert!(!is_all_sentinel(b"\x00\x00"));
        assert!(!is_all_sentinel(b"\x00a"));
        assert!(!is_all_sentinel(b"a\x00"));
        assert!(!is_all_sentinel(b"\x01"));
        assert!(!is_all_sentinel(b"a"));
    }

    #[test]
    fn null_detection() {
        assert!(!contains_null(b""));
        assert!(!contains_null(b"abc"));
        assert!(!contains_null(&[0x01, 0xFF, 0x7F]));
        assert!(contains_null(b"\x00"));
        assert!(contains_null(b"a\x00b"));
        assert!(contains_null(b"ab\x00"));
        assert!(contains_null(b"\x00ab"));
    }

    #[test]
    fn prefix_end_increments_last_byte() {
        assert_eq!(prefix_end(b"aa"), b"ab".to_vec());
        assert_eq!(prefix_end(b"a"), b"b".to_vec());
        assert_eq!(prefix_end(&[0x01]), vec![0x02]);
        assert_eq!(prefix_end(&[0x61, 0xFE]), vec![0x61, 0xFF]);
    }

    #[test]
    fn prefix_end_drops_trailing_ff() {
        assert_eq!(prefix_end(b"a\xff"), b"b".to_vec());
        assert_eq!(prefix_end(b"a\xff\xff"), b"b".to_vec());
        assert_eq!(
            prefix_end(&[0x61, 0xFF, 0x62, 0xFF]),
            vec![0x61, 0xFF, 0x63]
        );
    }

    #[test]
    fn prefix_end_without_successor_is_sentinel() {
        assert_eq!(prefix_end(b""), vec![0]);
        assert_eq!(prefix_end(&[0xFF]), vec![0]);
        assert_eq!(prefix_end(&[0xFF, 0xFF, 0xFF]), vec![0]);
        assert!(is_all_sentinel(&prefix_end(b"")));
    }

    #[test]
    fn prefix_end_bounds_exactly_the_prefixed_keys() {
        let prefix = b"k\xff";
        let end = prefix_end(prefix);
        let inside: [&[u8]; 3] = [b"k\xff", b"k\xff\x00", b"k\xff\xff\xff"];
        for k in inside {
            assert!(
                k >= &prefix[..] && k < end.as_slice(),
                "{k:?} should be in range"
            );
        }
        let outside: [&[u8]; 3] = [b"k", b"k\xfe\xff", b"l"];
        for k in outside {
            assert!(
                !(k >= &prefix[..] && k < end.as_slice()),
                "{k:?} should be out of range"
            );
        }
    }
}
