//! Node settings, layered: built-in defaults < config file < environment < flags.
//!
//! Keys are Armada's where the concept exists (`raft.node-id`, `api.address`, ...). The
//! binary turns flags and `FLOTILLA_*` environment variables into overrides; this module
//! merges them with the file through the `config` crate and checks the result.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use thiserror::Error;

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
}

/// Every setting of a node.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "kebab-case", default)]
pub struct Settings {
    /// Directory of the node's RocksDB.
    pub data_dir: PathBuf,
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
}

/// `api.*`
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "kebab-case", default)]
pub struct ApiSettings {
    /// Where the gRPC API listens (`http://host:port` or `host:port`).
    pub address: String,
    /// The address clients are told to use (Cluster/MemberList).
    pub advertise_address: String,
}

/// `rest.*`
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "kebab-case", default)]
pub struct RestSettings {
    /// Where /metrics and /healthz listen.
    pub address: String,
}

/// `raft.*`
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "kebab-case", default)]
pub struct RaftSettings {
    /// This node's raft id (1-based position in the initial members).
    pub node_id: u64,
    /// Node-to-node raft address.
    pub address: String,
    /// `id=host:port,...` of every member; empty = this node alone.
    pub initial_members: String,
    /// One raft tick (Armada's round-trip time), e.g. `50ms`.
    pub rtt: String,
    /// Election timeout in ticks.
    pub election_rtt: u64,
    /// Heartbeat interval in ticks.
    pub heartbeat_rtt: u64,
    /// Applied log entries kept per table before older ones are compacted away.
    pub log_retention_entries: u64,
    /// Approximate log bytes kept per table; whichever retention bound is hit first wins.
    pub log_retention_bytes: u64,
    /// Threads driving raft groups and applying entries.
    pub threads: usize,
}

/// `replication.*`
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "kebab-case", default)]
pub struct ReplicationSettings {
    /// Where the leader cluster serves replication to follower clusters.
    pub address: String,
    /// The leader cluster's replication address a follower cluster pulls from.
    pub leader_address: String,
    /// Byte budget of one Log/Replicate message the leader sends.
    pub max_send_message_size_bytes: u64,
    /// How often a follower compares its tables with the leader's (also done on demand).
    pub reconcile_interval: String,
}

/// `memberlist.*`
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "kebab-case", default)]
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
            api: ApiSettings::default(),
            rest: RestSettings::default(),
            raft: RaftSettings::default(),
            replication: ReplicationSettings::default(),
            memberlist: MemberlistSettings::default(),
        }
    }
}

impl Default for ApiSettings {
    fn default() -> Self {
        Self {
            address: "http://0.0.0.0:8443".into(),
            advertise_address: "http://127.0.0.1:8443".into(),
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
            rtt: "50ms".into(),
            election_rtt: 20,
            heartbeat_rtt: 1,
            log_retention_entries: 10_000,
            log_retention_bytes: 64 << 20,
            threads: 2,
        }
    }
}

