//! Request checks of the KV service, in Armada's order and with its messages (WIRE.md
//! §5.1, §5.6). Everything here is pure, so it is tested without a server.

use flotilla_proto::keys::{contains_null, is_all_sentinel};
use flotilla_proto::mvcc::v1::{Compare, RequestOp, request_op};
use flotilla_proto::regatta::v1::{DeleteRangeRequest, PutRequest, RangeRequest, TxnRequest};
use tonic::Status;

/// Longest key accepted.
pub const MAX_KEY_BYTES: usize = 1024;
/// Largest value accepted by Put.
pub const MAX_VALUE_BYTES: usize = 2 * 1024 * 1024;

fn bad(msg: &str) -> Status {
    Status::invalid_argument(msg)
}

fn check_table(table: &[u8]) -> Result<(), Status> {
    if table.is_empty() {
        return Err(bad("table must be set"));
    }
    Ok(())
}

/// `key` may not contain 0x00, unless it is exactly the sentinel and `sentinel_ok`.
fn check_key(key: &[u8], sentinel_ok: bool) -> Result<(), Status> {
    if contains_null(key) && !(sentinel_ok && is_all_sentinel(key)) {
        return Err(bad("key must not contain null bytes"));
    }
    if key.len() > MAX_KEY_BYTES {
        return Err(Status::failed_precondition(
            "key length exceeded max allowed value",
        ));
    }
    Ok(())
}

/// `range_end` may not contain 0x00 unless it is exactly the sentinel ("to the end").
fn check_range_end(end: &[u8]) -> Result<(), Status> {
    if contains_null(end) && !is_all_sentinel(end) {
        return Err(bad("range_end must not contain null bytes"));
    }
    if end.len() > MAX_KEY_BYTES {
        return Err(Status::failed_precondition(
            "key length exceeded max allowed value",
        ));
    }
    Ok(())
}

/// Checks a Range (`streaming = false`) or IterateRange (`streaming = true`) request.
pub fn range(req: &RangeRequest, streaming: bool) -> Result<(), Status> {
    if req.limit < 0 {
        return Err(bad("limit must be a positive number"));
    }
    if req.keys_only && req.count_only {
        return Err(bad(
            "keys_only and count_only must not be set at the same time",
        ));
    }
    for (name, v) in [
        ("min_mod_revision", req.min_mod_revision),
        ("max_mod_revision", req.max_mod_revision),
        ("min_create_revision", req.min_create_revision),
        ("max_create_revision", req.max_create_revision),
    ] {
        if v < 0 {
            return Err(Status::invalid_argument(format!(
                "{name} must not be negative"
            )));
        }
    }
    check_table(&req.table)?;
    if req.key.is_empty() && (streaming || req.range_end.is_empty()) {
        return Err(bad("key must be set"));
    }
    check_key(&req.key, !streaming)?;
    check_range_end(&req.range_end)
}

/// Checks a Put request.
pub fn put(req: &PutRequest) -> Result<(), Status> {
    check_table(&req.table)?;
    if req.key.is_empty() {
        return Err(bad("key must be set"));
    }
    check_key(&req.key, false)?;
    if req.value.len() > MAX_VALUE_BYTES {
        return Err(Status::failed_precondition(
            "value length exceeded max allowed value",
        ));
    }
    Ok(())
}

/// Checks a DeleteRange request.
pub fn delete_range(req: &DeleteRangeRequest) -> Result<(), Status> {
    check_table(&req.table)?;
    if req.key.is_empty() {
        return Err(bad("key must be set"));
    }
    check_key(&req.key, false)?;
    check_range_end(&req.range_end)
}

/// Most compares, and most ops in either branch, of one Txn (etcd's default limit):
/// a Txn runs on every replica inside one apply, so what it may do is bounded.
pub const MAX_TXN_OPS: usize = 128;

