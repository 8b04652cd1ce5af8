//! A small SMTP client (RFC 5321) for delivering one message to one remote MX, with a result per
//! recipient. (lettre and mail-send both hide per-recipient RCPT answers behind one error for the whole
//! message, and bring their own TLS and DNS stacks we do not use yet; what the fabric needs is a
//! few hundred lines: greeting, EHLO, MAIL, RCPT each, DATA with dot-stuffing, QUIT.)
//!
//! Every read and write has a deadline; replies are read with bounded lines and a bounded number of
//! lines, so a hostile or broken server cannot make the worker hang or buffer without limit.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpSocket, TcpStream};

/// RFC 5321 4.5.3.1.5: a reply line is at most 512 octets; we allow some slack.
const MAX_REPLY_LINE: u64 = 2048;
const MAX_REPLY_LINES: usize = 100;

/// The answer for one recipient.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The remote MX took the message for this recipient (250 after DATA).
    Delivered(String),
    /// Try again later (connection failure, 4xx).
    Temporary(String),
    /// Never (5xx): the sender gets a bounce.
    Permanent(String),
}

#[derive(Debug, Clone)]
struct Reply {
    code: u16,
    text: String,
}

impl Reply {
    fn line(&self) -> String {
        format!("{} {}", self.code, self.text)
    }
}

#[derive(Debug, thiserror::Error)]
enum Error {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    #[error("bad reply: {0}")]
    Protocol(String),
}

struct Conn {
    reader: BufReader<tokio::net::tcp::OwnedReadHalf>,
    writer: tokio::net::tcp::OwnedWriteHalf,
    timeout: Duration,
}

impl Conn {
    async fn reply(&mut self) -> Result<Reply, Error> {
        let mut text = Vec::new();
        for _ in 0..MAX_REPLY_LINES {
            let mut line = Vec::new();
            let mut limited = (&mut self.reader).take(MAX_REPLY_LINE);
            let read = limited.read_until(b'\n', &mut line);
            let n = tokio::time::timeout(self.timeout, read)
                .await
                .map_err(|_| Error::Timeout(self.timeout))??;
            if n == 0 {
                return Err(Error::Protocol("connection closed".into()));
            }
            let line = String::from_utf8_lossy(&line);
            let line = line.trim_end_matches(['\r', '\n']);
            let code = line
                .get(..3)
                .and_then(|c| c.parse::<u16>().ok())
                .filter(|c| (200..600).contains(c))
                .ok_or_else(|| Error::Protocol(format!("{line:?}")))?;
            text.push(line.get(4..).unwrap_or("").to_string());
            if line.as_bytes().get(3) != Some(&b'-') {
                return Ok(Reply {
                    code,
                    text: text.join(" / "),
                });
            }
        }
        Err(Error::Protocol("reply with too many lines".into()))
    }

    async fn send(&mut self, bytes: &[u8]) -> Result<(), Error> {
        tokio::time::timeout(self.timeout, async {
            self.writer.write_all(bytes).await?;
            self.writer.flush().await
        })
        .await
        .map_err(|_| Error::Timeout(self.timeout))??;
        Ok(())
    }

    async fn cmd(&mut self, line: &str) -> Result<Reply, Error> {
        self.send(format!("{line}\r\n").as_bytes()).await?;
        self.reply().await
    }
}

/// A reply turned into an outcome for the recipients it concerns.
fn outcome(r: &Reply, step: &str) -> Outcome {
    let text = format!("{step}: {}", r.line());
    match r.code {
        200..=399 => Outcome::Delivered(text),
        400..=499 => Outcome::Temporary(text),
        _ => Outcome::Permanent(text),
    }
}

/// `message` dot-stuffed (RFC 5321 4.5.2) and ended with CRLF `.` CRLF. The message is already
/// CRLF-only (the fabric refuses bare CR or LF at the door).
pub fn dot_stuff(message: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(message.len() + 64);
    let mut at_line_start = true;
    for &b in message {
        if at_line_start && b == b'.' {
            out.push(b'.');
        }
        out.push(b);
        at_line_start = b == b'\n';
    }
    if !out.ends_with(b"\r\n") {
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b".\r\n");
    out
}

/// Delivers `message` from `from` (empty for the null path) to `rcpts` at `mx`; one outcome per
/// recipient, in order. Never fails as a whole: a connection problem is a temporary outcome for all.
pub async fn deliver(
    mx: SocketAddr,
    helo: &str,
    from: &str,
    rcpts: &[String],
    message: &[u8],
    timeout: Duration,
) -> Vec<Outcome> {
    let options = Options {
        source: None,
        greeting_timeout: timeout,
        timeout,
    };
    deliver_with(options, mx, helo, from, rcpts, message).await
}

