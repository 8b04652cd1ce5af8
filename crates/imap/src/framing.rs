//! Reading one command: a line, and for each literal it announces (`{n}` / `{n+}`), the limit check
//! BEFORE anything is read or allocated, the continuation request for a synchronizing literal, the
//! literal's bytes, and the rest of the line. Nothing over the limits is ever buffered.

use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};

use crate::{MAX_COMMAND_LINE, MAX_NONSYNC_LITERAL, MAX_OTHER_LITERAL};

pub(crate) enum Frame {
    /// A whole command with its literals, CRLF included.
    Command(Vec<u8>),
    /// The client left.
    Closed,
    /// A line longer than [`MAX_COMMAND_LINE`] (read to its end and thrown away), with its tag.
    TooLong { tag: String },
    /// A literal over its limit, refused before reading it. `tag` is the command's tag.
    LiteralTooBig {
        tag: String,
        /// A non-synchronizing literal: its bytes are on their way, so the session must end.
        nonsync: bool,
        append: bool,
    },
}

pub(crate) enum Line {
    Complete(Vec<u8>),
    /// Too long: only its first octets are kept (to find the tag).
    TooLong(Vec<u8>),
}

pub(crate) struct Reader<R> {
    pub inner: BufReader<R>,
}

impl<R: AsyncRead + Unpin> Reader<R> {
    pub fn new(r: R) -> Self {
        Reader {
            inner: BufReader::with_capacity(16 * 1024, r),
        }
    }

    /// True when the client sent bytes we have not read yet.
    pub fn has_buffered(&self) -> bool {
        !self.inner.buffer().is_empty()
    }

    /// One line up to `max` octets with its LF; `None` at end of stream. A longer line is read to
    /// its end without being kept.
    pub async fn read_line(&mut self, max: usize) -> std::io::Result<Option<Line>> {
        let mut line = Vec::new();
        let mut too_long = false;
        loop {
            let buf = self.inner.fill_buf().await?;
            if buf.is_empty() {
                return Ok(None);
            }
            let (take, done) = match buf.iter().position(|b| *b == b'\n') {
                Some(i) => (i + 1, true),
                None => (buf.len(), false),
            };
            if !too_long {
                if line.len() + take > max {
                    too_long = true;
                    line.truncate(64);
                    let room = 64usize.saturating_sub(line.len()).min(take);
                    line.extend_from_slice(&buf[..room]);
                } else {
                    line.extend_from_slice(&buf[..take]);
                }
            }
            self.inner.consume(take);
            if done {
                return Ok(Some(if too_long {
                    Line::TooLong(line)
                } else {
                    Line::Complete(line)
                }));
            }
        }
    }

    /// Reads one command. `max_append` is the largest literal APPEND may carry.
    pub async fn read_command<W: AsyncWrite + Unpin>(
        &mut self,
        writer: &mut W,
        max_append: u64,
    ) -> std::io::Result<Frame> {
        let mut command: Vec<u8> = Vec::new();
        let mut lines = 0usize;
        loop {
            let line = match self.read_line(MAX_COMMAND_LINE).await? {
                None => return Ok(Frame::Closed),
                Some(Line::TooLong(start)) => {
                    let tag = tag_of(if command.is_empty() { &start } else { &command });
                    return Ok(Frame::TooLong { tag });
                }
                Some(Line::Complete(l)) => l,
            };
            lines += 1;
            let announced = trailing_literal(&line);
            command.extend_from_slice(&line);
            let Some((length, nonsync)) = announced else {
                return Ok(Frame::Command(command));
            };
            let append = is_append(&command);
            let limit = if append {
                max_append
            } else {
                MAX_OTHER_LITERAL
            };
            let too_big = (nonsync && length > MAX_NONSYNC_LITERAL) || length > limit;
            // A command of many small literals is bounded too.
            if too_big || lines > 64 {
                return Ok(Frame::LiteralTooBig {
                    tag: tag_of(&command),
                    nonsync,
                    append,
                });
            }
            if !nonsync {
                writer.write_all(b"+ Ready for literal data\r\n").await?;
                writer.flush().await?;
            }
            // `length` is within the limit checked above, so this allocation is bounded.
            let start = command.len();
            command.resize(start + length as usize, 0);
            self.inner.read_exact(&mut command[start..]).await?;
        }
    }
}

/// The literal a line ends with: `{123}\r\n` or `{123+}\r\n` (length, non-synchronizing). A length
/// too large for u64 reads as `u64::MAX`: refused like any other literal over the limit.
pub(crate) fn trailing_literal(line: &[u8]) -> Option<(u64, bool)> {
    let line = line.strip_suffix(b"\n")?;
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let line = line.strip_suffix(b"}")?;
    let open = line.iter().rposition(|b| *b == b'{')?;
    let inside = &line[open + 1..];
    let (digits, nonsync) = match inside.strip_suffix(b"+") {
        Some(d) => (d, true),
        None => (inside, false),
    };
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let length = digits.iter().try_fold(0u64, |n, d| {
        n.checked_mul(10)?.checked_add(u64::from(d - b'0'))
    });
    Some((length.unwrap_or(u64::MAX), nonsync))
}

/// The tag of a command (its first word), for answering one we could not parse.
pub(crate) fn tag_of(command: &[u8]) -> String {
    let end = command
        .iter()
        .position(|b| *b == b' ' || *b == b'\r' || *b == b'\n')
        .unwrap_or(command.len());
    let tag = &command[..end];
    if !tag.is_empty()
        && tag.len() <= 64
        && tag
            .iter()
            .all(|b| b.is_ascii_graphic() && !b"(){%*\"\\+".contains(b))
    {
        String::from_utf8_lossy(tag).into_owned()
    } else {
        "*".to_string()
    }
}

/// The command name (second word), upper-cased.
pub(crate) fn verb_of(command: &[u8]) -> String {
    let mut words = command.split(|b| *b == b' ' || *b == b'\r' || *b == b'\n');
    words.next();
    let mut verb = words.next().unwrap_or(b"").to_ascii_uppercase();
    if verb == b"UID" {
        verb.push(b' ');
        verb.extend(words.next().unwrap_or(b"").to_ascii_uppercase());
    }
    String::from_utf8_lossy(&verb).into_owned()
}

fn is_append(command: &[u8]) -> bool {
    verb_of(command) == "APPEND"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literals_are_recognised_and_bounded() {
        assert_eq!(trailing_literal(b"A LOGIN {5}\r\n"), Some((5, false)));
        assert_eq!(trailing_literal(b"A LOGIN {4097+}\r\n"), Some((4097, true)));
        assert_eq!(
            trailing_literal(b"A APPEND INBOX {99999999999999999999999}\r\n"),
            Some((u64::MAX, false))
        );
        assert_eq!(trailing_literal(b"A NOOP\r\n"), None);
        assert_eq!(trailing_literal(b"A X {}\r\n"), None);
        assert_eq!(tag_of(b"a1 NOOP\r\n"), "a1");
        assert_eq!(verb_of(b"a1 uid fetch 1 x\r\n"), "UID FETCH");
    }
}
