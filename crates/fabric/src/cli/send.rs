//! `fabric send` and `fabric bench smtp`: mail into the fabric the way a remote MTA sends it. The
//! recipient's domain is looked up in the fabric's own DNS (MX, then the A records of each exchange);
//! exchanges are tried in preference order and each one's addresses in turn, and a message counts as
//! sent only once a server answered 250 to its DATA.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use anyhow::{Context, bail};
use hickory_resolver::config::{NameServerConfig, ResolverConfig, ResolverOpts};
use hickory_resolver::name_server::TokioConnectionProvider;
use hickory_resolver::proto::xfer::Protocol;
use hickory_resolver::{ResolveErrorKind, TokioResolver};
use smtp::client::{self, Outcome};
use topology::{Role, Topology};

/// How long one SMTP step may take before the address counts as failed.
const SMTP_TIMEOUT: Duration = Duration::from_secs(30);

/// Finds and talks to the fabric's mail exchangers.
pub struct MxSender {
    resolver: TokioResolver,
    /// The SMTP port the exchangers listen on (the topology's, since loopback nodes cannot use 25).
    port: u16,
    helo: String,
}

/// Where a message went.
#[derive(Debug, Clone)]
pub struct Sent {
    /// The fabric message id from the 250 ("queued as ID").
    pub id: String,
    /// The exchange name and the address that answered 250.
    pub host: String,
    pub addr: SocketAddr,
}

/// Why a message was not sent.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// A server refused it for good (5xx): retrying cannot help.
    #[error("refused: {0}")]
    Permanent(String),
    /// Every exchange and address failed for now (connection failures, 4xx).
    #[error("no mail exchanger took it: {0}")]
    Temporary(String),
    #[error("DNS: {0}")]
    Dns(String),
}

impl MxSender {
    /// A sender that asks the topology's DNS nodes (or `dns` when given).
    pub fn new(topology: &Topology, dns: &[SocketAddr], port: Option<u16>) -> anyhow::Result<Self> {
        let servers: Vec<SocketAddr> = if dns.is_empty() {
            topology
                .nodes_with_role(Role::Dns)
                .filter_map(|n| n.service_addr("dns"))
                .collect()
        } else {
            dns.to_vec()
        };
        if servers.is_empty() {
            bail!("the topology has no dns node and no --dns was given");
        }
        let mut config = ResolverConfig::new();
        for addr in &servers {
            config.add_name_server(NameServerConfig::new(*addr, Protocol::Udp));
            config.add_name_server(NameServerConfig::new(*addr, Protocol::Tcp));
        }
        let mut opts = ResolverOpts::default();
        opts.timeout = Duration::from_secs(2);
        opts.attempts = 2;
        // Every message asks the DNS afresh, as independent senders do: the rotating A records and
        // the re-weighted preferences then spread `fabric bench smtp` like real traffic (a cache
        // would pin one process to the first answer for the records' TTL).
        opts.cache_size = 0;
        let resolver =
            TokioResolver::builder_with_config(config, TokioConnectionProvider::default())
                .with_options(opts)
                .build();
        let port = match port {
            Some(p) => p,
            None => smtp_port(topology).context("the topology declares no SMTP port")?,
        };
        Ok(MxSender {
            resolver,
            port,
            helo: "fabric-send.localhost".to_string(),
        })
    }

    /// The exchangers of `domain`, best first: (preference, name, addresses). With no MX record, the
    /// domain itself (RFC 5321 5.1, the implicit MX).
    pub async fn exchangers(
        &self,
        domain: &str,
    ) -> Result<Vec<(u16, String, Vec<IpAddr>)>, SendError> {
        let fqdn = format!("{}.", domain.trim_end_matches('.'));
        let mut hosts: Vec<(u16, String)> = match self.resolver.mx_lookup(fqdn.as_str()).await {
            Ok(mx) => mx
                .iter()
                .map(|r| (r.preference(), r.exchange().to_ascii()))
                .collect(),
            Err(e) if matches!(e.kind(), ResolveErrorKind::Proto(p) if p.is_no_records_found()) => {
                vec![(0, fqdn.clone())]
            }
            Err(e) => return Err(SendError::Dns(format!("MX {domain}: {e}"))),
        };
        hosts.sort_by_key(|(pref, _)| *pref);
        let mut out = Vec::with_capacity(hosts.len());
        for (pref, name) in hosts {
            let addrs = match self.resolver.ipv4_lookup(name.as_str()).await {
                Ok(a) => a.iter().map(|a| IpAddr::V4(a.0)).collect(),
                Err(_) => Vec::new(),
            };
            out.push((pref, name.trim_end_matches('.').to_string(), addrs));
        }
        Ok(out)
    }

