//! Starts an in-process server on loopback with a fresh data dir.

#![allow(dead_code)] // each test file uses a different subset

pub mod tls;

use flotilla_ops::Settings;
use flotilla_proto::regatta::v1::{
    CreateTableRequest, PutRequest, PutResponse, RangeRequest, RangeResponse,
    cluster_client::ClusterClient, kv_client::KvClient, metrics_client::MetricsClient,
    tables_client::TablesClient,
};
use flotilla_server::Running;
use tonic::transport::Channel;

pub struct TestServer {
    pub running: Option<Running>,
    pub dir: tempfile::TempDir,
    pub channel: Channel,
}

pub fn settings(dir: &std::path::Path) -> Settings {
    let mut s = Settings {
        data_dir: dir.to_path_buf(),
        ..Settings::default()
    };
    s.api.address = "127.0.0.1:0".into();
    s.rest.address = "127.0.0.1:0".into();
    s.replication.address = "127.0.0.1:0".into();
    s
}

impl TestServer {
    pub async fn start() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        Self::start_in(dir).await
    }

    pub async fn start_in(dir: tempfile::TempDir) -> Self {
        let s = settings(dir.path());
        Self::start_as(dir, s, flotilla_server::Role::Leader).await
    }

    /// Starts with the given settings (their data dir must be `dir`) and role.
    pub async fn start_as(
        dir: tempfile::TempDir,
        settings: Settings,
        role: flotilla_server::Role,
    ) -> Self {
        let running = flotilla_server::start(settings, role)
            .await
            .expect("server starts");
        let channel = Channel::from_shared(format!(
            "http://{}",
            running.api_addr.expect("TCP API address")
        ))
        .expect("uri")
        .connect()
        .await
        .expect("connect");
        Self {
            running: Some(running),
            dir,
            channel,
        }
    }

    /// Stops the server gracefully and starts a new one on the same data dir.
    pub async fn restart(mut self) -> Self {
        if let Some(r) = self.running.take() {
            r.shutdown().await;
        }
        Self::start_in(self.dir).await
    }

    pub fn kv(&self) -> KvClient<Channel> {
        KvClient::new(self.channel.clone()).max_decoding_message_size(16 << 20)
    }

    pub fn tables(&self) -> TablesClient<Channel> {
        TablesClient::new(self.channel.clone())
    }

    pub fn cluster(&self) -> ClusterClient<Channel> {
        ClusterClient::new(self.channel.clone())
    }

    pub fn metrics(&self) -> MetricsClient<Channel> {
        MetricsClient::new(self.channel.clone())
    }

    pub fn rest_addr(&self) -> std::net::SocketAddr {
        self.running.as_ref().expect("running").rest_addr
    }

    pub async fn create_table(&self, name: &str) -> u64 {
        let resp = self
            .tables()
            .create(CreateTableRequest {
                name: name.into(),
                config: None,
            })
            .await
            .expect("create table");
        resp.into_inner().id.parse().expect("decimal id")
    }

    pub async fn put(&self, table: &str, key: &[u8], value: &[u8]) -> PutResponse {
        self.kv()
            .put(PutRequest {
                table: table.into(),
                key: key.to_vec(),
                value: value.to_vec(),
                prev_kv: false,
            })
            .await
            .expect("put")
            .into_inner()
    }

    pub async fn range(&self, table: &str, key: &[u8], end: &[u8]) -> RangeResponse {
        self.kv()
            .range(RangeRequest {
                table: table.into(),
                key: key.to_vec(),
                range_end: end.to_vec(),
                ..Default::default()
            })
            .await
            .expect("range")
            .into_inner()
    }

    /// Every key of `table` (values and revisions), or the error of the Range.
    pub async fn all(
        &self,
        table: &str,
    ) -> Result<Vec<flotilla_proto::mvcc::v1::KeyValue>, tonic::Status> {
        Ok(self
            .kv()
            .range(RangeRequest {
                table: table.into(),
                key: vec![0],
                range_end: vec![0],
                ..Default::default()
            })
            .await?
            .into_inner()
            .kvs)
    }

    pub async fn shutdown(mut self) {
        if let Some(r) = self.running.take() {
            r.shutdown().await;
        }
    }
}

/// One plain HTTP/1.1 GET; returns (status code, body).
pub async fn http_get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.expect("write");
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await.expect("read");
    let text = String::from_utf8_lossy(&buf).into_owned();
    let code = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (code, body)
}

/// The value of a sample line `name` (with its labels as rendered) in Prometheus text.
#[allow(unused_imports)] // each test file uses a different subset
pub use flotilla_testkit::metrics::value as metric_value;

#[allow(unused_imports)]
pub use flotilla_testkit::eventually;

/// `n` distinct free loopback ports below Linux's ephemeral range, for servers that must
/// keep their ports (raft members). Distinct within this process, so tests running in
/// parallel never get the same one; released just before the servers bind them.
pub fn free_ports(n: usize) -> Vec<u16> {
    flotilla_testkit::ports::reserve(n)
        .iter()
        .map(flotilla_testkit::ports::port)
        .collect()
}
