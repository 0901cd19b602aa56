//! KV semantics and error codes over gRPC on loopback (WIRE.md §5.1–5.6).

mod common;

use common::TestServer;
use flotilla_proto::mvcc::v1::{
    Compare, KeyValue, RequestOp, compare::CompareResult, compare::TargetUnion, request_op,
    response_op,
};
use flotilla_proto::regatta::v1::{DeleteRangeRequest, PutRequest, RangeRequest, TxnRequest};
use futures::StreamExt;
use tonic::Code;

const T: &str = "kv";

async fn server_with(keys: &[&str]) -> TestServer {
    let s = TestServer::start().await;
    s.create_table(T).await;
    for k in keys {
        s.put(T, k.as_bytes(), format!("v-{k}").as_bytes()).await;
    }
    s
}

fn keys(kvs: &[KeyValue]) -> Vec<String> {
    kvs.iter()
        .map(|kv| String::from_utf8_lossy(&kv.key).into_owned())
        .collect()
}

fn range_req(key: &[u8], end: &[u8]) -> RangeRequest {
    RangeRequest {
        table: T.into(),
        key: key.to_vec(),
        range_end: end.to_vec(),
        ..Default::default()
    }
}

#[tokio::test]
async fn put_then_get_fills_revisions_and_header() {
    let s = server_with(&[]).await;
    let first = s.put(T, b"a", b"1").await;
    let h = first.header.expect("header");
    assert!(h.revision > 0);
    assert_eq!(h.replica_id, 1);
    assert_eq!(h.raft_leader_id, 1);
    assert!(h.shard_id > 0);
    let second = s
        .kv()
        .put(PutRequest {
            table: T.into(),
            key: b"a".to_vec(),
            value: b"2".to_vec(),
            prev_kv: true,
        })
        .await
        .expect("put")
        .into_inner();
    let rev2 = second.header.expect("header").revision;
    assert!(rev2 > h.revision, "revisions increase");
    let prev = second.prev_kv.expect("prev_kv requested and key existed");
    assert_eq!(prev.value, b"1");
    let got = s.range(T, b"a", b"").await;
    assert_eq!(got.count, 1);
    assert!(!got.more);
    assert_eq!(got.kvs[0].value, b"2");
    assert_eq!(got.kvs[0].create_revision as u64, h.revision);
    assert_eq!(got.kvs[0].mod_revision as u64, rev2);
    assert_eq!(
        got.header.expect("header").revision,
        0,
        "reads carry revision 0"
    );
    // prev_kv for a new key: none.
    let fresh = s
        .kv()
        .put(PutRequest {
            table: T.into(),
            key: b"new".to_vec(),
            value: vec![0],
            prev_kv: true,
        })
        .await
        .expect("put")
        .into_inner();
    assert!(fresh.prev_kv.is_none());
    // A lone 0x00 is an ordinary value here (not Armada's tombstone).
    assert_eq!(s.range(T, b"new", b"").await.kvs[0].value, vec![0]);
    s.shutdown().await;
}

#[tokio::test]
async fn missing_key_is_ok_and_unknown_table_is_not_found() {
    let s = server_with(&["a"]).await;
    let got = s.range(T, b"zzz", b"").await;
    assert_eq!((got.kvs.len(), got.count, got.more), (0, 0, false));
    let err = s
        .kv()
        .range(RangeRequest {
            table: b"nope".to_vec(),
            key: b"a".to_vec(),
            ..Default::default()
        })
        .await
        .expect_err("unknown table");
    assert_eq!(
        (err.code(), err.message()),
        (Code::NotFound, "table not found")
    );
    let err = s
        .kv()
        .put(PutRequest {
            table: b"nope".to_vec(),
            key: b"a".to_vec(),
            ..Default::default()
        })
        .await
        .expect_err("unknown table");
    assert_eq!(err.code(), Code::NotFound);
    s.shutdown().await;
}

