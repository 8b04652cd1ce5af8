//! The whole edge of the default two-site fabric: DNS, routers with access lists, redirectors.
//!
//! - Every (zone, router, port) pair: the ones a zone's access list allows answer with their
//!   protocol's greeting through the router; every other one is refused without a byte and counted.
//! - The client's real address reaches the mail server through router and redirector.
//! - `fabric send` finds the fabric through its DNS like a remote MTA and keeps getting its 250 while a
//!   router dies and while every Internet mail server of the home site is dead; customers reach their
//!   intranet services through their router while one intranet server is dead.

mod common;

use std::net::{Ipv4Addr, SocketAddr};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use nix::sys::signal::Signal;
use serde_json::json;
use testkit::Sandbox;
use tokio::io::AsyncReadExt;
use tokio::net::TcpSocket;
use topology::Role;

/// The greeting a service's server starts with.
fn greeting(service: &str) -> &'static str {
    match service {
        "smtp" | "submission" => "220 ",
        "pop3" => "+OK",
        "imap" => "* OK",
        _ => "",
    }
}

/// A client address inside the zone (what the router sees as the sender).
fn client_ip(zone: &str) -> Ipv4Addr {
    if zone == "internet" {
        Ipv4Addr::new(127, 10, 9, 99)
    } else {
        Ipv4Addr::new(127, 20, 9, 99)
    }
}

/// Connects from `from` to `to` and reads what comes within `wait`: Ok(bytes) (empty if the peer
/// closed or reset without a byte).
async fn first_bytes(from: Ipv4Addr, to: SocketAddr, wait: Duration) -> anyhow::Result<Vec<u8>> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::from((from, 0)))?;
    let connected = tokio::time::timeout(wait, socket.connect(to))
        .await
        .with_context(|| format!("connecting to {to}"))?;
    let mut stream = match connected {
        Ok(s) => s,
        // On loopback a router's reset can beat connect() back to the caller: still no byte.
        // ("Connection refused" — nothing listening — is an error: the port must be guarded.)
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("connecting to {to}")),
    };
    let mut buf = vec![0u8; 256];
    let mut got = Vec::new();
    let deadline = Instant::now() + wait;
    while !got.ends_with(b"\n") && Instant::now() < deadline {
        match tokio::time::timeout_at(deadline.into(), stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
            Err(_) => break,
        }
    }
    Ok(got)
}

