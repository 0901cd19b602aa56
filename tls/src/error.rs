//! What can be wrong with TLS material; every variant names the flag and the file.

use std::path::PathBuf;

/// A certificate, key or CA that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The file could not be read.
    #[error("{flag} {}: cannot read: {source}", path.display())]
    Read {
        /// The setting that names the file.
        flag: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file holds no PEM block of the expected kind, or a malformed one.
    #[error("{flag} {}: {what}", path.display())]
    Pem {
        /// The setting that names the file.
        flag: &'static str,
        /// The file.
        path: PathBuf,
        /// What is missing or malformed.
        what: String,
    },
    /// The private key is not the key of the certificate.
    #[error(
        "{key_flag} {}: the key does not belong to the certificate in {cert_flag} {}",
        key.display(),
        cert.display()
    )]
    KeyMismatch {
        /// The key's setting.
        key_flag: &'static str,
        /// The key file.
        key: PathBuf,
        /// The certificate's setting.
        cert_flag: &'static str,
        /// The certificate file.
        cert: PathBuf,
    },
    /// rustls refused the material (e.g. an unsupported key type or an unusable CA).
    #[error("{flag} {}: {source}", path.display())]
    Rustls {
        /// The setting that names the file.
        flag: &'static str,
        /// The file.
        path: PathBuf,
        /// rustls' reason.
        source: rustls::Error,
    },
    /// The system's trust store could not be read (a client without a CA file).
    #[error("reading the system's trusted certificates: {0}")]
    NativeRoots(String),
    /// A name to verify or send (`--replication.server-name`) is not a DNS name or IP.
    #[error("{flag}: {name:?} is not a DNS name or IP address")]
    ServerName {
        /// The setting.
        flag: &'static str,
        /// The name.
        name: String,
    },
    /// The protocol versions or verifier could not be set up (a bug, not bad input).
    #[error("TLS configuration: {0}")]
    Config(String),
}
