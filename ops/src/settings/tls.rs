//! Which TLS each port runs with, checked for consistency: a certificate without an
//! `https://` address, half a key pair or mTLS without a CA is refused at start with the
//! flag named (the files themselves are read, and checked, when the listeners start).

use flotilla_tls::{ClientAuth, ClientTlsFiles, FileFlag, ServerTlsFiles};

use super::{Settings, SettingsError, invalid};

/// Mutual TLS between the nodes of one cluster (`raft.tls-*`): each node serves with its
/// certificate, dials with it, and accepts only certificates from the peer CA.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerTls {
    /// The raft listener.
    pub server: ServerTlsFiles,
    /// Dialling peers.
    pub client: ClientTlsFiles,
}

/// How a follower dials its leader cluster (`replication.leader-address` https://).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaderClientTls {
    /// CA, client certificate, verification switch.
    pub files: ClientTlsFiles,
    /// `replication.server-name`, if set.
    pub server_name: Option<String>,
}

fn file(flag: &'static str, path: &str) -> Option<FileFlag> {
    (!path.is_empty()).then(|| FileFlag::new(flag, path))
}

fn text(s: &str) -> Option<String> {
    (!s.is_empty()).then(|| s.to_owned())
}

impl Settings {
    /// TLS of the API listener; `None` = plaintext.
    pub fn api_tls(&self) -> Result<Option<ServerTlsFiles>, SettingsError> {
        let api = &self.api;
        server_tls(ServerPort {
            address: ("api.address", &api.address),
            tls: self.api_listen()?.tls,
            tls_schemes: "https:// (or unixs://)",
            cert: ("api.cert-filename", &api.cert_filename),
            key: ("api.key-filename", &api.key_filename),
            ca: ("api.ca-filename", &api.ca_filename),
            client_cert_auth: ("api.client-cert-auth", api.client_cert_auth),
            allowed_cn: text(&api.allowed_cn),
            allowed_hostname: text(&api.allowed_hostname),
        })
    }

    /// TLS of a leader's replication listener; `None` = plaintext.
    pub fn replication_server_tls(&self) -> Result<Option<ServerTlsFiles>, SettingsError> {
        let r = &self.replication;
        server_tls(ServerPort {
            address: ("replication.address", &r.address),
            tls: self.replication_listen()?.tls,
            tls_schemes: "https://",
            cert: ("replication.cert-filename", &r.cert_filename),
            key: ("replication.key-filename", &r.key_filename),
            ca: ("replication.ca-filename", &r.ca_filename),
            client_cert_auth: ("replication.client-cert-auth", r.client_cert_auth),
            allowed_cn: None,
            allowed_hostname: None,
        })
    }

    /// How a follower dials `replication.leader-address`; `None` = plaintext.
    pub fn leader_client_tls(&self) -> Result<Option<LeaderClientTls>, SettingsError> {
        let r = &self.replication;
        let tls = r.leader_address.starts_with("https://");
        let cert = file("replication.cert-filename", &r.cert_filename);
        let key = file("replication.key-filename", &r.key_filename);
        let ca = file("replication.ca-filename", &r.ca_filename);
        if !tls {
            for (set, key) in [
                (cert.is_some(), "replication.cert-filename"),
                (key.is_some(), "replication.key-filename"),
                (ca.is_some(), "replication.ca-filename"),
                (!r.server_name.is_empty(), "replication.server-name"),
                (r.insecure_skip_verify, "replication.insecure-skip-verify"),
            ] {
                if set {
                    return Err(invalid(
                        key,
                        format!(
                            "is set but replication.leader-address {:?} is not https://; \
                             use https:// to dial the leader over TLS",
                            r.leader_address
                        ),
                    ));
                }
            }
            return Ok(None);
        }
        let identity = match (cert, key) {
            (Some(c), Some(k)) => Some((c, k)),
            (None, None) => None,
            _ => {
                return Err(invalid(
                    "replication.cert-filename",
                    "replication.cert-filename and replication.key-filename go together",
                ));
            }
        };
        if r.insecure_skip_verify && ca.is_some() {
            return Err(invalid(
                "replication.insecure-skip-verify",
                "contradicts replication.ca-filename (which certificate should be trusted?)",
            ));
        }
        Ok(Some(LeaderClientTls {
            files: ClientTlsFiles {
                ca,
                identity,
                insecure_skip_verify: r.insecure_skip_verify,
            },
            server_name: text(&r.server_name),
        }))
    }

