//! The names settings go by on the command line and in the environment.

use super::SettingsError;

/// Every key a flag or environment variable may set, with its help text.
pub const KEYS: &[(&str, &str)] = &[
    (
        "data-dir",
        "Directory of the node's RocksDB [default: flotilla-data]",
    ),
    (
        "log-level",
        "Log filter: error, warn, info, debug, trace or a RUST_LOG-style filter [default: info]",
    ),
    (
        "dev-mode",
        "Human-readable logs instead of JSON lines [default: false]",
    ),
    (
        "api.address",
        "gRPC API listen address: http://, https:// (TLS), unix:// or unixs:// [default: http://0.0.0.0:8443]",
    ),
    (
        "api.advertise-address",
        "API address advertised to clients [default: http://127.0.0.1:8443]",
    ),
    (
        "api.cert-filename",
        "API server certificate (PEM); needs an https:// api.address",
    ),
    ("api.key-filename", "API server private key (PEM)"),
    (
        "api.client-cert-auth",
        "Require client certificates on the API (mTLS) [default: false]",
    ),
    (
        "api.ca-filename",
        "CA (PEM) API client certificates must chain to",
    ),
    (
        "api.allowed-cn",
        "Subject CN API client certificates must carry",
    ),
    (
        "api.allowed-hostname",
        "Host name API client certificates must be valid for",
    ),
    (
        "api.max-concurrent-connections",
        "Most API connections open at once; more wait [default: 0 = no limit]",
    ),
    (
        "api.max-concurrent-streams",
        "Most concurrent calls per API connection [default: 0 = no limit]",
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
        "All members as id=host:port,... or Armada's ordered host:port,... list [default: this node alone]",
    ),
    (
        "raft.tls-cert-file",
        "Peer certificate (PEM): mutual TLS between nodes, with raft.tls-key-file and raft.tls-ca-file",
    ),
    ("raft.tls-key-file", "Peer private key (PEM)"),
    (
        "raft.tls-ca-file",
        "CA (PEM) every peer's certificate must chain to",
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
        "raft.hibernate-rtt",
        "Idle ticks after which a table's group stops ticking until it has work; 0 = never [default: 40]",
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
        "raft.max-snapshot-size-bytes",
        "Largest raft snapshot a peer may stream here [default: 68719476736]",
    ),
    (
        "replication.enabled",
        "Leader: serve replication to follower clusters [default: true]",
    ),
    (
        "replication.address",
        "Replication listen address of a leader cluster; https:// turns TLS on [default: http://0.0.0.0:8444]",
    ),
    (
        "replication.leader-address",
        "Leader cluster's replication address a follower pulls from; https:// dials TLS [default: http://127.0.0.1:8444]",
    ),
    (
        "replication.cert-filename",
        "Leader: replication server certificate; follower: client certificate (PEM)",
    ),
    (
        "replication.key-filename",
        "Private key of replication.cert-filename (PEM)",
    ),
    (
        "replication.ca-filename",
        "Leader: CA of follower client certificates; follower: CA of the leader's certificate (PEM)",
    ),
    (
        "replication.client-cert-auth",
        "Leader: require follower client certificates (mTLS) [default: false]",
    ),
    (
        "replication.server-name",
        "Follower: name verified in the leader's certificate [default: the address's host]",
    ),
    (
        "replication.insecure-skip-verify",
        "Follower: accept any leader certificate (testing only) [default: false]",
    ),
    (
        "replication.max-send-message-size-bytes",
        "Bytes of commands in one replication message [default: 4194304]",
    ),
    (
        "replication.reconcile-interval",
        "How often a follower compares its tables with the leader's [default: 5s]",
    ),
    ("tables.enabled", "Serve the Tables service [default: true]"),
    (
        "tables.token",
        "Bearer token the Tables service requires [default: none]",
    ),
    (
        "maintenance.enabled",
        "Serve the Maintenance service [default: true]",
    ),
    (
        "maintenance.token",
        "Bearer token the Maintenance service requires [default: none]",
    ),
    ("memberlist.cluster-name", "Cluster name [default: default]"),
    (
        "memberlist.node-name",
        "Node name [default: the raft address]",
    ),
];

/// Keys that are switches: `--api.client-cert-auth` alone means `true`.
pub const SWITCHES: &[&str] = &[
    "dev-mode",
    "api.client-cert-auth",
    "replication.enabled",
    "replication.client-cert-auth",
    "replication.insecure-skip-verify",
    "tables.enabled",
    "maintenance.enabled",
];

/// The environment variable naming the config file.
pub const CONFIG_ENV: &str = "FLOTILLA_CONFIG";

/// The variables the client subcommands (`backup`, `restore`) read: a node started from a
/// shell that sets them for those commands does not take them for misspelt settings.
pub const CLIENT_ENV: &[&str] = &[
    "FLOTILLA_ADDRESS",
    "FLOTILLA_TOKEN",
    "FLOTILLA_CA",
    "FLOTILLA_CERT",
    "FLOTILLA_KEY",
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

/// Refuses any `FLOTILLA_*` variable that names no setting, so a misspelled
/// `FLOTILLA_TABLES_TOKEN` cannot silently leave Tables open.
pub fn check_environment(
    vars: impl IntoIterator<Item = (String, String)>,
) -> Result<(), SettingsError> {
    for (name, _) in vars {
        if !name.starts_with("FLOTILLA_") || name == CONFIG_ENV || CLIENT_ENV.contains(&&*name) {
            continue;
        }
        if !KEYS.iter().any(|(key, _)| env_var(key) == name) {
            return Err(SettingsError::UnknownEnvironment(name));
        }
    }
    Ok(())
}
