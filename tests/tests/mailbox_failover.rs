//! Partial failover (issue 5, item 4): one mailbox moves, nothing else does. On the two-site fabric
//! alice and bob (same domain, at home in the west) get mail; `fabric failover --mailbox alice` is
//! refused without the operator token and with a wrong one; with it, alice's new mail goes to the
//! east's first store while bob's stays in the west; alice reads everything (from before and during)
//! over IMAP with the same login at the same address, flags one message and expunges another;
//! `fabric failback --mailbox alice` brings her home: every message exactly once, the flag and the
//! expunge kept, the UIDVALIDITY unchanged; she was told at the start and at the end (SMS), bob never.

mod common;

use std::collections::BTreeMap;
use std::process::Output;
use std::time::Duration;

use anyhow::Context;
use serde_json::{Value, json};
use store_client::{Method, StoreClient};
use testkit::Sandbox;
use topology::{Role, Topology};

const PASSWORD: &str = "mailbox secret";
const ALICE: &str = "alice@acme.example";
const BOB: &str = "bob@acme.example";
const ALICE_SMS: &str = "+15550111";
const BOB_SMS: &str = "+15550112";

fn addr(sandbox: &Sandbox, node: &str, service: &str) -> String {
    sandbox
        .url(node, service)
        .trim_start_matches("http://")
        .to_string()
}

async fn fabric(sandbox: &Sandbox, args: &[&str], token: Option<&str>) -> anyhow::Result<Output> {
    let mut cmd = tokio::process::Command::new(testkit::bin_dir().join("fabric"));
    cmd.args(args)
        .arg("--topology")
        .arg(sandbox.topology_file())
        .env("FABRIC_DATA_DIR", sandbox.data_dir("fabric-cli"))
        .env_remove("FABRIC_OPERATOR_TOKEN")
        .kill_on_drop(true);
    if let Some(token) = token {
        cmd.env("FABRIC_OPERATOR_TOKEN", token);
    }
    cmd.output().await.context("running fabric")
}

