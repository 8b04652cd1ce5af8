//! Standby servers (issue 5, item 2): west's mail servers die (two SIGKILLed, one frozen with SIGSTOP);
//! east's supervisor, asked for the site, fences what still holds their ports and starts standbys with
//! the same names at the very same addresses, over the same stores. Customers read mail delivered before
//! the outage over IMAP (STARTTLS with the node's own certificate) at the failed servers' addresses, and
//! SMTP to the failed Internet mail server's address is accepted into the mailbox. A healthy server is
//! left alone unless an operator forces it with the token; starting an original hands its address back;
//! killing the supervisor kills its standbys.

mod common;

use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use fabric::process::{ProcState, proc_state};
use nix::sys::signal::Signal;
use serde_json::{Value, json};
use store_client::{Method, StoreClient};
use testkit::Sandbox;
use topology::{Role, Topology};

const PASSWORD: &str = "standby secret";
const ANN: &str = "ann@acme.example";

fn addr(sandbox: &Sandbox, node: &str, service: &str) -> String {
    sandbox
        .url(node, service)
        .trim_start_matches("http://")
        .to_string()
}

fn supervisor(sandbox: &Sandbox, node: &str) -> StoreClient {
    StoreClient::new(sandbox.url(node, "supervisor")).with_timeout(Duration::from_secs(90))
}

async fn call(
    client: &StoreClient,
    method: Method,
    path: &str,
    headers: &[(&str, String)],
    body: Value,
) -> anyhow::Result<(u16, Value)> {
    let body = if body.is_null() {
        Bytes::new()
    } else {
        Bytes::from(body.to_string())
    };
    let resp = client.raw(method, path, headers, body).await?;
    let json = serde_json::from_slice(&resp.body).unwrap_or(Value::Null);
    Ok((resp.status.as_u16(), json))
}

/// The state each node is reported in, by name.
fn states(answer: &Value) -> std::collections::BTreeMap<String, String> {
    answer["nodes"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|n| {
            (
                n["node"].as_str().unwrap_or("?").to_string(),
                n["state"].as_str().unwrap_or("?").to_string(),
            )
        })
        .collect()
}

async fn status(sandbox: &Sandbox, node: &str) -> anyhow::Result<Value> {
    let admin = StoreClient::new(sandbox.admin_url(node)).with_timeout(Duration::from_secs(5));
    let resp = admin.raw(Method::GET, "/status", &[], Bytes::new()).await?;
    Ok(serde_json::from_slice(&resp.body)?)
}

