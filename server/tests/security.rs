//! Issue 11 on in-process servers with real TLS handshakes on loopback: bearer tokens on
//! Tables and Maintenance (and nowhere else), switched-off services, mTLS on the API and
//! replication ports, a follower replicating and forwarding over mTLS, and a 3-node
//! cluster whose peers authenticate each other.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use flotilla_ops::settings::MASK;
use flotilla_proto::maintenance::v1::{ResetRequest, maintenance_client::MaintenanceClient};
use flotilla_proto::regatta::v1::{
    CreateTableRequest, ListTablesRequest, MemberListRequest, PutRequest, RangeRequest,
    StatusRequest, cluster_client::ClusterClient, kv_client::KvClient, tables_client::TablesClient,
};
use flotilla_server::{Role, Running};
use flotilla_testkit::certs::TestCa;
use flotilla_tls::{ClientTlsFiles, FileFlag, TlsConnector};
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Request};

const WAIT: Duration = Duration::from_secs(30);

fn plain_channel(addr: SocketAddr) -> Channel {
    Endpoint::from_shared(format!("http://{addr}"))
        .expect("uri")
        .connect_lazy()
}

/// A channel dialling `addr` over TLS, trusting `ca`, presenting `identity` if given.
/// Lazy: a refused handshake shows as the first call's error.
fn tls_channel(addr: SocketAddr, ca: &Path, identity: Option<(&Path, &Path)>) -> Channel {
    let tls = ClientTlsFiles {
        ca: Some(FileFlag::new("test.ca", ca)),
        identity: identity
            .map(|(c, k)| (FileFlag::new("test.cert", c), FileFlag::new("test.key", k))),
        insecure_skip_verify: false,
    }
    .load()
    .expect("client TLS");
    let connector = TlsConnector::tls(tls, None, "test").expect("connector");
    Endpoint::from_shared(format!("https://{addr}"))
        .expect("uri")
        .connect_timeout(Duration::from_secs(5))
        .connect_with_connector_lazy(connector)
}

fn bearer<T>(msg: T, token: &str) -> Request<T> {
    let mut req = Request::new(msg);
    req.metadata_mut().insert(
        "authorization",
        format!("Bearer {token}").parse().expect("header"),
    );
    req
}

fn api(running: &Running) -> SocketAddr {
    running.api_addr.expect("TCP API address")
}

#[tokio::test]
async fn tables_and_maintenance_require_their_tokens_and_nothing_else_does() {
    let dir = tempfile::tempdir().expect("dir");
    let mut s = common::settings(dir.path());
    s.tables.token = flotilla_ops::settings::Secret::new("tables-t0ken");
    s.maintenance.token = flotilla_ops::settings::Secret::new("maint-t0ken");
    let running = flotilla_server::start(s, Role::Leader)
        .await
        .expect("start");
    let channel = plain_channel(api(&running));
    let mut tables = TablesClient::new(channel.clone());

    let no_token = tables
        .list(ListTablesRequest {})
        .await
        .expect_err("no token");
    assert_eq!(no_token.code(), Code::Unauthenticated);
    assert_eq!(no_token.message(), "Request unauthenticated with bearer");
    let wrong = tables
        .list(bearer(ListTablesRequest {}, "maint-t0ken"))
        .await
        .expect_err("another service's token");
    assert_eq!(wrong.code(), Code::Unauthenticated);
    assert_eq!(wrong.message(), "Invalid token");
    tables
        .create(bearer(
            CreateTableRequest {
                name: "t".into(),
                config: None,
            },
            "tables-t0ken",
        ))
        .await
        .expect("the right token creates a table");

    let mut maintenance = MaintenanceClient::new(channel.clone());
    let reset = ResetRequest {
        table: b"t".to_vec(),
        reset_all: false,
    };
    let no_token = maintenance
        .reset(reset.clone())
        .await
        .expect_err("no token");
    assert_eq!(no_token.code(), Code::Unauthenticated);
    let wrong = maintenance
        .reset(bearer(reset.clone(), "tables-t0ken"))
        .await
        .expect_err("wrong token");
    assert_eq!(wrong.message(), "Invalid token");
    // Past the token, the leader answers what it answers for Reset (not its job).
    let past = maintenance
        .reset(bearer(reset, "maint-t0ken"))
        .await
        .expect_err("Reset is a follower's");
    assert_eq!(past.code(), Code::Unimplemented, "{past:?}");

    // KV, Cluster and Metrics never check tokens.
    let mut kv = KvClient::new(channel.clone());
    kv.put(PutRequest {
        table: b"t".to_vec(),
        key: b"k".to_vec(),
        value: b"v".to_vec(),
        prev_kv: false,
    })
    .await
    .expect("KV needs no token");
    let mut cluster = ClusterClient::new(channel.clone());
    cluster
        .member_list(MemberListRequest {})
        .await
        .expect("Cluster needs no token");
    let status = cluster
        .status(StatusRequest { config: true })
        .await
        .expect("status")
        .into_inner();
    let config = status.config.expect("config").fields;
    for key in ["tables.token", "maintenance.token"] {
        let shown = config.get(key).and_then(|v| match &v.kind {
            Some(prost_types::value::Kind::StringValue(s)) => Some(s.clone()),
            _ => None,
        });
        assert_eq!(shown.as_deref(), Some(MASK), "{key}");
    }
    let rendered = format!("{config:?}");
    assert!(
        !rendered.contains("t0ken"),
        "a token leaked into Status: {rendered}"
    );
    running.shutdown().await;
}