    /// The IPv4 addresses of `name` in the fabric's DNS (a customer finds its access points at
    /// `mail.DOMAIN` this way).
    pub async fn addresses(&self, name: &str) -> Result<Vec<IpAddr>, SendError> {
        let fqdn = format!("{}.", name.trim_end_matches('.'));
        match self.resolver.ipv4_lookup(fqdn.as_str()).await {
            Ok(a) => Ok(a.iter().map(|a| IpAddr::V4(a.0)).collect()),
            Err(e) => Err(SendError::Dns(format!("A {name}: {e}"))),
        }
    }

    /// Sends `message` from `from` to `rcpts` (all of one domain) through that domain's exchangers.
    pub async fn send(
        &self,
        from: &str,
        rcpts: &[String],
        message: &[u8],
    ) -> Result<Sent, SendError> {
        let domain = rcpts
            .first()
            .and_then(|r| r.rsplit_once('@'))
            .map(|(_, d)| d.to_string())
            .ok_or_else(|| SendError::Permanent("a recipient needs a domain".into()))?;
        let exchangers = self.exchangers(&domain).await?;
        let mut failures = Vec::new();
        for (_, host, addrs) in &exchangers {
            if addrs.is_empty() {
                failures.push(format!("{host}: no address"));
            }
            for ip in addrs {
                let addr = SocketAddr::new(*ip, self.port);
                let outcomes =
                    client::deliver(addr, &self.helo, from, rcpts, message, SMTP_TIMEOUT).await;
                if let Some(Outcome::Permanent(text)) =
                    outcomes.iter().find(|o| matches!(o, Outcome::Permanent(_)))
                {
                    return Err(SendError::Permanent(format!("{host} ({addr}): {text}")));
                }
                if let Some(Outcome::Temporary(text)) =
                    outcomes.iter().find(|o| matches!(o, Outcome::Temporary(_)))
                {
                    failures.push(format!("{host} ({addr}): {text}"));
                    continue;
                }
                let id = outcomes
                    .iter()
                    .find_map(|o| match o {
                        Outcome::Delivered(text) => text
                            .split_once("queued as ")
                            .map(|(_, id)| id.trim().to_string()),
                        _ => None,
                    })
                    .unwrap_or_default();
                return Ok(Sent {
                    id,
                    host: host.clone(),
                    addr,
                });
            }
        }
        if exchangers.is_empty() {
            failures.push(format!("{domain} has no mail exchanger"));
        }
        Err(SendError::Temporary(failures.join("; ")))
    }
}

/// The SMTP port remote senders use: the Internet routers' when the topology has them, else the
/// Internet mail servers'.
fn smtp_port(topology: &Topology) -> Option<u16> {
    let routers = topology
        .nodes_with_role(Role::Router)
        .filter_map(|n| n.ports.get("smtp").copied());
    let servers = topology
        .nodes_with_role(Role::InetMx)
        .filter_map(|n| n.ports.get("smtp").copied());
    routers.chain(servers).next()
}

