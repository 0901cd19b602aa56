//! Reads as a stock gRPC client sees them: no response over the 4 MiB every default
//! client accepts, and Txn / IterateRange answers from one point in time even while a
//! writer changes the data underneath (WIRE.md §5.1-5.4, Armada RFC 002).

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use common::TestServer;
use flotilla_proto::mvcc::v1::{RequestOp, request_op, response_op};
use flotilla_proto::regatta::v1::kv_client::KvClient;
use flotilla_proto::regatta::v1::{RangeRequest, RangeResponse, TxnRequest};
use futures::StreamExt;
use prost::Message as _;

const T: &str = "reads";
/// What a stock gRPC client (Go, Java, Python, C++) accepts by default.
const STOCK_LIMIT: usize = 4 * 1024 * 1024;

fn all() -> RangeRequest {
    RangeRequest {
        table: T.into(),
        key: b"\0".to_vec(),
        range_end: b"\0".to_vec(),
        ..Default::default()
    }
}

/// A KV client with gRPC's default 4 MiB receive limit, as Armada's users have.
fn stock_client(s: &TestServer) -> KvClient<tonic::transport::Channel> {
    KvClient::new(s.channel.clone())
}

fn put_op(key: Vec<u8>, value: Vec<u8>) -> RequestOp {
    RequestOp {
        request: Some(request_op::Request::RequestPut(request_op::Put {
            key,
            value,
            prev_kv: false,
        })),
    }
}

fn range_op(key: &[u8]) -> RequestOp {
    RequestOp {
        request: Some(request_op::Request::RequestRange(request_op::Range {
            key: key.to_vec(),
            ..Default::default()
        })),
    }
}

/// Reads the whole table through IterateRange with `client`; every message's encoded
/// size.
async fn iterate_all(client: &mut KvClient<tonic::transport::Channel>) -> (u64, Vec<usize>) {
    let mut stream = client
        .iterate_range(RangeRequest {
            key: b"\x01".to_vec(),
            ..all()
        })
        .await
        .expect("iterate")
        .into_inner();
    let (mut keys, mut sizes) = (0, Vec::new());
    while let Some(page) = stream.next().await {
        let page = page.expect("a page a stock client accepts");
        keys += page.kvs.len() as u64;
        sizes.push(page.encoded_len());
    }
    (keys, sizes)
}

fn assert_fits(what: &str, response: &RangeResponse) {
    let len = response.encoded_len();
    assert!(len <= STOCK_LIMIT, "{what}: a {len}-byte response");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_of_values_near_two_mebibytes_fit_a_stock_client() {
    let s = TestServer::start().await;
    s.create_table(T).await;
    // Values at the 2 MiB limit: two of them plus their framing are over 4 MiB.
    let value = vec![b'v'; 2 * 1024 * 1024];
    for i in 0..5u8 {
        s.put(T, &[b'k', b'0' + i], &value).await;
    }
    let mut client = stock_client(&s);
    let first = client.range(all()).await.expect("range").into_inner();
    assert_fits("Range", &first);
    assert!(
        first.more && first.kvs.len() == 1,
        "one 2 MiB value per page"
    );
    let (keys, sizes) = iterate_all(&mut client).await;
    assert_eq!(keys, 5);
    assert!(sizes.iter().all(|&n| n <= STOCK_LIMIT), "{sizes:?}");
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_of_many_small_values_count_their_framing() {
    let s = TestServer::start().await;
    s.create_table(T).await;
    // ~4.5 MB of 1 KiB values: the per-pair framing (tag, lengths, revisions) alone
    // pushes a page cut at 4 MiB of keys and values over the limit.
    let value = vec![b's'; 1024];
    let mut kv = s.kv();
    for batch in 0..36u32 {
        let success = (0..128u32)
            .map(|i| put_op(format!("k{batch:03}-{i:03}").into_bytes(), value.clone()))
            .collect();
        kv.txn(TxnRequest {
            table: T.into(),
            success,
            ..Default::default()
        })
        .await
        .expect("txn of puts");
    }
    let mut client = stock_client(&s);
    let first = client.range(all()).await.expect("range").into_inner();
    assert_fits("Range", &first);
    assert!(first.more);
    let (keys, sizes) = iterate_all(&mut client).await;
    assert_eq!(keys, 36 * 128);
    assert!(
        sizes.len() >= 2 && sizes.iter().all(|&n| n <= STOCK_LIMIT),
        "{sizes:?}"
    );
    s.shutdown().await;
}

/// The value written for key `a` or `b` in round `n` of the writer: the two always sum
/// to [`SUM`].
const SUM: i64 = 1_000_000;

fn number(value: &[u8]) -> i64 {
    std::str::from_utf8(value)
        .expect("utf-8")
        .parse()
        .expect("a number")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn txn_and_iterate_range_never_see_a_torn_write() {
    let s = TestServer::start().await;
    s.create_table(T).await;
    // `a` and `b` always sum to SUM (one Txn writes both). Between them sit filler keys
    // of 1 MiB, so an IterateRange over a..c returns `a` and `b` on different pages.
    s.put(T, b"a", SUM.to_string().as_bytes()).await;
    s.put(T, b"b", b"0").await;
    let filler = vec![b'f'; 1024 * 1024];
    for i in 0..6u8 {
        s.put(T, &[b'a', b'0' + i], &filler).await;
    }
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (mut kv, stop) = (s.kv(), stop.clone());
        tokio::spawn(async move {
            let mut n = 0i64;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let (a, b) = (SUM - n, n);
                kv.txn(TxnRequest {
                    table: T.into(),
                    success: vec![
                        put_op(b"a".to_vec(), a.to_string().into_bytes()),
                        put_op(b"b".to_vec(), b.to_string().into_bytes()),
                    ],
                    ..Default::default()
                })
                .await
                .expect("writer txn");
            }
            n
        })
    };
    let mut kv = s.kv();
    for _ in 0..40 {
        // A read-only Txn: both ranges from one instant.
        let read = kv
            .txn(TxnRequest {
                table: T.into(),
                success: vec![range_op(b"a"), range_op(b"b")],
                ..Default::default()
            })
            .await
            .expect("read txn")
            .into_inner();
        let values: Vec<i64> = read
            .responses
            .iter()
            .map(|r| match &r.response {
                Some(response_op::Response::ResponseRange(range)) => {
                    number(&range.kvs.first().expect("present").value)
                }
                other => panic!("not a range response: {other:?}"),
            })
            .collect();
        assert_eq!(
            values.iter().sum::<i64>(),
            SUM,
            "a torn Txn read: {values:?}"
        );

        // IterateRange: every page from one instant, however long the stream takes.
        let mut stream = kv
            .iterate_range(RangeRequest {
                table: T.into(),
                key: b"a".to_vec(),
                range_end: b"c".to_vec(),
                ..Default::default()
            })
            .await
            .expect("iterate")
            .into_inner();
        let (mut pages, mut sum) = (0, 0);
        while let Some(page) = stream.next().await {
            let page = page.expect("page");
            pages += 1;
            for kv in page
                .kvs
                .iter()
                .filter(|kv| kv.key == b"a" || kv.key == b"b")
            {
                sum += number(&kv.value);
            }
        }
        assert!(pages >= 2, "a and b on different pages");
        assert_eq!(sum, SUM, "a torn IterateRange");
    }
    stop.store(true, Ordering::Relaxed);
    let writes = writer.await.expect("writer");
    assert!(writes > 10, "the writer ran alongside ({writes} rounds)");
    s.shutdown().await;
}
