//! POP3 server sessions (RFC 1939 with CAPA, UIDL, TOP, and the response codes of RFC 2449 and 3206).
//!
//! The session owns the protocol (states, numbering, byte-stuffing, limits); the role provides a
//! [`Backend`] (checks a password, opens a maildrop) and the [`Maildrop`] (a snapshot of the mailbox
//! taken at login: messages are numbered in it, deletions are applied at QUIT, as RFC 1939 says).
//!
//! Metrics: `fabric_pop3_sessions_total`, `fabric_pop3_logins_total{result}`,
//! `fabric_pop3_refusals_total{kind}`.

use std::future::Future;
use std::time::Duration;

use smtp::reader::{Line, LineReader};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

/// RFC 2449: a command line is at most 255 octets with its CRLF.
pub const MAX_COMMAND_LINE: usize = 255;

/// A message of the maildrop as listed at login.
#[derive(Debug, Clone)]
pub struct MessageRef {
    /// The store's UID of the message.
    pub uid: i64,
    /// What UIDL shows: stable across sessions.
    pub unique_id: String,
    pub size: u64,
}

#[derive(Debug)]
pub enum LoginError {
    /// Wrong user name or password.
    Invalid,
    /// The directory or the store cannot be reached now.
    Unavailable(String),
}

pub trait Maildrop: Send + Sync {
    fn messages(&self) -> &[MessageRef];
    fn fetch(&self, uid: i64) -> impl Future<Output = Result<Vec<u8>, String>> + Send;
    /// Removes these messages for good (the UPDATE state).
    fn expunge(&self, uids: Vec<i64>) -> impl Future<Output = Result<(), String>> + Send;
}

pub trait Backend: Send + Sync {
    type Drop: Maildrop;
    fn login(
        &self,
        user: &str,
        password: &str,
    ) -> impl Future<Output = Result<Self::Drop, LoginError>> + Send;
}

/// Session limits.
#[derive(Debug, Clone)]
pub struct Config {
    pub hostname: String,
    /// RFC 1939: the autologout timer is at least 10 minutes.
    pub idle_timeout: Duration,
    /// Pause before answering a wrong password.
    pub auth_failure_delay: Duration,
    /// Wrong passwords before the session is closed.
    pub max_auth_failures: usize,
}

impl Config {
    pub fn new(hostname: impl Into<String>) -> Config {
        Config {
            hostname: hostname.into(),
            idle_timeout: Duration::from_secs(600),
            auth_failure_delay: Duration::from_secs(1),
            max_auth_failures: 3,
        }
    }
}

fn refuse(kind: &'static str) {
    metrics::counter!("fabric_pop3_refusals_total", "kind" => kind).increment(1);
}

/// Appends `body` to `out` byte-stuffed (a line starting with "." gets another), ending with
/// ".\r\n". `max_body_lines` limits the lines after the header (TOP).
fn stuffed(out: &mut Vec<u8>, message: &[u8], max_body_lines: Option<usize>) {
    let mut in_body = false;
    let mut body_lines = 0usize;
    for line in message.split_inclusive(|b| *b == b'\n') {
        if in_body && max_body_lines.is_some_and(|m| body_lines >= m) {
            break;
        }
        let content = line.strip_suffix(b"\n").unwrap_or(line);
        let content = content.strip_suffix(b"\r").unwrap_or(content);
        if content.first() == Some(&b'.') {
            out.push(b'.');
        }
        out.extend_from_slice(content);
        out.extend_from_slice(b"\r\n");
        if in_body {
            body_lines += 1;
        } else if content.is_empty() {
            in_body = true;
        }
    }
    out.extend_from_slice(b".\r\n");
}

/// How a phase of the session ended.
enum Ended<R, W> {
    Closed,
    /// The client sent STLS and got its +OK: the caller does the handshake.
    StartTls(LineReader<R>, W),
}