fn text(out: &Output) -> String {
    format!(
        "exit {:?}\nstdout: {}\nstderr: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Sends one message from the Internet to `to` through inet-mx-w1.
async fn send(sandbox: &Sandbox, to: &str, subject: &str) -> anyhow::Result<()> {
    let refused = common::python(
        r#"
import json, os, smtplib
host, port = os.environ["TARGET"].rsplit(":", 1)
s = smtplib.SMTP(host, int(port), timeout=30)
to, subject = os.environ["TO"], os.environ["SUBJECT"]
refused = s.sendmail("carol@remote.example", [to],
    f"From: carol@remote.example\r\nTo: {to}\r\nSubject: {subject}\r\n\r\nhello\r\n")
s.quit()
print(json.dumps(refused))
"#,
        &[
            ("TARGET", addr(sandbox, "inet-mx-w1", "smtp")),
            ("TO", to.to_string()),
            ("SUBJECT", subject.to_string()),
        ],
    )
    .await?;
    assert_eq!(refused, json!({}), "{to}: {subject}");
    Ok(())
}

/// alice's INBOX over IMAP at intranet-w1 (STARTTLS, the same login every time): UIDVALIDITY and
/// subject -> (UID, flags). With `change`, first flags "before 1" \Flagged and expunges "before 2".
async fn imap(sandbox: &Sandbox, change: bool) -> anyhow::Result<Value> {
    common::python(
        r#"
import imaplib, json, os, re, ssl
ctx = ssl.create_default_context(cafile=os.environ["CA"])
host, port = os.environ["TARGET"].rsplit(":", 1)
m = imaplib.IMAP4(host, int(port), timeout=30)
m.starttls(ssl_context=ctx)
m.login(os.environ["USER"], os.environ["PASSWORD"])
typ, data = m.select("INBOX")
assert typ == "OK", data
validity = int(m.response("UIDVALIDITY")[1][0])
def listing():
    typ, data = m.uid("FETCH", "1:*", "(FLAGS BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
    assert typ == "OK", data
    out = {}
    for d in data:
        if isinstance(d, tuple):
            head = d[0].decode()
            uid = int(re.search(r"UID (\d+)", head).group(1))
            flags = re.search(r"FLAGS \(([^)]*)\)", head).group(1).split()
            subject = d[1].decode().strip().removeprefix("Subject: ")
            assert subject not in out, f"{subject} twice"
            out[subject] = [uid, sorted(f for f in flags if f != "\\Recent")]
    return out
got = listing()
if os.environ["CHANGE"] == "1":
    typ, data = m.uid("STORE", str(got["before 1"][0]), "+FLAGS", "(\\Flagged)")
    assert typ == "OK", data
    typ, data = m.uid("STORE", str(got["before 2"][0]), "+FLAGS", "(\\Deleted)")
    assert typ == "OK", data
    typ, data = m.expunge()
    assert typ == "OK", data
    got = listing()
print(json.dumps({"uidvalidity": validity, "messages": got}))
m.logout()
"#,
        &[
            ("CA", sandbox.tls_dir().join("ca.pem").display().to_string()),
            ("USER", ALICE.to_string()),
            ("PASSWORD", PASSWORD.to_string()),
            ("TARGET", addr(sandbox, "intranet-w1", "imap")),
            ("CHANGE", if change { "1" } else { "0" }.to_string()),
        ],
    )
    .await
}

/// Message ids of a user's INBOX on one store's own data (empty when it has no INBOX).
async fn inbox(sandbox: &Sandbox, store: &str, user: &str) -> anyhow::Result<Vec<String>> {
    match common::store(sandbox, store)
        .list_mailbox(user, "INBOX", None)
        .await
    {
        Ok(l) => Ok(l.messages.into_iter().map(|m| m.message_id).collect()),
        Err(e) if e.status() == Some(store_client::StatusCode::NOT_FOUND) => Ok(Vec::new()),
        Err(e) => Err(e.into()),
    }
}

async fn wait_count(sandbox: &Sandbox, store: &str, user: &str, n: usize) -> anyhow::Result<()> {
    testkit::wait_until(
        &format!("{n} messages in {user}'s INBOX on {store}"),
        Duration::from_secs(30),
        Duration::from_millis(100),
        || async {
            inbox(sandbox, store, user)
                .await
                .is_ok_and(|v| v.len() == n)
        },
    )
    .await
}

/// Every SMS the gateway received: (to, text).
async fn sms(sandbox: &Sandbox) -> Vec<(String, String)> {
    let client =
        StoreClient::new(sandbox.url("outside", "sms")).with_timeout(Duration::from_secs(5));
    let Ok(resp) = client
        .raw(Method::GET, "/v1/sms", &[], bytes::Bytes::new())
        .await
    else {
        return Vec::new();
    };
    resp.json()
        .and_then(|v| v["messages"].as_array().cloned())
        .unwrap_or_default()
        .iter()
        .map(|m| {
            (
                m["to"].as_str().unwrap_or("").to_string(),
                m["text"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect()
}

async fn expect_sms(sandbox: &Sandbox, says: &str) -> anyhow::Result<()> {
    testkit::wait_until(
        &format!("alice's SMS saying {says:?}"),
        Duration::from_secs(20),
        Duration::from_millis(100),
        || async {
            sms(sandbox)
                .await
                .iter()
                .any(|(to, t)| to == ALICE_SMS && t.contains(says))
        },
    )
    .await
}

#[tokio::test]
async fn one_mailbox_fails_over_and_back_and_nothing_else_moves() -> anyhow::Result<()> {
    let mut t = Topology::load(testkit::workspace_root().join("topology/two-site.toml"))?;
    t.nodes.retain(|n| {
        !matches!(
            n.role(),
            Role::Router | Role::Redirector | Role::Dns | Role::Relay
        )
    });
    t.acls.clear();
    let token = t.fabric.operator_token.clone().context("operator token")?;
    let sandbox = Sandbox::start_topology(t).await?;
    let directory = common::store(&sandbox, "store-w1");
    let hash = common::argon2_hash(PASSWORD)?;
    directory
        .put_user(
            ALICE,
            &json!({"password_hash": hash, "notify": "sms", "sms": ALICE_SMS}),
        )
        .await?;
    directory
        .put_user(
            BOB,
            &json!({"password_hash": common::HASH, "notify": "sms", "sms": BOB_SMS}),
        )
        .await?;

    // Before: two for alice, one for bob, all on the west's first store.
    send(&sandbox, ALICE, "before 1").await?;
    send(&sandbox, ALICE, "before 2").await?;
    send(&sandbox, BOB, "bob before").await?;
    wait_count(&sandbox, "store-w1", ALICE, 2).await?;
    wait_count(&sandbox, "store-w1", BOB, 1).await?;
    let before = imap(&sandbox, false).await?;
    let validity = before["uidvalidity"].clone();

    // Refused without the token and with a wrong one; nothing moved.
    let out = fabric(&sandbox, &["failover", "--mailbox", ALICE], None).await?;
    assert!(!out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("operator token"), "{}", text(&out));
    let out = fabric(
        &sandbox,
        &["failover", "--mailbox", ALICE, "--token", "nope"],
        None,
    )
    .await?;
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("wrong operator token"),
        "{}",
        text(&out)
    );
    assert!(directory.homes(None).await?.is_empty());

    // With the token: alice moves to the east's first store.
    let out = fabric(&sandbox, &["failover", "--mailbox", ALICE], Some(&token)).await?;
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("served by store-e1 now (epoch 1)"),
        "{}",
        text(&out)
    );
    let homes = directory.homes(None).await?;
    assert_eq!(homes.len(), 1, "{homes:?}");
    assert_eq!((homes[0].store.as_str(), homes[0].epoch), ("store-e1", 1));
    expect_sms(&sandbox, "mailbox moved to the standby system").await?;

    // During: alice's mail lands in the east, bob's stays in the west.
    send(&sandbox, ALICE, "during 1").await?;
    send(&sandbox, BOB, "bob during").await?;
    wait_count(&sandbox, "store-e1", ALICE, 3).await?;
    wait_count(&sandbox, "store-w1", BOB, 2).await?;
    assert_eq!(inbox(&sandbox, "store-w1", ALICE).await?.len(), 2);
    assert!(inbox(&sandbox, "store-e1", BOB).await?.is_empty());

    // alice reads everything with the same login, same UIDs and UIDVALIDITY; flags and expunges.
    let during = imap(&sandbox, true).await?;
    assert_eq!(during["uidvalidity"], validity, "{during}");
    let msgs = &during["messages"];
    assert_eq!(msgs["before 1"][0], before["messages"]["before 1"][0]);
    assert_eq!(msgs["before 1"][1], json!(["\\Flagged"]), "{during}");
    assert!(msgs.get("before 2").is_none(), "{during}");
    assert!(msgs.get("during 1").is_some(), "{during}");

    // Fail back: refused without the token, then home.
    let out = fabric(&sandbox, &["failback", "--mailbox", ALICE], None).await?;
    assert!(!out.status.success(), "{}", text(&out));
    let out = fabric(&sandbox, &["failback", "--mailbox", ALICE], Some(&token)).await?;
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("back home on store-w1 (epoch 2)"),
        "{}",
        text(&out)
    );
    expect_sms(&sandbox, "mailbox is back on its home system").await?;

    // Home holds every message exactly once; the flag and the expunge survived.
    let home = common::store(&sandbox, "store-w1")
        .export_folder(ALICE, "INBOX", None)
        .await?;
    let mut ids: Vec<&str> = home
        .messages
        .iter()
        .map(|m| m.message_id.as_str())
        .collect();
    ids.sort_unstable();
    let n = ids.len();
    ids.dedup();
    assert_eq!((n, ids.len()), (2, 2), "{home:?}");
    assert_eq!(
        home.expunged.len(),
        1,
        "the expunge is a tombstone: {home:?}"
    );
    assert_eq!(home.uidvalidity.to_string(), validity.to_string());
    let after = imap(&sandbox, false).await?;
    assert_eq!(after["uidvalidity"], validity, "{after}");
    let msgs: BTreeMap<String, Value> = serde_json::from_value(after["messages"].clone())?;
    assert_eq!(
        msgs.keys().map(String::as_str).collect::<Vec<_>>(),
        vec!["before 1", "during 1"],
        "{after}"
    );
    assert_eq!(msgs["before 1"], during["messages"]["before 1"], "{after}");
    assert_eq!(msgs["during 1"], during["messages"]["during 1"], "{after}");

    // New mail goes home again; bob never moved and was never told anything.
    send(&sandbox, ALICE, "after").await?;
    wait_count(&sandbox, "store-w1", ALICE, 3).await?;
    assert_eq!(inbox(&sandbox, "store-w1", BOB).await?.len(), 2);
    // (Both also get new-mail SMS: notify = "sms" covers those too.)
    let texts = sms(&sandbox).await;
    let notices: Vec<&(String, String)> = texts
        .iter()
        .filter(|(_, t)| !t.starts_with("New mail from"))
        .collect();
    assert!(notices.iter().all(|(to, _)| to != BOB_SMS), "{texts:?}");
    assert_eq!(
        notices.iter().filter(|(to, _)| to == ALICE_SMS).count(),
        2,
        "one notice at the start, one at the end: {texts:?}"
    );
    let metrics = common::metrics(&sandbox, "store-e1").await?;
    assert!(
        common::metric_sum(&metrics, "fabric_store_mailbox_import_copied_total", &[]) >= 2.0,
        "the copy into store-e1 is counted"
    );
    Ok(())
}