/// Checks a Txn request: table set, at most [`MAX_TXN_OPS`] compares and ops per branch,
/// no stray 0x00 in any compare key, and every op checked exactly like its single-op
/// form (a Put with an empty key must not reach the log: replicas could not load it).
pub fn txn(req: &TxnRequest) -> Result<(), Status> {
    check_table(&req.table)?;
    for (what, n) in [
        ("compares", req.compare.len()),
        ("success ops", req.success.len()),
        ("failure ops", req.failure.len()),
    ] {
        if n > MAX_TXN_OPS {
            return Err(Status::invalid_argument(format!(
                "too many {what} in the Txn: {n} > {MAX_TXN_OPS}"
            )));
        }
    }
    for cmp in &req.compare {
        compare(cmp)?;
    }
    for op in req.success.iter().chain(&req.failure) {
        request_op(op)?;
    }
    Ok(())
}

fn compare(cmp: &Compare) -> Result<(), Status> {
    check_key(&cmp.key, false)?;
    check_range_end(&cmp.range_end)
}

fn request_op(op: &RequestOp) -> Result<(), Status> {
    match &op.request {
        Some(request_op::Request::RequestRange(r)) => {
            if r.limit < 0 {
                return Err(bad("limit must be a positive number"));
            }
            if r.keys_only && r.count_only {
                return Err(bad(
                    "keys_only and count_only must not be set at the same time",
                ));
            }
            if r.key.is_empty() && r.range_end.is_empty() {
                return Err(bad("key must be set"));
            }
            check_key(&r.key, true)?;
            check_range_end(&r.range_end)
        }
        Some(request_op::Request::RequestPut(p)) => {
            if p.key.is_empty() {
                return Err(bad("key must be set"));
            }
            check_key(&p.key, false)?;
            if p.value.len() > MAX_VALUE_BYTES {
                return Err(Status::failed_precondition(
                    "value length exceeded max allowed value",
                ));
            }
            Ok(())
        }
        Some(request_op::Request::RequestDeleteRange(d)) => {
            if d.key.is_empty() {
                return Err(bad("key must be set"));
            }
            check_key(&d.key, false)?;
            check_range_end(&d.range_end)
        }
        None => Ok(()),
    }
}