/// Runs one session until QUIT, the client leaves, or the idle timer fires. With an acceptor, STLS
/// (RFC 2595) is offered and logins wait for it; whatever the client sent after STLS and before the
/// handshake is thrown away, never read as a command, and CAPA no longer lists STLS inside TLS.
pub async fn serve<S, B>(
    stream: S,
    config: &Config,
    backend: &B,
    tls: Option<tokio_rustls::TlsAcceptor>,
) -> std::io::Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
    B: Backend,
{
    metrics::counter!("fabric_pop3_sessions_total").increment(1);
    let (r, mut w) = tokio::io::split(stream);
    w.write_all(format!("+OK {} POP3 server ready\r\n", config.hostname).as_bytes())
        .await?;
    let (reader, writer) =
        match run(LineReader::new(r), w, config, backend, tls.is_some(), false).await? {
            Ended::Closed => return Ok(()),
            Ended::StartTls(reader, writer) => (reader, writer),
        };
    let Some(acceptor) = tls else {
        return Ok(());
    };
    let (read_half, leftover) = reader.into_parts();
    if !leftover.is_empty() {
        refuse("stls_injection");
    }
    let secured = match acceptor.accept(read_half.unsplit(writer)).await {
        Ok(t) => t,
        Err(e) => {
            refuse("tls_handshake");
            tracing::debug!(error = %e, "POP3 TLS handshake failed");
            return Ok(());
        }
    };
    let (r, w) = tokio::io::split(secured);
    run(LineReader::new(r), w, config, backend, false, true).await?;
    Ok(())
}

