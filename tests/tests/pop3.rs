//! Reading mail over POP3 with Python's poplib (a client nobody here wrote): the same bytes the
//! sender's smtplib handed to the Internet mail server, then DELE and QUIT remove it for good.

mod common;

use std::time::Duration;

use anyhow::Context;
use serde_json::{Value, json};
use testkit::Sandbox;

#[tokio::test]
async fn poplib_reads_what_smtplib_sent_byte_for_byte() -> anyhow::Result<()> {
    let sandbox = Sandbox::start("topology/mini.toml").await?;
    let hash = common::argon2_hash("open sesame")?;
    common::store(&sandbox, "store-a")
        .put_user(
            "ann@acme.example",
            &json!({"password_hash": hash, "notify": "none"}),
        )
        .await?;
    let (smtp_host, smtp_port) = common::host_port(&sandbox.url("mx-a", "smtp"));
    let (pop_host, pop_port) = common::host_port(&sandbox.url("intranet-a", "pop3"));
    let env = [
        ("SMTP_HOST", smtp_host),
        ("SMTP_PORT", smtp_port),
        ("POP_HOST", pop_host),
        ("POP_PORT", pop_port),
        ("CA", sandbox.tls_dir().join("ca.pem").display().to_string()),
    ];
    let sent = common::python(
        r#"
import json, os, smtplib
msg = b"From: bob@remote.example\r\nTo: ann@acme.example\r\nSubject: over pop\r\n\r\nfirst line\r\n.starts with a dot\r\n\r\nlast line\r\n"
s = smtplib.SMTP(os.environ["SMTP_HOST"], int(os.environ["SMTP_PORT"]), timeout=30)
code, text = s.sendmail("bob@remote.example", ["ann@acme.example"], msg) or (250, b"")
s.quit()
print(json.dumps({"msg": msg.decode()}))
"#,
        &env,
    )
    .await?;
    let a = common::store(&sandbox, "store-a");
    testkit::wait_until(
        "the message in the INBOX",
        Duration::from_secs(10),
        Duration::from_millis(50),
        || async {
            a.list_mailbox("ann@acme.example", "INBOX", None)
                .await
                .map(|l| l.messages.len() == 1)
                .unwrap_or(false)
        },
    )
    .await?;
    let fabric_id = a
        .list_mailbox("ann@acme.example", "INBOX", None)
        .await?
        .messages[0]
        .message_id
        .clone();
    let r = common::python(
        r#"
import json, os, poplib, socket, ssl
H, P = os.environ["POP_HOST"], int(os.environ["POP_PORT"])
ctx = ssl.create_default_context(cafile=os.environ["CA"])
out = {}
p = poplib.POP3(H, P, timeout=30)
out["capa_plain"] = sorted(p.capa().keys())
try:
    p.user("ann@acme.example")
    out["plain_login"] = "accepted"
except poplib.error_proto as e:
    out["plain_login"] = e.args[0].decode()
p.stls(context=ctx)
out["capa"] = sorted(p.capa().keys())
try:
    p.user("ann@acme.example"); p.pass_("wrong")
    out["wrong"] = "accepted"
except poplib.error_proto as e:
    out["wrong"] = e.args[0].decode()
p.quit()
p = poplib.POP3(H, P, timeout=30)
p.stls(context=ctx)
p.user("ann@acme.example")
out["pass"] = p.pass_("open sesame").decode()
out["stat"] = list(p.stat())
out["uidl"] = p.uidl()[1][0].decode()
resp, lines, octets = p.retr(1)
out["retr"] = "\r\n".join(l.decode() for l in lines) + "\r\n"
resp, lines, octets = p.top(1, 1)
out["top"] = [l.decode() for l in lines]
try:
    p._shortcmd("X" * 300)
except poplib.error_proto as e:
    out["long"] = e.args[0].decode()
out["dele"] = p.dele(1).decode()
out["quit"] = p.quit().decode()
p = poplib.POP3(H, P, timeout=30)
p.stls(context=ctx)
p.user("ann@acme.example"); p.pass_("open sesame")
out["after"] = list(p.stat())
p.quit()
# Injection: a command in the same packet as STLS is never answered inside TLS.
sock = socket.create_connection((H, P), timeout=30)
f = sock.makefile("rb")
f.readline()
sock.sendall(b"STLS\r\nCAPA\r\n")
out["stls_reply"] = f.readline().decode()
tls = ctx.wrap_socket(sock, server_hostname=H)
tls.settimeout(1.0)
try:
    out["injected_answer"] = tls.recv(200).decode()
except socket.timeout:
    out["injected_answer"] = None
tls.settimeout(10)
tls.sendall(b"NOOP\r\n")
out["noop_before_login"] = tls.recv(200).decode()
print(json.dumps(out))
"#,
        &env,
    )
    .await?;
    assert_eq!(
        r["capa"],
        json!([
            "AUTH-RESP-CODE",
            "IMPLEMENTATION",
            "PIPELINING",
            "RESP-CODES",
            "TOP",
            "UIDL",
            "USER"
        ]),
        "inside TLS, STLS is no longer offered"
    );
    assert!(
        r["capa_plain"]
            .as_array()
            .is_some_and(|c| c.contains(&json!("STLS")))
    );
    assert!(
        r["plain_login"]
            .as_str()
            .is_some_and(|s| s.starts_with("-ERR [AUTH]")),
        "a password before TLS: {}",
        r["plain_login"]
    );
    assert!(
        r["stls_reply"]
            .as_str()
            .is_some_and(|l| l.starts_with("+OK"))
    );
    assert_eq!(
        r["injected_answer"],
        Value::Null,
        "the injected CAPA was answered inside TLS"
    );
    assert!(
        r["noop_before_login"]
            .as_str()
            .is_some_and(|l| l.starts_with("-ERR")),
        "{}",
        r["noop_before_login"]
    );
    assert!(
        r["wrong"]
            .as_str()
            .is_some_and(|s| s.starts_with("-ERR [AUTH]")),
        "{}",
        r["wrong"]
    );
    assert!(r["pass"].as_str().is_some_and(|s| s.starts_with("+OK")));
    assert_eq!(r["stat"][0], 1);
    // RETR gives the sender's bytes after the fabric's Received header (poplib undoes the stuffing).
    let retr = r["retr"].as_str().context("retr")?;
    let msg = sent["msg"].as_str().context("msg")?;
    assert!(retr.starts_with("Received: from "), "{retr}");
    assert!(retr.ends_with(msg), "{retr:?}\n---\n{msg:?}");
    assert_eq!(
        r["uidl"].as_str().map(|u| u.split(' ').nth(1)),
        Some(Some(fabric_id.as_str()))
    );
    let top = r["top"].as_array().context("top")?;
    assert_eq!(
        top.last().and_then(Value::as_str),
        Some("first line"),
        "TOP 1 1 ends after one body line"
    );
    assert!(r["long"].as_str().is_some_and(|s| s.starts_with("-ERR")));
    assert!(r["dele"].as_str().is_some_and(|s| s.starts_with("+OK")));
    assert_eq!(r["after"][0], 0, "DELE then QUIT removed the message");
    assert!(
        a.list_mailbox("ann@acme.example", "INBOX", None)
            .await?
            .messages
            .is_empty()
    );
    let m = common::metrics(&sandbox, "intranet-a").await?;
    assert_eq!(
        common::metric_sum(&m, "fabric_pop3_logins_total", &[("result", "invalid")]),
        1.0
    );
    Ok(())
}

