//! DATA: the message itself, framed so that only a line that is exactly `.` ends it.

use tokio::io::{AsyncRead, AsyncWrite};

use super::{Handler, MAX_TEXT_LINE, Session, Step, count};
use crate::reader::Line;
use crate::reply::Reply;

impl<R, W, H> Session<'_, R, W, H>
where
    R: AsyncRead + Unpin + Send,
    W: AsyncWrite + Unpin + Send,
    H: Handler,
{
    pub(super) async fn data(&mut self, arg: &str) -> std::io::Result<Step> {
        if !arg.trim().is_empty() {
            count("syntax");
            return self
                .refuse(Reply::new(501, "5.5.4", "DATA takes no argument"))
                .await;
        }
        if !self.in_transaction {
            count("bad_sequence");
            return self.refuse(Reply::new(503, "5.5.1", "MAIL first")).await;
        }
        if self.env.rcpts.is_empty() {
            count("bad_sequence");
            return self
                .refuse(Reply::new(554, "5.5.1", "no valid recipients"))
                .await;
        }
        if self.reader.buffered() > 0 {
            // The client sent its message before our 354 (RFC 2920 forbids it): what follows cannot
            // be trusted as either data or commands.
            count("pipelining");
            self.send(&Reply::new(
                554,
                "5.5.0",
                "improper pipelining: data sent before the 354 reply; closing",
            ))
            .await?;
            return Ok(Step::Close);
        }
        self.send(&Reply::plain(354, "end data with <CR><LF>.<CR><LF>"))
            .await?;
        let mut message = Vec::with_capacity(8192);
        let mut too_long = false;
        let mut bare = false;
        let mut nul = false;
        let mut too_big = false;
        loop {
            let line = match tokio::time::timeout(
                self.config.data_timeout,
                self.reader.read_line(MAX_TEXT_LINE),
            )
            .await
            {
                Err(_) => {
                    count("timeout");
                    self.send(&Reply::new(421, "4.4.2", "timeout in DATA; closing"))
                        .await?;
                    return Ok(Step::Close);
                }
                // The client left in the middle: nothing is stored, nothing acknowledged.
                Ok(r) => match r? {
                    None => {
                        count("disconnect_in_data");
                        return Ok(Step::Close);
                    }
                    Some(l) => l,
                },
            };
            let bytes = match line {
                Line::TooLong => {
                    too_long = true;
                    continue;
                }
                Line::Complete { bytes, bare: b } => {
                    bare |= b;
                    bytes
                }
            };
            if bytes == b"." {
                break;
            }
            let unstuffed = bytes.strip_prefix(b".").unwrap_or(&bytes);
            nul |= unstuffed.contains(&0);
            if message.len() + unstuffed.len() + 2 > self.config.max_message_bytes {
                too_big = true;
                continue;
            }
            message.extend_from_slice(unstuffed);
            message.extend_from_slice(b"\r\n");
        }
        let refusal = if too_big {
            count("too_large");
            Some(Reply::new(552, "5.3.4", "message size exceeds the limit"))
        } else if bare {
            count("bare_cr_lf");
            Some(Reply::new(
                550,
                "5.6.0",
                "bare CR or LF in the message: refused (lines must end with CRLF)",
            ))
        } else if too_long {
            count("line_too_long");
            Some(Reply::new(
                500,
                "5.5.2",
                "a line of the message exceeds 1000 octets",
            ))
        } else if nul {
            count("nul_in_data");
            Some(Reply::new(550, "5.6.0", "NUL octet in the message"))
        } else {
            None
        };
        let reply = match refusal {
            Some(r) => r,
            None => self.handler.deliver(&self.env, message).await,
        };
        self.reset();
        self.reply(reply).await
    }
}
