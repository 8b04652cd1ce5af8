//! A line-oriented client connection with deadlines and limits, that can turn into TLS in place
//! (STARTTLS), and the TLS configuration that trusts the fabric's CA.
//!
//! A customer reaches an intranet server through a router and a redirector (layer-4 proxies), so the
//! certificate it sees is the chosen server's, not the router's: the verifier accepts a chain to the
//! fabric's CA naming any of the fabric's intranet servers (a standby serves with the same one).

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use topology::{Role, Topology};

/// Longest line either protocol may send us.
const MAX_LINE: u64 = 64 * 1024;

pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// Why a step failed: `Io` and `Timeout` after the request was sent leave its outcome unknown.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    #[error("connection closed")]
    Closed,
    #[error("{0}")]
    Protocol(String),
}

pub struct Conn {
    io: BufReader<Box<dyn Io>>,
    pub timeout: Duration,
}

impl Conn {
    /// Connects within `timeout`.
    pub async fn connect(addr: SocketAddr, timeout: Duration) -> Result<Conn, NetError> {
        let stream = tokio::time::timeout(timeout, TcpStream::connect(addr))
            .await
            .map_err(|_| NetError::Timeout(timeout))??;
        let _ = stream.set_nodelay(true);
        Ok(Conn {
            io: BufReader::new(Box::new(stream)),
            timeout,
        })
    }

    /// One line without its CRLF (at most [`MAX_LINE`] bytes).
    pub async fn line(&mut self) -> Result<String, NetError> {
        let mut buf = Vec::new();
        let mut limited = (&mut self.io).take(MAX_LINE);
        let read = limited.read_until(b'\n', &mut buf);
        let n = tokio::time::timeout(self.timeout, read)
            .await
            .map_err(|_| NetError::Timeout(self.timeout))??;
        if n == 0 {
            return Err(NetError::Closed);
        }
        if !buf.ends_with(b"\n") {
            return Err(NetError::Protocol("line too long".into()));
        }
        let text = String::from_utf8_lossy(&buf);
        Ok(text.trim_end_matches(['\r', '\n']).to_string())
    }

    /// Exactly `n` bytes (an IMAP literal).
    pub async fn bytes(&mut self, n: usize) -> Result<Vec<u8>, NetError> {
        let mut buf = vec![0u8; n];
        tokio::time::timeout(self.timeout, self.io.read_exact(&mut buf))
            .await
            .map_err(|_| NetError::Timeout(self.timeout))??;
        Ok(buf)
    }

    pub async fn send(&mut self, bytes: &[u8]) -> Result<(), NetError> {
        let io = self.io.get_mut();
        tokio::time::timeout(self.timeout, async {
            io.write_all(bytes).await?;
            io.flush().await
        })
        .await
        .map_err(|_| NetError::Timeout(self.timeout))??;
        Ok(())
    }

    /// The TLS handshake on this connection (after the server agreed to STARTTLS).
    pub async fn starttls(self, tls: &Tls) -> Result<Conn, NetError> {
        if !self.io.buffer().is_empty() {
            return Err(NetError::Protocol("data before the TLS handshake".into()));
        }
        let timeout = self.timeout;
        let inner = self.io.into_inner();
        // The verifier ignores the name: any intranet server of the fabric will do.
        let name =
            ServerName::try_from("fabric-server").map_err(|e| NetError::Protocol(e.to_string()))?;
        let stream = tokio::time::timeout(timeout, tls.connector.connect(name, inner))
            .await
            .map_err(|_| NetError::Timeout(timeout))??;
        Ok(Conn {
            io: BufReader::new(Box::new(stream)),
            timeout,
        })
    }
}

/// The client side of the fabric's TLS.
#[derive(Clone)]
pub struct Tls {
    connector: TlsConnector,
}

impl Tls {
    /// Trusts `tls_dir/ca.pem` for certificates naming any intranet server of `topology`.
    pub fn new(tls_dir: &Path, topology: &Topology) -> anyhow::Result<Tls> {
        let ca = tls_dir.join("ca.pem");
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_file_iter(&ca)
            .with_context(|| format!("reading {}", ca.display()))?
        {
            roots.add(cert.with_context(|| format!("parsing {}", ca.display()))?)?;
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let inner = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
            .build()?;
        let names: Vec<ServerName<'static>> = topology
            .nodes_with_role(Role::Intranet)
            .filter_map(|n| ServerName::try_from(n.name.clone()).ok())
            .collect();
        if names.is_empty() {
            bail!("the topology has no intranet server");
        }
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyServer { inner, names }))
            .with_no_client_auth();
        Ok(Tls {
            connector: TlsConnector::from(Arc::new(config)),
        })
    }
}

#[derive(Debug)]
struct AnyServer {
    inner: Arc<WebPkiServerVerifier>,
    names: Vec<ServerName<'static>>,
}

impl ServerCertVerifier for AnyServer {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let mut last = rustls::Error::General("no intranet server name".into());
        for name in &self.names {
            match self
                .inner
                .verify_server_cert(end_entity, intermediates, name, ocsp, now)
            {
                Ok(ok) => return Ok(ok),
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}
