//! The handoff between two parts of one process: real TCP connections, real SEQPACKET channels.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::receiver::offered_stream;
use super::*;

const WAIT: Duration = Duration::from_secs(5);

/// A receiver for one address whose sessions arrive on a channel instead of being served (a port
/// would spawn each); dropping it stops the receiver as a node's shutdown does.
struct Receiving {
    sessions: tokio::sync::mpsc::UnboundedReceiver<Incoming>,
    _stop: tokio_util::sync::DropGuard,
}

impl Receiving {
    async fn recv(&mut self) -> Option<Incoming> {
        self.sessions.recv().await
    }
}

fn receive(addr: SocketAddr) -> io::Result<Receiving> {
    let (tx, sessions) = tokio::sync::mpsc::unbounded_channel();
    let stop = CancellationToken::new();
    listen(
        addr,
        Arc::new(move |inc| {
            let _ = tx.send(inc);
        }),
        stop.clone(),
    )?;
    Ok(Receiving {
        sessions,
        _stop: stop.drop_guard(),
    })
}

/// A client connected to a "router" that accepted it: (client side, router side).
async fn connected_pair() -> (TcpStream, TcpStream) {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("binds");
    let client = TcpStream::connect(l.local_addr().expect("bound"))
        .await
        .expect("connects");
    let (accepted, _) = l.accept().await.expect("accepts");
    (client, accepted)
}

/// An address nobody else uses, to name a receiver by (held by a bound listener).
async fn service_address() -> (TcpListener, SocketAddr) {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("binds");
    let a = l.local_addr().expect("bound");
    (l, a)
}

/// The sender still owns the client: what it writes reaches the client.
async fn still_reaches(at_router: &mut TcpStream, client: &mut TcpStream, line: &[u8]) {
    at_router.write_all(line).await.expect("writes");
    let mut buf = vec![0u8; line.len()];
    client.read_exact(&mut buf).await.expect("reads");
    assert_eq!(buf, line);
}

/// Offers `stream` with a claim token and waits until the offer is settled.
async fn settle(addr: SocketAddr, stream: TcpStream, timeout: Duration) -> Result<(), Refused> {
    target(addr)
        .hand(stream, named_client(), Ipv4Addr::LOCALHOST, timeout)
        .await?
        .outcome()
        .await
}

/// The client's connection ends (no side keeps a copy of it open) with nothing more to read.
async fn sees_the_end(client: &mut TcpStream) {
    let mut rest = Vec::new();
    let n = tokio::time::timeout(WAIT, client.read_to_end(&mut rest))
        .await
        .expect("the client sees the connection end")
        .expect("reads to the end");
    assert_eq!(n, 0);
}

fn named_client() -> SocketAddr {
    SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::new(198, 51, 100, 7), 40123))
}

#[tokio::test]
async fn a_handed_connection_is_served_by_the_receiver_as_the_named_client() {
    let (_hold, addr) = service_address().await;
    let mut incoming = receive(addr).expect("listens");
    let (mut client, at_router) = connected_pair().await;
    let hop = Ipv4Addr::new(127, 0, 0, 1);

    let handed = target(addr)
        .hand(at_router, named_client(), hop, WAIT)
        .await
        .expect("offered");
    let settled = tokio::spawn(handed.outcome());

    let mut inc = tokio::time::timeout(WAIT, incoming.recv())
        .await
        .expect("in time")
        .expect("a session");
    assert_eq!(inc.client, named_client());
    assert_eq!(inc.hop, SocketAddr::new(hop.into(), 0));
    inc.stream
        .write_all(b"220 served by the receiver\r\n")
        .await
        .expect("taken");
    let mut line = [0u8; 28];
    client.read_exact(&mut line).await.expect("reads");
    assert_eq!(&line, b"220 served by the receiver\r\n");
    client.write_all(b"QUIT\r\n").await.expect("writes");
    let mut quit = [0u8; 6];
    inc.stream.read_exact(&mut quit).await.expect("reads");
    assert_eq!(&quit, b"QUIT\r\n");

    // The session ends in the receiver: the sender hears that it closed, and the client sees the
    // end (the sender kept no copy open).
    drop(inc);
    tokio::time::timeout(WAIT, settled)
        .await
        .expect("the sender hears the session closed")
        .expect("ran")
        .expect("served by the receiver");
    sees_the_end(&mut client).await;
}

#[tokio::test]
async fn with_nothing_listening_the_offer_is_unavailable_and_the_sender_keeps_the_client() {
    let (_hold, addr) = service_address().await;
    let (mut client, at_router) = connected_pair().await;
    let mut refused = settle(addr, at_router, WAIT)
        .await
        .expect_err("nobody takes it");
    assert!(refused.error.is_unavailable(), "{}", refused.error);
    still_reaches(&mut refused.stream, &mut client, b"still mine\r\n").await;
}

