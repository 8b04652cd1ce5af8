//! One SMTP server session (RFC 5321), from the greeting to QUIT, over any byte stream.
//!
//! The session owns the protocol: command syntax, order, limits, DATA framing. What a role does with
//! the mail (is this recipient ours? is the sender blocked? store the message) is behind [`Handler`];
//! DATA is answered with whatever [`Handler::deliver`] answers, so a role answers 250 only once the
//! message is durable.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use crate::address::{Address, PathError, parse_path};
use crate::reader::{Line, LineReader};
use crate::reply::Reply;

mod auth;
mod data;

pub use auth::AuthError;

/// RFC 5321 4.5.3.1.4: a command line is at most 512 octets with its CRLF.
pub const MAX_COMMAND_LINE: usize = 512;
/// RFC 5321 4.5.3.1.6: a text line is at most 1000 octets with its CRLF.
pub const MAX_TEXT_LINE: usize = 1000;

/// Limits and names of a session.
#[derive(Debug, Clone)]
pub struct Config {
    /// The name in the greeting and in EHLO.
    pub hostname: String,
    /// Largest message accepted (announced as SIZE).
    pub max_message_bytes: usize,
    /// RFC 5321 4.5.3.1.8 requires accepting at least 100.
    pub max_recipients: usize,
    /// Time allowed for each command (RFC 5321 4.5.3.2.7: at least 5 minutes).
    pub command_timeout: Duration,
    /// Time allowed for each line of DATA (4.5.3.2.5: at least 3 minutes per block).
    pub data_timeout: Duration,
    /// After this many refused commands the session is closed.
    pub max_errors: usize,
    /// Submission mode (RFC 6409 with RFC 4954): AUTH PLAIN and LOGIN are offered, only inside TLS,
    /// and MAIL needs an authenticated session. Off (the Internet mail server), AUTH is not offered.
    pub submission: bool,
    /// Pause before answering a wrong password (slows guessing).
    pub auth_failure_delay: Duration,
}

impl Config {
    pub fn new(hostname: impl Into<String>) -> Config {
        Config {
            hostname: hostname.into(),
            max_message_bytes: 25 * 1024 * 1024,
            max_recipients: 100,
            command_timeout: Duration::from_secs(300),
            data_timeout: Duration::from_secs(180),
            max_errors: 20,
            submission: false,
            auth_failure_delay: Duration::from_secs(1),
        }
    }
}

/// What the client has said so far in this transaction.
#[derive(Debug, Clone)]
pub struct Envelope {
    pub peer: SocketAddr,
    pub helo: String,
    /// `None` for the null reverse path `<>` (bounces).
    pub from: Option<Address>,
    pub rcpts: Vec<Address>,
    /// Whether the session runs inside TLS.
    pub tls: bool,
    /// The identity the client authenticated as (submission mode), as the handler returned it.
    pub auth: Option<String>,
}

/// The role's part of a session.
pub trait Handler: Send + Sync {
    /// MAIL FROM: accept (Ok) or refuse with a reply.
    fn check_sender(
        &self,
        env: &Envelope,
        from: Option<&Address>,
    ) -> impl Future<Output = Result<(), Reply>> + Send;
    /// RCPT TO: accept or refuse.
    fn check_recipient(
        &self,
        env: &Envelope,
        rcpt: &Address,
    ) -> impl Future<Output = Result<(), Reply>> + Send;
    /// The end of DATA: the message (dot-unstuffed, CRLF line ends) for the envelope. The reply is
    /// sent as is: 250 only once the message is safe.
    fn deliver(&self, env: &Envelope, message: Vec<u8>) -> impl Future<Output = Reply> + Send;
    /// AUTH (submission mode only): checks a user name and password; `Ok(identity)` when they match.
    /// The default refuses everyone (a role without submission never gets here).
    fn authenticate(
        &self,
        _user: &str,
        _password: &str,
    ) -> impl Future<Output = Result<String, AuthError>> + Send {
        async { Err(AuthError::Invalid) }
    }
}

fn count(kind: &'static str) {
    metrics::counter!("fabric_smtp_refusals_total", "kind" => kind).increment(1);
}

enum Step {
    Continue,
    Close,
    StartTls,
}

struct Session<'a, R, W, H> {
    reader: LineReader<R>,
    writer: W,
    config: &'a Config,
    handler: &'a H,
    env: Envelope,
    greeted: bool,
    in_transaction: bool,
    errors: usize,
    /// STARTTLS is offered (an acceptor exists and TLS is not on yet).
    offer_tls: bool,
}

