//! Harness for tests that run real `flotilla` processes on loopback.
//!
//! Processes are started with port 0 and report their addresses on stdout; each is
//! stopped by its own PID (kill -9 or drop), never by name.
//!
//! [`cluster`] runs three such processes as one raft cluster, optionally with a cuttable
//! [`proxy::LinkProxy`] on every node-to-node link; [`workload`] drives and checks writes;
//! [`chaos`] runs a seeded fault schedule under a register workload and checks the history
//! with [`linearizability`].

pub mod bench;
pub mod chaos;
pub mod cluster;
pub mod linearizability;
pub mod proxy;
pub mod workload;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use flotilla_proto::regatta::v1::kv_client::KvClient;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tonic::transport::Channel;

/// The `flotilla` binary built by `cargo build` in this workspace.
pub fn flotilla_bin() -> PathBuf {
    if let Ok(p) = std::env::var("FLOTILLA_BIN") {
        return PathBuf::from(p);
    }
    // Test binaries live in target/<profile>/deps; the binary in target/<profile>.
    let exe = std::env::current_exe().expect("current exe");
    let profile_dir = exe.parent().and_then(Path::parent).expect("target dir");
    let bin = profile_dir.join("flotilla");
    assert!(
        bin.exists(),
        "{} not found: run `cargo test --workspace` (scripts/test.sh), which builds it",
        bin.display()
    );
    bin
}

/// A running `flotilla leader` process.
#[derive(Debug)]
pub struct Process {
    child: Child,
    /// Where its gRPC API listens.
    pub api_addr: String,
    /// Where its `/metrics` endpoint listens.
    pub metrics_addr: String,
    /// Its data directory.
    pub data_dir: PathBuf,
}

impl Process {
    /// Starts a single-node leader on `data_dir` and waits (up to `timeout`) until it
    /// reports its listening addresses.
    pub async fn start(data_dir: &Path, timeout: Duration) -> Self {
        Self::start_with(data_dir, "127.0.0.1:0", &[], timeout).await
    }

    /// Starts `flotilla leader` on `data_dir` with its API on `api_address` (port 0 for any)
    /// and `extra_args` (e.g. the `--raft.*` flags of a cluster member), and waits (up to
    /// `timeout`) until it reports its listening addresses. The admin HTTP port is always
    /// picked by the OS. Flags may be given only once, so `extra_args` must not repeat
    /// `--data-dir`, `--api.address` or `--rest.address`.
    pub async fn start_with(
        data_dir: &Path,
        api_address: &str,
        extra_args: &[String],
        timeout: Duration,
    ) -> Self {
        Self::start_role("leader", data_dir, api_address, extra_args, timeout).await
    }

    /// Like [`Process::start_with`], for `flotilla <role>` (`leader` or `follower`).
    pub async fn start_role(
        role: &str,
        data_dir: &Path,
        api_address: &str,
        extra_args: &[String],
        timeout: Duration,
    ) -> Self {
        let mut child = Command::new(flotilla_bin())
            .arg(role)
            .arg("--data-dir")
            .arg(data_dir)
            .args([
                "--api.address",
                api_address,
                "--rest.address",
                "127.0.0.1:0",
            ])
            .args(extra_args)
            .args(
                (role == "leader" && !extra_args.iter().any(|a| a == "--replication.address"))
                    .then_some(["--replication.address", "127.0.0.1:0"])
                    .into_iter()
                    .flatten(),
            )
            // FLOTILLA_TEST_LOG (e.g. `info`) makes the nodes chattier when a test needs a look inside.
            .env(
                "RUST_LOG",
                std::env::var("FLOTILLA_TEST_LOG").unwrap_or_else(|_| "warn".into()),
            )
            // The harness's own variables name no setting: a node refuses unknown
            // FLOTILLA_* variables, so they are not passed on.
            .env_remove("FLOTILLA_TEST_LOG")
            .env_remove("FLOTILLA_BIN")
            // Human-readable log lines in test output (JSON lines are for log shippers).
            .env("FLOTILLA_DEV_MODE", "true")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn flotilla");
        let stdout = child.stdout.take().expect("stdout");
        let mut lines = BufReader::new(stdout).lines();
        let line = tokio::time::timeout(timeout, lines.next_line())
            .await
            .expect("flotilla reported its address in time")
            .expect("read stdout")
            .expect("flotilla printed a line");
        // "flotilla leader: API (gRPC) on 127.0.0.1:PORT, metrics on ..."
        let api_addr = line
            .split("API (gRPC) on ")
            .nth(1)
            .and_then(|rest| rest.split(',').next())
            .unwrap_or_else(|| panic!("unexpected first line: {line}"))
            .to_owned();
        let metrics_addr = line
            .split("metrics on http://")
            .nth(1)
            .and_then(|rest| rest.split('/').next())
            .unwrap_or_else(|| panic!("unexpected first line: {line}"))
            .to_owned();
        // Keep draining stdout so the child never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Self {
            child,
            api_addr,
            metrics_addr,
            data_dir: data_dir.to_path_buf(),
        }
    }

    /// The value of the Prometheus series `series` (name with labels, exactly as
    /// rendered, e.g. `flotilla_raft_applied_index{table="t"}`) on this process's
    /// `/metrics`, if present.
    pub async fn metric(&self, series: &str) -> Option<f64> {
        flotilla_testkit::metrics::read(&self.metrics_addr, series).await
    }

    /// A KV client connected to this process.
    pub async fn kv(&self) -> KvClient<Channel> {
        let channel = Channel::from_shared(format!("http://{}", self.api_addr))
            .expect("uri")
            .connect_timeout(Duration::from_secs(5))
            .connect()
            .await
            .expect("connect");
        KvClient::new(channel).max_decoding_message_size(16 << 20)
    }

    /// A channel to this process.
    pub async fn channel(&self) -> Channel {
        Channel::from_shared(format!("http://{}", self.api_addr))
            .expect("uri")
            .connect()
            .await
            .expect("connect")
    }

    /// The process id (while the process has not been reaped).
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// Sends `signal` (a name `kill` accepts, e.g. `STOP` or `CONT`) to this process, by
    /// its PID; panics if that fails.
    pub async fn signal(&self, signal: &str) {
        let pid = self.pid().expect("the process has not been reaped");
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(pid.to_string())
            .status()
            .await
            .expect("run kill");
        assert!(status.success(), "kill -{signal} {pid}: {status}");
    }

    /// SIGKILL, then reap.
    pub async fn kill9(mut self) {
        self.child.start_kill().expect("kill -9");
        let _ = self.child.wait().await;
    }
}

pub use flotilla_testkit::eventually;
