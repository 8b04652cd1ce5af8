//! Helpers of the outage tests (`continuity`, `site_outage`): remote senders through the fabric's
//! DNS, a mailbox read over IMAP and from its store, the continuity notices at the SMS gateway.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::process::Stdio;
use std::time::Duration;

use anyhow::bail;
use bytes::Bytes;
use serde_json::Value;
use store_client::{Method, StoreClient};
use testkit::Sandbox;

use crate::common;

/// Accepted sends: (subject, when its send started, when its 250 came).
pub type Sends =
    std::sync::Arc<tokio::sync::Mutex<Vec<(String, std::time::Instant, std::time::Instant)>>>;

/// Remote senders to one mailbox for the whole of an outage: each sends `load S-N` every 100 ms
/// through the fabric's DNS and records its 250s.
pub struct SteadyLoad {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    senders: Vec<tokio::task::JoinHandle<u64>>,
}

impl SteadyLoad {
    pub fn start(
        topo: &std::path::Path,
        to: &'static str,
        senders: usize,
        accepted: &Sends,
    ) -> SteadyLoad {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let senders = (0..senders)
            .map(|s| {
                let (stop, accepted, topo) = (stop.clone(), accepted.clone(), topo.to_path_buf());
                tokio::spawn(async move {
                    let (mut n, mut failed) = (0u64, 0u64);
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        let subject = format!("load {s}-{n}");
                        let started = std::time::Instant::now();
                        match fabric_send(&topo, to, &subject).await {
                            Ok(_) => accepted.lock().await.push((
                                subject,
                                started,
                                std::time::Instant::now(),
                            )),
                            Err(_) => failed += 1,
                        }
                        n += 1;
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                    failed
                })
            })
            .collect();
        SteadyLoad { stop, senders }
    }

    /// Stops the senders; the sends they had refused.
    pub async fn stop(self) -> anyhow::Result<u64> {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let mut failed = 0;
        for s in self.senders {
            failed += s.await?;
        }
        Ok(failed)
    }
}

/// One message from a remote sender to `to` through the fabric's DNS; the fabric id on a 250.
pub async fn fabric_send(
    topology: &std::path::Path,
    to: &str,
    subject: &str,
) -> anyhow::Result<String> {
    let out = tokio::process::Command::new(testkit::bin_dir().join("fabric"))
        .arg("send")
        .arg("--topology")
        .arg(topology)
        .args(["--from", "carol@remote.example", "--to", to])
        .args(["--subject", subject])
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output()
        .await?;
    if !out.status.success() {
        bail!("{subject}: {}", String::from_utf8_lossy(&out.stderr));
    }
    let line = String::from_utf8_lossy(&out.stdout).trim().to_string();
    Ok(line.split('\t').next().unwrap_or("").to_string())
}

/// What an IMAP session does after SELECT INBOX (read-only unless it changes something).
pub enum ImapAct<'a> {
    /// Lists (subject, flags) of every message.
    Read,
    /// Adds a flag to the messages with this subject, then lists.
    Flag(&'a str, &'a str),
    /// Marks the messages with this subject \Deleted and expunges them, then lists.
    Expunge(&'a str),
}

