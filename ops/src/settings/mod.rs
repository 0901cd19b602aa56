//! Node settings, layered: built-in defaults < config file < environment < flags.
//!
//! Keys are Armada's where the concept exists (`raft.node-id`, `api.address`, ...). The
//! binary turns flags and `FLOTILLA_*` environment variables into overrides; this module
//! merges them with the file through the `config` crate and checks the result.

mod address;
mod keys;
mod secret;
mod tls;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use thiserror::Error;

pub use address::{Listen, ListenAddr};
pub use keys::{CLIENT_ENV, CONFIG_ENV, KEYS, SWITCHES, check_environment, env_var};
pub use secret::{MASK, Secret};
pub use tls::{LeaderClientTls, PeerTls};

use address::parse_listen;

/// A setting that is missing, malformed or inconsistent.
#[derive(Debug, Error)]
pub enum SettingsError {
    /// The config file or an override could not be read or parsed.
    #[error("configuration: {0}")]
    Config(#[from] config::ConfigError),
    /// A value parsed but makes no sense.
    #[error("invalid setting {key}: {reason}")]
    Invalid {
        /// The dotted key.
        key: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// A `FLOTILLA_*` environment variable that names no setting.
    #[error("unknown environment variable {0}: no setting has that name")]
    UnknownEnvironment(String),
}

/// Every setting of a node.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "kebab-case", default, deny_unknown_fields)]
pub struct Settings {
    /// Directory of the node's RocksDB.
    pub data_dir: PathBuf,
    /// Log filter (`info`, `debug`, or a `RUST_LOG`-style directive list).
    pub log_level: String,
    /// Human-readable log lines; JSON lines (for log shippers) otherwise.
    pub dev_mode: bool,
    /// Public gRPC API.
    pub api: ApiSettings,
    /// Admin HTTP endpoints (/metrics, /healthz).
    pub rest: RestSettings,
    /// Consensus.
    pub raft: RaftSettings,
    /// Cross-cluster replication endpoint (served from the follower-cluster issue on).
    pub replication: ReplicationSettings,
    /// Cluster naming.
    pub memberlist: MemberlistSettings,
    /// The Tables service.
    pub tables: ServiceSettings,
    /// The Maintenance service.
    pub maintenance: ServiceSettings,
}

/// `tables.*`, `maintenance.*`: a service that can be switched off or token-protected.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "kebab-case", default, deny_unknown_fields)]
pub struct ServiceSettings {
    /// Serve it at all (off: callers get UNIMPLEMENTED `unknown service ...`).
    pub enabled: bool,
    /// Bearer token callers must send (`authorization: Bearer <token>`); empty = none.
    pub token: Secret,
}

impl Default for ServiceSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            token: Secret::default(),
        }
    }
}

/// `api.*`
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "kebab-case", default, deny_unknown_fields)]
pub struct ApiSettings {
    /// Where the gRPC API listens (`http://host:port` or `host:port`).
    pub address: String,
    /// The address clients are told to use (Cluster/MemberList).
    pub advertise_address: String,
    /// Server certificate (PEM), with an `https://` address.
    pub cert_filename: String,
    /// Its private key (PEM).
    pub key_filename: String,
    /// Require client certificates (mTLS).
    pub client_cert_auth: bool,
    /// CA client certificates must chain to.
    pub ca_filename: String,
    /// Subject CN client certificates must carry (empty = any).
    pub allowed_cn: String,
    /// Host name client certificates must be valid for (empty = any).
    pub allowed_hostname: String,
    /// Most connections open at once (0 = no limit); more wait in the backlog.
    pub max_concurrent_connections: u64,
    /// Most concurrent calls on one connection (0 = no limit).
    pub max_concurrent_streams: u32,
}

/// `rest.*`
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "kebab-case", default, deny_unknown_fields)]
pub struct RestSettings {
    /// Where /metrics and /healthz listen.
    pub address: String,
}

