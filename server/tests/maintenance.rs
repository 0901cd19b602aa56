//! Maintenance Backup and Restore on a leader (WIRE.md §4, §5.6, §5.9; issue 13 items 1
//! and 2), one node per cluster in one process: a backup restored into a fresh server
//! gives the same table; a restore replaces a table atomically (concurrent readers see
//! the old data or the new, never a mix), is refused with the old data intact when the
//! stream is bad or cut, and reaches a follower cluster by itself.

mod common;

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::time::Duration;

use common::{TestServer, eventually, settings};
use flotilla_proto::maintenance::v1::maintenance_client::MaintenanceClient;
use flotilla_proto::maintenance::v1::{
    BackupRequest, RestoreInfo, RestoreMessage, restore_message,
};
use flotilla_proto::mvcc::v1::KeyValue;
use flotilla_proto::mvcc::v1::command::CommandType;
use flotilla_proto::regatta::v1::RangeRequest;
use flotilla_proto::replication::v1::SnapshotChunk;
use flotilla_replication::format::RecordReader;
use flotilla_server::Role;
use tonic::Code;
use tonic::transport::Channel;

const WAIT: Duration = Duration::from_secs(20);

fn maintenance(server: &TestServer) -> MaintenanceClient<Channel> {
    MaintenanceClient::new(server.channel.clone()).max_decoding_message_size(16 << 20)
}

/// Every key of `table` with value and revisions.
async fn dump(server: &TestServer, table: &str) -> Vec<KeyValue> {
    server.all(table).await.expect("range")
}

fn pairs(kvs: &[KeyValue]) -> Vec<(Vec<u8>, Vec<u8>)> {
    kvs.iter()
        .map(|kv| (kv.key.clone(), kv.value.clone()))
        .collect()
}

/// The chunks of a backup of `table`.
async fn backup(server: &TestServer, table: &str) -> Vec<SnapshotChunk> {
    let mut stream = maintenance(server)
        .backup(BackupRequest {
            table: table.into(),
        })
        .await
        .expect("backup")
        .into_inner();
    let mut chunks = Vec::new();
    while let Some(chunk) = stream.message().await.expect("chunk") {
        chunks.push(chunk);
    }
    chunks
}

fn info(table: &str) -> RestoreMessage {
    RestoreMessage {
        data: Some(restore_message::Data::Info(RestoreInfo {
            table: table.into(),
        })),
    }
}

fn chunk(data: Vec<u8>) -> RestoreMessage {
    RestoreMessage {
        data: Some(restore_message::Data::Chunk(SnapshotChunk {
            len: data.len() as u64,
            data,
            index: 0,
        })),
    }
}

/// Restores `table` on `server` from `chunks` (info first).
async fn restore(
    server: &TestServer,
    table: &str,
    chunks: &[SnapshotChunk],
) -> Result<(), tonic::Status> {
    let mut messages = vec![info(table)];
    messages.extend(chunks.iter().map(|c| chunk(c.data.clone())));
    maintenance(server)
        .restore(futures::stream::iter(messages))
        .await
        .map(|_| ())
}

