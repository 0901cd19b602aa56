//! A follower against a scripted leader that re-sends what the follower already has: every
//! Log/Replicate answer starts a few entries before the index asked for, repeats that
//! batch whole, then sends a batch overlapping it. The follower must apply each leader
//! index exactly once: its table ends equal to a model of the log (values and both
//! revisions), which any re-applied put or delete would break.

mod common;

use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use common::{TestServer, eventually, settings};
use flotilla_proto::mvcc::v1::{Command, KeyValue, command::CommandType};
use flotilla_proto::replication::v1::log_server::{Log, LogServer};
use flotilla_proto::replication::v1::metadata_server::{Metadata, MetadataServer};
use flotilla_proto::replication::v1::{
    MetadataRequest, MetadataResponse, ReplicateCommand, ReplicateCommandsResponse,
    ReplicateRequest, ReplicateResponse, Table, replicate_response,
};
use flotilla_server::Role;
use futures::Stream;
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

/// A leader of one table `t` whose log is [`command`]`(1..=ENTRIES)`.
#[derive(Clone, Default)]
struct ScriptedLeader {
    /// Answers that re-sent entries before the one asked for, so the test can tell
    /// re-delivery really happened.
    resent: Arc<AtomicU64>,
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

type ReplicateStream = Pin<Box<dyn Stream<Item = Result<ReplicateResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Log for ScriptedLeader {
    type ReplicateStream = ReplicateStream;

    async fn replicate(
        &self,
        request: Request<ReplicateRequest>,
    ) -> Result<Response<ReplicateStream>, Status> {
        let asked = request.into_inner().leader_index;
        let from = asked.saturating_sub(RESEND).max(1);
        let to = (asked + BATCH).min(ENTRIES);
        if from < asked && from <= to {
            self.resent.fetch_add(1, Ordering::Relaxed);
        }
        let mut messages: Vec<ReplicateResponse> = [
            batch(from, to),
            batch(from, to),
            batch(asked + 2, (asked + 2 * BATCH).min(ENTRIES)),
        ]
        .into_iter()
        .flatten()
        .collect();
        if messages.is_empty() {
            // Caught up: answer like an idle Armada leader, after a pause so the
            // follower's immediate re-ask does not spin.
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        messages.push(ReplicateResponse {
            leader_index: ENTRIES,
            response: None,
        });
        Ok(Response::new(Box::pin(futures::stream::iter(
            messages.into_iter().map(Ok),
        ))))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redelivered_and_overlapping_batches_apply_once() {
    let leader = ScriptedLeader::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let stop = tokio_util::sync::CancellationToken::new();
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(MetadataServer::new(leader.clone()))
            .add_service(LogServer::new(leader.clone()))
            .serve_with_incoming_shutdown(
                tokio_stream::wrappers::TcpListenerStream::new(listener),
                stop.clone().cancelled_owned(),
            ),
    );

    let dir = tempfile::tempdir().expect("dir");
    let mut s = settings(dir.path());
    s.replication.leader_address = format!("http://{addr}");
    s.replication.reconcile_interval = "200ms".into();
    let follower = TestServer::start_as(dir, s, Role::Follower).await;

    let want = model(ENTRIES);
    let mut got = BTreeMap::new();
    let same = eventually(Duration::from_secs(30), async || {
        let Ok(resp) = follower
            .kv()
            .range(flotilla_proto::regatta::v1::RangeRequest {
                table: b"t".to_vec(),
                key: vec![0],
                range_end: vec![0],
                ..Default::default()
            })
            .await
        else {
            return false;
        };
        got = resp
            .into_inner()
            .kvs
            .into_iter()
            .map(|kv| (kv.key, (kv.value, kv.create_revision, kv.mod_revision)))
            .collect();
        got == want
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
    server.await.expect("join").expect("scripted leader");
}
