//! The client side: what a node dials other nodes and the leader cluster with, and the
//! connector tonic channels run on.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use hyper_util::rt::TokioIo;
use rustls::ClientConfig;
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_util::either::Either;
use tonic::transport::Uri;

use crate::pem::{self, FileFlag};
use crate::server::certified_key;
use crate::verify::SkipServerVerification;
use crate::{Reloading, TlsError};

/// A client's TLS configuration, rebuilt when its files change.
pub type ClientTls = Reloading<ClientConfig>;

/// What a TLS client is configured with.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ClientTlsFiles {
    /// CA bundle servers must chain to; `None` = the system's trust store.
    pub ca: Option<FileFlag>,
    /// Certificate and key presented to servers that ask (mTLS).
    pub identity: Option<(FileFlag, FileFlag)>,
    /// Accept any server certificate (testing only; logged as a warning by the caller).
    pub insecure_skip_verify: bool,
}

impl ClientTlsFiles {
    /// Loads the files into a configuration rebuilt whenever they change.
    pub fn load(self) -> Result<Arc<ClientTls>, TlsError> {
        let mut files = Vec::new();
        if let Some(ca) = &self.ca {
            files.push(ca.path().to_owned());
        }
        if let Some((cert, key)) = &self.identity {
            files.push(cert.path().to_owned());
            files.push(key.path().to_owned());
        }
        Reloading::new(files, move || self.build())
    }

    fn build(&self) -> Result<ClientConfig, TlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Config(e.to_string()))?;
        let builder = if self.insecure_skip_verify {
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(SkipServerVerification(
                    provider.clone(),
                )))
        } else {
            let roots = match &self.ca {
                Some(ca) => pem::roots(ca)?,
                None => native_roots()?,
            };
            builder.with_root_certificates(roots)
        };
        let mut config = match &self.identity {
            Some((cert, key)) => {
                let certified = certified_key(cert, key, &provider)?;
                builder.with_client_cert_resolver(Arc::new(rustls::sign::SingleCertAndKey::from(
                    certified,
                )))
            }
            None => builder.with_no_client_auth(),
        };
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(config)
    }
}

fn native_roots() -> Result<rustls::RootCertStore, TlsError> {
    let found = rustls_native_certs::load_native_certs();
    let mut store = rustls::RootCertStore::empty();
    let (added, _) = store.add_parsable_certificates(found.certs);
    if added == 0 {
        let why = found
            .errors
            .first()
            .map(ToString::to_string)
            .unwrap_or_else(|| "no certificates found".into());
        return Err(TlsError::NativeRoots(why));
    }
    Ok(store)
}

/// A client connection: plain TCP or TLS over it.
pub type ClientConn = Either<TcpStream, tokio_rustls::client::TlsStream<TcpStream>>;

/// Dials `host:port` of each URI, over TLS when configured: give it to
/// `Endpoint::connect_with_connector`. The TLS configuration is read per connection, so a
/// rotated client certificate is used from the next connection on.
#[derive(Debug, Clone, Default)]
pub struct TlsConnector {
    tls: Option<Arc<ClientTls>>,
    /// The name verified in (and sent as SNI with) the server's certificate instead of the
    /// URI's host (`--replication.server-name`).
    server_name: Option<ServerName<'static>>,
}

impl TlsConnector {
    /// Plain TCP.
    pub fn plain() -> Self {
        Self::default()
    }

    /// TLS with `tls`, verifying the server as `server_name` (or the URI's host);
    /// `server_name_flag` names the setting in the error for a bad name.
    pub fn tls(
        tls: Arc<ClientTls>,
        server_name: Option<&str>,
        server_name_flag: &'static str,
    ) -> Result<Self, TlsError> {
        let server_name = server_name
            .filter(|s| !s.is_empty())
            .map(|name| {
                ServerName::try_from(name.to_owned()).map_err(|_| TlsError::ServerName {
                    flag: server_name_flag,
                    name: name.to_owned(),
                })
            })
            .transpose()?;
        Ok(Self {
            tls: Some(tls),
            server_name,
        })
    }

    /// Whether connections are TLS.
    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl tower_service::Service<Uri> for TlsConnector {
    type Response = TokioIo<ClientConn>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            let host = uri
                .host()
                .ok_or_else(|| format!("{uri}: no host"))?
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_owned();
            let port = uri
                .port_u16()
                .unwrap_or(if this.tls.is_some() { 443 } else { 80 });
            let tcp = TcpStream::connect((host.as_str(), port)).await?;
            // Small gRPC frames must not wait for Nagle (see the server side).
            tcp.set_nodelay(true)?;
            let Some(tls) = &this.tls else {
                return Ok(TokioIo::new(Either::Left(tcp)));
            };
            let name = match &this.server_name {
                Some(n) => n.clone(),
                None => ServerName::try_from(host.clone())
                    .map_err(|_| format!("{host:?} is not a DNS name or IP address"))?,
            };
            let stream = tokio_rustls::TlsConnector::from(tls.current())
                .connect(name, tcp)
                .await?;
            Ok(TokioIo::new(Either::Right(stream)))
        })
    }
}