#[tokio::test]
async fn ranges_sentinels_prefixes_limits() {
    let s = server_with(&["a", "aa", "ab", "b", "c"]).await;
    assert_eq!(
        keys(&s.range(T, b"\0", b"\0").await.kvs),
        ["a", "aa", "ab", "b", "c"]
    );
    assert_eq!(keys(&s.range(T, b"", b"b").await.kvs), ["a", "aa", "ab"]);
    assert_eq!(keys(&s.range(T, b"ab", b"\0").await.kvs), ["ab", "b", "c"]);
    // prefix "a": client sends range_end "b"
    assert_eq!(
        keys(
            &s.range(T, b"a", &flotilla_proto::keys::prefix_end(b"a"))
                .await
                .kvs
        ),
        ["a", "aa", "ab"]
    );
    let mut req = range_req(b"a", b"\0");
    req.limit = 2;
    let got = s.kv().range(req.clone()).await.expect("range").into_inner();
    assert_eq!(
        (keys(&got.kvs), got.count, got.more),
        (vec!["a".into(), "aa".into()], 2, true)
    );
    req.limit = 5;
    let got = s.kv().range(req.clone()).await.expect("range").into_inner();
    assert_eq!(
        (got.count, got.more),
        (5, false),
        "exactly the last key: no more"
    );
    req.limit = 0;
    req.keys_only = true;
    let got = s.kv().range(req.clone()).await.expect("range").into_inner();
    assert!(got.kvs.iter().all(|kv| kv.value.is_empty()) && got.count == 5);
    req.keys_only = false;
    req.count_only = true;
    req.limit = 3;
    let got = s.kv().range(req.clone()).await.expect("range").into_inner();
    assert_eq!((got.kvs.len(), got.count, got.more), (0, 3, true));
    // single key count_only
    let mut one = range_req(b"b", b"");
    one.count_only = true;
    let got = s.kv().range(one).await.expect("range").into_inner();
    assert_eq!((got.kvs.len(), got.count), (0, 1));
    // linearizable read sees the latest write
    s.put(T, b"d", b"x").await;
    let mut lin = range_req(b"d", b"");
    lin.linearizable = true;
    assert_eq!(
        s.kv().range(lin).await.expect("range").into_inner().count,
        1
    );
    s.shutdown().await;
}

#[tokio::test]
async fn revision_filters_select_by_mod_and_create_revision() {
    let s = server_with(&["a", "b", "c"]).await;
    let all = s.range(T, b"\0", b"\0").await.kvs;
    let rev_b = all[1].mod_revision;
    let mut req = range_req(b"\0", b"\0");
    req.min_mod_revision = rev_b;
    assert_eq!(
        keys(
            &s.kv()
                .range(req.clone())
                .await
                .expect("range")
                .into_inner()
                .kvs
        ),
        ["b", "c"]
    );
    req.min_mod_revision = 0;
    req.max_create_revision = rev_b;
    assert_eq!(
        keys(
            &s.kv()
                .range(req.clone())
                .await
                .expect("range")
                .into_inner()
                .kvs
        ),
        ["a", "b"]
    );
    // overwrite a: its mod revision moves, create stays
    s.put(T, b"a", b"again").await;
    req.max_create_revision = 0;
    req.min_mod_revision = all[2].mod_revision + 1;
    assert_eq!(
        keys(&s.kv().range(req).await.expect("range").into_inner().kvs),
        ["a"]
    );
    s.shutdown().await;
}

#[tokio::test]
async fn range_error_codes_in_order() {
    let s = server_with(&[]).await;
    let check = async |req: RangeRequest, code: Code, msg: &str| {
        let err = s.kv().range(req).await.expect_err("must fail");
        assert_eq!((err.code(), err.message()), (code, msg));
    };
    let mut r = range_req(b"a", b"");
    r.limit = -1;
    check(r, Code::InvalidArgument, "limit must be a positive number").await;
    let mut r = range_req(b"a", b"");
    r.keys_only = true;
    r.count_only = true;
    check(
        r,
        Code::InvalidArgument,
        "keys_only and count_only must not be set at the same time",
    )
    .await;
    let mut r = range_req(b"a", b"");
    r.table = Vec::new();
    check(r, Code::InvalidArgument, "table must be set").await;
    check(
        range_req(b"", b""),
        Code::InvalidArgument,
        "key must be set",
    )
    .await;
    check(
        range_req(b"a\0", b""),
        Code::InvalidArgument,
        "key must not contain null bytes",
    )
    .await;
    check(
        range_req(b"a", b"b\0"),
        Code::InvalidArgument,
        "range_end must not contain null bytes",
    )
    .await;
    check(
        range_req(&[b'k'; 1025], b""),
        Code::FailedPrecondition,
        "key length exceeded max allowed value",
    )
    .await;
    let mut r = range_req(b"a", b"");
    r.min_mod_revision = -1;
    check(
        r,
        Code::InvalidArgument,
        "min_mod_revision must not be negative",
    )
    .await;
    s.shutdown().await;
}