/// How a phase of the session ended.
enum Ended {
    Closed,
    /// The client asked for TLS and got its 220: the caller does the handshake.
    StartTls,
}

/// Runs a session on `stream` until QUIT, the client leaves, a timeout, or too many errors. With an
/// acceptor, STARTTLS (RFC 3207) is offered once: whatever the client sent after the STARTTLS line
/// and before the handshake is thrown away, never read as a command (CVE-2011-0411), and the session
/// starts over inside TLS (EHLO again; STARTTLS no longer offered).
pub async fn serve<S, H>(
    stream: S,
    peer: SocketAddr,
    config: &Config,
    handler: &H,
    tls: Option<tokio_rustls::TlsAcceptor>,
) -> std::io::Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
    H: Handler,
{
    metrics::counter!("fabric_smtp_sessions_total").increment(1);
    let (r, w) = tokio::io::split(stream);
    let mut s = Session::new(r, w, peer, config, handler, tls.is_some(), false);
    s.send(&Reply::plain(
        220,
        format!("{} ESMTP Mail Fabric ready", config.hostname),
    ))
    .await?;
    if let Ended::Closed = s.run().await? {
        return Ok(());
    }
    let Some(acceptor) = tls else {
        return Ok(());
    };
    let (read_half, leftover) = s.reader.into_parts();
    if !leftover.is_empty() {
        count("starttls_injection");
        tracing::info!(peer = %peer, bytes = leftover.len(), "bytes sent after STARTTLS before the handshake: discarded");
    }
    let stream = read_half.unsplit(s.writer);
    let secured = match acceptor.accept(stream).await {
        Ok(t) => t,
        Err(e) => {
            count("tls_handshake");
            tracing::debug!(peer = %peer, error = %e, "TLS handshake failed");
            return Ok(());
        }
    };
    metrics::counter!("fabric_smtp_tls_sessions_total").increment(1);
    let (r, w) = tokio::io::split(secured);
    let mut s = Session::new(r, w, peer, config, handler, false, true);
    s.run().await?;
    Ok(())
}

impl<'a, R, W, H> Session<'a, R, W, H>
where
    R: AsyncRead + Unpin + Send,
    W: AsyncWrite + Unpin + Send,
    H: Handler,
{
    fn new(
        r: R,
        writer: W,
        peer: SocketAddr,
        config: &'a Config,
        handler: &'a H,
        offer_tls: bool,
        secured: bool,
    ) -> Self {
        Session {
            reader: LineReader::new(r),
            writer,
            config,
            handler,
            env: Envelope {
                peer,
                helo: String::new(),
                from: None,
                rcpts: Vec::new(),
                tls: secured,
                auth: None,
            },
            greeted: false,
            in_transaction: false,
            errors: 0,
            offer_tls,
        }
    }

    async fn run(&mut self) -> std::io::Result<Ended> {
        let config = self.config;
        let s = self;
        loop {
            let line = match tokio::time::timeout(
                config.command_timeout,
                s.reader.read_line(MAX_COMMAND_LINE),
            )
            .await
            {
                Err(_) => {
                    count("timeout");
                    s.send(&Reply::new(
                        421,
                        "4.4.2",
                        "timeout waiting for a command; closing",
                    ))
                    .await?;
                    return Ok(Ended::Closed);
                }
                Ok(r) => r?,
            };
            let step = match line {
                None => return Ok(Ended::Closed),
                Some(Line::TooLong) => {
                    count("line_too_long");
                    s.refuse(Reply::new(
                        500,
                        "5.5.2",
                        "line too long (512 octets at most)",
                    ))
                    .await?
                }
                Some(Line::Complete { bare: true, .. }) => {
                    count("bare_cr_lf");
                    s.refuse(Reply::new(500, "5.5.2", "bare CR or LF in a command"))
                        .await?
                }
                Some(Line::Complete { bytes, .. }) => s.command(&bytes).await?,
            };
            match step {
                Step::Continue => {}
                Step::Close => {
                    let _ = s.writer.shutdown().await;
                    return Ok(Ended::Closed);
                }
                Step::StartTls => return Ok(Ended::StartTls),
            }
        }
    }
}

