//! Relay servers: the secondary MX that keeps mail for a site that cannot take it.
//!
//! - A relay takes mail only for the domains it stands in for (the other site's), only for existing
//!   mailboxes, and answers 250 once the message is on the `relay` queue of its site's stores.
//! - With every Internet mail server of the home site dead (one SIGKILLed, one frozen by SIGSTOP), the
//!   accepted mail waits in the relay queue, tried every `relay_retry`; when the servers come back it
//!   is handed over, and every message is in the mailbox exactly once. A second hand-over of the same
//!   message (a relay that died between the home site's 250 and its own ack) adds nothing; the same
//!   header from anyone but a relay is trusted for nothing.
//! - Mail that waits too long: a delay notice (RFC 3464, Action: delayed) after
//!   `relay_delay_warning`, then a bounce (Action: failed) after `relay_max_lifetime`, from the null
//!   sender, to an Internet sender's MX or into a customer sender's INBOX.

mod common;

use std::time::Duration;

use anyhow::Context;
use nix::sys::signal::Signal;
use serde_json::{Value, json};
use store_client::{Method, QueueItem, StoreClient};
use testkit::Sandbox;
use topology::Topology;

/// Sends one message per subject over SMTP to `addr` (from `src` if given) and returns, per message,
/// the final reply `[code, text]` (or the refusal of RCPT as `[code, text]`).
const SEND: &str = r#"
import json, os, smtplib
host, port = os.environ["ADDR"].rsplit(":", 1)
src = os.environ.get("SRC")
out = []
for subject in json.loads(os.environ["SUBJECTS"]):
    s = smtplib.SMTP(host, int(port), timeout=30, source_address=(src, 0) if src else None)
    s.ehlo("sender.remote.example")
    s.mail(os.environ["FROM"])
    code, text = s.rcpt(os.environ["TO"])
    if code != 250:
        out.append([code, text.decode()])
        s.quit()
        continue
    body = (os.environ.get("EXTRA", "") + "From: " + os.environ["FROM"] + "\r\nTo: " + os.environ["TO"]
            + "\r\nSubject: " + subject + "\r\n\r\nbody of " + subject + "\r\n")
    code, text = s.data(body.encode())
    out.append([code, text.decode()])
    s.quit()
print(json.dumps(out))
"#;

struct Send<'a> {
    addr: String,
    src: Option<&'a str>,
    from: &'a str,
    to: &'a str,
    extra: String,
}

impl Send<'_> {
    async fn run(&self, subjects: &[String]) -> anyhow::Result<Vec<(u64, String)>> {
        let mut env = vec![
            ("ADDR", self.addr.clone()),
            ("FROM", self.from.to_string()),
            ("TO", self.to.to_string()),
            ("SUBJECTS", serde_json::to_string(subjects)?),
            ("EXTRA", self.extra.clone()),
        ];
        if let Some(src) = self.src {
            env.push(("SRC", src.to_string()));
        }
        let v = common::python(SEND, &env).await?;
        let replies = v.as_array().context("a list of replies")?;
        Ok(replies
            .iter()
            .map(|r| {
                (
                    r[0].as_u64().unwrap_or(0),
                    r[1].as_str().unwrap_or("").to_string(),
                )
            })
            .collect())
    }
}

fn smtp_of(sandbox: &Sandbox, node: &str) -> String {
    sandbox
        .url(node, "smtp")
        .trim_start_matches("http://")
        .to_string()
}

/// The id in a "250 2.0.0 queued as ID" reply.
fn queued_id(text: &str) -> Option<String> {
    text.split_whitespace()
        .last()
        .filter(|_| text.contains("queued as"))
        .map(str::to_string)
}

/// Every item of `queue` on the given stores.
async fn queue_items(
    sandbox: &Sandbox,
    stores: &[&str],
    queue: &str,
) -> anyhow::Result<Vec<QueueItem>> {
    let mut all = Vec::new();
    for s in stores {
        all.extend(common::store(sandbox, s).list_queue(queue, None).await?);
    }
    Ok(all)
}