#[tokio::test]
async fn put_and_delete_error_codes() {
    let s = server_with(&[]).await;
    let put = |table: &str, key: &[u8], value: Vec<u8>| PutRequest {
        table: table.into(),
        key: key.to_vec(),
        value,
        prev_kv: false,
    };
    for (req, code, msg) in [
        (
            put("", b"k", vec![]),
            Code::InvalidArgument,
            "table must be set",
        ),
        (
            put(T, b"", vec![]),
            Code::InvalidArgument,
            "key must be set",
        ),
        (
            put(T, b"\0", vec![]),
            Code::InvalidArgument,
            "key must not contain null bytes",
        ),
        (
            put(T, &[b'k'; 1025], vec![]),
            Code::FailedPrecondition,
            "key length exceeded max allowed value",
        ),
        (
            put(T, b"k", vec![1; 2 * 1024 * 1024 + 1]),
            Code::FailedPrecondition,
            "value length exceeded max allowed value",
        ),
    ] {
        let err = s.kv().put(req).await.expect_err("must fail");
        assert_eq!((err.code(), err.message()), (code, msg));
    }
    let del = |key: &[u8], end: &[u8]| DeleteRangeRequest {
        table: T.into(),
        key: key.to_vec(),
        range_end: end.to_vec(),
        ..Default::default()
    };
    let err = s
        .kv()
        .delete_range(del(b"", b""))
        .await
        .expect_err("empty key");
    assert_eq!(err.message(), "key must be set");
    let err = s
        .kv()
        .delete_range(del(b"\0", b"\0"))
        .await
        .expect_err("sentinel start");
    assert_eq!(err.message(), "key must not contain null bytes");
    let err = s
        .kv()
        .delete_range(del(b"a", b"b\0"))
        .await
        .expect_err("bad end");
    assert_eq!(err.message(), "range_end must not contain null bytes");
    // Bad input left the table untouched.
    assert_eq!(s.range(T, b"\0", b"\0").await.count, 0);
    s.shutdown().await;
}

#[tokio::test]
async fn delete_range_counts_only_when_asked() {
    let s = server_with(&["a", "b", "c", "d", "e"]).await;
    let del = |key: &[u8], end: &[u8], prev_kv: bool, count: bool| DeleteRangeRequest {
        table: T.into(),
        key: key.to_vec(),
        range_end: end.to_vec(),
        prev_kv,
        count,
    };
    let r = s
        .kv()
        .delete_range(del(b"a", b"", false, false))
        .await
        .expect("del")
        .into_inner();
    assert_eq!(r.deleted, 0, "deleted is filled only with count or prev_kv");
    assert!(r.header.expect("header").revision > 0);
    let r = s
        .kv()
        .delete_range(del(b"b", b"d", false, true))
        .await
        .expect("del")
        .into_inner();
    assert_eq!((r.deleted, r.prev_kvs.len()), (2, 0));
    let r = s
        .kv()
        .delete_range(del(b"d", b"\0", true, false))
        .await
        .expect("del")
        .into_inner();
    assert_eq!(
        (r.deleted, keys(&r.prev_kvs)),
        (2, vec!["d".into(), "e".into()])
    );
    assert_eq!(r.prev_kvs[0].value, b"v-d");
    let r = s
        .kv()
        .delete_range(del(b"missing", b"", true, true))
        .await
        .expect("del")
        .into_inner();
    assert_eq!(r.deleted, 0);
    assert_eq!(s.range(T, b"\0", b"\0").await.count, 0);
    s.shutdown().await;
}

fn cmp(key: &str, op: CompareResult, value: Option<&str>) -> Compare {
    Compare {
        result: op as i32,
        key: key.as_bytes().to_vec(),
        target_union: value.map(|v| TargetUnion::Value(v.as_bytes().to_vec())),
        ..Default::default()
    }
}

