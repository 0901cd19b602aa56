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
        let tls = self.api_listen()?.tls;
        let cert = file("api.cert-filename", &api.cert_filename);
        let key = file("api.key-filename", &api.key_filename);
        let ca = file("api.ca-filename", &api.ca_filename);
        if !tls {
            for (set, key) in [
                (cert.is_some(), "api.cert-filename"),
                (key.is_some(), "api.key-filename"),
                (api.client_cert_auth, "api.client-cert-auth"),
                (ca.is_some(), "api.ca-filename"),
            ] {
                if set {
                    return Err(invalid(
                        key,
                        format!(
                            "is set but api.address {:?} is not https:// (or unixs://); \
                             use https:// to turn TLS on",
                            api.address
                        ),
                    ));
                }
            }
            return Ok(None);
        }
        let (Some(cert), Some(key)) = (cert, key) else {
            return Err(invalid(
                "api.cert-filename",
                "api.address is https:// but api.cert-filename and api.key-filename are not both set",
            ));
        };
        let client_auth = server_client_auth(
            api.client_cert_auth,
            ca,
            ("api.client-cert-auth", "api.ca-filename"),
            text(&api.allowed_cn),
            text(&api.allowed_hostname),
        )?;
        Ok(Some(ServerTlsFiles {
            cert,
            key,
            client_auth,
        }))
    }

    /// TLS of a leader's replication listener; `None` = plaintext.
    pub fn replication_server_tls(&self) -> Result<Option<ServerTlsFiles>, SettingsError> {
        let r = &self.replication;
        let tls = self.replication_listen()?.tls;
        let cert = file("replication.cert-filename", &r.cert_filename);
        let key = file("replication.key-filename", &r.key_filename);
        let ca = file("replication.ca-filename", &r.ca_filename);
        if !tls {
            for (set, key) in [
                (cert.is_some(), "replication.cert-filename"),
                (key.is_some(), "replication.key-filename"),
                (r.client_cert_auth, "replication.client-cert-auth"),
                (ca.is_some(), "replication.ca-filename"),
            ] {
                if set {
                    return Err(invalid(
                        key,
                        format!(
                            "is set but replication.address {:?} is not https://; \
                             use https:// to turn TLS on",
                            r.address
                        ),
                    ));
                }
            }
            return Ok(None);
        }
        let (Some(cert), Some(key)) = (cert, key) else {
            return Err(invalid(
                "replication.cert-filename",
                "replication.address is https:// but replication.cert-filename and \
                 replication.key-filename are not both set",
            ));
        };
        let client_auth = server_client_auth(
            r.client_cert_auth,
            ca,
            ("replication.client-cert-auth", "replication.ca-filename"),
            None,
            None,
        )?;
        Ok(Some(ServerTlsFiles {
            cert,
            key,
            client_auth,
        }))
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
