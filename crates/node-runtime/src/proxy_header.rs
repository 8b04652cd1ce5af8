//! PROXY protocol v2 (HAProxy's spec) between the fabric's edge and its servers: a router or a
//! redirector opens its connection to the next hop with a binary header naming the real client, so the
//! mail server's logs and limits see who is connecting. Only connections from the topology's routers
//! and redirectors may (and must) carry the header; anyone else's bytes are the protocol itself.
//!
//! Parsing and building are `ppp`'s; this module adds the socket reading with a bound and a deadline.

use std::net::SocketAddr;
use std::time::Duration;

use ppp::v2;
use tokio::io::{AsyncRead, AsyncReadExt};

/// The fixed part of a v2 header: the 12-byte signature, version/command, family/protocol, length.
const FIXED: usize = 16;
/// The longest header accepted (addresses plus a few TLVs); longer is refused.
pub const MAX_HEADER: usize = 1024;

#[derive(Debug, thiserror::Error)]
pub enum ProxyHeaderError {
    #[error("no PROXY v2 header within {0:?}")]
    Timeout(Duration),
    #[error("connection closed before the PROXY v2 header was complete")]
    Closed,
    #[error("PROXY v2 header of {0} bytes is over the {MAX_HEADER}-byte limit")]
    TooLong(usize),
    #[error("bad PROXY v2 header: {0}")]
    Parse(String),
    #[error("reading the PROXY v2 header: {0}")]
    Io(#[from] std::io::Error),
}

/// Reads one v2 header from the start of `stream`. `Ok(Some(client))` for a PROXY command with TCP
/// addresses; `Ok(None)` for a LOCAL command (a health check: the connection speaks for itself).
pub async fn read<S: AsyncRead + Unpin>(
    stream: &mut S,
    deadline: Duration,
) -> Result<Option<SocketAddr>, ProxyHeaderError> {
    tokio::time::timeout(deadline, read_now(stream))
        .await
        .map_err(|_| ProxyHeaderError::Timeout(deadline))?
}

async fn read_now<S: AsyncRead + Unpin>(
    stream: &mut S,
) -> Result<Option<SocketAddr>, ProxyHeaderError> {
    let mut buf = vec![0u8; FIXED];
    read_exact(stream, &mut buf).await?;
    if &buf[..v2::PROTOCOL_PREFIX.len()] != v2::PROTOCOL_PREFIX {
        return Err(ProxyHeaderError::Parse("missing the v2 signature".into()));
    }
    let rest = u16::from_be_bytes([buf[14], buf[15]]) as usize;
    if FIXED + rest > MAX_HEADER {
        return Err(ProxyHeaderError::TooLong(FIXED + rest));
    }
    buf.resize(FIXED + rest, 0);
    read_exact(stream, &mut buf[FIXED..]).await?;
    let header =
        v2::Header::try_from(buf.as_slice()).map_err(|e| ProxyHeaderError::Parse(e.to_string()))?;
    Ok(match (header.command, header.addresses) {
        (v2::Command::Local, _) => None,
        (v2::Command::Proxy, v2::Addresses::IPv4(a)) => {
            Some(SocketAddr::from((a.source_address, a.source_port)))
        }
        (v2::Command::Proxy, v2::Addresses::IPv6(a)) => {
            Some(SocketAddr::from((a.source_address, a.source_port)))
        }
        (v2::Command::Proxy, other) => {
            return Err(ProxyHeaderError::Parse(format!(
                "a PROXY command must carry TCP addresses, not {:?}",
                other.address_family()
            )));
        }
    })
}

async fn read_exact<S: AsyncRead + Unpin>(
    stream: &mut S,
    buf: &mut [u8],
) -> Result<(), ProxyHeaderError> {
    match stream.read_exact(buf).await {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Err(ProxyHeaderError::Closed),
        Err(e) => Err(e.into()),
    }
}

/// Opens a proxy's connection to its next hop from the proxy's own address `source` (servers take a
/// PROXY header only from a router's or redirector's address, so the kernel must not pick 127.0.0.1),
/// within `timeout`, with TCP_NODELAY. Ports in TIME_WAIT from earlier sessions may be bound again
/// (the 4-tuple still differs). The caller writes the header.
pub async fn connect_from(
    source: std::net::IpAddr,
    to: SocketAddr,
    timeout: Duration,
) -> std::io::Result<tokio::net::TcpStream> {
    let socket = match to {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    if source.is_ipv4() == to.is_ipv4() {
        let _ = socket.set_reuseaddr(true);
        socket.bind(SocketAddr::new(source, 0))?;
    }
    let stream = tokio::time::timeout(timeout, socket.connect(to))
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

/// The header a proxy sends first on a connection it opens for `client`, who connected to `local`.
pub fn encode(client: SocketAddr, local: SocketAddr) -> Vec<u8> {
    let version_command = v2::Version::Two as u8 | v2::Command::Proxy as u8;
    // Mixed families cannot share a header; the fabric is IPv4, so fall back to LOCAL if they differ.
    if client.is_ipv4() != local.is_ipv4() {
        return encode_local();
    }
    v2::Builder::with_addresses(version_command, v2::Protocol::Stream, (client, local))
        .build()
        .unwrap_or_else(|_| encode_local())
}

/// A LOCAL header: the connection is the proxy's own (a health check), not a client's.
pub fn encode_local() -> Vec<u8> {
    let mut h = v2::PROTOCOL_PREFIX.to_vec();
    h.extend_from_slice(&[
        v2::Version::Two as u8 | v2::Command::Local as u8,
        0x00,
        0,
        0,
    ]);
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn proxy_header_round_trips_the_client_address() {
        let client: SocketAddr = "203.0.113.7:40123".parse().expect("valid");
        let local: SocketAddr = "127.10.1.5:2525".parse().expect("valid");
        let mut bytes = encode(client, local);
        assert_eq!(&bytes[..12], v2::PROTOCOL_PREFIX);
        assert_eq!(bytes.len(), 16 + 12, "IPv4 addresses take 12 bytes");
        bytes.extend_from_slice(b"EHLO x\r\n");
        let mut reader = bytes.as_slice();
        let got = read(&mut reader, Duration::from_secs(1))
            .await
            .expect("valid");
        assert_eq!(got, Some(client));
        assert_eq!(
            reader, b"EHLO x\r\n",
            "the protocol bytes after it are left unread"
        );
    }

    #[tokio::test]
    async fn local_header_means_no_client() {
        let bytes = encode_local();
        let got = read(&mut bytes.as_slice(), Duration::from_secs(1))
            .await
            .expect("valid");
        assert_eq!(got, None);
    }

    #[tokio::test]
    async fn plain_protocol_bytes_are_not_a_header() {
        let mut input: &[u8] = b"EHLO client.example\r\n";
        let err = read(&mut input, Duration::from_secs(1))
            .await
            .expect_err("must be refused");
        assert!(matches!(err, ProxyHeaderError::Parse(_)), "{err}");
    }

    #[tokio::test]
    async fn oversized_and_truncated_headers_are_refused() {
        let mut big = v2::PROTOCOL_PREFIX.to_vec();
        big.extend_from_slice(&[0x21, 0x11, 0xff, 0xff]);
        let err = read(&mut big.as_slice(), Duration::from_secs(1))
            .await
            .expect_err("must be refused");
        assert!(matches!(err, ProxyHeaderError::TooLong(_)), "{err}");
        let full = encode(
            "10.0.0.1:1".parse().expect("valid"),
            "10.0.0.2:2".parse().expect("valid"),
        );
        let err = read(&mut &full[..20], Duration::from_secs(1))
            .await
            .expect_err("must be refused");
        assert!(matches!(err, ProxyHeaderError::Closed), "{err}");
    }

    #[tokio::test]
    async fn silence_times_out() {
        let (mut a, _b) = tokio::io::duplex(64);
        let err = read(&mut a, Duration::from_millis(50))
            .await
            .expect_err("must be refused");
        assert!(matches!(err, ProxyHeaderError::Timeout(_)), "{err}");
    }
}