fn put_op(key: &str, value: &str) -> RequestOp {
    RequestOp {
        request: Some(request_op::Request::RequestPut(request_op::Put {
            key: key.as_bytes().to_vec(),
            value: value.as_bytes().to_vec(),
            prev_kv: true,
        })),
    }
}

fn range_op(key: &[u8], end: &[u8]) -> RequestOp {
    RequestOp {
        request: Some(request_op::Request::RequestRange(request_op::Range {
            key: key.to_vec(),
            range_end: end.to_vec(),
            ..Default::default()
        })),
    }
}

#[tokio::test]
async fn txn_guards_branches_and_revisions() {
    let s = server_with(&["a"]).await;
    let txn =
        |compare: Vec<Compare>, success: Vec<RequestOp>, failure: Vec<RequestOp>| TxnRequest {
            table: T.into(),
            compare,
            success,
            failure,
        };
    // write txn, guard true: both puts share one revision, later op sees earlier write
    let r = s
        .kv()
        .txn(txn(
            vec![cmp("a", CompareResult::Equal, Some("v-a"))],
            vec![put_op("x", "1"), put_op("x", "2"), range_op(b"x", b"")],
            vec![],
        ))
        .await
        .expect("txn")
        .into_inner();
    assert!(r.succeeded);
    let rev = r.header.expect("header").revision;
    assert!(rev > 0);
    assert_eq!(r.responses.len(), 3);
    let Some(response_op::Response::ResponseRange(rr)) = &r.responses[2].response else {
        panic!("third response is a range")
    };
    assert_eq!(rr.kvs[0].value, b"2");
    assert_eq!(rr.kvs[0].mod_revision as u64, rev);
    // guard false on a missing key for every operator, NOT_EQUAL included
    for op in [
        CompareResult::Equal,
        CompareResult::NotEqual,
        CompareResult::Greater,
        CompareResult::Less,
    ] {
        let r = s
            .kv()
            .txn(txn(
                vec![cmp("missing", op, Some("z"))],
                vec![put_op("never", "1")],
                vec![range_op(b"a", b"")],
            ))
            .await
            .expect("txn")
            .into_inner();
        assert!(!r.succeeded, "{op:?} on a missing key must be false");
        assert!(
            r.header.expect("header").revision > 0,
            "a Txn with any write op goes through the log"
        );
    }
    assert_eq!(s.range(T, b"never", b"").await.count, 0);
    // value absent = existence; present-but-empty compares with ""
    let r = s
        .kv()
        .txn(txn(
            vec![cmp("a", CompareResult::Equal, None)],
            vec![],
            vec![],
        ))
        .await
        .expect("txn")
        .into_inner();
    assert!(r.succeeded);
    assert_eq!(
        r.header.expect("header").revision,
        0,
        "read-only Txn: no log entry, revision 0"
    );
    let r = s
        .kv()
        .txn(txn(
            vec![cmp("a", CompareResult::Equal, Some(""))],
            vec![],
            vec![],
        ))
        .await
        .expect("txn")
        .into_inner();
    assert!(!r.succeeded);
    let r = s
        .kv()
        .txn(txn(
            vec![cmp("a", CompareResult::Greater, Some(""))],
            vec![],
            vec![],
        ))
        .await
        .expect("txn")
        .into_inner();
    assert!(r.succeeded);
    // range compare: every key in [a, \0) has value < "w"
    let mut all_less = cmp("", CompareResult::Less, Some("w"));
    all_less.range_end = b"\0".to_vec();
    let r = s
        .kv()
        .txn(txn(vec![all_less.clone()], vec![], vec![]))
        .await
        .expect("txn")
        .into_inner();
    assert!(r.succeeded);
    all_less.target_union = Some(TargetUnion::Value(b"2".to_vec()));
    let r = s
        .kv()
        .txn(txn(vec![all_less], vec![], vec![]))
        .await
        .expect("txn")
        .into_inner();
    assert!(!r.succeeded, "v-a is not < 2");
    let mut empty_range = cmp("q", CompareResult::Equal, None);
    empty_range.range_end = b"r".to_vec();
    let r = s
        .kv()
        .txn(txn(vec![empty_range], vec![], vec![]))
        .await
        .expect("txn")
        .into_inner();
    assert!(!r.succeeded, "no key in range: false");
    // a failed-guard write txn still consumes a revision
    let r = s
        .kv()
        .txn(txn(
            vec![cmp("missing", CompareResult::Equal, None)],
            vec![put_op("y", "1")],
            vec![put_op("z", "1")],
        ))
        .await
        .expect("txn")
        .into_inner();
    assert!(!r.succeeded);
    assert!(r.header.expect("header").revision > rev);
    assert_eq!(s.range(T, b"z", b"").await.count, 1);
    // 0x00 inside a compare key is refused
    let err = s
        .kv()
        .txn(txn(
            vec![cmp("a\0", CompareResult::Equal, None)],
            vec![],
            vec![],
        ))
        .await
        .expect_err("null byte");
    assert_eq!(
        (err.code(), err.message()),
        (Code::InvalidArgument, "key must not contain null bytes")
    );
    let err = s
        .kv()
        .txn(TxnRequest::default())
        .await
        .expect_err("no table");
    assert_eq!(err.message(), "table must be set");
    s.shutdown().await;
}

