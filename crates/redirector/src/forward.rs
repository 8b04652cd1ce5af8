//! One client session: pick a backend, and either hand it the client's connection (a server of the
//! site on the same host, `node_runtime::handoff`: the redirector leaves the data path) or open a
//! connection to it from the redirector's own address (with a PROXY v2 header naming the client),
//! wait for the server's greeting, and only then hand the greeting to the client and splice the two
//! sockets. A connect, header or greeting that fails
//! is counted against that backend and the session goes to the next one, so a dead server costs the
//! client nothing; only when every candidate failed does the client get the protocol's "unavailable"
//! line.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use node_runtime::{handoff, proxy_header};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::pool::{Backend, Kind, Pool, Source};
use crate::service::Service;

/// How the redirector opens its connections.
#[derive(Debug, Clone)]
pub struct Dialer {
    /// The node's own address: servers recognise a proxy by it.
    pub source: IpAddr,
    /// PROXY v2 headers to local backends (always to other-site redirectors).
    pub send_proxy: bool,
    pub connect_timeout: Duration,
    /// How long a server may take to greet a client session.
    pub greeting_timeout: Duration,
    /// The fabric's redirectors: a session from one of them stays on local backends.
    pub redirectors: Arc<Vec<IpAddr>>,
    /// Hand sessions to local servers on the same host (`node_runtime::handoff`) instead of relaying
    /// their bytes; those servers that do not take them are relayed to over TCP.
    pub handoff: bool,
    /// The fabric's relays: a relay hands mail back to its home site's own servers, so its sessions
    /// stay local too (the other site is where the relay is; sending it there would loop).
    pub relays: Arc<Vec<IpAddr>>,
}

impl Dialer {
    /// Connects to `b`, from the node's address and sending `header` first if there is one (without
    /// a header the kernel picks the source, so a server does not take the connection for a proxy's).
    pub async fn connect(
        &self,
        b: &Backend,
        header: Option<&[u8]>,
        timeout: Duration,
    ) -> Result<TcpStream, String> {
        let mut stream = if header.is_some() {
            node_runtime::proxy_header::connect_from(self.source, b.addr, timeout).await
        } else {
            connect_plain(b.addr, timeout).await
        }
        .map_err(|e| format!("connect: {e}"))?;
        if let Some(h) = header {
            stream
                .write_all(h)
                .await
                .map_err(|e| format!("sending the PROXY header: {e}"))?;
        }
        Ok(stream)
    }

    /// Whether connections to `b` start with a PROXY header.
    pub fn proxies_to(&self, b: &Backend) -> bool {
        self.send_proxy || b.kind == Kind::OtherSite
    }
}

/// A connection whose source the kernel picks (no PROXY header follows).
async fn connect_plain(to: SocketAddr, timeout: Duration) -> std::io::Result<TcpStream> {
    let stream = tokio::time::timeout(timeout, TcpStream::connect(to))
        .await
        .map_err(|_| {
            std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("connect timed out after {timeout:?}"),
            )
        })??;
    let _ = stream.set_nodelay(true);
    Ok(stream)
}

/// Reads until the greeting's first bytes can be judged; returns everything read.
pub async fn read_greeting(
    stream: &mut TcpStream,
    service: Service,
    timeout: Duration,
) -> Result<Vec<u8>, String> {
    let want = service.greeting();
    let mut buf = Vec::with_capacity(512);
    let read = async {
        let mut chunk = [0u8; 512];
        while buf.len() < want.len() && !buf.contains(&b'\n') {
            let n = stream
                .read(&mut chunk)
                .await
                .map_err(|e| format!("reading the greeting: {e}"))?;
            if n == 0 {
                return Err("closed before its greeting".to_string());
            }
            buf.extend_from_slice(&chunk[..n]);
        }
        Ok(())
    };
    tokio::time::timeout(timeout, read)
        .await
        .map_err(|_| format!("no greeting within {timeout:?}"))??;
    if buf.starts_with(want) {
        Ok(buf)
    } else {
        let line = buf.split(|c| *c == b'\n').next().unwrap_or_default();
        Err(format!(
            "greeted with {:?}",
            String::from_utf8_lossy(&line[..line.len().min(80)]).trim_end()
        ))
    }
}

/// Serves one client connection (`client` as named by a PROXY header, `peer` the TCP hop).
pub async fn serve(
    pool: Arc<Pool>,
    dialer: Arc<Dialer>,
    mut stream: TcpStream,
    client: SocketAddr,
    peer: SocketAddr,
) -> std::io::Result<()> {
    pool.session_started();
    let local_only =
        dialer.redirectors.contains(&peer.ip()) || dialer.relays.contains(&client.ip());
    // The PROXY header is built once, and only if some backend gets one (it costs a getsockname).
    let mut header: Option<Vec<u8>> = None;
    let mut tried: Vec<Arc<Backend>> = Vec::new();
    loop {
        let Some(b) = pool.next(&tried, local_only) else {
            pool.session_failed();
            tracing::warn!(service = pool.service.as_str(), client = %client, tried = tried.len(), local_only, "no backend could take the session");
            let _ = stream.write_all(pool.service.unavailable()).await;
            let _ = stream.shutdown().await;
            return Ok(());
        };
        if !tried.is_empty() {
            pool.retried();
        }
        let guard = b.take();
        if let (true, Kind::Local, IpAddr::V4(hop)) = (dialer.handoff, b.kind, dialer.source) {
            let target = handoff::target(b.addr);
            let offered = target
                .hand(stream, client, hop, dialer.greeting_timeout)
                .await;
            // The server has the client's connection once it claimed the offer; this task only
            // keeps the session counted against the backend until the server says it ended.
            let outcome = match offered {
                Ok(handed) => handed.outcome().await,
                Err(refused) => Err(refused),
            };
            match outcome {
                Ok(()) => {
                    b.success(Source::Connect);
                    drop(guard);
                    return Ok(());
                }
                Err(refused) if refused.error.is_unavailable() => stream = refused.stream,
                Err(refused) => {
                    stream = refused.stream;
                    let e = refused.error;
                    tracing::debug!(backend = %b.name, service = pool.service.as_str(), error = %e, "backend failed a handoff; trying the next");
                    b.failure(Source::Connect, &e.to_string());
                    drop(guard);
                    tried.push(b);
                    continue;
                }
            }
        }
        let h = if dialer.proxies_to(&b) {
            if header.is_none() {
                header = Some(proxy_header::encode(client, stream.local_addr()?));
            }
            header.as_deref()
        } else {
            None
        };
        let opened = match dialer.connect(&b, h, dialer.connect_timeout).await {
            Ok(mut upstream) => {
                match read_greeting(&mut upstream, pool.service, dialer.greeting_timeout).await {
                    Ok(greeting) => Ok((upstream, greeting)),
                    Err(e) => Err(e),
                }
            }
            Err(e) => Err(e),
        };
        match opened {
            Ok((mut upstream, greeting)) => {
                b.success(Source::Connect);
                stream.write_all(&greeting).await?;
                let result = tokio::io::copy_bidirectional(&mut stream, &mut upstream).await;
                drop(guard);
                return result.map(|_| ());
            }
            Err(e) => {
                tracing::debug!(backend = %b.name, service = pool.service.as_str(), error = %e, "backend failed a client connect; trying the next");
                b.failure(Source::Connect, &e);
                drop(guard);
                tried.push(b);
            }
        }
    }
}
