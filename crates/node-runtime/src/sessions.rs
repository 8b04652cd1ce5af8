//! What every protocol listener of a mail role does: bind its port, serve each connection as a task
//! with a cap on open sessions (the ones over it get the protocol's "busy" line and are closed), and
//! at shutdown stop accepting and give open sessions the topology's deadline to finish.
//!
//! A connection from one of the topology's routers or redirectors starts with a PROXY v2 header
//! (`proxy_header`): the session is served as the client it names, so logs and limits see the real
//! sender. A proxy's connection without a valid header is closed and counted; nobody else may send one.
//! A router or redirector on the same host may instead hand the client's connection itself to the
//! port (`handoff`): it is served the same way, as the client the handoff names.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::Semaphore;

use crate::{NodeContext, handoff, proxy_header};

/// How long a proxy has to send its header once connected.
const PROXY_HEADER_DEADLINE: std::time::Duration = std::time::Duration::from_secs(5);

/// A cap on the sessions a listener serves at once.
#[derive(Clone)]
pub struct SessionLimit {
    permits: Arc<Semaphore>,
    max: usize,
}

impl SessionLimit {
    pub fn new(max: usize) -> SessionLimit {
        SessionLimit {
            permits: Arc::new(Semaphore::new(max)),
            max,
        }
    }

    /// Sessions open now (for `/status`).
    pub fn in_use(&self) -> usize {
        self.max - self.permits.available_permits()
    }
}

/// Connections whose handshake the kernel finishes for a listener before the node accepts them
/// (capped by `net.core.somaxconn`). `TcpListener::bind` asks for 128: a burst of new sessions on a
/// busy node then fills the queue, the kernel drops the next SYN, and that client waits out a 1 s
/// retransmit (3 s at the second drop). HAProxy asks for somaxconn; so do we.
pub const LISTEN_BACKLOG: u32 = 4096;