#[tokio::test]
async fn large_ranges_page_at_four_mebibytes() {
    let s = server_with(&[]).await;
    let value = vec![b'x'; 1024 * 1024];
    for i in 0..6u8 {
        s.put(T, &[b'k', b'0' + i], &value).await;
    }
    // Unary Range returns the first piece only.
    let first = s.range(T, b"\0", b"\0").await;
    assert!(first.more);
    assert_eq!(first.count, 3, "three 1 MiB values fit under 4 MiB - 1 KiB");
    // IterateRange streams every piece; `more` on all but the last.
    let mut stream = s
        .kv()
        .iterate_range(range_req(b"k", b"\0"))
        .await
        .expect("iterate")
        .into_inner();
    let mut pieces = Vec::new();
    while let Some(msg) = stream.next().await {
        pieces.push(msg.expect("piece"));
    }
    assert_eq!(pieces.len(), 2);
    assert!(pieces[0].more && !pieces[1].more);
    assert_eq!(pieces.iter().map(|p| p.count).sum::<i64>(), 6);
    assert!(pieces.iter().all(|p| p.header.is_some()));
    // limit counts across pieces and the last piece's more reflects it
    let mut limited = range_req(b"k", b"\0");
    limited.limit = 4;
    let mut stream = s
        .kv()
        .iterate_range(limited)
        .await
        .expect("iterate")
        .into_inner();
    let mut got = Vec::new();
    while let Some(msg) = stream.next().await {
        got.push(msg.expect("piece"));
    }
    assert_eq!(got.iter().map(|p| p.count).sum::<i64>(), 4);
    assert!(got.last().expect("a piece").more);
    // empty result still yields one message; request errors come before any message
    let mut stream = s
        .kv()
        .iterate_range(range_req(b"zz", b"\0"))
        .await
        .expect("iterate")
        .into_inner();
    let only = stream.next().await.expect("one message").expect("ok");
    assert_eq!((only.count, only.more), (0, false));
    assert!(stream.next().await.is_none());
    let err = s
        .kv()
        .iterate_range(range_req(b"\0", b"\0"))
        .await
        .expect_err("sentinel start refused");
    assert_eq!(err.message(), "key must not contain null bytes");
    s.shutdown().await;
}

#[tokio::test]
async fn writes_and_revisions_survive_restart() {
    let s = server_with(&["a", "b"]).await;
    let before = s.range(T, b"\0", b"\0").await.kvs;
    let s = s.restart().await;
    // A linearizable read as the very first request after a restart: raft-rs drops
    // ReadIndex until the new leader commits in its term, so the group must hold it.
    let mut first = range_req(b"\0", b"\0");
    first.linearizable = true;
    let after = s
        .kv()
        .range(first)
        .await
        .expect("linearizable read after restart")
        .into_inner()
        .kvs;
    assert_eq!(before, after);
    let next = s.put(T, b"c", b"1").await.header.expect("header").revision;
    assert!(
        next as i64 > before[1].mod_revision,
        "revisions keep increasing after restart"
    );
    s.shutdown().await;
}
