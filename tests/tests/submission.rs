//! Authenticated submission on the intranet mail server (RFC 6409 with RFC 4954 AUTH and RFC 3207
//! STARTTLS) against real clients: Python's smtplib and swaks. Mail to another customer of the fabric
//! stays on the isolated side: intranet -> store -> mailbox.

mod common;
mod submit_common;

use std::time::Duration;

use anyhow::Context;
use submit_common::{PASSWORD, add_users, folder, host_port, python, queued_id, submit};
use testkit::Sandbox;

async fn fabric() -> anyhow::Result<Sandbox> {
    let sandbox = Sandbox::start("topology/mini.toml").await?;
    add_users(&sandbox, &["ann@acme.example", "bob@acme.example"]).await?;
    Ok(sandbox)
}

#[tokio::test]
async fn auth_only_after_starttls_with_the_rfc_codes_for_every_mistake() -> anyhow::Result<()> {
    let sandbox = fabric().await?;
    let r = python(
        &sandbox,
        "intranet-a",
        r#"
import base64, json, os, smtplib, ssl, time
out = {}
def b64(s): return base64.b64encode(s.encode()).decode()
def pair(r): return [r[0], r[1].decode() if isinstance(r[1], bytes) else r[1]]
ctx = ssl.create_default_context(cafile=os.environ["CA"])
s = smtplib.SMTP(os.environ["HOST"], int(os.environ["PORT"]), timeout=30)
code, ehlo = s.ehlo("client.example")
out["ehlo_plain"] = ehlo.decode()
out["auth_plain_text"] = pair(s.docmd("AUTH", "PLAIN " + b64("\0ann@acme.example\0" + os.environ["PASSWORD"])))
out["mail_plain_text"] = pair(s.docmd("MAIL", "FROM:<ann@acme.example>"))
s.starttls(context=ctx)
code, ehlo = s.ehlo("client.example")
out["ehlo_tls"] = ehlo.decode()
out["mail_no_auth"] = pair(s.docmd("MAIL", "FROM:<ann@acme.example>"))
t = time.monotonic()
out["wrong"] = pair(s.docmd("AUTH", "PLAIN " + b64("\0ann@acme.example\0wrong")))
out["wrong_seconds"] = time.monotonic() - t
out["nobody"] = pair(s.docmd("AUTH", "PLAIN " + b64("\0nobody@acme.example\0x")))
out["malformed"] = pair(s.docmd("AUTH", "PLAIN !!!not-base64!!!"))
out["mechanism"] = pair(s.docmd("AUTH", "CRAM-MD5"))
out["login_start"] = pair(s.docmd("AUTH", "LOGIN"))
out["login_cancel"] = pair(s.docmd("*"))
out["plain"] = pair(s.docmd("AUTH", "PLAIN " + b64("\0ann@acme.example\0" + os.environ["PASSWORD"])))
out["again"] = pair(s.docmd("AUTH", "PLAIN " + b64("\0ann@acme.example\0" + os.environ["PASSWORD"])))
out["not_own"] = pair(s.docmd("MAIL", "FROM:<bob@acme.example>"))
out["null"] = pair(s.docmd("MAIL", "FROM:<>"))
out["own"] = pair(s.docmd("MAIL", "FROM:<ann@acme.example>"))
out["unknown_local"] = pair(s.docmd("RCPT", "TO:<nobody@acme.example>"))
out["remote"] = pair(s.docmd("RCPT", "TO:<someone@elsewhere.example>"))
out["local"] = pair(s.docmd("RCPT", "TO:<bob@acme.example>"))
s.quit()
# AUTH LOGIN, the way smtplib does it (334 Username:/Password: challenges), on a fresh session.
s = smtplib.SMTP(os.environ["HOST"], int(os.environ["PORT"]), timeout=30)
s.starttls(context=ctx)
s.ehlo("client.example")
s.user, s.password = "bob@acme.example", os.environ["PASSWORD"]
out["login"] = pair(s.auth("LOGIN", s.auth_login, initial_response_ok=False))
s.quit()
print(json.dumps(out))
"#,
    )
    .await?;
    let code = |k: &str| r[k][0].as_u64().unwrap_or(0);
    let text = |k: &str| r[k][1].as_str().unwrap_or("").to_string();
    let ehlo_plain = r["ehlo_plain"].as_str().unwrap_or("");
    assert!(ehlo_plain.contains("STARTTLS"), "{ehlo_plain}");
    assert!(
        !ehlo_plain.contains("AUTH"),
        "AUTH offered in clear: {ehlo_plain}"
    );
    assert_eq!(
        (code("auth_plain_text"), text("auth_plain_text")),
        (530, "5.7.0 Must issue a STARTTLS command first".into())
    );
    assert_eq!(
        (code("mail_plain_text"), text("mail_plain_text")),
        (530, "5.7.0 Authentication required".into())
    );
    let ehlo_tls = r["ehlo_tls"].as_str().unwrap_or("");
    assert!(ehlo_tls.contains("AUTH PLAIN LOGIN"), "{ehlo_tls}");
    assert!(!ehlo_tls.contains("STARTTLS"), "{ehlo_tls}");
    assert_eq!(
        (code("mail_no_auth"), text("mail_no_auth")),
        (530, "5.7.0 Authentication required".into())
    );
    assert_eq!(
        (code("wrong"), text("wrong")),
        (535, "5.7.8 Authentication credentials invalid".into())
    );
    // Wrong passwords are slowed (1 s by default).
    assert!(r["wrong_seconds"].as_f64().unwrap_or(0.0) >= 0.9, "{r}");
    assert_eq!(code("nobody"), 535);
    assert_eq!((code("malformed"), &text("malformed")[..5]), (501, "5.5.2"));
    assert_eq!(code("mechanism"), 504);
    assert_eq!(
        (code("login_start"), text("login_start")),
        (334, "VXNlcm5hbWU6".into())
    );
    assert_eq!(code("login_cancel"), 501);
    assert_eq!((code("plain"), &text("plain")[..5]), (235, "2.7.0"));
    assert_eq!((code("again"), &text("again")[..5]), (503, "5.5.1"));
    assert_eq!((code("not_own"), &text("not_own")[..5]), (553, "5.7.1"));
    assert_eq!((code("null"), &text("null")[..5]), (553, "5.7.1"));
    assert_eq!(code("own"), 250);
    assert_eq!(
        (code("unknown_local"), &text("unknown_local")[..5]),
        (550, "5.1.1")
    );
    // Authenticated: relaying to any domain is allowed.
    assert_eq!(code("remote"), 250);
    assert_eq!(code("local"), 250);
    assert_eq!((code("login"), &text("login")[..5]), (235, "2.7.0"));

    let m = common::metrics(&sandbox, "intranet-a").await?;
    let auth =
        |result: &str| common::metric_sum(&m, "fabric_smtp_auth_total", &[("result", result)]);
    assert_eq!(auth("invalid"), 2.0, "{m}");
    assert_eq!(auth("before_tls"), 1.0);
    assert_eq!(auth("malformed"), 1.0);
    assert_eq!(auth("cancelled"), 1.0);
    assert_eq!(auth("ok"), 2.0);
    assert_eq!(
        common::metric_sum(
            &m,
            "fabric_smtp_refusals_total",
            &[("kind", "auth_required")]
        ),
        2.0
    );
    Ok(())
}