    /// Mutual TLS between peers; `None` = plaintext (trusted networks only).
    pub fn peer_tls(&self) -> Result<Option<PeerTls>, SettingsError> {
        let r = &self.raft;
        let cert = file("raft.tls-cert-file", &r.tls_cert_file);
        let key = file("raft.tls-key-file", &r.tls_key_file);
        let ca = file("raft.tls-ca-file", &r.tls_ca_file);
        match (cert, key, ca) {
            (None, None, None) => Ok(None),
            (Some(cert), Some(key), Some(ca)) => Ok(Some(PeerTls {
                server: ServerTlsFiles {
                    cert: cert.clone(),
                    key: key.clone(),
                    client_auth: Some(ClientAuth {
                        ca: ca.clone(),
                        allowed_cn: None,
                        allowed_hostname: None,
                    }),
                },
                client: ClientTlsFiles {
                    ca: Some(ca),
                    identity: Some((cert, key)),
                    insecure_skip_verify: false,
                },
            })),
            _ => Err(invalid(
                "raft.tls-cert-file",
                "raft.tls-cert-file, raft.tls-key-file and raft.tls-ca-file go together \
                 (all three or none)",
            )),
        }
    }
}

/// One listener's TLS settings, each with the flag that sets it.
struct ServerPort<'a> {
    address: (&'static str, &'a str),
    /// Whether the address asks for TLS.
    tls: bool,
    /// The schemes that do, for the refusal.
    tls_schemes: &'static str,
    cert: (&'static str, &'a str),
    key: (&'static str, &'a str),
    ca: (&'static str, &'a str),
    client_cert_auth: (&'static str, bool),
    allowed_cn: Option<String>,
    allowed_hostname: Option<String>,
}

/// A listener's TLS: none for a plaintext address (refusing TLS flags set anyway), or
/// its certificate, key and client authentication.
fn server_tls(port: ServerPort<'_>) -> Result<Option<ServerTlsFiles>, SettingsError> {
    let cert = file(port.cert.0, port.cert.1);
    let key = file(port.key.0, port.key.1);
    let ca = file(port.ca.0, port.ca.1);
    let (address_key, address) = port.address;
    if !port.tls {
        for (set, flag) in [
            (cert.is_some(), port.cert.0),
            (key.is_some(), port.key.0),
            (port.client_cert_auth.1, port.client_cert_auth.0),
            (ca.is_some(), port.ca.0),
        ] {
            if set {
                return Err(invalid(
                    flag,
                    format!(
                        "is set but {address_key} {address:?} is not {}; \
                         use https:// to turn TLS on",
                        port.tls_schemes
                    ),
                ));
            }
        }
        return Ok(None);
    }
    let (Some(cert), Some(key)) = (cert, key) else {
        return Err(invalid(
            port.cert.0,
            format!(
                "{address_key} is https:// but {} and {} are not both set",
                port.cert.0, port.key.0
            ),
        ));
    };
    let client_auth = server_client_auth(
        port.client_cert_auth.1,
        ca,
        (port.client_cert_auth.0, port.ca.0),
        port.allowed_cn,
        port.allowed_hostname,
    )?;
    Ok(Some(ServerTlsFiles {
        cert,
        key,
        client_auth,
    }))
}

fn server_client_auth(
    required: bool,
    ca: Option<FileFlag>,
    (switch, ca_key): (&'static str, &'static str),
    allowed_cn: Option<String>,
    allowed_hostname: Option<String>,
) -> Result<Option<ClientAuth>, SettingsError> {
    if !required {
        if ca.is_some() {
            return Err(invalid(
                ca_key,
                format!("is set but {switch} is not: set {switch} to require client certificates"),
            ));
        }
        if allowed_cn.is_some() || allowed_hostname.is_some() {
            return Err(invalid(
                "api.allowed-cn",
                format!("api.allowed-cn and api.allowed-hostname need {switch}"),
            ));
        }
        return Ok(None);
    }
    let Some(ca) = ca else {
        return Err(invalid(ca_key, format!("is required by {switch}")));
    };
    Ok(Some(ClientAuth {
        ca,
        allowed_cn,
        allowed_hostname,
    }))
}
