//! TLS helpers of the security tests: certificates made at test time and channels that
//! dial plaintext or TLS with a chosen identity.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use flotilla_server::Running;
use flotilla_testkit::certs::TestCa;
use flotilla_tls::{ClientTlsFiles, FileFlag, TlsConnector};
use tonic::transport::{Channel, Endpoint};

pub fn plain_channel(addr: SocketAddr) -> Channel {
    Endpoint::from_shared(format!("http://{addr}"))
        .expect("uri")
        .connect_lazy()
}

/// A channel dialling `addr` over TLS, trusting `ca`, presenting `identity` if given.
/// Lazy: a refused handshake shows as the first call's error.
pub fn tls_channel(addr: SocketAddr, ca: &Path, identity: Option<(&Path, &Path)>) -> Channel {
    let tls = ClientTlsFiles {
        ca: Some(FileFlag::new("test.ca", ca)),
        identity: identity
            .map(|(c, k)| (FileFlag::new("test.cert", c), FileFlag::new("test.key", k))),
        insecure_skip_verify: false,
    }
    .load()
    .expect("client TLS");
    let connector = TlsConnector::tls(tls, None, "test").expect("connector");
    Endpoint::from_shared(format!("https://{addr}"))
        .expect("uri")
        .connect_timeout(Duration::from_secs(5))
        .connect_with_connector_lazy(connector)
}

pub fn api(running: &Running) -> SocketAddr {
    running.api_addr.expect("TCP API address")
}

/// A test CA, a stranger CA, and the files of certificates they issue.
pub struct Pki {
    pub dir: tempfile::TempDir,
    pub ca: TestCa,
    pub other: TestCa,
}

impl Pki {
    pub fn new() -> Self {
        Self {
            dir: tempfile::tempdir().expect("dir"),
            ca: TestCa::new("flotilla-test-ca"),
            other: TestCa::new("stranger-ca"),
        }
    }
    pub fn ca_file(&self) -> PathBuf {
        self.ca.write(self.dir.path(), "ca")
    }
    pub fn other_ca_file(&self) -> PathBuf {
        self.other.write(self.dir.path(), "other-ca")
    }
    pub fn leaf(&self, stem: &str, cn: &str, names: &[&str]) -> (PathBuf, PathBuf) {
        self.ca.issue(cn, names).write(self.dir.path(), stem)
    }
    pub fn stranger(&self, stem: &str, cn: &str, names: &[&str]) -> (PathBuf, PathBuf) {
        self.other.issue(cn, names).write(self.dir.path(), stem)
    }
}

/// Settings over `dir` whose API speaks TLS with a certificate for 127.0.0.1 from `pki`'s
/// CA, requiring client certificates from that CA.
pub fn mtls_api_settings(pki: &Pki, dir: &Path) -> flotilla_ops::Settings {
    let (cert, key) = pki.leaf("server", "server", &["127.0.0.1"]);
    let mut s = super::settings(dir);
    s.api.address = "https://127.0.0.1:0".into();
    s.api.cert_filename = path(&cert);
    s.api.key_filename = path(&key);
    s.api.client_cert_auth = true;
    s.api.ca_filename = path(&pki.ca_file());
    s
}

pub fn path(p: &Path) -> String {
    p.display().to_string()
}
