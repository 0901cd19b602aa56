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
