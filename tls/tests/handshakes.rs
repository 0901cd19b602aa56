//! Real TLS handshakes on loopback through the listener and connector every port uses:
//! each accept/refuse case of mTLS, key/certificate mismatches refused with the flag and
//! file named, and certificate rotation without a restart.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use flotilla_testkit::certs::{Issued, TestCa};
use flotilla_testkit::eventually;
use flotilla_tls::{
    ClientAuth, ClientTlsFiles, ConnInfo, FileFlag, Listener, ListenerOptions, RELOAD_INTERVAL,
    ServerTlsFiles, TlsConnector,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_stream::StreamExt as _;
use tokio_util::sync::CancellationToken;
use tower_service::Service as _;

struct Files {
    dir: tempfile::TempDir,
}

impl Files {
    fn new() -> Self {
        Self {
            dir: tempfile::tempdir().expect("temp dir"),
        }
    }
    fn path(&self) -> &Path {
        self.dir.path()
    }
    fn leaf(&self, issued: &Issued, stem: &str) -> (FileFlag, FileFlag) {
        let (cert, key) = issued.write(self.path(), stem);
        (
            FileFlag::new("test.cert-filename", cert),
            FileFlag::new("test.key-filename", key),
        )
    }
    fn ca(&self, ca: &TestCa, name: &str) -> FileFlag {
        FileFlag::new("test.ca-filename", ca.write(self.path(), name))
    }
}

/// An echo server on loopback; returns its address and the ConnInfo of each connection.
async fn echo_server(
    options: ListenerOptions,
    stop: CancellationToken,
) -> (String, tokio::sync::mpsc::UnboundedReceiver<ConnInfo>) {
    let tcp = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = tcp.local_addr().expect("addr").to_string();
    let mut incoming = Listener::Tcp(tcp).incoming(options, stop);
    let (seen, infos) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some(Ok(conn)) = incoming.next().await {
            let _ = seen.send(tonic::transport::server::Connected::connect_info(&conn));
            tokio::spawn(async move {
                let mut conn = conn;
                let mut buf = [0u8; 4];
                while conn.read_exact(&mut buf).await.is_ok() {
                    if conn.write_all(&buf).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (addr, infos)
}

/// Dials `addr` and exchanges one message; `Err` when the handshake or the exchange
/// fails (a TLS 1.3 client learns that its certificate was refused on its first read).
async fn ping(connector: &TlsConnector, addr: &str) -> Result<(), String> {
    let uri: tonic::transport::Uri = format!("https://{addr}").parse().expect("uri");
    let io = connector
        .clone()
        .call(uri)
        .await
        .map_err(|e| e.to_string())?;
    let mut stream = io.into_inner();
    exchange(&mut stream).await
}

async fn exchange(
    stream: &mut (impl tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin),
) -> Result<(), String> {
    let sent = async {
        stream.write_all(b"ping").await?;
        let mut buf = [0u8; 4];
        stream.read_exact(&mut buf).await?;
        Ok::<_, std::io::Error>(buf)
    };
    match tokio::time::timeout(Duration::from_secs(5), sent).await {
        Ok(Ok(buf)) if &buf == b"ping" => Ok(()),
        Ok(Ok(buf)) => Err(format!("echoed {buf:?}")),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("timed out".into()),
    }
}

fn client(ca: Option<FileFlag>, identity: Option<(FileFlag, FileFlag)>) -> TlsConnector {
    let tls = ClientTlsFiles {
        ca,
        identity,
        insecure_skip_verify: false,
    }
    .load()
    .expect("client TLS");
    TlsConnector::tls(tls, None, "test.server-name").expect("connector")
}

fn server(
    cert: (FileFlag, FileFlag),
    client_auth: Option<ClientAuth>,
) -> Arc<flotilla_tls::ServerTls> {
    ServerTlsFiles {
        cert: cert.0,
        key: cert.1,
        client_auth,
    }
    .load()
    .expect("server TLS")
}

#[tokio::test]
async fn mtls_accepts_the_right_client_and_refuses_every_other() {
    let files = Files::new();
    let ca = TestCa::new("ca");
    let other_ca = TestCa::new("other");
    let ca_file = files.ca(&ca, "ca");
    let server_cert = files.leaf(&ca.issue("server", &["127.0.0.1", "localhost"]), "server");
    let good = files.leaf(&ca.issue("follower", &["follower.example"]), "good");
    let wrong_cn = files.leaf(&ca.issue("intruder", &["follower.example"]), "wrong-cn");
    let wrong_host = files.leaf(&ca.issue("follower", &["elsewhere.example"]), "wrong-host");
    let foreign = files.leaf(
        &other_ca.issue("follower", &["follower.example"]),
        "foreign",
    );

    let stop = CancellationToken::new();
    let tls = server(
        server_cert,
        Some(ClientAuth {
            ca: ca_file.clone(),
            allowed_cn: Some("follower".into()),
            allowed_hostname: Some("follower.example".into()),
        }),
    );
    let options = ListenerOptions {
        tls: Some(tls),
        ..ListenerOptions::default()
    };
    let (addr, mut infos) = echo_server(options, stop.clone()).await;

    ping(&client(Some(ca_file.clone()), Some(good)), &addr)
        .await
        .expect("a certificate from the CA with the allowed CN and hostname is accepted");
    let info = infos.recv().await.expect("connection info");
    let chain = info.peer_certificates.expect("verified client chain");
    assert!(flotilla_tls::certificate_covers_host(
        &chain[0],
        "follower.example"
    ));
    assert!(!flotilla_tls::certificate_covers_host(
        &chain[0],
        "127.0.0.1"
    ));

    for (what, identity) in [
        ("no client certificate", None),
        ("another CA", Some(foreign)),
        ("the wrong CN", Some(wrong_cn)),
        ("the wrong hostname", Some(wrong_host)),
    ] {
        let refused = ping(&client(Some(ca_file.clone()), identity), &addr).await;
        assert!(refused.is_err(), "a client with {what} must be refused");
    }
    // And a client that does not trust the server's CA refuses the server.
    let distrust = files.ca(&other_ca, "other-ca");
    let good_again = files.leaf(&ca.issue("follower", &["follower.example"]), "good2");
    let refused = ping(&client(Some(distrust), Some(good_again)), &addr).await;
    assert!(
        refused.is_err(),
        "the server's certificate must be verified"
    );
    stop.cancel();
}

#[tokio::test]
async fn a_key_that_is_not_the_certificates_is_refused_naming_both_files() {
    let files = Files::new();
    let ca = TestCa::new("ca");
    let (cert, _) = files.leaf(&ca.issue("a", &["localhost"]), "a");
    let (_, other_key) = files.leaf(&ca.issue("b", &["localhost"]), "b");
    let err = ServerTlsFiles {
        cert: FileFlag::new("api.cert-filename", cert.path.clone()),
        key: FileFlag::new("api.key-filename", other_key.path.clone()),
        client_auth: None,
    }
    .load()
    .expect_err("mismatched key")
    .to_string();
    assert!(err.contains("api.key-filename"), "{err}");
    assert!(err.contains("api.cert-filename"), "{err}");
    assert!(err.contains(&other_key.path.display().to_string()), "{err}");

    let missing = PathBuf::from("/nonexistent/flotilla.crt");
    let err = ServerTlsFiles {
        cert: FileFlag::new("api.cert-filename", missing.clone()),
        key: other_key,
        client_auth: None,
    }
    .load()
    .expect_err("missing file")
    .to_string();
    assert!(
        err.starts_with("api.cert-filename /nonexistent/flotilla.crt: cannot read"),
        "{err}"
    );

    let not_pem = files.path().join("junk.crt");
    std::fs::write(&not_pem, "hello").expect("write");
    let err = ClientTlsFiles {
        ca: Some(FileFlag::new("replication.ca-filename", not_pem)),
        ..ClientTlsFiles::default()
    }
    .load()
    .expect_err("not PEM")
    .to_string();
    assert!(err.contains("replication.ca-filename"), "{err}");
    assert!(err.contains("no PEM certificate"), "{err}");
}

#[tokio::test]
async fn a_rotated_certificate_is_used_by_new_connections_and_old_ones_stay_up() {
    let files = Files::new();
    let old_ca = TestCa::new("old");
    let new_ca = TestCa::new("new");
    let (cert, key) = files.leaf(&old_ca.issue("server", &["127.0.0.1"]), "server");
    let stop = CancellationToken::new();
    let tls = server((cert.clone(), key.clone()), None);
    tls.watch(RELOAD_INTERVAL, stop.clone());
    let watched = tls.clone();
    let options = ListenerOptions {
        tls: Some(tls),
        ..ListenerOptions::default()
    };
    let (addr, _infos) = echo_server(options, stop.clone()).await;
    let trusts_old = client(Some(files.ca(&old_ca, "old-ca")), None);
    let trusts_new = client(Some(files.ca(&new_ca, "new-ca")), None);

    // A connection made before the rotation...
    let uri: tonic::transport::Uri = format!("https://{addr}").parse().expect("uri");
    let mut before = trusts_old
        .clone()
        .call(uri)
        .await
        .expect("connect")
        .into_inner();
    exchange(&mut before).await.expect("old certificate works");
    assert!(ping(&trusts_new, &addr).await.is_err());

    // A half-written rotation (garbage) is refused and the old certificate stays.
    std::fs::write(&cert.path, "-----BEGIN CERTIFICATE-----\ngarbage").expect("write");
    assert!(
        eventually(Duration::from_secs(10), async || watched.rejected_reloads()
            >= 1)
        .await,
        "the watcher saw the bad file and refused it"
    );
    ping(&trusts_old, &addr)
        .await
        .expect("a bad new file keeps the old certificate in use");

    // The real rotation: new connections get the new certificate within seconds.
    let rotated = new_ca.issue("server", &["127.0.0.1"]);
    std::fs::write(&key.path, &rotated.key_pem).expect("write key");
    std::fs::write(&cert.path, &rotated.cert_pem).expect("write cert");
    assert!(
        eventually(Duration::from_secs(10), async || ping(&trusts_new, &addr)
            .await
            .is_ok())
        .await,
        "new connections must use the rotated certificate"
    );
    assert!(ping(&trusts_old, &addr).await.is_err());
    // ...is not cut by it.
    exchange(&mut before)
        .await
        .expect("an existing connection survives the rotation");
    stop.cancel();
}

#[tokio::test]
async fn plaintext_and_tls_clients_do_not_mix() {
    let files = Files::new();
    let ca = TestCa::new("ca");
    let stop = CancellationToken::new();
    let tls = server(files.leaf(&ca.issue("s", &["127.0.0.1"]), "s"), None);
    let options = ListenerOptions {
        tls: Some(tls),
        ..ListenerOptions::default()
    };
    let (addr, _) = echo_server(options, stop.clone()).await;
    assert!(ping(&TlsConnector::plain(), &addr).await.is_err());
    ping(&client(Some(files.ca(&ca, "ca")), None), &addr)
        .await
        .expect("TLS client");
    stop.cancel();
}
