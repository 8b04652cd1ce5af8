//! The session: greeting, the command loop with its states (RFC 3501 3), STARTTLS, logins, and the
//! commands that need no selected folder. Selected-state commands are in [`crate::selected`].

use std::collections::HashMap;
use std::sync::Arc;

use base64::Engine as _;
use bytes::Bytes;
use imap_codec::CommandCodec;
use imap_codec::decode::{CommandDecodeError, Decoder};
use imap_codec::imap_types::auth::AuthMechanism;
use imap_codec::imap_types::command::{Command, CommandBody};
use imap_codec::imap_types::mailbox::ListMailbox;
use imap_codec::imap_types::status::StatusDataItemName;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use crate::framing::{self, Frame, Line, Reader};
use crate::mime::Parsed;
use crate::names::{folder_name, wildcard};
use crate::write::mailbox;
use crate::{
    Account, Backend, BackendError, Config, LoginError, MAX_COMMAND_LINE, MessageMeta, refuse,
};

/// A message's bytes and, once computed, its structure; kept per session.
pub(crate) struct Cached {
    pub raw: Bytes,
    pub parsed: Option<Arc<Parsed>>,
}

pub(crate) struct Selected {
    pub name: String,
    pub read_only: bool,
    pub uidvalidity: u32,
    pub uidnext: u32,
    pub msgs: Vec<MessageMeta>,
}

pub(crate) struct Session<'a, B: Backend> {
    pub config: &'a Config,
    pub backend: &'a B,
    pub tls_available: bool,
    pub secured: bool,
    pub account: Option<B::Account>,
    pub user: String,
    pub selected: Option<Selected>,
    pub failures: usize,
    pub cache: HashMap<u32, Arc<Cached>>,
    pub cache_bytes: usize,
}

pub(crate) enum Flow {
    Continue,
    Logout,
    StartTls,
}

/// Runs one session until LOGOUT, the client leaves, or the autologout timer fires. With an
/// acceptor, STARTTLS is offered and logins wait for it (LOGINDISABLED); whatever the client sent
/// after STARTTLS and before the handshake is thrown away, never read as a command.
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
    metrics::counter!("fabric_imap_sessions_total").increment(1);
    let mut session = Session {
        config,
        backend,
        tls_available: tls.is_some(),
        secured: false,
        account: None,
        user: String::new(),
        selected: None,
        failures: 0,
        cache: HashMap::new(),
        cache_bytes: 0,
    };
    let (r, mut w) = tokio::io::split(stream);
    let greeting = format!(
        "* OK [CAPABILITY {}] {} IMAP4rev1 server ready\r\n",
        session.capabilities(),
        config.hostname
    );
    w.write_all(greeting.as_bytes()).await?;
    let mut reader = Reader::new(r);
    match session.run(&mut reader, &mut w).await? {
        Flow::StartTls => {}
        _ => return Ok(()),
    }
    let Some(acceptor) = tls else {
        return Ok(());
    };
    if reader.has_buffered() {
        // Commands pipelined behind STARTTLS were sent in clear text: never execute them.
        refuse("starttls_injection");
    }
    let read_half = reader.inner.into_inner();
    let secured = match acceptor.accept(read_half.unsplit(w)).await {
        Ok(t) => t,
        Err(e) => {
            refuse("tls_handshake");
            tracing::debug!(error = %e, "IMAP TLS handshake failed");
            return Ok(());
        }
    };
    session.secured = true;
    let (r, mut w) = tokio::io::split(secured);
    let mut reader = Reader::new(r);
    session.run(&mut reader, &mut w).await?;
    Ok(())
}

pub(crate) fn command_name(body: &CommandBody) -> &'static str {
    body.name()
}

