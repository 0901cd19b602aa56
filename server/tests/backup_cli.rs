//! `flotilla backup` and `flotilla restore` (issue 13 items 3 and 4), run as the binary
//! against in-process servers on loopback: a round trip gives the same tables, with the
//! manifest Armada reads plus our checksums; zstd, a subset, rate limits and parallel
//! tables work; a damaged, truncated or incomplete backup is refused before any call,
//! naming the file; a backup directory in Armada's format restores.

mod common;

use std::io::Write as _;
use std::path::Path;
use std::process::Output;

use common::TestServer;
use flotilla_proto::mvcc::v1::command::CommandType;
use flotilla_proto::mvcc::v1::{Command, KeyValue};
use flotilla_replication::format::RecordWriter;
use md5::{Digest as _, Md5};

/// Runs the binary with `args`, with nothing from the environment that could change it.
fn flotilla(args: &[&str]) -> Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_flotilla"))
        .args(args)
        .env_remove("FLOTILLA_ADDRESS")
        .env_remove("FLOTILLA_TOKEN")
        .output()
        .expect("run flotilla")
}

fn address(server: &TestServer) -> String {
    let api = server
        .running
        .as_ref()
        .and_then(|r| r.api_addr)
        .expect("TCP API");
    format!("http://{api}")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Every (key, value) of `table` (none if it is missing).
async fn pairs(server: &TestServer, table: &str) -> Vec<(Vec<u8>, Vec<u8>)> {
    server
        .all(table)
        .await
        .unwrap_or_default()
        .into_iter()
        .map(|kv| (kv.key, kv.value))
        .collect()
}

async fn fill(server: &TestServer, table: &str, n: usize, value: &str) {
    server.create_table(table).await;
    for i in 0..n {
        server
            .put(
                table,
                format!("{table}/{i:05}").as_bytes(),
                value.as_bytes(),
            )
            .await;
    }
}

fn manifest(dir: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(dir.join("manifest.json")).expect("manifest"))
        .expect("json")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_restores_table_for_table_and_the_manifest_says_what_it_holds() {
    let source = TestServer::start().await;
    fill(&source, "users", 300, "u").await;
    fill(&source, "orders", 120, "o").await;
    source.create_table("empty").await;
    let dir = tempfile::tempdir().expect("dir");
    let backup_dir = dir.path().join("b1");
    let out = flotilla(&[
        "backup",
        "--address",
        &address(&source),
        "--dir",
        backup_dir.to_str().expect("utf-8"),
        "--json",
    ]);
    assert!(out.status.success(), "backup failed: {}", stderr(&out));
    // One JSON object per table on stdout.
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect();
    assert_eq!(lines.len(), 3, "{lines:?}");
    let m = manifest(&backup_dir);
    assert!(m["started"].as_str().is_some_and(|s| s.ends_with('Z')));
    assert!(m["finished"].is_string());
    assert_eq!(m["flotilla_version"], env!("CARGO_PKG_VERSION"));
    let tables = m["tables"].as_array().expect("tables");
    let names: Vec<&str> = tables.iter().filter_map(|t| t["name"].as_str()).collect();
    assert_eq!(names, ["empty", "orders", "users"]);
    for t in tables {
        let file = backup_dir.join(t["file_name"].as_str().expect("file_name"));
        let bytes = std::fs::read(&file).expect("file");
        assert_eq!(
            t["md5"],
            format!("{:x}", Md5::digest(&bytes)),
            "Armada's md5"
        );
        assert_eq!(t["size"], bytes.len());
        assert_eq!(t["sha256"].as_str().map(str::len), Some(64));
        assert!(t["crc64xor"].is_u64() && t["leader_index"].is_u64() || t["name"] == "empty");
    }
    let users = tables.iter().find(|t| t["name"] == "users").expect("users");
    assert_eq!(users["keys"], 300);
    assert_eq!(users["bytes"], 300 * ("users/00000".len() + 1));

    // Into a fresh server: the same tables.
    let target = TestServer::start().await;
    let out = flotilla(&[
        "restore",
        "--address",
        &address(&target),
        "--dir",
        backup_dir.to_str().expect("utf-8"),
    ]);
    assert!(out.status.success(), "restore failed: {}", stderr(&out));
    for table in ["users", "orders", "empty"] {
        assert_eq!(
            pairs(&target, table).await,
            pairs(&source, table).await,
            "{table}"
        );
    }

    // zstd, two tables at once, paced; then only one of them back into a third server.
    let zstd_dir = dir.path().join("b2");
    let out = flotilla(&[
        "backup",
        "--address",
        &address(&source),
        "--dir",
        zstd_dir.to_str().expect("utf-8"),
        "--compression",
        "zstd",
        "--parallel",
        "2",
        "--rate-limit",
        "50MB",
        "--tables",
        "users,orders",
    ]);
    assert!(out.status.success(), "zstd backup failed: {}", stderr(&out));
    let m = manifest(&zstd_dir);
    assert_eq!(m["tables"].as_array().map(Vec::len), Some(2));
    assert_eq!(m["tables"][1]["file_name"], "users.bak.zst");
    assert_eq!(m["tables"][1]["compression"], "zstd");
    let third = TestServer::start().await;
    let out = flotilla(&[
        "restore",
        "--address",
        &address(&third),
        "--dir",
        zstd_dir.to_str().expect("utf-8"),
        "--tables",
        "users",
    ]);
    assert!(
        out.status.success(),
        "zstd restore failed: {}",
        stderr(&out)
    );
    assert_eq!(pairs(&third, "users").await, pairs(&source, "users").await);
    assert!(
        pairs(&third, "orders").await.is_empty(),
        "only the table asked for"
    );
    for s in [source, target, third] {
        s.shutdown().await;
    }
}

/// Copies a backup directory.
fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for entry in std::fs::read_dir(from).expect("list").flatten() {
        std::fs::copy(entry.path(), to.join(entry.file_name())).expect("copy");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn damaged_backups_are_refused_before_anything_changes() {
    let server = TestServer::start().await;
    fill(&server, "users", 200, "before").await;
    let dir = tempfile::tempdir().expect("dir");
    let good = dir.path().join("good");
    let out = flotilla(&[
        "backup",
        "--address",
        &address(&server),
        "--dir",
        good.to_str().expect("utf-8"),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    // The server moves on; a refused restore must leave it as it is now.
    for i in 0..10 {
        server
            .put("users", format!("users/{i:05}").as_bytes(), b"after")
            .await;
    }
    let now = pairs(&server, "users").await;

    let damaged = [
        ("bit-flip", "sha256"),
        ("truncated", "bytes"),
        ("missing", "missing"),
        ("no-manifest", "no backup here"),
    ];
    for (case, says) in damaged {
        let bad = dir.path().join(case);
        copy_dir(&good, &bad);
        let file = bad.join("users.bak");
        match case {
            "bit-flip" => {
                let mut bytes = std::fs::read(&file).expect("read");
                let middle = bytes.len() / 2;
                bytes[middle] ^= 0x10;
                std::fs::write(&file, bytes).expect("write");
            }
            "truncated" => {
                let bytes = std::fs::read(&file).expect("read");
                std::fs::write(&file, &bytes[..bytes.len() - 100]).expect("write");
            }
            "missing" => std::fs::remove_file(&file).expect("remove"),
            _ => std::fs::remove_file(bad.join("manifest.json")).expect("remove"),
        }
        let out = flotilla(&[
            "restore",
            "--address",
            &address(&server),
            "--dir",
            bad.to_str().expect("utf-8"),
        ]);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(1), "{case}: {err}");
        assert_eq!(err.lines().count(), 1, "{case}: one line: {err}");
        assert!(err.contains(says), "{case}: {err}");
        if case != "no-manifest" {
            assert!(err.contains("users.bak"), "{case} names the file: {err}");
        }
        assert_eq!(
            pairs(&server, "users").await,
            now,
            "{case}: nothing changed"
        );
    }

    // Usage errors exit 2; a table not in the backup is refused by name.
    assert_eq!(flotilla(&["restore"]).status.code(), Some(2));
    let out = flotilla(&[
        "restore",
        "--address",
        &address(&server),
        "--dir",
        good.to_str().expect("utf-8"),
        "--tables",
        "nope",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("nope"), "{}", stderr(&out));
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_directory_in_armadas_format_restores() {
    // Built as `armada backup` writes one (WIRE.md §5.8-7, §5.9): Snappy-framed PUT
    // records without revisions or trailer, and a manifest with Armada's fields only.
    let dir = tempfile::tempdir().expect("dir");
    let mut writer = RecordWriter::default();
    let mut bytes = Vec::new();
    for i in 0..500 {
        let cmd = Command {
            table: b"regatta".to_vec(),
            r#type: CommandType::Put as i32,
            kv: Some(KeyValue {
                key: format!("key-{i:04}").into_bytes(),
                value: format!("value-{i}").into_bytes(),
                ..Default::default()
            }),
            ..Default::default()
        };
        if let Some(chunk) = writer.push(&cmd).expect("push") {
            bytes.extend(chunk);
        }
    }
    for chunk in writer.finish().expect("finish") {
        bytes.extend(chunk);
    }
    std::fs::write(dir.path().join("regatta.bak"), &bytes).expect("write");
    let manifest = serde_json::json!({
        "started": "2024-05-01T10:00:00.123456789+02:00",
        "finished": "2024-05-01T10:00:01Z",
        "tables": [{
            "name": "regatta",
            "file_name": "regatta.bak",
            "md5": format!("{:x}", Md5::digest(&bytes)),
        }],
    });
    let mut f = std::fs::File::create(dir.path().join("manifest.json")).expect("create");
    writeln!(f, "{manifest}").expect("write");

    let server = TestServer::start().await;
    let out = flotilla(&[
        "restore",
        "--address",
        &address(&server),
        "--dir",
        dir.path().to_str().expect("utf-8"),
    ]);
    assert!(out.status.success(), "restore failed: {}", stderr(&out));
    let got = pairs(&server, "regatta").await;
    assert_eq!(got.len(), 500);
    assert_eq!(got[7], (b"key-0007".to_vec(), b"value-7".to_vec()));
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_port_dials_tls_and_the_maintenance_token_is_sent() {
    use common::tls::{Pki, mtls_api_settings, path, tls_channel};
    use flotilla_proto::regatta::v1::kv_client::KvClient;
    use flotilla_proto::regatta::v1::tables_client::TablesClient;
    use flotilla_proto::regatta::v1::{CreateTableRequest, PutRequest};

    let pki = Pki::new();
    let ca = pki.ca_file();
    let (app_cert, app_key) = pki.leaf("app", "app", &["app.example"]);
    let data = tempfile::tempdir().expect("dir");
    let mut s = mtls_api_settings(&pki, data.path());
    s.maintenance.token = flotilla_ops::settings::Secret::new("maint-t0ken");
    let running = flotilla_server::start(s, flotilla_server::Role::Leader)
        .await
        .expect("start");
    let addr = common::tls::api(&running);
    let channel = tls_channel(addr, &ca, Some((&app_cert, &app_key)));
    TablesClient::new(channel.clone())
        .create(CreateTableRequest {
            name: "t".into(),
            config: None,
        })
        .await
        .expect("create");
    for i in 0..20 {
        KvClient::new(channel.clone())
            .put(PutRequest {
                table: b"t".to_vec(),
                key: format!("k{i:02}").into_bytes(),
                value: b"v".to_vec(),
                prev_kv: false,
            })
            .await
            .expect("put");
    }
    let dir = tempfile::tempdir().expect("dir");
    let d = dir.path().to_str().expect("utf-8");
    let address = addr.to_string(); // Armada's form: host:port, dialled over TLS
    let (ca, app_cert, app_key) = (path(&ca), path(&app_cert), path(&app_key));
    let tls = [
        "--ca",
        ca.as_str(),
        "--cert",
        app_cert.as_str(),
        "--key",
        app_key.as_str(),
    ];
    let run = |verb: &str, token: Option<&str>| {
        let mut args = vec![verb, "--address", address.as_str(), "--dir", d];
        args.extend(tls);
        if let Some(t) = token {
            args.extend(["--token", t]);
        }
        flotilla(&args)
    };
    let out = run("backup", None);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("Unauthenticated"), "{}", stderr(&out));
    let out = run("backup", Some("maint-t0ken"));
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(manifest(dir.path())["tables"][0]["keys"] == 20);
    let out = run("restore", Some("maint-t0ken"));
    assert!(out.status.success(), "{}", stderr(&out));
    // Plaintext to a TLS port fails with one line, not a hang.
    let out = flotilla(&["backup", "--address", &format!("http://{addr}"), "--dir", d]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(stderr(&out).lines().count(), 1, "{}", stderr(&out));
    running.shutdown().await;
}
