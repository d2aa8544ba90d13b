//! TLS for the API listener: the server certificate, mandatory client certificates verified
//! against the configured client CA(s), TLS 1.3 and 1.2 only, and reloading on SIGHUP.

use std::path::Path;
use std::sync::{Arc, RwLock};

use rustls::RootCertStore;
use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::config::TlsConfig;
use crate::{Error, Result};

fn tls_err(path: &Path, what: &str, e: impl std::fmt::Display) -> Error {
    Error::Config(format!("{}: {what}: {e}", path.display()))
}

/// Reads every certificate of a PEM file.
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| tls_err(path, "cannot read certificates", e))?
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| tls_err(path, "invalid PEM", e))?;
    if certs.is_empty() {
        return Err(tls_err(path, "no certificate", "the file holds no CERTIFICATE block"));
    }
    Ok(certs)
}

/// Builds the server configuration from the files named in `tls`.
pub fn server_config(tls: &TlsConfig) -> Result<Arc<rustls::ServerConfig>> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let chain = load_certs(&tls.cert)?;
    let key = PrivateKeyDer::from_pem_file(&tls.key)
        .map_err(|e| tls_err(&tls.key, "cannot read the private key", e))?;
    let mut roots = RootCertStore::empty();
    for ca in &tls.client_ca {
        for cert in load_certs(ca)? {
            roots.add(cert).map_err(|e| tls_err(ca, "unusable CA certificate", e))?;
        }
    }
    // No unauthenticated clients on this listener: health checks use the ops listener.
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|e| Error::Config(format!("client CA: {e}")))?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| Error::Config(format!("TLS versions: {e}")))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(|e| tls_err(&tls.cert, "certificate and key do not match", e))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// The live TLS configuration; SIGHUP swaps it for new connections, open ones keep theirs.
#[derive(Clone)]
pub struct TlsState(Arc<RwLock<Arc<rustls::ServerConfig>>>);

impl TlsState {
    /// Holds `config`.
    pub fn new(config: Arc<rustls::ServerConfig>) -> Self {
        Self(Arc::new(RwLock::new(config)))
    }

    /// The configuration new connections use.
    pub fn current(&self) -> Arc<rustls::ServerConfig> {
        self.0.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Replaces it (after a reload that fully succeeded).
    pub fn replace(&self, config: Arc<rustls::ServerConfig>) {
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = config;
    }
}

/// SHA-256 of a certificate's SubjectPublicKeyInfo (DER), what `[[client]] spki_sha256` pins:
/// the same as `openssl x509 -pubkey -noout | openssl pkey -pubin -outform DER | sha256sum`.
pub fn spki_sha256(der: &[u8]) -> Option<[u8; 32]> {
    use sha2::Digest as _;
    use x509_parser::prelude::{FromDer, X509Certificate};
    let (_, cert) = X509Certificate::from_der(der).ok()?;
    Some(sha2::Sha256::digest(cert.public_key().raw).into())
}

/// The identities a client certificate carries: its subject CNs and DNS subjectAltNames.
pub fn certificate_names(der: &[u8]) -> Vec<String> {
    use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};
    let Ok((_, cert)) = X509Certificate::from_der(der) else { return Vec::new() };
    let mut names: Vec<String> =
        cert.subject().iter_common_name().filter_map(|cn| cn.as_str().ok()).map(str::to_owned).collect();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for n in &san.value.general_names {
            if let GeneralName::DNSName(d) = n {
                names.push((*d).to_owned());
            }
        }
    }
    names
}