impl<B: Backend> Session<'_, B> {
    fn login_needs_tls(&self) -> bool {
        self.tls_available && !self.secured
    }

    pub fn capabilities(&self) -> String {
        let mut caps = String::from("IMAP4rev1 LITERAL- IDLE UNSELECT");
        if self.login_needs_tls() {
            caps.push_str(" STARTTLS LOGINDISABLED");
        } else {
            caps.push_str(" AUTH=PLAIN");
        }
        caps
    }

    pub(crate) async fn run<R, W>(
        &mut self,
        reader: &mut Reader<R>,
        writer: &mut W,
    ) -> std::io::Result<Flow>
    where
        R: AsyncRead + Unpin + Send,
        W: AsyncWrite + Unpin + Send,
    {
        loop {
            let frame = match tokio::time::timeout(
                self.config.idle_timeout,
                reader.read_command(writer, self.config.max_append),
            )
            .await
            {
                Err(_) => {
                    refuse("timeout");
                    writer
                        .write_all(b"* BYE Autologout; idle for too long\r\n")
                        .await?;
                    return Ok(Flow::Logout);
                }
                Ok(f) => f?,
            };
            let bytes = match frame {
                Frame::Closed => return Ok(Flow::Logout),
                Frame::TooLong { tag } => {
                    refuse("line_too_long");
                    writer
                        .write_all(
                            format!("{tag} BAD [TOOBIG] Command line too long\r\n").as_bytes(),
                        )
                        .await?;
                    continue;
                }
                Frame::LiteralTooBig {
                    tag,
                    nonsync,
                    append,
                } => {
                    refuse("literal_too_big");
                    if nonsync {
                        // RFC 7888 4: the literal's octets are already on their way; they must
                        // never be read as commands, so the session ends.
                        writer
                            .write_all(
                                format!("{tag} BAD [TOOBIG] Literal too large\r\n* BYE Literal too large\r\n")
                                    .as_bytes(),
                            )
                            .await?;
                        return Ok(Flow::Logout);
                    }
                    let line = if append {
                        format!("{tag} NO [TOOBIG] Message too large\r\n")
                    } else {
                        format!("{tag} BAD [TOOBIG] Literal too large\r\n")
                    };
                    writer.write_all(line.as_bytes()).await?;
                    continue;
                }
                Frame::Command(b) => b,
            };
            let command = match CommandCodec::default().decode(&bytes) {
                Ok((_, c)) => c,
                Err(e) => {
                    let tag = framing::tag_of(&bytes);
                    let verb = framing::verb_of(&bytes);
                    let known = [
                        "CAPABILITY",
                        "NOOP",
                        "LOGOUT",
                        "STARTTLS",
                        "AUTHENTICATE",
                        "LOGIN",
                        "SELECT",
                        "EXAMINE",
                        "CREATE",
                        "DELETE",
                        "RENAME",
                        "SUBSCRIBE",
                        "UNSUBSCRIBE",
                        "LIST",
                        "LSUB",
                        "STATUS",
                        "APPEND",
                        "CHECK",
                        "CLOSE",
                        "EXPUNGE",
                        "SEARCH",
                        "FETCH",
                        "STORE",
                        "COPY",
                        "UID FETCH",
                        "UID SEARCH",
                        "UID STORE",
                        "UID COPY",
                        "IDLE",
                        "UNSELECT",
                        "ENABLE",
                        "MOVE",
                    ];
                    let text = if known.contains(&verb.as_str()) {
                        refuse("syntax");
                        "Syntax error in arguments"
                    } else {
                        refuse("unknown_command");
                        "Unknown command"
                    };
                    if matches!(e, CommandDecodeError::LiteralFound { .. }) {
                        tracing::debug!("IMAP command with a literal we did not frame");
                    }
                    writer
                        .write_all(format!("{tag} BAD {text}\r\n").as_bytes())
                        .await?;
                    continue;
                }
            };
            metrics::counter!("fabric_imap_commands_total", "command" => command_name(&command.body))
                .increment(1);
            let mut out = Vec::new();
            let flow = self.dispatch(command, reader, writer, &mut out).await?;
            writer.write_all(&out).await?;
            writer.flush().await?;
            match flow {
                Flow::Continue => {}
                other => return Ok(other),
            }
        }
    }

    async fn dispatch<R, W>(
        &mut self,
        command: Command<'_>,
        reader: &mut Reader<R>,
        writer: &mut W,
        out: &mut Vec<u8>,
    ) -> std::io::Result<Flow>
    where
        R: AsyncRead + Unpin + Send,
        W: AsyncWrite + Unpin + Send,
    {
        let tag = command.tag.inner().to_string();
        let authed = self.account.is_some();
        let selected = self.selected.is_some();
        let is_examine = matches!(command.body, CommandBody::Examine { .. });
        let is_lsub = matches!(command.body, CommandBody::Lsub { .. });
        let done = |out: &mut Vec<u8>, status: &str| {
            out.extend_from_slice(format!("{tag} {status}\r\n").as_bytes());
        };
        match command.body {
            CommandBody::Capability => {
                out.extend_from_slice(
                    format!("* CAPABILITY {}\r\n", self.capabilities()).as_bytes(),
                );
                done(out, "OK CAPABILITY completed");
            }
            CommandBody::Noop | CommandBody::Check => {
                if selected {
                    self.refresh(out, true).await;
                }
                done(out, "OK completed");
            }
            CommandBody::Logout => {
                out.extend_from_slice(
                    format!("* BYE {} logging out\r\n", self.config.hostname).as_bytes(),
                );
                done(out, "OK LOGOUT completed");
                return Ok(Flow::Logout);
            }
            CommandBody::StartTLS => {
                if !self.tls_available || self.secured || authed {
                    refuse("bad_state");
                    done(out, "BAD STARTTLS not available now");
                } else {
                    writer
                        .write_all(format!("{tag} OK Begin TLS negotiation now\r\n").as_bytes())
                        .await?;
                    writer.flush().await?;
                    return Ok(Flow::StartTls);
                }
            }
            CommandBody::Login { username, password } => {
                if authed {
                    refuse("bad_state");
                    done(out, "BAD Already logged in");
                } else if self.login_needs_tls() {
                    refuse("login_before_tls");
                    done(out, "NO [PRIVACYREQUIRED] Use STARTTLS first");
                } else {
                    let user = String::from_utf8_lossy(username.as_ref()).into_owned();
                    let pass = String::from_utf8_lossy(password.declassify().as_ref()).into_owned();
                    return self.login(&tag, &user, &pass, writer, out).await;
                }
            }
            CommandBody::Authenticate {
                mechanism,
                initial_response,
            } => {
                if authed {
                    refuse("bad_state");
                    done(out, "BAD Already logged in");
                } else if self.login_needs_tls() {
                    refuse("login_before_tls");
                    done(out, "NO [PRIVACYREQUIRED] Use STARTTLS first");
                } else if mechanism != AuthMechanism::Plain {
                    refuse("auth_mechanism");
                    done(out, "NO [CANNOT] Unsupported authentication mechanism");
                } else {
                    let data = match initial_response {
                        Some(r) => Some(r.declassify().to_vec()),
                        None => {
                            writer.write_all(b"+ \r\n").await?;
                            writer.flush().await?;
                            match reader.read_line(MAX_COMMAND_LINE).await? {
                                None => return Ok(Flow::Logout),
                                Some(Line::TooLong(_)) => None,
                                Some(Line::Complete(l)) => {
                                    let l = l.trim_ascii();
                                    if l == b"*" {
                                        done(out, "BAD Authentication cancelled");
                                        return Ok(Flow::Continue);
                                    }
                                    base64::engine::general_purpose::STANDARD.decode(l).ok()
                                }
                            }
                        }
                    };
                    let creds = data.and_then(|d| {
                        let mut it = d.split(|b| *b == 0);
                        let authz = it.next()?.to_vec();
                        let user = it.next()?.to_vec();
                        let pass = it.next()?.to_vec();
                        if it.next().is_some() || (!authz.is_empty() && authz != user) {
                            return None;
                        }
                        Some((
                            String::from_utf8_lossy(&user).into_owned(),
                            String::from_utf8_lossy(&pass).into_owned(),
                        ))
                    });
                    match creds {
                        Some((user, pass)) => {
                            return self.login(&tag, &user, &pass, writer, out).await;
                        }
                        None => {
                            refuse("auth_syntax");
                            done(out, "BAD Invalid SASL PLAIN response");
                        }
                    }
                }
            }
            _ if !authed => {
                refuse("bad_state");
                done(out, "BAD Command not valid before login");
            }
            CommandBody::Select { mailbox: m } | CommandBody::Examine { mailbox: m } => {
                let read_only = is_examine;
                let name = folder_name(&m);
                self.select(&tag, &name, read_only, out).await;
            }
            CommandBody::List {
                reference,
                mailbox_wildcard,
            }
            | CommandBody::Lsub {
                reference,
                mailbox_wildcard,
            } => {
                let verb = if is_lsub { "LSUB" } else { "LIST" };
                let reference = folder_name(&reference);
                let pattern: Vec<u8> = match &mailbox_wildcard {
                    ListMailbox::Token(t) => t.as_ref().to_vec(),
                    ListMailbox::String(s) => s.as_ref().to_vec(),
                };
                if pattern.is_empty() {
                    out.extend_from_slice(
                        format!("* {verb} (\\Noselect) \"/\" \"\"\r\n").as_bytes(),
                    );
                    done(out, &format!("OK {verb} completed"));
                    return Ok(Flow::Continue);
                }
                let mut full = reference.into_bytes();
                full.extend_from_slice(&pattern);
                match self.folders().await {
                    Ok(folders) => {
                        for f in folders {
                            if wildcard(&full, f.name.as_bytes()) {
                                let attrs = match f.name.as_str() {
                                    "Sent" => "\\HasNoChildren \\Sent",
                                    "Quarantine" => "\\HasNoChildren \\Junk",
                                    _ => "\\HasNoChildren",
                                };
                                out.extend_from_slice(
                                    format!("* {verb} ({attrs}) \"/\" ").as_bytes(),
                                );
                                mailbox(out, &f.name);
                                out.extend_from_slice(b"\r\n");
                            }
                        }
                        done(out, &format!("OK {verb} completed"));
                    }
                    Err(e) => done(out, &no(&e)),
                }
            }
            CommandBody::Status {
                mailbox: m,
                item_names,
            } => {
                let name = folder_name(&m);
                match self.folders().await {
                    Ok(folders) => match folders.into_iter().find(|f| f.name == name) {
                        None => done(out, "NO [NONEXISTENT] No such mailbox"),
                        Some(f) => {
                            let mut items = Vec::new();
                            for i in item_names.as_ref() {
                                match i {
                                    StatusDataItemName::Messages => {
                                        items.push(format!("MESSAGES {}", f.messages))
                                    }
                                    StatusDataItemName::Recent => {
                                        items.push("RECENT 0".to_string())
                                    }
                                    StatusDataItemName::UidNext => {
                                        items.push(format!("UIDNEXT {}", f.uidnext))
                                    }
                                    StatusDataItemName::UidValidity => {
                                        items.push(format!("UIDVALIDITY {}", f.uidvalidity))
                                    }
                                    StatusDataItemName::Unseen => {
                                        items.push(format!("UNSEEN {}", f.unseen))
                                    }
                                    _ => {}
                                }
                            }
                            out.extend_from_slice(b"* STATUS ");
                            mailbox(out, &f.name);
                            out.extend_from_slice(format!(" ({})\r\n", items.join(" ")).as_bytes());
                            done(out, "OK STATUS completed");
                        }
                    },
                    Err(e) => done(out, &no(&e)),
                }
            }
            CommandBody::Append {
                mailbox: m,
                flags,
                date,
                message,
            } => {
                let name = folder_name(&m);
                let flags: Vec<String> = flags.iter().map(|f| f.to_string()).collect();
                let date = date.map(|d| d.as_ref().timestamp_millis());
                self.append(&tag, &name, flags, date, message.as_ref().to_vec(), out)
                    .await;
            }
            CommandBody::Create { .. }
            | CommandBody::Delete { .. }
            | CommandBody::Rename { .. } => {
                done(
                    out,
                    "NO [CANNOT] The folders here are fixed: INBOX, Sent, Quarantine",
                );
            }
            CommandBody::Subscribe { .. } | CommandBody::Unsubscribe { .. } => {
                done(out, "OK Every folder is subscribed");
            }
            CommandBody::Idle => {
                return self.idle(&tag, reader, writer, out).await;
            }
            _ if !selected => {
                refuse("bad_state");
                done(out, "BAD No mailbox selected");
            }
            body => {
                self.selected_command(&tag, body, writer, out).await?;
            }
        }
        Ok(Flow::Continue)
    }

    async fn login<W: AsyncWrite + Unpin + Send>(
        &mut self,
        tag: &str,
        user: &str,
        password: &str,
        writer: &mut W,
        out: &mut Vec<u8>,
    ) -> std::io::Result<Flow> {
        match self.backend.login(user, password).await {
            Ok(account) => {
                metrics::counter!("fabric_imap_logins_total", "result" => "ok").increment(1);
                self.account = Some(account);
                self.user = user.trim().to_ascii_lowercase();
                tracing::info!(user = %self.user, "IMAP login");
                out.extend_from_slice(
                    format!(
                        "{tag} OK [CAPABILITY {}] Logged in\r\n",
                        self.capabilities()
                    )
                    .as_bytes(),
                );
                Ok(Flow::Continue)
            }
            Err(LoginError::Invalid) => {
                metrics::counter!("fabric_imap_logins_total", "result" => "invalid").increment(1);
                self.failures += 1;
                tokio::time::sleep(self.config.auth_failure_delay).await;
                writer
                    .write_all(
                        format!("{tag} NO [AUTHENTICATIONFAILED] Invalid credentials\r\n")
                            .as_bytes(),
                    )
                    .await?;
                if self.failures >= self.config.max_auth_failures {
                    writer
                        .write_all(b"* BYE Too many failed logins\r\n")
                        .await?;
                    return Ok(Flow::Logout);
                }
                Ok(Flow::Continue)
            }
            Err(LoginError::Unavailable(e)) => {
                metrics::counter!("fabric_imap_logins_total", "result" => "unavailable")
                    .increment(1);
                tracing::warn!(error = %e, "IMAP login could not be checked");
                out.extend_from_slice(
                    format!("{tag} NO [UNAVAILABLE] Try again later\r\n").as_bytes(),
                );
                Ok(Flow::Continue)
            }
        }
    }

    pub(crate) fn account(&self) -> Result<&B::Account, BackendError> {
        self.account
            .as_ref()
            .ok_or_else(|| BackendError::Unavailable("not logged in".into()))
    }

    async fn folders(&self) -> Result<Vec<crate::FolderStatus>, BackendError> {
        self.account()?.folders().await
    }
}

/// A tagged NO for a backend failure (without the tag).
pub(crate) fn no(e: &BackendError) -> String {
    match e {
        BackendError::NoSuchFolder => "NO [NONEXISTENT] No such mailbox".to_string(),
        BackendError::TooBig => "NO [TOOBIG] Message too large".to_string(),
        BackendError::Unavailable(m) => {
            tracing::warn!(error = %m, "IMAP store call failed");
            "NO [UNAVAILABLE] Try again later".to_string()
        }
    }
}
