//! The sending side of a handoff: a router or a redirector offering a client's connection.

use super::*;

use nix::sys::eventfd::{EfdFlags, EventFd};
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;

/// Where a handed-off session stands, as seen by the sender: it hears when the session closed.
type Waiting = oneshot::Sender<()>;

/// One channel to a receiver. `waiting` is `None` once the channel broke.
///
/// The socket is registered for reading only: every record the receiver reads frees room in it, and
/// with write interest each of those would wake this process for nothing (one wakeup per session).
/// Offers are sent without waiting (see [`send_offer`]).
struct Channel {
    sock: AsyncFd<OwnedFd>,
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

    /// Reads the receiver's next answer; `None` at the end of the channel or on nonsense.
    async fn answer(&self) -> Option<Record> {
        let mut buf = [0u8; RECORD + 1];
        loop {
            let mut ready = self.sock.readable().await.ok()?;
            let read = ready.try_io(|fd| {
                nix_socket::recv(fd.as_raw_fd(), &mut buf, MsgFlags::MSG_DONTWAIT)
                    .map_err(io::Error::from)
            });
            match read {
                Ok(Ok(0)) | Ok(Err(_)) => return None,
                Ok(Ok(n)) => return Record::decode(&buf[..n]),
                Err(_would_block) => continue,
            }
        }
    }