/// How a delivery connects and how long it waits.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// The local address to connect from (a fabric node connects from its own address, so the
    /// server can tell who it is); `None`: whatever the kernel picks.
    pub source: Option<IpAddr>,
    /// Connecting and reading the greeting (a frozen server accepts TCP and never greets).
    pub greeting_timeout: Duration,
    /// Every later read and write.
    pub timeout: Duration,
}

/// [`deliver`] with [`Options`].
pub async fn deliver_with(
    options: Options,
    mx: SocketAddr,
    helo: &str,
    from: &str,
    rcpts: &[String],
    message: &[u8],
) -> Vec<Outcome> {
    match session(options, mx, helo, from, rcpts, message).await {
        Ok(o) => o,
        Err(e) => {
            let text = format!("{mx}: {e}");
            rcpts
                .iter()
                .map(|_| Outcome::Temporary(text.clone()))
                .collect()
        }
    }
}

async fn connect(source: Option<IpAddr>, mx: SocketAddr) -> std::io::Result<TcpStream> {
    match source {
        Some(ip) if ip.is_ipv4() == mx.is_ipv4() => {
            let socket = if mx.is_ipv4() {
                TcpSocket::new_v4()?
            } else {
                TcpSocket::new_v6()?
            };
            socket.bind(SocketAddr::new(ip, 0))?;
            socket.connect(mx).await
        }
        _ => TcpStream::connect(mx).await,
    }
}

async fn session(
    options: Options,
    mx: SocketAddr,
    helo: &str,
    from: &str,
    rcpts: &[String],
    message: &[u8],
) -> Result<Vec<Outcome>, Error> {
    let greeting_timeout = options.greeting_timeout;
    let stream = tokio::time::timeout(greeting_timeout, connect(options.source, mx))
        .await
        .map_err(|_| Error::Timeout(greeting_timeout))??;
    let _ = stream.set_nodelay(true);
    let (r, w) = stream.into_split();
    let mut c = Conn {
        reader: BufReader::new(r),
        writer: w,
        timeout: greeting_timeout,
    };
    let all = |o: Outcome| rcpts.iter().map(|_| o.clone()).collect::<Vec<_>>();
    let greeting = c.reply().await?;
    c.timeout = options.timeout;
    if greeting.code != 220 {
        let _ = c.cmd("QUIT").await;
        return Ok(all(outcome(&greeting, "greeting")));
    }
    let mut ehlo = c.cmd(&format!("EHLO {helo}")).await?;
    if ehlo.code != 250 {
        ehlo = c.cmd(&format!("HELO {helo}")).await?;
        if ehlo.code != 250 {
            let _ = c.cmd("QUIT").await;
            return Ok(all(outcome(&ehlo, "HELO")));
        }
    }
    let eight_bit = message.iter().any(|b| *b >= 0x80);
    let body_param = if eight_bit && ehlo.text.to_ascii_uppercase().contains("8BITMIME") {
        " BODY=8BITMIME"
    } else {
        ""
    };
    let mail = c.cmd(&format!("MAIL FROM:<{from}>{body_param}")).await?;
    if mail.code != 250 {
        let _ = c.cmd("QUIT").await;
        return Ok(all(outcome(&mail, "MAIL FROM")));
    }
    let mut results = Vec::with_capacity(rcpts.len());
    let mut accepted = 0;
    for rcpt in rcpts {
        let r = c.cmd(&format!("RCPT TO:<{rcpt}>")).await?;
        let o = outcome(&r, "RCPT TO");
        if matches!(o, Outcome::Delivered(_)) {
            accepted += 1;
        }
        results.push(o);
    }
    if accepted == 0 {
        let _ = c.cmd("QUIT").await;
        return Ok(results);
    }
    let data = c.cmd("DATA").await?;
    if data.code != 354 {
        let o = outcome(&data, "DATA");
        let o = if matches!(o, Outcome::Delivered(_)) {
            Outcome::Temporary(format!("DATA: unexpected {}", data.line()))
        } else {
            o
        };
        let _ = c.cmd("QUIT").await;
        return Ok(results
            .into_iter()
            .map(|r| match r {
                Outcome::Delivered(_) => o.clone(),
                other => other,
            })
            .collect());
    }
    c.send(&dot_stuff(message)).await?;
    let end = c.reply().await?;
    let o = outcome(&end, "end of DATA");
    let _ = c.cmd("QUIT").await;
    Ok(results
        .into_iter()
        .map(|r| match r {
            Outcome::Delivered(_) => o.clone(),
            other => other,
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::dot_stuff;

    #[test]
    fn dot_stuffing_doubles_leading_dots_and_ends_with_a_lone_dot() {
        assert_eq!(
            dot_stuff(b".a\r\nb\r\n.\r\n..c\r\n"),
            b"..a\r\nb\r\n..\r\n...c\r\n.\r\n".to_vec()
        );
        assert_eq!(dot_stuff(b"x"), b"x\r\n.\r\n".to_vec());
    }
}