/// `raft.*`
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "kebab-case", default, deny_unknown_fields)]
pub struct RaftSettings {
    /// This node's raft id (1-based position in the initial members).
    pub node_id: u64,
    /// Node-to-node raft address.
    pub address: String,
    /// `id=host:port,...` of every member, or Armada's ordered `host:port,...` list (ids
    /// by position, from 1); empty = this node alone.
    pub initial_members: String,
    /// Peer certificate (PEM): mutual TLS between nodes, with the key and CA below.
    pub tls_cert_file: String,
    /// Its private key (PEM).
    pub tls_key_file: String,
    /// CA every peer's certificate must chain to.
    pub tls_ca_file: String,
    /// One raft tick (Armada's round-trip time), e.g. `50ms`.
    pub rtt: String,
    /// Election timeout in ticks.
    pub election_rtt: u64,
    /// Heartbeat interval in ticks.
    pub heartbeat_rtt: u64,
    /// Idle ticks after which a table's group hibernates (stops ticking and
    /// heartbeating until it has work); 0 keeps every group ticking.
    pub hibernate_rtt: u64,
    /// Applied log entries kept per table before older ones are compacted away.
    pub log_retention_entries: u64,
    /// Approximate log bytes kept per table; whichever retention bound is hit first wins.
    pub log_retention_bytes: u64,
    /// Threads driving raft groups and applying entries.
    pub threads: usize,
    /// Largest raft snapshot a peer may stream to this node; a larger one is refused and
    /// its staged file removed (a broken or hostile peer cannot fill the disk).
    pub max_snapshot_size_bytes: u64,
}

/// `replication.*`
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "kebab-case", default, deny_unknown_fields)]
pub struct ReplicationSettings {
    /// Leader: serve replication at all.
    pub enabled: bool,
    /// Where the leader cluster serves replication to follower clusters.
    pub address: String,
    /// The leader cluster's replication address a follower cluster pulls from.
    pub leader_address: String,
    /// Leader: the listener's certificate; follower: the client certificate it dials with.
    pub cert_filename: String,
    /// Private key of `cert_filename`.
    pub key_filename: String,
    /// Leader: CA of follower client certificates; follower: CA of the leader's certificate
    /// (empty = the system's trust store).
    pub ca_filename: String,
    /// Leader: require client certificates (mTLS).
    pub client_cert_auth: bool,
    /// Follower: the name verified in the leader's certificate (empty = the address's host).
    pub server_name: String,
    /// Follower: accept any leader certificate (testing only; logged as a warning).
    pub insecure_skip_verify: bool,
    /// Byte budget of one Log/Replicate message the leader sends.
    pub max_send_message_size_bytes: u64,
    /// How often a follower compares its tables with the leader's (also done on demand).
    pub reconcile_interval: String,
}

/// `memberlist.*`
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "kebab-case", default, deny_unknown_fields)]
pub struct MemberlistSettings {
    /// Cluster name reported by Cluster/MemberList.
    pub cluster_name: String,
    /// Human node name; empty = the raft address.
    pub node_name: String,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("flotilla-data"),
            log_level: "info".into(),
            dev_mode: false,
            api: ApiSettings::default(),
            rest: RestSettings::default(),
            raft: RaftSettings::default(),
            replication: ReplicationSettings::default(),
            memberlist: MemberlistSettings::default(),
            tables: ServiceSettings::default(),
            maintenance: ServiceSettings::default(),
        }
    }
}

impl Default for ApiSettings {
    fn default() -> Self {
        Self {
            address: "http://0.0.0.0:8443".into(),
            advertise_address: "http://127.0.0.1:8443".into(),
            cert_filename: String::new(),
            key_filename: String::new(),
            client_cert_auth: false,
            ca_filename: String::new(),
            allowed_cn: String::new(),
            allowed_hostname: String::new(),
            max_concurrent_connections: 0,
            max_concurrent_streams: 0,
        }
    }
}

impl Default for RestSettings {
    fn default() -> Self {
        Self {
            address: "http://127.0.0.1:8079".into(),
        }
    }
}

impl Default for RaftSettings {
    fn default() -> Self {
        Self {
            node_id: 1,
            address: "127.0.0.1:5012".into(),
            initial_members: String::new(),
            tls_cert_file: String::new(),
            tls_key_file: String::new(),
            tls_ca_file: String::new(),
            rtt: "50ms".into(),
            election_rtt: 20,
            heartbeat_rtt: 1,
            hibernate_rtt: 40,
            log_retention_entries: 10_000,
            log_retention_bytes: 64 << 20,
            threads: 2,
            max_snapshot_size_bytes: 64 << 30,
        }
    }
}

impl Default for ReplicationSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            address: "http://0.0.0.0:8444".into(),
            leader_address: "http://127.0.0.1:8444".into(),
            cert_filename: String::new(),
            key_filename: String::new(),
            ca_filename: String::new(),
            client_cert_auth: false,
            server_name: String::new(),
            insecure_skip_verify: false,
            max_send_message_size_bytes: 4 << 20,
            reconcile_interval: "5s".into(),
        }
    }
}

