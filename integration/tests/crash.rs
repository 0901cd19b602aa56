//! kill -9 under load, restart on the same data dir: every acknowledged write is there
//! with its revision, nothing else appears, and the server is back within seconds.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use flotilla_integration::{Process, eventually};
use flotilla_proto::regatta::v1::{
    CreateTableRequest, PutRequest, RangeRequest, tables_client::TablesClient,
};

/// key -> (value, revision) of acknowledged writes.
type Acked = BTreeMap<Vec<u8>, (Vec<u8>, i64)>;

const WRITERS: usize = 16;
/// Writes acknowledged before the kill: enough that the kill lands mid-load.
const ACKED_BEFORE_KILL: usize = 2_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_mid_load_keeps_every_acknowledged_write() {
    let dir = tempfile::tempdir().expect("tempdir");
    let p = Process::start(dir.path(), Duration::from_secs(30)).await;
    TablesClient::new(p.channel().await)
        .create(CreateTableRequest {
            name: "crash".into(),
            config: None,
        })
        .await
        .expect("create table");

    // Every write has a unique key.
    let acked: Arc<Mutex<Acked>> = Arc::default();
    let mut writers = Vec::new();
    for w in 0..WRITERS {
        let mut kv = p.kv().await;
        let acked = acked.clone();
        writers.push(tokio::spawn(async move {
            for i in 0u64.. {
                let key = format!("w{w:02}-{i:08}").into_bytes();
                let value = format!("value-{w}-{i}").into_bytes();
                let req = PutRequest {
                    table: b"crash".to_vec(),
                    key: key.clone(),
                    value: value.clone(),
                    prev_kv: false,
                };
                match kv.put(req).await {
                    Ok(resp) => {
                        let rev = resp.into_inner().header.map_or(0, |h| h.revision as i64);
                        acked.lock().expect("lock").insert(key, (value, rev));
                    }
                    Err(_) => return, // the server died
                }
            }
        }));
    }
    assert!(
        eventually(Duration::from_secs(60), async || acked
            .lock()
            .expect("lock")
            .len()
            >= ACKED_BEFORE_KILL)
        .await,
        "writers made progress"
    );
    p.kill9().await;
    for w in writers {
        w.await.expect("writer task");
    }
    let acked = acked.lock().expect("lock").clone();

    let restarted_at = Instant::now();
    let p = Process::start(dir.path(), Duration::from_secs(30)).await;
    let mut kv = p.kv().await;
    let whole = RangeRequest {
        table: b"crash".to_vec(),
        key: b"\0".to_vec(),
        range_end: b"\0".to_vec(),
        linearizable: true,
        ..Default::default()
    };
    let ready = eventually(Duration::from_secs(10), async || {
        kv.range(whole.clone()).await.is_ok()
    })
    .await;
    assert!(ready, "server serves reads after restart");
    let startup = restarted_at.elapsed();
    assert!(
        startup < Duration::from_secs(10),
        "restart took {startup:?}"
    );

    // Read everything back through IterateRange.
    let mut found = BTreeMap::new();
    let mut stream = kv
        .iterate_range(RangeRequest {
            key: b"\x01".to_vec(),
            ..whole.clone()
        })
        .await
        .expect("iterate")
        .into_inner();
    while let Some(page) = stream.message().await.expect("page") {
        for kv in page.kvs {
            found.insert(kv.key, (kv.value, kv.mod_revision, kv.create_revision));
        }
    }
    for (key, (value, rev)) in &acked {
        let (v, m, c) = found
            .get(key)
            .unwrap_or_else(|| panic!("acknowledged key {key:?} lost"));
        assert_eq!(v, value, "value of {key:?}");
        assert_eq!((m, c), (rev, rev), "revision of {key:?}");
    }
    // Anything else present must be a write some writer really attempted (committed but
    // unacknowledged when the process died), whole and well-formed.
    for (key, (value, _, _)) in &found {
        if acked.contains_key(key) {
            continue;
        }
        let k = String::from_utf8_lossy(key);
        let (w, i) = k
            .trim_start_matches('w')
            .split_once('-')
            .expect("writer key shape");
        let expected = format!(
            "value-{}-{}",
            w.parse::<u64>().expect("w"),
            i.parse::<u64>().expect("i")
        );
        assert_eq!(value, expected.as_bytes(), "unexpected value for {k}");
    }
    let revisions: std::collections::BTreeSet<i64> = found.values().map(|(_, m, _)| *m).collect();
    assert_eq!(
        revisions.len(),
        found.len(),
        "each write has its own revision"
    );
    println!(
        "{} acknowledged, {} present after kill -9; restart in {startup:?}",
        acked.len(),
        found.len()
    );

    // And it keeps taking writes.
    kv.put(PutRequest {
        table: b"crash".to_vec(),
        key: b"after".to_vec(),
        value: b"restart".to_vec(),
        prev_kv: false,
    })
    .await
    .expect("write after restart");
    p.kill9().await;
}