/// True when no op of either branch writes: such a Txn is served as a read.
pub fn is_read_only(req: &TxnRequest) -> bool {
    req.success
        .iter()
        .chain(&req.failure)
        .all(|op| matches!(op.request, Some(request_op::Request::RequestRange(_))))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::Code;

    fn rr(table: &str, key: &[u8], end: &[u8]) -> RangeRequest {
        RangeRequest {
            table: table.into(),
            key: key.to_vec(),
            range_end: end.to_vec(),
            ..Default::default()
        }
    }

    fn msg(r: Result<(), Status>) -> String {
        r.expect_err("must be rejected").message().to_owned()
    }

    #[test]
    fn range_checks_in_armada_order() {
        let mut r = rr("", b"", b"");
        r.limit = -1;
        r.keys_only = true;
        r.count_only = true;
        assert_eq!(msg(range(&r, false)), "limit must be a positive number");
        r.limit = 0;
        assert_eq!(
            msg(range(&r, false)),
            "keys_only and count_only must not be set at the same time"
        );
        r.count_only = false;
        assert_eq!(msg(range(&r, false)), "table must be set");
        assert_eq!(msg(range(&rr("t", b"", b""), false)), "key must be set");
        assert!(
            range(&rr("t", b"", b"\0"), false).is_ok(),
            "empty key with range_end = from start"
        );
        assert_eq!(msg(range(&rr("t", b"", b"\0"), true)), "key must be set");
        assert!(range(&rr("t", b"\0", b"\0"), false).is_ok());
        assert_eq!(
            msg(range(&rr("t", b"\0", b"\0"), true)),
            "key must not contain null bytes"
        );
        assert_eq!(
            msg(range(&rr("t", b"a\0b", b""), false)),
            "key must not contain null bytes"
        );
        assert_eq!(
            msg(range(&rr("t", b"a", b"b\0"), false)),
            "range_end must not contain null bytes"
        );
        let long = rr("t", &[b'k'; 1025], b"");
        assert_eq!(
            range(&long, false).expect_err("too long").code(),
            Code::FailedPrecondition
        );
    }

    #[test]
    fn put_and_delete_checks() {
        let p = |t: &str, k: &[u8], v: usize| PutRequest {
            table: t.into(),
            key: k.to_vec(),
            value: vec![0; v],
            prev_kv: false,
        };
        assert_eq!(msg(put(&p("", b"k", 1))), "table must be set");
        assert_eq!(msg(put(&p("t", b"", 1))), "key must be set");
        assert_eq!(
            msg(put(&p("t", b"\0", 1))),
            "key must not contain null bytes"
        );
        assert_eq!(
            msg(put(&p("t", b"k", MAX_VALUE_BYTES + 1))),
            "value length exceeded max allowed value"
        );
        assert!(put(&p("t", b"k", MAX_VALUE_BYTES)).is_ok());
        let d = |k: &[u8], e: &[u8]| DeleteRangeRequest {
            table: "t".into(),
            key: k.to_vec(),
            range_end: e.to_vec(),
            ..Default::default()
        };
        assert_eq!(
            msg(delete_range(&d(b"\0", b"\0"))),
            "key must not contain null bytes"
        );
        assert_eq!(
            msg(delete_range(&d(b"a", b"x\0"))),
            "range_end must not contain null bytes"
        );
        assert!(delete_range(&d(b"\x01", b"\0")).is_ok());
    }

    #[test]
    fn txn_checks_every_key_and_detects_read_only() {
        let range_op = |k: &[u8]| RequestOp {
            request: Some(request_op::Request::RequestRange(request_op::Range {
                key: k.to_vec(),
                range_end: b"\0".to_vec(),
                ..Default::default()
            })),
        };
        let mut t = TxnRequest {
            table: "t".into(),
            success: vec![range_op(b"\0")],
            ..Default::default()
        };
        assert!(txn(&t).is_ok());
        assert!(is_read_only(&t));
        t.compare.push(Compare {
            key: b"a\0".to_vec(),
            ..Default::default()
        });
        assert_eq!(msg(txn(&t)), "key must not contain null bytes");
        t.compare.clear();
        t.failure.push(RequestOp {
            request: Some(request_op::Request::RequestPut(request_op::Put {
                key: b"k".to_vec(),
                ..Default::default()
            })),
        });
        assert!(!is_read_only(&t));
        assert!(
            is_read_only(&TxnRequest::default()),
            "no ops at all is a read"
        );
    }

    #[test]
    fn txn_ops_are_checked_like_their_single_forms() {
        let txn_of = |op: request_op::Request| TxnRequest {
            table: "t".into(),
            success: vec![RequestOp { request: Some(op) }],
            ..Default::default()
        };
        let empty_put = request_op::Request::RequestPut(request_op::Put::default());
        assert_eq!(msg(txn(&txn_of(empty_put))), "key must be set");
        let big_put = request_op::Request::RequestPut(request_op::Put {
            key: b"k".to_vec(),
            value: vec![0; MAX_VALUE_BYTES + 1],
            prev_kv: false,
        });
        assert_eq!(
            msg(txn(&txn_of(big_put))),
            "value length exceeded max allowed value"
        );
        let empty_delete =
            request_op::Request::RequestDeleteRange(request_op::DeleteRange::default());
        assert_eq!(msg(txn(&txn_of(empty_delete))), "key must be set");
        let empty_range = request_op::Request::RequestRange(request_op::Range::default());
        assert_eq!(msg(txn(&txn_of(empty_range))), "key must be set");
        let put_op = RequestOp {
            request: Some(request_op::Request::RequestPut(request_op::Put {
                key: b"k".to_vec(),
                ..Default::default()
            })),
        };
        let mut many = TxnRequest {
            table: "t".into(),
            success: vec![put_op; MAX_TXN_OPS],
            ..Default::default()
        };
        assert!(txn(&many).is_ok());
        many.success.push(many.success[0].clone());
        assert_eq!(
            msg(txn(&many)),
            format!(
                "too many success ops in the Txn: {} > {MAX_TXN_OPS}",
                MAX_TXN_OPS + 1
            )
        );
    }
}

