//! A follower against a scripted leader cluster (one in-test gRPC server).
//!
//! - Re-delivery: every Log/Replicate answer starts a few entries before the index asked
//!   for, repeats that batch whole, then sends a batch overlapping it. The follower must
//!   apply each leader index exactly once: its table ends equal to a model of the log
//!   (values and both revisions), which any re-applied put or delete would break.
//! - Command-less entries: a `ReplicateCommand` without its command is an error, never
//!   applied as an empty PUT.
//! - Interrupted snapshot transfers: the leader answers USE_SNAPSHOT, then cuts its first
//!   snapshot streams short. The follower keeps serving its old data meanwhile, retries,
//!   and then holds exactly the snapshot.

mod common;

use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use common::{TestServer, eventually, settings};
use flotilla_proto::mvcc::v1::{Command, KeyValue, command::CommandType};
use flotilla_proto::replication::v1::log_server::{Log, LogServer};
use flotilla_proto::replication::v1::metadata_server::{Metadata, MetadataServer};
use flotilla_proto::replication::v1::snapshot_server::{Snapshot, SnapshotServer};
use flotilla_proto::replication::v1::{
    MetadataRequest, MetadataResponse, ReplicateCommand, ReplicateCommandsResponse,
    ReplicateErrResponse, ReplicateError, ReplicateRequest, ReplicateResponse, SnapshotChunk,
    SnapshotQueryRequest, SnapshotQueryResponse, SnapshotRequest, Table, replicate_response,
};
use flotilla_replication::format::RecordWriter;
use flotilla_server::Role;
use futures::Stream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

/// Entries in the scripted leader's log.
const ENTRIES: u64 = 300;
/// Each answer starts this many entries before the one asked for.
const RESEND: u64 = 3;
/// Entries in the first (and repeated) batch of an answer.
const BATCH: u64 = 8;

/// Command `i` of the scripted log: mostly puts over 13 keys (so a re-applied old put
/// would leave a stale value), a delete of one of them every 17th, a non-data entry every
/// 10th.
fn command(i: u64) -> Command {
    let key = format!("k{:02}", i % 13).into_bytes();
    let (r#type, value) = match i {
        _ if i.is_multiple_of(10) => (CommandType::Dummy, Vec::new()),
        _ if i.is_multiple_of(17) => (CommandType::Delete, Vec::new()),
        _ => (CommandType::Put, format!("v{i}").into_bytes()),
    };
    Command {
        table: b"t".to_vec(),
        r#type: r#type as i32,
        kv: (r#type != CommandType::Dummy).then(|| KeyValue {
            key,
            value,
            ..Default::default()
        }),
        leader_index: Some(i),
        ..Default::default()
    }
}

/// key -> (value, create revision, mod revision) after applying entries `1..=last`.
fn model(last: u64) -> BTreeMap<Vec<u8>, (Vec<u8>, i64, i64)> {
    let mut m: BTreeMap<Vec<u8>, (Vec<u8>, i64, i64)> = BTreeMap::new();
    for i in 1..=last {
        let c = command(i);
        let Some(kv) = c.kv else { continue };
        let rev = i64::try_from(i).expect("small");
        if c.r#type == CommandType::Delete as i32 {
            m.remove(&kv.key);
        } else {
            let create = m.get(&kv.key).map_or(rev, |e| e.1);
            m.insert(kv.key, (kv.value, create, rev));
        }
    }
    m
}

fn batch(from: u64, to: u64) -> Option<ReplicateResponse> {
    (from <= to).then(|| ReplicateResponse {
        leader_index: ENTRIES,
        response: Some(replicate_response::Response::CommandsResponse(
            ReplicateCommandsResponse {
                commands: (from..=to)
                    .map(|i| ReplicateCommand {
                        leader_index: i,
                        command: Some(command(i)),
                    })
                    .collect(),
            },
        )),
    })
}

/// A leader of one table `t`. Its log is [`command`]`(1..=ENTRIES)` until the test turns
/// on `snapshot_only`; from then on every Log/Replicate below [`SNAPSHOT_INDEX`] answers
/// USE_SNAPSHOT, and Snapshot/Stream cuts the first `cut_snapshots` streams short.
#[derive(Clone, Default)]
struct ScriptedLeader {
    /// Answers that re-sent entries before the one asked for, so the test can tell
    /// re-delivery really happened.
    resent: Arc<AtomicU64>,
    snapshot_only: Arc<AtomicBool>,
    /// Snapshot streams still to cut short.
    cut_snapshots: Arc<AtomicU64>,
    /// Snapshot streams started.
    snapshot_calls: Arc<AtomicU64>,
    /// Every replicated command arrives without its command (a broken leader).
    commandless: Arc<AtomicBool>,
}

/// Leader index of the scripted snapshot.
const SNAPSHOT_INDEX: u64 = 1_000;

