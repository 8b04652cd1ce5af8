//! The sending side of a handoff: a router or a redirector offering a client's connection.

use super::*;

/// Where a handed-off session stands, as seen by the sender.
struct Waiting {
    took: Option<oneshot::Sender<()>>,
    closed: Option<oneshot::Sender<()>>,
}

/// One channel to a receiver. `waiting` is `None` once the channel broke.
struct Channel {
    sock: UnixSeqpacket,
    next_id: AtomicU64,
    waiting: Mutex<Option<HashMap<u64, Waiting>>>,
}

impl Channel {
    fn is_broken(&self) -> bool {
        self.waiting.lock().map(|w| w.is_none()).unwrap_or(true)
    }

    fn break_off(&self) {
        if let Ok(mut w) = self.waiting.lock() {
            // Dropping the senders tells every waiting hand-off and session the channel is gone.
            *w = None;
        }
    }

    fn forget(&self, id: u64) {
        if let Ok(mut w) = self.waiting.lock()
            && let Some(map) = w.as_mut()
        {
            map.remove(&id);
        }
    }

    async fn read_answers(self: Arc<Channel>) {
        while let Ok(Some((rec, _))) = recv(&self.sock).await {
            let Ok(mut w) = self.waiting.lock() else {
                return;
            };
            let Some(map) = w.as_mut() else { return };
            match rec.kind {
                Kind::Took => {
                    if let Some(t) = map.get_mut(&rec.id).and_then(|e| e.took.take()) {
                        let _ = t.send(());
                    }
                }
                Kind::Closed => {
                    if let Some(c) = map.remove(&rec.id).and_then(|e| e.closed) {
                        let _ = c.send(());
                    }
                }
                _ => {}
            }
        }
        // The receiver is gone (or spoke nonsense): everyone waiting on it hears so.
        self.break_off();
    }
}

/// A receiver connections can be handed to: one per service address, shared by the whole process
/// (see [`target`]).
pub struct Target {
    addr: SocketAddr,
    state: Mutex<TargetState>,
}

#[derive(Default)]
struct TargetState {
    channel: Option<Arc<Channel>>,
    retry_at: Option<Instant>,
}

/// The process's [`Target`] for `service_addr`.
pub fn target(service_addr: SocketAddr) -> Arc<Target> {
    static TARGETS: OnceLock<Mutex<HashMap<SocketAddr, Arc<Target>>>> = OnceLock::new();
    let targets = TARGETS.get_or_init(Default::default);
    let mut t = targets.lock().unwrap_or_else(|p| p.into_inner());
    t.entry(service_addr)
        .or_insert_with(|| {
            Arc::new(Target {
                addr: service_addr,
                state: Mutex::new(TargetState::default()),
            })
        })
        .clone()
}

/// A session a receiver took over.
pub struct Handed {
    closed: oneshot::Receiver<()>,
}

impl Handed {
    /// Resolves when the receiver's session has ended (or the receiver is gone).
    pub async fn closed(self) {
        let _ = self.closed.await;
    }
}

impl Target {
    /// Gives `stream` to the receiver for good: the offer carries no claim token, so the receiver
    /// serves it as soon as it reads it and answers nothing (no `Took`, no `Closed`). On `Ok` the
    /// caller drops its `stream`. The guarantees are those of relaying to the receiver: if it dies
    /// or freezes after the offer is sent, the session goes (or waits) with it; if nothing takes
    /// the offer, the caller still has the client. A router gives its flows to its redirector so.
    pub async fn give(
        &self,
        stream: &TcpStream,
        client: SocketAddr,
        hop: Ipv4Addr,
    ) -> Result<(), HandoffError> {
        let result = self.try_give(stream, client, hop).await;
        count(result.as_ref().map(|_| "given"));
        result
    }