async fn fabric_send(
    topology: &std::path::Path,
    to: &str,
    subject: &str,
) -> anyhow::Result<String> {
    let out = tokio::process::Command::new(testkit::bin_dir().join("fabric"))
        .arg("send")
        .arg("--topology")
        .arg(topology)
        .args([
            "--from",
            "carol@remote.example",
            "--to",
            to,
            "--subject",
            subject,
        ])
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output()
        .await?;
    if !out.status.success() {
        bail!(
            "fabric send {subject:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Calls `f` every 100 ms until it gives a value or `wait` passes.
async fn poll<T, F, Fut>(what: &str, wait: Duration, mut f: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + wait;
    loop {
        if let Some(v) = f().await {
            return Ok(v);
        }
        if Instant::now() > deadline {
            bail!("{what}: not within {wait:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn the_edge_filters_balances_and_keeps_mail_flowing() -> anyhow::Result<()> {
    let mut t = topology::Topology::load(testkit::workspace_root().join("topology/two-site.toml"))?;
    // Mail the relays hold while west is down is handed over within seconds once it is back.
    t.timing.relay_retry = Duration::from_secs(2);
    // Routers and redirectors relay every byte here, as they do where nodes do not share a host (a
    // container each); tests/redirector.rs covers the same-host handoff.
    t.edge.handoff = false;
    let mut sandbox = Sandbox::start_topology(t).await?;
    let t = sandbox.topology().clone();
    let hash = common::argon2_hash("edge secret")?;
    let directory = common::store(&sandbox, "store-w1");
    for user in ["ann@acme.example", "bob@globex.example"] {
        directory
            .put_user(user, &json!({"password_hash": hash, "notify": "none"}))
            .await?;
    }

    // 1. Every (zone, router, port): allowed ones greet through the router, the rest are refused.
    let routers: Vec<_> = t.nodes_with_role(Role::Router).cloned().collect();
    assert_eq!(routers.len(), 8, "two routers per zone per site");
    let mut refused_per_rule = std::collections::BTreeMap::<String, usize>::new();
    let (mut passed, mut refused) = (0, 0);
    for router in &routers {
        let zone = router.zones[0].clone();
        for service in router.ports.keys() {
            let to = router.service_addr(service).context("port")?;
            let got = first_bytes(client_ip(&zone), to, Duration::from_secs(3)).await?;
            let text = String::from_utf8_lossy(&got).to_string();
            if t.acl_allows(&zone, service) {
                assert!(
                    text.starts_with(greeting(service)),
                    "{zone} -> {} {service} ({to}) must pass and greet, got {text:?}",
                    router.name
                );
                passed += 1;
            } else {
                assert!(
                    got.is_empty(),
                    "{zone} -> {} {service} ({to}) must be refused without a byte, got {text:?}",
                    router.name
                );
                *refused_per_rule
                    .entry(format!("{zone}:{service}"))
                    .or_default() += 1;
                refused += 1;
            }
        }
    }
    // Internet: smtp passes; submission, pop3, imap, store and admin are refused. Isolated: the three
    // customer protocols pass; smtp, store and admin are refused.
    assert_eq!((passed, refused), (4 + 4 * 3, 4 * 5 + 4 * 3));
    for rule in [
        "internet:imap",
        "internet:pop3",
        "internet:submission",
        "internet:store",
        "internet:admin",
        "isolated:smtp",
        "isolated:store",
        "isolated:admin",
    ] {
        assert_eq!(refused_per_rule.get(rule), Some(&4), "{rule}");
        let mut counted = 0.0;
        for router in &routers {
            let text = common::metrics(&sandbox, &router.name).await?;
            counted += common::metric_sum(&text, "fabric_acl_denied_total", &[("rule", rule)]);
        }
        assert_eq!(
            counted, 4.0,
            "fabric_acl_denied_total{{rule={rule:?}}} over the routers"
        );
    }

    // 2. The real client address reaches the mail server through router and redirector.
    let router = t.node("router-inet-w1").context("router-inet-w1")?;
    let via = router.service_addr("smtp").context("smtp")?;
    let sent = common::python(
        r#"
import json, os, smtplib
host, port = os.environ["VIA"].rsplit(":", 1)
s = smtplib.SMTP(host, int(port), timeout=30, source_address=(os.environ["SRC"], 0))
refused = s.sendmail("carol@remote.example", ["ann@acme.example"],
    b"From: carol@remote.example\r\nTo: ann@acme.example\r\nSubject: real address\r\n\r\nhi\r\n")
s.quit()
assert not refused, refused
print(json.dumps("ok"))
"#,
        &[
            ("VIA", via.to_string()),
            ("SRC", client_ip("internet").to_string()),
        ],
    )
    .await?;
    assert_eq!(sent, json!("ok"));
    let ann = common::store(&sandbox, "store-w1");
    let received = poll(
        "the message in ann's INBOX",
        Duration::from_secs(30),
        || async {
            let listing = ann
                .list_mailbox("ann@acme.example", "INBOX", None)
                .await
                .ok()?;
            let m = listing.messages.first()?;
            let body = ann
                .fetch("ann@acme.example", "INBOX", m.uid, None)
                .await
                .ok()?;
            Some(String::from_utf8_lossy(&body).to_string())
        },
    )
    .await?;
    assert!(
        received.contains(&format!("([{}])", client_ip("internet"))),
        "the Received line names the real client, not a proxy: {received}"
    );

    let metrics = common::metrics(&sandbox, "router-inet-w1").await?;
    assert!(
        common::metric_sum(
            &metrics,
            "fabric_router_bytes_total",
            &[("direction", "to_upstream")]
        ) > 0.0,
        "the router relayed the session"
    );
    assert_eq!(
        common::metric_sum(&metrics, "fabric_handoff_offers_total", &[]),
        0.0,
        "nothing is handed off with edge.handoff = false"
    );

    // 3. fabric send finds the fabric through its DNS and gets a 250 from the home site.
    let file = tempfile::NamedTempFile::new()?;
    std::fs::write(file.path(), t.to_toml()?)?;
    let out = fabric_send(file.path(), "ann@acme.example", "through dns").await?;
    let (id, host) = out.split_once('\t').context("id TAB host")?;
    assert!(!id.is_empty(), "{out}");
    assert!(
        host.starts_with("mx-west.acme.example"),
        "home site's exchanger first: {out}"
    );
    // The "accepted" hop is written with the message itself, in the write the 250 waits for.
    poll(
        "the accepted hop in the trace",
        Duration::from_secs(10),
        || async {
            let trace = ann.get_trace(id, None).await.ok()?;
            trace.to_string().contains("accepted").then_some(())
        },
    )
    .await?;

    // fabric bench smtp drives load the same way; the rotating A records spread it over both routers.
    let out = tokio::process::Command::new(testkit::bin_dir().join("fabric"))
        .args([
            "bench",
            "smtp",
            "--to",
            "ann@acme.example",
            "--messages",
            "40",
            "--concurrency",
            "4",
            "--json",
            "--topology",
        ])
        .arg(file.path())
        .kill_on_drop(true)
        .output()
        .await?;
    // What the DNS nodes saw of each site when the bench asked them (preferences and /status polls),
    // for the messages below if the mail did not go where it should.
    let mut dns_view = String::new();
    for dns in ["dns-w", "dns-e"] {
        let text = common::metrics(&sandbox, dns).await.unwrap_or_default();
        for line in text.lines().filter(|l| {
            l.starts_with("fabric_dns_mx_preference")
                || l.starts_with("fabric_dns_site_healthy_servers")
                || l.starts_with("fabric_dns_status_polls_total")
        }) {
            dns_view.push_str(&format!("\n  {dns}: {line}"));
        }
    }
    assert!(
        out.status.success(),
        "fabric bench smtp: {}; the DNS's view:{dns_view}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    assert_eq!(report["sent"], 40, "{report}; the DNS's view:{dns_view}");
    assert_eq!(
        report["temporary_failures"], 0,
        "{report}; the DNS's view:{dns_view}"
    );
    let mut hosts: Vec<String> = report["by_host"]
        .as_object()
        .context("by_host")?
        .keys()
        .cloned()
        .collect();
    hosts.sort();
    let west_routers: Vec<String> = t
        .routers("west", "internet")
        .iter()
        .map(|r| r.address.to_string())
        .collect();
    assert_eq!(
        hosts, west_routers,
        "both west routers took a share: {report}; the DNS's view:{dns_view}"
    );

    // 4. A router dies: senders move to the other one (the next A record).
    sandbox.kill("router-inet-w1", Signal::SIGKILL)?;
    for i in 0..6 {
        fabric_send(file.path(), "ann@acme.example", &format!("router down {i}")).await?;
    }
    sandbox.start_node("router-inet-w1").await?;

    // 5. Every Internet mail server of the home site dies: mail still gets its 250 (the other site's
    //    servers take it through the redirectors, or, once the DNS has moved west behind east, east's
    //    relays hold it) and reaches the mailbox when west is back.
    sandbox.kill("inet-mx-w1", Signal::SIGKILL)?;
    sandbox.kill("inet-mx-w2", Signal::SIGKILL)?;
    for i in 0..4 {
        fabric_send(file.path(), "ann@acme.example", &format!("west down {i}")).await?;
    }
    sandbox.start_node("inet-mx-w1").await?;
    sandbox.start_node("inet-mx-w2").await?;
    // 6. An intranet server dies: customers still reach IMAP, POP3 and submission through their
    //    router (the isolated redirector takes it out and uses the other west server).
    sandbox.kill("intranet-w1", Signal::SIGKILL)?;
    let iso = t.node("router-iso-w1").context("router-iso-w1")?;
    for i in 0..6 {
        for service in ["imap", "pop3", "submission"] {
            let to = iso.service_addr(service).context("port")?;
            let got = first_bytes(client_ip("isolated"), to, Duration::from_secs(5)).await?;
            let text = String::from_utf8_lossy(&got);
            assert!(
                text.starts_with(greeting(service)),
                "{service} through router-iso-w1 with intranet-w1 dead (try {i}): {text:?}"
            );
        }
    }

    // Nothing accepted was lost: 1 (real address) + 1 (dns) + 40 (bench) + 6 (router down) + 4 (west
    // down).
    poll(
        "all 52 messages in ann's INBOX",
        Duration::from_secs(60),
        || async {
            let n = ann
                .list_mailbox("ann@acme.example", "INBOX", None)
                .await
                .ok()?
                .messages
                .len();
            (n >= 52).then_some(())
        },
    )
    .await?;
    // A little longer, to see that nothing arrives twice.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let listing = ann.list_mailbox("ann@acme.example", "INBOX", None).await?;
    assert_eq!(listing.messages.len(), 52, "each message exactly once");
    Ok(())
}
