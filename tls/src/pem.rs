//! Reading certificates, keys and CA bundles from PEM files.

use std::path::{Path, PathBuf};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::TlsError;

/// A file named by a setting, kept together so errors can name both.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileFlag {
    /// The setting, e.g. `api.cert-filename`.
    pub flag: &'static str,
    /// The file it names.
    pub path: PathBuf,
}

impl FileFlag {
    /// `flag` naming `path`.
    pub fn new(flag: &'static str, path: impl Into<PathBuf>) -> Self {
        Self {
            flag,
            path: path.into(),
        }
    }

    pub(crate) fn read(&self) -> Result<Vec<u8>, TlsError> {
        std::fs::read(&self.path).map_err(|source| TlsError::Read {
            flag: self.flag,
            path: self.path.clone(),
            source,
        })
    }

    fn pem_error(&self, what: impl Into<String>) -> TlsError {
        TlsError::Pem {
            flag: self.flag,
            path: self.path.clone(),
            what: what.into(),
        }
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }
}

/// Every certificate in the file, in order (leaf first for a chain).
pub(crate) fn certificates(file: &FileFlag) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let bytes = file.read()?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file.pem_error(format!("malformed PEM certificate: {e}")))?;
    if certs.is_empty() {
        return Err(file.pem_error("no PEM certificate (-----BEGIN CERTIFICATE-----) found"));
    }
    Ok(certs)
}

/// The first private key in the file (PKCS#8, PKCS#1 or SEC1).
pub(crate) fn private_key(file: &FileFlag) -> Result<PrivateKeyDer<'static>, TlsError> {
    let bytes = file.read()?;
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|e| match e {
        rustls::pki_types::pem::Error::NoItemsFound => {
            file.pem_error("no PEM private key (-----BEGIN PRIVATE KEY-----) found")
        }
        e => file.pem_error(format!("malformed PEM private key: {e}")),
    })
}

/// A trust store holding every certificate of a CA bundle.
pub(crate) fn roots(file: &FileFlag) -> Result<rustls::RootCertStore, TlsError> {
    let mut store = rustls::RootCertStore::empty();
    for cert in certificates(file)? {
        store.add(cert).map_err(|source| TlsError::Rustls {
            flag: file.flag,
            path: file.path.clone(),
            source,
        })?;
    }
    Ok(store)
}
