//! New-mail notification, end to end with real clients: Python's smtplib sends mail to the fabric's
//! Internet mail server; users who asked for it are notified at the simulated outside world (the
//! sink node): an SMS naming the subject and the fabric id, or a notice mail to their alternate
//! address. `notify = "none"` brings nothing. With the gateway killed (SIGKILL) the mail is still
//! accepted at once and lands in the INBOX; the failure is counted and the notification retried.

mod common;

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use nix::sys::signal::Signal;
use serde_json::{Value, json};
use testkit::Sandbox;

const SINK: &str = "outside";

/// The mini fabric (with its sink) and three users: ann (SMS), bea (alternate address), cid (none).
async fn fabric_with_users() -> anyhow::Result<Sandbox> {
    let sandbox = Sandbox::start("topology/mini.toml").await?;
    let store = common::store(&sandbox, "store-a");
    store
        .put_user(
            "ann@acme.example",
            &json!({"password_hash": common::HASH, "notify": "sms", "sms": "+15550101"}),
        )
        .await?;
    store
        .put_user(
            "bea@acme.example",
            &json!({"password_hash": common::HASH, "notify": "alternate", "alternate": "bea@home.example"}),
        )
        .await?;
    store
        .put_user(
            "cid@acme.example",
            &json!({"password_hash": common::HASH, "notify": "none", "sms": "+15550103", "alternate": "cid@home.example"}),
        )
        .await?;
    Ok(sandbox)
}