async fn fill(server: &TestServer, table: &str, prefix: &str, n: usize, value: &[u8]) {
    for i in 0..n {
        server
            .put(table, format!("{prefix}{i:04}").as_bytes(), value)
            .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_restored_into_a_fresh_server_gives_the_same_table() {
    let source = TestServer::start().await;
    source.create_table("t").await;
    fill(&source, "t", "k", 200, b"small").await;
    // Incompressible values large enough that the backup spans several chunks.
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    let big: Vec<u8> = (0..600_000)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    fill(&source, "t", "big", 4, &big).await;
    let want = dump(&source, "t").await;
    let applied = source
        .put("t", b"last", b"x")
        .await
        .header
        .expect("header")
        .revision as u64;
    let want_with_last = dump(&source, "t").await;
    assert_eq!(want_with_last.len(), want.len() + 1);

    let chunks = backup(&source, "t").await;
    assert!(chunks.len() > 1, "a 2.4 MB table spans chunks");
    for c in &chunks {
        assert!(c.data.len() <= 1 << 20, "chunks are at most 1 MiB");
        assert_eq!(c.len, c.data.len() as u64);
        assert_eq!(
            c.index, applied,
            "every chunk carries the index it reflects"
        );
    }
    // Armada's backup format: PUTs in key order, no trailing DUMMY.
    let bytes: Vec<u8> = chunks.iter().flat_map(|c| c.data.clone()).collect();
    let mut reader = RecordReader::new(&bytes[..]);
    let mut keys = Vec::new();
    while let Some(cmd) = reader.next_command().expect("record") {
        assert_eq!(cmd.r#type(), CommandType::Put, "only PUTs");
        keys.push(cmd.kv.expect("kv").key);
    }
    assert_eq!(keys.len(), want_with_last.len());
    assert!(keys.windows(2).all(|w| w[0] < w[1]), "in key order");

    // Restored into a fresh server: the table is created, with the same pairs, every
    // key at the restore's one revision.
    let target = TestServer::start().await;
    restore(&target, "t", &chunks).await.expect("restore");
    let got = dump(&target, "t").await;
    assert_eq!(pairs(&got), pairs(&want_with_last));
    let revision = got[0].mod_revision;
    assert!(
        got.iter()
            .all(|kv| kv.mod_revision == revision && kv.create_revision == revision)
    );
    // The next write is newer than the restore.
    let after = target.put("t", b"after", b"y").await;
    assert!(after.header.expect("header").revision as i64 > revision);
    // The restore survives a restart.
    let target = target.restart().await;
    assert_eq!(dump(&target, "t").await.len(), want_with_last.len() + 1);
    target.shutdown().await;
    source.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restore_is_atomic_for_readers_and_refused_whole_on_bad_input() {
    let server = TestServer::start().await;
    server.create_table("t").await;
    server.create_table("new").await;
    fill(&server, "t", "old", 100, b"old").await;
    fill(&server, "new", "new", 150, b"new").await;
    let old = dump(&server, "t").await;
    let new_chunks = backup(&server, "new").await;

    // A reader hammering the table while it is restored sees the old table or the new
    // one, never a mix and never an empty table.
    let reader_server = server.channel.clone();
    let stop = Arc::new(AtomicBool::new(false));
    let news = Arc::new(AtomicU64::new(0));
    let (stop_reader, news_seen) = (stop.clone(), news.clone());
    let reader = tokio::spawn(async move {
        let mut kv = flotilla_proto::regatta::v1::kv_client::KvClient::new(reader_server);
        let mut olds = 0u64;
        while !stop_reader.load(Relaxed) {
            let kvs = kv
                .range(RangeRequest {
                    table: b"t".to_vec(),
                    key: vec![0],
                    range_end: vec![0],
                    ..Default::default()
                })
                .await
                .expect("range")
                .into_inner()
                .kvs;
            let all_old = kvs.len() == 100 && kvs.iter().all(|kv| kv.value == b"old");
            let all_new = kvs.len() == 150 && kvs.iter().all(|kv| kv.value == b"new");
            assert!(all_old || all_new, "a torn read of {} keys", kvs.len());
            if all_old {
                olds += 1;
            } else {
                news_seen.fetch_add(1, Relaxed);
            }
        }
        olds
    });
    restore(&server, "t", &new_chunks).await.expect("restore");
    // Read on until the reader has seen the restored table a few times.
    let seen = eventually(WAIT, async || news.load(Relaxed) >= 3).await;
    stop.store(true, Relaxed);
    let olds = reader.await.expect("reader");
    assert!(seen, "the reader saw the restored table ({olds} old reads)");
    assert_eq!(
        pairs(&dump(&server, "t").await),
        pairs(&dump(&server, "new").await)
    );

    // Put the old table back, then try restores that must change nothing.
    let old_chunks = {
        server.create_table("keep").await;
        fill(&server, "keep", "old", 100, b"old").await;
        backup(&server, "keep").await
    };
    restore(&server, "t", &old_chunks)
        .await
        .expect("restore back");
    assert_eq!(pairs(&dump(&server, "t").await), pairs(&old));

    let mut m = maintenance(&server);
    // Message order (WIRE.md §5.6).
    let err = m
        .restore(futures::stream::iter(vec![chunk(vec![1, 2, 3])]))
        .await
        .expect_err("chunk first");
    assert_eq!(
        (err.code(), err.message()),
        (Code::Unknown, "first message should contain info")
    );
    let err = m
        .restore(futures::stream::iter(vec![info("t"), info("t")]))
        .await
        .expect_err("info twice");
    assert_eq!(
        (err.code(), err.message()),
        (Code::Unknown, "chunk expected")
    );
    // Bytes that are not a backup, and a backup cut short.
    let err = restore(
        &server,
        "t",
        &[SnapshotChunk {
            data: b"definitely not snappy".to_vec(),
            len: 21,
            index: 0,
        }],
    )
    .await
    .expect_err("garbage");
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    let mut cut = new_chunks.clone();
    let last = cut.last_mut().expect("a chunk");
    last.data.truncate(last.data.len() / 2);
    let err = restore(&server, "t", &cut).await.expect_err("cut backup");
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    // A client that dies mid-stream: its connection goes, half a backup sent.
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let api = server
        .running
        .as_ref()
        .and_then(|r| r.api_addr)
        .expect("api");
    let own = Channel::from_shared(format!("http://{api}"))
        .expect("uri")
        .connect()
        .await
        .expect("connect");
    let mut client = MaintenanceClient::new(own);
    let call = tokio::spawn(async move {
        client
            .restore(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
    });
    tx.send(info("t")).await.expect("send");
    let half = new_chunks[0].data[..new_chunks[0].data.len() / 2].to_vec();
    tx.send(chunk(half)).await.expect("send");
    let staging = server.dir.path().join("restore");
    let staged = |dir: &std::path::Path| {
        std::fs::read_dir(dir).map(|d| d.flatten().map(|e| e.file_name()).collect::<Vec<_>>())
    };
    let receiving = eventually(WAIT, async || {
        staged(&staging).is_ok_and(|files| !files.is_empty())
    })
    .await;
    assert!(receiving, "the server is receiving the upload");
    // The client dies (its connection goes) while its stream is still open.
    call.abort();
    let _ = call.await;
    let clean = eventually(WAIT, async || {
        staged(&staging).is_ok_and(|files| files.is_empty())
    })
    .await;
    assert!(
        clean,
        "nothing staged is left behind: {:?}",
        staged(&staging)
    );
    drop(tx);
    assert_eq!(
        pairs(&dump(&server, "t").await),
        pairs(&old),
        "old data intact"
    );

    // Backup of a missing table.
    let err = m
        .backup(BackupRequest {
            table: b"missing".to_vec(),
        })
        .await
        .expect_err("missing table");
    assert_eq!(
        (err.code(), err.message()),
        (Code::Unknown, "table not found")
    );
    server.shutdown().await;
}

/// A follower cluster pulling from `leader`.
async fn follower_of(leader: &TestServer) -> TestServer {
    let dir = tempfile::tempdir().expect("dir");
    let mut s = settings(dir.path());
    let addr = leader
        .running
        .as_ref()
        .and_then(|r| r.replication_addr)
        .expect("leader serves replication");
    s.replication.leader_address = format!("http://{addr}");
    s.replication.reconcile_interval = "200ms".into();
    TestServer::start_as(dir, s, Role::Follower).await
}

async fn converges(leader: &TestServer, follower: &TestServer, table: &str) -> bool {
    let want = dump(leader, table).await;
    eventually(WAIT, async || {
        follower.all(table).await.is_ok_and(|kvs| kvs == want)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_cluster_follows_a_restore_by_itself() {
    let leader = TestServer::start().await;
    leader.create_table("t").await;
    leader.create_table("src").await;
    fill(&leader, "t", "old", 50, b"old").await;
    fill(&leader, "src", "new", 70, b"new").await;
    let follower = follower_of(&leader).await;
    assert!(
        converges(&leader, &follower, "t").await,
        "follower caught up: {:?}",
        follower.all("t").await.map(|kvs| kvs.len())
    );

    let chunks = backup(&leader, "src").await;
    restore(&leader, "t", &chunks).await.expect("restore");
    assert_eq!(dump(&leader, "t").await.len(), 70);
    assert!(
        converges(&leader, &follower, "t").await,
        "the follower holds the restored table, with the leader's revisions"
    );
    fill(&leader, "t", "after", 3, b"after").await;
    assert!(converges(&leader, &follower, "t").await, "and follows on");

    // Backup and Restore belong to leader clusters.
    let mut m = maintenance(&follower);
    let err = m
        .backup(BackupRequest {
            table: b"t".to_vec(),
        })
        .await
        .expect_err("backup on a follower");
    assert_eq!(
        (err.code(), err.message()),
        (Code::Unimplemented, "method Backup not implemented")
    );
    let err = restore(&follower, "t", &chunks)
        .await
        .expect_err("restore on a follower");
    assert_eq!(
        (err.code(), err.message()),
        (Code::Unimplemented, "method Restore not implemented")
    );
    follower.shutdown().await;
    leader.shutdown().await;
}