    async fn read_answers(self: Arc<Channel>) {
        while let Some(rec) = self.answer().await {
            let Ok(mut w) = self.waiting.lock() else {
                return;
            };
            let Some(map) = w.as_mut() else { return };
            if rec.kind == Kind::Closed
                && let Some(closed) = map.remove(&rec.id)
            {
                let _ = closed.send(());
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

/// A session offered to a receiver with a claim token, until it is settled (see [`Handed::outcome`]).
pub struct Handed {
    /// The sender's copy of the client's connection, out of the runtime's poller: while the
    /// receiver serves the client, what arrives on it must not wake the sender. (`None` if the poller
    /// would not let go of it, which does not happen in practice.)
    stream: Option<std::net::TcpStream>,
    claim: Claim,
    closed: oneshot::Receiver<()>,
    channel: Arc<Channel>,
    id: u64,
    addr: SocketAddr,
    timeout: Duration,
}

/// An offer the receiver did not take: the sender owns the client's connection again.
#[derive(Debug)]
pub struct Refused {
    pub stream: TcpStream,
    pub error: HandoffError,
}

impl Refused {
    fn new(stream: Option<std::net::TcpStream>, error: HandoffError) -> Result<(), Refused> {
        match stream.map(TcpStream::from_std) {
            Some(Ok(stream)) => Err(Refused { stream, error }),
            // Not even the poller takes it back: the client is lost to both sides. Saying so is all
            // that is left (and the connection closes).
            Some(Err(e)) => {
                tracing::warn!(error = %e, %error, "an offered connection could not be taken back");
                Ok(())
            }
            None => {
                tracing::warn!(%error, "an offered connection was not kept to take back");
                Ok(())
            }
        }
    }
}

impl Handed {
    /// Settles the offer. `Ok` once the receiver's session has ended (or the receiver, having
    /// claimed the session, is gone). `Err` with the connection if the receiver never claimed it:
    /// it said nothing within the timeout (frozen) or its channel broke (dead), and the sender got
    /// the token back, so the session is the sender's to offer elsewhere. A receiver that claimed
    /// the token keeps the session however long it takes: the sender then drops its copy at the
    /// timeout and only waits to hear the session closed.
    pub async fn outcome(self) -> Result<(), Refused> {
        let Handed {
            stream,
            claim,
            mut closed,
            channel,
            id,
            addr,
            timeout,
        } = self;
        let why = tokio::select! {
            heard = &mut closed => match heard {
                Ok(()) => {
                    count(Ok("taken"));
                    return Ok(());
                }
                Err(_) => HandoffError::Broken(addr, "closed by the receiver".into()),
            },
            _ = tokio::time::sleep(timeout) => HandoffError::Timeout(addr, timeout),
        };
        if claim.take_back() {
            channel.forget(id);
            count(Err(&why));
            return Refused::new(stream, why);
        }
        // Claimed: the session is the receiver's.
        count(Ok("taken"));
        drop((stream, claim));
        let _ = closed.await;
        Ok(())
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
        stream: BorrowedFd<'_>,
        client: SocketAddr,
        hop: Ipv4Addr,
    ) -> Result<(), HandoffError> {
        let result = self.try_give(stream, client, hop).await;
        count(result.as_ref().map(|_| "given"));
        result
    }

    async fn try_give(
        &self,
        stream: BorrowedFd<'_>,
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
        send_offer(&ch.sock, offer, stream, None)
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
        let connected = UnixSeqpacket::connect_blocking(abstract_path(self.addr))
            .and_then(|sock| read_only(OwnedFd::from(sock)));
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
    /// (the real client, as a PROXY header would) and `hop` as the node it came through, with a
    /// claim token. On `Ok` the offer is out: [`Handed::outcome`] says whether the receiver served
    /// the session or the connection is the caller's again. On `Err` nothing was offered.
    pub async fn hand(
        &self,
        stream: TcpStream,
        client: SocketAddr,
        hop: Ipv4Addr,
        timeout: Duration,
    ) -> Result<Handed, Refused> {
        let offered = match self.offer_with_claim(&stream, client, hop).await {
            Ok(offered) => offered,
            Err(error) => {
                count(Err(&error));
                return Err(Refused { stream, error });
            }
        };
        let stream = stream
            .into_std()
            .inspect_err(
                |e| tracing::warn!(error = %e, "taking an offered connection out of the poller"),
            )
            .ok();
        Ok(Handed {
            stream,
            claim: offered.claim,
            closed: offered.closed,
            channel: offered.channel,
            id: offered.id,
            addr: self.addr,
            timeout,
        })
    }

    /// Sends `stream` to the receiver with a fresh claim token, and waits for nothing.
    async fn offer_with_claim(
        &self,
        stream: &TcpStream,
        client: SocketAddr,
        hop: Ipv4Addr,
    ) -> Result<Offered, HandoffError> {
        let SocketAddr::V4(client) = client else {
            return Err(HandoffError::NotV4);
        };
        let channel = self.channel()?;
        let broken = |why: String| HandoffError::Broken(self.addr, why);
        let claim = Claim::new().map_err(|e| broken(format!("making the claim token: {e}")))?;
        let id = channel.next_id.fetch_add(1, Ordering::Relaxed);
        let (closed_tx, closed) = oneshot::channel();
        {
            let mut w = channel
                .waiting
                .lock()
                .map_err(|_| broken("poisoned".into()))?;
            let map = w
                .as_mut()
                .ok_or_else(|| broken("closed by the receiver".into()))?;
            map.insert(id, closed_tx);
        }
        let offer = Record {
            kind: Kind::Offer,
            id,
            client,
            hop,
        };
        if let Err(e) = send_offer(&channel.sock, offer, stream.as_fd(), Some(claim.token())).await
        {
            channel.break_off();
            return Err(broken(format!("sending the offer: {e}")));
        }
        Ok(Offered {
            channel,
            claim,
            id,
            closed,
        })
    }
}

/// An offer that went out, before it is settled.
struct Offered {
    channel: Arc<Channel>,
    claim: Claim,
    id: u64,
    closed: oneshot::Receiver<()>,
}

/// Registers `fd` with the runtime for reading only. Tokio deprecated its safe constructors because a
/// `T: AsRawFd` could hand out a descriptor it does not own; an `OwnedFd` owns its descriptor for as
/// long as the registration lives, which is what the unsafe replacement asks its caller to promise.
#[allow(deprecated)]
fn read_only(fd: OwnedFd) -> io::Result<AsyncFd<OwnedFd>> {
    AsyncFd::with_interest(fd, Interest::READABLE)
}

/// How often, and how far apart, an offer is tried again while the channel has no room: the
/// receiver has not read hundreds of offers, so it is frozen, and the caller had better keep the
/// client than wait on it.
const SEND_TRIES: u32 = 20;
const SEND_PAUSE: Duration = Duration::from_millis(2);

/// Sends an offer with the client's socket (and the claim token, if any) without waiting for the
/// channel to become writable (it is not registered for that, see [`Channel`]).
async fn send_offer(
    sock: &AsyncFd<OwnedFd>,
    rec: Record,
    stream: BorrowedFd<'_>,
    token: Option<BorrowedFd<'_>>,
) -> io::Result<()> {
    let bytes = rec.encode();
    let mut fds = vec![stream.as_raw_fd()];
    fds.extend(token.map(|t| t.as_raw_fd()));
    for _ in 0..SEND_TRIES {
        let sent = nix_socket::sendmsg::<()>(
            sock.get_ref().as_raw_fd(),
            &[IoSlice::new(&bytes)],
            &[nix_socket::ControlMessage::ScmRights(&fds)],
            MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_NOSIGNAL,
            None,
        );
        match sent {
            Ok(_) => return Ok(()),
            Err(nix::errno::Errno::EAGAIN) => tokio::time::sleep(SEND_PAUSE).await,
            Err(nix::errno::Errno::EINTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Err(io::Error::new(
        io::ErrorKind::WouldBlock,
        "the receiver has not read its earlier offers",
    ))
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

/// The claim token of one offer: an eventfd holding a count of 1, which the offer carries to the
/// receiver while the sender keeps its own descriptor of it. Reading takes the whole count, so
/// exactly one of them gets it: the receiver before it serves, or the sender when it gives up.
struct Claim {
    token: EventFd,
}

impl Claim {
    fn new() -> io::Result<Claim> {
        let token =
            EventFd::from_value_and_flags(1, EfdFlags::EFD_NONBLOCK | EfdFlags::EFD_CLOEXEC)?;
        Ok(Claim { token })
    }

    fn token(&self) -> BorrowedFd<'_> {
        self.token.as_fd()
    }

    /// Takes the token back: true if the receiver had not claimed it.
    fn take_back(&self) -> bool {
        claim(&self.token)
    }
}
