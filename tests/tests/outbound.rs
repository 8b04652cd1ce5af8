//! Outbound mail: submitted on the isolated side, moved by transfer to the Internet side, delivered by
//! inet-mx over SMTP to the remote MX, here the fabric's SMTP sink (the simulated Internet, role
//! `sink`). Tempfail and a killed sink mean retries and exactly one arrival, never a bounce; a 5xx
//! means an RFC 3464 bounce in the sender's INBOX.

mod common;
mod submit_common;

use std::time::Duration;

use anyhow::Context;
use serde_json::{Value, json};
use store_client::{Method, StoreClient};
use submit_common::{add_users, folder, queued_id, submit, wait_for};
use testkit::{Sandbox, wait_until};

const BODY: &str = "From: ann@acme.example\r\nTo: x@remote.example\r\nSubject: out\r\n\r\nto the Internet\r\n.with a dot\r\n";

/// The mini fabric with a short retry (1 s, doubling) so retries fit in a test.
async fn fabric() -> anyhow::Result<Sandbox> {
    let mut t = topology::Topology::load(testkit::workspace_root().join("topology/mini.toml"))?;
    t.timing.outbound_retry = Duration::from_secs(1);
    let sandbox = Sandbox::start_topology(t).await?;
    add_users(&sandbox, &["ann@acme.example", "bob@acme.example"]).await?;
    Ok(sandbox)
}

/// The sink's HTTP API (on its `sms` port).
fn sink(sandbox: &Sandbox) -> StoreClient {
    StoreClient::new(sandbox.url("outside", "sms")).with_timeout(Duration::from_secs(10))
}

async fn sink_messages(sandbox: &Sandbox) -> anyhow::Result<Vec<Value>> {
    let r = sink(sandbox)
        .call(Method::GET, "/v1/smtp/messages", &[], bytes::Bytes::new())
        .await?;
    let v: Value = serde_json::from_slice(&r.body)?;
    Ok(v["messages"].as_array().cloned().unwrap_or_default())
}

async fn sink_body(sandbox: &Sandbox, id: &str) -> anyhow::Result<String> {
    let r = sink(sandbox)
        .call(
            Method::GET,
            &format!("/v1/smtp/messages/{id}"),
            &[],
            bytes::Bytes::new(),
        )
        .await?;
    Ok(String::from_utf8_lossy(&r.body).into_owned())
}

async fn set_mode(sandbox: &Sandbox, mode: &str) -> anyhow::Result<()> {
    sink(sandbox)
        .call(
            Method::POST,
            "/v1/smtp/mode",
            &[("content-type", "application/json".into())],
            json!({ "mode": mode }).to_string(),
        )
        .await?;
    Ok(())
}

async fn wait_sink(sandbox: &Sandbox, n: usize, timeout: Duration) -> anyhow::Result<Vec<Value>> {
    wait_until(
        "mail at the sink",
        timeout,
        Duration::from_millis(200),
        || async { sink_messages(sandbox).await.is_ok_and(|m| m.len() >= n) },
    )
    .await?;
    sink_messages(sandbox).await
}

async fn metric(sandbox: &Sandbox, node: &str, name: &str) -> f64 {
    match common::metrics(sandbox, node).await {
        Ok(m) => common::metric_sum(&m, name, &[]),
        Err(_) => 0.0,
    }
}

/// Every queue of the Internet side and the outbound queue are empty (all acknowledged).
async fn queues_drained(sandbox: &Sandbox) -> anyhow::Result<()> {
    let store = common::store(sandbox, "store-a");
    wait_until(
        "outbound queues drained",
        Duration::from_secs(20),
        Duration::from_millis(200),
        || async {
            let mut empty = true;
            for q in ["outbound", "to-internet"] {
                empty &= store.list_queue(q, None).await.is_ok_and(|l| l.is_empty());
            }
            empty
        },
    )
    .await
}