/// Logs in over IMAP (STARTTLS, verified against the fabric's CA) at each address and returns the
/// subjects in ann's INBOX as each server shows them.
async fn imap_subjects(sandbox: &Sandbox, servers: &[&str]) -> anyhow::Result<Value> {
    let targets: Vec<String> = servers.iter().map(|s| addr(sandbox, s, "imap")).collect();
    common::python(
        r#"
import imaplib, json, os, ssl
ctx = ssl.create_default_context(cafile=os.environ["CA"])
out = {}
for target in os.environ["TARGETS"].split(","):
    host, port = target.rsplit(":", 1)
    m = imaplib.IMAP4(host, int(port), timeout=30)
    m.starttls(ssl_context=ctx)
    m.login(os.environ["USER"], os.environ["PASSWORD"])
    typ, data = m.select("INBOX", readonly=True)
    assert typ == "OK", data
    typ, data = m.uid("FETCH", "1:*", "(BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
    assert typ == "OK", data
    out[target] = [d[1].decode().strip() for d in data if isinstance(d, tuple)]
    m.logout()
print(json.dumps(out))
"#,
        &[
            ("CA", sandbox.tls_dir().join("ca.pem").display().to_string()),
            ("USER", ANN.to_string()),
            ("PASSWORD", PASSWORD.to_string()),
            ("TARGETS", targets.join(",")),
        ],
    )
    .await
}

async fn smtp_to(sandbox: &Sandbox, mx: &str, subject: &str) -> anyhow::Result<Value> {
    common::python(
        r#"
import json, os, smtplib
host, port = os.environ["TARGET"].rsplit(":", 1)
s = smtplib.SMTP(host, int(port), timeout=30)
refused = s.sendmail("carol@remote.example", [os.environ["RCPT"]],
    f"From: carol@remote.example\r\nTo: {os.environ['RCPT']}\r\nSubject: {os.environ['SUBJECT']}\r\n\r\nhello\r\n")
s.quit()
print(json.dumps({"refused": refused}))
"#,
        &[
            ("TARGET", addr(sandbox, mx, "smtp")),
            ("RCPT", ANN.to_string()),
            ("SUBJECT", subject.to_string()),
        ],
    )
    .await
}

async fn wait_inbox(sandbox: &Sandbox, count: usize) -> anyhow::Result<()> {
    let store = common::store(sandbox, "store-w1");
    testkit::wait_until(
        &format!("{count} messages in ann's INBOX"),
        Duration::from_secs(30),
        Duration::from_millis(100),
        || async {
            store
                .list_mailbox(ANN, "INBOX", None)
                .await
                .map(|l| l.messages.len() == count)
                .unwrap_or(false)
        },
    )
    .await
}

fn gone(pid: u32) -> bool {
    !proc_state(pid).is_alive()
}

#[tokio::test]
async fn standbys_take_over_failed_mail_servers_at_their_addresses_and_hand_them_back()
-> anyhow::Result<()> {
    // The two-site fabric without its edge (routers, redirectors, DNS): the standbys are reached at
    // the mail servers' own addresses.
    let mut t = Topology::load(testkit::workspace_root().join("topology/two-site.toml"))?;
    t.nodes
        .retain(|n| !matches!(n.role(), Role::Router | Role::Redirector | Role::Dns));
    t.acls.clear();
    let mut sandbox = Sandbox::start_topology(t).await?;
    let mut pids: Vec<u32> = sandbox
        .topology()
        .nodes
        .iter()
        .filter_map(|n| sandbox.pid(&n.name))
        .collect();
    let hash = common::argon2_hash(PASSWORD)?;
    common::store(&sandbox, "store-w1")
        .put_user(ANN, &json!({"password_hash": hash, "notify": "none"}))
        .await?;
    let sent = smtp_to(&sandbox, "inet-mx-w1", "before the outage").await?;
    assert_eq!(sent["refused"], json!({}));
    wait_inbox(&sandbox, 1).await?;

    // West's mail servers fail: two die, one freezes (accepts TCP, never answers).
    let frozen = sandbox.pid("intranet-w2").context("intranet-w2's pid")?;
    sandbox.kill("intranet-w1", Signal::SIGKILL)?;
    sandbox.kill("inet-mx-w1", Signal::SIGKILL)?;
    sandbox.kill("intranet-w2", Signal::SIGSTOP)?;

    let east = supervisor(&sandbox, "supervisor-e");
    let ask = json!({"site": "west", "reason": "primary unreachable", "requested_by": "relay-e1"});
    // Two relays ask at once (one for the site, one for a single server): one standby per node.
    let one = json!({"node": "intranet-w1", "requested_by": "relay-e1"});
    let (site, single) = tokio::join!(
        call(&east, Method::POST, "/v1/standby", &[], ask.clone()),
        call(&east, Method::POST, "/v1/standby", &[], one),
    );
    let ((code, answer), (_, single)) = (site?, single?);
    assert_eq!(code, 200, "{answer}");
    let pid_of = |answer: &Value, node: &str| {
        answer["nodes"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|n| n["node"] == node)
            .and_then(|n| n["pid"].as_u64())
    };
    assert_eq!(
        states(&single).get("intranet-w1").map(String::as_str),
        Some("serving"),
        "{single}"
    );
    assert_eq!(
        pid_of(&single, "intranet-w1"),
        pid_of(&answer, "intranet-w1"),
        "{single} {answer}"
    );
    let by_node = states(&answer);
    // Should the frozen node be judged alive, say by what and what state the kernel has it in.
    let why = || {
        let log = std::fs::read_to_string(sandbox.log_path("supervisor-e")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().filter(|l| l.contains("intranet-w2")).collect();
        let stat = std::fs::read_to_string(format!("/proc/{frozen}/stat")).unwrap_or_default();
        format!(
            "{answer}\nintranet-w2 (pid {frozen}) /proc stat: {stat}\nsupervisor-e on it:\n{}",
            lines.join("\n")
        )
    };
    for node in ["intranet-w1", "intranet-w2", "inet-mx-w1"] {
        let state = by_node.get(node).map(String::as_str);
        assert_eq!(state, Some("serving"), "{node}: {}", why());
    }
    assert_eq!(
        by_node.get("inet-mx-w2").map(String::as_str),
        Some("alive"),
        "{answer}"
    );
    let healthy = sandbox.pid("inet-mx-w2").context("inet-mx-w2's pid")?;
    assert_eq!(
        proc_state(healthy),
        ProcState::Running,
        "the healthy inet-mx-w2 is not touched"
    );
    let w2 = answer["nodes"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|n| n["node"] == "intranet-w2")
        .context("intranet-w2 in the answer")?;
    assert!(w2["ready_ms"].as_u64().is_some(), "{w2}");
    assert_eq!(
        w2["fenced"],
        json!([frozen]),
        "the frozen server was fenced: {w2}"
    );
    assert!(
        gone(frozen),
        "the frozen intranet-w2 (pid {frozen}) is gone: {:?}",
        proc_state(frozen)
    );

    // Asking again (two relays at once) starts nothing new.
    let (again_a, again_b) = tokio::join!(
        call(&east, Method::POST, "/v1/standby", &[], ask.clone()),
        call(
            &east,
            Method::POST,
            "/v1/standby",
            &[],
            json!({"node": "intranet-w1"})
        ),
    );
    let (again_a, again_b) = (again_a?.1, again_b?.1);
    assert_eq!(states(&again_a), by_node, "{again_a}");
    assert_eq!(
        states(&again_b).get("intranet-w1").map(String::as_str),
        Some("serving")
    );
    let (_, list) = call(&east, Method::GET, "/v1/standby", &[], Value::Null).await?;
    let standbys = list["standbys"].as_array().context("standbys")?.clone();
    assert_eq!(standbys.len(), 3, "{list}");
    for s in &standbys {
        assert_eq!(s["requested_by"], "relay-e1", "{s}");
        assert_eq!(s["site"], "west", "{s}");
        pids.push(s["pid"].as_u64().context("pid")? as u32);
    }
    // Relays (like DNS servers and supervisors) get no standby: the other site's serve meanwhile.
    let (code, _) = call(
        &east,
        Method::POST,
        "/v1/standby",
        &[],
        json!({"node": "relay-w1"}),
    )
    .await?;
    assert_eq!(code, 400);
    // A store can have one, but one that answers is left alone.
    let (code, body) = call(
        &east,
        Method::POST,
        "/v1/standby",
        &[],
        json!({"node": "store-w1"}),
    )
    .await?;
    assert_eq!(code, 200);
    assert_eq!(body["nodes"][0]["state"], "alive", "{body}");

    // The standbys say what they are.
    let st = status(&sandbox, "intranet-w1").await?;
    assert_eq!(st["standby_by"], "supervisor-e", "{st}");
    let log = std::fs::read_to_string(
        sandbox
            .data_dir("supervisor-e")
            .join("standby-intranet-w1.log"),
    )?;
    assert!(log.contains("\"standby_by\":\"supervisor-e\""), "{log}");

    // Customers read the mail delivered before the outage at the failed servers' addresses.
    let read = imap_subjects(&sandbox, &["intranet-w1", "intranet-w2"]).await?;
    for server in ["intranet-w1", "intranet-w2"] {
        let subjects = &read[addr(&sandbox, server, "imap")];
        assert_eq!(subjects, &json!(["Subject: before the outage"]), "{read}");
    }
    // And mail sent to the failed Internet mail server's address is taken.
    let sent = smtp_to(&sandbox, "inet-mx-w1", "during the outage").await?;
    assert_eq!(sent["refused"], json!({}));
    wait_inbox(&sandbox, 2).await?;

    // Manual failover of a healthy server needs the operator's token.
    let force = json!({"node": "inet-mx-w2", "force": true, "requested_by": "operator"});
    let (code, body) = call(&east, Method::POST, "/v1/standby", &[], force.clone()).await?;
    assert_eq!(code, 401, "{body}");
    let wrong = [("authorization", "Bearer nope".to_string())];
    let (code, body) = call(&east, Method::POST, "/v1/standby", &wrong, force.clone()).await?;
    assert_eq!(code, 403, "{body}");
    let token = sandbox
        .topology()
        .fabric
        .operator_token
        .clone()
        .context("the two-site fabric has an operator token")?;
    let original = sandbox.pid("inet-mx-w2").context("inet-mx-w2's pid")?;
    let auth = [("authorization", format!("Bearer {token}"))];
    let (code, body) = call(&east, Method::POST, "/v1/standby", &auth, force).await?;
    assert_eq!(code, 200, "{body}");
    assert_eq!(
        states(&body).get("inet-mx-w2").map(String::as_str),
        Some("serving"),
        "{body}"
    );
    assert!(gone(original), "the forced-out original was fenced");

    let metrics = common::metrics(&sandbox, "supervisor-e").await?;
    assert_eq!(
        common::metric_sum(&metrics, "fabric_supervisor_standbys", &[]),
        4.0
    );
    assert_eq!(
        common::metric_sum(
            &metrics,
            "fabric_supervisor_invocations_total",
            &[("result", "started")]
        ),
        4.0
    );
    assert!(
        common::metric_sum(
            &metrics,
            "fabric_supervisor_invocations_total",
            &[("result", "alive")]
        ) >= 1.0
    );
    assert_eq!(
        common::metric_sum(&metrics, "fabric_supervisor_fenced_total", &[]),
        2.0
    );
    assert_eq!(
        common::metric_sum(
            &metrics,
            "fabric_supervisor_standby_ready_seconds_count",
            &[]
        ),
        4.0
    );
    assert!(
        metrics.contains("fabric_supervisor_standby_ready_seconds_bucket"),
        "{metrics}"
    );
    let st = status(&sandbox, "supervisor-e").await?;
    assert_eq!(
        st["counters"]["standbys"].as_array().map(Vec::len),
        Some(4),
        "{st}"
    );

    // Fail-back: starting the original retires the standby first.
    sandbox.start_node("intranet-w1").await?;
    let st = status(&sandbox, "intranet-w1").await?;
    assert!(
        st.get("standby_by").is_none(),
        "the original serves again: {st}"
    );
    assert_eq!(
        st["pid"].as_u64().map(|p| p as u32),
        sandbox.pid("intranet-w1")
    );
    pids.extend(sandbox.pid("intranet-w1"));
    let (_, list) = call(&east, Method::GET, "/v1/standby", &[], Value::Null).await?;
    assert!(
        !list["standbys"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|s| s["node"] == "intranet-w1"),
        "{list}"
    );
    let read = imap_subjects(&sandbox, &["intranet-w1"]).await?;
    assert_eq!(read.as_object().map(|o| o.len()), Some(1), "{read}");
    let metrics = common::metrics(&sandbox, "supervisor-e").await?;
    assert_eq!(
        common::metric_sum(&metrics, "fabric_supervisor_retired_total", &[]),
        1.0
    );
    let (code, _) = call(
        &east,
        Method::DELETE,
        "/v1/standby/intranet-w1",
        &auth,
        Value::Null,
    )
    .await?;
    assert_eq!(code, 404);

    // A standby that dies on its own is started again.
    let mx_standby = |list: &Value| {
        list["standbys"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|s| s["node"] == "inet-mx-w1")
            .and_then(|s| s["pid"].as_u64())
            .map(|p| p as u32)
    };
    let first = mx_standby(&list).context("inet-mx-w1's standby")?;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(first)?),
        Signal::SIGKILL,
    )?;
    testkit::wait_until(
        "inet-mx-w1's standby restarted",
        Duration::from_secs(10),
        Duration::from_millis(100),
        || async {
            let Ok((_, list)) = call(&east, Method::GET, "/v1/standby", &[], Value::Null).await
            else {
                return false;
            };
            mx_standby(&list).is_some_and(|p| p != first)
        },
    )
    .await?;
    testkit::wait_until(
        "the restarted standby serves SMTP",
        Duration::from_secs(10),
        Duration::from_millis(100),
        || async {
            smtp_to(&sandbox, "inet-mx-w1", "after the restart")
                .await
                .is_ok_and(|v| v["refused"] == json!({}))
        },
    )
    .await?;
    wait_inbox(&sandbox, 3).await?;
    let metrics = common::metrics(&sandbox, "supervisor-e").await?;
    assert_eq!(
        common::metric_sum(&metrics, "fabric_supervisor_restarts_total", &[]),
        1.0
    );
    let (_, list) = call(&east, Method::GET, "/v1/standby", &[], Value::Null).await?;

    // The supervisor dies: its standbys die with it.
    let left: Vec<u32> = list["standbys"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| s["pid"].as_u64().map(|p| p as u32))
        .collect();
    pids.extend(left.iter().copied());
    assert_eq!(left.len(), 3, "{list}");
    sandbox.kill("supervisor-e", Signal::SIGKILL)?;
    testkit::wait_until(
        "the standbys die with their supervisor",
        Duration::from_secs(5),
        Duration::from_millis(50),
        || async { left.iter().all(|p| gone(*p)) },
    )
    .await?;

    // Nothing outlives the sandbox.
    drop(sandbox);
    testkit::wait_until(
        "no process of the test survives",
        Duration::from_secs(5),
        Duration::from_millis(50),
        || async { pids.iter().all(|p| gone(*p)) },
    )
    .await?;
    Ok(())
}
