//! A leader and a follower cluster in one process (one node each, real gRPC on loopback):
//! every command type replicates with the leader's revisions, tables come and go by
//! themselves, writes through the follower are read back at once, a follower that starts
//! after the leader compacted its log recovers by snapshot, Reset re-pulls, and the
//! leader's Log/Replicate answers USE_SNAPSHOT and LEADER_BEHIND. One test runs a
//! three-node follower cluster, whose table worker moves when its node stops; others
//! read incremental snapshots and the `snapshots-live` HTTP object.

mod common;

use std::time::Duration;

use common::{TestServer, eventually, http_get, metric_value, settings};
use flotilla_proto::maintenance::v1::ResetRequest;
use flotilla_proto::maintenance::v1::maintenance_client::MaintenanceClient;
use flotilla_proto::mvcc::v1::command::CommandType;
use flotilla_proto::mvcc::v1::{Compare, KeyValue, RequestOp, compare, request_op};
use flotilla_proto::regatta::v1::{
    CreateTableRequest, DeleteRangeRequest, DeleteTableRequest, ListTablesRequest, TxnRequest,
};
use flotilla_proto::replication::v1::log_client::LogClient;
use flotilla_proto::replication::v1::snapshot_client::SnapshotClient;
use flotilla_proto::replication::v1::{
    ReplicateError, ReplicateRequest, SnapshotRequest, replicate_response,
};
use flotilla_replication::format::RecordReader;
use flotilla_server::Role;

const WAIT: Duration = Duration::from_secs(20);

async fn leader(retention: u64) -> TestServer {
    let dir = tempfile::tempdir().expect("dir");
    let mut s = settings(dir.path());
    s.raft.log_retention_entries = retention;
    TestServer::start_as(dir, s, Role::Leader).await
}

/// Where `leader` serves replication.
fn replication_addr(leader: &TestServer) -> std::net::SocketAddr {
    leader
        .running
        .as_ref()
        .and_then(|r| r.replication_addr)
        .expect("leader serves replication")
}

async fn follower_of(leader: &TestServer) -> TestServer {
    let dir = tempfile::tempdir().expect("dir");
    let mut s = settings(dir.path());
    let addr = replication_addr(leader);
    s.replication.leader_address = format!("http://{addr}");
    s.replication.reconcile_interval = "200ms".into();
    TestServer::start_as(dir, s, Role::Follower).await
}

/// Every key of `table` with value and revisions, read from `server`.
async fn dump(server: &TestServer, table: &str) -> Option<Vec<KeyValue>> {
    server.all(table).await.ok()
}

/// Waits until the follower's copy of `table` equals the leader's, key by key.
async fn assert_converges(leader: &TestServer, follower: &TestServer, table: &str) {
    let want = dump(leader, table).await.expect("leader dump");
    let same = eventually(WAIT, async || {
        dump(follower, table).await.as_ref() == Some(&want)
    })
    .await;
    assert!(
        same,
        "follower never matched the leader on {table}: leader {} keys, follower {:?}",
        want.len(),
        dump(follower, table).await.map(|d| d.len())
    );
}

/// The error of a Log/Replicate call on table `t` from `leader_index` (its only message).
async fn replicate_error(
    log: &mut LogClient<tonic::transport::Channel>,
    leader_index: u64,
) -> ReplicateError {
    let first = log
        .replicate(ReplicateRequest {
            table: b"t".to_vec(),
            leader_index,
        })
        .await
        .expect("replicate")
        .into_inner()
        .message()
        .await
        .expect("message")
        .expect("one message");
    match first.response {
        Some(replicate_response::Response::ErrorResponse(e)) => e.error(),
        other => panic!("expected an error response, got {other:?}"),
    }
}

