//! `fabric queue` as an operator uses it on mail waiting for a troubled remote MX (the sink answering
//! 451): list (with `--json`), hold (no attempts while held), release and flush (delivered at once),
//! bounce (an RFC 3464 DSN in the sender's INBOX, the queue empty), an unknown id (a clear error),
//! and the store's queue gauges.

mod common;
mod submit_common;

use std::path::PathBuf;
use std::process::Output;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::{Value, json};
use store_client::{Method, StoreClient};
use submit_common::{add_users, folder, queued_id, submit, wait_for};
use testkit::{Sandbox, wait_until};

const BODY: &str = "From: ann@acme.example\r\nTo: x@remote.example\r\nSubject: stuck\r\n\r\nwaiting in a queue\r\n";

/// The mini fabric with the given retry base, ann as a customer, and the `fabric` command pointed at
/// it (a `fabric.json` naming the sandbox's topology in the sandbox's data directory).
async fn fabric(retry: Duration) -> anyhow::Result<(Sandbox, PathBuf)> {
    let mut t = topology::Topology::load(testkit::workspace_root().join("topology/mini.toml"))?;
    t.timing.outbound_retry = retry;
    let sandbox = Sandbox::start_topology(t).await?;
    add_users(&sandbox, &["ann@acme.example"]).await?;
    let var = sandbox
        .tls_dir()
        .parent()
        .context("the sandbox's data directory")?
        .to_path_buf();
    let file = var.join("queue-cli-topology.toml");
    std::fs::write(&file, sandbox.topology().to_toml()?)?;
    fabric::FabricState::update(&var, |s| s.topology = file.clone())?;
    Ok((sandbox, var))
}

fn run(var: &PathBuf, args: &[&str]) -> anyhow::Result<Output> {
    Ok(
        std::process::Command::new(testkit::bin_dir().join("fabric"))
            .env("FABRIC_DATA_DIR", var)
            .args(args)
            .output()?,
    )
}