/// The scripted snapshot: 100 keys `s000..` with their revisions, in the WIRE.md §5.8-7
/// byte format, with the trailing DUMMY.
fn snapshot_bytes() -> Vec<u8> {
    let mut writer = RecordWriter::default();
    let mut out = Vec::new();
    for i in 0..100i64 {
        let cmd = Command {
            table: b"t".to_vec(),
            r#type: CommandType::Put as i32,
            kv: Some(KeyValue {
                key: format!("s{i:03}").into_bytes(),
                value: vec![b'x'; 1_000],
                create_revision: 500 + i,
                mod_revision: 600 + i,
            }),
            ..Default::default()
        };
        out.extend(writer.push(&cmd).expect("encode").unwrap_or_default());
    }
    let dummy = Command {
        table: b"t".to_vec(),
        r#type: CommandType::Dummy as i32,
        leader_index: Some(SNAPSHOT_INDEX),
        ..Default::default()
    };
    out.extend(writer.push(&dummy).expect("encode").unwrap_or_default());
    for chunk in writer.finish().expect("finish") {
        out.extend(chunk);
    }
    out
}

#[tonic::async_trait]
impl Metadata for ScriptedLeader {
    async fn get(&self, _: Request<MetadataRequest>) -> Result<Response<MetadataResponse>, Status> {
        Ok(Response::new(MetadataResponse {
            tables: vec![Table {
                name: "t".into(),
                r#type: 0,
            }],
        }))
    }
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

#[tonic::async_trait]
impl Log for ScriptedLeader {
    type ReplicateStream = BoxStream<ReplicateResponse>;

    async fn replicate(
        &self,
        request: Request<ReplicateRequest>,
    ) -> Result<Response<Self::ReplicateStream>, Status> {
        let asked = request.into_inner().leader_index;
        let snapshot_only = self.snapshot_only.load(Ordering::Relaxed);
        if snapshot_only && asked <= SNAPSHOT_INDEX {
            let use_snapshot = ReplicateResponse {
                leader_index: SNAPSHOT_INDEX,
                response: Some(replicate_response::Response::ErrorResponse(
                    ReplicateErrResponse {
                        error: ReplicateError::UseSnapshot as i32,
                    },
                )),
            };
            return Ok(Response::new(Box::pin(futures::stream::iter([Ok(
                use_snapshot,
            )]))));
        }
        let mut messages = Vec::new();
        if self.commandless.load(Ordering::Relaxed) {
            let mut broken = batch(asked, asked + BATCH);
            if let Some(replicate_response::Response::CommandsResponse(b)) =
                broken.as_mut().and_then(|m| m.response.as_mut())
            {
                for c in &mut b.commands {
                    c.command = None;
                }
            }
            messages.extend(broken);
        } else if !snapshot_only {
            let from = asked.saturating_sub(RESEND).max(1);
            let to = (asked + BATCH).min(ENTRIES);
            if from < asked && from <= to {
                self.resent.fetch_add(1, Ordering::Relaxed);
            }
            messages.extend(
                [
                    batch(from, to),
                    batch(from, to),
                    batch(asked + 2, (asked + 2 * BATCH).min(ENTRIES)),
                ]
                .into_iter()
                .flatten(),
            );
        }
        if messages.is_empty() {
            // Caught up: answer like an idle Armada leader, after a pause so the
            // follower's immediate re-ask does not spin.
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        messages.push(ReplicateResponse {
            leader_index: if snapshot_only {
                SNAPSHOT_INDEX
            } else {
                ENTRIES
            },
            response: None,
        });
        Ok(Response::new(Box::pin(futures::stream::iter(
            messages.into_iter().map(Ok),
        ))))
    }
}

#[tonic::async_trait]
impl Snapshot for ScriptedLeader {
    type StreamStream = BoxStream<SnapshotChunk>;

    async fn stream(
        &self,
        _: Request<SnapshotRequest>,
    ) -> Result<Response<Self::StreamStream>, Status> {
        self.snapshot_calls.fetch_add(1, Ordering::Relaxed);
        let bytes = snapshot_bytes();
        let cut = self
            .cut_snapshots
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
            .is_ok();
        let chunk = |data: Vec<u8>| {
            Ok(SnapshotChunk {
                len: data.len() as u64,
                data,
                index: 0,
            })
        };
        let items = if cut {
            // Half the bytes, then the connection "drops".
            vec![
                chunk(bytes[..bytes.len() / 2].to_vec()),
                Err(Status::unavailable("connection reset")),
            ]
        } else {
            vec![chunk(bytes)]
        };
        Ok(Response::new(Box::pin(futures::stream::iter(items))))
    }

