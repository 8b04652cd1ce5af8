//! AUTH (RFC 4954) with the PLAIN (RFC 4616) and LOGIN mechanisms, for submission mode only, and only
//! inside TLS: a password never crosses the wire in clear.
//!
//! Replies: 530 5.7.0 before STARTTLS; 503 5.5.1 when already authenticated or inside a transaction;
//! 504 5.5.4 for an unknown mechanism; 501 5.5.2 for a response that is not base64 (or not the form the
//! mechanism needs); 501 5.7.0 when the client cancels with `*`; 535 5.7.8 for wrong credentials,
//! sent only after `auth_failure_delay`; 454 4.7.0 when the directory cannot be read; 235 2.7.0 on
//! success. Every outcome is counted in `fabric_smtp_auth_total{result}`.

use base64::Engine as _;
use tokio::io::{AsyncRead, AsyncWrite};

use super::{Handler, Session, Step, count};
use crate::reader::Line;
use crate::reply::Reply;

/// RFC 4954 section 4: a client response may be up to 12288 octets (CRLF included).
pub const MAX_AUTH_LINE: usize = 12288;

/// Why a handler did not accept credentials.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("invalid credentials")]
    Invalid,
    /// The directory could not be read: the client may try again later.
    #[error("authentication unavailable: {0}")]
    Unavailable(String),
}

fn counted(result: &'static str) {
    metrics::counter!("fabric_smtp_auth_total", "result" => result).increment(1);
}

/// What the client answered to a 334 challenge.
enum Response {
    Bytes(Vec<u8>),
    Cancelled,
    Malformed,
}

fn decode(text: &[u8]) -> Response {
    if text == b"*" {
        return Response::Cancelled;
    }
    // An empty initial response is sent as `=` (RFC 4954 section 4).
    if text == b"=" {
        return Response::Bytes(Vec::new());
    }
    match base64::engine::general_purpose::STANDARD.decode(text) {
        Ok(b) => Response::Bytes(b),
        Err(_) => Response::Malformed,
    }
}

/// `authzid NUL authcid NUL passwd` (RFC 4616 section 2).
fn split_plain(bytes: &[u8]) -> Option<(String, String)> {
    let mut parts = bytes.split(|b| *b == 0);
    let authzid = std::str::from_utf8(parts.next()?).ok()?;
    let authcid = std::str::from_utf8(parts.next()?).ok()?;
    let passwd = std::str::from_utf8(parts.next()?).ok()?;
    if parts.next().is_some() || authcid.is_empty() {
        return None;
    }
    // Acting as somebody else is not offered: the authorization identity, if given, is the user.
    if !authzid.is_empty() && !authzid.eq_ignore_ascii_case(authcid) {
        return None;
    }
    Some((authcid.to_string(), passwd.to_string()))
}

