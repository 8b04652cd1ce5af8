//! Manual failover and continuity notices (issue 5, item 4), with the real `fabric` command:
//! `fabric failover intranet-w1` is refused without the operator token and with a wrong one (the
//! original keeps serving); with the right one east's supervisor fences the healthy original and a
//! standby serves IMAP at its address (Python imaplib reads mail delivered before). West's users who
//! asked for notifications are told once (ann by SMS, bea by a notice mail; cid asked for none, dan
//! is at home in the east); `fabric failback` retires the standby and they are told again; the
//! original then starts and serves. A whole site fails over and back (`--restart`) on a fabric
//! started with `fabric up`.

mod common;

use std::process::Output;
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use fabric::process::proc_state;
use serde_json::{Value, json};
use store_client::{Method, StoreClient};
use testkit::{PortSlot, Sandbox};
use topology::{Role, Topology};

const PASSWORD: &str = "failover secret";
const ANN: &str = "ann@acme.example";
const ANN_SMS: &str = "+15550101";
const BEA_HOME: &str = "bea@home.example";
const SINK: &str = "outside";

fn addr(sandbox: &Sandbox, node: &str, service: &str) -> String {
    sandbox
        .url(node, service)
        .trim_start_matches("http://")
        .to_string()
}

/// Runs `fabric ARGS --topology FILE` with `token` in FABRIC_OPERATOR_TOKEN (or none at all).
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

async fn standbys(sandbox: &Sandbox) -> anyhow::Result<Vec<Value>> {
    let client = StoreClient::new(sandbox.url("supervisor-e", "supervisor"))
        .with_timeout(Duration::from_secs(10));
    let resp = client
        .raw(Method::GET, "/v1/standby", &[], Bytes::new())
        .await?;
    let v: Value = serde_json::from_slice(&resp.body)?;
    Ok(v["standbys"].as_array().cloned().unwrap_or_default())
}

async fn status(sandbox: &Sandbox, node: &str) -> anyhow::Result<Value> {
    let admin = StoreClient::new(sandbox.admin_url(node)).with_timeout(Duration::from_secs(5));
    let resp = admin.raw(Method::GET, "/status", &[], Bytes::new()).await?;
    Ok(serde_json::from_slice(&resp.body)?)
}

