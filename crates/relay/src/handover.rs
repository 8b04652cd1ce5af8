//! Handing held mail to its home site: over each of the home site's Internet routers (the path the
//! Internet uses: router, redirector, a mail server of that site), then straight to each of the home
//! site's Internet mail servers (the path between the sites). The relay connects from its own address,
//! which is how the home site knows it (the redirector keeps a relay's sessions on its own site's
//! servers, and the mail server takes the message's `X-Fabric-Id`).

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use smtp::client::{self, Outcome};

/// Each read and write of a hand-over.
pub const SMTP_TIMEOUT: Duration = Duration::from_secs(30);
/// Connecting and the greeting: a frozen server (it accepts TCP, never greets) costs this much per
/// path and round, so it is short; a live server of the fabric greets in milliseconds.
pub const GREETING_TIMEOUT: Duration = Duration::from_secs(2);

/// One hand-over: the first path whose answer is not temporary for every recipient gives the
/// outcomes (and its name); when every path fails, every recipient is temporary with each path's
/// reason.
pub async fn deliver(
    paths: &[(String, SocketAddr)],
    source: IpAddr,
    helo: &str,
    from: &str,
    rcpts: &[String],
    body: &[u8],
) -> (Option<String>, Vec<Outcome>) {
    let mut reasons = Vec::new();
    for (name, addr) in paths {
        let options = client::Options {
            source: Some(source),
            greeting_timeout: GREETING_TIMEOUT,
            timeout: SMTP_TIMEOUT,
        };
        let outcomes = client::deliver_with(options, *addr, helo, from, rcpts, body).await;
        if outcomes.iter().any(|o| !matches!(o, Outcome::Temporary(_))) {
            return (Some(name.clone()), outcomes);
        }
        let why = match outcomes.first() {
            Some(Outcome::Temporary(w)) => w.clone(),
            _ => "no answer".into(),
        };
        reasons.push(format!("{name}: {why}"));
    }
    if reasons.is_empty() {
        reasons.push("the home site has no Internet router or mail server".into());
    }
    let why = reasons.join("; ");
    (
        None,
        rcpts
            .iter()
            .map(|_| Outcome::Temporary(why.clone()))
            .collect(),
    )
}