/// Property tests over structured requests (keys with 0x00, empty, at the length limits)
/// and over arbitrary and mutated protobuf bytes: checking never panics, and whatever it
/// accepts has the properties the rest of the server relies on. See docs/FUZZING.md.
#[cfg(test)]
mod fuzz {
    use super::*;
    use flotilla_proto::mvcc::v1::compare;
    use proptest::collection::vec;
    use proptest::prelude::*;
    use prost::Message;

    /// `cases`, unless `PROPTEST_CASES` asks for another number.
    fn config(cases: u32) -> ProptestConfig {
        let mut config = ProptestConfig::default();
        if std::env::var_os("PROPTEST_CASES").is_none() {
            config.cases = cases;
        }
        config
    }

    fn table() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![Just(Vec::new()), vec(any::<u8>(), 1..4)]
    }

    /// Keys around every rule: empty, the sentinel, with 0x00 anywhere, at the limit.
    fn key() -> impl Strategy<Value = Vec<u8>> {
        let long = (MAX_KEY_BYTES - 1..=MAX_KEY_BYTES + 1, any::<bool>()).prop_map(|(n, null)| {
            let mut k = vec![b'k'; n];
            if null {
                k[n / 2] = 0;
            }
            k
        });
        prop_oneof![
            Just(Vec::new()),
            Just(vec![0]),
            vec(0u8..3, 1..4),
            vec(any::<u8>(), 1..12),
            long,
        ]
    }

    /// Value lengths around the limit (zeros: only the length matters).
    fn value() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            4 => vec(any::<u8>(), 0..8),
            1 => (MAX_VALUE_BYTES..=MAX_VALUE_BYTES + 1).prop_map(|n| vec![0; n]),
        ]
    }

    fn small_i64() -> impl Strategy<Value = i64> {
        prop_oneof![Just(0), Just(-1), -3i64..4, any::<i64>()]
    }

    fn range_request() -> impl Strategy<Value = RangeRequest> {
        (
            (table(), key(), key(), small_i64()),
            (any::<bool>(), any::<bool>(), any::<bool>()),
            vec(small_i64(), 4),
        )
            .prop_map(|((table, key, range_end, limit), (lin, ko, co), revs)| {
                RangeRequest {
                    table,
                    key,
                    range_end,
                    limit,
                    linearizable: lin,
                    keys_only: ko,
                    count_only: co,
                    min_mod_revision: revs[0],
                    max_mod_revision: revs[1],
                    min_create_revision: revs[2],
                    max_create_revision: revs[3],
                }
            })
    }

    fn put_request() -> impl Strategy<Value = PutRequest> {
        (table(), key(), value(), any::<bool>()).prop_map(|(table, key, value, prev_kv)| {
            PutRequest {
                table,
                key,
                value,
                prev_kv,
            }
        })
    }

    fn delete_request() -> impl Strategy<Value = DeleteRangeRequest> {
        (table(), key(), key(), any::<bool>(), any::<bool>()).prop_map(
            |(table, key, range_end, prev_kv, count)| DeleteRangeRequest {
                table,
                key,
                range_end,
                prev_kv,
                count,
            },
        )
    }

    fn compare_strategy() -> impl Strategy<Value = Compare> {
        (
            key(),
            key(),
            -1i32..5,
            proptest::option::of(vec(any::<u8>(), 0..4)),
        )
            .prop_map(|(key, range_end, result, v)| Compare {
                result,
                key,
                range_end,
                target_union: v.map(compare::TargetUnion::Value),
                ..Default::default()
            })
    }

    /// One op; `value` gives the Put values (kept small for the ops repeated as padding).
    fn op(value: impl Strategy<Value = Vec<u8>>) -> impl Strategy<Value = RequestOp> {
        let range = (key(), key(), small_i64(), any::<bool>(), any::<bool>()).prop_map(
            |(key, range_end, limit, keys_only, count_only)| {
                request_op::Request::RequestRange(request_op::Range {
                    key,
                    range_end,
                    limit,
                    keys_only,
                    count_only,
                })
            },
        );
        let put = (key(), value, any::<bool>()).prop_map(|(key, value, prev_kv)| {
            request_op::Request::RequestPut(request_op::Put {
                key,
                value,
                prev_kv,
            })
        });
        let delete = (key(), key(), any::<bool>(), any::<bool>()).prop_map(
            |(key, range_end, prev_kv, count)| {
                request_op::Request::RequestDeleteRange(request_op::DeleteRange {
                    key,
                    range_end,
                    prev_kv,
                    count,
                })
            },
        );
        proptest::option::weighted(0.9, prop_oneof![range, put, delete])
            .prop_map(|request| RequestOp { request })
    }

    /// A few arbitrary ops, then `pad` cheap ones (a branch of about MAX_TXN_OPS ops).
    fn branch() -> impl Strategy<Value = Vec<RequestOp>> {
        let pad = prop_oneof![0..3usize, MAX_TXN_OPS - 3..=MAX_TXN_OPS + 1];
        (
            vec(op(value()), 0..4),
            vec(op(vec(any::<u8>(), 0..4)), 1..4),
            pad,
        )
            .prop_map(|(mut ops, filler, pad)| {
                ops.extend(filler.iter().cycle().take(pad).cloned());
                ops
            })
    }

    fn txn_request() -> impl Strategy<Value = TxnRequest> {
        let compares = (vec(compare_strategy(), 0..4), any::<bool>()).prop_map(|(c, many)| {
            if many && !c.is_empty() {
                c.iter().cycle().take(MAX_TXN_OPS + 1).cloned().collect()
            } else {
                c
            }
        });
        (table(), compares, branch(), branch()).prop_map(|(table, compare, success, failure)| {
            TxnRequest {
                table,
                compare,
                success,
                failure,
            }
        })
    }

    /// Bytes that often decode: a structured request's encoding with some bytes replaced
    /// and possibly truncated, or arbitrary bytes.
    fn mutated(encoded: Vec<u8>) -> impl Strategy<Value = Vec<u8>> {
        let len = encoded.len();
        let edits = vec((any::<proptest::sample::Index>(), any::<u8>()), 0..4);
        (edits, any::<proptest::sample::Index>(), any::<bool>()).prop_map(
            move |(edits, cut, truncate)| {
                let mut bytes = encoded.clone();
                if len > 0 {
                    for (at, b) in edits {
                        bytes[at.index(len)] = b;
                    }
                    if truncate {
                        bytes.truncate(cut.index(len));
                    }
                }
                bytes
            },
        )
    }

    fn bytes_of<M: Message + 'static>(
        structured: impl Strategy<Value = M>,
    ) -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            vec(any::<u8>(), 0..64),
            structured.prop_flat_map(|m| mutated(m.encode_to_vec())),
        ]
    }

    fn key_ok(key: &[u8]) -> bool {
        !key.is_empty() && !key.contains(&0) && key.len() <= MAX_KEY_BYTES
    }

    fn end_ok(end: &[u8]) -> bool {
        (!end.contains(&0) || end == [0]) && end.len() <= MAX_KEY_BYTES
    }

    fn check_range(req: &RangeRequest) -> Result<(), TestCaseError> {
        for streaming in [false, true] {
            if range(req, streaming).is_err() {
                continue;
            }
            prop_assert!(!req.table.is_empty());
            prop_assert!(req.limit >= 0 && !(req.keys_only && req.count_only));
            prop_assert!(req.min_mod_revision >= 0 && req.max_mod_revision >= 0);
            prop_assert!(req.min_create_revision >= 0 && req.max_create_revision >= 0);
            let whole_table = !streaming && (req.key == [0] || req.key.is_empty());
            prop_assert!(key_ok(&req.key) || whole_table, "key {:?}", req.key);
            prop_assert!(!req.key.is_empty() || !req.range_end.is_empty());
            prop_assert!(end_ok(&req.range_end), "range_end {:?}", req.range_end);
        }
        Ok(())
    }

    fn check_put(req: &PutRequest) -> Result<(), TestCaseError> {
        if put(req).is_ok() {
            prop_assert!(!req.table.is_empty());
            prop_assert!(key_ok(&req.key), "key {:?}", req.key);
            prop_assert!(req.value.len() <= MAX_VALUE_BYTES);
        }
        Ok(())
    }

    fn check_delete(req: &DeleteRangeRequest) -> Result<(), TestCaseError> {
        if delete_range(req).is_ok() {
            prop_assert!(!req.table.is_empty());
            prop_assert!(key_ok(&req.key), "key {:?}", req.key);
            prop_assert!(end_ok(&req.range_end), "range_end {:?}", req.range_end);
        }
        Ok(())
    }

    fn check_txn(req: &TxnRequest) -> Result<(), TestCaseError> {
        let read_only = is_read_only(req);
        let ops = || req.success.iter().chain(&req.failure);
        prop_assert_eq!(
            read_only,
            ops().all(|op| matches!(op.request, Some(request_op::Request::RequestRange(_))))
        );
        if txn(req).is_err() {
            return Ok(());
        }
        prop_assert!(!req.table.is_empty());
        prop_assert!(req.compare.len() <= MAX_TXN_OPS);
        prop_assert!(req.success.len() <= MAX_TXN_OPS && req.failure.len() <= MAX_TXN_OPS);
        for cmp in &req.compare {
            prop_assert!(!cmp.key.contains(&0) && cmp.key.len() <= MAX_KEY_BYTES);
            prop_assert!(end_ok(&cmp.range_end));
        }
        for op in ops() {
            match &op.request {
                Some(request_op::Request::RequestPut(p)) => {
                    prop_assert!(key_ok(&p.key), "put key {:?}", p.key);
                    prop_assert!(p.value.len() <= MAX_VALUE_BYTES);
                }
                Some(request_op::Request::RequestDeleteRange(d)) => {
                    prop_assert!(key_ok(&d.key), "delete key {:?}", d.key);
                    prop_assert!(end_ok(&d.range_end));
                }
                Some(request_op::Request::RequestRange(r)) => {
                    prop_assert!(r.limit >= 0 && !(r.keys_only && r.count_only));
                    let whole_table = r.key == [0] || r.key.is_empty();
                    prop_assert!(key_ok(&r.key) || whole_table, "range key {:?}", r.key);
                    prop_assert!(!r.key.is_empty() || !r.range_end.is_empty());
                    prop_assert!(end_ok(&r.range_end));
                }
                None => {}
            }
        }
        Ok(())
    }

    proptest! {
        #![proptest_config(config(1000))]

        #[test]
        fn fuzz_range(req in range_request(), bytes in bytes_of(range_request())) {
            check_range(&req)?;
            if let Ok(decoded) = RangeRequest::decode(&bytes[..]) {
                check_range(&decoded)?;
            }
        }

        #[test]
        fn fuzz_put(req in put_request(), bytes in bytes_of(put_request())) {
            check_put(&req)?;
            if let Ok(decoded) = PutRequest::decode(&bytes[..]) {
                check_put(&decoded)?;
            }
        }

        #[test]
        fn fuzz_delete_range(req in delete_request(), bytes in bytes_of(delete_request())) {
            check_delete(&req)?;
            if let Ok(decoded) = DeleteRangeRequest::decode(&bytes[..]) {
                check_delete(&decoded)?;
            }
        }
    }

    proptest! {
        #![proptest_config(config(500))]

        #[test]
        fn fuzz_txn(req in txn_request(), bytes in bytes_of(txn_request())) {
            check_txn(&req)?;
            if let Ok(decoded) = TxnRequest::decode(&bytes[..]) {
                check_txn(&decoded)?;
            }
        }
    }
}