#[tokio::test]
async fn an_ipv6_client_is_not_handed_off() {
    let (_hold, addr) = service_address().await;
    let _incoming = receive(addr).expect("listens");
    let (_client, at_router) = connected_pair().await;
    let v6: SocketAddr = "[2001:db8::1]:25".parse().expect("an address");
    let refused = target(addr)
        .hand(at_router, v6, Ipv4Addr::LOCALHOST, WAIT)
        .await
        .err()
        .expect("refused");
    assert!(matches!(refused.error, HandoffError::NotV4));
}

#[tokio::test]
async fn a_frozen_receiver_loses_the_token_and_a_late_one_never_serves() {
    let (_hold, addr) = service_address().await;
    // A receiver that reads the offer but does nothing with it for now (a frozen server).
    let mut listener = UnixSeqpacketListener::bind(abstract_path(addr)).expect("binds the name");
    let (seen_tx, seen_rx) = tokio::sync::oneshot::channel();
    let frozen = tokio::spawn(async move {
        let ch = listener.accept().await.expect("a channel");
        let offer = recv(&ch).await.expect("a record").expect("not the end");
        let _ = seen_tx.send(offer);
        ch
    });

    let (mut client, at_router) = connected_pair().await;
    let mut refused = settle(addr, at_router, Duration::from_millis(200))
        .await
        .expect_err("no answer means no handoff");
    assert!(
        matches!(refused.error, HandoffError::Timeout(..)),
        "{}",
        refused.error
    );
    let (offer, fds) = seen_rx.await.expect("the offer was seen");
    let _channel = frozen.await.expect("the frozen receiver ran");
    assert_eq!(offer.kind, Kind::Offer);
    assert_eq!(
        offer.client,
        SocketAddrV4::new(Ipv4Addr::new(198, 51, 100, 7), 40123)
    );
    assert_eq!(fds.len(), 2, "the client's socket and the claim token");
    // The receiver wakes up: the token is gone, so the session is not its to serve.
    let mut fds = fds.into_iter();
    let (_client_copy, token) = (fds.next(), fds.next().expect("a token"));
    // (`claim` reads it: an eventfd whose count the first read takes whole.)
    assert!(!claim(&token), "the sender took its token back");
    // And the sender still has the client, to offer elsewhere.
    still_reaches(&mut refused.stream, &mut client, b"421 elsewhere\r\n").await;
}

#[tokio::test]
async fn a_receiver_that_claimed_the_token_keeps_the_session_past_the_timeout() {
    let (_hold, addr) = service_address().await;
    // A receiver that claims the token at once and then says nothing for a long time.
    let mut listener = UnixSeqpacketListener::bind(abstract_path(addr)).expect("binds the name");
    let (claimed_tx, claimed_rx) = tokio::sync::oneshot::channel();
    let quiet = tokio::spawn(async move {
        let ch = listener.accept().await.expect("a channel");
        let (_, fds) = recv(&ch).await.expect("a record").expect("not the end");
        let mut fds = fds.into_iter();
        let client = fds.next().expect("the client");
        let token = fds.next().expect("a token");
        let _ = claimed_tx.send((claim(&token), client));
        ch
    });
    let (mut client, at_router) = connected_pair().await;
    let handed = target(addr)
        .hand(
            at_router,
            named_client(),
            Ipv4Addr::LOCALHOST,
            Duration::from_millis(200),
        )
        .await
        .expect("offered");
    let settled = tokio::spawn(handed.outcome());
    let (claimed, fd) = claimed_rx.await.expect("the receiver ran");
    assert!(claimed, "the receiver got the token");
    let channel = quiet.await.expect("the receiver ran");
    // Well past the timeout, the session is still the receiver's, and the sender still waits to
    // hear it closed.
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert!(
        !settled.is_finished(),
        "a claimed session is the receiver's"
    );
    let mut stream = offered_stream(fd).expect("a TCP connection");
    stream.write_all(b"220 late\r\n").await.expect("writes");
    let mut buf = [0u8; 10];
    client.read_exact(&mut buf).await.expect("reads");
    assert_eq!(&buf, b"220 late\r\n");
    // The receiver goes: the sender stops counting the session, and did not take it back.
    drop(channel);
    tokio::time::timeout(WAIT, settled)
        .await
        .expect("settles once the channel is gone")
        .expect("ran")
        .expect("the receiver's, not taken back");
    // The sender dropped its copy at the timeout: when the receiver ends, the client sees it.
    drop(stream);
    sees_the_end(&mut client).await;
}

