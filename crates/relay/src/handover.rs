//! Handing held mail to its home site: over each of the home site's Internet routers (the path the
//! Internet uses: router, redirector, a mail server of that site), then straight to each of the home
//! site's Internet mail servers (the path between the sites). The relay connects from its own address,
//! which is how the home site knows it (the redirector keeps a relay's sessions on its own site's
//! servers, and the mail server takes the message's `X-Fabric-Id`).

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use smtp::client::{self, Outcome};
use topology::{Role, Topology};

/// Each read and write of a hand-over.
pub const SMTP_TIMEOUT: Duration = Duration::from_secs(30);
/// Connecting and the greeting: a frozen server (it accepts TCP, never greets) costs this much per
/// path and round, so it is short; a live server of the fabric greets in milliseconds.
pub const GREETING_TIMEOUT: Duration = Duration::from_secs(2);

/// Where a home site takes mail, in the order they are tried; `rotate` turns the routers so that
/// successive attempts start at a different one.
pub fn paths(topology: &Topology, home: &str, rotate: usize) -> Vec<(String, SocketAddr)> {
    let mut routers: Vec<(String, SocketAddr)> = topology
        .routers(home, "internet")
        .into_iter()
        .filter(|_| topology.acl_allows("internet", "smtp"))
        .filter_map(|r| Some((r.name.clone(), r.service_addr("smtp")?)))
        .collect();
    if !routers.is_empty() {
        let n = rotate % routers.len();
        routers.rotate_left(n);
    }
    let servers = topology
        .nodes_with_role(Role::InetMx)
        .filter(|n| n.site == home)
        .filter_map(|n| Some((n.name.clone(), n.service_addr("smtp")?)));
    routers.into_iter().chain(servers).collect()
}

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