    async fn query(
        &self,
        _: Request<SnapshotQueryRequest>,
    ) -> Result<Response<SnapshotQueryResponse>, Status> {
        Err(Status::failed_precondition("no shared snapshot store"))
    }
}

/// Serves `leader` on a loopback port until `stop`; returns its address.
async fn serve(
    leader: &ScriptedLeader,
    stop: &CancellationToken,
) -> (std::net::SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let server = tonic::transport::Server::builder()
        .add_service(MetadataServer::new(leader.clone()))
        .add_service(LogServer::new(leader.clone()))
        .add_service(SnapshotServer::new(leader.clone()))
        .serve_with_incoming_shutdown(
            tokio_stream::wrappers::TcpListenerStream::new(listener),
            stop.clone().cancelled_owned(),
        );
    let task = tokio::spawn(async move { server.await.expect("scripted leader") });
    (addr, task)
}

async fn follower_of(addr: std::net::SocketAddr) -> TestServer {
    let dir = tempfile::tempdir().expect("dir");
    let mut s = settings(dir.path());
    s.replication.leader_address = format!("http://{addr}");
    s.replication.reconcile_interval = "200ms".into();
    TestServer::start_as(dir, s, Role::Follower).await
}

/// Table `t` on `follower`: key -> (value, create revision, mod revision).
async fn table(follower: &TestServer) -> Option<BTreeMap<Vec<u8>, (Vec<u8>, i64, i64)>> {
    let resp = follower
        .kv()
        .range(flotilla_proto::regatta::v1::RangeRequest {
            table: b"t".to_vec(),
            key: vec![0],
            range_end: vec![0],
            ..Default::default()
        })
        .await
        .ok()?;
    Some(
        resp.into_inner()
            .kvs
            .into_iter()
            .map(|kv| (kv.key, (kv.value, kv.create_revision, kv.mod_revision)))
            .collect(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redelivered_and_overlapping_batches_apply_once() {
    let leader = ScriptedLeader::default();
    let stop = CancellationToken::new();
    let (addr, server) = serve(&leader, &stop).await;
    let follower = follower_of(addr).await;

    let want = model(ENTRIES);
    let mut got = None;
    let same = eventually(Duration::from_secs(30), async || {
        got = table(&follower).await;
        got.as_ref() == Some(&want)
    })
    .await;
    assert!(same, "follower holds {got:?}, the log says {want:?}");
    // Each answer moves the follower at most 2 * BATCH entries on, and all but the first
    // re-sent entries it had.
    let resent = leader.resent.load(Ordering::Relaxed);
    assert!(
        resent >= ENTRIES / (2 * BATCH) - 1,
        "only {resent} answers re-sent entries"
    );
    follower.shutdown().await;
    stop.cancel();
    server.await.expect("join");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupted_snapshot_keeps_the_old_data_and_is_retried() {
    let leader = ScriptedLeader::default();
    let stop = CancellationToken::new();
    let (addr, server) = serve(&leader, &stop).await;
    let follower = follower_of(addr).await;
    let old = model(ENTRIES);
    assert!(
        eventually(Duration::from_secs(30), async || table(&follower)
            .await
            .as_ref()
            == Some(&old))
        .await,
        "the follower replicates the log first"
    );

    // The leader now has only a snapshot for it, and the first three transfers break.
    leader.cut_snapshots.store(3, Ordering::Relaxed);
    leader.snapshot_only.store(true, Ordering::Relaxed);
    assert!(
        eventually(Duration::from_secs(30), async || leader
            .snapshot_calls
            .load(Ordering::Relaxed)
            >= 2)
        .await,
        "the follower asks for the snapshot again after a broken transfer"
    );
    assert_eq!(
        table(&follower).await.as_ref(),
        Some(&old),
        "a broken transfer leaves the old data served and intact"
    );

    let want: BTreeMap<Vec<u8>, (Vec<u8>, i64, i64)> = (0..100i64)
        .map(|i| {
            let key = format!("s{i:03}").into_bytes();
            (key, (vec![b'x'; 1_000], 500 + i, 600 + i))
        })
        .collect();
    let mut got = None;
    let loaded = eventually(Duration::from_secs(30), async || {
        got = table(&follower).await;
        got.as_ref() == Some(&want)
    })
    .await;
    assert!(
        loaded,
        "after the retries the follower holds exactly the snapshot, not {:?} keys",
        got.map(|t| t.len())
    );
    assert!(leader.snapshot_calls.load(Ordering::Relaxed) >= 4);
    follower.shutdown().await;
    stop.cancel();
    server.await.expect("join");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replicated_entry_without_its_command_is_an_error_not_an_empty_put() {
    let leader = ScriptedLeader::default();
    leader.commandless.store(true, Ordering::Relaxed);
    let stop = CancellationToken::new();
    let (addr, server) = serve(&leader, &stop).await;
    let follower = follower_of(addr).await;
    let refused = eventually(Duration::from_secs(30), async || {
        let (_, body) = common::http_get(follower.rest_addr(), "/metrics").await;
        common::metric_value(
            &body,
            "flotilla_replication_errors_total{kind=\"protocol\",table=\"t\"}",
        )
        .is_some_and(|n| n >= 1.0)
    })
    .await;
    assert!(refused, "the follower reports the broken batch");
    assert_eq!(
        table(&follower).await,
        Some(BTreeMap::new()),
        "nothing of the broken batch was applied"
    );
    follower.shutdown().await;
    stop.cancel();
    server.await.expect("join");
}