#[tokio::test]
async fn once_the_receiver_stops_taking_sessions_offers_fail_and_the_client_stays() {
    let (_hold, addr) = service_address().await;
    let incoming = receive(addr).expect("listens");
    // Open the channel with a first session, served and finished.
    let (_c1, r1) = connected_pair().await;
    let mut incoming = incoming;
    let first = tokio::spawn(settle(addr, r1, WAIT));
    drop(incoming.recv().await.expect("a session"));
    first
        .await
        .expect("ran")
        .expect("served and closed by the receiver");

    drop(incoming);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (mut client, at_router) = connected_pair().await;
    let mut refused = settle(addr, at_router, WAIT)
        .await
        .expect_err("a stopped receiver takes nothing");
    assert!(
        matches!(
            refused.error,
            HandoffError::Broken(..) | HandoffError::Unavailable(_)
        ),
        "{}",
        refused.error
    );
    still_reaches(&mut refused.stream, &mut client, b"ok\r\n").await;
}

#[test]
fn records_round_trip_and_bad_ones_are_refused() {
    let r = Record {
        kind: Kind::Offer,
        id: 0x0102_0304_0506_0708,
        client: SocketAddrV4::new(Ipv4Addr::new(10, 1, 2, 3), 2525),
        hop: Ipv4Addr::new(127, 10, 1, 5),
    };
    assert_eq!(Record::decode(&r.encode()), Some(r));
    let mut bad = r.encode();
    bad[0] = 9;
    assert_eq!(Record::decode(&bad), None);
    assert_eq!(Record::decode(&r.encode()[..RECORD - 1]), None);
}

#[tokio::test]
async fn a_gift_is_served_at_once_and_its_sender_hears_nothing_more() {
    let (_hold, addr) = service_address().await;
    let mut incoming = receive(addr).expect("listens");
    let (mut client, at_router) = connected_pair().await;
    target(addr)
        .give(at_router.as_fd(), named_client(), Ipv4Addr::LOCALHOST)
        .await
        .expect("given");
    drop(at_router);
    let mut inc = tokio::time::timeout(WAIT, incoming.recv())
        .await
        .expect("in time")
        .expect("a session");
    assert_eq!(inc.client, named_client());
    inc.stream.write_all(b"220 gift\r\n").await.expect("writes");
    let mut buf = [0u8; 10];
    client.read_exact(&mut buf).await.expect("reads");
    assert_eq!(&buf, b"220 gift\r\n");
    drop(inc);
    sees_the_end(&mut client).await;
}

#[tokio::test]
async fn a_gift_nobody_listens_for_stays_with_the_sender() {
    let (_hold, addr) = service_address().await;
    let (mut client, mut at_router) = connected_pair().await;
    let err = target(addr)
        .give(at_router.as_fd(), named_client(), Ipv4Addr::LOCALHOST)
        .await
        .expect_err("nobody takes it");
    assert!(err.is_unavailable(), "{err}");
    still_reaches(&mut at_router, &mut client, b"relayed\r\n").await;
}

#[tokio::test]
async fn a_receiver_that_stops_reading_makes_offers_fail_instead_of_blocking_the_sender() {
    let (_hold, addr) = service_address().await;
    // A receiver that accepts the channel and then never reads from it (a frozen redirector).
    let mut listener = UnixSeqpacketListener::bind(abstract_path(addr)).expect("binds the name");
    let frozen = tokio::spawn(async move { listener.accept().await.expect("a channel") });
    let (mut client, mut at_router) = connected_pair().await;
    let mut given = 0;
    let err = loop {
        let offered = tokio::time::timeout(
            WAIT,
            target(addr).give(at_router.as_fd(), named_client(), Ipv4Addr::LOCALHOST),
        )
        .await
        .expect("an offer never waits long on a receiver that does not read");
        match offered {
            Ok(()) => given += 1,
            Err(e) => break e,
        }
        assert!(given < 100_000, "the channel never filled up");
    };
    assert!(given > 0, "offers went out while there was room");
    assert!(matches!(err, HandoffError::Broken(..)), "{err}");
    let _channel = frozen.await.expect("the receiver ran");
    // The offer that failed left the client with the sender.
    still_reaches(&mut at_router, &mut client, b"relayed\r\n").await;
}

#[test]
fn a_token_that_would_block_is_not_claimed_and_does_not_hang_the_receiver() {
    // A same-user sender that passes a blocking socket with nothing in it as its "token".
    let (token, _peer) = std::os::unix::net::UnixDatagram::pair().expect("a socket pair");
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = done_tx.send(claim(&token));
    });
    let claimed = done_rx
        .recv_timeout(WAIT)
        .expect("claiming returns at once instead of waiting on the socket");
    assert!(!claimed, "only a nonblocking token can be claimed");
    // And a real token is claimed exactly once.
    let real = nix::sys::eventfd::EventFd::from_value_and_flags(
        1,
        nix::sys::eventfd::EfdFlags::EFD_NONBLOCK,
    )
    .expect("an eventfd");
    assert!(claim(&real), "the first read takes the token");
    assert!(!claim(&real), "nobody gets it twice");
}