impl Default for MemberlistSettings {
    fn default() -> Self {
        Self {
            cluster_name: "default".into(),
            node_name: String::new(),
        }
    }
}

impl Settings {
    /// The config file used when none is given: `config.{toml,yaml,yml,json}` in
    /// `/etc/flotilla/`, then `$HOME/.flotilla/`, then the working directory (Armada's
    /// search order); the first that exists wins.
    pub fn discover_file() -> Option<PathBuf> {
        let mut dirs = vec![PathBuf::from("/etc/flotilla")];
        if let Some(home) = std::env::var_os("HOME") {
            dirs.push(PathBuf::from(home).join(".flotilla"));
        }
        dirs.push(PathBuf::from("."));
        first_config_file(&dirs)
    }

    /// Defaults, then `file` (TOML, YAML or JSON by extension), then `overrides`
    /// (dotted key -> value, from the environment and flags). A key no setting has is
    /// an error naming it.
    pub fn load(
        file: Option<&Path>,
        overrides: &BTreeMap<String, String>,
    ) -> Result<Self, SettingsError> {
        let mut builder =
            config::Config::builder().add_source(config::Config::try_from(&Settings::default())?);
        if let Some(path) = file {
            builder = builder.add_source(config::File::from(path));
        }
        for (key, value) in overrides {
            builder = builder.set_override(key.as_str(), value.as_str())?;
        }
        let settings: Settings = builder.build()?.try_deserialize()?;
        settings.validate()?;
        Ok(settings)
    }

    fn validate(&self) -> Result<(), SettingsError> {
        if self.raft.node_id == 0 {
            return Err(invalid("raft.node-id", "must be at least 1"));
        }
        let members = self.members()?;
        if !members.contains_key(&self.raft.node_id) {
            return Err(invalid(
                "raft.initial-members",
                format!("does not name raft.node-id {}", self.raft.node_id),
            ));
        }
        self.tick()?;
        if self.raft.heartbeat_rtt == 0 || self.raft.election_rtt <= self.raft.heartbeat_rtt {
            return Err(invalid(
                "raft.election-rtt",
                "must be greater than raft.heartbeat-rtt (>= 1)",
            ));
        }
        if self.raft.log_retention_entries == 0 {
            return Err(invalid("raft.log-retention-entries", "must be at least 1"));
        }
        if self.raft.max_snapshot_size_bytes == 0 {
            return Err(invalid(
                "raft.max-snapshot-size-bytes",
                "must be at least 1",
            ));
        }
        if self.raft.log_retention_bytes == 0 {
            return Err(invalid("raft.log-retention-bytes", "must be at least 1"));
        }
        if members.len() > 1 {
            self.raft_listen()?;
        }
        self.api_listen()?;
        self.rest_listen()?;
        self.replication_listen()?;
        self.api_tls()?;
        self.peer_tls()?;
        if self.api.max_concurrent_connections > u64::from(u32::MAX) {
            return Err(invalid(
                "api.max-concurrent-connections",
                "must be at most 4294967295",
            ));
        }
        self.reconcile_interval()?;
        if self.replication.max_send_message_size_bytes < 1024 {
            return Err(invalid(
                "replication.max-send-message-size-bytes",
                "must be at least 1024",
            ));
        }
        Ok(())
    }

    /// Raft id -> raft address of every member.
    pub fn members(&self) -> Result<BTreeMap<u64, String>, SettingsError> {
        let mut out = BTreeMap::new();
        if self.raft.initial_members.trim().is_empty() {
            out.insert(self.raft.node_id, self.raft.address.clone());
            return Ok(out);
        }
        let parts: Vec<&str> = self
            .raft
            .initial_members
            .split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .collect();
        if parts.iter().all(|p| !p.contains('=')) {
            // Armada's ordered address list: ids by position, from 1.
            for (i, addr) in parts.iter().enumerate() {
                if out.values().any(|a| a == addr) {
                    return Err(invalid(
                        "raft.initial-members",
                        format!("{addr:?} is listed twice"),
                    ));
                }
                out.insert(i as u64 + 1, (*addr).to_owned());
            }
            return Ok(out);
        }
        for part in parts {
            let (id, addr) = part.split_once('=').ok_or_else(|| {
                invalid(
                    "raft.initial-members",
                    format!("{part:?} is not id=host:port (use one form for every member)"),
                )
            })?;
            let id: u64 = id
                .trim()
                .parse()
                .map_err(|_| invalid("raft.initial-members", format!("{id:?} is not a number")))?;
            if id == 0 || out.insert(id, addr.trim().to_owned()).is_some() {
                return Err(invalid(
                    "raft.initial-members",
                    format!("id {id} is zero or repeated"),
                ));
            }
        }
        Ok(out)
    }