    async fn try_give(
        &self,
        stream: &TcpStream,
        client: SocketAddr,
        hop: Ipv4Addr,
    ) -> Result<(), HandoffError> {
        let SocketAddr::V4(client) = client else {
            return Err(HandoffError::NotV4);
        };
        let ch = self.channel()?;
        let id = ch.next_id.fetch_add(1, Ordering::Relaxed);
        let offer = Record {
            kind: Kind::Offer,
            id,
            client,
            hop,
        };
        send(&ch.sock, offer, Some((stream, None)))
            .await
            .map_err(|e| {
                ch.break_off();
                HandoffError::Broken(self.addr, format!("sending the offer: {e}"))
            })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    fn channel(&self) -> Result<Arc<Channel>, HandoffError> {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = &st.channel {
            if !c.is_broken() {
                return Ok(c.clone());
            }
            st.channel = None;
        }
        if st.retry_at.is_some_and(|t| Instant::now() < t) {
            return Err(HandoffError::Unavailable(self.addr));
        }
        let connected = UnixSeqpacket::connect_blocking(abstract_path(self.addr));
        match connected {
            Ok(sock) => {
                let ch = Arc::new(Channel {
                    sock,
                    next_id: AtomicU64::new(1),
                    waiting: Mutex::new(Some(HashMap::new())),
                });
                tokio::spawn(ch.clone().read_answers());
                st.channel = Some(ch.clone());
                st.retry_at = None;
                Ok(ch)
            }
            Err(_) => {
                st.retry_at = Some(Instant::now() + RETRY_UNAVAILABLE);
                Err(HandoffError::Unavailable(self.addr))
            }
        }
    }

    /// Offers `stream`, a client's connection, to the receiver, naming `client` as the peer to serve
    /// (the real client, as a PROXY header would) and `hop` as the node it came through. On `Ok`
    /// the receiver serves the session: the caller drops its `stream` (the connection stays open in
    /// the receiver) and may wait on [`Handed::closed`]. On `Err` the caller still owns the session.
    pub async fn hand(
        &self,
        stream: &TcpStream,
        client: SocketAddr,
        hop: Ipv4Addr,
        timeout: Duration,
    ) -> Result<Handed, HandoffError> {
        let result = self.try_hand(stream, client, hop, timeout).await;
        count(result.as_ref().map(|_| "taken"));
        result
    }

    async fn try_hand(
        &self,
        stream: &TcpStream,
        client: SocketAddr,
        hop: Ipv4Addr,
        timeout: Duration,
    ) -> Result<Handed, HandoffError> {
        let SocketAddr::V4(client) = client else {
            return Err(HandoffError::NotV4);
        };
        let ch = self.channel()?;
        let broken = |why: &str| HandoffError::Broken(self.addr, why.to_string());
        let claim = Claim::new().map_err(|e| broken(&format!("making the claim token: {e}")))?;
        let id = ch.next_id.fetch_add(1, Ordering::Relaxed);
        let (took_tx, took_rx) = oneshot::channel();
        let (closed_tx, closed_rx) = oneshot::channel();
        {
            let mut w = ch.waiting.lock().map_err(|_| broken("poisoned"))?;
            let Some(map) = w.as_mut() else {
                return Err(broken("closed by the receiver"));
            };
            map.insert(
                id,
                Waiting {
                    took: Some(took_tx),
                    closed: Some(closed_tx),
                },
            );
        }
        let offer = Record {
            kind: Kind::Offer,
            id,
            client,
            hop,
        };
        let handed = Handed { closed: closed_rx };
        let why = match send(&ch.sock, offer, Some((stream, Some(claim.token())))).await {
            Err(e) => {
                ch.break_off();
                format!("sending the offer: {e}")
            }
            Ok(()) => match tokio::time::timeout(timeout, took_rx).await {
                Ok(Ok(())) => return Ok(handed),
                Ok(Err(_)) => "closed before answering".to_string(),
                Err(_) => String::new(),
            },
        };
        // No answer: whoever takes the token owns the session. If it is still there, the receiver
        // never claimed it and never will; else it did, and serves the client however late it says so.
        if claim.take_back() {
            ch.forget(id);
            return Err(if why.is_empty() {
                HandoffError::Timeout(self.addr, timeout)
            } else {
                broken(&why)
            });
        }
        Ok(handed)
    }
}

/// Counts an offer's outcome in `fabric_handoff_offers_total`.
fn count(result: Result<&'static str, &HandoffError>) {
    let outcome = match result {
        Ok(done) => done,
        Err(HandoffError::Unavailable(_) | HandoffError::NotV4) => "unavailable",
        Err(HandoffError::Broken(..)) => "broken",
        Err(HandoffError::Timeout(..)) => "timeout",
    };
    metrics::counter!("fabric_handoff_offers_total", "result" => outcome).increment(1);
}

/// The claim token of one offer: a one-byte datagram waiting in a socket that the offer carries to
/// the receiver while the sender keeps its own descriptor of it. Reading the byte is atomic, so
/// exactly one of them gets it: the receiver before it serves, or the sender when it gives up.
struct Claim {
    /// The socket the token waits in (sent along with the offer).
    token: UnixDatagram,
    /// Its peer, kept open until the offer is settled.
    _writer: UnixDatagram,
}

impl Claim {
    fn new() -> io::Result<Claim> {
        let (writer, token) = UnixDatagram::pair()?;
        token.set_nonblocking(true)?;
        writer.send(b"T")?;
        Ok(Claim {
            token,
            _writer: writer,
        })
    }

    fn token(&self) -> BorrowedFd<'_> {
        self.token.as_fd()
    }

    /// Takes the token back: true if the receiver had not claimed it.
    fn take_back(&self) -> bool {
        claim(&self.token)
    }
}