#[tokio::test]
async fn mail_to_a_remote_address_reaches_the_sink_with_the_same_body() -> anyhow::Result<()> {
    let sandbox = fabric().await?;
    let reply = submit(
        &sandbox,
        "intranet-a",
        "ann@acme.example",
        &["x@remote.example", "bob@acme.example"],
        BODY,
    )
    .await?;
    let id = queued_id(&reply)?;
    let got = wait_sink(&sandbox, 1, Duration::from_secs(30)).await?;
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0]["mail_from"], "ann@acme.example");
    // Only the remote recipient goes to the Internet; bob got it on the isolated side.
    assert_eq!(got[0]["rcpt_to"], json!(["x@remote.example"]));
    let body = sink_body(&sandbox, got[0]["id"].as_str().context("sink id")?).await?;
    assert!(body.ends_with(BODY), "{body:?}");
    assert!(body.contains(&format!("id {id};")), "{body}");
    assert_eq!(
        folder(&sandbox, "bob@acme.example", "INBOX").await?.len(),
        1
    );
    assert_eq!(folder(&sandbox, "ann@acme.example", "Sent").await?.len(), 1);
    queues_drained(&sandbox).await?;
    // Every hop in the trace: submitted, transferred, delivered to the remote MX.
    let store = common::store(&sandbox, "store-a");
    wait_until(
        "the whole trace",
        Duration::from_secs(10),
        Duration::from_millis(200),
        || async {
            store.get_trace(&id, None).await.is_ok_and(|t| {
                let t = t.to_string();
                t.contains("queued outbound")
                    && t.contains("transferred")
                    && t.contains("delivery attempt")
            })
        },
    )
    .await?;
    // The move to the Internet side is in the transfer log, with the header summary.
    let log = store
        .call(
            Method::GET,
            "/v1/transfer-log?limit=1000",
            &[],
            bytes::Bytes::new(),
        )
        .await?;
    let log: Value = serde_json::from_slice(&log.body)?;
    let moves: Vec<&Value> = log["entries"]
        .as_array()
        .context("entries")?
        .iter()
        .filter(|e| e["message_id"] == id.as_str())
        .collect();
    assert_eq!(moves.len(), 1, "{log}");
    assert_eq!(
        (&moves[0]["from"], &moves[0]["to"]),
        (&json!("isolated"), &json!("internet"))
    );
    assert_eq!(moves[0]["summary"]["subject"], "out");
    assert_eq!(
        metric(&sandbox, "mx-a", "fabric_outbound_delivered_total").await,
        1.0
    );
    assert_eq!(
        metric(&sandbox, "mx-a", "fabric_outbound_bounced_total").await,
        0.0
    );
    Ok(())
}

#[tokio::test]
async fn a_tempfailing_remote_mx_gets_the_message_once_when_it_accepts_never_a_bounce()
-> anyhow::Result<()> {
    let sandbox = fabric().await?;
    set_mode(&sandbox, "tempfail").await?;
    submit(
        &sandbox,
        "intranet-a",
        "ann@acme.example",
        &["x@remote.example"],
        BODY,
    )
    .await?;
    wait_until(
        "two deferrals",
        Duration::from_secs(30),
        Duration::from_millis(200),
        || async { metric(&sandbox, "mx-a", "fabric_outbound_deferred_total").await >= 2.0 },
    )
    .await?;
    assert!(sink_messages(&sandbox).await?.is_empty());
    set_mode(&sandbox, "accept").await?;
    wait_sink(&sandbox, 1, Duration::from_secs(30)).await?;
    queues_drained(&sandbox).await?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        sink_messages(&sandbox).await?.len(),
        1,
        "delivered more than once"
    );
    assert!(
        folder(&sandbox, "ann@acme.example", "INBOX")
            .await?
            .is_empty(),
        "a temporary failure must not bounce"
    );
    assert_eq!(
        metric(&sandbox, "mx-a", "fabric_outbound_bounced_total").await,
        0.0
    );
    Ok(())
}

