//! Handing a client's TCP connection to the next hop on the same host instead of relaying its bytes.
//!
//! A router hands what its access list allows to its site's redirector, and a redirector hands a
//! session to the server it picked, by passing the connection's descriptor (`SCM_RIGHTS`) over a
//! unix `SOCK_SEQPACKET` socket in the abstract namespace, named after the receiver's service
//! address (`mail-fabric-handoff/127.10.1.11:2525`). The receiver then serves the client's own
//! socket: no hop copies the session's bytes, so the edge costs a session a few local messages when
//! it opens instead of two user-space relays on every round trip (a load balancer with direct server
//! return leaves the data path the same way). The hops still decide everything: the router's access
//! list, the redirector's pick, retries and open-session counts are unchanged.
//!
//! Abstract unix names belong to a network namespace, so this path exists only where sender and
//! receiver share a host's network stack (the loopback fabric). Elsewhere (a container per node)
//! nothing answers the name and the sender relays over TCP with a PROXY header, as it always did.
//!
//! The exchange, one [`RECORD`]-byte record per message, over one channel per (sender process,
//! receiver address):
//! - `Offer(id, client, hop)` carries two descriptors: the client's socket and a *claim token*, an
//!   eventfd holding a count of 1 that the sender keeps a descriptor of too;
//! - the receiver reads the token (nonblocking) and only if it got it serves the session at once,
//!   saying nothing;
//! - `Closed(id)` when the receiver's session has ended, so the sender can count open sessions.
//!
//! An offer without a token is a gift ([`Target::give`]): the receiver serves it at once and answers
//! nothing, with the guarantees of relaying to it (a router gives its flows to its redirector so,
//! which costs the router one wakeup per session). With a token ([`Target::hand`]), reading the
//! token takes its whole count at once, so exactly one side owns the session. The sender keeps its
//! copy of the client's socket, out of its poller, until it hears `Closed` or a timeout passes
//! ([`Handed::outcome`]). If nothing was heard by then (the receiver froze) or the channel broke (it
//! died), it takes the token back itself: if it gets it, the receiver never claimed the session and
//! never will (a frozen server that wakes finds the token gone and closes its copy), and the sender
//! offers the session elsewhere; if it does not, the receiver owns it and the sender drops its copy.
//! A session costs the sender two wakeups (the offer it sends and the `Closed` it reads) and the
//! receiver one message. So a dead or frozen receiver costs the client nothing, two servers never
//! greet the same client, and the session's path is one message long. Only a process of the same
//! user may connect (`SO_PEERCRED`), and the client's address travels in the offer, as a PROXY header
//! would carry it.

use std::collections::HashMap;
use std::ffi::OsString;
use std::io::{self, IoSlice, IoSliceMut};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStringExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use nix::sys::socket::{self as nix_socket, MsgFlags};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio_seqpacket::ancillary::OwnedAncillaryMessage;
use tokio_seqpacket::{UnixSeqpacket, UnixSeqpacketListener};
use tokio_util::sync::CancellationToken;

/// Bytes in every record: kind (1), id (8), client address (4) and port (2), hop address (4), padding.
pub const RECORD: usize = 24;

/// Room for the descriptors of one record (an offer carries two).
const ANCILLARY: usize = 64;

/// How long a sender leaves a receiver alone after nothing answered its name.
const RETRY_UNAVAILABLE: Duration = Duration::from_secs(1);

/// Why a connection could not be handed over; the sender still owns it. Only after
/// [`HandoffError::Unavailable`] and [`HandoffError::NotV4`] is it worth relaying to the same
/// receiver over TCP; the others say the receiver is there but failed, like a refused connect.
#[derive(Debug, thiserror::Error)]
pub enum HandoffError {
    #[error("nothing on this host takes handed-off connections for {0}")]
    Unavailable(SocketAddr),
    #[error("the handoff channel to {0} broke: {1}")]
    Broken(SocketAddr, String),
    #[error("{0} did not take the connection within {1:?}")]
    Timeout(SocketAddr, Duration),
    #[error("only IPv4 clients are handed off")]
    NotV4,
}

impl HandoffError {
    /// Whether the receiver simply is not reachable this way (relay over TCP instead).
    pub fn is_unavailable(&self) -> bool {
        matches!(self, HandoffError::Unavailable(_) | HandoffError::NotV4)
    }
}

