//! A minimal HTTP/1.1 client for the store rows: one kept-alive connection per bench writer, the whole
//! request written with one `write`, the answer read straight off the socket.
//!
//! The bench measures the store, and the bench's client shares the store's two CPUs. The general
//! `StoreClient` (hyper's pooled client) hands every request to a connection task and back, which
//! cost about as much CPU per write as one of the mirrors; this client does the same exchange in the
//! writer's own task. It checks what matters: the status (201 new, 200 duplicate) and the
//! `X-Fabric-Copies` header (the write is on two stores).

use anyhow::{Context, bail};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// One connection to a store, reused for every request.
pub struct Conn {
    stream: TcpStream,
    host: String,
    request: Vec<u8>,
    answer: Vec<u8>,
}

/// What the store answered to one enqueue.
#[derive(Debug, PartialEq)]
pub struct Answer {
    pub status: u16,
    /// How many stores hold the write (the `X-Fabric-Copies` list).
    pub copies: usize,
}

impl Conn {
    pub async fn connect(addr: std::net::SocketAddr) -> anyhow::Result<Conn> {
        let stream = TcpStream::connect(addr)
            .await
            .with_context(|| format!("connecting to {addr}"))?;
        stream.set_nodelay(true)?;
        Ok(Conn {
            stream,
            host: addr.to_string(),
            request: Vec::with_capacity(8192),
            answer: Vec::with_capacity(1024),
        })
    }

    /// `POST /v1/queues/{queue}` with `message_id`; answers once the store answered.
    pub async fn enqueue(
        &mut self,
        queue: &str,
        message_id: &str,
        body: &[u8],
    ) -> anyhow::Result<Answer> {
        self.request.clear();
        self.request.extend_from_slice(
            format!(
                "POST /v1/queues/{queue} HTTP/1.1\r\nhost: {}\r\nx-fabric-message-id: {message_id}\r\ncontent-length: {}\r\n\r\n",
                self.host,
                body.len()
            )
            .as_bytes(),
        );
        self.request.extend_from_slice(body);
        self.stream.write_all(&self.request).await?;
        self.read_answer().await
    }

    async fn read_answer(&mut self) -> anyhow::Result<Answer> {
        self.answer.clear();
        let mut chunk = [0u8; 4096];
        let head_end = loop {
            if let Some(i) = find(&self.answer, b"\r\n\r\n") {
                break i + 4;
            }
            let n = self.stream.read(&mut chunk).await?;
            if n == 0 {
                bail!("the store closed the connection before answering");
            }
            self.answer.extend_from_slice(&chunk[..n]);
        };
        let head = parse_head(&self.answer[..head_end])?;
        while self.answer.len() < head_end + head.content_length {
            let n = self.stream.read(&mut chunk).await?;
            if n == 0 {
                bail!("the store closed the connection in the middle of an answer");
            }
            self.answer.extend_from_slice(&chunk[..n]);
        }
        if head.status != 200 && head.status != 201 {
            let body = &self.answer[head_end..head_end + head.content_length];
            bail!(
                "the store answered {}: {}",
                head.status,
                String::from_utf8_lossy(body)
            );
        }
        Ok(Answer {
            status: head.status,
            copies: head.copies,
        })
    }
}

struct Head {
    status: u16,
    content_length: usize,
    copies: usize,
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Status line and the two headers the bench reads.
fn parse_head(head: &[u8]) -> anyhow::Result<Head> {
    let text = std::str::from_utf8(head).context("answer head is not text")?;
    let mut lines = text.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status: u16 = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("bad status line {status_line:?}"))?;
    let mut content_length = None;
    let mut copies = 0;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            content_length = Some(
                value
                    .parse()
                    .with_context(|| format!("bad content-length {value:?}"))?,
            );
        } else if name.eq_ignore_ascii_case("x-fabric-copies") {
            copies = value.split(',').filter(|s| !s.trim().is_empty()).count();
        }
    }
    Ok(Head {
        status,
        content_length: content_length.context("answer without content-length")?,
        copies,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_status_length_and_copies() {
        let head = parse_head(
            b"HTTP/1.1 201 Created\r\ncontent-type: application/json\r\nX-Fabric-Copies: store-w1,store-e1\r\ncontent-length: 42\r\n\r\n",
        )
        .expect("parses");
        assert_eq!(
            (head.status, head.content_length, head.copies),
            (201, 42, 2)
        );
    }

    #[test]
    fn refuses_a_head_without_length() {
        assert!(parse_head(b"HTTP/1.1 200 OK\r\n\r\n").is_err());
        assert!(parse_head(b"garbage\r\n\r\n").is_err());
    }
}