    /// One raft tick.
    pub fn tick(&self) -> Result<Duration, SettingsError> {
        parse_duration(&self.raft.rtt).ok_or_else(|| {
            invalid(
                "raft.rtt",
                format!("{:?} is not a duration like 50ms", self.raft.rtt),
            )
        })
    }

    /// Where `api.address` listens, and whether with TLS.
    pub fn api_listen(&self) -> Result<Listen, SettingsError> {
        parse_listen("api.address", &self.api.address, true)
    }

    /// The socket address `raft.address` names (node-to-node traffic; TLS is set by the
    /// `raft.tls-*` files, not a scheme).
    pub fn raft_listen(&self) -> Result<SocketAddr, SettingsError> {
        let listen = parse_listen("raft.address", &self.raft.address, false)?;
        if listen.tls {
            return Err(invalid(
                "raft.address",
                "takes host:port; peer TLS is turned on by raft.tls-cert-file, \
                 raft.tls-key-file and raft.tls-ca-file",
            ));
        }
        listen.tcp("raft.address")
    }

    /// Where `replication.address` listens, and whether with TLS.
    pub fn replication_listen(&self) -> Result<Listen, SettingsError> {
        parse_listen("replication.address", &self.replication.address, false)
    }

    /// How often a follower reconciles its table set.
    pub fn reconcile_interval(&self) -> Result<Duration, SettingsError> {
        parse_duration(&self.replication.reconcile_interval)
            .filter(|d| !d.is_zero())
            .ok_or_else(|| {
                invalid(
                    "replication.reconcile-interval",
                    format!(
                        "{:?} is not a duration like 5s",
                        self.replication.reconcile_interval
                    ),
                )
            })
    }

    /// The socket address `rest.address` names (plain HTTP: keep it on loopback).
    pub fn rest_listen(&self) -> Result<SocketAddr, SettingsError> {
        let listen = parse_listen("rest.address", &self.rest.address, false)?;
        if listen.tls {
            return Err(invalid("rest.address", "is plain HTTP; use http://"));
        }
        listen.tcp("rest.address")
    }

    /// Settings flattened to dotted keys, for Cluster/Status with `config=true`; secrets
    /// (set or not) read [`MASK`].
    pub fn flatten(&self) -> BTreeMap<String, String> {
        let mut out = BTreeMap::new();
        if let Ok(v) = serde_json::to_value(self) {
            flatten_into("", &v, &mut out);
        }
        for key in ["tables.token", "maintenance.token"] {
            out.insert(key.to_owned(), MASK.to_owned());
        }
        out
    }
}

fn flatten_into(prefix: &str, v: &serde_json::Value, out: &mut BTreeMap<String, String>) {
    match v {
        serde_json::Value::Object(map) => {
            for (k, v) in map {
                let key = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                flatten_into(&key, v, out);
            }
        }
        serde_json::Value::String(s) => {
            out.insert(prefix.to_owned(), s.clone());
        }
        other => {
            out.insert(prefix.to_owned(), other.to_string());
        }
    }
}

/// The first `config.{toml,yaml,yml,json}` in `dirs`, searched in order.
fn first_config_file(dirs: &[PathBuf]) -> Option<PathBuf> {
    dirs.iter()
        .flat_map(|d| ["toml", "yaml", "yml", "json"].map(|ext| d.join(format!("config.{ext}"))))
        .find(|p| p.is_file())
}

pub(crate) fn invalid(key: &'static str, reason: impl Into<String>) -> SettingsError {
    SettingsError::Invalid {
        key,
        reason: reason.into(),
    }
}

/// Parses durations like `50ms`, `2s`, `1m`, `500us`.
pub fn parse_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit())?;
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().ok()?;
    match unit {
        "us" => Some(Duration::from_micros(n)),
        "ms" => Some(Duration::from_millis(n)),
        "s" => Some(Duration::from_secs(n)),
        "m" => Some(Duration::from_secs(n.checked_mul(60)?)),
        _ => None,
    }
}

#[cfg(test)]
mod tests;