#[tokio::test]
async fn switched_off_services_are_unknown() {
    let dir = tempfile::tempdir().expect("dir");
    let mut s = common::settings(dir.path());
    s.tables.enabled = false;
    s.maintenance.enabled = false;
    let running = flotilla_server::start(s, Role::Leader)
        .await
        .expect("start");
    let channel = plain_channel(api(&running));
    let err = TablesClient::new(channel.clone())
        .list(ListTablesRequest {})
        .await
        .expect_err("Tables is off");
    assert_eq!(err.code(), Code::Unimplemented);
    assert_eq!(err.message(), "unknown service regatta.v1.Tables");
    let err = MaintenanceClient::new(channel.clone())
        .reset(ResetRequest {
            table: b"t".to_vec(),
            reset_all: false,
        })
        .await
        .expect_err("Maintenance is off");
    assert_eq!(err.message(), "unknown service maintenance.v1.Maintenance");
    ClusterClient::new(channel)
        .member_list(MemberListRequest {})
        .await
        .expect("the rest is served");
    running.shutdown().await;
}

struct Pki {
    dir: tempfile::TempDir,
    ca: TestCa,
    other: TestCa,
}

impl Pki {
    fn new() -> Self {
        Self {
            dir: tempfile::tempdir().expect("dir"),
            ca: TestCa::new("flotilla-test-ca"),
            other: TestCa::new("stranger-ca"),
        }
    }
    fn ca_file(&self) -> PathBuf {
        self.ca.write(self.dir.path(), "ca")
    }
    fn other_ca_file(&self) -> PathBuf {
        self.other.write(self.dir.path(), "other-ca")
    }
    fn leaf(&self, stem: &str, cn: &str, names: &[&str]) -> (PathBuf, PathBuf) {
        self.ca.issue(cn, names).write(self.dir.path(), stem)
    }
    fn stranger(&self, stem: &str, cn: &str, names: &[&str]) -> (PathBuf, PathBuf) {
        self.other.issue(cn, names).write(self.dir.path(), stem)
    }
}

fn path(p: &Path) -> String {
    p.display().to_string()
}

