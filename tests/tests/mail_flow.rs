//! Mail through the fabric: SMTP into the Internet mail server, the transfer server moves it into the
//! recipient's mailbox on the store; every hop in the trace, the move in the transfer log, a copy in the
//! archive. And the promise under fire: SIGKILL the mail server while 200 messages are being sent, or
//! the home store while they move into the mailbox, and every message that got a 250 is in the
//! mailbox exactly once.

mod common;

use common::{fabric_with_ann, smtp_addr};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, bail};
use nix::sys::signal::Signal;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// A minimal SMTP client session: returns the 250 text of DATA, or the failure.
async fn send_one(addr: &str, subject: &str) -> anyhow::Result<String> {
    let stream = TcpStream::connect(addr).await?;
    let (r, mut w) = stream.into_split();
    let mut r = BufReader::new(r);
    async fn reply(r: &mut BufReader<tokio::net::tcp::OwnedReadHalf>) -> anyhow::Result<String> {
        loop {
            let mut line = String::new();
            if r.read_line(&mut line).await? == 0 {
                bail!("closed");
            }
            if line.as_bytes().get(3) == Some(&b' ') {
                return Ok(line);
            }
        }
    }
    let expect = |got: String, code: &str| -> anyhow::Result<String> {
        if got.starts_with(code) {
            Ok(got)
        } else {
            bail!("expected {code}, got {got}")
        }
    };
    expect(reply(&mut r).await?, "220")?;
    for (cmd, code) in [
        ("EHLO load.example\r\n", "250"),
        ("MAIL FROM:<bob@remote.example>\r\n", "250"),
        ("RCPT TO:<ann@acme.example>\r\n", "250"),
        ("DATA\r\n", "354"),
    ] {
        w.write_all(cmd.as_bytes()).await?;
        expect(reply(&mut r).await?, code)?;
    }
    // About 4 KiB: 50 lines of 77 octets.
    let line = format!("{}\r\n", "load ".repeat(15));
    let body = format!("Subject: {subject}\r\n\r\n{}.\r\n", line.repeat(50));
    w.write_all(body.as_bytes()).await?;
    let done = expect(reply(&mut r).await?, "250")?;
    let _ = w.write_all(b"QUIT\r\n").await;
    Ok(done)
}

/// The fabric id in "250 2.0.0 queued as ID".
fn queued_id(reply: &str) -> Option<String> {
    reply.trim_end().rsplit(' ').next().map(str::to_string)
}