async fn metric(server: &TestServer, series: &str) -> f64 {
    let (_, body) = http_get(server.rest_addr(), "/metrics").await;
    metric_value(&body, series).unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_command_type_replicates_with_the_leaders_revisions() {
    let leader = leader(10_000).await;
    leader.create_table("t").await;
    let follower = follower_of(&leader).await;
    for i in 0..50u32 {
        leader.put("t", format!("k{i:03}").as_bytes(), b"v1").await;
    }
    leader.put("t", b"k001", b"v2").await; // overwrite keeps create revision
    let mut kv = leader.kv();
    kv.delete_range(DeleteRangeRequest {
        table: "t".into(),
        key: b"k010".to_vec(),
        range_end: b"k020".to_vec(),
        ..Default::default()
    })
    .await
    .expect("range delete");
    kv.delete_range(DeleteRangeRequest {
        table: "t".into(),
        key: b"k030".to_vec(),
        ..Default::default()
    })
    .await
    .expect("single delete");
    let put_op = |k: &[u8], v: &[u8]| RequestOp {
        request: Some(request_op::Request::RequestPut(request_op::Put {
            key: k.to_vec(),
            value: v.to_vec(),
            prev_kv: false,
        })),
    };
    kv.txn(TxnRequest {
        table: "t".into(),
        compare: vec![Compare {
            key: b"k000".to_vec(),
            target_union: Some(compare::TargetUnion::Value(b"v1".to_vec())),
            ..Default::default()
        }],
        success: vec![put_op(b"txn-a", b"1"), put_op(b"txn-b", b"2")],
        failure: vec![put_op(b"never", b"x")],
    })
    .await
    .expect("txn");
    assert_converges(&leader, &follower, "t").await;
    let got = dump(&follower, "t").await.expect("dump");
    let k001 = got.iter().find(|kv| kv.key == b"k001").expect("k001");
    assert!(k001.mod_revision > k001.create_revision && k001.create_revision > 0);

    // Tables appear and disappear on the follower by themselves.
    leader.create_table("later").await;
    leader.put("later", b"x", b"y").await;
    assert_converges(&leader, &follower, "later").await;
    leader
        .tables()
        .delete(DeleteTableRequest {
            name: "later".into(),
        })
        .await
        .expect("delete");
    let gone = eventually(WAIT, async || {
        let list = follower
            .tables()
            .list(ListTablesRequest {})
            .await
            .expect("list")
            .into_inner();
        list.tables.iter().all(|t| t.name != "later")
    })
    .await;
    assert!(gone, "a table dropped on the leader stays on the follower");

    // The follower refuses table admin, as Armada's does.
    let err = follower
        .tables()
        .create(CreateTableRequest {
            name: "x".into(),
            config: None,
        })
        .await
        .expect_err("create on a follower");
    assert_eq!(err.code(), tonic::Code::Unimplemented);
    // The gauge is set when the worker (re)takes the lease, which a reconcile can
    // restart: wait for it rather than read it once.
    let leased = eventually(WAIT, async || {
        metric(&follower, "flotilla_replication_leased{table=\"t\"}").await == 1.0
    })
    .await;
    assert!(leased, "the single follower node holds the worker of t");
    follower.shutdown().await;
    leader.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_through_the_follower_are_read_back_at_once() {
    let leader = leader(10_000).await;
    leader.create_table("t").await;
    let follower = follower_of(&leader).await;
    assert!(
        eventually(WAIT, async || dump(&follower, "t").await.is_some()).await,
        "the follower gets the table"
    );
    for i in 0..30u32 {
        let key = format!("rw{i}");
        let put = follower.put("t", key.as_bytes(), b"mine").await;
        let revision = put.header.expect("header").revision;
        assert!(revision > 0);
        // Serializable read on the follower right after the acknowledgement.
        let got = follower.range("t", key.as_bytes(), b"").await;
        assert_eq!(got.kvs.len(), 1, "read-your-writes on {key}");
        assert_eq!(
            got.kvs[0].mod_revision as u64, revision,
            "same revision as the leader"
        );
    }
    let err = follower
        .kv()
        .put(flotilla_proto::regatta::v1::PutRequest {
            table: "missing".into(),
            key: b"k".to_vec(),
            value: b"v".to_vec(),
            prev_kv: false,
        })
        .await
        .expect_err("unknown table");
    assert_eq!(err.code(), tonic::Code::NotFound);
    assert!(
        err.message()
            .starts_with("leader error: rpc error: code = NotFound"),
        "{}",
        err.message()
    );
    assert_converges(&leader, &follower, "t").await;
    follower.shutdown().await;
    leader.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_follower_recovers_by_snapshot_and_reset_repulls() {
    let leader = leader(20).await;
    leader.create_table("t").await;
    for i in 0..300u32 {
        leader
            .put("t", format!("k{i:04}").as_bytes(), &[b'x'; 100])
            .await;
    }
    // Index 1 is long compacted: the log says USE_SNAPSHOT...
    let addr = replication_addr(&leader);
    let mut log = LogClient::connect(format!("http://{addr}"))
        .await
        .expect("connect");
    assert_eq!(
        replicate_error(&mut log, 1).await,
        ReplicateError::UseSnapshot
    );
    // ...and asking for the future says LEADER_BEHIND.
    assert_eq!(
        replicate_error(&mut log, 1_000_000).await,
        ReplicateError::LeaderBehind
    );
    let err = log
        .replicate(ReplicateRequest {
            table: b"t".to_vec(),
            leader_index: 0,
        })
        .await
        .expect_err("index 0 is invalid");
    assert_eq!(err.code(), tonic::Code::InvalidArgument);

    let follower = follower_of(&leader).await;
    assert_converges(&leader, &follower, "t").await;
    let recoveries = "flotilla_replication_snapshot_recoveries_total{table=\"t\"}";
    assert!(
        metric(&follower, recoveries).await >= 1.0,
        "recovered by snapshot"
    );
    // Replication goes on from the snapshot's index.
    for i in 0..20u32 {
        leader.put("t", format!("after{i}").as_bytes(), b"y").await;
    }
    assert_converges(&leader, &follower, "t").await;

    let before = metric(&follower, recoveries).await;
    MaintenanceClient::new(follower.channel.clone())
        .reset(ResetRequest {
            table: b"t".to_vec(),
            reset_all: false,
        })
        .await
        .expect("reset");
    // Reset only forgets the leader index (as Armada's does); the worker then loads a
    // fresh snapshot on its own.
    let reloaded = eventually(WAIT, async || metric(&follower, recoveries).await > before).await;
    assert!(reloaded, "reset loads a fresh snapshot");
    leader.put("t", b"after-reset", b"z").await;
    assert_converges(&leader, &follower, "t").await;
    follower.shutdown().await;
    leader.shutdown().await;
}

/// Waits until exactly one running follower node holds the worker of `t`; its index.
async fn one_lease_holder(followers: &[Option<TestServer>]) -> usize {
    let nodes: Vec<(u64, String)> = followers
        .iter()
        .enumerate()
        .filter_map(|(i, f)| Some((i as u64, f.as_ref()?.rest_addr().to_string())))
        .collect();
    let holder = flotilla_testkit::leases::one_holder(&nodes, "t", WAIT)
        .await
        .unwrap_or_else(|seen| panic!("one node holds the worker, not {seen:?}"));
    usize::try_from(holder).expect("an index")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_worker_moves_when_its_node_stops() {
    let leader = leader(10_000).await;
    leader.create_table("t").await;
    let addr = replication_addr(&leader);
    // A three-node follower cluster.
    let ports: Vec<u16> = common::free_ports(3);
    let members = (0..3)
        .map(|i| format!("{}=127.0.0.1:{}", i + 1, ports[i]))
        .collect::<Vec<_>>()
        .join(",");
    let mut followers = Vec::new();
    for (i, port) in ports.iter().enumerate() {
        let dir = tempfile::tempdir().expect("dir");
        let mut s = settings(dir.path());
        s.raft.node_id = i as u64 + 1;
        s.raft.address = format!("127.0.0.1:{port}");
        s.raft.initial_members = members.clone();
        s.raft.rtt = "10ms".into();
        s.replication.leader_address = format!("http://{addr}");
        s.replication.reconcile_interval = "200ms".into();
        followers.push(Some(TestServer::start_as(dir, s, Role::Follower).await));
    }
    for i in 0..50u32 {
        leader.put("t", format!("a{i:03}").as_bytes(), b"v").await;
    }
    for f in followers.iter().flatten() {
        assert_converges(&leader, f, "t").await;
    }
    let holder = one_lease_holder(&followers).await;

    // Stop the node holding the worker: another takes the table over.
    followers[holder].take().expect("running").shutdown().await;
    for i in 0..50u32 {
        leader.put("t", format!("b{i:03}").as_bytes(), b"v").await;
    }
    let new_holder = one_lease_holder(&followers).await;
    assert_ne!(new_holder, holder);
    for f in followers.iter().flatten() {
        assert_converges(&leader, f, "t").await;
    }
    for f in followers.into_iter().flatten() {
        f.shutdown().await;
    }
    leader.shutdown().await;
}

/// Snapshot/Stream of table `t` from `since` (incremental) as (type, key, mod revision)
/// per record, the trailing DUMMY's leader index as its revision.
#[allow(deprecated)] // Snapshot/Stream is marked deprecated on the wire; followers still call it
async fn incremental(
    client: &mut SnapshotClient<tonic::transport::Channel>,
    since: u64,
) -> Result<Vec<(CommandType, String, u64)>, tonic::Status> {
    let mut stream = client
        .stream(SnapshotRequest {
            table: b"t".to_vec(),
            incremental: true,
            leader_index: since,
        })
        .await?
        .into_inner();
    let mut bytes = Vec::new();
    let mut indexes = Vec::new();
    while let Some(chunk) = stream.message().await? {
        assert_eq!(chunk.len as usize, chunk.data.len());
        bytes.extend_from_slice(&chunk.data);
        indexes.push(chunk.index);
    }
    let mut reader = RecordReader::new(&bytes[..]);
    let mut records = Vec::new();
    while let Some(cmd) = reader.next_command().expect("well-formed snapshot") {
        let kv = cmd.kv.clone().unwrap_or_default();
        let revision = match cmd.r#type() {
            CommandType::Dummy => {
                let index = cmd.leader_index.expect("dummy carries the index");
                assert!(
                    indexes.iter().all(|&i| i == index),
                    "every chunk carries the leader index the snapshot reflects ({index}): {indexes:?}"
                );
                index
            }
            _ => kv.mod_revision as u64,
        };
        // A range delete shows as "start..end".
        let mut key = String::from_utf8_lossy(&kv.key).into_owned();
        if let Some(end) = &cmd.range_end {
            key = format!("{key}..{}", String::from_utf8_lossy(end));
        }
        records.push((cmd.r#type(), key, revision));
    }
    Ok(records)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn incremental_snapshots_carry_changes_and_refuse_forgotten_bases() {
    let leader = leader(50).await;
    leader.create_table("t").await;
    for key in ["a", "b", "c", "d"] {
        leader.put("t", key.as_bytes(), b"1").await;
    }
    let base = leader.put("t", b"z", b"1").await;
    let base = base.header.expect("header").revision;
    let e = leader
        .put("t", b"e", b"2")
        .await
        .header
        .expect("h")
        .revision;
    leader.put("t", b"b", b"2").await;
    let mut kv = leader.kv();
    for (key, end) in [(&b"b"[..], &b""[..]), (b"c", b"d\xff")] {
        kv.delete_range(DeleteRangeRequest {
            table: "t".into(),
            key: key.to_vec(),
            range_end: end.to_vec(),
            ..Default::default()
        })
        .await
        .expect("delete");
    }
    let c = leader
        .put("t", b"c", b"3")
        .await
        .header
        .expect("h")
        .revision;
    let addr = replication_addr(&leader);
    let mut client = SnapshotClient::connect(format!("http://{addr}"))
        .await
        .expect("connect");
    let records = incremental(&mut client, base).await.expect("incremental");
    let (last, changes) = records.split_last().expect("a trailing dummy");
    assert_eq!(
        changes,
        [
            (CommandType::Delete, "c..d\u{fffd}".to_owned(), 0),
            (CommandType::Put, "c".to_owned(), c),
            (CommandType::Put, "e".to_owned(), e),
            (CommandType::Delete, "b".to_owned(), 0),
        ],
        "ranges deleted since the base (one record each, not a key each), puts since the \
         base in key order, then keys deleted since and not live"
    );
    assert_eq!(last.0, CommandType::Dummy);
    assert!(last.2 >= c, "the dummy carries the applied index");
    // A base the leader has not applied yet: OUT_OF_RANGE (WIRE.md §5.6).
    let ahead = last.2 + 1_000;
    let err = incremental(&mut client, ahead)
        .await
        .expect_err("a base ahead of the leader");
    assert_eq!(err.code(), tonic::Code::OutOfRange, "{err}");
    assert!(
        err.message().starts_with(&format!(
            "requested leader_index {ahead} is ahead of leader applied index"
        )),
        "{}",
        err.message()
    );

    // Once the log is compacted past the base, its deletes are forgotten: refused.
    for i in 0..200u32 {
        leader.put("t", format!("k{i:03}").as_bytes(), b"x").await;
    }
    let err = incremental(&mut client, base).await.expect_err("too old");
    assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{err}");
    let tip = leader
        .put("t", b"tip", b"1")
        .await
        .header
        .expect("h")
        .revision;
    let recent = incremental(&mut client, tip - 1)
        .await
        .expect("recent base");
    assert_eq!(recent[0], (CommandType::Put, "tip".to_owned(), tip));
    leader.shutdown().await;
}

/// One HTTP/1.0 GET (so the body ends when the connection closes); (status, body bytes).
async fn http10_get(addr: std::net::SocketAddr, path: &str) -> (u16, Vec<u8>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let req = format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n");
    s.write_all(req.as_bytes()).await.expect("write");
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await.expect("read");
    let split = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("end of headers");
    let head = String::from_utf8_lossy(&buf[..split]).into_owned();
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (code, buf[split + 4..].to_vec())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshots_live_serves_the_full_snapshot_over_http() {
    let leader = leader(10_000).await;
    leader.create_table("t").await;
    let mut last = 0;
    for i in 0..100u32 {
        let put = leader
            .put("t", format!("k{i:03}").as_bytes(), &[b'v'; 300])
            .await;
        last = put.header.expect("header").revision;
    }
    let addr = replication_addr(&leader);
    let (code, body) = http10_get(addr, "/snapshots-live/t").await;
    assert_eq!(code, 200);
    assert!(
        body.starts_with(b"\xff\x06\x00\x00sNaPpY"),
        "Snappy framing"
    );
    let mut reader = RecordReader::new(&body[..]);
    let mut puts = 0;
    let mut tail = None;
    while let Some(cmd) = reader.next_command().expect("well-formed object") {
        match cmd.r#type() {
            CommandType::Put => puts += 1,
            CommandType::Dummy => tail = cmd.leader_index,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(puts, 100);
    assert!(
        tail >= Some(last),
        "the trailing DUMMY carries the applied index"
    );
    let (code, _) = http10_get(addr, "/snapshots-live/missing").await;
    assert_eq!(code, 404);
    // gRPC still works on the same port.
    let mut log = LogClient::connect(format!("http://{addr}"))
        .await
        .expect("connect");
    assert_eq!(
        replicate_error(&mut log, 1_000_000).await,
        ReplicateError::LeaderBehind
    );
    leader.shutdown().await;
}

/// The follower's Cluster/Status `errors`.
async fn status_errors(server: &TestServer) -> Vec<String> {
    server
        .cluster()
        .status(flotilla_proto::regatta::v1::StatusRequest { config: false })
        .await
        .expect("status")
        .into_inner()
        .errors
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_behind_the_follower_shows_in_status_errors() {
    // A leader at a fixed replication address, so a replacement can take its place.
    let port = common::free_ports(1)[0];
    let start_leader = async || {
        let dir = tempfile::tempdir().expect("dir");
        let mut s = settings(dir.path());
        s.replication.address = format!("127.0.0.1:{port}");
        let leader = TestServer::start_as(dir, s, Role::Leader).await;
        leader.create_table("t").await;
        leader
    };
    let first = start_leader().await;
    for i in 0..30u32 {
        first.put("t", format!("k{i}").as_bytes(), b"v").await;
    }
    let follower = follower_of(&first).await;
    assert_converges(&first, &follower, "t").await;
    assert!(status_errors(&follower).await.is_empty());

    // The leader cluster is replaced by one with less history (e.g. restored from an old
    // backup): the follower must say so rather than fall silent.
    first.shutdown().await;
    let second = start_leader().await;
    let mut errors = Vec::new();
    let reported = eventually(WAIT, async || {
        errors = status_errors(&follower).await;
        errors.iter().any(|e| e.starts_with("t: LEADER_BEHIND"))
    })
    .await;
    assert!(reported, "status errors: {errors:?}");
    // Reset re-pulls from the new leader and clears it.
    MaintenanceClient::new(follower.channel.clone())
        .reset(ResetRequest {
            table: b"t".to_vec(),
            reset_all: false,
        })
        .await
        .expect("reset");
    second.put("t", b"new", b"v").await;
    assert_converges(&second, &follower, "t").await;
    assert!(
        eventually(WAIT, async || status_errors(&follower).await.is_empty()).await,
        "errors clear once replication works: {:?}",
        status_errors(&follower).await
    );
    follower.shutdown().await;
    second.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_dropped_and_recreated_on_the_leader_is_pulled_afresh() {
    let leader = leader(10_000).await;
    leader.create_table("t").await;
    for i in 0..20u32 {
        leader.put("t", format!("old{i:02}").as_bytes(), b"1").await;
    }
    // A follower that compares table sets only at start and when a pull says the table
    // is gone: the drop and re-create below fall between two of its reconciles.
    let dir = tempfile::tempdir().expect("dir");
    let mut s = settings(dir.path());
    s.replication.leader_address = format!("http://{}", replication_addr(&leader));
    s.replication.reconcile_interval = "3600s".into();
    let follower = TestServer::start_as(dir, s, Role::Follower).await;
    assert_converges(&leader, &follower, "t").await;

    leader
        .tables()
        .delete(DeleteTableRequest { name: "t".into() })
        .await
        .expect("delete");
    leader.create_table("t").await;
    leader.put("t", b"new", b"2").await;
    // The new table has the old one's name but not its data or its log: the follower
    // must drop what it had and pull the new table, not apply its log over the old data
    // (or wait forever behind an index the new table never reached).
    assert_converges(&leader, &follower, "t").await;
    let got = dump(&follower, "t").await.expect("dump");
    assert_eq!(
        got.iter().map(|kv| kv.key.as_slice()).collect::<Vec<_>>(),
        vec![&b"new"[..]]
    );
    follower.shutdown().await;
    leader.shutdown().await;
}