/// ann's INBOX: (subject line, X-Fabric-Id header) of every message, via the store.
async fn inbox(store: &StoreClient) -> anyhow::Result<Vec<(String, Option<String>)>> {
    let listing = store
        .list_mailbox("ann@acme.example", "INBOX", None)
        .await?;
    let mut out = Vec::new();
    for m in listing.messages {
        let body = store
            .fetch("ann@acme.example", "INBOX", m.uid, None)
            .await?;
        let text = String::from_utf8_lossy(&body).to_string();
        let subject = text
            .lines()
            .find_map(|l| l.strip_prefix("Subject: "))
            .unwrap_or("")
            .to_string();
        let id = smtp::fabric_id::find(&body);
        out.push((subject, id));
    }
    Ok(out)
}

#[tokio::test]
async fn a_relay_holds_mail_while_the_home_site_is_down_and_hands_it_over_exactly_once()
-> anyhow::Result<()> {
    let mut t = Topology::load(testkit::workspace_root().join("topology/two-site.toml"))?;
    t.timing.relay_retry = Duration::from_secs(1);
    // No standby in this test: the relay only holds and retries.
    t.timing.standby_attempts = 1_000_000;
    t.timing.standby_after = Duration::from_secs(3600);
    let mut sandbox = Sandbox::start_topology(t).await?;
    let directory = common::store(&sandbox, "store-w1");
    for user in ["ann@acme.example", "bob@globex.example"] {
        directory
            .put_user(
                user,
                &json!({"password_hash": common::HASH, "notify": "none"}),
            )
            .await?;
    }
    let ann = common::store(&sandbox, "store-w1");
    let relays = ["relay-e1", "relay-e2"];

    // 1. What a relay of east takes: west's domains only, existing mailboxes only.
    for (to, code, enhanced) in [
        ("bob@globex.example", 550, "5.7.1"),
        ("nobody@acme.example", 550, "5.1.1"),
    ] {
        let send = Send {
            addr: smtp_of(&sandbox, "relay-e1"),
            src: None,
            from: "carol@remote.example",
            to,
            extra: String::new(),
        };
        let r = send.run(&["refused".to_string()]).await?;
        assert_eq!(r[0].0, code, "{to}: {r:?}");
        assert!(r[0].1.starts_with(enhanced), "{to}: {r:?}");
    }

    // 2. Before the outage, straight to a west mail server; a sender's own X-Fabric-Id header is
    //    trusted for nothing (the message is a new one).
    let before = Send {
        addr: smtp_of(&sandbox, "inet-mx-w1"),
        src: None,
        from: "carol@remote.example",
        to: "ann@acme.example",
        extra: String::new(),
    };
    let r = before.run(&["before the outage".to_string()]).await?;
    let first_id = queued_id(&r[0].1).context("queued as")?;
    let forged = Send {
        extra: smtp::fabric_id::header_line(&first_id),
        ..before
    };
    let r = forged.run(&["forged id".to_string()]).await?;
    assert_eq!(r[0].0, 250, "{r:?}");
    common::poll(
        "both messages in ann's INBOX",
        Duration::from_secs(30),
        || async { Ok((inbox(&ann).await?.len() == 2).then_some(())) },
    )
    .await?;

    // 3. West's Internet mail servers die: one killed, one frozen.
    sandbox.kill("inet-mx-w1", Signal::SIGKILL)?;
    sandbox.kill("inet-mx-w2", Signal::SIGSTOP)?;
    let mut held_ids = Vec::new();
    for (i, relay) in relays.iter().enumerate() {
        let send = Send {
            addr: smtp_of(&sandbox, relay),
            src: None,
            from: "carol@remote.example",
            to: "ann@acme.example",
            extra: String::new(),
        };
        let subjects: Vec<String> = (0..6).map(|n| format!("held {i}-{n}")).collect();
        for (code, text) in send.run(&subjects).await? {
            assert_eq!(code, 250, "{relay}: {text}");
            held_ids.push(queued_id(&text).context("queued as")?);
        }
    }
    // Every accepted message waits in east's relay queue and is tried again and again.
    let east = ["store-e1", "store-e2"];
    common::poll(
        "every held message retried at least twice",
        Duration::from_secs(40),
        || async {
            let items = queue_items(&sandbox, &east, "relay").await?;
            let retried = items.iter().filter(|i| i.attempts >= 2).count();
            Ok((items.len() == held_ids.len() && retried == held_ids.len()).then_some(items))
        },
    )
    .await
    .map(|items| {
        for i in &items {
            let e = i.last_error.as_deref().unwrap_or("");
            assert!(
                e.contains("router-inet-w") && e.contains("inet-mx-w"),
                "{e}"
            );
        }
    })?;
    assert_eq!(inbox(&ann).await?.len(), 2, "nothing reached the mailbox");

    // 4. The originals come back: everything is handed over, each message exactly once.
    sandbox.kill("inet-mx-w2", Signal::SIGKILL)?;
    sandbox.start_node("inet-mx-w1").await?;
    sandbox.start_node("inet-mx-w2").await?;
    let got = common::poll(
        "the held mail in ann's INBOX",
        Duration::from_secs(60),
        || async {
            let got = inbox(&ann).await?;
            Ok((got.len() >= 2 + held_ids.len()).then_some(got))
        },
    )
    .await?;
    assert_eq!(got.len(), 2 + held_ids.len(), "{got:?}");
    for id in &held_ids {
        let copies = got.iter().filter(|(_, i)| i.as_deref() == Some(id)).count();
        assert_eq!(copies, 1, "{id} exactly once: {got:?}");
        // Every hop, from the relay's (east's stores) to the mailbox (west's).
        let mut trace = String::new();
        for s in ["store-e1", "store-e2", "store-w1"] {
            trace += &common::store(&sandbox, s)
                .get_trace(id, None)
                .await?
                .to_string();
        }
        for hop in ["\"held\"", "\"relayed\"", "\"delivered\""] {
            assert!(trace.contains(hop), "{hop} in {trace}");
        }
    }
    common::poll("the relay queue empty", Duration::from_secs(20), || async {
        Ok(queue_items(&sandbox, &east, "relay")
            .await?
            .is_empty()
            .then_some(()))
    })
    .await?;

    // 5. The same message handed over again from a relay's address (as after a relay's crash
    //    between the 250 and its ack) is recognised: still one copy.
    let again = Send {
        addr: smtp_of(&sandbox, "router-inet-w1"),
        src: Some("127.10.2.21"),
        from: "carol@remote.example",
        to: "ann@acme.example",
        extra: smtp::fabric_id::header_line(&held_ids[0]),
    };
    let r = again.run(&["handed over twice".to_string()]).await?;
    assert_eq!(r[0].0, 250, "{r:?}");
    assert_eq!(queued_id(&r[0].1).as_deref(), Some(held_ids[0].as_str()));
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(inbox(&ann).await?.len(), 2 + held_ids.len());

    // The relays report what they did. Both lease the same queues, so either may have done all of
    // it: the sums count, not each relay's share.
    let (mut delivered, mut deferred) = (0.0, 0.0);
    for relay in relays {
        let text = common::metrics(&sandbox, relay).await?;
        delivered += common::metric_sum(&text, "fabric_relay_delivered_total", &[]);
        deferred += common::metric_sum(&text, "fabric_relay_deferred_total", &[]);
    }
    assert_eq!(delivered, held_ids.len() as f64);
    assert!(
        deferred >= held_ids.len() as f64,
        "every held message was deferred at least once: {deferred} deferrals"
    );
    Ok(())
}

