//! Many tables writing at once share fsyncs: the log writer batches across groups.

mod common;

use common::{TestServer, http_get, metric_value};

const TABLES: usize = 200;
const WRITES_PER_TABLE: usize = 5;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_tables_share_fsync_rounds() {
    let s = TestServer::start().await;
    for i in 0..TABLES {
        s.create_table(&format!("t{i:03}")).await;
    }
    let (_, before) = http_get(s.rest_addr(), "/metrics").await;
    let rounds_before =
        metric_value(&before, "flotilla_log_writer_fsync_rounds_total").expect("rounds");
    let mut writers = Vec::new();
    for i in 0..TABLES {
        let kv = s.kv();
        writers.push(tokio::spawn(async move {
            let mut kv = kv;
            for w in 0..WRITES_PER_TABLE {
                kv.put(flotilla_proto::regatta::v1::PutRequest {
                    table: format!("t{i:03}").into_bytes(),
                    key: format!("k{w}").into_bytes(),
                    value: vec![b'v'; 256],
                    prev_kv: false,
                })
                .await
                .expect("put");
            }
        }));
    }
    for w in writers {
        w.await.expect("writer");
    }
    let (_, after) = http_get(s.rest_addr(), "/metrics").await;
    let rounds = metric_value(&after, "flotilla_log_writer_fsync_rounds_total").expect("rounds")
        - rounds_before;
    let writes = (TABLES * WRITES_PER_TABLE) as f64;
    println!("{writes} writes over {TABLES} tables took {rounds} fsync rounds");
    assert!(rounds > 0.0);
    assert!(
        rounds * 4.0 < writes,
        "expected batching: {rounds} fsync rounds for {writes} writes"
    );
    for i in [0, TABLES / 2, TABLES - 1] {
        assert_eq!(
            s.range(&format!("t{i:03}"), b"\0", b"\0").await.count,
            WRITES_PER_TABLE as i64
        );
    }
    s.shutdown().await;
}