/// ann's INBOX subjects as intranet-w1's address serves them (IMAP, STARTTLS, the fabric's CA).
async fn imap_subjects(sandbox: &Sandbox) -> anyhow::Result<Value> {
    common::python(
        r#"
import imaplib, json, os, ssl
ctx = ssl.create_default_context(cafile=os.environ["CA"])
host, port = os.environ["TARGET"].rsplit(":", 1)
m = imaplib.IMAP4(host, int(port), timeout=30)
m.starttls(ssl_context=ctx)
m.login(os.environ["USER"], os.environ["PASSWORD"])
typ, data = m.select("INBOX", readonly=True)
assert typ == "OK", data
typ, data = m.uid("FETCH", "1:*", "(BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
assert typ == "OK", data
print(json.dumps([d[1].decode().strip() for d in data if isinstance(d, tuple)]))
m.logout()
"#,
        &[
            ("CA", sandbox.tls_dir().join("ca.pem").display().to_string()),
            ("USER", ANN.to_string()),
            ("PASSWORD", PASSWORD.to_string()),
            ("TARGET", addr(sandbox, "intranet-w1", "imap")),
        ],
    )
    .await
}

async fn sink_get(sandbox: &Sandbox, path: &str) -> anyhow::Result<store_client::RawResponse> {
    let client = StoreClient::new(sandbox.url(SINK, "sms")).with_timeout(Duration::from_secs(5));
    Ok(client.raw(Method::GET, path, &[], Bytes::new()).await?)
}

/// Every SMS at the gateway: (to, text).
async fn sms(sandbox: &Sandbox) -> Vec<(String, String)> {
    let Ok(resp) = sink_get(sandbox, "/v1/sms").await else {
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

/// Every mail at the SMTP sink: (recipients, raw text).
async fn mails(sandbox: &Sandbox) -> Vec<(Value, String)> {
    let Ok(resp) = sink_get(sandbox, "/v1/smtp/messages").await else {
        return Vec::new();
    };
    let list = resp
        .json()
        .and_then(|v| v["messages"].as_array().cloned())
        .unwrap_or_default();
    let mut out = Vec::new();
    for m in list {
        let id = m["id"].as_str().unwrap_or("");
        if let Ok(raw) = sink_get(sandbox, &format!("/v1/smtp/messages/{id}")).await {
            let raw = String::from_utf8_lossy(&raw.body).into_owned();
            out.push((m["rcpt_to"].clone(), raw));
        }
    }
    out
}

/// What the outside world holds about `event`: SMS (to, text) and notice mails (rcpts, raw).
async fn notices(sandbox: &Sandbox, event: &str) -> (Vec<(String, String)>, Vec<(Value, String)>) {
    let says = |t: &str| match event {
        "start" => t.contains("moved to the standby system"),
        _ => t.contains("back on its home system"),
    };
    // A mail says it in its subject (its body may mention what comes next).
    let subject = |raw: &str| {
        raw.lines()
            .find(|l| l.starts_with("Subject: "))
            .unwrap_or("")
            .to_string()
    };
    let sms = sms(sandbox).await.into_iter().filter(|(_, t)| says(t));
    let mails = mails(sandbox)
        .await
        .into_iter()
        .filter(|(_, raw)| says(&subject(raw)));
    (sms.collect(), mails.collect())
}

/// Waits for ann's SMS and bea's mail about `event`, then checks nobody else got one.
async fn expect_notices(sandbox: &Sandbox, event: &str) -> anyhow::Result<()> {
    testkit::wait_until(
        &format!("the {event} notices of ann (SMS) and bea (mail)"),
        Duration::from_secs(20),
        Duration::from_millis(100),
        || async {
            let (sms, mails) = notices(sandbox, event).await;
            !sms.is_empty() && !mails.is_empty()
        },
    )
    .await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (sms, mails) = notices(sandbox, event).await;
    assert_eq!(sms.len(), 1, "exactly one {event} SMS (ann's): {sms:?}");
    assert_eq!(sms[0].0, ANN_SMS, "{sms:?}");
    assert_eq!(
        mails.len(),
        1,
        "exactly one {event} mail (bea's): {mails:?}"
    );
    assert_eq!(mails[0].0, json!([BEA_HOME]));
    let raw = &mails[0].1;
    assert!(raw.contains(&format!("\r\nTo: <{BEA_HOME}>\r\n")), "{raw}");
    assert!(raw.contains("Auto-Submitted: auto-generated"), "{raw}");
    assert!(
        raw.contains("From: Mail Fabric <postmaster@acme.example>"),
        "{raw}"
    );
    let metrics = common::metrics(sandbox, "supervisor-e").await?;
    for channel in ["sms", "alternate"] {
        assert_eq!(
            common::metric_sum(
                &metrics,
                "fabric_supervisor_continuity_notices_total",
                &[("event", event), ("channel", channel)]
            ),
            1.0,
            "{event} {channel}"
        );
    }
    Ok(())
}

#[tokio::test]
async fn manual_failover_needs_the_token_tells_users_and_fails_back() -> anyhow::Result<()> {
    // The two-site fabric without its edge and relays: only the operator asks for standbys.
    let mut t = Topology::load(testkit::workspace_root().join("topology/two-site.toml"))?;
    t.nodes.retain(|n| {
        !matches!(
            n.role(),
            Role::Router | Role::Redirector | Role::Dns | Role::Relay
        )
    });
    t.acls.clear();
    let token = t
        .fabric
        .operator_token
        .clone()
        .context("the two-site fabric has an operator token")?;
    let mut sandbox = Sandbox::start_topology(t).await?;
    let hash = common::argon2_hash(PASSWORD)?;
    let store = common::store(&sandbox, "store-w1");
    store
        .put_user(
            ANN,
            &json!({"password_hash": hash, "notify": "sms", "sms": ANN_SMS}),
        )
        .await?;
    store
        .put_user(
            "bea@acme.example",
            &json!({"password_hash": common::HASH, "notify": "alternate", "alternate": BEA_HOME}),
        )
        .await?;
    store
        .put_user(
            "cid@acme.example",
            &json!({"password_hash": common::HASH, "notify": "none", "sms": "+15550103", "alternate": "cid@home.example"}),
        )
        .await?;
    // At home in the east: west's outage is none of dan's business.
    store
        .put_user(
            "dan@globex.example",
            &json!({"password_hash": common::HASH, "notify": "sms", "sms": "+15550104"}),
        )
        .await?;
    let sent = common::python(
        r#"
import json, os, smtplib
host, port = os.environ["TARGET"].rsplit(":", 1)
s = smtplib.SMTP(host, int(port), timeout=30)
refused = s.sendmail("carol@remote.example", ["ann@acme.example"],
    "From: carol@remote.example\r\nTo: ann@acme.example\r\nSubject: before the failover\r\n\r\nhello\r\n")
s.quit()
print(json.dumps(refused))
"#,
        &[("TARGET", addr(&sandbox, "inet-mx-w1", "smtp"))],
    )
    .await?;
    assert_eq!(sent, json!({}));
    testkit::wait_until(
        "the message in ann's INBOX",
        Duration::from_secs(30),
        Duration::from_millis(100),
        || async {
            store
                .list_mailbox(ANN, "INBOX", None)
                .await
                .is_ok_and(|l| l.messages.len() == 1)
        },
    )
    .await?;
    let original = sandbox.pid("intranet-w1").context("intranet-w1's pid")?;

    // No token, a wrong token: refused, nothing changes.
    let out = fabric(&sandbox, &["failover", "intranet-w1"], None).await?;
    assert!(!out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("401"), "{}", text(&out));
    let out = fabric(
        &sandbox,
        &["failover", "intranet-w1", "--token", "nope"],
        None,
    )
    .await?;
    assert!(!out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("403"), "{}", text(&out));
    assert!(proc_state(original).is_alive(), "the original still runs");
    assert!(standbys(&sandbox).await?.is_empty());

    // The right token (from the environment): the original is fenced, a standby serves its address.
    let out = fabric(&sandbox, &["failover", "intranet-w1"], Some(&token)).await?;
    assert!(out.status.success(), "{}", text(&out));
    let said = text(&out);
    assert!(said.contains("intranet-w1: serving"), "{said}");
    assert!(said.contains("ready in"), "{said}");
    assert!(!proc_state(original).is_alive(), "the original was fenced");
    let list = standbys(&sandbox).await?;
    assert_eq!(list.len(), 1, "{list:?}");
    assert_eq!(list[0]["requested_by"], "operator");
    assert_eq!(
        status(&sandbox, "intranet-w1").await?["standby_by"],
        "supervisor-e"
    );
    let read = imap_subjects(&sandbox).await?;
    assert_eq!(read, json!(["Subject: before the failover"]), "{read}");
    expect_notices(&sandbox, "start").await?;

    // Fail-back is refused without the token too.
    let out = fabric(&sandbox, &["failback", "intranet-w1"], None).await?;
    assert!(!out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("401"), "{}", text(&out));
    assert_eq!(standbys(&sandbox).await?.len(), 1);

    let out = fabric(
        &sandbox,
        &["failback", "intranet-w1", "--token", &token],
        None,
    )
    .await?;
    assert!(out.status.success(), "{}", text(&out));
    let said = text(&out);
    assert!(said.contains("retired"), "{said}");
    assert!(said.contains("fabric start intranet-w1"), "{said}");
    assert!(standbys(&sandbox).await?.is_empty());
    expect_notices(&sandbox, "end").await?;

    // Nobody else heard of it: not cid (asked for none), not dan (at home in the east).
    let everything = format!("{:?}{:?}", sms(&sandbox).await, mails(&sandbox).await);
    for who in ["+15550103", "cid@home.example", "+15550104"] {
        assert!(!everything.contains(who), "{who}: {everything}");
    }

    // The original starts and serves again.
    sandbox.start_node("intranet-w1").await?;
    let st = status(&sandbox, "intranet-w1").await?;
    assert!(st.get("standby_by").is_none(), "the original serves: {st}");
    let read = imap_subjects(&sandbox).await?;
    assert_eq!(read, json!(["Subject: before the failover"]), "{read}");
    Ok(())
}

/// The nodes of a `fabric up` fabric (and their supervisors' standbys) die with the test.
struct Up {
    data: tempfile::TempDir,
}

impl Up {
    fn fabric(&self, args: &[&str]) -> anyhow::Result<Output> {
        Ok(
            std::process::Command::new(testkit::bin_dir().join("fabric"))
                .args(args)
                .env("FABRIC_DATA_DIR", self.data.path().join("var"))
                .env_remove("FABRIC_OPERATOR_TOKEN")
                .env_remove("FABRIC_TOPOLOGY")
                .output()?,
        )
    }

    /// The state of each node as `fabric status --json` reports it.
    fn states(&self) -> anyhow::Result<std::collections::BTreeMap<String, String>> {
        let out = self.fabric(&["status", "--json"])?;
        let v: Value = serde_json::from_slice(&out.stdout).with_context(|| text(&out))?;
        Ok(v["nodes"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|n| {
                (
                    n["name"].as_str().unwrap_or("?").to_string(),
                    n["state"].as_str().unwrap_or("?").to_string(),
                )
            })
            .collect())
    }
}

impl Drop for Up {
    fn drop(&mut self) {
        let Ok(text) = std::fs::read_to_string(self.data.path().join("var/fabric.json")) else {
            return;
        };
        let state: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        for pid in state["nodes"]
            .as_object()
            .into_iter()
            .flat_map(|m| m.values())
            .filter_map(|r| r["pid"].as_u64())
        {
            if proc_state(pid as u32).is_alive()
                && let Ok(raw) = i32::try_from(pid)
            {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(raw),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
    }
}

#[tokio::test]
async fn a_whole_site_fails_over_and_back_with_restart() -> anyhow::Result<()> {
    let slot = PortSlot::claim()?;
    let up = Up {
        data: tempfile::Builder::new()
            .prefix("fabric-failover-")
            .tempdir()?,
    };
    let mut t = Topology::load(testkit::workspace_root().join("topology/two-site.toml"))?;
    t.nodes.retain(|n| {
        !matches!(
            n.role(),
            Role::Router | Role::Redirector | Role::Dns | Role::Relay
        )
    });
    t.acls.clear();
    t.offset_ports(slot.offset()).map_err(anyhow::Error::msg)?;
    let file = up.data.path().join("topology.toml");
    std::fs::write(&file, t.to_toml()?)?;
    let token = t.fabric.operator_token.clone().context("operator token")?;
    let west: Vec<String> = t
        .mail_servers("west")
        .iter()
        .map(|n| n.name.clone())
        .collect();
    assert_eq!(west.len(), 4);

    let out = up.fabric(&["up", &file.display().to_string(), "--detach"])?;
    assert!(out.status.success(), "{}", text(&out));

    // The topology comes from the fabric's state file; the token from --token.
    let out = up.fabric(&["failover", "--site", "west", "--token", &token])?;
    assert!(out.status.success(), "{}", text(&out));
    let said = text(&out);
    for node in &west {
        assert!(said.contains(&format!("{node}: serving")), "{said}");
    }
    let states = up.states()?;
    for node in &west {
        assert_eq!(
            states.get(node).map(String::as_str),
            Some("standby"),
            "{states:?}"
        );
    }

    let out = up.fabric(&["failback", "--site", "west", "--token", &token, "--restart"])?;
    assert!(out.status.success(), "{}", text(&out));
    let said = text(&out);
    for node in &west {
        assert!(
            said.contains(&format!("{node}: supervisor-e retired its standby")),
            "{said}"
        );
    }
    let states = up.states()?;
    for node in &west {
        assert_eq!(
            states.get(node).map(String::as_str),
            Some("ready"),
            "{states:?}"
        );
    }
    let supervisor = t
        .node("supervisor-e")
        .and_then(|n| n.service_addr("supervisor"))
        .context("supervisor-e's address")?;
    let list = StoreClient::new(format!("http://{supervisor}"))
        .with_timeout(Duration::from_secs(10))
        .raw(Method::GET, "/v1/standby", &[], Bytes::new())
        .await?
        .json()
        .unwrap_or(Value::Null);
    assert_eq!(list["standbys"], json!([]), "{list}");
    let out = up.fabric(&["down"])?;
    assert!(out.status.success(), "{}", text(&out));
    Ok(())
}