/// Runs `fabric ARGS` that must succeed; returns its stdout.
fn ok(var: &PathBuf, args: &[&str]) -> anyhow::Result<String> {
    let out = run(var, args)?;
    if !out.status.success() {
        bail!(
            "fabric {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `fabric queue list --json`: the rows.
fn rows(var: &PathBuf) -> anyhow::Result<Vec<Value>> {
    let v: Value = serde_json::from_str(&ok(var, &["queue", "list", "--json"])?)?;
    Ok(v.as_array().cloned().unwrap_or_default())
}

/// The row of `id` on to-internet, once its attempts reach `attempts` and it waits again.
async fn waiting_row(var: &PathBuf, id: &str, attempts: i64) -> anyhow::Result<Value> {
    let start = Instant::now();
    loop {
        if let Some(r) = rows(var)?.into_iter().find(|r| {
            r["message_id"] == id
                && r["queue"] == "to-internet"
                && r["attempts"].as_i64() >= Some(attempts)
                && r["leased"] == false
        }) {
            return Ok(r);
        }
        if start.elapsed() > Duration::from_secs(30) {
            bail!("{id} never waited on to-internet after {attempts} attempt(s)");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn sink(sandbox: &Sandbox) -> StoreClient {
    StoreClient::new(sandbox.url("outside", "sms")).with_timeout(Duration::from_secs(10))
}

async fn sink_count(sandbox: &Sandbox) -> anyhow::Result<usize> {
    let r = sink(sandbox)
        .call(Method::GET, "/v1/smtp/messages", &[], bytes::Bytes::new())
        .await?;
    let v: Value = serde_json::from_slice(&r.body)?;
    Ok(v["messages"].as_array().map(Vec::len).unwrap_or(0))
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

async fn submit_one(sandbox: &Sandbox) -> anyhow::Result<String> {
    let reply = submit(
        sandbox,
        "intranet-a",
        "ann@acme.example",
        &["x@remote.example"],
        BODY,
    )
    .await?;
    queued_id(&reply)
}

async fn queue_gauges(sandbox: &Sandbox, queue: &str) -> anyhow::Result<(f64, f64)> {
    let m = common::metrics(sandbox, "store-a").await?;
    Ok((
        common::metric_sum(&m, "fabric_store_queue_depth", &[("queue", queue)]),
        common::metric_sum(
            &m,
            "fabric_store_queue_oldest_age_seconds",
            &[("queue", queue)],
        ),
    ))
}

#[tokio::test]
async fn a_held_item_is_not_tried_until_released_then_goes_at_once() -> anyhow::Result<()> {
    let (sandbox, var) = fabric(Duration::from_secs(1)).await?;
    set_mode(&sandbox, "tempfail").await?;
    let id = submit_one(&sandbox).await?;

    // Listed with its envelope, attempts and the remote's answer.
    let row = waiting_row(&var, &id, 1).await?;
    assert_eq!(row["sender"], "ann@acme.example", "{row}");
    assert_eq!(row["recipients"], json!(["x@remote.example"]), "{row}");
    assert_eq!(row["store"], "store-a", "{row}");
    assert!(row["size"].as_i64() > Some(BODY.len() as i64), "{row}");
    assert!(
        row["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("451")),
        "{row}"
    );
    let table = ok(&var, &["queue", "list"])?;
    assert!(
        table.contains(&id) && table.contains("ann@acme.example"),
        "{table}"
    );
    assert!(table.contains("-- to-internet: 1 item"), "{table}");

    // Held: no attempt while the remote MX would now accept, over several retry periods.
    let held = ok(&var, &["queue", "hold", &id])?;
    assert!(held.contains("held"), "{held}");
    // (An attempt under way when the hold came ends first, against the 451.)
    let before = waiting_row(&var, &id, 1).await?;
    assert_eq!(before["next_attempt"], "held", "{before}");
    assert_eq!(before["held"], true, "{before}");
    set_mode(&sandbox, "accept").await?;
    tokio::time::sleep(Duration::from_secs(6)).await;
    let after = waiting_row(&var, &id, 1).await?;
    assert_eq!(after["attempts"], before["attempts"], "tried while held");
    assert_eq!(sink_count(&sandbox).await?, 0, "delivered while held");
    // A held item is not flushed: the operator is told to release it.
    let refused = run(&var, &["queue", "flush", &id])?;
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("release it first"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );

    // Released and flushed: delivered at once, the queue empty.
    let released_at = Instant::now();
    ok(&var, &["queue", "release", &id])?;
    ok(&var, &["queue", "flush"])?;
    wait_until(
        "delivery after release",
        Duration::from_secs(5),
        Duration::from_millis(100),
        || async { sink_count(&sandbox).await.is_ok_and(|n| n == 1) },
    )
    .await?;
    assert!(released_at.elapsed() < Duration::from_secs(5));
    wait_until(
        "the queue empty",
        Duration::from_secs(10),
        Duration::from_millis(200),
        || async { rows(&var).is_ok_and(|r| r.is_empty()) },
    )
    .await?;
    Ok(())
}

#[tokio::test]
async fn flush_bounce_unknown_ids_and_the_queue_gauges() -> anyhow::Result<()> {
    // A long retry: anything that goes before it is the operator's doing.
    let (sandbox, var) = fabric(Duration::from_secs(60)).await?;
    set_mode(&sandbox, "tempfail").await?;
    let first = submit_one(&sandbox).await?;
    let row = waiting_row(&var, &first, 1).await?;
    assert!(
        row["next_attempt"]
            .as_str()
            .is_some_and(|n| n.starts_with("in ")),
        "{row}"
    );

    // The gauges: one item on to-internet, as old as the message.
    tokio::time::sleep(Duration::from_secs(2)).await;
    wait_until(
        "the depth gauge",
        Duration::from_secs(5),
        Duration::from_millis(200),
        || async {
            queue_gauges(&sandbox, "to-internet")
                .await
                .is_ok_and(|g| g.0 == 1.0)
        },
    )
    .await?;
    let (_, age) = queue_gauges(&sandbox, "to-internet").await?;
    assert!((1.0..60.0).contains(&age), "oldest age {age}");

    // Show: the item's fields and metadata, then the message's trace.
    let shown = ok(&var, &["queue", "show", &first])?;
    assert!(shown.contains("item store-a:to-internet:"), "{shown}");
    assert!(shown.contains("\"submitted_at_ms\""), "the meta: {shown}");
    assert!(
        shown.contains("delivery attempt") && shown.contains("deferred"),
        "the trace: {shown}"
    );

    // Flush: delivered now, not in a minute.
    set_mode(&sandbox, "accept").await?;
    let flushed = ok(&var, &["queue", "flush", &first])?;
    assert!(flushed.contains("flushed"), "{flushed}");
    wait_until(
        "delivery after flush",
        Duration::from_secs(5),
        Duration::from_millis(100),
        || async { sink_count(&sandbox).await.is_ok_and(|n| n == 1) },
    )
    .await?;
    wait_until(
        "the gauges back to zero",
        Duration::from_secs(5),
        Duration::from_millis(200),
        || async {
            queue_gauges(&sandbox, "to-internet")
                .await
                .is_ok_and(|g| g == (0.0, 0.0))
        },
    )
    .await?;

    // Bounce: back to the sender as a DSN, the queue empty, nothing sent out.
    set_mode(&sandbox, "tempfail").await?;
    let second = submit_one(&sandbox).await?;
    waiting_row(&var, &second, 1).await?;
    let out = ok(&var, &["queue", "bounce", &second])?;
    assert!(out.contains("returned") || out.contains("return"), "{out}");
    let inbox = wait_for(
        &sandbox,
        "ann@acme.example",
        "INBOX",
        1,
        Duration::from_secs(10),
    )
    .await?;
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
        dsn.contains("Final-Recipient: rfc822;x@remote.example\r\nAction: failed"),
        "{dsn}"
    );
    assert!(
        dsn.contains("returned to the sender by the operator"),
        "{dsn}"
    );
    assert!(dsn.contains(&second), "{dsn}");
    wait_until(
        "the queue empty",
        Duration::from_secs(10),
        Duration::from_millis(200),
        || async { rows(&var).is_ok_and(|r| r.is_empty()) },
    )
    .await?;
    assert_eq!(
        sink_count(&sandbox).await?,
        1,
        "the bounced message went out"
    );
    assert_eq!(
        folder(&sandbox, "ann@acme.example", "INBOX").await?.len(),
        1
    );

    // Unknown ids: non-zero, and the operator is told what is wrong.
    for (args, says) in [
        (
            vec!["queue", "hold", "no-such-message"],
            "no queued item has the id",
        ),
        (
            vec!["queue", "show", "no-such-message"],
            "no queued item has the id",
        ),
        (
            vec!["queue", "release", "store-a:to-internet:999999"],
            "no item 999999",
        ),
        (vec!["queue", "flush", "nowhere:to-internet:1"], "no store"),
    ] {
        let out = run(&var, &args)?;
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} succeeded");
        assert!(err.contains(says), "{args:?}: {err}");
    }
    Ok(())
}