#[tokio::test]
async fn smtp_mail_reaches_the_mailbox_with_its_trace_transfer_log_and_archive()
-> anyhow::Result<()> {
    let sandbox = fabric_with_ann().await?;
    let reply = send_one(&smtp_addr(&sandbox), "end to end").await?;
    let id = queued_id(&reply).context("id")?;
    let a = common::store(&sandbox, "store-a");
    testkit::wait_until(
        "the message in ann's INBOX",
        Duration::from_secs(10),
        Duration::from_millis(50),
        || async {
            a.list_mailbox("ann@acme.example", "INBOX", None)
                .await
                .map(|l| l.messages.iter().any(|m| m.message_id == id))
                .unwrap_or(false)
        },
    )
    .await?;
    // The ack comes last, after the log and the archive copy.
    testkit::wait_until(
        "the inbound item acknowledged",
        Duration::from_secs(10),
        Duration::from_millis(20),
        || async {
            a.list_queue("inbound", None)
                .await
                .is_ok_and(|q| q.is_empty())
        },
    )
    .await?;
    let listing = a.list_mailbox("ann@acme.example", "INBOX", None).await?;
    let msg = listing
        .messages
        .iter()
        .find(|m| m.message_id == id)
        .context("message")?;
    let body = a.fetch("ann@acme.example", "INBOX", msg.uid, None).await?;
    let text = String::from_utf8(body.to_vec())?;
    assert!(text.starts_with("Received: from load.example"), "{text}");
    assert!(text.contains("Subject: end to end\r\n\r\nload load"));
    // The trace has both hops, by node (the mail server writes its hop just after its 250).
    testkit::wait_until(
        "both hops in the trace",
        Duration::from_secs(10),
        Duration::from_millis(20),
        || async {
            a.get_trace(&id, None)
                .await
                .is_ok_and(|t| t["hops"].as_array().is_some_and(|h| h.len() >= 2))
        },
    )
    .await?;
    let trace = a.get_trace(&id, None).await?;
    let hops: Vec<(String, String)> = trace["hops"]
        .as_array()
        .map(|h| {
            h.iter()
                .map(|x| {
                    (
                        x["node"].as_str().unwrap_or("").to_string(),
                        x["action"].as_str().unwrap_or("").to_string(),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    assert!(
        hops.contains(&("mx-a".into(), "accepted".into())),
        "{trace}"
    );
    assert!(
        hops.contains(&("transfer-a".into(), "delivered".into())),
        "{trace}"
    );
    // The transfer log has the move with the header summary; the inbound queue is empty, the archive
    // holds the copy.
    let log = a
        .call(
            store_client::Method::GET,
            "/v1/transfer-log",
            &[],
            bytes::Bytes::new(),
        )
        .await?;
    let log = log.json().context("transfer log JSON")?;
    let entry = log["entries"]
        .as_array()
        .and_then(|e| e.iter().find(|x| x["message_id"] == id.as_str()))
        .with_context(|| format!("no transfer log entry: {log}"))?;
    assert_eq!(entry["summary"]["subject"], "end to end");
    assert_eq!(entry["from"], "internet");
    assert!(
        a.list_queue("archive", None)
            .await?
            .iter()
            .any(|i| i.message_id == id)
    );
    // The mailbox is mirrored too.
    let b = common::store(&sandbox, "store-b");
    let copy = b
        .list_mailbox("ann@acme.example", "INBOX", Some("store-a"))
        .await?;
    let mirrored = copy
        .messages
        .iter()
        .find(|m| m.message_id == id)
        .context("the message on the mirror")?;
    // Delivered in the archive's write, sharing the queued body: the mirror built its copy from
    // its own copy of the queue item, byte for byte.
    let mirrored = b
        .fetch("ann@acme.example", "INBOX", mirrored.uid, Some("store-a"))
        .await?;
    assert_eq!(mirrored, body);
    let delivered_hop = trace["hops"]
        .as_array()
        .and_then(|h| h.iter().find(|x| x["action"] == "delivered"))
        .with_context(|| format!("{trace}"))?;
    assert_eq!(
        delivered_hop["detail"],
        format!("ann@acme.example INBOX uid {} on store-a", msg.uid),
        "{trace}"
    );
    Ok(())
}

#[tokio::test]
async fn sigkill_of_the_mail_server_loses_no_message_that_got_a_250() -> anyhow::Result<()> {
    let mut sandbox = fabric_with_ann().await?;
    let addr = smtp_addr(&sandbox);
    let acked: Arc<Mutex<BTreeMap<String, String>>> = Arc::default();
    let mut senders = Vec::new();
    for s in 0..10 {
        let (addr, acked) = (addr.clone(), acked.clone());
        senders.push(tokio::spawn(async move {
            for i in 0..20 {
                let subject = format!("load {s}-{i}");
                if let Ok(reply) = send_one(&addr, &subject).await
                    && let Some(id) = queued_id(&reply)
                    && let Ok(mut map) = acked.lock()
                {
                    map.insert(id, subject);
                }
            }
        }));
    }
    // Kill the mail server once some messages are through, while the rest are in flight.
    let a = common::store(&sandbox, "store-a");
    testkit::wait_until(
        "40 messages accepted",
        Duration::from_secs(60),
        Duration::from_millis(10),
        || async { acked.lock().map(|m| m.len() >= 40).unwrap_or(false) },
    )
    .await?;
    sandbox.kill("mx-a", Signal::SIGKILL)?;
    for s in senders {
        tokio::time::timeout(Duration::from_secs(120), s).await??;
    }
    let acked = acked.lock().map(|m| m.clone()).unwrap_or_default();
    assert!(
        acked.len() >= 40 && acked.len() < 200,
        "{} of 200 acknowledged",
        acked.len()
    );
    // Every acknowledged message reaches the mailbox, exactly once.
    let want: BTreeSet<String> = acked.keys().cloned().collect();
    testkit::wait_until(
        "every acknowledged message in the INBOX",
        Duration::from_secs(30),
        Duration::from_millis(100),
        || async {
            a.list_mailbox("ann@acme.example", "INBOX", None)
                .await
                .map(|l| {
                    let have: BTreeSet<String> =
                        l.messages.iter().map(|m| m.message_id.clone()).collect();
                    want.is_subset(&have)
                })
                .unwrap_or(false)
        },
    )
    .await?;
    let listing = a.list_mailbox("ann@acme.example", "INBOX", None).await?;
    let mut seen = BTreeMap::new();
    for m in &listing.messages {
        *seen.entry(m.message_id.clone()).or_insert(0) += 1;
    }
    assert!(
        seen.values().all(|n| *n == 1),
        "a message was delivered twice"
    );
    // Nothing that was not acknowledged can be in the mailbox without a 250... except messages whose
    // 250 was lost with the server: those are stored, which is allowed (the sender will retry and the
    // fabric id differs). What is never allowed is an acknowledged one missing, checked above.
    let m = common::metrics(&sandbox, "store-a").await?;
    assert_eq!(
        common::metric_sum(&m, "fabric_store_unmirrored_writes_total", &[]),
        0.0
    );
    sandbox.start_node("mx-a").await?;
    let again = send_one(&addr, "after restart").await?;
    assert!(again.starts_with("250"));
    Ok(())
}

/// The home store dies while the transfer moves mail: its deliveries ride with the archive move (one
/// write, the body shared with the queued item), so a write cut off by SIGKILL either happened whole
/// or not at all. After the restart every message that got a 250 is in the INBOX exactly once, on
/// the store and on its mirror, and nothing is left on `inbound`.
#[tokio::test]
async fn sigkill_of_the_home_store_while_mail_moves_delivers_every_250_once() -> anyhow::Result<()>
{
    let mut sandbox = fabric_with_ann().await?;
    let addr = smtp_addr(&sandbox);
    let acked: Arc<Mutex<BTreeSet<String>>> = Arc::default();
    let mut senders = Vec::new();
    for s in 0..10 {
        let (addr, acked) = (addr.clone(), acked.clone());
        senders.push(tokio::spawn(async move {
            for i in 0..15 {
                if let Ok(reply) = send_one(&addr, &format!("moving {s}-{i}")).await
                    && let Some(id) = queued_id(&reply)
                    && let Ok(mut set) = acked.lock()
                {
                    set.insert(id);
                }
            }
        }));
    }
    // Kill once 40 are accepted and the transfer has items in hand (leased: hidden until later).
    let a = common::store(&sandbox, "store-a");
    testkit::wait_until(
        "40 messages accepted, some being moved",
        Duration::from_secs(60),
        Duration::from_millis(2),
        || async {
            acked.lock().map(|m| m.len() >= 40).unwrap_or(false)
                && a.list_queue("inbound", None)
                    .await
                    .is_ok_and(|q| q.iter().any(|i| i.leased))
        },
    )
    .await?;
    sandbox.kill("store-a", Signal::SIGKILL)?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    sandbox.start_node("store-a").await?;
    for s in senders {
        tokio::time::timeout(Duration::from_secs(120), s).await??;
    }
    let want = acked.lock().map(|m| m.clone()).unwrap_or_default();
    assert!(want.len() >= 40, "{} acknowledged", want.len());
    let b = common::store(&sandbox, "store-b");
    // An item whose move was cut off stays leased until its lease (60 s) runs out.
    testkit::wait_until(
        "every acknowledged message in the INBOX, nothing left on inbound",
        Duration::from_secs(150),
        Duration::from_millis(200),
        || async {
            let inbox = a.list_mailbox("ann@acme.example", "INBOX", None).await;
            let queued = a.list_queue("inbound", None).await;
            match (inbox, queued) {
                (Ok(l), Ok(q)) => {
                    let have: BTreeSet<String> =
                        l.messages.iter().map(|m| m.message_id.clone()).collect();
                    q.is_empty() && want.is_subset(&have)
                }
                _ => false,
            }
        },
    )
    .await?;
    let ids = |l: store_client::MailboxListing| {
        let mut seen: BTreeMap<String, usize> = BTreeMap::new();
        for m in l.messages {
            *seen.entry(m.message_id).or_default() += 1;
        }
        seen
    };
    let on_a = ids(a.list_mailbox("ann@acme.example", "INBOX", None).await?);
    assert!(on_a.values().all(|n| *n == 1), "delivered twice: {on_a:?}");
    testkit::wait_until(
        "the mirror's copy of the INBOX equal to the store's",
        Duration::from_secs(30),
        Duration::from_millis(100),
        || async {
            b.list_mailbox("ann@acme.example", "INBOX", Some("store-a"))
                .await
                .is_ok_and(|l| ids(l) == on_a)
        },
    )
    .await?;
    Ok(())
}

#[tokio::test]
async fn an_eicar_attachment_lands_in_quarantine_never_in_the_inbox() -> anyhow::Result<()> {
    let sandbox = fabric_with_ann().await?;
    let addr = smtp_addr(&sandbox);
    let (host, port) = addr.rsplit_once(':').context("address")?;
    let out = tokio::process::Command::new("python3")
        .arg("-c")
        .arg(
            r#"
import base64, os, smtplib
from email.message import EmailMessage
eicar = base64.b64decode("WDVPIVAlQEFQWzRcUFpYNTQoUF4pN0NDKTd9JEVJQ0FSLVNUQU5EQVJELUFOVElWSVJVUy1URVNULUZJTEUhJEgrSCo=")
m = EmailMessage()
m["From"] = "bob@remote.example"; m["To"] = "ann@acme.example"; m["Subject"] = "invoice"
m.set_content("see attachment")
m.add_attachment(eicar, maintype="application", subtype="octet-stream", filename="eicar.com")
s = smtplib.SMTP(os.environ["HOST"], int(os.environ["PORT"]), timeout=30)
s.send_message(m)
s.quit()
"#,
        )
        .env("HOST", host)
        .env("PORT", port)
        .kill_on_drop(true)
        .output()
        .await?;
    if !out.status.success() {
        bail!("python: {}", String::from_utf8_lossy(&out.stderr));
    }
    let a = common::store(&sandbox, "store-a");
    testkit::wait_until(
        "the infected message in Quarantine",
        Duration::from_secs(10),
        Duration::from_millis(50),
        || async {
            a.list_mailbox("ann@acme.example", "Quarantine", None)
                .await
                .is_ok_and(|l| l.messages.len() == 1)
        },
    )
    .await?;
    let inbox = a.list_mailbox("ann@acme.example", "INBOX", None).await;
    assert!(
        inbox.map(|l| l.messages.is_empty()).unwrap_or(true),
        "an infected message reached the INBOX"
    );
    let q = a
        .list_mailbox("ann@acme.example", "Quarantine", None)
        .await?;
    let id = q.messages[0].message_id.clone();
    testkit::wait_until(
        "the quarantine hop in the trace",
        Duration::from_secs(10),
        Duration::from_millis(20),
        || async {
            a.get_trace(&id, None)
                .await
                .is_ok_and(|t| t.to_string().contains("quarantined"))
        },
    )
    .await?;
    let m = common::metrics(&sandbox, "mx-a").await?;
    assert_eq!(
        common::metric_sum(&m, "fabric_inet_mx_infected_total", &[]),
        1.0
    );
    Ok(())
}
