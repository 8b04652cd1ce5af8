//! The handoff between two parts of one process: real TCP connections, real SEQPACKET channels.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::receiver::offered_stream;
use super::*;
use std::os::unix::net::UnixDatagram;

const WAIT: Duration = Duration::from_secs(5);

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

fn named_client() -> SocketAddr {
    SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::new(198, 51, 100, 7), 40123))
}

#[tokio::test]
async fn a_handed_connection_is_served_by_the_receiver_as_the_named_client() {
    let (_hold, addr) = service_address().await;
    let mut incoming = listen(addr).expect("listens");
    let (mut client, at_router) = connected_pair().await;
    let hop = Ipv4Addr::new(127, 0, 0, 1);

    let handed = target(addr)
        .hand(&at_router, named_client(), hop, WAIT)
        .await
        .expect("the receiver takes it");
    drop(at_router);

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

    // The session ends in the receiver: the client sees the end (the sender kept no copy open)
    // and the sender hears that it closed.
    drop(inc);
    let mut rest = Vec::new();
    let n = tokio::time::timeout(WAIT, client.read_to_end(&mut rest))
        .await
        .expect("the client sees the connection end")
        .expect("reads to the end");
    assert_eq!(n, 0);
    tokio::time::timeout(WAIT, handed.closed())
        .await
        .expect("the sender hears the session closed");
}

#[tokio::test]
async fn with_nothing_listening_the_offer_is_unavailable_and_the_sender_keeps_the_client() {
    let (_hold, addr) = service_address().await;
    let (mut client, mut at_router) = connected_pair().await;
    let err = target(addr)
        .hand(&at_router, named_client(), Ipv4Addr::LOCALHOST, WAIT)
        .await
        .err()
        .expect("nobody takes it");
    assert!(err.is_unavailable(), "{err}");
    still_reaches(&mut at_router, &mut client, b"still mine\r\n").await;
}

#[tokio::test]
async fn an_ipv6_client_is_not_handed_off() {
    let (_hold, addr) = service_address().await;
    let _incoming = listen(addr).expect("listens");
    let (_client, at_router) = connected_pair().await;
    let v6: SocketAddr = "[2001:db8::1]:25".parse().expect("an address");
    let err = target(addr)
        .hand(&at_router, v6, Ipv4Addr::LOCALHOST, WAIT)
        .await
        .err()
        .expect("refused");
    assert!(matches!(err, HandoffError::NotV4));
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

    let (mut client, mut at_router) = connected_pair().await;
    let err = target(addr)
        .hand(
            &at_router,
            named_client(),
            Ipv4Addr::LOCALHOST,
            Duration::from_millis(200),
        )
        .await
        .err()
        .expect("no answer means no handoff");
    assert!(matches!(err, HandoffError::Timeout(..)), "{err}");
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
    let token = UnixDatagram::from(token);
    token.set_nonblocking(true).expect("nonblocking");
    assert!(!claim(&token), "the sender took its token back");
    // And the sender still has the client, to offer elsewhere.
    still_reaches(&mut at_router, &mut client, b"421 elsewhere\r\n").await;
}

#[tokio::test]
async fn a_receiver_that_claimed_but_answers_late_keeps_the_session() {
    let (_hold, addr) = service_address().await;
    // A receiver that claims the token at once and only then stalls before answering.
    let mut listener = UnixSeqpacketListener::bind(abstract_path(addr)).expect("binds the name");
    let (claimed_tx, claimed_rx) = tokio::sync::oneshot::channel();
    let slow = tokio::spawn(async move {
        let ch = listener.accept().await.expect("a channel");
        let (_, fds) = recv(&ch).await.expect("a record").expect("not the end");
        let mut fds = fds.into_iter();
        let client = fds.next().expect("the client");
        let token = UnixDatagram::from(fds.next().expect("a token"));
        token.set_nonblocking(true).expect("nonblocking");
        let _ = claimed_tx.send((claim(&token), client));
        ch
    });
    let (mut client, at_router) = connected_pair().await;
    let handed = target(addr)
        .hand(
            &at_router,
            named_client(),
            Ipv4Addr::LOCALHOST,
            Duration::from_millis(200),
        )
        .await;
    assert!(
        handed.is_ok(),
        "a claimed session is the receiver's however late it answers"
    );
    drop(at_router);
    let (claimed, fd) = claimed_rx.await.expect("the receiver ran");
    assert!(claimed, "the receiver got the token");
    let _channel = slow.await.expect("the receiver ran");
    let mut stream = offered_stream(fd).expect("a TCP connection");
    stream.write_all(b"220 late\r\n").await.expect("writes");
    let mut buf = [0u8; 10];
    client.read_exact(&mut buf).await.expect("reads");
    assert_eq!(&buf, b"220 late\r\n");
}

#[tokio::test]
async fn once_the_receiver_stops_taking_sessions_offers_fail_and_the_client_stays() {
    let (_hold, addr) = service_address().await;
    let incoming = listen(addr).expect("listens");
    // Open the channel with a first session, served and finished.
    let (_c1, r1) = connected_pair().await;
    let mut incoming = incoming;
    let h = target(addr)
        .hand(&r1, named_client(), Ipv4Addr::LOCALHOST, WAIT)
        .await
        .expect("taken");
    drop(r1);
    drop(incoming.recv().await.expect("a session"));
    h.closed().await;

    drop(incoming);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (mut client, mut at_router) = connected_pair().await;
    let err = target(addr)
        .hand(&at_router, named_client(), Ipv4Addr::LOCALHOST, WAIT)
        .await
        .err()
        .expect("a stopped receiver takes nothing");
    assert!(
        matches!(err, HandoffError::Broken(..) | HandoffError::Unavailable(_)),
        "{err}"
    );
    still_reaches(&mut at_router, &mut client, b"ok\r\n").await;
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
    let mut incoming = listen(addr).expect("listens");
    let (mut client, at_router) = connected_pair().await;
    target(addr)
        .give(&at_router, named_client(), Ipv4Addr::LOCALHOST)
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
    let mut rest = Vec::new();
    let n = tokio::time::timeout(WAIT, client.read_to_end(&mut rest))
        .await
        .expect("the client sees the end")
        .expect("reads to the end");
    assert_eq!(n, 0);
}

#[tokio::test]
async fn a_gift_nobody_listens_for_stays_with_the_sender() {
    let (_hold, addr) = service_address().await;
    let (mut client, mut at_router) = connected_pair().await;
    let err = target(addr)
        .give(&at_router, named_client(), Ipv4Addr::LOCALHOST)
        .await
        .expect_err("nobody takes it");
    assert!(err.is_unavailable(), "{err}");
    still_reaches(&mut at_router, &mut client, b"relayed\r\n").await;
}