async fn run<R, W, B>(
    mut reader: LineReader<R>,
    mut writer: W,
    config: &Config,
    backend: &B,
    offer_tls: bool,
    secured: bool,
) -> std::io::Result<Ended<R, W>>
where
    R: AsyncRead + Unpin + Send,
    W: AsyncWrite + Unpin + Send,
    B: Backend,
{
    // Passwords travel only inside TLS when TLS is available.
    let login_needs_tls = offer_tls && !secured;
    let mut user: Option<String> = None;
    let mut drop: Option<B::Drop> = None;
    let mut deleted: Vec<bool> = Vec::new();
    let mut failures = 0usize;
    loop {
        let line =
            match tokio::time::timeout(config.idle_timeout, reader.read_line(MAX_COMMAND_LINE))
                .await
            {
                Err(_) => {
                    refuse("timeout");
                    writer
                        .write_all(b"-ERR autologout: idle for too long\r\n")
                        .await?;
                    return Ok(Ended::Closed);
                }
                Ok(l) => l?,
            };
        let bytes = match line {
            None => return Ok(Ended::Closed),
            Some(Line::TooLong) => {
                refuse("line_too_long");
                writer
                    .write_all(b"-ERR line too long (255 octets at most)\r\n")
                    .await?;
                continue;
            }
            Some(Line::Complete { bare: true, .. }) => {
                refuse("bare_cr_lf");
                writer
                    .write_all(b"-ERR bare CR or LF in a command\r\n")
                    .await?;
                continue;
            }
            Some(Line::Complete { bytes, .. }) => bytes,
        };
        let text = String::from_utf8_lossy(&bytes).into_owned();
        let mut parts = text.splitn(2, ' ');
        let verb = parts.next().unwrap_or("").to_ascii_uppercase();
        let arg = parts.next().unwrap_or("");
        let mut out: Vec<u8> = Vec::new();
        match (verb.as_str(), drop.as_ref()) {
            ("CAPA", _) => {
                out.extend_from_slice(b"+OK capability list follows\r\nUSER\r\nUIDL\r\nTOP\r\nPIPELINING\r\nRESP-CODES\r\nAUTH-RESP-CODE\r\n");
                if offer_tls {
                    out.extend_from_slice(b"STLS\r\n");
                }
                out.extend_from_slice(b"IMPLEMENTATION Mail-Fabric\r\n.\r\n");
            }
            ("STLS", None) if offer_tls => {
                writer.write_all(b"+OK begin TLS negotiation\r\n").await?;
                writer.flush().await?;
                return Ok(Ended::StartTls(reader, writer));
            }
            ("USER" | "PASS", None) if login_needs_tls => {
                refuse("login_before_tls");
                out.extend_from_slice(b"-ERR [AUTH] log in after STLS\r\n");
            }
            ("QUIT", None) => {
                writer.write_all(b"+OK bye\r\n").await?;
                return Ok(Ended::Closed);
            }
            ("QUIT", Some(d)) => {
                let gone: Vec<i64> = d
                    .messages()
                    .iter()
                    .zip(&deleted)
                    .filter(|(_, del)| **del)
                    .map(|(m, _)| m.uid)
                    .collect();
                let reply: &[u8] = if gone.is_empty() {
                    b"+OK bye\r\n"
                } else {
                    match d.expunge(gone).await {
                        Ok(()) => b"+OK bye; deleted messages removed\r\n",
                        Err(e) => {
                            tracing::warn!(error = %e, "POP3 update failed");
                            b"-ERR [SYS/TEMP] some deleted messages not removed\r\n"
                        }
                    }
                };
                writer.write_all(reply).await?;
                return Ok(Ended::Closed);
            }
            ("USER", None) => {
                if arg.is_empty() {
                    out.extend_from_slice(b"-ERR USER needs a name\r\n");
                } else {
                    user = Some(arg.to_string());
                    out.extend_from_slice(b"+OK send PASS\r\n");
                }
            }
            ("PASS", None) => match user.take() {
                None => {
                    refuse("bad_sequence");
                    out.extend_from_slice(b"-ERR USER first\r\n");
                }
                Some(name) => match backend.login(&name, arg).await {
                    Ok(d) => {
                        metrics::counter!("fabric_pop3_logins_total", "result" => "ok")
                            .increment(1);
                        let total: u64 = d.messages().iter().map(|m| m.size).sum();
                        out.extend_from_slice(
                            format!(
                                "+OK {} has {} messages ({total} octets)\r\n",
                                name,
                                d.messages().len()
                            )
                            .as_bytes(),
                        );
                        deleted = vec![false; d.messages().len()];
                        drop = Some(d);
                    }
                    Err(LoginError::Invalid) => {
                        metrics::counter!("fabric_pop3_logins_total", "result" => "invalid")
                            .increment(1);
                        failures += 1;
                        tokio::time::sleep(config.auth_failure_delay).await;
                        writer
                            .write_all(b"-ERR [AUTH] invalid user name or password\r\n")
                            .await?;
                        if failures >= config.max_auth_failures {
                            return Ok(Ended::Closed);
                        }
                        continue;
                    }
                    Err(LoginError::Unavailable(e)) => {
                        metrics::counter!("fabric_pop3_logins_total", "result" => "unavailable")
                            .increment(1);
                        tracing::warn!(error = %e, "POP3 login could not be checked");
                        out.extend_from_slice(b"-ERR [SYS/TEMP] try again later\r\n");
                    }
                },
            },
            ("STAT", Some(d)) => {
                let (n, size) = live(d.messages(), &deleted)
                    .fold((0, 0u64), |(n, s), (_, m)| (n + 1, s + m.size));
                out.extend_from_slice(format!("+OK {n} {size}\r\n").as_bytes());
            }
            ("LIST", Some(d)) | ("UIDL", Some(d)) => {
                let show = |i: usize, m: &MessageRef| {
                    if verb == "LIST" {
                        format!("{} {}", i + 1, m.size)
                    } else {
                        format!("{} {}", i + 1, m.unique_id)
                    }
                };
                if arg.is_empty() {
                    out.extend_from_slice(b"+OK\r\n");
                    for (i, m) in live(d.messages(), &deleted) {
                        out.extend_from_slice(format!("{}\r\n", show(i, m)).as_bytes());
                    }
                    out.extend_from_slice(b".\r\n");
                } else {
                    match pick(arg, d.messages(), &deleted) {
                        Ok((i, m)) => {
                            out.extend_from_slice(format!("+OK {}\r\n", show(i, m)).as_bytes())
                        }
                        Err(e) => out.extend_from_slice(e.as_bytes()),
                    }
                }
            }
            ("RETR", Some(d)) | ("TOP", Some(d)) => {
                let mut args = arg.split(' ');
                let which = args.next().unwrap_or("");
                let lines = if verb == "TOP" {
                    match args.next().and_then(|n| n.parse::<usize>().ok()) {
                        Some(n) => Some(n),
                        None => {
                            writer.write_all(b"-ERR syntax: TOP msg n\r\n").await?;
                            continue;
                        }
                    }
                } else {
                    None
                };
                match pick(which, d.messages(), &deleted) {
                    Err(e) => out.extend_from_slice(e.as_bytes()),
                    Ok((_, m)) => match d.fetch(m.uid).await {
                        Ok(body) => {
                            out.extend_from_slice(
                                format!("+OK {} octets\r\n", body.len()).as_bytes(),
                            );
                            stuffed(&mut out, &body, lines);
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "POP3 fetch failed");
                            out.extend_from_slice(b"-ERR [SYS/TEMP] message unavailable now\r\n");
                        }
                    },
                }
            }
            ("DELE", Some(d)) => match pick(arg, d.messages(), &deleted) {
                Ok((i, _)) => {
                    deleted[i] = true;
                    out.extend_from_slice(format!("+OK message {} deleted\r\n", i + 1).as_bytes());
                }
                Err(e) => out.extend_from_slice(e.as_bytes()),
            },
            ("RSET", Some(_)) => {
                deleted.iter_mut().for_each(|d| *d = false);
                out.extend_from_slice(b"+OK\r\n");
            }
            ("NOOP", Some(_)) => out.extend_from_slice(b"+OK\r\n"),
            ("USER" | "PASS", Some(_)) => {
                refuse("bad_sequence");
                out.extend_from_slice(b"-ERR already logged in\r\n");
            }
            ("STAT" | "LIST" | "UIDL" | "RETR" | "TOP" | "DELE" | "RSET" | "NOOP", None) => {
                refuse("bad_sequence");
                out.extend_from_slice(b"-ERR log in first\r\n");
            }
            _ => {
                refuse("unknown_command");
                out.extend_from_slice(b"-ERR unknown command\r\n");
            }
        }
        writer.write_all(&out).await?;
    }
}

