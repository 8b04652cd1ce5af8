//! DNS over UDP and TCP: hickory-server's request and response types decode and encode the wire
//! format (with hickory-proto underneath); the loops are ours so that every packet that cannot be
//! decoded is counted (`fabric_dns_bad_requests_total`): hickory's `ServerFuture` drops such packets
//! inside its own loop without telling its handler.
//!
//! A malformed packet is answered FORMERR when its header can be read, else dropped; a TCP
//! connection that sent one is closed after the answer (its framing can no longer be trusted).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use hickory_server::authority::{MessageRequest, MessageResponseBuilder};
use hickory_server::proto::op::{Edns, Header, Message, MessageType, OpCode, ResponseCode};
use hickory_server::proto::serialize::binary::{BinDecodable, BinDecoder, BinEncoder};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::answer::Authority;

/// Largest UDP answer we send to an EDNS client (the DNS flag day 2020 value).
const EDNS_PAYLOAD: u16 = 1232;
/// TCP connections served at once; more are closed at once.
const MAX_TCP_CONNECTIONS: usize = 512;
/// How long a TCP connection may sit idle between questions, or take to send one (RFC 7766 asks
/// servers to time idle connections out in seconds).
const TCP_IDLE: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Udp,
    Tcp,
}

impl Transport {
    fn as_str(self) -> &'static str {
        match self {
            Transport::Udp => "udp",
            Transport::Tcp => "tcp",
        }
    }
}

/// Counters for `/status`.
#[derive(Default)]
pub struct Stats {
    pub queries: AtomicU64,
    pub bad_requests: AtomicU64,
}

/// Turns request bytes into answer bytes.
pub struct DnsServer {
    authority: Arc<Authority>,
    stats: Arc<Stats>,
}

/// The result of one packet: the bytes to send back (if any) and whether it was malformed.
pub struct Reply {
    pub bytes: Option<Vec<u8>>,
    pub bad: bool,
}

impl DnsServer {
    pub fn new(authority: Arc<Authority>, stats: Arc<Stats>) -> DnsServer {
        DnsServer { authority, stats }
    }

    fn bad(&self, transport: Transport, bytes: Option<Vec<u8>>) -> Reply {
        self.stats.bad_requests.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("fabric_dns_bad_requests_total", "transport" => transport.as_str())
            .increment(1);
        Reply { bytes, bad: true }
    }

    /// FORMERR for a packet whose header can be read (a query's), nothing otherwise.
    fn form_error(&self, packet: &[u8], transport: Transport) -> Reply {
        let header = Header::read(&mut BinDecoder::new(packet)).ok();
        let bytes = header
            .filter(|h| h.message_type() == MessageType::Query)
            .and_then(|h| {
                Message::error_msg(h.id(), h.op_code(), ResponseCode::FormErr)
                    .to_vec()
                    .ok()
            });
        self.bad(transport, bytes)
    }

    /// Answers one packet.
    pub fn handle(&self, packet: &[u8], transport: Transport) -> Reply {
        let request = match MessageRequest::read(&mut BinDecoder::new(packet)) {
            Ok(r) => r,
            Err(_) => return self.form_error(packet, transport),
        };
        if request.message_type() != MessageType::Query {
            // Never answer a response: that would let anyone bounce traffic off us.
            return self.bad(transport, None);
        }
        let mut header = Header::response_from_request(request.header());
        header.set_recursion_available(false);
        let mut builder = MessageResponseBuilder::from_message_request(&request);
        if request.edns().is_some() {
            let mut edns = Edns::new();
            edns.set_max_payload(EDNS_PAYLOAD);
            builder.edns(edns);
        }
        let queries = request.queries();
        let (answer, qtype) = match (request.op_code(), queries) {
            (OpCode::Query, [q]) => {
                let name = q.name().into();
                (
                    self.authority
                        .answer(&name, q.query_type(), q.query_class()),
                    q.query_type().to_string(),
                )
            }
            (OpCode::Query, _) => (
                crate::answer::Answer {
                    rcode: ResponseCode::FormErr,
                    ..Default::default()
                },
                "none".to_string(),
            ),
            _ => (
                crate::answer::Answer {
                    rcode: ResponseCode::NotImp,
                    ..Default::default()
                },
                "none".to_string(),
            ),
        };
        header.set_response_code(answer.rcode);
        header.set_authoritative(answer.authoritative);
        self.stats.queries.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("fabric_dns_queries_total", "qtype" => qtype, "rcode" => answer.rcode.to_str(), "transport" => transport.as_str())
            .increment(1);
        let response = builder.build(
            header,
            answer.answers.iter(),
            std::iter::empty(),
            answer.soa.iter(),
            answer.additionals.iter(),
        );
        let mut buf = Vec::with_capacity(512);
        let encoded = {
            let mut encoder = BinEncoder::new(&mut buf);
            encoder.set_max_size(match transport {
                // Too long for the client's buffer: hickory sets TC and the client asks over TCP.
                Transport::Udp => request.max_payload().min(EDNS_PAYLOAD),
                Transport::Tcp => u16::MAX,
            });
            response.destructive_emit(&mut encoder)
        };
        let bytes = match encoded {
            Ok(_) => Some(buf),
            Err(e) => {
                tracing::error!(error = %e, "cannot encode an answer; sending SERVFAIL");
                Message::error_msg(request.id(), request.op_code(), ResponseCode::ServFail)
                    .to_vec()
                    .ok()
            }
        };
        Reply { bytes, bad: false }
    }
}

