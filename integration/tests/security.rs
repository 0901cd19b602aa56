//! The `flotilla` binary's security edges: bad TLS, token and configuration settings are
//! refused at start with one line naming the flag (and file), and tokens never appear
//! in any log line (at debug level) or in Cluster/Status.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use flotilla_integration::flotilla_bin;
use flotilla_proto::regatta::v1::{
    CreateTableRequest, ListTablesRequest, StatusRequest, cluster_client::ClusterClient,
    tables_client::TablesClient,
};
use flotilla_testkit::certs::TestCa;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

const START: Duration = Duration::from_secs(60);

fn node(data: &Path) -> Command {
    let mut cmd = Command::new(flotilla_bin());
    cmd.arg("leader")
        .arg("--data-dir")
        .arg(data)
        .args(["--rest.address", "127.0.0.1:0"])
        .args(["--replication.address", "127.0.0.1:0"])
        .env_remove("RUST_LOG")
        .env_remove("FLOTILLA_BIN")
        .env_remove("FLOTILLA_TEST_LOG")
        .stdin(Stdio::null())
        .kill_on_drop(true);
    cmd
}

/// Runs a node that must refuse to start; returns its stderr.
async fn refused(mut cmd: Command) -> String {
    let out = tokio::time::timeout(START, cmd.output())
        .await
        .expect("exits in time")
        .expect("runs");
    assert!(!out.status.success(), "must not start");
    String::from_utf8_lossy(&out.stderr).trim().to_owned()
}

fn one_line_naming(stderr: &str, needles: &[&str]) {
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
    for n in needles {
        assert!(stderr.contains(n), "{n:?} missing from: {stderr}");
    }
}

#[tokio::test]
async fn bad_security_settings_are_refused_with_the_flag_and_file_named() {
    let dir = tempfile::tempdir().expect("dir");
    let ca = TestCa::new("ca");
    let (cert, _) = ca.issue("a", &["127.0.0.1"]).write(dir.path(), "a");
    let (_, other_key) = ca.issue("b", &["127.0.0.1"]).write(dir.path(), "b");
    let data = dir.path().join("data");

    let mut missing = node(&data);
    missing.args([
        "--api.address",
        "https://127.0.0.1:0",
        "--api.cert-filename",
        "/nonexistent/server.crt",
        "--api.key-filename",
        "/nonexistent/server.key",
    ]);
    one_line_naming(
        &refused(missing).await,
        &[
            "api.cert-filename",
            "/nonexistent/server.crt",
            "cannot read",
        ],
    );

    let mut mismatch = node(&data);
    mismatch
        .args([
            "--api.address",
            "https://127.0.0.1:0",
            "--api.cert-filename",
        ])
        .arg(&cert)
        .arg("--api.key-filename")
        .arg(&other_key);
    one_line_naming(
        &refused(mismatch).await,
        &[
            "api.key-filename",
            &other_key.display().to_string(),
            "does not belong",
        ],
    );

    let mut plaintext = node(&data);
    plaintext
        .args(["--api.address", "http://127.0.0.1:0", "--api.cert-filename"])
        .arg(&cert);
    one_line_naming(
        &refused(plaintext).await,
        &["api.cert-filename", "https://"],
    );

    let mut half_peer = node(&data);
    half_peer.arg("--raft.tls-cert-file").arg(&cert);
    one_line_naming(
        &refused(half_peer).await,
        &["raft.tls-cert-file", "all three"],
    );

    let mut misspelled_env = node(&data);
    misspelled_env.env("FLOTILLA_TABLES_TOKN", "secret");
    one_line_naming(&refused(misspelled_env).await, &["FLOTILLA_TABLES_TOKN"]);

    let config = dir.path().join("flotilla.toml");
    std::fs::write(&config, "[tables]\ntokn = \"secret\"\n").expect("write");
    let mut misspelled_key = node(&data);
    misspelled_key.arg("--config").arg(&config);
    one_line_naming(&refused(misspelled_key).await, &["tokn"]);

    // Without --config, $HOME/.flotilla/config.toml is read (so its misspelling refuses
    // start-up too).
    let home = dir.path().join("home");
    std::fs::create_dir_all(home.join(".flotilla")).expect("mkdir");
    std::fs::write(
        home.join(".flotilla/config.toml"),
        "[maintenance]\ntokne = \"secret\"\n",
    )
    .expect("write");
    let mut discovered = node(&data);
    discovered.env("HOME", &home);
    one_line_naming(&refused(discovered).await, &["tokne"]);
}

#[tokio::test]
async fn tokens_never_appear_in_logs_or_status() {
    let dir = tempfile::tempdir().expect("dir");
    let log = dir.path().join("node.log");
    let mut cmd = node(&dir.path().join("data"));
    cmd.args(["--api.address", "127.0.0.1:0"])
        .args(["--tables.token", "Tabl3sS3cret"])
        .env("FLOTILLA_MAINTENANCE_TOKEN", "Ma1ntS3cret")
        .args(["--log-level", "debug", "--dev-mode"])
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log).expect("log file"));
    let mut child = cmd.spawn().expect("spawn");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let line = tokio::time::timeout(START, lines.next_line())
        .await
        .expect("started in time")
        .expect("stdout")
        .expect("a line");
    let api = line
        .split("API (gRPC) on ")
        .nth(1)
        .and_then(|r| r.split(',').next())
        .expect("address")
        .to_owned();
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{api}"))
        .expect("uri")
        .connect()
        .await
        .expect("connect");
    let mut tables = TablesClient::new(channel.clone());
    let mut req = tonic::Request::new(CreateTableRequest {
        name: "t".into(),
        config: None,
    });
    req.metadata_mut().insert(
        "authorization",
        "Bearer Tabl3sS3cret".parse().expect("header"),
    );
    tables.create(req).await.expect("the token works");
    let mut wrong = tonic::Request::new(ListTablesRequest {});
    wrong.metadata_mut().insert(
        "authorization",
        "Bearer Tabl3sS3cre".parse().expect("header"),
    );
    assert!(tables.list(wrong).await.is_err());
    let status = ClusterClient::new(channel)
        .status(StatusRequest { config: true })
        .await
        .expect("status")
        .into_inner();
    let shown = format!("{:?}", status.config);
    assert!(
        shown.contains("**********"),
        "tokens are shown masked: {shown}"
    );
    assert!(
        !shown.contains("S3cret"),
        "a token leaked into Status: {shown}"
    );

    child.start_kill().expect("kill");
    let _ = child.wait().await;
    let logged = std::fs::read_to_string(&log).expect("log");
    assert!(
        logged.lines().count() > 5,
        "debug logging was on (so the check below means something): {logged}"
    );
    assert!(
        !logged.contains("S3cret"),
        "a token appeared in the log:\n{}",
        logged
            .lines()
            .filter(|l| l.contains("S3cret"))
            .collect::<Vec<_>>()
            .join("\n")
    );
}