fn live<'a>(
    messages: &'a [MessageRef],
    deleted: &'a [bool],
) -> impl Iterator<Item = (usize, &'a MessageRef)> {
    messages
        .iter()
        .enumerate()
        .filter(|(i, _)| !deleted.get(*i).copied().unwrap_or(false))
}

fn pick<'a>(
    arg: &str,
    messages: &'a [MessageRef],
    deleted: &[bool],
) -> Result<(usize, &'a MessageRef), &'static str> {
    let n: usize = arg
        .trim()
        .parse()
        .map_err(|_| "-ERR a message number is needed\r\n")?;
    let i = n.checked_sub(1).ok_or("-ERR no such message\r\n")?;
    let m = messages.get(i).ok_or("-ERR no such message\r\n")?;
    if deleted.get(i).copied().unwrap_or(false) {
        return Err("-ERR message already deleted\r\n");
    }
    Ok((i, m))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_stuffing_and_top() {
        let msg = b"Subject: x\r\n\r\n.dot\r\nline2\r\nline3\r\n";
        let mut out = Vec::new();
        stuffed(&mut out, msg, None);
        assert_eq!(out, b"Subject: x\r\n\r\n..dot\r\nline2\r\nline3\r\n.\r\n");
        let mut top = Vec::new();
        stuffed(&mut top, msg, Some(1));
        assert_eq!(top, b"Subject: x\r\n\r\n..dot\r\n.\r\n");
        let mut none = Vec::new();
        stuffed(&mut none, msg, Some(0));
        assert_eq!(none, b"Subject: x\r\n\r\n.\r\n");
    }
}