/// The intranet server remembers logins argon2 accepted (no argon2 on the next login), but a
/// password changed in the directory takes effect at once: the old one is refused, the new one works.
#[tokio::test]
async fn remembered_logins_never_outlive_a_password_change() -> anyhow::Result<()> {
    let sandbox = Sandbox::start("topology/mini.toml").await?;
    let dir = common::store(&sandbox, "store-a");
    dir.put_user(
        "ann@acme.example",
        &json!({"password_hash": common::argon2_hash("first secret")?, "notify": "none"}),
    )
    .await?;
    let (pop_host, pop_port) = common::host_port(&sandbox.url("intranet-a", "pop3"));
    let env = [
        ("POP_HOST", pop_host),
        ("POP_PORT", pop_port),
        ("CA", sandbox.tls_dir().join("ca.pem").display().to_string()),
    ];
    let login = r#"
import json, os, poplib, ssl
ctx = ssl.create_default_context(cafile=os.environ["CA"])
out = []
for pw in os.environ["PASSWORDS"].split(","):
    p = poplib.POP3(os.environ["POP_HOST"], int(os.environ["POP_PORT"]), timeout=30)
    p.stls(context=ctx)
    p.user("ann@acme.example")
    try:
        out.append(p.pass_(pw).decode()[:3])
    except poplib.error_proto as e:
        out.append(e.args[0].decode()[:4])
    p.quit()
print(json.dumps(out))
"#;
    let with = |pws: &str| {
        let mut e = env.to_vec();
        e.push(("PASSWORDS", pws.to_string()));
        e
    };
    let r = common::python(login, &with("first secret,first secret,wrong")).await?;
    assert_eq!(r, json!(["+OK", "+OK", "-ERR"]));
    let m = common::metrics(&sandbox, "intranet-a").await?;
    assert_eq!(
        common::metric_sum(
            &m,
            "fabric_intranet_login_cache_total",
            &[("result", "hit")]
        ),
        1.0,
        "the second login with the same password is a remembered one"
    );
    dir.put_user(
        "ann@acme.example",
        &json!({"password_hash": common::argon2_hash("second secret")?, "notify": "none"}),
    )
    .await?;
    let r = common::python(login, &with("first secret,second secret,second secret")).await?;
    assert_eq!(
        r,
        json!(["-ERR", "+OK", "+OK"]),
        "the old password is refused as soon as the directory changed"
    );
    Ok(())
}