/// Serves DNS over UDP until `shutdown`.
pub async fn serve_udp(server: Arc<DnsServer>, socket: UdpSocket, shutdown: CancellationToken) {
    let mut buf = vec![0u8; 65535];
    loop {
        let (len, peer) = tokio::select! {
            r = socket.recv_from(&mut buf) => match r {
                Ok(x) => x,
                Err(e) => {
                    // An ICMP error of an earlier answer and the like: keep serving.
                    tracing::debug!(error = %e, "udp receive failed");
                    continue;
                }
            },
            _ = shutdown.cancelled() => return,
        };
        let Some(packet) = buf.get(..len) else {
            continue;
        };
        if let Some(answer) = server.handle(packet, Transport::Udp).bytes
            && let Err(e) = socket.send_to(&answer, peer).await
        {
            tracing::debug!(%peer, error = %e, "udp send failed");
        }
    }
}

/// Serves DNS over TCP (RFC 7766: two-byte length, then the message; several per connection) until
/// `shutdown`.
pub async fn serve_tcp(
    server: Arc<DnsServer>,
    listener: TcpListener,
    tasks: TaskTracker,
    shutdown: CancellationToken,
) {
    let slots = Arc::new(Semaphore::new(MAX_TCP_CONNECTIONS));
    loop {
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(error = %e, "tcp accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.cancelled() => return,
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            tracing::warn!(%peer, "too many DNS TCP connections; closing this one");
            continue;
        };
        let (server, stop) = (server.clone(), shutdown.clone());
        tasks.spawn(async move {
            tokio::select! {
                _ = connection(&server, stream, peer) => {}
                _ = stop.cancelled() => {}
            }
            drop(permit);
        });
    }
}

async fn connection(server: &DnsServer, mut stream: TcpStream, peer: SocketAddr) {
    loop {
        let mut len = [0u8; 2];
        match tokio::time::timeout(TCP_IDLE, stream.read_exact(&mut len)).await {
            Ok(Ok(_)) => {}
            // Closed or idle between questions: a normal end.
            _ => return,
        }
        let mut packet = vec![0u8; usize::from(u16::from_be_bytes(len))];
        match tokio::time::timeout(TCP_IDLE, stream.read_exact(&mut packet)).await {
            Ok(Ok(_)) => {}
            _ => {
                // A frame cut short (closed, or stalled): malformed.
                server.bad(Transport::Tcp, None);
                tracing::debug!(%peer, "tcp frame cut short");
                return;
            }
        }
        let reply = server.handle(&packet, Transport::Tcp);
        if let Some(answer) = reply.bytes {
            let Ok(n) = u16::try_from(answer.len()) else {
                return;
            };
            let mut framed = Vec::with_capacity(answer.len() + 2);
            framed.extend_from_slice(&n.to_be_bytes());
            framed.extend_from_slice(&answer);
            if stream.write_all(&framed).await.is_err() {
                return;
            }
        }
        if reply.bad {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::health::HealthBoard;
    use crate::records::Zones;
    use hickory_server::proto::op::Query;
    use hickory_server::proto::rr::{Name, RecordType};

    fn server() -> DnsServer {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../topology/two-site.toml");
        let t = topology::Topology::load(path).expect("topology");
        let auth = Authority::new(Zones::build(&t).expect("zones"), HealthBoard::default());
        DnsServer::new(Arc::new(auth), Arc::new(Stats::default()))
    }

    fn query(name: &str, qtype: RecordType) -> Vec<u8> {
        let mut m = Message::new();
        m.set_id(4242);
        m.add_query(Query::query(Name::from_ascii(name).expect("name"), qtype));
        m.to_vec().expect("encode")
    }

    #[test]
    fn answers_a_query_authoritatively() {
        let s = server();
        let reply = s.handle(&query("acme.example.", RecordType::MX), Transport::Udp);
        let m = Message::from_vec(&reply.bytes.expect("answer")).expect("decode");
        assert_eq!(m.id(), 4242);
        assert!(m.authoritative());
        assert_eq!(m.answers().len(), 2);
        assert_eq!(m.additionals().len(), 4);
        assert_eq!(s.stats.queries.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn garbage_is_counted_and_never_panics() {
        let s = server();
        let packets: Vec<Vec<u8>> = vec![
            vec![],
            b"hello".to_vec(),
            vec![0xff; 12],
            vec![0; 64],
            // A header that claims a question, then a compression pointer to itself.
            vec![8, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0xc0, 12, 0, 1, 0, 1],
            b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
        ];
        for p in &packets {
            let reply = s.handle(p, Transport::Udp);
            if let Some(bytes) = reply.bytes {
                let m = Message::from_vec(&bytes).expect("our answers decode");
                assert_ne!(m.response_code(), ResponseCode::NoError);
            }
        }
        assert!(s.stats.bad_requests.load(Ordering::Relaxed) >= 4);
        // A short packet with a readable header gets FORMERR.
        let mut header_only = query("acme.example.", RecordType::A);
        header_only.truncate(14);
        let reply = s.handle(&header_only, Transport::Udp);
        assert!(reply.bad);
        let m = Message::from_vec(&reply.bytes.expect("formerr")).expect("decode");
        assert_eq!(m.response_code(), ResponseCode::FormErr);
    }
}