/// Sends one message with smtplib; returns the DATA reply code, its text and the seconds it took.
async fn send(sandbox: &Sandbox, to: &str, subject: &str) -> anyhow::Result<(i64, String, f64)> {
    let addr = common::smtp_addr(sandbox);
    let (host, port) = addr.rsplit_once(':').context("address")?;
    let script = r#"
import json, os, smtplib, time
s = smtplib.SMTP(os.environ["HOST"], int(os.environ["PORT"]), timeout=30)
msg = ("From: Bob <bob@remote.example>\r\nTo: %s\r\nSubject: %s\r\n\r\nhello\r\n" % (os.environ["TO"], os.environ["SUBJECT"])).encode()
s.ehlo("remote.example")
s.mail("bob@remote.example")
s.rcpt(os.environ["TO"])
t = time.monotonic()
code, text = s.data(msg)
took = time.monotonic() - t
s.quit()
print(json.dumps([code, text.decode(), took]))
"#;
    let out = tokio::process::Command::new("python3")
        .arg("-c")
        .arg(script)
        .env("HOST", host)
        .env("PORT", port)
        .env("TO", to)
        .env("SUBJECT", subject)
        .kill_on_drop(true)
        .output()
        .await
        .context("python3 must be installed")?;
    if !out.status.success() {
        bail!("python failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let v: Value = serde_json::from_slice(&out.stdout)?;
    Ok((
        v[0].as_i64().unwrap_or(0),
        v[1].as_str().unwrap_or("").to_string(),
        v[2].as_f64().unwrap_or(f64::MAX),
    ))
}

/// The fabric id in "2.0.0 queued as ID".
fn fabric_id(text: &str) -> anyhow::Result<String> {
    text.strip_prefix("2.0.0 queued as ")
        .map(str::to_string)
        .with_context(|| format!("not a fabric 250: {text}"))
}

async fn sink_get(sandbox: &Sandbox, path: &str) -> anyhow::Result<store_client::RawResponse> {
    let client = store_client::StoreClient::new(sandbox.url(SINK, "sms"))
        .with_timeout(Duration::from_secs(5));
    Ok(client
        .raw(store_client::Method::GET, path, &[], bytes::Bytes::new())
        .await?)
}

async fn sink_list(sandbox: &Sandbox, path: &str) -> Vec<Value> {
    match sink_get(sandbox, path).await {
        Ok(r) => r
            .json()
            .and_then(|v| v["messages"].as_array().cloned())
            .unwrap_or_default(),
        Err(_) => Vec::new(),
    }
}

#[tokio::test]
async fn sms_and_alternate_users_are_notified_and_none_is_not() -> anyhow::Result<()> {
    let sandbox = fabric_with_users().await?;
    // cid first: by the time the others' notifications are in, cid's would be too.
    let (code, text, _) = send(&sandbox, "cid@acme.example", "for cid").await?;
    assert_eq!(code, 250, "{text}");
    let cid_id = fabric_id(&text)?;
    let (code, text, _) = send(&sandbox, "ann@acme.example", "Quarterly numbers").await?;
    assert_eq!(code, 250, "{text}");
    let ann_id = fabric_id(&text)?;
    let (code, text, _) = send(&sandbox, "bea@acme.example", "Lunch on Friday").await?;
    assert_eq!(code, 250, "{text}");
    let bea_id = fabric_id(&text)?;

    // ann: one SMS to her number, with the subject and the fabric id.
    testkit::wait_until(
        "ann's SMS at the gateway",
        Duration::from_secs(15),
        Duration::from_millis(100),
        || async { !sink_list(&sandbox, "/v1/sms").await.is_empty() },
    )
    .await?;
    // bea: a notice mail to her alternate address, naming the subject and the fabric id.
    testkit::wait_until(
        "bea's notice at the remote MX",
        Duration::from_secs(15),
        Duration::from_millis(100),
        || async { !sink_list(&sandbox, "/v1/smtp/messages").await.is_empty() },
    )
    .await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let sms = sink_list(&sandbox, "/v1/sms").await;
    let mails = sink_list(&sandbox, "/v1/smtp/messages").await;
    assert_eq!(sms.len(), 1, "exactly one SMS (ann's): {sms:?}");
    assert_eq!(sms[0]["to"], "+15550101");
    let text = sms[0]["text"].as_str().unwrap_or("");
    assert!(text.contains("Quarterly numbers"), "{text}");
    assert!(text.contains(&ann_id), "{text}");
    assert!(text.contains("bob@remote.example"), "{text}");

    assert_eq!(mails.len(), 1, "exactly one notice (bea's): {mails:?}");
    assert_eq!(mails[0]["rcpt_to"], json!(["bea@home.example"]));
    let id = mails[0]["id"].as_str().context("id")?;
    let raw = sink_get(&sandbox, &format!("/v1/smtp/messages/{id}")).await?;
    let raw = String::from_utf8_lossy(&raw.body).into_owned();
    assert!(raw.contains("\r\nTo: <bea@home.example>\r\n"), "{raw}");
    assert!(raw.contains("Lunch on Friday"), "{raw}");
    assert!(raw.contains(&bea_id), "{raw}");
    assert!(raw.contains("Auto-Submitted: auto-generated"), "{raw}");

    // cid asked for nothing: neither channel mentions cid's message.
    let everything = format!("{sms:?}{raw}");
    assert!(!everything.contains(&cid_id), "{everything}");
    assert!(!everything.contains("for cid"), "{everything}");

    let metrics = common::metrics(&sandbox, "mx-a").await?;
    let sum = |labels: &[(&str, &str)]| {
        common::metric_sum(&metrics, "fabric_inet_mx_notify_sent_total", labels)
    };
    assert_eq!(sum(&[("channel", "sms")]), 1.0);
    assert_eq!(sum(&[("channel", "alternate")]), 1.0);
    Ok(())
}

#[tokio::test]
async fn a_dead_gateway_never_costs_the_mail_and_the_notification_is_retried() -> anyhow::Result<()>
{
    let mut sandbox = fabric_with_users().await?;
    sandbox.kill(SINK, Signal::SIGKILL)?;
    let (code, text, took) =
        send(&sandbox, "ann@acme.example", "while the gateway is down").await?;
    assert_eq!(code, 250, "{text}");
    assert!(
        took < 5.0,
        "the 250 is not held for the notification ({took}s)"
    );
    let id = fabric_id(&text)?;
    let store = common::store(&sandbox, "store-a");
    testkit::wait_until(
        "the message in ann's INBOX",
        Duration::from_secs(15),
        Duration::from_millis(100),
        || async {
            store
                .list_mailbox("ann@acme.example", "INBOX", None)
                .await
                .map(|l| l.messages.iter().any(|m| m.message_id == id))
                .unwrap_or(false)
        },
    )
    .await?;
    let failures = || async {
        common::metrics(&sandbox, "mx-a")
            .await
            .map(|m| {
                common::metric_sum(
                    &m,
                    "fabric_inet_mx_notify_failures_total",
                    &[("channel", "sms")],
                )
            })
            .unwrap_or(0.0)
    };
    let start = Instant::now();
    testkit::wait_until(
        "the failed notification counted",
        Duration::from_secs(10),
        Duration::from_millis(50),
        || async { failures().await >= 1.0 },
    )
    .await?;
    let log = std::fs::read_to_string(sandbox.log_path("mx-a"))?;
    assert!(
        log.lines()
            .any(|l| l.contains("notification failed; retrying") && l.contains(&id)),
        "the failure is logged with the fabric id"
    );
    // The gateway comes back within the retry window: the SMS arrives after all.
    sandbox.start_node(SINK).await?;
    assert!(
        start.elapsed() < Duration::from_secs(6),
        "restart too slow for the test"
    );
    testkit::wait_until(
        "the retried SMS",
        Duration::from_secs(15),
        Duration::from_millis(100),
        || async { !sink_list(&sandbox, "/v1/sms").await.is_empty() },
    )
    .await?;
    let sms = sink_list(&sandbox, "/v1/sms").await;
    assert_eq!(sms.len(), 1);
    assert!(sms[0]["text"].as_str().is_some_and(|t| t.contains(&id)));
    Ok(())
}
