//! The fabric's own certificate authority and node certificates (rcgen), and rustls server configs.
//!
//! `fabric up` (and the test kit) call [`ensure_certificates`] before starting nodes: under the TLS
//! directory (`DATA/tls`) it creates `ca.pem`/`ca.key` once, and for every node `NODE.pem`/`NODE.key`
//! naming the node's address and name. A mail client that trusts `ca.pem` can verify any node.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose, SanType};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use topology::Topology;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("certificate generation: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("{path}: not a usable PEM certificate or key: {message}")]
    Pem { path: PathBuf, message: String },
    #[error("TLS configuration: {0}")]
    Config(#[from] rustls::Error),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> TlsError + '_ {
    move |source| TlsError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn write_private(path: &Path, text: &str) -> Result<(), TlsError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .mode(0o600)
        .open(path)
        .map_err(io(path))?;
    f.write_all(text.as_bytes()).map_err(io(path))
}

fn ca_params(topology: &Topology) -> Result<CertificateParams, TlsError> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.distinguished_name.push(
        DnType::CommonName,
        format!("Mail Fabric CA ({})", topology.fabric.name),
    );
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    Ok(params)
}

/// Creates what is missing: the CA, then a certificate for every node of `topology`.
pub fn ensure_certificates(dir: &Path, topology: &Topology) -> Result<(), TlsError> {
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let ca_cert_path = dir.join("ca.pem");
    let ca_key_path = dir.join("ca.key");
    if !ca_cert_path.exists() || !ca_key_path.exists() {
        let key = KeyPair::generate()?;
        let cert = ca_params(topology)?.self_signed(&key)?;
        write_private(&ca_key_path, &key.serialize_pem())?;
        std::fs::write(&ca_cert_path, cert.pem()).map_err(io(&ca_cert_path))?;
    }
    let ca_key_pem = std::fs::read_to_string(&ca_key_path).map_err(io(&ca_key_path))?;
    let ca_key = KeyPair::from_pem(&ca_key_pem)?;
    // The same name and key as the saved CA: what it signs chains to `ca.pem`.
    let ca = ca_params(topology)?.self_signed(&ca_key)?;
    for node in &topology.nodes {
        let cert_path = dir.join(format!("{}.pem", node.name));
        let key_path = dir.join(format!("{}.key", node.name));
        if cert_path.exists() && key_path.exists() {
            continue;
        }
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(vec![
            node.name.clone(),
            format!("{}.{}", node.name, topology.fabric.name),
        ])?;
        for address in node.addresses() {
            params
                .subject_alt_names
                .push(SanType::IpAddress(address.into()));
        }
        params
            .distinguished_name
            .push(DnType::CommonName, node.name.clone());
        let cert = params.signed_by(&key, &ca, &ca_key)?;
        write_private(&key_path, &key.serialize_pem())?;
        std::fs::write(&cert_path, cert.pem()).map_err(io(&cert_path))?;
    }
    Ok(())
}

/// The rustls server configuration of `node` from the TLS directory.
pub fn server_config(dir: &Path, node: &str) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let cert_path = dir.join(format!("{node}.pem"));
    let key_path = dir.join(format!("{node}.key"));
    let pem = |path: &Path, message: String| TlsError::Pem {
        path: path.to_path_buf(),
        message,
    };
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&cert_path)
        .map_err(|e| pem(&cert_path, e.to_string()))?
        .collect::<Result<_, _>>()
        .map_err(|e| pem(&cert_path, e.to_string()))?;
    let key = PrivateKeyDer::from_pem_file(&key_path).map_err(|e| pem(&key_path, e.to_string()))?;
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_no_client_auth()
    .with_single_cert(certs, key)?;
    Ok(Arc::new(config))
}

/// A TLS acceptor for this node, or `None` (logged) when it has no certificate: the node then does not
/// offer STARTTLS/STLS rather than fail.
pub fn acceptor(ctx: &crate::NodeContext) -> Option<tokio_rustls::TlsAcceptor> {
    match server_config(&ctx.tls_dir, &ctx.node.name) {
        Ok(c) => Some(tokio_rustls::TlsAcceptor::from(c)),
        Err(e) => {
            tracing::warn!(error = %e, "no certificate: TLS is not offered");
            None
        }
    }
}
