//! Is a mail server healthy? Its admin `/health` answers 200 within a second, or one of its service
//! ports greets with its protocol's line within two seconds. A SIGSTOPped process accepts TCP (the
//! kernel completes the handshake) but neither greets nor answers, so it counts as failed.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use topology::Node;

pub const HEALTH_TIMEOUT: Duration = Duration::from_secs(1);
pub const GREETING_TIMEOUT: Duration = Duration::from_secs(2);

/// The status code of `GET path` on `addr`, or `None` if nothing answered within `timeout`.
pub async fn http_status(addr: SocketAddr, path: &str, timeout: Duration) -> Option<u16> {
    let ask = async {
        let mut stream = TcpStream::connect(addr).await.ok()?;
        let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.ok()?;
        let mut buf = [0u8; 64];
        let mut len = 0;
        // "HTTP/1.1 200 " is all we need.
        while len < 12 {
            let n = stream.read(&mut buf[len..]).await.ok()?;
            if n == 0 {
                break;
            }
            len += n;
        }
        let head = std::str::from_utf8(&buf[..len]).ok()?;
        head.split_whitespace().nth(1)?.parse().ok()
    };
    tokio::time::timeout(timeout, ask).await.ok().flatten()
}

/// The greeting a healthy server of `service` sends first.
fn greeting_prefix(service: &str) -> &'static [u8] {
    match service {
        "pop3" => b"+OK",
        "imap" => b"* OK",
        _ => b"220",
    }
}

/// Whether `addr` accepts a connection and greets like a healthy `service` server within `timeout`.
pub async fn greets(addr: SocketAddr, service: &str, timeout: Duration) -> bool {
    let prefix = greeting_prefix(service);
    let check = async {
        let mut stream = TcpStream::connect(addr).await.ok()?;
        let mut buf = vec![0u8; prefix.len()];
        stream.read_exact(&mut buf).await.ok()?;
        Some(buf == prefix)
    };
    tokio::time::timeout(timeout, check)
        .await
        .ok()
        .flatten()
        .unwrap_or(false)
}

/// The service a node's health is judged by: SMTP for an Internet mail server, IMAP for an intranet one.
fn probe_service(node: &Node) -> Option<(&'static str, SocketAddr)> {
    ["smtp", "imap", "pop3", "submission"]
        .into_iter()
        .find_map(|s| node.service_addr(s).map(|a| (s, a)))
}

/// What of the node answered: `"health"` (admin `/health` gave 200), `"greeting"` (a service port
/// greeted), or `None` when neither did in time.
pub async fn answered_by(node: &Node) -> Option<&'static str> {
    let health =
        async { http_status(node.admin_addr(), "/health", HEALTH_TIMEOUT).await == Some(200) };
    let greeting = async {
        match probe_service(node) {
            Some((service, addr)) => greets(addr, service, GREETING_TIMEOUT).await,
            None => false,
        }
    };
    let (health, greeting) = tokio::join!(health, greeting);
    match (health, greeting) {
        (true, _) => Some("health"),
        (false, true) => Some("greeting"),
        (false, false) => None,
    }
}

/// Whether the node's admin `/ready` answers 200.
pub async fn ready(node: &Node) -> bool {
    http_status(node.admin_addr(), "/ready", HEALTH_TIMEOUT).await == Some(200)
}
