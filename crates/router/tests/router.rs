//! The real `fabric-router` binary between a client and a redirector played by the test: allowed flows
//! arrive with the client's address in a PROXY v2 header and splice both ways, refused ones are reset
//! without a byte and counted, a dead redirector sends the flow to the other site's, and a SIGKILLed
//! router leaves its twin working.

mod common;

use std::time::Duration;

use common::{Edge, FakeRedirector, assert_refused_at, connect_from, round_trip};

/// A sender on the Internet side, and a customer machine on the isolated side (addresses of their own).
const SENDER: &str = "127.10.9.77";
const CUSTOMER: &str = "127.20.9.77";

#[tokio::test]
async fn an_allowed_flow_carries_the_client_address_and_splices_both_ways() -> anyhow::Result<()> {
    let mut edge = Edge::new()?;
    edge.start("router-inet-w1").await?;
    let mut redirector = FakeRedirector::listen(edge.addr("redirector-inet-w", "smtp")?).await?;

    let client = connect_from(SENDER, edge.addr("router-inet-w1", "smtp")?).await?;
    let me = client.local_addr()?;
    let reply = round_trip(client, b"EHLO sender.example\r\nQUIT\r\n").await?;
    let arrival = redirector.next().await?;
    assert_eq!(arrival.client, Some(me), "the header names the real client");
    assert_eq!(
        arrival.peer.ip(),
        edge.node("router-inet-w1")?.address,
        "the router connects from its own address, so the redirector trusts its header"
    );
    assert_eq!(
        reply,
        format!("HELLO {me}\r\nEHLO sender.example\r\nQUIT\r\n"),
        "greeting first, the echo after, and EOF both ways"
    );
    assert_eq!(
        edge.metric(
            "router-inet-w1",
            "fabric_router_connections_total{service=\"smtp\"}"
        )
        .await?,
        1.0
    );
    assert_eq!(
        edge.metric(
            "router-inet-w1",
            "fabric_router_upstream_total{path=\"local\"}"
        )
        .await?,
        1.0
    );
    let to_upstream = edge
        .metric(
            "router-inet-w1",
            "fabric_router_bytes_total{direction=\"to_upstream\"}",
        )
        .await?;
    assert_eq!(to_upstream, 27.0, "the client's bytes, counted");
    Ok(())
}

#[tokio::test]
async fn every_refused_port_is_reset_without_a_byte_and_counted() -> anyhow::Result<()> {
    let mut edge = Edge::new()?;
    edge.start("router-inet-w1").await?;
    edge.start("router-iso-w1").await?;
    let mut inet = FakeRedirector::listen(edge.addr("redirector-inet-w", "smtp")?).await?;
    let mut iso = Vec::new();
    for service in ["submission", "pop3", "imap"] {
        iso.push((
            service,
            FakeRedirector::listen(edge.addr("redirector-iso-w", service)?).await?,
        ));
    }

    let refused = [
        (
            "router-inet-w1",
            SENDER,
            "internet",
            &["imap", "pop3", "submission", "store", "admin"][..],
        ),
        (
            "router-iso-w1",
            CUSTOMER,
            "isolated",
            &["smtp", "store", "admin"][..],
        ),
    ];
    for (router, from, zone, services) in refused {
        for service in services {
            let to = edge.addr(router, service)?;
            assert_refused_at(from, to, &format!("{router} {service}")).await?;
        }
        for service in services {
            let series = format!("fabric_acl_denied_total{{rule=\"{zone}:{service}\"}}");
            assert_eq!(
                edge.metric(router, &series).await?,
                1.0,
                "{router}: {series}"
            );
        }
        let log = edge.log(router);
        let line = log
            .lines()
            .find(|l| l.contains("connection refused") && l.contains(&format!("\"{zone}:store\"")))
            .unwrap_or_default();
        let json: serde_json::Value = serde_json::from_str(line)?;
        assert!(
            json.to_string().contains(from),
            "the log names the client: {line}"
        );
        let status: serde_json::Value =
            serde_json::from_str(&edge.admin_get(router, "/status").await?)?;
        assert_eq!(status["counters"]["denied"]["store"], 1, "{status}");
    }
    assert!(
        inet.arrivals.try_recv().is_err(),
        "no refused flow reached a redirector"
    );

    // And what must pass does pass, each to the isolated redirector's port for its service.
    for (service, redirector) in &mut iso {
        let client = connect_from(CUSTOMER, edge.addr("router-iso-w1", service)?).await?;
        let me = client.local_addr()?;
        let reply = round_trip(client, b"x\r\n").await?;
        assert_eq!(reply, format!("HELLO {me}\r\nx\r\n"), "{service}");
        assert_eq!(redirector.next().await?.client, Some(me));
    }
    let client = connect_from(SENDER, edge.addr("router-inet-w1", "smtp")?).await?;
    round_trip(client, b"y").await?;
    assert!(inet.next().await?.client.is_some());
    let status: serde_json::Value =
        serde_json::from_str(&edge.admin_get("router-iso-w1", "/status").await?)?;
    assert_eq!(status["counters"]["allowed"]["imap"], 1, "{status}");
    // The flows' tasks end just after the client saw EOF.
    let edge = &edge;
    testkit::wait_until(
        "no open connection",
        common::WAIT,
        Duration::from_millis(20),
        || async move {
            let Ok(body) = edge.admin_get("router-iso-w1", "/status").await else {
                return false;
            };
            serde_json::from_str::<serde_json::Value>(&body)
                .is_ok_and(|s| s["counters"]["open_connections"] == 0)
        },
    )
    .await?;
    Ok(())
}