/// Subject and flags of every message of `user`'s INBOX as the IMAP server at `addr` shows them
/// (Python's imaplib, STARTTLS with the fabric's CA), after doing `act`. Also the UIDVALIDITY.
pub async fn imap(
    sandbox: &Sandbox,
    addr: &str,
    check_host: bool,
    (user, password): (&str, &str),
    act: ImapAct<'_>,
) -> anyhow::Result<(u64, Vec<(String, String)>)> {
    let (action, subject, flag) = match act {
        ImapAct::Read => ("read", "", ""),
        ImapAct::Flag(s, f) => ("flag", s, f),
        ImapAct::Expunge(s) => ("expunge", s, ""),
    };
    let v = common::python(
        r#"
import imaplib, json, os, re, ssl
ctx = ssl.create_default_context(cafile=os.environ["CA"])
# Through a router the certificate is still the fabric's, for the server behind it.
ctx.check_hostname = os.environ.get("CHECK_HOST") == "1"
host, port = os.environ["TARGET"].rsplit(":", 1)
m = imaplib.IMAP4(host, int(port), timeout=30)
m.starttls(ssl_context=ctx)
m.login(os.environ["USER"], os.environ["PASSWORD"])
action = os.environ["ACTION"]
typ, data = m.select("INBOX", readonly=(action == "read"))
assert typ == "OK", data
uidvalidity = int(m.untagged_responses.get("UIDVALIDITY", [b"0"])[-1])
def listing():
    typ, data = m.uid("FETCH", "1:*", "(FLAGS BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
    assert typ == "OK", data
    out = []
    for d in data:
        if isinstance(d, tuple):
            flags = re.search(rb"FLAGS \(([^)]*)\)", d[0]).group(1).decode()
            uid = int(re.search(rb"UID (\d+)", d[0]).group(1))
            out.append((uid, d[1].decode().strip().removeprefix("Subject: "), flags))
    return out
if action != "read":
    uids = [str(u) for (u, s, _) in listing() if s == os.environ["SUBJECT"]]
    assert uids, "no message with that subject"
    flag = os.environ["FLAG"] or "\\Deleted"
    typ, data = m.uid("STORE", ",".join(uids), "+FLAGS", "(" + flag + ")")
    assert typ == "OK", data
    if action == "expunge":
        typ, data = m.expunge()
        assert typ == "OK", data
out = [(s, f) for (_, s, f) in listing()] if int(m.select("INBOX", readonly=True)[1][0]) > 0 else []
m.logout()
print(json.dumps({"uidvalidity": uidvalidity, "messages": out}))
"#,
        &[
            ("CA", sandbox.tls_dir().join("ca.pem").display().to_string()),
            ("USER", user.to_string()),
            ("PASSWORD", password.to_string()),
            ("TARGET", addr.to_string()),
            ("CHECK_HOST", if check_host { "1" } else { "0" }.to_string()),
            ("ACTION", action.to_string()),
            ("SUBJECT", subject.to_string()),
            ("FLAG", flag.to_string()),
        ],
    )
    .await?;
    let uidvalidity = v["uidvalidity"].as_u64().unwrap_or(0);
    Ok((uidvalidity, serde_json::from_value(v["messages"].clone())?))
}

/// The subjects of `user`'s INBOX over IMAP at `addr`.
pub async fn imap_subjects(
    sandbox: &Sandbox,
    addr: &str,
    check_host: bool,
    login: (&str, &str),
) -> anyhow::Result<Vec<String>> {
    let (_, messages) = imap(sandbox, addr, check_host, login, ImapAct::Read).await?;
    Ok(messages.into_iter().map(|(s, _)| s).collect())
}

/// `ADDR:PORT` of a node's service.
pub fn addr(sandbox: &Sandbox, node: &str, service: &str) -> String {
    sandbox
        .url(node, service)
        .trim_start_matches("http://")
        .to_string()
}

pub async fn get_json(url: String, path: &str) -> anyhow::Result<Value> {
    let c = StoreClient::new(url).with_timeout(Duration::from_secs(5));
    let r = c.raw(Method::GET, path, &[], Bytes::new()).await?;
    Ok(serde_json::from_slice(&r.body)?)
}

/// How many continuity notices (start, end) the SMS gateway (the sink) got for `number`.
pub async fn continuity_sms(sandbox: &Sandbox, number: &str) -> anyhow::Result<(usize, usize)> {
    let v = get_json(sandbox.url("outside", "sms"), "/v1/sms").await?;
    let texts: Vec<String> = v["messages"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|m| m["to"] == number)
        .filter_map(|m| m["text"].as_str().map(str::to_string))
        .collect();
    let start = texts
        .iter()
        .filter(|t| t.contains("moved to the standby system"))
        .count();
    let end = texts
        .iter()
        .filter(|t| t.contains("back on its home system"))
        .count();
    Ok((start, end))
}

/// Every subject in `user`'s INBOX on `store`, counted.
pub async fn inbox_counts(
    sandbox: &Sandbox,
    store: &str,
    user: &str,
) -> anyhow::Result<BTreeMap<String, usize>> {
    let store = common::store(sandbox, store);
    let mut counts = BTreeMap::new();
    let listing = match store.list_mailbox(user, "INBOX", None).await {
        Ok(listing) => listing,
        // No mail yet: the folder is created by the first delivery.
        Err(e) if e.to_string().contains("404") => return Ok(counts),
        Err(e) => return Err(e.into()),
    };
    for m in listing.messages {
        let body = store.fetch(user, "INBOX", m.uid, None).await?;
        let text = String::from_utf8_lossy(&body).to_string();
        let subject = text
            .lines()
            .find_map(|l| l.strip_prefix("Subject: "))
            .unwrap_or("")
            .to_string();
        *counts.entry(subject).or_insert(0) += 1;
    }
    Ok(counts)
}

/// The standbys a supervisor runs, by node name.
pub async fn standbys(sandbox: &Sandbox, supervisor: &str) -> anyhow::Result<Vec<String>> {
    let v = get_json(sandbox.url(supervisor, "supervisor"), "/v1/standby").await?;
    Ok(v["standbys"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| s["node"].as_str().map(str::to_string))
        .collect())
}