#[tokio::test]
async fn a_remote_mx_killed_and_started_again_gets_the_message_once() -> anyhow::Result<()> {
    let mut sandbox = fabric().await?;
    sandbox.kill("outside", nix::sys::signal::Signal::SIGKILL)?;
    submit(
        &sandbox,
        "intranet-a",
        "ann@acme.example",
        &["x@remote.example"],
        BODY,
    )
    .await?;
    wait_until(
        "a deferral",
        Duration::from_secs(30),
        Duration::from_millis(200),
        || async { metric(&sandbox, "mx-a", "fabric_outbound_deferred_total").await >= 1.0 },
    )
    .await?;
    sandbox.start_node("outside").await?;
    let got = wait_sink(&sandbox, 1, Duration::from_secs(30)).await?;
    let body = sink_body(&sandbox, got[0]["id"].as_str().context("sink id")?).await?;
    assert!(body.ends_with(BODY), "{body:?}");
    queues_drained(&sandbox).await?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(sink_messages(&sandbox).await?.len(), 1);
    assert!(
        folder(&sandbox, "ann@acme.example", "INBOX")
            .await?
            .is_empty()
    );
    Ok(())
}

#[tokio::test]
async fn a_permanent_refusal_bounces_into_the_senders_inbox() -> anyhow::Result<()> {
    let sandbox = fabric().await?;
    set_mode(&sandbox, "reject").await?;
    let id = queued_id(
        &submit(
            &sandbox,
            "intranet-a",
            "ann@acme.example",
            &["x@remote.example"],
            BODY,
        )
        .await?,
    )?;
    let inbox = wait_for(
        &sandbox,
        "ann@acme.example",
        "INBOX",
        1,
        Duration::from_secs(30),
    )
    .await?;
    assert_eq!(inbox.len(), 1);
    let dsn = &inbox[0].1;
    assert!(
        dsn.contains("Content-Type: multipart/report; report-type=delivery-status"),
        "{dsn}"
    );
    assert!(
        dsn.contains("Content-Type: message/delivery-status"),
        "{dsn}"
    );
    assert!(
        dsn.contains("Final-Recipient: rfc822;x@remote.example"),
        "{dsn}"
    );
    assert!(dsn.contains("Action: failed"), "{dsn}");
    // The sink's 550 5.7.1, as the RFC 3464 status of the recipient.
    assert!(dsn.contains("Status: 5.7.1"), "{dsn}");
    assert!(dsn.contains(&id), "{dsn}");
    assert!(
        dsn.contains("Subject: out"),
        "the original's headers are attached: {dsn}"
    );
    queues_drained(&sandbox).await?;
    assert!(sink_messages(&sandbox).await?.is_empty());
    assert_eq!(
        metric(&sandbox, "mx-a", "fabric_outbound_bounced_total").await,
        1.0
    );
    // One bounce, not one per retry.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        folder(&sandbox, "ann@acme.example", "INBOX").await?.len(),
        1
    );
    Ok(())
}

#[tokio::test]
async fn a_message_older_than_the_maximum_queue_lifetime_bounces_instead_of_waiting_forever()
-> anyhow::Result<()> {
    let mut t = topology::Topology::load(testkit::workspace_root().join("topology/mini.toml"))?;
    t.timing.outbound_retry = Duration::from_secs(1);
    t.timing.outbound_max_lifetime = Duration::from_secs(3);
    let sandbox = Sandbox::start_topology(t).await?;
    add_users(&sandbox, &["ann@acme.example"]).await?;
    set_mode(&sandbox, "tempfail").await?;
    submit(
        &sandbox,
        "intranet-a",
        "ann@acme.example",
        &["x@remote.example"],
        BODY,
    )
    .await?;
    let inbox = wait_for(
        &sandbox,
        "ann@acme.example",
        "INBOX",
        1,
        Duration::from_secs(30),
    )
    .await?;
    let dsn = &inbox[0].1;
    assert!(
        dsn.contains("Content-Type: message/delivery-status"),
        "{dsn}"
    );
    assert!(
        dsn.contains("Final-Recipient: rfc822;x@remote.example"),
        "{dsn}"
    );
    // The last answer was the sink's 451 4.3.0: reported as a failure (5.3.0) after the lifetime.
    assert!(dsn.contains("Status: 5.3.0"), "{dsn}");
    assert!(dsn.contains("maximum queue lifetime"), "{dsn}");
    queues_drained(&sandbox).await?;
    assert!(metric(&sandbox, "mx-a", "fabric_outbound_deferred_total").await >= 1.0);
    assert!(sink_messages(&sandbox).await?.is_empty());
    Ok(())
}