/// The abstract socket name a receiver listens on for `service_addr`.
pub fn socket_name(service_addr: SocketAddr) -> String {
    format!("mail-fabric-handoff/{service_addr}")
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Offer = 1,
    Closed = 5,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Record {
    kind: Kind,
    id: u64,
    client: SocketAddrV4,
    hop: Ipv4Addr,
}

impl Record {
    fn plain(kind: Kind, id: u64) -> Record {
        Record {
            kind,
            id,
            client: SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0),
            hop: Ipv4Addr::UNSPECIFIED,
        }
    }

    fn encode(&self) -> [u8; RECORD] {
        let mut b = [0u8; RECORD];
        b[0] = self.kind as u8;
        b[1..9].copy_from_slice(&self.id.to_le_bytes());
        b[9..13].copy_from_slice(&self.client.ip().octets());
        b[13..15].copy_from_slice(&self.client.port().to_be_bytes());
        b[15..19].copy_from_slice(&self.hop.octets());
        b
    }

    fn decode(b: &[u8]) -> Option<Record> {
        if b.len() != RECORD {
            return None;
        }
        let kind = match b[0] {
            1 => Kind::Offer,
            5 => Kind::Closed,
            _ => return None,
        };
        let id = u64::from_le_bytes(b[1..9].try_into().ok()?);
        let ip = Ipv4Addr::new(b[9], b[10], b[11], b[12]);
        let port = u16::from_be_bytes([b[13], b[14]]);
        let hop = Ipv4Addr::new(b[15], b[16], b[17], b[18]);
        Some(Record {
            kind,
            id,
            client: SocketAddrV4::new(ip, port),
            hop,
        })
    }
}

/// The abstract unix address (a leading NUL) a receiver listens on for `service_addr`.
fn abstract_path(service_addr: SocketAddr) -> PathBuf {
    let mut name = vec![0u8];
    name.extend_from_slice(socket_name(service_addr).as_bytes());
    PathBuf::from(OsString::from_vec(name))
}

/// Receives one record and the descriptors it carried; `None` at the end of the channel. A record
/// of the wrong size or kind ends the channel (an error).
async fn recv(sock: &UnixSeqpacket) -> io::Result<Option<(Record, Vec<OwnedFd>)>> {
    let mut buf = [0u8; RECORD + 1];
    let mut space = [0u8; ANCILLARY];
    let (info, ancillary) = sock
        .recv_vectored_with_ancillary(&mut [IoSliceMut::new(&mut buf)], &mut space)
        .await?;
    // Every descriptor that came along is owned (and closed unless kept) from here on.
    let mut fds = Vec::new();
    for m in ancillary.into_messages() {
        if let OwnedAncillaryMessage::FileDescriptors(received) = m {
            fds.extend(received);
        }
    }
    let n = info.bytes_read();
    if n == 0 {
        return Ok(None);
    }
    let rec = Record::decode(&buf[..n]).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("a handoff record of {n} bytes"),
        )
    })?;
    Ok(Some((rec, fds)))
}

/// Takes the claim token: true for exactly one of all who try. The token is an eventfd made
/// nonblocking with a count of 1, and a read takes the whole count at once (any later read finds
/// nothing), so reading it is the claim.
fn claim(token: impl AsFd) -> bool {
    use nix::fcntl::{FcntlArg, OFlag, fcntl};
    // Whatever a sender passed, the read must not wait: a token that is not nonblocking is not one.
    let nonblocking = fcntl(&token, FcntlArg::F_GETFL)
        .is_ok_and(|flags| OFlag::from_bits_truncate(flags).contains(OFlag::O_NONBLOCK));
    let mut count = [0u8; 8];
    nonblocking && matches!(nix::unistd::read(token, &mut count), Ok(8))
}

mod receiver;
mod sender;

pub use receiver::{Incoming, SessionDone, Start, listen};
pub use sender::{Handed, Refused, Target, target};

/// Describes the handoff metrics (every node that sends or receives).
pub fn describe_metrics() {
    metrics::describe_counter!(
        "fabric_handoff_offers_total",
        "Connections this node offered to the next hop on the same host, by result: taken, unavailable (relayed over TCP), broken or timeout (token taken back: offered elsewhere)."
    );
    metrics::describe_counter!(
        "fabric_handoff_received_total",
        "Connections handed to this node by a router or redirector on the same host."
    );
    metrics::describe_counter!(
        "fabric_handoff_late_total",
        "Offers this node read after their sender had taken the claim token back (it was too slow to answer): closed, never served."
    );
    metrics::describe_counter!(
        "fabric_handoff_refused_total",
        "Handoff channels refused because their process ran as another user."
    );
}

#[cfg(test)]
mod tests;
