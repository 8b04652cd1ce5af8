//! The checker's mail client: reads the `X-Chaos-Id` header of every message in a user's INBOX over
//! IMAP, as a customer would (STARTTLS, LOGIN, SELECT, UID FETCH of the header, LOGOUT).

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, bail};

use super::net::{Conn, Tls};

/// The header every campaign message carries.
pub const ID_HEADER: &str = "X-Chaos-Id";

/// At most this many untagged responses to one command (a mailbox of the campaign is far smaller).
const MAX_RESPONSES: usize = 1_000_000;
/// The largest literal we accept (one header field).
const MAX_LITERAL: usize = 64 * 1024;

/// One response: its text, with each literal inlined.
struct Response {
    text: String,
    literals: Vec<Vec<u8>>,
}

async fn response(c: &mut Conn) -> anyhow::Result<Response> {
    let mut text = String::new();
    let mut literals = Vec::new();
    loop {
        let line = c.line().await?;
        text.push_str(&line);
        // A line ending in {N} announces N bytes of literal, then the response goes on.
        let Some(n) = line
            .strip_suffix('}')
            .and_then(|l| l.rsplit_once('{'))
            .and_then(|(_, n)| n.parse::<usize>().ok())
        else {
            return Ok(Response { text, literals });
        };
        if n > MAX_LITERAL {
            bail!("literal of {n} bytes");
        }
        literals.push(c.bytes(n).await?);
    }
}

/// Sends `tag command` and collects the untagged responses until the tagged one, which must be OK.
async fn command(c: &mut Conn, tag: &str, command: &str) -> anyhow::Result<Vec<Response>> {
    c.send(format!("{tag} {command}\r\n").as_bytes()).await?;
    let mut untagged = Vec::new();
    for _ in 0..MAX_RESPONSES {
        let r = response(c).await?;
        if let Some(rest) = r.text.strip_prefix(&format!("{tag} ")) {
            if rest.starts_with("OK") {
                return Ok(untagged);
            }
            bail!("{}: {rest}", command.split(' ').next().unwrap_or(command));
        }
        untagged.push(r);
    }
    bail!("too many responses")
}

fn quoted(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

/// The `X-Chaos-Id` value of every message in `user`'s INBOX (one entry per message, so a message
/// delivered twice appears twice), and how many messages carried none.
pub async fn inbox_ids(
    addr: SocketAddr,
    tls: &Tls,
    user: &str,
    password: &str,
    timeout: Duration,
) -> anyhow::Result<(Vec<String>, usize)> {
    let mut c = Conn::connect(addr, timeout).await?;
    let greeting = response(&mut c).await?;
    if !greeting.text.starts_with("* OK") {
        bail!("greeting {:?}", greeting.text);
    }
    command(&mut c, "a1", "STARTTLS").await?;
    let mut c = c.starttls(tls).await?;
    command(
        &mut c,
        "a2",
        &format!("LOGIN {} {}", quoted(user), quoted(password)),
    )
    .await
    .with_context(|| format!("login as {user}"))?;
    command(&mut c, "a3", "SELECT INBOX").await?;
    let fetched = command(
        &mut c,
        "a4",
        &format!("UID FETCH 1:* (UID BODY.PEEK[HEADER.FIELDS ({ID_HEADER})])"),
    )
    .await?;
    let _ = command(&mut c, "a5", "LOGOUT").await;
    let mut ids = Vec::new();
    let mut without = 0;
    for r in fetched.iter().filter(|r| r.text.contains(" FETCH ")) {
        match r.literals.iter().find_map(|l| header_value(l)) {
            Some(id) => ids.push(id),
            None => without += 1,
        }
    }
    Ok((ids, without))
}

/// The value of the campaign's header in a header block.
fn header_value(block: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(block);
    let prefix = format!("{}:", ID_HEADER.to_ascii_lowercase());
    text.lines().find_map(|l| {
        l.to_ascii_lowercase()
            .starts_with(&prefix)
            .then(|| l[prefix.len()..].trim().to_string())
    })
}

#[cfg(test)]
mod tests {
    use super::header_value;

    #[test]
    fn finds_the_header_whatever_its_case() {
        assert_eq!(
            header_value(b"x-chaos-id:  run-7 \r\n\r\n").as_deref(),
            Some("run-7")
        );
        assert_eq!(
            header_value(b"Subject: x\r\nX-Chaos-Id: r-1\r\n\r\n").as_deref(),
            Some("r-1")
        );
        assert_eq!(header_value(b"\r\n"), None);
    }
}