#[tokio::test]
async fn without_its_site_redirector_a_flow_goes_to_the_other_site() -> anyhow::Result<()> {
    let mut edge = Edge::new()?;
    edge.start("router-inet-w1").await?;
    // Nothing listens at redirector-inet-w: the east one must take the flow.
    let mut east = FakeRedirector::listen(edge.addr("redirector-inet-e", "smtp")?).await?;
    let client = connect_from(SENDER, edge.addr("router-inet-w1", "smtp")?).await?;
    let me = client.local_addr()?;
    let reply = round_trip(client, b"EHLO x\r\n").await?;
    assert_eq!(reply, format!("HELLO {me}\r\nEHLO x\r\n"));
    assert_eq!(east.next().await?.client, Some(me));
    assert_eq!(
        edge.metric(
            "router-inet-w1",
            "fabric_router_upstream_total{path=\"other_site\"}"
        )
        .await?,
        1.0
    );

    // With no redirector at all, the client is closed without a byte, and that is counted.
    east.close().await;
    let to = edge.addr("router-inet-w1", "smtp")?;
    assert_refused_at(SENDER, to, "no redirector").await?;
    assert_eq!(
        edge.metric(
            "router-inet-w1",
            "fabric_router_upstream_failures_total{service=\"smtp\"}"
        )
        .await?,
        1.0
    );
    Ok(())
}

#[tokio::test]
async fn a_killed_router_leaves_its_twin_working() -> anyhow::Result<()> {
    let mut edge = Edge::new()?;
    edge.start("router-inet-w1").await?;
    edge.start("router-inet-w2").await?;
    let mut redirector = FakeRedirector::listen(edge.addr("redirector-inet-w", "smtp")?).await?;
    // A session open through w2 while w1 dies.
    let mut open = connect_from(SENDER, edge.addr("router-inet-w2", "smtp")?).await?;
    redirector.next().await?;

    edge.kill("router-inet-w1")?;
    let dead = connect_from(SENDER, edge.addr("router-inet-w1", "smtp")?).await;
    assert!(dead.is_err(), "nothing listens at the killed router");

    // Senders move to the other router: new flows pass, and the open one still works.
    let client = connect_from(SENDER, edge.addr("router-inet-w2", "smtp")?).await?;
    let me = client.local_addr()?;
    let reply = round_trip(client, b"EHLO after\r\n").await?;
    assert_eq!(reply, format!("HELLO {me}\r\nEHLO after\r\n"));
    assert_eq!(
        redirector.next().await?.peer.ip(),
        edge.node("router-inet-w2")?.address
    );
    use tokio::io::AsyncWriteExt;
    open.write_all(b"still here\r\n").await?;
    open.shutdown().await?;
    let mut got = Vec::new();
    common::timeout(tokio::io::AsyncReadExt::read_to_end(&mut open, &mut got)).await??;
    assert!(String::from_utf8_lossy(&got).ends_with("still here\r\n"));
    Ok(())
}