/// The sink's messages to `rcpt`: (mail_from, raw text).
async fn sink_mail_to(sandbox: &Sandbox, rcpt: &str) -> anyhow::Result<Vec<(String, String)>> {
    let sink =
        StoreClient::new(sandbox.url("outside", "sms")).with_timeout(Duration::from_secs(10));
    let r = sink
        .call(Method::GET, "/v1/smtp/messages", &[], bytes::Bytes::new())
        .await?;
    let v: Value = serde_json::from_slice(&r.body)?;
    let mut out = Vec::new();
    for m in v["messages"].as_array().cloned().unwrap_or_default() {
        if !m["rcpt_to"].to_string().contains(rcpt) {
            continue;
        }
        let id = m["id"].as_str().unwrap_or("");
        let raw = sink
            .call(
                Method::GET,
                &format!("/v1/smtp/messages/{id}"),
                &[],
                bytes::Bytes::new(),
            )
            .await?;
        let from = m["mail_from"].as_str().unwrap_or("?").to_string();
        out.push((from, String::from_utf8_lossy(&raw.body).to_string()));
    }
    Ok(out)
}

#[tokio::test]
async fn held_mail_gets_a_delay_notice_then_returns_to_its_sender_after_its_lifetime()
-> anyhow::Result<()> {
    // West has no way in at all here (no router, no Internet mail server): only its stores.
    let mut t = Topology::load(testkit::workspace_root().join("topology/two-site.toml"))?;
    let keep = [
        "store-w1", "store-w2", "store-e1", "store-e2", "relay-e1", "outside",
    ];
    t.nodes.retain(|n| keep.contains(&n.name.as_str()));
    t.acls.clear();
    t.timing.relay_retry = Duration::from_millis(500);
    t.timing.relay_delay_warning = Duration::from_secs(1);
    t.timing.relay_max_lifetime = Duration::from_secs(5);
    t.timing.standby_attempts = 1_000_000;
    t.timing.standby_after = Duration::from_secs(3600);
    let sandbox = Sandbox::start_topology(t).await?;
    let directory = common::store(&sandbox, "store-w1");
    for user in ["ann@acme.example", "bob@globex.example"] {
        directory
            .put_user(
                user,
                &json!({"password_hash": common::HASH, "notify": "none"}),
            )
            .await?;
    }
    let mut ids = Vec::new();
    for from in ["carol@remote.example", "bob@globex.example"] {
        let send = Send {
            addr: smtp_of(&sandbox, "relay-e1"),
            src: None,
            from,
            to: "ann@acme.example",
            extra: String::new(),
        };
        let r = send.run(&[format!("from {from}")]).await?;
        assert_eq!(r[0].0, 250, "{r:?}");
        ids.push(queued_id(&r[0].1).context("queued as")?);
    }

    // An Internet sender: a delay notice, then a bounce, both from the null sender, at its MX.
    let reports = common::poll(
        "delay notice and bounce at carol's MX",
        Duration::from_secs(40),
        || async {
            let got = sink_mail_to(&sandbox, "carol@remote.example").await?;
            Ok((got.len() >= 2).then_some(got))
        },
    )
    .await?;
    assert_eq!(reports.len(), 2, "one notice, one bounce");
    let (delay, bounce) = (&reports[0].1, &reports[1].1);
    for (from, _) in &reports {
        assert_eq!(from, "", "reports come from the null reverse path");
    }
    for r in [delay, bounce] {
        assert!(
            r.contains("Content-Type: multipart/report; report-type=delivery-status"),
            "{r}"
        );
        assert!(
            r.contains("Final-Recipient: rfc822;ann@acme.example"),
            "{r}"
        );
        assert!(r.contains(&ids[0]), "names the message: {r}");
    }
    assert!(delay.contains("Action: delayed\r\nStatus: 4."), "{delay}");
    assert!(delay.contains("Will-Retry-Until: "), "{delay}");
    assert!(bounce.contains("Action: failed\r\nStatus: 5."), "{bounce}");
    assert!(bounce.contains("maximum queue lifetime"), "{bounce}");
    assert!(
        bounce.contains("Subject: from carol@remote.example"),
        "original headers: {bounce}"
    );

    // A customer sender gets both in its INBOX (exactly once each, however often the relay tries).
    let bob = common::store(&sandbox, "store-e1");
    let listing = common::poll("bob's reports", Duration::from_secs(30), || async {
        let l = bob
            .list_mailbox("bob@globex.example", "INBOX", None)
            .await?;
        Ok((l.messages.len() >= 2).then_some(l))
    })
    .await?;
    let names: Vec<&str> = listing
        .messages
        .iter()
        .map(|m| m.message_id.as_str())
        .collect();
    assert_eq!(
        names,
        vec![format!("{}.delay", ids[1]), format!("{}.bounce", ids[1])],
    );
    common::poll("the relay queue empty", Duration::from_secs(20), || async {
        Ok(queue_items(&sandbox, &["store-e1", "store-e2"], "relay")
            .await?
            .is_empty()
            .then_some(()))
    })
    .await?;
    let text = common::metrics(&sandbox, "relay-e1").await?;
    assert_eq!(
        common::metric_sum(&text, "fabric_relay_bounced_total", &[]),
        2.0
    );
    assert_eq!(
        common::metric_sum(&text, "fabric_relay_delay_notices_total", &[]),
        2.0
    );
    Ok(())
}