impl<R, W, H> Session<'_, R, W, H>
where
    R: AsyncRead + Unpin + Send,
    W: AsyncWrite + Unpin + Send,
    H: Handler,
{
    async fn send(&mut self, reply: &Reply) -> std::io::Result<()> {
        metrics::counter!("fabric_smtp_replies_total", "code" => reply.code.to_string())
            .increment(1);
        self.writer.write_all(reply.encode().as_bytes()).await?;
        self.writer.flush().await
    }

    /// Sends a refusal; closes the session after too many.
    async fn refuse(&mut self, reply: Reply) -> std::io::Result<Step> {
        self.errors += 1;
        if self.errors >= self.config.max_errors {
            self.send(&reply).await?;
            self.send(&Reply::new(421, "4.7.0", "too many errors; closing"))
                .await?;
            return Ok(Step::Close);
        }
        self.send(&reply).await?;
        Ok(Step::Continue)
    }

    async fn reply(&mut self, reply: Reply) -> std::io::Result<Step> {
        if reply.is_positive() {
            self.send(&reply).await?;
            Ok(Step::Continue)
        } else {
            self.refuse(reply).await
        }
    }

    fn reset(&mut self) {
        self.env.from = None;
        self.env.rcpts.clear();
        self.in_transaction = false;
    }

    async fn command(&mut self, line: &[u8]) -> std::io::Result<Step> {
        let Ok(text) = std::str::from_utf8(line) else {
            count("syntax");
            return self
                .refuse(Reply::new(500, "5.5.2", "command is not valid UTF-8"))
                .await;
        };
        let (verb, arg) = match text.split_once(' ') {
            Some((v, a)) => (v, a),
            None => (text, ""),
        };
        match verb.to_ascii_uppercase().as_str() {
            "EHLO" | "HELO" => self.hello(verb, arg).await,
            "MAIL" => self.mail(arg).await,
            "RCPT" => self.rcpt(arg).await,
            "DATA" => self.data(arg).await,
            "RSET" => {
                self.reset();
                self.reply(Reply::new(250, "2.0.0", "OK")).await
            }
            "NOOP" => self.reply(Reply::new(250, "2.0.0", "OK")).await,
            "QUIT" => {
                self.send(&Reply::new(221, "2.0.0", "bye")).await?;
                Ok(Step::Close)
            }
            "VRFY" => {
                self.reply(Reply::new(
                    252,
                    "2.5.2",
                    "cannot verify; send mail and we will try",
                ))
                .await
            }
            "HELP" => self.reply(Reply::new(214, "2.0.0", "see RFC 5321")).await,
            "STARTTLS" if self.offer_tls => {
                if !arg.trim().is_empty() {
                    count("syntax");
                    return self
                        .refuse(Reply::new(501, "5.5.4", "STARTTLS takes no argument"))
                        .await;
                }
                self.send(&Reply::new(220, "2.0.0", "ready to start TLS"))
                    .await?;
                Ok(Step::StartTls)
            }
            "AUTH" if self.config.submission => self.auth(arg).await,
            "STARTTLS" | "AUTH" | "BDAT" | "ETRN" | "EXPN" | "TURN" => {
                count("not_offered");
                self.refuse(Reply::new(
                    502,
                    "5.5.1",
                    format!("{verb} is not offered here"),
                ))
                .await
            }
            _ => {
                count("unknown_command");
                self.refuse(Reply::new(500, "5.5.1", "unknown command"))
                    .await
            }
        }
    }

    async fn hello(&mut self, verb: &str, arg: &str) -> std::io::Result<Step> {
        let name = arg.trim();
        if name.is_empty() || name.contains(' ') {
            count("syntax");
            return self
                .refuse(Reply::new(501, "5.5.4", format!("syntax: {verb} hostname")))
                .await;
        }
        self.reset();
        self.env.helo = name.to_string();
        self.greeted = true;
        if verb.eq_ignore_ascii_case("HELO") {
            return self
                .reply(Reply::plain(250, self.config.hostname.clone()))
                .await;
        }
        let reply = Reply {
            code: 250,
            enhanced: None,
            lines: vec![
                format!("{} greets {name}", self.config.hostname),
                "PIPELINING".into(),
                format!("SIZE {}", self.config.max_message_bytes),
                "8BITMIME".into(),
                "ENHANCEDSTATUSCODES".into(),
            ],
        };
        let mut reply = reply;
        if self.offer_tls {
            reply.lines.push("STARTTLS".into());
        }
        // RFC 4954 section 4 with RFC 3207: no AUTH offered over a cleartext channel.
        if self.config.submission && self.env.tls && self.env.auth.is_none() {
            reply.lines.push("AUTH PLAIN LOGIN".into());
        }
        self.reply(reply).await
    }

    fn path_refusal(e: &PathError) -> Reply {
        match e {
            PathError::RelayForm => {
                count("relay_form");
                Reply::new(
                    550,
                    "5.7.1",
                    "relaying denied: this address form is not accepted",
                )
            }
            PathError::LocalTooLong => {
                count("path_too_long");
                Reply::new(501, "5.1.3", "local part longer than 64 octets")
            }
            PathError::DomainTooLong => {
                count("path_too_long");
                Reply::new(501, "5.1.3", "domain longer than 255 octets")
            }
            PathError::PathTooLong => {
                count("path_too_long");
                Reply::new(501, "5.1.3", "path longer than 256 octets")
            }
            PathError::Syntax => {
                count("syntax");
                Reply::new(501, "5.1.3", "syntax error in the address")
            }
        }
    }

    async fn mail(&mut self, arg: &str) -> std::io::Result<Step> {
        if !self.greeted {
            count("bad_sequence");
            return self.refuse(Reply::new(503, "5.5.1", "EHLO first")).await;
        }
        if self.in_transaction {
            count("bad_sequence");
            return self
                .refuse(Reply::new(503, "5.5.1", "MAIL already given; RSET first"))
                .await;
        }
        if self.config.submission && self.env.auth.is_none() {
            count("auth_required");
            return self
                .refuse(Reply::new(530, "5.7.0", "Authentication required"))
                .await;
        }
        let Some(path) = strip_prefix_ci(arg, "FROM:") else {
            count("syntax");
            return self
                .refuse(Reply::new(501, "5.5.4", "syntax: MAIL FROM:<address>"))
                .await;
        };
        let (from, params) = match parse_path(path, true) {
            Ok(p) => p,
            Err(e) => return self.refuse(Self::path_refusal(&e)).await,
        };
        for param in params.split_whitespace() {
            let (key, value) = param.split_once('=').unwrap_or((param, ""));
            match key.to_ascii_uppercase().as_str() {
                "SIZE" => match value.parse::<u64>() {
                    Ok(n) if n > self.config.max_message_bytes as u64 => {
                        count("too_large");
                        return self
                            .refuse(Reply::new(552, "5.3.4", "message size exceeds the limit"))
                            .await;
                    }
                    Ok(_) => {}
                    Err(_) => {
                        count("syntax");
                        return self
                            .refuse(Reply::new(501, "5.5.4", "SIZE needs a number"))
                            .await;
                    }
                },
                "BODY"
                    if value.eq_ignore_ascii_case("7BIT")
                        || value.eq_ignore_ascii_case("8BITMIME") => {}
                _ => {
                    count("syntax");
                    return self
                        .refuse(Reply::new(
                            555,
                            "5.5.4",
                            format!("unsupported parameter {key}"),
                        ))
                        .await;
                }
            }
        }
        if let Err(reply) = self.handler.check_sender(&self.env, from.as_ref()).await {
            return self.refuse(reply).await;
        }
        self.env.from = from;
        self.in_transaction = true;
        self.reply(Reply::new(250, "2.1.0", "sender OK")).await
    }

    async fn rcpt(&mut self, arg: &str) -> std::io::Result<Step> {
        if !self.in_transaction {
            count("bad_sequence");
            return self.refuse(Reply::new(503, "5.5.1", "MAIL first")).await;
        }
        let Some(path) = strip_prefix_ci(arg, "TO:") else {
            count("syntax");
            return self
                .refuse(Reply::new(501, "5.5.4", "syntax: RCPT TO:<address>"))
                .await;
        };
        let rcpt = match parse_path(path, false) {
            Ok((Some(a), params)) if params.trim().is_empty() => a,
            Ok(_) => {
                count("syntax");
                return self
                    .refuse(Reply::new(555, "5.5.4", "RCPT takes no parameters here"))
                    .await;
            }
            Err(e) => return self.refuse(Self::path_refusal(&e)).await,
        };
        if self.env.rcpts.len() >= self.config.max_recipients {
            count("too_many_recipients");
            return self
                .refuse(Reply::new(452, "4.5.3", "too many recipients"))
                .await;
        }
        if let Err(reply) = self.handler.check_recipient(&self.env, &rcpt).await {
            return self.refuse(reply).await;
        }
        self.env.rcpts.push(rcpt);
        self.reply(Reply::new(250, "2.1.5", "recipient OK")).await
    }
}

fn strip_prefix_ci<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    let head = s.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &s[prefix.len()..])
}
