//! The receiving side of a handoff: a port taking the connections handed to it.

use super::*;

/// A connection handed to this node, to be served like an accepted one.
pub struct Incoming {
    pub stream: TcpStream,
    /// The client to serve the session as.
    pub client: SocketAddr,
    /// The node it came through (port 0).
    pub hop: SocketAddr,
    /// Tells the sender the session is over when dropped.
    pub done: SessionDone,
}

/// Sends `Closed` for its session when dropped.
pub struct SessionDone {
    sock: Arc<UnixSeqpacket>,
    id: u64,
    /// A gift's sender asked for no news.
    quiet: bool,
}

impl Drop for SessionDone {
    fn drop(&mut self) {
        if self.quiet {
            return;
        }
        let bytes = Record::plain(Kind::Closed, self.id).encode();
        let sent = nix_socket::send(
            self.sock.as_raw_fd(),
            &bytes,
            MsgFlags::MSG_NOSIGNAL | MsgFlags::MSG_DONTWAIT,
        );
        // A full channel (a burst of sessions ending while the sender is busy): the sender counts
        // this session as open until it hears, so the record waits for room rather than being lost.
        if sent == Err(nix::errno::Errno::EAGAIN)
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            let sock = self.sock.clone();
            runtime.spawn(async move {
                let _ = sock.send(&bytes).await;
            });
        }
    }
}

/// What a port does with each session handed to it. It is called on the task that read the offer,
/// as soon as the session is this node's, and must not wait (a port spawns the session's task): a
/// session handed over costs the receiver no more wakeups than an accepted connection.
pub type Start = Arc<dyn Fn(Incoming) + Send + Sync>;

/// Listens for connections handed to `service_addr` and gives each whose claim token it got to
/// `start`, until `stop` is cancelled. `Err` when the name is taken (another process serves the same
/// address) or sockets fail: the node then serves what reaches it over TCP only.
pub fn listen(service_addr: SocketAddr, start: Start, stop: CancellationToken) -> io::Result<()> {
    let listener = UnixSeqpacketListener::bind(abstract_path(service_addr))?;
    tokio::spawn(accept_channels(listener, start, stop));
    Ok(())
}

async fn accept_channels(
    mut listener: UnixSeqpacketListener,
    start: Start,
    stop: CancellationToken,
) {
    let me = nix::unistd::geteuid().as_raw();
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = stop.cancelled() => return,
        };
        let sock = match accepted {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "accepting a handoff channel failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        match sock.peer_cred() {
            Ok(cred) if cred.uid() == me => {
                tokio::spawn(serve_channel(Arc::new(sock), start.clone(), stop.clone()));
            }
            Ok(cred) => {
                metrics::counter!("fabric_handoff_refused_total").increment(1);
                tracing::warn!(
                    uid = cred.uid(),
                    pid = ?cred.pid(),
                    "refusing a handoff channel from another user"
                );
            }
            Err(e) => tracing::warn!(error = %e, "reading a handoff channel's credentials failed"),
        }
    }
}

/// Turns a received descriptor into the client's connection, if it is a TCP socket.
/// Only what the poller needs: the sender is a process of this user (`SO_PEERCRED`), and a descriptor
/// that is no socket fails at registration. The port sets its own socket options, as it does for
/// accepted connections.
fn tcp_stream(fd: OwnedFd) -> io::Result<TcpStream> {
    let std = std::net::TcpStream::from(fd);
    std.set_nonblocking(true)?;
    TcpStream::from_std(std)
}

async fn serve_channel(sock: Arc<UnixSeqpacket>, start: Start, stop: CancellationToken) {
    loop {
        // Once the node stops taking sessions the channel closes at once, so senders see it broken
        // (and take their tokens back) instead of handing over sessions nobody would serve.
        let received = tokio::select! {
            r = recv(&sock) => r,
            _ = stop.cancelled() => break,
        };
        let (rec, fds) = match received {
            Ok(Some(r)) => r,
            Ok(None) => break,
            Err(e) => {
                tracing::warn!(error = %e, "closing a handoff channel");
                break;
            }
        };
        if rec.kind != Kind::Offer {
            continue;
        }
        let mut fds = fds.into_iter();
        let Some(client) = fds.next() else {
            tracing::warn!("a handoff offer without the client's connection");
            continue;
        };
        let Some(token) = fds.next() else {
            // A gift: ours at once, and its sender wants no answer.
            if let Some(stream) = offered_stream(client) {
                start(incoming(stream, rec, &sock, true));
            }
            continue;
        };
        if !claim(&token) {
            // The sender gave up on us and took its token back (we were too slow): not ours.
            metrics::counter!("fabric_handoff_late_total").increment(1);
            continue;
        }
        let Some(stream) = offered_stream(client) else {
            continue;
        };
        // The session is ours whatever happens to the channel now. The sender learns so when it
        // finds the token gone, or hears `Closed`; nothing else is said.
        start(incoming(stream, rec, &sock, false));
    }
    // Sessions still open hold the socket (to say `Closed`); shutting it down tells the sender now.
    let _ = sock.shutdown(std::net::Shutdown::Both);
}

/// The client's connection an offer carried, if it is a TCP socket.
pub(super) fn offered_stream(fd: OwnedFd) -> Option<TcpStream> {
    match tcp_stream(fd) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::warn!(error = %e, "a handoff offer without a TCP connection");
            None
        }
    }
}

/// A session the receiver now serves.
fn incoming(stream: TcpStream, offer: Record, sock: &Arc<UnixSeqpacket>, quiet: bool) -> Incoming {
    metrics::counter!("fabric_handoff_received_total").increment(1);
    Incoming {
        stream,
        client: SocketAddr::V4(offer.client),
        hop: SocketAddr::new(IpAddr::V4(offer.hop), 0),
        done: SessionDone {
            sock: sock.clone(),
            id: offer.id,
            quiet,
        },
    }
}