/// RETR and TOP read the next messages of the maildrop ahead in one store request (up to 32 messages
/// or 256 KiB by listed size): whatever order a client asks in, every message comes back byte for byte
/// (RFC 1939: dot-stuffed on the wire, which poplib undoes), and the store is asked only when a message
/// is not in the window the last request brought.
#[tokio::test]
async fn retr_reads_ahead_yet_every_message_comes_back_byte_for_byte() -> anyhow::Result<()> {
    const USER: &str = "cat@acme.example";
    let sandbox = Sandbox::start("topology/mini.toml").await?;
    let store = common::store(&sandbox, "store-a");
    store
        .put_user(
            USER,
            &json!({"password_hash": common::argon2_hash("read ahead")?, "notify": "none"}),
        )
        .await?;
    // 40 messages; the 20th is 300 KiB, more than a window may hold, so it comes alone.
    let mut bodies = Vec::new();
    for i in 1..=40 {
        let filler = if i == 20 {
            vec!["x".repeat(76); 4000].join("\r\n")
        } else {
            format!("line {i}")
        };
        let body = format!(
            "From: bob@remote.example\r\nSubject: number {i}\r\n\r\n.{i} starts with a dot\r\n{filler}\r\n"
        );
        store
            .append(
                USER,
                "INBOX",
                Some(&format!("ahead-{i}")),
                &[],
                body.clone(),
            )
            .await?;
        bodies.push(body);
    }
    let (pop_host, pop_port) = common::host_port(&sandbox.url("intranet-a", "pop3"));
    let env = [
        ("POP_HOST", pop_host),
        ("POP_PORT", pop_port),
        ("CA", sandbox.tls_dir().join("ca.pem").display().to_string()),
    ];
    let r = common::python(
        r#"
import json, os, poplib, ssl
ctx = ssl.create_default_context(cafile=os.environ["CA"])
p = poplib.POP3(os.environ["POP_HOST"], int(os.environ["POP_PORT"]), timeout=30)
p.stls(context=ctx)
p.user("cat@acme.example"); p.pass_("read ahead")
def text(lines):
    return "".join(l.decode() + "\r\n" for l in lines)
out = {"stat": list(p.stat()), "retr": {}}
# The last first, then in order, then one again; TOP of one the last window brought.
for n in [40] + list(range(1, 40)) + [5]:
    out["retr"].setdefault(str(n), []).append(text(p.retr(n)[1]))
out["top"] = text(p.top(7, 0)[1])
p.quit()
print(json.dumps(out))
"#,
        &env,
    )
    .await?;
    assert_eq!(r["stat"][0], 40, "{}", r["stat"]);
    for (i, body) in bodies.iter().enumerate() {
        let n = (i + 1).to_string();
        let got = r["retr"][&n].as_array().context("every message was read")?;
        for copy in got {
            assert_eq!(copy.as_str(), Some(body.as_str()), "RETR {n}");
        }
    }
    assert_eq!(r["retr"]["5"].as_array().map(Vec::len), Some(2));
    assert_eq!(
        r["top"].as_str(),
        bodies[6]
            .split("\r\n\r\n")
            .next()
            .map(|h| format!("{h}\r\n\r\n"))
            .as_deref(),
        "TOP 7 0: the header and the empty line"
    );
    // Store requests: 40 (alone at the end), 1 (brings 2..19: 20 does not fit), 20 (alone),
    // 21 (brings 22..40), 5 again (brings 6..19, so TOP 7 needs none). The other 37 were read ahead.
    let m = common::metrics(&sandbox, "intranet-a").await?;
    let served = |source: &str| {
        common::metric_sum(
            &m,
            "fabric_intranet_pop3_bodies_total",
            &[("source", source)],
        )
    };
    assert_eq!(served("store"), 5.0);
    assert_eq!(served("read_ahead"), 37.0);
    Ok(())
}
