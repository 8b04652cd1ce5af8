//! A minimal SMTP client (RFC 5321) for the notice mails: EHLO, MAIL FROM, one RCPT TO, DATA with
//! dot-stuffing, QUIT. Replies are read with a cap on line length and count, every step under a
//! deadline. A 4xx is temporary (retry later), a 5xx permanent.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// The longest reply line read (RFC 5321 4.5.3.1.5: 512 octets).
const MAX_REPLY_LINE: u64 = 512;
/// The most lines of one multi-line reply.
const MAX_REPLY_LINES: usize = 100;

#[derive(Debug, thiserror::Error)]
pub enum SendError {
    #[error("connecting to {addr}: {source}")]
    Connect {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("talking to {addr}: {source}")]
    Io {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("{addr} did not answer within {timeout:?}")]
    Timeout { addr: SocketAddr, timeout: Duration },
    #[error("{addr} answered {stage} with {code} {text}")]
    Refused {
        addr: SocketAddr,
        stage: &'static str,
        code: u16,
        text: String,
    },
    #[error("{addr} sent a malformed reply: {line:?}")]
    Malformed { addr: SocketAddr, line: String },
}

impl SendError {
    /// A 5xx: trying again will not help.
    pub fn is_permanent(&self) -> bool {
        matches!(self, SendError::Refused { code, .. } if *code >= 500)
    }
}

/// Dot-stuffs `body` (RFC 5321 4.5.2), makes sure it ends with CRLF, and adds the final `.`.
pub fn data_block(body: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + 16);
    for line in body.split_terminator("\r\n") {
        if line.starts_with('.') {
            out.push(b'.');
        }
        out.extend_from_slice(line.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b".\r\n");
    out
}

struct Conn {
    addr: SocketAddr,
    reader: BufReader<tokio::net::tcp::OwnedReadHalf>,
    writer: tokio::net::tcp::OwnedWriteHalf,
}

impl Conn {
    async fn reply(&mut self) -> Result<(u16, String), SendError> {
        let mut text = Vec::new();
        for _ in 0..MAX_REPLY_LINES {
            let mut line = String::new();
            let n = (&mut self.reader)
                .take(MAX_REPLY_LINE)
                .read_line(&mut line)
                .await
                .map_err(|source| SendError::Io {
                    addr: self.addr,
                    source,
                })?;
            if n == 0 {
                return Err(SendError::Io {
                    addr: self.addr,
                    source: std::io::ErrorKind::UnexpectedEof.into(),
                });
            }
            let line = line.trim_end_matches(['\r', '\n']).to_string();
            let code = line
                .get(..3)
                .and_then(|c| c.parse::<u16>().ok())
                .filter(|c| (200..600).contains(c));
            let Some(code) = code else {
                return Err(SendError::Malformed {
                    addr: self.addr,
                    line,
                });
            };
            text.push(line.get(4..).unwrap_or("").to_string());
            if line.as_bytes().get(3) != Some(&b'-') {
                return Ok((code, text.join(" ")));
            }
        }
        Err(SendError::Malformed {
            addr: self.addr,
            line: "too many reply lines".into(),
        })
    }

    async fn step(&mut self, stage: &'static str, line: &[u8], want: u16) -> Result<(), SendError> {
        if !line.is_empty() {
            self.writer
                .write_all(line)
                .await
                .map_err(|source| SendError::Io {
                    addr: self.addr,
                    source,
                })?;
        }
        let (code, text) = self.reply().await?;
        if code / 100 != want / 100 {
            return Err(SendError::Refused {
                addr: self.addr,
                stage,
                code,
                text,
            });
        }
        Ok(())
    }
}

/// Sends one message to `rcpt` through the MX at `addr` (null reverse path when `from` is empty);
/// returns once the server answered 250 to the end of DATA.
pub async fn send(
    addr: SocketAddr,
    helo: &str,
    from: &str,
    rcpt: &str,
    body: &str,
    timeout: Duration,
) -> Result<(), SendError> {
    let conversation = async {
        let stream = TcpStream::connect(addr)
            .await
            .map_err(|source| SendError::Connect { addr, source })?;
        let (r, w) = stream.into_split();
        let mut c = Conn {
            addr,
            reader: BufReader::new(r),
            writer: w,
        };
        c.step("the greeting", b"", 220).await?;
        c.step("EHLO", format!("EHLO {helo}\r\n").as_bytes(), 250)
            .await?;
        c.step(
            "MAIL FROM",
            format!("MAIL FROM:<{from}>\r\n").as_bytes(),
            250,
        )
        .await?;
        c.step("RCPT TO", format!("RCPT TO:<{rcpt}>\r\n").as_bytes(), 250)
            .await?;
        c.step("DATA", b"DATA\r\n", 354).await?;
        c.step("the end of DATA", &data_block(body), 250).await?;
        // The message is accepted; a lost QUIT changes nothing.
        let _ = c.writer.write_all(b"QUIT\r\n").await;
        Ok(())
    };
    tokio::time::timeout(timeout, conversation)
        .await
        .map_err(|_| SendError::Timeout { addr, timeout })?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_block_stuffs_dots_and_terminates() {
        assert_eq!(
            data_block("Subject: x\r\n\r\n.hidden\r\nend"),
            b"Subject: x\r\n\r\n..hidden\r\nend\r\n.\r\n".to_vec()
        );
    }
}