/// A simple RFC 5322 message: the headers a mail client would write, CRLF line ends throughout.
pub fn compose(from: &str, to: &[String], subject: &str, body: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(body.len() + 512);
    let date = httpdate_rfc5322();
    let id = uuid::Uuid::new_v4();
    m.extend_from_slice(
        format!(
            "From: <{from}>\r\nTo: {}\r\nSubject: {subject}\r\nDate: {date}\r\nMessage-ID: <{id}@fabric-send.localhost>\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n",
            to.iter().map(|t| format!("<{t}>")).collect::<Vec<_>>().join(", ")
        )
        .as_bytes(),
    );
    let mut prev = 0u8;
    for &b in body {
        if b == b'\n' && prev != b'\r' {
            m.push(b'\r');
        }
        if prev == b'\r' && b != b'\n' {
            m.push(b'\n');
        }
        m.push(b);
        prev = b;
    }
    if prev == b'\r' {
        m.push(b'\n');
    } else if !m.ends_with(b"\r\n") {
        m.extend_from_slice(b"\r\n");
    }
    m
}

/// Now as an RFC 5322 date (`Mon, 23 Nov 2026 03:00:00 +0000`).
fn httpdate_rfc5322() -> String {
    // httpdate gives the IMF-fixdate of RFC 7231 ("... GMT"), which RFC 5322 reads as an obsolete zone;
    // write the numeric zone instead.
    let http = httpdate::fmt_http_date(std::time::SystemTime::now());
    http.trim_end_matches(" GMT").to_string() + " +0000"
}

#[cfg(test)]
mod tests {
    use super::compose;

    #[test]
    fn compose_writes_headers_and_crlf_lines() {
        let m = compose(
            "a@x.example",
            &["b@y.example".to_string()],
            "hi",
            b"line one\nline two\r\nlast",
        );
        let text = String::from_utf8(m).expect("utf-8");
        assert!(text.starts_with("From: <a@x.example>\r\nTo: <b@y.example>\r\nSubject: hi\r\n"));
        assert!(text.contains("\r\nDate: "));
        assert!(
            text.ends_with("\r\n\r\nline one\r\nline two\r\nlast\r\n"),
            "{text:?}"
        );
        assert!(!text.replace("\r\n", "").contains('\n'), "no bare LF");
    }
}

/// Where `fabric send` and `fabric bench smtp` find the fabric and its DNS.
#[derive(Debug, Clone, clap::Args)]
pub struct Target {
    /// The topology file (default: the running fabric's, from the data directory).
    #[arg(long)]
    pub topology: Option<std::path::PathBuf>,
    /// Ask this DNS server (ADDR:PORT, repeatable) instead of the topology's dns nodes.
    #[arg(long, value_name = "ADDR:PORT")]
    pub dns: Vec<SocketAddr>,
    /// The exchangers' SMTP port (default: the topology's SMTP port).
    #[arg(long)]
    pub port: Option<u16>,
}

impl Target {
    pub fn sender(&self, data_dir: &std::path::Path) -> anyhow::Result<MxSender> {
        let topology = match &self.topology {
            Some(file) => Topology::load(file)?,
            None => super::running(data_dir)?.0.topology,
        };
        MxSender::new(&topology, &self.dns, self.port)
    }
}

/// `fabric send`: one message, exit status 0 only once it got its 250.
pub async fn send(
    data_dir: &std::path::Path,
    target: &Target,
    from: &str,
    to: &[String],
    subject: &str,
    body_file: Option<&std::path::Path>,
) -> anyhow::Result<()> {
    let domains: std::collections::BTreeSet<&str> = to
        .iter()
        .filter_map(|t| t.rsplit_once('@').map(|(_, d)| d))
        .collect();
    if domains.len() != 1 || to.iter().any(|t| !t.contains('@')) {
        bail!("give recipients of one domain (one transaction per domain, as an MTA does)");
    }
    let body = match body_file {
        Some(f) => std::fs::read(f).with_context(|| format!("reading {}", f.display()))?,
        None => format!("Sent with fabric send to {}.\r\n", to.join(", ")).into_bytes(),
    };
    let sender = target.sender(data_dir)?;
    let message = compose(from, to, subject, &body);
    let sent = sender.send(from, to, &message).await?;
    println!("{}\t{} ({})", sent.id, sent.host, sent.addr);
    Ok(())
}
