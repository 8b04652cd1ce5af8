//! Reading CRLF-terminated lines with a hard length limit and no unbounded buffering.
//!
//! A line longer than the limit is consumed (up to its CRLF) without being kept, and reported as
//! [`Line::TooLong`], so the session can answer and carry on in step with the client. Only CRLF ends a
//! line: a bare LF or a bare CR inside it is reported, never taken as an end of line. That is what keeps
//! SMTP smuggling (`\n.\n`, `\r.\r`, `\n.\r\n`, ...) from ending DATA early.

use tokio::io::{AsyncRead, AsyncReadExt};

const READ_CHUNK: usize = 8192;

/// One line as read.
#[derive(Debug, PartialEq, Eq)]
pub enum Line {
    /// The bytes before CRLF; `bare` says whether a lone CR or LF occurred inside.
    Complete { bytes: Vec<u8>, bare: bool },
    /// Longer than the limit (CRLF included): consumed and dropped.
    TooLong,
}

/// A buffered reader over a byte stream that hands out lines.
pub struct LineReader<R> {
    inner: R,
    buf: Vec<u8>,
    start: usize,
}

impl<R: AsyncRead + Unpin> LineReader<R> {
    pub fn new(inner: R) -> LineReader<R> {
        LineReader {
            inner,
            buf: Vec::with_capacity(READ_CHUNK),
            start: 0,
        }
    }

    /// Bytes the client sent that no line has consumed yet (pipelining detection).
    pub fn buffered(&self) -> usize {
        self.buf.len() - self.start
    }

    pub fn get_mut(&mut self) -> &mut R {
        &mut self.inner
    }

    /// Gives back the stream and any bytes read but not consumed.
    pub fn into_parts(mut self) -> (R, Vec<u8>) {
        let rest = self.buf.split_off(self.start);
        (self.inner, rest)
    }

    async fn fill(&mut self) -> std::io::Result<usize> {
        if self.start > 0 {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        let old = self.buf.len();
        self.buf.resize(old + READ_CHUNK, 0);
        let n = self.inner.read(&mut self.buf[old..]).await;
        self.buf.truncate(old + *n.as_ref().unwrap_or(&0));
        n
    }

    /// Reads one line of at most `max` bytes including its CRLF. `Ok(None)` at end of stream (a
    /// partial line without CRLF at the end is dropped: the client went away in the middle of it).
    pub async fn read_line(&mut self, max: usize) -> std::io::Result<Option<Line>> {
        let mut too_long = false;
        let mut scanned = 0usize;
        loop {
            let pending = &self.buf[self.start..];
            // Look for CRLF from where we stopped (back one byte: a CR may end the previous chunk).
            let from = scanned.saturating_sub(1);
            if let Some(pos) = pending[from..].windows(2).position(|w| w == b"\r\n") {
                let end = from + pos;
                let line = if too_long || end + 2 > max {
                    Line::TooLong
                } else {
                    let bytes = pending[..end].to_vec();
                    let bare = bytes.iter().any(|b| *b == b'\r' || *b == b'\n');
                    Line::Complete { bytes, bare }
                };
                self.start += end + 2;
                return Ok(Some(line));
            }
            scanned = pending.len();
            if scanned + 1 > max {
                // Over the limit already: drop what we have (keeping a trailing CR, which may be
                // half of the CRLF that ends the line) and keep reading until the CRLF.
                too_long = true;
                let keep = usize::from(pending.last() == Some(&b'\r'));
                self.start = self.buf.len() - keep;
                scanned = keep;
            }
            if self.fill().await? == 0 {
                return Ok(None);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn lines(input: &[u8], max: usize) -> Vec<Option<Line>> {
        let mut r = LineReader::new(input);
        let mut out = Vec::new();
        loop {
            let l = r.read_line(max).await.expect("reading from a slice");
            let end = l.is_none();
            out.push(l);
            if end {
                return out;
            }
        }
    }

    fn ok(s: &str) -> Option<Line> {
        Some(Line::Complete {
            bytes: s.as_bytes().to_vec(),
            bare: false,
        })
    }

    #[tokio::test]
    async fn only_crlf_ends_a_line_and_bare_ones_are_flagged() {
        let got = lines(b"a\r\nb\nc\r\n.\r\nd\re\r\n", 100).await;
        assert_eq!(got[0], ok("a"));
        assert_eq!(
            got[1],
            Some(Line::Complete {
                bytes: b"b\nc".to_vec(),
                bare: true
            })
        );
        assert_eq!(got[2], ok("."));
        assert_eq!(
            got[3],
            Some(Line::Complete {
                bytes: b"d\re".to_vec(),
                bare: true
            })
        );
        assert_eq!(got[4], None);
    }

    #[tokio::test]
    async fn a_line_exactly_at_the_limit_passes_and_one_octet_more_does_not() {
        let at = format!("{}\r\n", "x".repeat(510));
        let over = format!("{}\r\n", "y".repeat(511));
        let input = format!("{at}{over}next\r\n");
        let got = lines(input.as_bytes(), 512).await;
        assert_eq!(got[0], ok(&"x".repeat(510)));
        assert_eq!(got[1], Some(Line::TooLong));
        assert_eq!(
            got[2],
            ok("next"),
            "the reader stays in step after a long line"
        );
    }

    #[tokio::test]
    async fn a_huge_line_is_dropped_without_being_buffered() {
        let mut input = vec![b'z'; 5_000_000];
        input.extend_from_slice(b"\r\nafter\r\n");
        let mut r = LineReader::new(&input[..]);
        assert_eq!(r.read_line(1000).await.ok().flatten(), Some(Line::TooLong));
        assert!(
            r.buf.capacity() < 64 * 1024,
            "buffer grew to {}",
            r.buf.capacity()
        );
        assert_eq!(r.read_line(1000).await.ok().flatten(), ok("after"));
    }

    #[tokio::test]
    async fn a_crlf_split_across_reads_still_ends_the_line() {
        // A reader that returns one byte at a time.
        struct Trickle(Vec<u8>, usize);
        impl AsyncRead for Trickle {
            fn poll_read(
                mut self: std::pin::Pin<&mut Self>,
                _: &mut std::task::Context<'_>,
                buf: &mut tokio::io::ReadBuf<'_>,
            ) -> std::task::Poll<std::io::Result<()>> {
                if self.1 < self.0.len() {
                    let b = self.0[self.1];
                    buf.put_slice(&[b]);
                    self.1 += 1;
                }
                std::task::Poll::Ready(Ok(()))
            }
        }
        let mut r = LineReader::new(Trickle(b"hello\r\nworld\r\n".to_vec(), 0));
        assert_eq!(r.read_line(10).await.ok().flatten(), ok("hello"));
        assert_eq!(r.read_line(10).await.ok().flatten(), ok("world"));
        assert_eq!(r.read_line(10).await.ok().flatten(), None);
    }
}
