//! The default two-site fabric end to end: mail handed to EVERY Internet mail server (two per site) for
//! a customer of each site is read back, byte for byte, over IMAP and over POP3 from intranet servers of
//! both sites — with Python's smtplib, imaplib and poplib, clients nobody here wrote.

mod common;

use std::time::Duration;

use anyhow::Context;
use serde_json::{Value, json};
use testkit::Sandbox;

const PASSWORD: &str = "every mx secret";

fn addr(sandbox: &Sandbox, node: &str, service: &str) -> String {
    sandbox
        .url(node, service)
        .trim_start_matches("http://")
        .to_string()
}

#[tokio::test]
async fn mail_to_every_inet_mx_reads_back_the_same_bytes_over_imap_and_pop3() -> anyhow::Result<()>
{
    let sandbox = Sandbox::start("topology/two-site.toml").await?;
    let hash = common::argon2_hash(PASSWORD)?;
    let directory = common::store(&sandbox, "store-w1");
    // ann's domain is at home in the west, bob's in the east.
    for user in ["ann@acme.example", "bob@globex.example"] {
        directory
            .put_user(user, &json!({"password_hash": hash, "notify": "none"}))
            .await?;
    }
    let mxs = ["inet-mx-w1", "inet-mx-w2", "inet-mx-e1", "inet-mx-e2"];
    let targets: Vec<String> = mxs.iter().map(|m| addr(&sandbox, m, "smtp")).collect();
    let sent = common::python(
        r#"
import json, os, smtplib
out = {}
for mx, target in zip(os.environ["MXS"].split(","), os.environ["TARGETS"].split(",")):
    host, port = target.rsplit(":", 1)
    for rcpt in ["ann@acme.example", "bob@globex.example"]:
        msg = (f"From: carol@remote.example\r\nTo: {rcpt}\r\nSubject: via {mx}\r\n\r\n"
               f"handed to {mx}\r\n.a line that starts with a dot\r\n\r\nbytes: caf\xc3\xa9\r\n").encode("latin-1")
        s = smtplib.SMTP(host, int(port), timeout=30)
        refused = s.sendmail("carol@remote.example", [rcpt], msg, mail_options=["BODY=8BITMIME"])
        s.quit()
        assert not refused, refused
        out[f"{rcpt} {mx}"] = msg.decode("latin-1")
print(json.dumps(out))
"#,
        &[("MXS", mxs.join(",")), ("TARGETS", targets.join(","))],
    )
    .await?;
    let sent = sent.as_object().context("sent")?.clone();
    assert_eq!(sent.len(), 8);
    // Delivered to each mailbox's home store: ann's on store-w1, bob's on store-e1.
    for (user, store) in [
        ("ann@acme.example", "store-w1"),
        ("bob@globex.example", "store-e1"),
    ] {
        let s = common::store(&sandbox, store);
        testkit::wait_until(
            &format!("4 messages in {user}'s INBOX on {store}"),
            Duration::from_secs(30),
            Duration::from_millis(100),
            || async {
                s.list_mailbox(user, "INBOX", None)
                    .await
                    .map(|l| l.messages.len() == 4)
                    .unwrap_or(false)
            },
        )
        .await?;
    }
    let read = common::python(
        r#"
import imaplib, json, os, poplib, ssl
ctx = ssl.create_default_context(cafile=os.environ["CA"])
out = {}
for user, imap, pop in [("ann@acme.example", os.environ["IMAP_E"], os.environ["POP_E"]),
                        ("bob@globex.example", os.environ["IMAP_W"], os.environ["POP_W"])]:
    host, port = imap.rsplit(":", 1)
    m = imaplib.IMAP4(host, int(port))
    m.starttls(ssl_context=ctx)
    m.login(user, os.environ["PASSWORD"])
    typ, data = m.select("INBOX", readonly=True)
    assert typ == "OK", data
    typ, data = m.uid("FETCH", "1:*", "(BODY.PEEK[])")
    assert typ == "OK", data
    out[user + " imap"] = [d[1].decode("latin-1") for d in data if isinstance(d, tuple)]
    m.logout()
    host, port = pop.rsplit(":", 1)
    p = poplib.POP3(host, int(port), timeout=30)
    p.stls(context=ctx)
    p.user(user); p.pass_(os.environ["PASSWORD"])
    count, _ = p.stat()
    msgs = []
    for i in range(1, count + 1):
        _, lines, _ = p.retr(i)
        msgs.append(b"".join(l + b"\r\n" for l in lines).decode("latin-1"))
    out[user + " pop3"] = msgs
    p.quit()
print(json.dumps(out))
"#,
        &[
            ("CA", sandbox.tls_dir().join("ca.pem").display().to_string()),
            ("PASSWORD", PASSWORD.to_string()),
            // Each customer reads from an intranet server of the OTHER site too.
            ("IMAP_E", addr(&sandbox, "intranet-e2", "imap")),
            ("POP_E", addr(&sandbox, "intranet-e1", "pop3")),
            ("IMAP_W", addr(&sandbox, "intranet-w2", "imap")),
            ("POP_W", addr(&sandbox, "intranet-w1", "pop3")),
        ],
    )
    .await?;
    for user in ["ann@acme.example", "bob@globex.example"] {
        for proto in ["imap", "pop3"] {
            let got: Vec<&str> = read[format!("{user} {proto}")]
                .as_array()
                .with_context(|| format!("{user} {proto}"))?
                .iter()
                .filter_map(Value::as_str)
                .collect();
            assert_eq!(got.len(), 4, "{user} over {proto}: {got:?}");
            for mx in mxs {
                let msg = sent[&format!("{user} {mx}")]
                    .as_str()
                    .context("sent message")?;
                let matching: Vec<&&str> = got.iter().filter(|m| m.ends_with(msg)).collect();
                assert_eq!(
                    matching.len(),
                    1,
                    "{user} over {proto}: the message handed to {mx} exactly once, same bytes"
                );
                assert!(
                    matching[0].starts_with("Received: from "),
                    "only the fabric's Received header is prepended: {:?}",
                    matching[0]
                );
                assert!(
                    matching[0].contains(&format!("by {mx}.")),
                    "the Received header names {mx}: {:?}",
                    matching[0]
                );
            }
        }
    }
    Ok(())
}