#[tokio::test]
async fn the_api_over_mtls_serves_only_the_allowed_client() {
    let pki = Pki::new();
    let ca = pki.ca_file();
    let (cert, key) = pki.leaf("server", "server", &["127.0.0.1"]);
    let data = tempfile::tempdir().expect("dir");
    let mut s = common::settings(data.path());
    s.api.address = "https://127.0.0.1:0".into();
    s.api.cert_filename = path(&cert);
    s.api.key_filename = path(&key);
    s.api.client_cert_auth = true;
    s.api.ca_filename = path(&ca);
    s.api.allowed_cn = "app".into();
    let running = flotilla_server::start(s, Role::Leader)
        .await
        .expect("start");
    let addr = api(&running);

    let good = pki.leaf("app", "app", &["app.example"]);
    let channel = tls_channel(addr, &ca, Some((&good.0, &good.1)));
    TablesClient::new(channel.clone())
        .create(CreateTableRequest {
            name: "t".into(),
            config: None,
        })
        .await
        .expect("the allowed client is served");
    KvClient::new(channel)
        .range(RangeRequest {
            table: b"t".to_vec(),
            key: b"k".to_vec(),
            ..Default::default()
        })
        .await
        .expect("reads work");

    let wrong_cn = pki.leaf("intruder", "intruder", &["app.example"]);
    let foreign = pki.stranger("foreign", "app", &["app.example"]);
    for (what, channel) in [
        ("no client certificate", tls_channel(addr, &ca, None)),
        (
            "the wrong CN",
            tls_channel(addr, &ca, Some((&wrong_cn.0, &wrong_cn.1))),
        ),
        (
            "a certificate from another CA",
            tls_channel(addr, &ca, Some((&foreign.0, &foreign.1))),
        ),
        ("plaintext", plain_channel(addr)),
    ] {
        let refused = ClusterClient::new(channel)
            .member_list(MemberListRequest {})
            .await;
        assert!(refused.is_err(), "a client with {what} must be refused");
    }
    running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_replicates_and_forwards_over_mtls_and_strangers_get_nothing() {
    let pki = Pki::new();
    let ca = pki.ca_file();
    let (leader_cert, leader_key) = pki.leaf("leader", "leader", &["leader.flotilla.test"]);
    let leader_dir = tempfile::tempdir().expect("dir");
    let mut ls = common::settings(leader_dir.path());
    ls.replication.address = "https://127.0.0.1:0".into();
    ls.replication.cert_filename = path(&leader_cert);
    ls.replication.key_filename = path(&leader_key);
    ls.replication.client_cert_auth = true;
    ls.replication.ca_filename = path(&ca);
    let leader = flotilla_server::start(ls, Role::Leader)
        .await
        .expect("leader starts");
    let replication = leader.replication_addr.expect("replication port");
    let leader_api = plain_channel(api(&leader));
    TablesClient::new(leader_api.clone())
        .create(CreateTableRequest {
            name: "t".into(),
            config: None,
        })
        .await
        .expect("create");
    KvClient::new(leader_api.clone())
        .put(PutRequest {
            table: b"t".to_vec(),
            key: b"from-leader".to_vec(),
            value: b"1".to_vec(),
            prev_kv: false,
        })
        .await
        .expect("put");

    let (follower_cert, follower_key) = pki.leaf("follower", "follower", &["follower.test"]);
    let follower_dir = tempfile::tempdir().expect("dir");
    let mut fs = common::settings(follower_dir.path());
    fs.replication.leader_address = format!("https://{replication}");
    fs.replication.ca_filename = path(&ca);
    fs.replication.cert_filename = path(&follower_cert);
    fs.replication.key_filename = path(&follower_key);
    // The leader's certificate names a host, not the loopback IP the follower dials.
    fs.replication.server_name = "leader.flotilla.test".into();
    let follower = flotilla_server::start(fs, Role::Follower)
        .await
        .expect("follower starts");
    let follower_api = plain_channel(api(&follower));
    let mut follower_kv = KvClient::new(follower_api);
    let read = |kv: &mut KvClient<Channel>, key: &'static [u8]| {
        let mut kv = kv.clone();
        async move {
            kv.range(RangeRequest {
                table: b"t".to_vec(),
                key: key.to_vec(),
                ..Default::default()
            })
            .await
            .map(|r| r.into_inner().kvs.len())
            .unwrap_or(0)
        }
    };
    assert!(
        common::eventually(WAIT, async || read(&mut follower_kv, b"from-leader").await
            == 1)
        .await,
        "the follower replicates over mTLS"
    );
    follower_kv
        .put(PutRequest {
            table: b"t".to_vec(),
            key: b"via-follower".to_vec(),
            value: b"2".to_vec(),
            prev_kv: false,
        })
        .await
        .expect("a write forwarded to the leader over mTLS");
    let mut leader_kv = KvClient::new(leader_api);
    assert_eq!(read(&mut leader_kv, b"via-follower").await, 1);

    // A stranger on the replication port: no certificate, or one from another CA, gets
    // neither the tables nor the writable KV API.
    let foreign = pki.stranger("stranger", "follower", &["follower.test"]);
    for channel in [
        tls_channel(replication, &ca, None),
        tls_channel(replication, &ca, Some((&foreign.0, &foreign.1))),
        plain_channel(replication),
    ] {
        let put = KvClient::new(channel)
            .put(PutRequest {
                table: b"t".to_vec(),
                key: b"stranger".to_vec(),
                value: b"x".to_vec(),
                prev_kv: false,
            })
            .await;
        assert!(
            put.is_err(),
            "a stranger must not write through the replication port"
        );
    }
    assert_eq!(read(&mut leader_kv, b"stranger").await, 0);
    follower.shutdown().await;
    leader.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_accept_only_peer_certificates_and_only_for_their_own_raft_id() {
    use flotilla_proto::flotilla::raft::v1::raft_client::RaftClient;
    use flotilla_proto::flotilla::raft::v1::{GroupMessage, MessageBatch};
    use protobuf::Message as _;

    let pki = Pki::new();
    let ca = pki.ca_file();
    // Each node on its own loopback address, so a certificate names exactly one node.
    let hosts = ["127.0.0.1", "127.0.0.2", "127.0.0.3"];
    let ports = common::free_ports(3);
    let members = (0..3)
        .map(|i| format!("{}={}:{}", i + 1, hosts[i], ports[i]))
        .collect::<Vec<_>>()
        .join(",");
    let certs: Vec<(PathBuf, PathBuf)> = (0..3)
        .map(|i| {
            pki.leaf(
                &format!("node{}", i + 1),
                &format!("node{}", i + 1),
                &[hosts[i]],
            )
        })
        .collect();
    let dirs: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().expect("dir")).collect();
    let mut nodes = Vec::new();
    for i in 0..3 {
        let mut s = common::settings(dirs[i].path());
        s.raft.node_id = i as u64 + 1;
        s.raft.address = format!("{}:{}", hosts[i], ports[i]);
        s.raft.initial_members = members.clone();
        s.raft.rtt = "10ms".into();
        s.raft.tls_cert_file = path(&certs[i].0);
        s.raft.tls_key_file = path(&certs[i].1);
        s.raft.tls_ca_file = path(&ca);
        s.api.advertise_address = format!("http://node{}.example:8443", i + 1);
        // Node 1 stages at most 1 MiB of an incoming snapshot (checked below).
        if i == 0 {
            s.raft.max_snapshot_size_bytes = 1 << 20;
        }
        nodes.push(
            flotilla_server::start(s, Role::Leader)
                .await
                .expect("node starts"),
        );
    }
    // The cluster works over mutual TLS: a table created and written through node 2 is
    // read on node 3.
    let mut tables = TablesClient::new(plain_channel(api(&nodes[1])));
    assert!(
        common::eventually(WAIT, async || tables
            .create(CreateTableRequest {
                name: "t".into(),
                config: None,
            })
            .await
            .is_ok())
        .await,
        "create through node 2"
    );
    KvClient::new(plain_channel(api(&nodes[1])))
        .put(PutRequest {
            table: b"t".to_vec(),
            key: b"k".to_vec(),
            value: b"v".to_vec(),
            prev_kv: false,
        })
        .await
        .expect("put through node 2");
    let mut node3 = KvClient::new(plain_channel(api(&nodes[2])));
    assert!(
        common::eventually(WAIT, async || node3
            .range(RangeRequest {
                table: b"t".to_vec(),
                key: b"k".to_vec(),
                ..Default::default()
            })
            .await
            .is_ok_and(|r| r.into_inner().kvs.len() == 1))
        .await,
        "node 3 replicated the write"
    );

    let raft1: SocketAddr = format!("{}:{}", hosts[0], ports[0]).parse().expect("addr");
    let rest1 = nodes[0].rest_addr.to_string();
    let hello = |from: u64, api_address: &str| MessageBatch {
        from,
        messages: Vec::new(),
        api_address: api_address.to_owned(),
    };

    // A node with a certificate from another CA cannot even open a stream.
    let foreign = pki.stranger("foreign", "node2", &[hosts[1]]);
    let refused = RaftClient::new(tls_channel(raft1, &ca, Some((&foreign.0, &foreign.1))))
        .send(tokio_stream::iter(vec![hello(2, "http://evil.example")]))
        .await;
    assert!(
        refused.is_err(),
        "a certificate from another CA must be refused"
    );

    // Node 3's real certificate speaking as node 2 (a forged MemberList entry and a
    // forged raft message) is dropped and counted.
    let series = "flotilla_peer_messages_rejected_total{reason=\"unverified_sender\"}";
    let before = flotilla_testkit::metrics::read(&rest1, series)
        .await
        .unwrap_or(0.0);
    let mut forged = raft::eraftpb::Message::default();
    forged.set_msg_type(raft::eraftpb::MessageType::MsgHeartbeat);
    forged.from = 2;
    forged.to = 1;
    forged.term = 1_000;
    let batch = MessageBatch {
        from: 2,
        messages: vec![GroupMessage {
            group_id: 1,
            message: forged.write_to_bytes().expect("encode"),
        }],
        api_address: "http://evil.example".into(),
    };
    RaftClient::new(tls_channel(raft1, &ca, Some((&certs[2].0, &certs[2].1))))
        .send(tokio_stream::iter(vec![batch]))
        .await
        .expect("the stream itself is accepted (node 3 is a peer)");
    assert!(
        common::eventually(WAIT, async || flotilla_testkit::metrics::read(
            &rest1, series
        )
        .await
        .is_some_and(|v| v > before))
        .await,
        "the forged batch is counted as rejected"
    );
    let members = ClusterClient::new(plain_channel(api(&nodes[0])))
        .member_list(MemberListRequest {})
        .await
        .expect("members")
        .into_inner();
    let urls: Vec<String> = members
        .members
        .iter()
        .flat_map(|m| m.client_ur_ls.clone())
        .collect();
    assert!(
        !urls.iter().any(|u| u.contains("evil")),
        "a forged hello must not rewrite MemberList: {urls:?}"
    );
    // A message inside a genuine batch whose own `from` is another node is dropped too.
    let forged_from = "flotilla_peer_messages_rejected_total{reason=\"forged_from\"}";
    let batch = MessageBatch {
        from: 3,
        messages: vec![GroupMessage {
            group_id: 1,
            message: forged.write_to_bytes().expect("encode"),
        }],
        api_address: String::new(),
    };
    RaftClient::new(tls_channel(raft1, &ca, Some((&certs[2].0, &certs[2].1))))
        .send(tokio_stream::iter(vec![batch]))
        .await
        .expect("stream");
    assert!(
        common::eventually(WAIT, async || flotilla_testkit::metrics::read(
            &rest1,
            forged_from
        )
        .await
        .is_some_and(|v| v >= 1.0))
        .await,
        "a message claiming another sender inside a batch is counted"
    );

    // A snapshot stream claiming to come from node 2 on node 3's connection is refused
    // (before anything is staged) and counted.
    use flotilla_proto::flotilla::raft::v1::SnapshotChunk;
    let mut snapshot_msg = raft::eraftpb::Message::default();
    snapshot_msg.set_msg_type(raft::eraftpb::MessageType::MsgSnapshot);
    snapshot_msg.from = 2;
    snapshot_msg.to = 1;
    let header = |msg: &raft::eraftpb::Message| SnapshotChunk {
        group_id: 1,
        message: msg.write_to_bytes().expect("encode"),
        ..Default::default()
    };
    let unverified = "flotilla_peer_messages_rejected_total{reason=\"unverified_snapshot\"}";
    let refused = RaftClient::new(tls_channel(raft1, &ca, Some((&certs[2].0, &certs[2].1))))
        .snapshot(tokio_stream::iter(vec![header(&snapshot_msg)]))
        .await
        .expect_err("a snapshot from another sender is refused");
    assert!(
        refused.message().contains("does not speak for it"),
        "{refused:?}"
    );
    assert_eq!(
        flotilla_testkit::metrics::read(&rest1, unverified).await,
        Some(1.0),
        "the refused snapshot is counted"
    );

    // A snapshot stream over raft.max-snapshot-size-bytes (1 MiB on node 1) is cut off.
    snapshot_msg.from = 3;
    let oversized = vec![
        header(&snapshot_msg),
        SnapshotChunk {
            pairs: vec![flotilla_proto::flotilla::raft::v1::Pair {
                key: b"k".to_vec(),
                value: vec![0; 2 << 20],
            }],
            ..Default::default()
        },
    ];
    let refused = RaftClient::new(tls_channel(raft1, &ca, Some((&certs[2].0, &certs[2].1))))
        .snapshot(tokio_stream::iter(oversized))
        .await
        .expect_err("an oversized snapshot is refused");
    assert!(
        refused.message().contains("raft.max-snapshot-size-bytes"),
        "{refused:?}"
    );
    for node in nodes {
        node.shutdown().await;
    }
}

