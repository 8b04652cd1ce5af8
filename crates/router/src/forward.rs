//! Forwarding an allowed connection: hand it whole to the site's redirector when that runs on the
//! same host (`node_runtime::handoff`); otherwise open a connection to the first redirector that
//! answers (the site's own, then the other sites'), from the router's own address, write the PROXY
//! v2 header naming the client, then splice both ways until both sides are done.
//!
//! The client sees nothing until a redirector has answered: if none does, its connection is closed
//! (a FIN, not a reset, so it is told apart from an access-list refusal) and counted.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsFd;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};
use std::time::Duration;

use metrics::Counter;
use node_runtime::handoff;
use node_runtime::proxy_header;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;

use crate::plan::Upstream;
use crate::stats::Stats;

/// How long one redirector has to accept the connection before the next is tried.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// Why a forwarded connection ended early.
#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    #[error("no redirector answered ({0} tried)")]
    NoUpstream(usize),
    #[error("writing the PROXY header: {0}")]
    Header(io::Error),
    #[error("splicing: {0}")]
    Splice(io::Error),
}

/// How the router reaches its redirectors.
#[derive(Debug, Clone, Copy)]
pub struct Via {
    /// The router's own address: relayed connections are opened from it.
    pub source: IpAddr,
    /// Hand connections to the site's redirector on the same host (`Plan::handoff`).
    pub handoff: bool,
}

/// A connection accepted outside the poller, made ready for it (nonblocking, registered).
fn into_polled(stream: std::net::TcpStream) -> io::Result<TcpStream> {
    stream.set_nonblocking(true)?;
    TcpStream::from_std(stream)
}

/// Serves one allowed connection to its end. `listen` is the router's address the client connected
/// to, unless the socket says otherwise.
pub async fn forward(
    client: std::net::TcpStream,
    peer: SocketAddr,
    listen: SocketAddr,
    via: Via,
    service: &str,
    upstreams: &[Upstream],
    stats: &Stats,
) -> Result<(), ForwardError> {
    let Via { source, handoff } = via;
    if handoff
        && let (IpAddr::V4(hop), Some(u)) = (source, upstreams.first())
        && u.path == "local"
    {
        match handoff::target(u.addr)
            .give(client.as_fd(), peer, hop)
            .await
        {
            Ok(()) => {
                metrics::counter!("fabric_router_upstream_total", "path" => "local").increment(1);
                stats.upstream_local.fetch_add(1, Ordering::Relaxed);
                stats.handed_off.fetch_add(1, Ordering::Relaxed);
                // The redirector has the client's connection now: the flow is no longer the
                // router's (it leaves the open count here) and nothing more comes back.
                return Ok(());
            }
            Err(e) if e.is_unavailable() => {}
            Err(e) => {
                metrics::counter!("fabric_router_upstream_attempt_failures_total", "redirector" => u.name.clone())
                    .increment(1);
                tracing::debug!(redirector = %u.name, error = %e, "could not give the connection to the redirector; relaying instead");
            }
        }
    }
    let Some((mut upstream, chosen)) = connect_first(source, upstreams).await else {
        metrics::counter!("fabric_router_upstream_failures_total", "service" => service.to_string())
            .increment(1);
        stats.upstream_failures.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(client = %peer, service, tried = upstreams.len(), "no redirector answered; closing the connection");
        return Err(ForwardError::NoUpstream(upstreams.len()));
    };
    metrics::counter!("fabric_router_upstream_total", "path" => chosen.path).increment(1);
    match chosen.path {
        "local" => stats.upstream_local.fetch_add(1, Ordering::Relaxed),
        _ => stats.upstream_other_site.fetch_add(1, Ordering::Relaxed),
    };
    if chosen.path != "local" {
        tracing::info!(client = %peer, service, redirector = %chosen.name, "forwarded to the other site's redirector");
    }
    let local = client.local_addr().unwrap_or(listen);
    let client = into_polled(client).map_err(ForwardError::Splice)?;
    let _ = client.set_nodelay(true);
    upstream
        .write_all(&proxy_header::encode(peer, local))
        .await
        .map_err(ForwardError::Header)?;
    let mut client = Counted {
        inner: client,
        read: metrics::counter!("fabric_router_bytes_total", "direction" => "to_upstream"),
    };
    let mut upstream = Counted {
        inner: upstream,
        read: metrics::counter!("fabric_router_bytes_total", "direction" => "to_client"),
    };
    // Each direction is shut down (FIN) when its reader reaches EOF; the other keeps flowing.
    tokio::io::copy_bidirectional(&mut client, &mut upstream)
        .await
        .map(|_| ())
        .map_err(ForwardError::Splice)
}

/// The first upstream that accepts a connection within [`CONNECT_TIMEOUT`].
async fn connect_first(source: IpAddr, upstreams: &[Upstream]) -> Option<(TcpStream, &Upstream)> {
    for u in upstreams {
        match connect(source, u.addr).await {
            Ok(s) => return Some((s, u)),
            Err(e) => {
                metrics::counter!("fabric_router_upstream_attempt_failures_total", "redirector" => u.name.clone())
                    .increment(1);
                tracing::debug!(redirector = %u.name, addr = %u.addr, error = %e, "redirector did not answer; trying the next");
            }
        }
    }
    None
}

/// A connection from the router's own address (so the redirector knows it is from a router).
async fn connect(source: IpAddr, to: SocketAddr) -> io::Result<TcpStream> {
    proxy_header::connect_from(source, to, CONNECT_TIMEOUT).await
}

/// A stream that counts the bytes read from it.
struct Counted {
    inner: TcpStream,
    read: Counter,
}

impl AsyncRead for Counted {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let poll = Pin::new(&mut self.inner).poll_read(cx, buf);
        let n = buf.filled().len().saturating_sub(before);
        if n > 0 {
            self.read.increment(n as u64);
        }
        poll
    }
}

impl AsyncWrite for Counted {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
