//! The simulated outside world (`fabric-sink`), against real clients nobody here wrote: Python's
//! smtplib hands it mail as a remote MX would receive it, and Python's urllib talks to its HTTP API.
//! It keeps every message durably (a SIGKILL right after the 250 loses nothing), lists what it got,
//! answers like a troubled remote MX on demand (451 4.3.0 / 550 5.7.1, storing nothing), and is an
//! SMS gateway that refuses malformed requests with 400.

mod common;

use anyhow::{Context, bail};
use nix::sys::signal::Signal;
use serde_json::Value;
use testkit::Sandbox;
use topology::{Role, Topology};

const SINK: &str = "outside";

/// The mini topology's sink node alone (one process: the test is about the sink).
async fn sink_only() -> anyhow::Result<Sandbox> {
    let mut t = Topology::load(testkit::workspace_root().join("topology/mini.toml"))?;
    t.nodes.retain(|n| n.role() == Role::Sink);
    t.mirrors.clear();
    t.demo_users.clear();
    Sandbox::start_topology(t).await
}

/// Runs a Python script with SMTP_HOST/SMTP_PORT (the sink's SMTP) and API (its HTTP base URL);
/// returns what it printed as JSON.
async fn python(sandbox: &Sandbox, script: &str) -> anyhow::Result<Value> {
    let smtp = sandbox.url(SINK, "smtp");
    let (host, port) = smtp
        .trim_start_matches("http://")
        .rsplit_once(':')
        .context("address")?;
    let out = tokio::process::Command::new("python3")
        .arg("-c")
        .arg(script)
        .env("SMTP_HOST", host)
        .env("SMTP_PORT", port)
        .env("API", sandbox.url(SINK, "sms"))
        .kill_on_drop(true)
        .output()
        .await
        .context("python3 must be installed")?;
    if !out.status.success() {
        bail!("python failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(serde_json::from_slice(&out.stdout)?)
}

/// Helpers every script starts with: `http(method, path, body)` returns [status, parsed JSON or text].
const PRELUDE: &str = r#"
import json, os, smtplib, urllib.request, urllib.error
API = os.environ["API"]
def http(method, path, body=None, raw=False):
    data = body if isinstance(body, (bytes, type(None))) else json.dumps(body).encode()
    req = urllib.request.Request(API + path, data=data, method=method,
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            text = r.read()
            return [r.status, text.decode("latin-1") if raw else json.loads(text)]
    except urllib.error.HTTPError as e:
        return [e.code, json.loads(e.read())]
def rep(t):
    return [t[0], t[1].decode()]
def smtp():
    s = smtplib.SMTP(os.environ["SMTP_HOST"], int(os.environ["SMTP_PORT"]), timeout=30)
    s.ehlo("fabric.example")
    return s
"#;

#[tokio::test]
async fn smtp_sink_keeps_mail_lists_it_and_plays_a_troubled_remote_mx() -> anyhow::Result<()> {
    let sandbox = sink_only().await?;
    let script = format!(
        "{PRELUDE}{}",
        r#"
out = {}
body = b"From: ann@acme.example\r\nTo: carol@remote.example\r\nSubject: hi\r\n\r\nline one\r\n..dot line\r\n"
s = smtp()
out["mail"] = rep(s.mail("ann@acme.example"))
out["rcpt1"] = rep(s.rcpt("carol@remote.example"))
out["rcpt2"] = rep(s.rcpt("dave@other.example"))
out["data"] = rep(s.data(body))
out["list"] = http("GET", "/v1/smtp/messages")
mid = out["list"][1]["messages"][0]["id"]
out["raw"] = http("GET", "/v1/smtp/messages/" + mid, raw=True)
out["unknown"] = http("GET", "/v1/smtp/messages/" + "0" * 32)
out["bad_id"] = http("GET", "/v1/smtp/messages/..%2F..%2Fetc")
# A troubled remote MX: tempfail at RCPT.
out["set_tempfail"] = http("POST", "/v1/smtp/mode", {"mode": "tempfail"})
s.rset()
s.mail("ann@acme.example")
out["rcpt_tempfail"] = rep(s.rcpt("carol@remote.example"))
# Mode changed between RCPT and DATA: DATA is refused too.
http("POST", "/v1/smtp/mode", {"mode": "accept"})
s.rset()
s.mail("ann@acme.example")
s.rcpt("carol@remote.example")
http("POST", "/v1/smtp/mode", {"mode": "tempfail"})
# smtplib returns the reply to the end of DATA (it raises only when DATA itself is refused).
try:
    out["data_tempfail"] = rep(s.data(b"Subject: never\r\n\r\nx\r\n"))
except smtplib.SMTPDataError as e:
    out["data_tempfail"] = [e.smtp_code, e.smtp_error.decode()]
out["set_reject"] = http("POST", "/v1/smtp/mode", {"mode": "reject"})
s.rset()
s.mail("ann@acme.example")
out["rcpt_reject"] = rep(s.rcpt("carol@remote.example"))
out["bad_mode"] = http("POST", "/v1/smtp/mode", {"mode": "sometimes"})
out["bad_mode_json"] = http("POST", "/v1/smtp/mode", b"{mode")
out["mode"] = http("GET", "/v1/smtp/mode")
out["after"] = http("GET", "/v1/smtp/messages")
s.quit()
print(json.dumps(out))
"#
    );
    let r = python(&sandbox, &script).await?;
    let code = |k: &str| r[k][0].as_i64().unwrap_or(0);
    let text = |k: &str| r[k][1].as_str().unwrap_or("").to_string();
    assert_eq!(
        (code("mail"), code("rcpt1"), code("rcpt2")),
        (250, 250, 250)
    );
    assert_eq!(code("data"), 250, "{r}");
    assert!(text("data").starts_with("2.0.0"), "{r}");

    // Listed with its envelope; the raw bytes are the message smtplib was given (it dot-stuffs on
    // the wire, the sink unstuffs).
    assert_eq!(code("list"), 200);
    let list = r["list"][1]["messages"].as_array().context("messages")?;
    assert_eq!(list.len(), 1, "{r}");
    let m = &list[0];
    let sent = "From: ann@acme.example\r\nTo: carol@remote.example\r\nSubject: hi\r\n\r\nline one\r\n..dot line\r\n";
    assert_eq!(m["mail_from"], "ann@acme.example");
    assert_eq!(
        m["rcpt_to"],
        serde_json::json!(["carol@remote.example", "dave@other.example"])
    );
    assert_eq!(m["size"].as_u64(), Some(sent.len() as u64));
    assert!(m["time"].as_str().is_some_and(|t| t.ends_with('Z')), "{m}");
    assert!(
        text("data").contains(m["id"].as_str().unwrap_or("?")),
        "the 250 names the stored id: {r}"
    );
    assert_eq!((code("raw"), text("raw")), (200, sent.to_string()));
    assert_eq!(code("unknown"), 404);
    assert_eq!(r["bad_id"][1]["error"], "bad_request", "{r}");

    // Troubled remote MX: 451 4.3.0 at RCPT and at DATA, 550 5.7.1 when rejecting; nothing stored.
    assert_eq!(code("set_tempfail"), 200);
    assert_eq!(code("rcpt_tempfail"), 451);
    assert!(text("rcpt_tempfail").starts_with("4.3.0"), "{r}");
    assert_eq!(r["data_tempfail"][0], 451, "{r}");
    assert!(
        r["data_tempfail"][1]
            .as_str()
            .is_some_and(|t| t.starts_with("4.3.0")),
        "{r}"
    );
    assert_eq!(code("rcpt_reject"), 550);
    assert!(text("rcpt_reject").starts_with("5.7.1"), "{r}");
    assert_eq!(code("bad_mode"), 400);
    assert_eq!(code("bad_mode_json"), 400);
    assert_eq!(r["bad_mode"][1]["error"], "bad_request");
    assert_eq!(
        r["mode"][1]["mode"], "reject",
        "a bad request changes nothing"
    );
    assert_eq!(
        r["after"][1]["messages"].as_array().map(Vec::len),
        Some(1),
        "refused mail is not stored: {r}"
    );

    let metrics = common::metrics(&sandbox, SINK).await?;
    let sum = |name: &str, labels: &[(&str, &str)]| common::metric_sum(&metrics, name, labels);
    assert_eq!(sum("fabric_sink_smtp_stored_total", &[]), 1.0);
    assert_eq!(
        sum(
            "fabric_sink_smtp_refused_total",
            &[("mode", "tempfail"), ("stage", "rcpt")]
        ),
        1.0
    );
    assert_eq!(
        sum(
            "fabric_sink_smtp_refused_total",
            &[("mode", "tempfail"), ("stage", "data")]
        ),
        1.0
    );
    assert_eq!(
        sum("fabric_sink_smtp_refused_total", &[("mode", "reject")]),
        1.0
    );
    assert_eq!(
        sum(
            "fabric_sink_bad_requests_total",
            &[("endpoint", "smtp_mode")]
        ),
        2.0
    );
    Ok(())
}

#[tokio::test]
async fn sms_gateway_stores_lists_and_refuses_bad_requests() -> anyhow::Result<()> {
    let sandbox = sink_only().await?;
    let script = format!(
        "{PRELUDE}{}",
        r#"
out = {}
out["ok"] = http("POST", "/v1/sms", {"to": "+15550100", "text": "New mail from bob: hello"})
out["bad_json"] = http("POST", "/v1/sms", b'{"to": "+15550100", "text": ')
out["missing"] = http("POST", "/v1/sms", {"to": "+15550100"})
out["not_a_number"] = http("POST", "/v1/sms", {"to": "call me", "text": "x"})
out["empty_text"] = http("POST", "/v1/sms", {"to": "+15550100", "text": ""})
out["list"] = http("GET", "/v1/sms")
print(json.dumps(out))
"#
    );
    let r = python(&sandbox, &script).await?;
    assert_eq!(r["ok"][0], 201, "{r}");
    for k in ["bad_json", "missing", "not_a_number", "empty_text"] {
        assert_eq!(r[k][0], 400, "{k}: {r}");
        assert_eq!(r[k][1]["error"], "bad_request", "{k}: {r}");
        assert!(r[k][1]["message"].as_str().is_some_and(|m| !m.is_empty()));
    }
    let list = r["list"][1]["messages"].as_array().context("messages")?;
    assert_eq!(list.len(), 1, "only the good SMS is stored: {r}");
    assert_eq!(list[0]["to"], "+15550100");
    assert_eq!(list[0]["text"], "New mail from bob: hello");
    assert_eq!(list[0]["id"], r["ok"][1]["id"]);
    let metrics = common::metrics(&sandbox, SINK).await?;
    assert_eq!(
        common::metric_sum(
            &metrics,
            "fabric_sink_bad_requests_total",
            &[("endpoint", "sms")]
        ),
        4.0
    );
    assert_eq!(
        common::metric_sum(&metrics, "fabric_sink_sms_stored_total", &[]),
        1.0
    );
    Ok(())
}

#[tokio::test]
async fn sigkill_right_after_the_250_loses_nothing() -> anyhow::Result<()> {
    let mut sandbox = sink_only().await?;
    let script = format!(
        "{PRELUDE}{}",
        r#"
s = smtp()
s.mail("ann@acme.example")
s.rcpt("carol@remote.example")
code, text = s.data(b"Subject: durable\r\n\r\nkept across SIGKILL\r\n")
sms = http("POST", "/v1/sms", {"to": "+15550199", "text": "durable too"})
print(json.dumps({"data": [code, text.decode()], "sms": sms}))
"#
    );
    let r = python(&sandbox, &script).await?;
    assert_eq!(r["data"][0], 250, "{r}");
    assert_eq!(r["sms"][0], 201, "{r}");
    // No QUIT, no grace: the process dies the moment the 250 and the 201 are out.
    sandbox.kill(SINK, Signal::SIGKILL)?;
    sandbox.start_node(SINK).await?;
    let r = python(
        &sandbox,
        &format!(
            "{PRELUDE}{}",
            r#"
print(json.dumps({"mail": http("GET", "/v1/smtp/messages"), "sms": http("GET", "/v1/sms")}))
"#
        ),
    )
    .await?;
    let mail = r["mail"][1]["messages"].as_array().context("mail")?;
    assert_eq!(mail.len(), 1, "{r}");
    assert_eq!(
        mail[0]["size"].as_u64(),
        Some(b"Subject: durable\r\n\r\nkept across SIGKILL\r\n".len() as u64)
    );
    let sms = r["sms"][1]["messages"].as_array().context("sms")?;
    assert_eq!(sms.len(), 1, "{r}");
    assert_eq!(sms[0]["text"], "durable too");
    Ok(())
}