#[tokio::test]
async fn a_rotated_api_certificate_serves_new_connections_while_old_ones_keep_working() {
    let pki = Pki::new();
    let old_ca = pki.ca_file();
    let (cert, key) = pki.leaf("server", "server", &["127.0.0.1"]);
    let data = tempfile::tempdir().expect("dir");
    let mut s = common::settings(data.path());
    s.api.address = "https://127.0.0.1:0".into();
    s.api.cert_filename = path(&cert);
    s.api.key_filename = path(&key);
    let running = flotilla_server::start(s, Role::Leader)
        .await
        .expect("start");
    let addr = api(&running);
    let mut before = ClusterClient::new(tls_channel(addr, &old_ca, None));
    before
        .member_list(MemberListRequest {})
        .await
        .expect("the first certificate works");

    // Rotate to a certificate from another CA, key first (a reader may see the pair
    // half-written: that is refused and the old pair stays until both match).
    let new_ca_file = pki.other_ca_file();
    let rotated = pki.other.issue("server", &["127.0.0.1"]);
    std::fs::write(&key, &rotated.key_pem).expect("key");
    std::fs::write(&cert, &rotated.cert_pem).expect("cert");
    let mut trusts_new = ClusterClient::new(tls_channel(addr, &new_ca_file, None));
    assert!(
        common::eventually(WAIT, async || {
            // A fresh channel each time: new connections get the rotated certificate.
            let mut fresh = ClusterClient::new(tls_channel(addr, &new_ca_file, None));
            fresh.member_list(MemberListRequest {}).await.is_ok()
        })
        .await,
        "new connections use the rotated certificate without a restart"
    );
    trusts_new
        .member_list(MemberListRequest {})
        .await
        .expect("a client trusting only the new CA is served");
    before
        .member_list(MemberListRequest {})
        .await
        .expect("the connection made before the rotation is not cut");
    running.shutdown().await;
}