#[tokio::test]
async fn mail_to_another_customer_lands_in_their_inbox_and_the_senders_sent_exactly_once()
-> anyhow::Result<()> {
    let sandbox = fabric().await?;
    let body = "From: ann@acme.example\r\nTo: bob@acme.example\r\nSubject: lunch\r\n\r\nat noon?\r\n.dot line\r\n";
    let reply = submit(
        &sandbox,
        "intranet-a",
        "ann@acme.example",
        &["bob@acme.example"],
        body,
    )
    .await?;
    let id = queued_id(&reply)?;
    // 250 came after the writes: no waiting needed.
    let inbox = folder(&sandbox, "bob@acme.example", "INBOX").await?;
    assert_eq!(inbox.len(), 1, "{inbox:?}");
    assert_eq!(inbox[0].0, id);
    assert!(inbox[0].1.starts_with("Received: from "), "{}", inbox[0].1);
    assert!(inbox[0].1.contains("with ESMTPSA id"), "{}", inbox[0].1);
    // smtplib dot-stuffs, the server unstuffs: the same body arrives.
    assert!(inbox[0].1.ends_with(body), "{:?}", inbox[0].1);
    let sent = folder(&sandbox, "ann@acme.example", "Sent").await?;
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0], inbox[0]);
    // Nothing went to the Internet side.
    let store = common::store(&sandbox, "store-a");
    for queue in ["outbound", "to-internet", "inbound"] {
        assert!(store.list_queue(queue, None).await?.is_empty(), "{queue}");
    }
    // Every hop is in the trace, under the fabric id.
    testkit::wait_until(
        "the trace of the submission",
        Duration::from_secs(10),
        Duration::from_millis(100),
        || async {
            let t = store.get_trace(&id, None).await.map(|t| t.to_string());
            t.is_ok_and(|t| t.contains("\"delivered\"") && t.contains("filed in Sent"))
        },
    )
    .await?;
    // The same message read back over POP3 (through STLS), byte for byte.
    let (h, p) = host_port(&sandbox, "intranet-a", "pop3");
    let out = tokio::process::Command::new("python3")
        .arg("-c")
        .arg(
            r#"
import os, poplib, ssl, sys
p = poplib.POP3(os.environ["H"], int(os.environ["P"]), timeout=30)
p.stls(context=ssl.create_default_context(cafile=os.environ["CA"]))
p.user("bob@acme.example"); p.pass_(os.environ["PASSWORD"])
resp, lines, octets = p.retr(1)
sys.stdout.write("\r\n".join(l.decode() for l in lines) + "\r\n")
p.quit()
"#,
        )
        .env("H", h)
        .env("P", p)
        .env("CA", sandbox.tls_dir().join("ca.pem"))
        .env("PASSWORD", PASSWORD)
        .kill_on_drop(true)
        .output()
        .await
        .context("python3")?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), inbox[0].1);
    Ok(())
}

