//! The fabric's DNS (role `dns`) in the default two-site fabric, asked by real DNS clients: `dig`
//! (ISC BIND's, from Debian's dnsutils) over UDP and TCP and hickory-resolver. MX and A records as
//! the topology says, round robin, NXDOMAIN and REFUSED, garbage counted without harm, and the west
//! site's MX preference dropping within 5 s of SIGKILL of both its inet-mx nodes, then coming back.
//! One sandbox for every check (starting the fabric is the costly part).

mod common;

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use hickory_resolver::Resolver;
use hickory_resolver::config::{NameServerConfigGroup, ResolverConfig};
use hickory_resolver::name_server::TokioConnectionProvider;
use nix::sys::signal::Signal;
use testkit::Sandbox;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use topology::{Role, Topology};

/// The DNS service address of a node, as the sandbox moved it into its port slot.
fn dns_addr(sandbox: &Sandbox, node: &str) -> anyhow::Result<SocketAddr> {
    sandbox
        .topology()
        .node(node)
        .and_then(|n| n.service_addr("dns"))
        .with_context(|| format!("{node} has no dns port"))
}

/// Runs dig against `server` with a bounded time (2 s per try, one try) and returns its output.
async fn dig(server: SocketAddr, args: &[&str]) -> anyhow::Result<String> {
    let mut cmd = tokio::process::Command::new("dig");
    cmd.arg(format!("@{}", server.ip()))
        .arg("-p")
        .arg(server.port().to_string())
        .args(["+time=2", "+tries=1"])
        .args(args)
        .kill_on_drop(true);
    let out = tokio::time::timeout(Duration::from_secs(10), cmd.output())
        .await
        .context("dig took more than 10 s")?
        .context("dig must be installed (Debian: dnsutils; `make tools`)")?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `(preference, exchange)` pairs of `dig +short D MX`, sorted.
async fn mx(server: SocketAddr, domain: &str, tcp: bool) -> anyhow::Result<Vec<(u16, String)>> {
    let mut args = vec!["+short", domain, "MX"];
    if tcp {
        args.push("+tcp");
    }
    let text = dig(server, &args).await?;
    let mut out = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let (pref, host) = line
            .split_once(' ')
            .with_context(|| format!("not an MX line: {line:?}"))?;
        out.push((pref.parse()?, host.trim().to_string()));
    }
    out.sort();
    Ok(out)
}

/// The addresses of `dig +short NAME A`, in the order given.
async fn a(server: SocketAddr, name: &str, tcp: bool) -> anyhow::Result<Vec<Ipv4Addr>> {
    let mut args = vec!["+short", name, "A"];
    if tcp {
        args.push("+tcp");
    }
    let text = dig(server, &args).await?;
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            l.trim()
                .parse()
                .with_context(|| format!("not an address: {l:?}"))
        })
        .collect()
}

fn addresses<'a>(nodes: impl IntoIterator<Item = &'a topology::Node>) -> BTreeSet<Ipv4Addr> {
    nodes.into_iter().map(|n| n.address).collect()
}

/// What an MX host of `site` must resolve to: the site's Internet routers, or, in a topology
/// without routers, its inet-mx nodes.
fn expected_mx_hosts(t: &Topology, site: &str, home: &str) -> BTreeSet<Ipv4Addr> {
    // The secondary (a site other than the domain's home) is that site's relays, when it has some.
    let relays = t.relays(site);
    if site != home && !relays.is_empty() {
        return addresses(relays);
    }
    let routers = t.routers(site, "internet");
    if routers.is_empty() {
        addresses(t.nodes_with_role(Role::InetMx).filter(|n| n.site == site))
    } else {
        addresses(routers)
    }
}

