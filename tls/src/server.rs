//! The server side: a listener's certificate and, for mTLS, the CA its clients must
//! present certificates from.

use std::sync::Arc;

use rustls::ServerConfig;
use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls::sign::CertifiedKey;

use crate::pem::{self, FileFlag};
use crate::verify::ClientIdentityVerifier;
use crate::{Reloading, TlsError};

/// A listener's TLS configuration, rebuilt when its files change.
pub type ServerTls = Reloading<ServerConfig>;

/// What a TLS listener is configured with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerTlsFiles {
    /// The certificate (chain, leaf first) the listener presents.
    pub cert: FileFlag,
    /// Its private key.
    pub key: FileFlag,
    /// Require and verify client certificates (mTLS); `None` = any client.
    pub client_auth: Option<ClientAuth>,
}

/// mTLS: which client certificates a listener accepts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientAuth {
    /// CA bundle client certificates must chain to.
    pub ca: FileFlag,
    /// Subject CN the client certificate must carry (`--api.allowed-cn`).
    pub allowed_cn: Option<String>,
    /// Host name the client certificate must be valid for (`--api.allowed-hostname`).
    pub allowed_hostname: Option<String>,
}

impl ServerTlsFiles {
    /// Loads the files (refusing bad ones with the flag and file named) into a
    /// configuration that is rebuilt whenever they change; call [`Reloading::watch`] to
    /// start watching.
    pub fn load(self) -> Result<Arc<ServerTls>, TlsError> {
        let mut files = vec![self.cert.path().to_owned(), self.key.path().to_owned()];
        if let Some(auth) = &self.client_auth {
            files.push(auth.ca.path().to_owned());
        }
        Reloading::new(files, move || self.build())
    }

    fn build(&self) -> Result<ServerConfig, TlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let certified = certified_key(&self.cert, &self.key, &provider)?;
        let builder = ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Config(e.to_string()))?;
        let builder = match &self.client_auth {
            None => builder.with_no_client_auth(),
            Some(auth) => {
                let roots = pem::roots(&auth.ca)?;
                let chain =
                    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                        .build()
                        .map_err(|e| TlsError::Pem {
                            flag: auth.ca.flag,
                            path: auth.ca.path.clone(),
                            what: format!("unusable CA: {e}"),
                        })?;
                builder.with_client_cert_verifier(Arc::new(ClientIdentityVerifier {
                    chain,
                    allowed_cn: auth.allowed_cn.clone(),
                    allowed_hostname: auth.allowed_hostname.clone(),
                }))
            }
        };
        let mut config =
            builder.with_cert_resolver(Arc::new(rustls::sign::SingleCertAndKey::from(certified)));
        // gRPC is HTTP/2; HTTP/1.1 stays for plain GETs of snapshot objects.
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(config)
    }
}

/// A certificate chain with its key, refusing a key that is not the certificate's.
pub(crate) fn certified_key(
    cert: &FileFlag,
    key: &FileFlag,
    provider: &CryptoProvider,
) -> Result<CertifiedKey, TlsError> {
    let chain = pem::certificates(cert)?;
    let private = pem::private_key(key)?;
    CertifiedKey::from_der(chain, private, provider).map_err(|e| match e {
        rustls::Error::InconsistentKeys(_) => TlsError::KeyMismatch {
            key_flag: key.flag,
            key: key.path.clone(),
            cert_flag: cert.flag,
            cert: cert.path.clone(),
        },
        source => TlsError::Rustls {
            flag: key.flag,
            path: key.path.clone(),
            source,
        },
    })
}
