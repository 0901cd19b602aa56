//! Issue 11 on in-process servers with real TLS handshakes on loopback: bearer tokens on
//! Tables and Maintenance (and nowhere else), switched-off services, mTLS on the API and
//! replication ports, a follower replicating and forwarding over mTLS, certificate
//! rotation, Unix sockets and connection limits. The peer network: `peer_security.rs`.

mod common;

use common::tls::{Pki, api, mtls_api_settings, path, plain_channel, tls_channel};

use std::path::PathBuf;
use std::time::Duration;

use flotilla_ops::settings::MASK;
use flotilla_proto::maintenance::v1::{ResetRequest, maintenance_client::MaintenanceClient};
use flotilla_proto::regatta::v1::{
    CreateTableRequest, ListTablesRequest, MemberListRequest, PutRequest, RangeRequest,
    StatusRequest, cluster_client::ClusterClient, kv_client::KvClient, tables_client::TablesClient,
};
use flotilla_server::Role;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Request};

const WAIT: Duration = Duration::from_secs(30);

fn bearer<T>(msg: T, token: &str) -> Request<T> {
    let mut req = Request::new(msg);
    req.metadata_mut().insert(
        "authorization",
        format!("Bearer {token}").parse().expect("header"),
    );
    req
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

#[tokio::test]
async fn the_api_over_mtls_serves_only_the_allowed_client() {
    let pki = Pki::new();
    let ca = pki.ca_file();
    let data = tempfile::tempdir().expect("dir");
    let mut s = mtls_api_settings(&pki, data.path());
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