/// A listener on `addr` with [`LISTEN_BACKLOG`] (and `SO_REUSEADDR`, as `TcpListener::bind` sets it).
/// Every service port of every node binds through here.
pub fn listen(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// Binds the node's port for `service` (as the topology names it).
pub async fn bind(ctx: &NodeContext, service: &str) -> anyhow::Result<TcpListener> {
    let addr = ctx
        .node
        .service_addr(service)
        .with_context(|| format!("the node declares no {service} port"))?;
    listen(addr).with_context(|| format!("binding the {service} port {addr}"))
}

/// Accepts connections until shutdown, each served by `serve` as a task; over `limit`, the client
/// gets `busy` (the protocol's temporary-failure line) and is closed. Then drains.
pub async fn accept_until_shutdown<F, Fut>(
    ctx: &NodeContext,
    listener: TcpListener,
    limit: SessionLimit,
    busy: &'static [u8],
    serve: F,
) where
    F: Fn(TcpStream, SocketAddr) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = std::io::Result<()>> + Send + 'static,
{
    accept_with_peer_until_shutdown(ctx, listener, limit, busy, move |stream, client, _| {
        serve(stream, client)
    })
    .await
}

/// [`accept_until_shutdown`] for a serve closure that also needs the TCP peer, i.e. the hop the
/// connection came from (a router or redirector when it carried a PROXY header), beside the client
/// it is served as: `serve(stream, client, peer)`. A redirector uses it to keep what another site's
/// redirector sends it on its own servers.
pub async fn accept_with_peer_until_shutdown<F, Fut>(
    ctx: &NodeContext,
    listener: TcpListener,
    limit: SessionLimit,
    busy: &'static [u8],
    serve: F,
) where
    F: Fn(TcpStream, SocketAddr, SocketAddr) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = std::io::Result<()>> + Send + 'static,
{
    let proxies: Arc<Vec<std::net::Ipv4Addr>> = Arc::new(ctx.topology.proxy_addresses());
    let tasks = ctx.tasks.clone();
    let start = move |mut stream: TcpStream,
                      peer: SocketAddr,
                      handed_as: Option<(SocketAddr, handoff::SessionDone)>| {
        let _ = stream.set_nodelay(true);
        let (serve, permits, proxies) = (serve.clone(), limit.permits.clone(), proxies.clone());
        tasks.spawn(async move {
            let from_proxy = matches!(peer.ip(), std::net::IpAddr::V4(ip) if proxies.contains(&ip));
            // A handed-off session's sender hears it ended when `_done` drops with this task.
            let (known_client, _done) = handed_as.unzip();
            let client = if let Some(client) = known_client {
                client
            } else if from_proxy {
                match proxy_header::read(&mut stream, PROXY_HEADER_DEADLINE).await {
                    Ok(client) => client.unwrap_or(peer),
                    Err(e) => {
                        metrics::counter!("fabric_proxy_header_errors_total").increment(1);
                        tracing::warn!(proxy = %peer, error = %e, "closing a proxy connection without a valid PROXY v2 header");
                        return;
                    }
                }
            } else {
                peer
            };
            let Ok(_permit) = permits.try_acquire() else {
                metrics::counter!("fabric_sessions_refused_total").increment(1);
                let _ = stream.write_all(busy).await;
                return;
            };
            if let Err(e) = serve(stream, client, peer).await {
                tracing::debug!(peer = %client, error = %e, "session ended with an I/O error");
            }
        });
    };
    // Handed sessions start on the task that read their offer, like accepted ones here: no queue
    // between them, so no wakeup more than an accept costs.
    let handoff_stop = tokio_util::sync::CancellationToken::new();
    // Also if this loop is dropped before shutdown: nobody would serve what the receiver takes.
    let _stop_handoff_on_drop = handoff_stop.clone().drop_guard();
    if let Ok(addr) = listener.local_addr() {
        let start = start.clone();
        let on_handoff: handoff::Start =
            Arc::new(move |inc| start(inc.stream, inc.hop, Some((inc.client, inc.done))));
        if let Err(e) = handoff::listen(addr, on_handoff, handoff_stop.clone()) {
            tracing::warn!(%addr, error = %e, "no same-host handoff for this port; serving TCP only");
        }
    }
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => start(stream, peer, None),
                Err(e) => tracing::warn!(error = %e, "accept failed"),
            },
            _ = ctx.shutdown.cancelled() => break,
        }
    }
    // Closing the handoff side makes the routers and redirectors offer elsewhere from now on; what
    // was handed over already is served like the sessions already open.
    handoff_stop.cancel();
    tracing::info!("stopping: no new sessions; waiting for the open ones");
    ctx.tasks.close();
    let deadline = ctx.topology.timing.shutdown_deadline;
    if tokio::time::timeout(deadline, ctx.tasks.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            ?deadline,
            "sessions still open at the deadline; stopping anyway"
        );
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// What the kernel allows a listener at most (`net.core.somaxconn`).
    fn somaxconn() -> usize {
        std::fs::read_to_string("/proc/sys/net/core/somaxconn")
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(4096)
    }

    #[tokio::test]
    async fn a_burst_of_connects_far_over_128_completes_while_the_node_is_not_accepting() {
        // The node is busy: nothing accepts while 600 clients connect at once. Each handshake must
        // still complete within a second (a dropped SYN would wait out its 1 s retransmit).
        let listener = listen("127.0.0.1:0".parse().expect("addr")).expect("listen");
        let addr = listener.local_addr().expect("local addr");
        let n = somaxconn().min(LISTEN_BACKLOG as usize).min(600) - 8;
        assert!(
            n > 300,
            "this kernel caps listen backlogs at {}",
            somaxconn()
        );
        let mut connects = tokio::task::JoinSet::new();
        for _ in 0..n {
            connects.spawn(async move {
                tokio::time::timeout(Duration::from_millis(900), TcpStream::connect(addr)).await
            });
        }
        let mut open = Vec::new();
        while let Some(done) = connects.join_next().await {
            let stream = done
                .expect("connect task")
                .expect("connected within 900 ms, not after a SYN retransmit")
                .expect("connected");
            open.push(stream);
        }
        assert_eq!(open.len(), n);
        // And they are all there to be accepted once the node gets to them.
        for _ in 0..n {
            tokio::time::timeout(Duration::from_secs(5), listener.accept())
                .await
                .expect("queued connection")
                .expect("accept");
        }
    }
}