impl<R, W, H> Session<'_, R, W, H>
where
    R: AsyncRead + Unpin + Send,
    W: AsyncWrite + Unpin + Send,
    H: Handler,
{
    pub(super) async fn auth(&mut self, arg: &str) -> std::io::Result<Step> {
        if !self.env.tls {
            count("auth_before_tls");
            counted("before_tls");
            return self
                .refuse(Reply::new(
                    530,
                    "5.7.0",
                    "Must issue a STARTTLS command first",
                ))
                .await;
        }
        if !self.greeted || self.in_transaction || self.env.auth.is_some() {
            count("bad_sequence");
            counted("bad_sequence");
            let text = if self.env.auth.is_some() {
                "already authenticated"
            } else if self.in_transaction {
                "AUTH is not allowed during a mail transaction"
            } else {
                "EHLO first"
            };
            return self.refuse(Reply::new(503, "5.5.1", text)).await;
        }
        let mut words = arg.split_whitespace();
        let mechanism = words.next().unwrap_or("").to_ascii_uppercase();
        let initial = words.next();
        if words.next().is_some() {
            count("syntax");
            return self
                .refuse(Reply::new(
                    501,
                    "5.5.4",
                    "syntax: AUTH mechanism [initial-response]",
                ))
                .await;
        }
        let credentials = match mechanism.as_str() {
            "PLAIN" => {
                let response = match initial {
                    Some(text) => decode(text.as_bytes()),
                    None => match self.challenge("").await? {
                        Some(r) => r,
                        None => return Ok(Step::Close),
                    },
                };
                match response {
                    Response::Bytes(b) => split_plain(&b).ok_or(Response::Malformed),
                    other => Err(other),
                }
            }
            "LOGIN" => self.login(initial).await?,
            _ => {
                count("auth_mechanism");
                counted("bad_mechanism");
                return self
                    .refuse(Reply::new(
                        504,
                        "5.5.4",
                        "unrecognized authentication type (PLAIN and LOGIN are offered)",
                    ))
                    .await;
            }
        };
        let (user, password) = match credentials {
            Ok(c) => c,
            Err(Response::Cancelled) => {
                counted("cancelled");
                return self
                    .refuse(Reply::new(501, "5.7.0", "authentication cancelled"))
                    .await;
            }
            Err(_) => {
                count("auth_syntax");
                counted("malformed");
                return self
                    .refuse(Reply::new(
                        501,
                        "5.5.2",
                        "cannot decode the response (base64 of the mechanism's form expected)",
                    ))
                    .await;
            }
        };
        match self.handler.authenticate(&user, &password).await {
            Ok(identity) => {
                counted("ok");
                tracing::info!(peer = %self.env.peer, user = %identity, "SMTP AUTH succeeded");
                self.env.auth = Some(identity);
                self.reply(Reply::new(235, "2.7.0", "Authentication successful"))
                    .await
            }
            Err(AuthError::Invalid) => {
                count("auth_failed");
                counted("invalid");
                tracing::info!(peer = %self.env.peer, user = %user, "SMTP AUTH failed: invalid credentials");
                tokio::time::sleep(self.config.auth_failure_delay).await;
                self.refuse(Reply::new(
                    535,
                    "5.7.8",
                    "Authentication credentials invalid",
                ))
                .await
            }
            Err(AuthError::Unavailable(e)) => {
                counted("unavailable");
                tracing::warn!(peer = %self.env.peer, error = %e, "SMTP AUTH: directory unavailable");
                self.refuse(Reply::new(454, "4.7.0", "Temporary authentication failure"))
                    .await
            }
        }
    }

    /// LOGIN: the user name (maybe as the initial response), then the password, each base64.
    async fn login(
        &mut self,
        initial: Option<&str>,
    ) -> std::io::Result<Result<(String, String), Response>> {
        let user = match initial {
            Some(text) => decode(text.as_bytes()),
            // "Username:" and "Password:" in base64, as every LOGIN client expects.
            None => match self.challenge("VXNlcm5hbWU6").await? {
                Some(r) => r,
                None => return Ok(Err(Response::Cancelled)),
            },
        };
        let Response::Bytes(user) = user else {
            return Ok(Err(user));
        };
        let password = match self.challenge("UGFzc3dvcmQ6").await? {
            Some(Response::Bytes(p)) => p,
            Some(other) => return Ok(Err(other)),
            None => return Ok(Err(Response::Cancelled)),
        };
        match (String::from_utf8(user), String::from_utf8(password)) {
            (Ok(u), Ok(p)) if !u.is_empty() => Ok(Ok((u, p))),
            _ => Ok(Err(Response::Malformed)),
        }
    }

    /// Sends `334 text` and reads the client's answer; `None` when the client left or timed out.
    async fn challenge(&mut self, text: &str) -> std::io::Result<Option<Response>> {
        self.send(&Reply::plain(334, text)).await?;
        let line = match tokio::time::timeout(
            self.config.command_timeout,
            self.reader.read_line(MAX_AUTH_LINE),
        )
        .await
        {
            Err(_) => {
                count("timeout");
                return Ok(None);
            }
            Ok(r) => r?,
        };
        Ok(match line {
            None => None,
            Some(Line::TooLong) | Some(Line::Complete { bare: true, .. }) => {
                Some(Response::Malformed)
            }
            Some(Line::Complete { bytes, .. }) => Some(decode(&bytes)),
        })
    }
}