/// What `mail.D` must resolve to: the home site's isolated routers, or its intranet servers.
fn expected_access_points(t: &Topology, site: &str) -> BTreeSet<Ipv4Addr> {
    let routers = t.routers(site, "isolated");
    if routers.is_empty() {
        addresses(t.nodes_with_role(Role::Intranet).filter(|n| n.site == site))
    } else {
        addresses(routers)
    }
}

fn healthy_prefs(domain: &str, home: &str, other: &str) -> Vec<(u16, String)> {
    vec![
        (10, format!("mx-{home}.{domain}.")),
        (20, format!("mx-{other}.{domain}.")),
    ]
}

/// Waits (at most `timeout`) until both dns nodes give `domain` exactly `want`.
async fn wait_for_mx(
    servers: &[SocketAddr],
    domain: &str,
    want: &[(u16, String)],
    timeout: Duration,
) -> anyhow::Result<Duration> {
    let start = Instant::now();
    loop {
        let mut all = true;
        let mut last = Vec::new();
        for s in servers {
            last = mx(*s, domain, false).await?;
            all &= last == want;
        }
        if all {
            return Ok(start.elapsed());
        }
        if start.elapsed() > timeout {
            bail!("after {timeout:?} {domain} MX is {last:?}, want {want:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn resolver(server: SocketAddr) -> Resolver<TokioConnectionProvider> {
    let group = NameServerConfigGroup::from_ips_clear(&[server.ip()], server.port(), true);
    let config = ResolverConfig::from_parts(None, vec![], group);
    let mut builder = Resolver::builder_with_config(config, TokioConnectionProvider::default());
    let opts = builder.options_mut();
    opts.timeout = Duration::from_secs(2);
    opts.attempts = 2;
    opts.cache_size = 0;
    builder.build()
}

#[tokio::test]
async fn dns_answers_real_clients_and_reweights_a_dead_site() -> anyhow::Result<()> {
    let mut sandbox = Sandbox::start("topology/two-site.toml").await?;
    let t = sandbox.topology().clone();
    let west = dns_addr(&sandbox, "dns-w")?;
    let east = dns_addr(&sandbox, "dns-e")?;
    let both = [west, east];
    let acme = healthy_prefs("acme.example", "west", "east");
    let globex = healthy_prefs("globex.example", "east", "west");
    // The first polls may have run before the mail servers were ready.
    wait_for_mx(&both, "acme.example", &acme, Duration::from_secs(10)).await?;
    wait_for_mx(&both, "globex.example", &globex, Duration::from_secs(10)).await?;

    // dig, UDP and TCP, both servers: the same MX and A records, authoritative, TTL 5.
    for server in both {
        for tcp in [false, true] {
            assert_eq!(
                mx(server, "acme.example", tcp).await?,
                acme,
                "{server} tcp={tcp}"
            );
            assert_eq!(mx(server, "globex.example", tcp).await?, globex);
            for (domain, site) in [
                ("acme.example", "west"),
                ("acme.example", "east"),
                ("globex.example", "east"),
                ("globex.example", "west"),
            ] {
                let got: BTreeSet<Ipv4Addr> = a(server, &format!("mx-{site}.{domain}"), tcp)
                    .await?
                    .into_iter()
                    .collect();
                let home = t.home_site(domain).context("home")?;
                assert_eq!(got, expected_mx_hosts(&t, site, home), "mx-{site}.{domain}");
            }
        }
        let full = dig(server, &["acme.example", "MX"]).await?;
        assert!(full.contains("status: NOERROR"), "{full}");
        assert!(full.contains("flags: qr aa"), "authoritative: {full}");
        assert!(
            full.contains("acme.example.\t\t5\tIN\tMX\t10 mx-west.acme.example."),
            "{full}"
        );
    }

    // hickory-resolver: MX, the MX hosts' A records, and the isolated-side access points.
    for (server, domain, home, other) in [
        (west, "acme.example.", "west", "east"),
        (east, "globex.example.", "east", "west"),
    ] {
        let r = resolver(server);
        let mut got: Vec<(u16, String)> = r
            .mx_lookup(domain)
            .await?
            .iter()
            .map(|m| (m.preference(), m.exchange().to_ascii()))
            .collect();
        got.sort();
        assert_eq!(
            got,
            healthy_prefs(domain.trim_end_matches('.'), home, other)
        );
        for site in [home, other] {
            let ips: BTreeSet<Ipv4Addr> = r
                .ipv4_lookup(format!("mx-{site}.{domain}"))
                .await?
                .iter()
                .map(|a| a.0)
                .collect();
            assert_eq!(ips, expected_mx_hosts(&t, site, home));
        }
        let mail: BTreeSet<Ipv4Addr> = r
            .ipv4_lookup(format!("mail.{domain}"))
            .await?
            .iter()
            .map(|a| a.0)
            .collect();
        assert_eq!(mail, expected_access_points(&t, home));
        let err = r
            .ipv4_lookup(format!("nope.{domain}"))
            .await
            .err()
            .context("nope. resolves")?;
        assert!(err.is_nx_domain(), "{err}");
    }

    // Round robin: successive answers start one address further along.
    let first: Vec<Ipv4Addr> = {
        let mut v = Vec::new();
        for _ in 0..4 {
            v.push(a(west, "mx-west.acme.example", false).await?[0]);
        }
        v
    };
    assert_ne!(first[0], first[1], "rotation: {first:?}");
    assert_ne!(first[1], first[2], "rotation: {first:?}");

    // Negative answers.
    let nx = dig(west, &["nope.acme.example", "A"]).await?;
    assert!(nx.contains("status: NXDOMAIN"), "{nx}");
    assert!(nx.contains("IN\tSOA\tns-west.acme.example."), "{nx}");
    let nodata = dig(west, &["mail.acme.example", "AAAA"]).await?;
    assert!(
        nodata.contains("status: NOERROR") && nodata.contains("ANSWER: 0"),
        "{nodata}"
    );
    assert!(nodata.contains("IN\tSOA"), "{nodata}");
    let refused = dig(west, &["example.org", "A"]).await?;
    assert!(refused.contains("status: REFUSED"), "{refused}");

    garbage_is_counted_and_harmless(&sandbox, west).await?;

    // SIGKILL both Internet mail servers of the west: within 5 s acme's west MX is worse than its
    // east one, on both DNS servers.
    sandbox.kill("inet-mx-w1", Signal::SIGKILL)?;
    sandbox.kill("inet-mx-w2", Signal::SIGKILL)?;
    let killed = Instant::now();
    let dead = vec![
        (20, "mx-east.acme.example.".to_string()),
        (90, "mx-west.acme.example.".to_string()),
    ];
    wait_for_mx(&both, "acme.example", &dead, Duration::from_secs(5))
        .await
        .context("west's preference must drop within 5 s")?;
    let dropped_after = killed.elapsed();
    println!("west MX preference dropped {dropped_after:?} after the SIGKILL");
    assert!(dropped_after < Duration::from_secs(5));
    let metrics = common::metrics(&sandbox, "dns-w").await?;
    let pref = |host: &str| {
        common::metric_sum(
            &metrics,
            "fabric_dns_mx_preference",
            &[("domain", "acme.example"), ("host", host)],
        )
    };
    assert_eq!(pref("mx-west.acme.example"), 90.0, "{metrics}");
    assert_eq!(pref("mx-east.acme.example"), 20.0, "{metrics}");
    assert_eq!(
        common::metric_sum(
            &metrics,
            "fabric_dns_site_healthy_servers",
            &[("site", "west"), ("role", "inet-mx")]
        ),
        0.0
    );
    // globex names west's relays as its secondary: they are alive, so that stays.
    assert_eq!(
        mx(east, "globex.example", false).await?,
        vec![
            (10, "mx-east.globex.example.".to_string()),
            (20, "mx-west.globex.example.".to_string())
        ]
    );

    // They come back: so does the preference.
    sandbox.start_node("inet-mx-w1").await?;
    sandbox.start_node("inet-mx-w2").await?;
    let back = wait_for_mx(&both, "acme.example", &acme, Duration::from_secs(5)).await?;
    println!("west MX preference back {back:?} after both servers were ready");
    Ok(())
}

/// Garbage over UDP and TCP: counted in `fabric_dns_bad_requests_total`, and a good query still
/// gets its answer.
async fn garbage_is_counted_and_harmless(
    sandbox: &Sandbox,
    server: SocketAddr,
) -> anyhow::Result<()> {
    let count = |text: &str, transport: &str| {
        common::metric_sum(
            text,
            "fabric_dns_bad_requests_total",
            &[("transport", transport)],
        )
    };
    let before = common::metrics(sandbox, "dns-w").await?;
    let udp = tokio::net::UdpSocket::bind("127.0.0.1:0").await?;
    // Too short for a header; a query header whose question runs off the end.
    let mut packets: Vec<Vec<u8>> = vec![b"garbage!".to_vec()];
    packets.push(vec![
        0x12, 0x34, 0x01, 0x00, 0x00, 0x01, 0, 0, 0, 0, 0, 0, 7, b'a', b'c',
    ]);
    // A question whose name is a compression pointer to itself.
    packets.push(vec![
        8, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0xc0, 12, 0, 1, 0, 1,
    ]);
    for p in &packets {
        udp.send_to(p, server).await?;
    }
    // The cut-short questions get FORMERR (rcode 1) with their ids; "garbage!" gets nothing.
    let mut ids = BTreeSet::new();
    let mut buf = [0u8; 512];
    while ids.len() < 2 {
        let (n, _) = tokio::time::timeout(Duration::from_secs(2), udp.recv_from(&mut buf))
            .await
            .with_context(|| format!("FORMERR answers so far: {ids:?}"))??;
        assert!(n >= 12 && buf[3] & 0x0f == 1, "FORMERR: {:?}", &buf[..n]);
        ids.insert(u16::from_be_bytes([buf[0], buf[1]]));
    }
    assert_eq!(ids, BTreeSet::from([0x0800, 0x1234]));

    // TCP: a frame too short to be a message, then an HTTP request read as a frame length.
    for bytes in [&b"\x00\x05hello"[..], &b"GET / HTTP/1.0\r\n\r\n"[..]] {
        let mut s = tokio::net::TcpStream::connect(server).await?;
        s.write_all(bytes).await?;
        s.shutdown().await?;
        let mut rest = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut rest))
            .await
            .context("the server must close a connection that sent garbage")??;
        assert!(rest.is_empty(), "no answer to garbage: {rest:?}");
    }
    testkit::wait_until(
        "bad requests counted",
        Duration::from_secs(5),
        Duration::from_millis(100),
        || async {
            match common::metrics(sandbox, "dns-w").await {
                Ok(after) => {
                    count(&after, "udp") >= count(&before, "udp") + 3.0
                        && count(&after, "tcp") >= count(&before, "tcp") + 2.0
                }
                Err(_) => false,
            }
        },
    )
    .await?;
    // Still serving, over both transports.
    for tcp in [false, true] {
        assert_eq!(
            mx(server, "acme.example", tcp).await?,
            healthy_prefs("acme.example", "west", "east")
        );
    }
    let status = store_client::StoreClient::new(sandbox.admin_url("dns-w"))
        .raw(store_client::Method::GET, "/status", &[], Vec::new())
        .await?
        .json()
        .context("/status is JSON")?;
    assert!(
        status["counters"]["bad_requests"].as_u64().unwrap_or(0) >= 5,
        "{status}"
    );
    assert_eq!(
        status["counters"]["preferences"]["acme.example"]["mx-west.acme.example"], 10,
        "{status}"
    );
    Ok(())
}