impl Default for ReplicationSettings {
    fn default() -> Self {
        Self {
            address: "http://0.0.0.0:8444".into(),
            leader_address: "http://127.0.0.1:8444".into(),
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

/// Every key a flag or environment variable may set, with its help text.
pub const KEYS: &[(&str, &str)] = &[
    (
        "data-dir",
        "Directory of the node's RocksDB [default: flotilla-data]",
    ),
    (
        "api.address",
        "gRPC API listen address [default: http://0.0.0.0:8443]",
    ),
    (
        "api.advertise-address",
        "API address advertised to clients [default: http://127.0.0.1:8443]",
    ),
    (
        "rest.address",
        "Admin HTTP (/metrics, /healthz) address [default: http://127.0.0.1:8079]",
    ),
    ("raft.node-id", "This node's raft id [default: 1]"),
    (
        "raft.address",
        "Node-to-node raft address [default: 127.0.0.1:5012]",
    ),
    (
        "raft.initial-members",
        "All members as id=host:port,... [default: this node alone]",
    ),
    ("raft.rtt", "Raft tick length [default: 50ms]"),
    (
        "raft.election-rtt",
        "Election timeout in ticks [default: 20]",
    ),
    (
        "raft.heartbeat-rtt",
        "Heartbeat interval in ticks [default: 1]",
    ),
    (
        "raft.log-retention-entries",
        "Applied entries kept per table [default: 10000]",
    ),
    (
        "raft.log-retention-bytes",
        "Approximate log bytes kept per table [default: 67108864]",
    ),
    ("raft.threads", "Threads driving raft groups [default: 2]"),
    (
        "replication.address",
        "Replication listen address of a leader cluster [default: http://0.0.0.0:8444]",
    ),
    (
        "replication.leader-address",
        "Leader cluster's replication address a follower pulls from [default: http://127.0.0.1:8444]",
    ),
    (
        "replication.max-send-message-size-bytes",
        "Bytes of commands in one replication message [default: 4194304]",
    ),
    (
        "replication.reconcile-interval",
        "How often a follower compares its tables with the leader's [default: 5s]",
    ),
    ("memberlist.cluster-name", "Cluster name [default: default]"),
    (
        "memberlist.node-name",
        "Node name [default: the raft address]",
    ),
];

/// The environment variable for `key`: `FLOTILLA_` + key upper-cased, `.`/`-` as `_`.
pub fn env_var(key: &str) -> String {
    let mut s = String::from("FLOTILLA_");
    s.extend(key.chars().map(|c| match c {
        '.' | '-' => '_',
        c => c.to_ascii_uppercase(),
    }));
    s
}

impl Settings {
    /// Defaults, then `file` (TOML, YAML or JSON by extension), then `overrides`
    /// (dotted key -> value, from the environment and flags).
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
        if self.raft.log_retention_bytes == 0 {
            return Err(invalid("raft.log-retention-bytes", "must be at least 1"));
        }
        if members.len() > 1 {
            listen_addr("raft.address", &self.raft.address)?;
        }
        listen_addr("api.address", &self.api.address)?;
        listen_addr("rest.address", &self.rest.address)?;
        listen_addr("replication.address", &self.replication.address)?;
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
        for part in self
            .raft
            .initial_members
            .split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty())
        {
            let (id, addr) = part.split_once('=').ok_or_else(|| {
                invalid(
                    "raft.initial-members",
                    format!("{part:?} is not id=host:port"),
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

    /// The socket address `api.address` names.
    pub fn api_listen(&self) -> Result<SocketAddr, SettingsError> {
        listen_addr("api.address", &self.api.address)
    }

    /// The socket address `raft.address` names (node-to-node traffic).
    pub fn raft_listen(&self) -> Result<SocketAddr, SettingsError> {
        listen_addr("raft.address", &self.raft.address)
    }

    /// The socket address `replication.address` names.
    pub fn replication_listen(&self) -> Result<SocketAddr, SettingsError> {
        listen_addr("replication.address", &self.replication.address)
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

    /// The socket address `rest.address` names.
    pub fn rest_listen(&self) -> Result<SocketAddr, SettingsError> {
        listen_addr("rest.address", &self.rest.address)
    }

    /// Settings flattened to dotted keys, for Cluster/Status with `config=true`.
    pub fn flatten(&self) -> BTreeMap<String, String> {
        let mut out = BTreeMap::new();
        if let Ok(v) = serde_json::to_value(self) {
            flatten_into("", &v, &mut out);
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

fn invalid(key: &'static str, reason: impl Into<String>) -> SettingsError {
    SettingsError::Invalid {
        key,
        reason: reason.into(),
    }
}

/// Parses `host:port`, optionally prefixed with `http://`.
fn listen_addr(key: &'static str, value: &str) -> Result<SocketAddr, SettingsError> {
    let bare = value.strip_prefix("http://").unwrap_or(value);
    if value.starts_with("https://") {
        return Err(invalid(key, "TLS is not supported yet; use http://"));
    }
    bare.parse()
        .map_err(|e| invalid(key, format!("{value:?}: {e}")))
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
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_armada_like() {
        let s = Settings::load(None, &BTreeMap::new()).expect("defaults load");
        assert_eq!(s.api_listen().expect("api").port(), 8443);
        assert_eq!(s.rest_listen().expect("rest").port(), 8079);
        assert_eq!(s.tick().expect("tick"), Duration::from_millis(50));
        assert_eq!(s.members().expect("members").len(), 1);
    }

    #[test]
    fn overrides_beat_the_file() {
        let dir = std::env::temp_dir().join(format!("flotilla-settings-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let file = dir.join("c.toml");
        std::fs::write(
            &file,
            "data-dir = \"/from/file\"\n[raft]\nnode-id = 2\ninitial-members = \"1=a:1,2=b:2\"\n",
        )
        .expect("write");
        let mut o = BTreeMap::new();
        o.insert("data-dir".to_owned(), "/from/flag".to_owned());
        let s = Settings::load(Some(&file), &o).expect("load");
        assert_eq!(s.data_dir, PathBuf::from("/from/flag"));
        assert_eq!(s.raft.node_id, 2);
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn bad_values_are_explained() {
        let bad = |k: &str, v: &str| {
            let mut o = BTreeMap::new();
            o.insert(k.to_owned(), v.to_owned());
            Settings::load(None, &o).expect_err("must fail").to_string()
        };
        assert!(bad("raft.rtt", "fast").contains("raft.rtt"));
        assert!(bad("raft.initial-members", "2=x:1").contains("does not name"));
        assert!(bad("api.address", "nowhere").contains("api.address"));
        assert!(bad("raft.node-id", "0").contains("raft.node-id"));
    }

    #[test]
    fn env_names_and_flattening() {
        assert_eq!(env_var("raft.node-id"), "FLOTILLA_RAFT_NODE_ID");
        let flat = Settings::default().flatten();
        assert_eq!(
            flat.get("api.address").map(String::as_str),
            Some("http://0.0.0.0:8443")
        );
        assert_eq!(flat.get("raft.node-id").map(String::as_str), Some("1"));
    }
}
