//! TLS identities and configurations (rustls, ring provider).
//!
//! Identities: every certificate is signed by the cluster CA. A server's
//! certificate names it `node-<id>` and also carries the name
//! `bunker-server` (clients check that name: any member of the cluster may
//! answer them) and its host addresses. A client's certificate names it
//! `client-<name>`.
//!
//! - Server to server: the dialer checks that the acceptor's certificate is
//!   valid for `node-<id>` of the server it meant to reach; the acceptor
//!   requires a client certificate from the CA and, once the dialer's hello
//!   names its id, checks the certificate is valid for `node-<that id>`.
//! - Client to server: the server requires a client certificate from the
//!   CA; the client checks the server's certificate for `bunker-server`.
//!
//! What it does not do: revocation (rotate the CA to evict a key).

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The name every server certificate carries, which clients verify.
pub const SERVER_NAME: &str = "bunker-server";

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {problem} (configuration)")]
    File { path: String, problem: String },
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("client verifier: {0}")]
    Verifier(String),
}

/// Where the PEM files of one identity are.
#[derive(Clone, Debug)]
pub struct TlsFiles {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// One identity, loaded.
#[derive(Clone)]
pub struct Identity {
    roots: Arc<RootCertStore>,
    chain: Vec<CertificateDer<'static>>,
    key: Arc<PrivateKeyDer<'static>>,
}

fn file_error(path: &Path, problem: impl ToString) -> TlsError {
    TlsError::File {
        path: path.display().to_string(),
        problem: problem.to_string(),
    }
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let bytes = std::fs::read(path).map_err(|e| file_error(path, e))?;
    let certs: Vec<_> = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<_, _>>()
        .map_err(|e| file_error(path, format!("not a PEM certificate file: {e:?}")))?;
    if certs.is_empty() {
        return Err(file_error(path, "holds no certificate"));
    }
    Ok(certs)
}

impl Identity {
    pub fn load(files: &TlsFiles) -> Result<Identity, TlsError> {
        let mut roots = RootCertStore::empty();
        for ca in read_certs(&files.ca)? {
            roots
                .add(ca)
                .map_err(|e| file_error(&files.ca, format!("not a usable CA certificate: {e}")))?;
        }
        let chain = read_certs(&files.cert)?;
        let key_bytes = std::fs::read(&files.key).map_err(|e| file_error(&files.key, e))?;
        let key = PrivateKeyDer::from_pem_slice(&key_bytes)
            .map_err(|e| file_error(&files.key, format!("not a PEM private key: {e:?}")))?;
        Ok(Identity {
            roots: Arc::new(roots),
            chain,
            key: Arc::new(key),
        })
    }

    fn provider() -> Arc<rustls::crypto::CryptoProvider> {
        Arc::new(rustls::crypto::ring::default_provider())
    }

    /// The acceptor's side: requires a client certificate from the CA.
    pub fn server_config(&self) -> Result<Arc<ServerConfig>, TlsError> {
        let verifier =
            WebPkiClientVerifier::builder_with_provider(self.roots.clone(), Self::provider())
                .build()
                .map_err(|e| TlsError::Verifier(e.to_string()))?;
        let config = ServerConfig::builder_with_provider(Self::provider())
            .with_safe_default_protocol_versions()?
            .with_client_cert_verifier(verifier)
            .with_single_cert(self.chain.clone(), self.key.clone_key())?;
        Ok(Arc::new(config))
    }

    /// The dialer's side: presents this identity, trusts the CA.
    pub fn client_config(&self) -> Result<Arc<ClientConfig>, TlsError> {
        let config = ClientConfig::builder_with_provider(Self::provider())
            .with_safe_default_protocol_versions()?
            .with_root_certificates(self.roots.clone())
            .with_client_auth_cert(self.chain.clone(), self.key.clone_key())?;
        Ok(Arc::new(config))
    }
}

/// The name a server's certificate must carry to be server `id`.
pub fn node_name(id: u64) -> String {
    format!("node-{id}")
}

pub fn server_name(name: &str) -> Result<ServerName<'static>, TlsError> {
    ServerName::try_from(name.to_string())
        .map_err(|e| TlsError::Verifier(format!("bad name {name}: {e}")))
}

/// Whether the peer's certificate (already verified against the CA by the
/// handshake) is valid for `name`.
pub fn certificate_names(cert: &CertificateDer<'_>, name: &str) -> bool {
    let Ok(end_entity) = webpki::EndEntityCert::try_from(cert) else {
        return false;
    };
    let Ok(name) = ServerName::try_from(name) else {
        return false;
    };
    end_entity.verify_is_valid_for_subject_name(&name).is_ok()
}
