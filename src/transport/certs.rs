//! `bunker certs`: a cluster CA and the certificates of servers and clients
//! (rcgen, ECDSA P-256).
//!
//! Writes into one directory: `ca.pem`, `ca.key`, `node-<id>.pem`,
//! `node-<id>.key`, `client-<name>.pem`, `client-<name>.key`. Key files are
//! created with mode 0600 (never readable by others, even for an instant);
//! certificates 0644. Existing files are never overwritten: a second run
//! into the same directory is an error, so a CA cannot be replaced by
//! accident.
//!
//! What it does not do: keep the CA key safe after it is written (move it
//! offline), or revoke anything.

use super::tls::{node_name, SERVER_NAME};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("certificate generation: {0}")]
    Rcgen(#[from] rcgen::Error),
    #[error("client name {0:?}: use 1 to 64 of a-z 0-9 - _")]
    BadName(String),
}

fn write_file(path: &Path, contents: &str, mode: u32) -> Result<(), CertError> {
    let io = |source: std::io::Error| {
        let path = if source.kind() == std::io::ErrorKind::AlreadyExists {
            format!(
                "{} (bunker certs never overwrites a file: choose another --out)",
                path.display()
            )
        } else {
            path.display().to_string()
        };
        CertError::Io { path, source }
    };
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(io)?;
    f.write_all(contents.as_bytes()).map_err(io)?;
    f.sync_all().map_err(io)
}

fn leaf(names: Vec<String>, common_name: &str) -> Result<CertificateParams, CertError> {
    let mut params = CertificateParams::new(names)?;
    params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    Ok(params)
}

/// Generates a CA, one certificate per server (named `node-<id>`,
/// `bunker-server` and the given hosts) and one per client.
pub fn generate(
    dir: &Path,
    nodes: &[(u64, Vec<String>)],
    clients: &[String],
) -> Result<(), CertError> {
    for name in clients {
        let ok = !name.is_empty()
            && name.len() <= 64
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
        if !ok {
            return Err(CertError::BadName(name.clone()));
        }
    }
    std::fs::create_dir_all(dir).map_err(|source| CertError::Io {
        path: dir.display().to_string(),
        source,
    })?;
    let mut ca_params = CertificateParams::new(Vec::new())?;
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "bunker cluster CA");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_key = KeyPair::generate()?;
    let ca = ca_params.self_signed(&ca_key)?;
    write_file(&dir.join("ca.key"), &ca_key.serialize_pem(), 0o600)?;
    write_file(&dir.join("ca.pem"), &ca.pem(), 0o644)?;
    for (id, hosts) in nodes {
        let name = node_name(*id);
        let mut names = vec![name.clone(), SERVER_NAME.to_string()];
        names.extend(hosts.iter().cloned());
        let key = KeyPair::generate()?;
        let cert = leaf(names, &name)?.signed_by(&key, &ca, &ca_key)?;
        write_file(
            &dir.join(format!("{name}.key")),
            &key.serialize_pem(),
            0o600,
        )?;
        write_file(&dir.join(format!("{name}.pem")), &cert.pem(), 0o644)?;
    }
    for client in clients {
        let name = format!("client-{client}");
        let key = KeyPair::generate()?;
        let cert = leaf(vec![name.clone()], &name)?.signed_by(&key, &ca, &ca_key)?;
        write_file(
            &dir.join(format!("{name}.key")),
            &key.serialize_pem(),
            0o600,
        )?;
        write_file(&dir.join(format!("{name}.pem")), &cert.pem(), 0o644)?;
    }
    Ok(())
}

#[derive(clap::Args, Debug)]
pub struct CertsArgs {
    /// Directory to write into (created; existing files are never overwritten).
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// Server ids.
    #[arg(long, value_delimiter = ',', default_value = "1,2,3,4,5")]
    pub nodes: Vec<u64>,
    /// Host names or IP addresses every server certificate also carries
    /// (repeat; the servers' addresses).
    #[arg(long = "host", default_value = "127.0.0.1")]
    pub hosts: Vec<String>,
    /// Client names (repeat): each gets client-NAME.pem and .key.
    #[arg(long = "client")]
    pub clients: Vec<String>,
}

pub fn run_certs(args: CertsArgs) -> ExitCode {
    let nodes: Vec<(u64, Vec<String>)> = args
        .nodes
        .iter()
        .map(|id| (*id, args.hosts.clone()))
        .collect();
    match generate(&args.out, &nodes, &args.clients) {
        Ok(()) => {
            println!(
                "wrote a CA, {} server and {} client certificates to {} (keys mode 0600; move ca.key offline)",
                nodes.len(),
                args.clients.len(),
                args.out.display()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("bunker certs: {e}");
            ExitCode::from(2)
        }
    }
}