#[tokio::test]
async fn swaks_submits_with_auth_login_through_verified_starttls() -> anyhow::Result<()> {
    let sandbox = fabric().await?;
    let (h, p) = host_port(&sandbox, "intranet-a", "submission");
    let ca = sandbox.tls_dir().join("ca.pem");
    let swaks = |extra: &[&str]| {
        let mut cmd = tokio::process::Command::new("swaks");
        cmd.args([
            "--server",
            &format!("{h}:{p}"),
            "--from",
            "ann@acme.example",
        ])
        .args(["--to", "bob@acme.example", "--helo", "swaks.example"])
        .args(["--tls", "--tls-verify", "--tls-ca-path"])
        .arg(&ca)
        .args(extra)
        .kill_on_drop(true);
        async move {
            let out = cmd.output().await.context("swaks must be installed")?;
            anyhow::Ok((
                out.status.code(),
                String::from_utf8_lossy(&out.stdout).into_owned(),
            ))
        }
    };
    let (code, text) = swaks(&[
        "--auth",
        "LOGIN",
        "--auth-user",
        "ann@acme.example",
        "--auth-password",
        PASSWORD,
    ])
    .await?;
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("TLS started"), "{text}");
    assert!(text.contains("<~  235 2.7.0"), "{text}");
    assert!(text.contains("<~  250 2.0.0 queued as"), "{text}");
    let (code, text) = swaks(&[
        "--auth",
        "PLAIN",
        "--auth-user",
        "ann@acme.example",
        "--auth-password",
        "wrong",
    ])
    .await?;
    assert_ne!(code, Some(0), "{text}");
    assert!(text.contains("<~* 535 5.7.8"), "{text}");
    let inbox = submit_common::wait_for(
        &sandbox,
        "bob@acme.example",
        "INBOX",
        1,
        Duration::from_secs(5),
    )
    .await?;
    assert_eq!(inbox.len(), 1);
    Ok(())
}