/// Dials a Unix socket whatever the URI says (tonic needs a URI; the path is fixed).
#[derive(Clone)]
struct UnixConnector(PathBuf);

impl tower_service::Service<tonic::transport::Uri> for UnixConnector {
    type Response = hyper_util::rt::TokioIo<tokio::net::UnixStream>;
    type Error = std::io::Error;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Self::Response, Self::Error>> + Send>,
    >;
    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }
    fn call(&mut self, _: tonic::transport::Uri) -> Self::Future {
        let path = self.0.clone();
        Box::pin(async move {
            Ok(hyper_util::rt::TokioIo::new(
                tokio::net::UnixStream::connect(path).await?,
            ))
        })
    }
}

#[tokio::test]
async fn the_api_serves_a_unix_socket() {
    let data = tempfile::tempdir().expect("dir");
    let socket = data.path().join("api.sock");
    let mut s = common::settings(data.path());
    s.api.address = format!("unix://{}", socket.display());
    let running = flotilla_server::start(s, Role::Leader)
        .await
        .expect("start");
    assert_eq!(running.api_socket.as_deref(), Some(socket.as_path()));
    let channel = Endpoint::from_static("http://unix.invalid")
        .connect_with_connector(UnixConnector(socket.clone()))
        .await
        .expect("connect over the socket");
    TablesClient::new(channel)
        .create(CreateTableRequest {
            name: "t".into(),
            config: None,
        })
        .await
        .expect("served over the Unix socket");
    running.shutdown().await;
}

#[tokio::test]
async fn connections_beyond_the_limit_wait_until_one_closes() {
    let data = tempfile::tempdir().expect("dir");
    let mut s = common::settings(data.path());
    s.api.max_concurrent_connections = 1;
    let running = flotilla_server::start(s, Role::Leader)
        .await
        .expect("start");
    let addr = api(&running);
    let first = Endpoint::from_shared(format!("http://{addr}"))
        .expect("uri")
        .connect()
        .await
        .expect("the first connection");
    ClusterClient::new(first.clone())
        .member_list(MemberListRequest {})
        .await
        .expect("served");
    let mut second = ClusterClient::new(plain_channel(addr));
    let waited = tokio::time::timeout(
        Duration::from_secs(1),
        second.member_list(MemberListRequest {}),
    )
    .await;
    assert!(
        waited.is_err(),
        "a second connection waits while the first is open"
    );
    drop(first);
    let served = tokio::time::timeout(WAIT, second.member_list(MemberListRequest {}))
        .await
        .expect("served once the first connection closed");
    served.expect("member list");
    running.shutdown().await;
}
