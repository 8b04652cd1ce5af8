//! One SMTP transaction at one address, telling apart what a sender must tell apart to count
//! honestly: a 250 after DATA, a refusal (4xx: try again; 5xx: never), and the unknown outcome of a
//! session that broke after the final dot was sent and before its reply came (RFC 1047: the server
//! may have taken it, so a resend may duplicate it). In submission mode: STARTTLS, then AUTH PLAIN.

use std::net::SocketAddr;
use std::time::Duration;

use base64::Engine;

use super::net::{Conn, NetError, Tls};

/// The result of one attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attempted {
    /// 250 to the end of DATA.
    Acked(String),
    /// Refused for now, or failed before the message was complete: resend.
    Temporary(String),
    /// Refused for good (5xx).
    Permanent(String),
    /// The final dot went out and no reply came: the server may hold the message.
    Unknown(String),
}

impl Attempted {
    pub fn label(&self) -> &'static str {
        match self {
            Attempted::Acked(_) => "acked",
            Attempted::Temporary(_) => "temporary",
            Attempted::Permanent(_) => "permanent",
            Attempted::Unknown(_) => "unknown",
        }
    }

    pub fn text(&self) -> &str {
        match self {
            Attempted::Acked(t)
            | Attempted::Temporary(t)
            | Attempted::Permanent(t)
            | Attempted::Unknown(t) => t,
        }
    }
}

/// A customer's login for submission.
pub struct Login<'a> {
    pub user: &'a str,
    pub password: &'a str,
    pub tls: &'a Tls,
}

/// How long each step may take.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// Connecting and the greeting (a frozen server accepts TCP and never greets).
    pub greeting: Duration,
    /// Every command's reply.
    pub step: Duration,
    /// The reply to the end of DATA (the server waits for two stores' fsyncs).
    pub data: Duration,
}

struct Reply {
    code: u16,
    text: String,
}

async fn reply(c: &mut Conn) -> Result<Reply, NetError> {
    let mut text = Vec::new();
    for _ in 0..100 {
        let line = c.line().await?;
        let code = line
            .get(..3)
            .and_then(|s| s.parse::<u16>().ok())
            .filter(|c| (200..600).contains(c))
            .ok_or_else(|| NetError::Protocol(format!("bad reply {line:?}")))?;
        text.push(line.get(4..).unwrap_or("").to_string());
        if line.as_bytes().get(3) != Some(&b'-') {
            return Ok(Reply {
                code,
                text: format!("{code} {}", text.join(" / ")),
            });
        }
    }
    Err(NetError::Protocol("reply too long".into()))
}

async fn cmd(c: &mut Conn, line: &str) -> Result<Reply, NetError> {
    c.send(format!("{line}\r\n").as_bytes()).await?;
    reply(c).await
}

/// The outcome a negative reply means.
fn refused(step: &str, r: &Reply) -> Attempted {
    let text = format!("{step}: {}", r.text);
    if r.code >= 500 {
        Attempted::Permanent(text)
    } else {
        Attempted::Temporary(text)
    }
}

/// Sends `message` from `from` to `rcpts` at `addr`; with `login`, as a customer's submission.
pub async fn attempt(
    addr: SocketAddr,
    from: &str,
    rcpts: &[String],
    message: &[u8],
    login: Option<Login<'_>>,
    timeouts: Timeouts,
) -> Attempted {
    let mut dot_sent = false;
    match session(addr, from, rcpts, message, login, timeouts, &mut dot_sent).await {
        Ok(outcome) => outcome,
        Err(e) if dot_sent => Attempted::Unknown(format!("{addr}: after the final dot: {e}")),
        Err(e) => Attempted::Temporary(format!("{addr}: {e}")),
    }
}

async fn session(
    addr: SocketAddr,
    from: &str,
    rcpts: &[String],
    message: &[u8],
    login: Option<Login<'_>>,
    timeouts: Timeouts,
    dot_sent: &mut bool,
) -> Result<Attempted, NetError> {
    let mut c = Conn::connect(addr, timeouts.greeting).await?;
    let greeting = reply(&mut c).await?;
    c.timeout = timeouts.step;
    if greeting.code != 220 {
        return Ok(refused("greeting", &greeting));
    }
    let helo = "chaos.fabric.localhost";
    let ehlo = cmd(&mut c, &format!("EHLO {helo}")).await?;
    if ehlo.code != 250 {
        return Ok(refused("EHLO", &ehlo));
    }
    if let Some(login) = login {
        let start = cmd(&mut c, "STARTTLS").await?;
        if start.code != 220 {
            return Ok(refused("STARTTLS", &start));
        }
        c = c.starttls(login.tls).await?;
        let ehlo = cmd(&mut c, &format!("EHLO {helo}")).await?;
        if ehlo.code != 250 {
            return Ok(refused("EHLO after STARTTLS", &ehlo));
        }
        let token = base64::engine::general_purpose::STANDARD
            .encode(format!("\0{}\0{}", login.user, login.password));
        let auth = cmd(&mut c, &format!("AUTH PLAIN {token}")).await?;
        if auth.code != 235 {
            // A wrong password is this program's bug; a 4xx (directory unreachable) is for now.
            return Ok(refused("AUTH", &auth));
        }
    }
    let mail = cmd(&mut c, &format!("MAIL FROM:<{from}>")).await?;
    if mail.code != 250 {
        return Ok(refused("MAIL FROM", &mail));
    }
    for rcpt in rcpts {
        let r = cmd(&mut c, &format!("RCPT TO:<{rcpt}>")).await?;
        if !(250..=252).contains(&r.code) {
            let _ = cmd(&mut c, "QUIT").await;
            return Ok(refused(&format!("RCPT TO {rcpt}"), &r));
        }
    }
    let data = cmd(&mut c, "DATA").await?;
    if data.code != 354 {
        return Ok(refused("DATA", &data));
    }
    c.send(&smtp::client::dot_stuff(message)).await?;
    *dot_sent = true;
    c.timeout = timeouts.data;
    let end = reply(&mut c).await?;
    *dot_sent = false;
    c.timeout = Duration::from_secs(2);
    let _ = cmd(&mut c, "QUIT").await;
    if end.code == 250 {
        Ok(Attempted::Acked(end.text))
    } else {
        Ok(refused("end of DATA", &end))
    }
}
