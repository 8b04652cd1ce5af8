//! The Internet mail server against real clients: Python's smtplib (written by nobody here) for the
//! ordinary conversation, and a raw TCP client for the limits and the smuggling forms of RFC 5321
//! that no polite client sends.

mod common;

use common::raw_smtp::Raw;
use common::smtp_addr;
use std::time::Duration;

use anyhow::{Context, bail};
use serde_json::{Value, json};
use testkit::Sandbox;

/// The mini fabric with ann@acme.example, and spammer.example on the blocklist.
async fn fabric_with_ann() -> anyhow::Result<Sandbox> {
    let sandbox = common::fabric_with_ann().await?;
    common::store(&sandbox, "store-a")
        .call(
            store_client::Method::PUT,
            "/v1/blocklist/spammer.example",
            &[],
            bytes::Bytes::new(),
        )
        .await?;
    Ok(sandbox)
}

/// Runs a Python script with `HOST` and `PORT` set; returns what it printed as JSON.
async fn python(sandbox: &Sandbox, script: &str) -> anyhow::Result<Value> {
    let addr = smtp_addr(sandbox);
    let (host, port) = addr.rsplit_once(':').context("address")?;
    let out = tokio::process::Command::new("python3")
        .arg("-c")
        .arg(script)
        .env("HOST", host)
        .env("PORT", port)
        .kill_on_drop(true)
        .output()
        .await
        .context("python3 must be installed")?;
    if !out.status.success() {
        bail!("python failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(serde_json::from_slice(&out.stdout)?)
}

#[tokio::test]
async fn smtplib_delivers_to_a_customer_and_is_refused_everything_else() -> anyhow::Result<()> {
    let sandbox = fabric_with_ann().await?;
    let r = python(
        &sandbox,
        r#"
import json, os, smtplib
out = {}
s = smtplib.SMTP(os.environ["HOST"], int(os.environ["PORT"]), timeout=30)
code, ehlo = s.ehlo("client.example")
out["ehlo"] = [code, ehlo.decode()]
body = "From: bob@remote.example\r\nTo: ann@acme.example\r\nSubject: hello\r\n\r\nline one\r\n.leading dot\r\nsmörgåsbord\r\n"
out["mail"] = list(s.mail("bob@remote.example", ["BODY=8BITMIME"]))
out["rcpt"] = list(s.rcpt("ann@acme.example"))
out["unknown"] = list(s.rcpt("nobody@acme.example"))
out["relay"] = list(s.rcpt("someone@elsewhere.example"))
out["percent"] = list(s.rcpt("a%b@acme.example"))
out["bang"] = list(s.rcpt("a!b@acme.example"))
out["route"] = list(s.docmd("RCPT", "TO:<@hop1,@hop2:ann@acme.example>"))
out["quoted"] = list(s.docmd("RCPT", 'TO:<"ann@elsewhere.example"@acme.example>'))
out["data"] = list(s.data(body.encode("utf-8")))
s.rset()
out["blocked"] = list(s.mail("x@spammer.example"))
out["quit"] = list(s.quit())
print(json.dumps({k: [v[0], v[1].decode() if isinstance(v[1], bytes) else v[1]] for k, v in out.items()}))
"#,
    )
    .await?;
    let code = |k: &str| r[k][0].as_u64().unwrap_or(0);
    let text = |k: &str| r[k][1].as_str().unwrap_or("").to_string();
    assert_eq!(code("ehlo"), 250);
    for ext in ["PIPELINING", "SIZE", "8BITMIME", "ENHANCEDSTATUSCODES"] {
        assert!(
            text("ehlo").contains(ext),
            "EHLO lacks {ext}: {}",
            text("ehlo")
        );
    }
    assert_eq!(code("mail"), 250);
    assert_eq!(code("rcpt"), 250);
    assert_eq!((code("unknown"), &text("unknown")[..5]), (550, "5.1.1"));
    assert_eq!((code("relay"), &text("relay")[..5]), (550, "5.7.1"));
    for form in ["percent", "bang", "route", "quoted"] {
        assert_eq!(
            (code(form), &text(form)[..5]),
            (550, "5.7.1"),
            "{form}: {}",
            text(form)
        );
    }
    assert_eq!(code("data"), 250, "{}", text("data"));
    assert_eq!((code("blocked"), &text("blocked")[..5]), (550, "5.7.1"));
    assert_eq!(code("quit"), 221);

    // The 250 names the fabric message id; the message is on the store and on its mirror.
    let id = text("data")
        .rsplit(' ')
        .next()
        .context("queued as ID")?
        .to_string();
    let (body, meta) = stored(&sandbox, &id).await?;
    assert!(body.starts_with("Received: from client.example"), "{body}");
    assert!(
        body.ends_with("Subject: hello\r\n\r\nline one\r\n.leading dot\r\nsmörgåsbord\r\n"),
        "{body:?}"
    );
    assert_eq!(meta["rcpts"], json!(["ann@acme.example"]));
    assert_eq!(meta["from"], "bob@remote.example");
    // The mirror holds it too (on whichever queue it is by now).
    let b = common::store(&sandbox, "store-b");
    let mut mirrored = false;
    for queue in ["inbound", "archive"] {
        mirrored |= b
            .list_queue(queue, Some("store-a"))
            .await?
            .iter()
            .any(|i| i.message_id == id);
    }
    assert!(mirrored, "{id} not on the mirror");
    // Every refusal is counted by kind.
    let m = common::metrics(&sandbox, "mx-a").await?;
    assert!(common::metric_sum(&m, "fabric_smtp_refusals_total", &[("kind", "relay_form")]) >= 4.0);
    assert_eq!(
        common::metric_sum(&m, "fabric_inet_mx_accepted_total", &[]),
        1.0
    );
    recipients_found_lately_are_not_read_again(&sandbox).await
}

/// The recipient check answers a user found within the last 5 s from memory, never a user not found
/// (one added a moment ago is accepted at once), and a removed user is refused once that time is up.
async fn recipients_found_lately_are_not_read_again(sandbox: &Sandbox) -> anyhow::Result<()> {
    let directory = common::store(sandbox, "store-a");
    let reads = || async {
        let mut n = 0.0;
        for store in ["store-a", "store-b"] {
            let m = common::metrics(sandbox, store).await?;
            n += common::metric_sum(
                &m,
                "fabric_store_requests_total",
                &[("route", "/v1/users/{address}"), ("method", "GET")],
            );
        }
        anyhow::Ok(n)
    };
    let mut raw = Raw::connect(sandbox).await?;
    raw.transaction().await?;
    let before = reads().await?;
    for _ in 0..5 {
        let reply = raw.cmd("RCPT TO:<ann@acme.example>").await?;
        assert!(reply.starts_with("250"), "{reply}");
    }
    assert_eq!(
        reads().await? - before,
        0.0,
        "ann was read again within 5 s"
    );

    let carl = "carl@acme.example";
    let reply = raw.cmd(&format!("RCPT TO:<{carl}>")).await?;
    assert!(reply.starts_with("550 5.1.1"), "{reply}");
    directory
        .put_user(
            carl,
            &json!({"password_hash": common::HASH, "notify": "none"}),
        )
        .await?;
    let reply = raw.cmd(&format!("RCPT TO:<{carl}>")).await?;
    assert!(
        reply.starts_with("250"),
        "a user added now is accepted now: {reply}"
    );

    directory
        .call(
            store_client::Method::DELETE,
            &format!("/v1/users/{carl}"),
            &[],
            bytes::Bytes::new(),
        )
        .await?;
    tokio::time::sleep(store_client::directory::RECENT_USER_TTL + Duration::from_millis(300)).await;
    let reply = raw.cmd(&format!("RCPT TO:<{carl}>")).await?;
    assert!(
        reply.starts_with("550 5.1.1"),
        "a removed user is refused: {reply}"
    );
    let m = common::metrics(sandbox, "mx-a").await?;
    assert!(common::metric_sum(&m, "fabric_directory_recent_hits_total", &[]) >= 5.0);
    Ok(())
}

/// Messages the mail server stored: still on `inbound`, or already moved by the transfer server
/// (which keeps a copy on `archive`).
async fn inbound_count(sandbox: &Sandbox) -> anyhow::Result<usize> {
    let a = common::store(sandbox, "store-a");
    // A message is briefly on both while it moves: count message ids, not items.
    let mut ids = std::collections::BTreeSet::new();
    for queue in ["inbound", "archive"] {
        ids.extend(
            a.list_queue(queue, None)
                .await?
                .into_iter()
                .map(|i| i.message_id),
        );
    }
    Ok(ids.len())
}

/// The stored bytes and metadata of message `id`, wherever the transfer server has got to.
async fn stored(sandbox: &Sandbox, id: &str) -> anyhow::Result<(String, Value)> {
    let a = common::store(sandbox, "store-a");
    for _ in 0..100 {
        for queue in ["inbound", "archive"] {
            let items = a.list_queue(queue, None).await?;
            if let Some(item) = items.iter().find(|i| i.message_id == id) {
                // Moved between the listing and the fetch: look again.
                if let Ok(body) = a.get_item(queue, item.id, None).await {
                    return Ok((
                        String::from_utf8(body.to_vec())?,
                        item.meta.clone().unwrap_or_default(),
                    ));
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bail!("{id} is neither on inbound nor on archive")
}

#[tokio::test]
async fn rfc_5321_limits_hold_exactly_at_the_edge() -> anyhow::Result<()> {
    let sandbox = fabric_with_ann().await?;
    let mut c = Raw::connect(&sandbox).await?;
    // Command line: 512 octets with CRLF pass, 513 do not.
    let at = format!("NOOP {}", "x".repeat(512 - 2 - 5));
    assert!(c.cmd(&at).await?.starts_with("250"));
    let over = format!("NOOP {}", "x".repeat(512 - 2 - 5 + 1));
    assert!(c.cmd(&over).await?.starts_with("500 5.5.2"));
    c.cmd("EHLO raw.example").await?;
    // Local part 64 passes the syntax (then the directory says no such user), 65 is refused.
    let l64 = "l".repeat(64);
    c.cmd("MAIL FROM:<bob@remote.example>").await?;
    assert!(
        c.cmd(&format!("RCPT TO:<{l64}@acme.example>"))
            .await?
            .starts_with("550 5.1.1")
    );
    assert!(
        c.cmd(&format!("RCPT TO:<{l64}x@acme.example>"))
            .await?
            .starts_with("501")
    );
    // Domain over 255 and path over 256 octets.
    let long_domain = format!("{}.example", "d".repeat(250));
    assert!(
        c.cmd(&format!("RCPT TO:<a@{long_domain}>"))
            .await?
            .starts_with("501")
    );
    // SIZE over the limit.
    c.cmd("RSET").await?;
    let huge = 1u64 << 40;
    assert!(
        c.cmd(&format!("MAIL FROM:<bob@remote.example> SIZE={huge}"))
            .await?
            .starts_with("552 5.3.4")
    );
    // The 101st recipient.
    c.cmd("MAIL FROM:<bob@remote.example>").await?;
    let mut batch = String::new();
    for _ in 0..101 {
        batch.push_str("RCPT TO:<ann@acme.example>\r\n");
    }
    c.send(batch.as_bytes()).await?;
    for i in 0..100 {
        let r = c.reply().await?;
        assert!(r.starts_with("250"), "recipient {i}: {r}");
    }
    assert!(c.reply().await?.starts_with("452 4.5.3"));
    // A text line of 1000 octets with CRLF passes; 1001 refuses the message.
    assert!(c.cmd("DATA").await?.starts_with("354"));
    let line998 = "t".repeat(998);
    c.send(format!("Subject: edge\r\n\r\n{line998}\r\n.\r\n").as_bytes())
        .await?;
    assert!(c.reply().await?.starts_with("250"));
    c.transaction().await?;
    assert!(c.cmd("DATA").await?.starts_with("354"));
    c.send(format!("Subject: over\r\n\r\n{line998}x\r\n.\r\n").as_bytes())
        .await?;
    assert!(c.reply().await?.starts_with("500 5.5.2"));
    assert!(c.cmd("QUIT").await?.starts_with("221"));
    assert_eq!(
        inbound_count(&sandbox).await?,
        1,
        "only the message at the limit was stored"
    );
    Ok(())
}

#[tokio::test]
async fn no_smuggling_form_ends_data_and_bare_line_ends_are_refused() -> anyhow::Result<()> {
    let sandbox = fabric_with_ann().await?;
    let forms: [&[u8]; 9] = [
        b"\n.\n",
        b"\r.\r",
        b"\r.\n",
        b"\n.\r",
        b"\n.\r\n",
        b"\r\n.\n",
        b"\r.\r\n",
        b"\r\n.\r",
        b"\r\n.\x00\r\n",
    ];
    for form in forms {
        let mut c = Raw::connect(&sandbox).await?;
        c.transaction().await?;
        assert!(c.cmd("DATA").await?.starts_with("354"));
        // A smuggling attempt: a fake end of data, then a second message's commands.
        let mut payload = b"Subject: smuggle\r\n\r\nfirst".to_vec();
        payload.extend_from_slice(form);
        payload.extend_from_slice(b"MAIL FROM:<evil@remote.example>\r\nRCPT TO:<ann@acme.example>\r\nDATA\r\nsmuggled\r\n.\r\n");
        c.send(&payload).await?;
        // The only end of data is the real one, and it finds a message with a bare CR/LF or NUL.
        let r = c.reply().await?;
        assert!(r.starts_with("550 5.6.0"), "form {form:?} gave {r}");
        assert!(
            c.cmd("NOOP").await?.starts_with("250"),
            "form {form:?}: one reply per DATA"
        );
    }
    assert_eq!(
        inbound_count(&sandbox).await?,
        0,
        "nothing smuggled was stored"
    );
    let m = common::metrics(&sandbox, "mx-a").await?;
    assert!(common::metric_sum(&m, "fabric_smtp_refusals_total", &[("kind", "bare_cr_lf")]) >= 8.0);
    Ok(())
}

#[tokio::test]
async fn early_data_and_a_client_that_leaves_mid_data_store_nothing() -> anyhow::Result<()> {
    let sandbox = fabric_with_ann().await?;
    // Body before the 354: refused, the connection closed, the body never read as commands.
    let mut c = Raw::connect(&sandbox).await?;
    c.transaction().await?;
    c.send(b"DATA\r\nSubject: early\r\n\r\nRSET\r\n.\r\n")
        .await?;
    let r = c.reply().await?;
    assert!(r.starts_with("554 5.5.0"), "{r}");
    assert!(c.closed().await, "the session must end");
    // A client that disconnects in the middle of DATA.
    let mut c = Raw::connect(&sandbox).await?;
    c.transaction().await?;
    assert!(c.cmd("DATA").await?.starts_with("354"));
    c.send(b"Subject: cut\r\n\r\nhalf a message\r\n").await?;
    drop(c);
    // Unknown commands and commands out of order are refused and the session goes on.
    let mut c = Raw::connect(&sandbox).await?;
    assert!(c.cmd("FOO bar").await?.starts_with("500 5.5.1"));
    assert!(
        c.cmd("MAIL FROM:<bob@remote.example>")
            .await?
            .starts_with("503")
    );
    assert!(c.cmd("EHLO raw.example").await?.starts_with("250"));
    assert!(c.cmd("DATA").await?.starts_with("503"));
    assert!(c.cmd("QUIT").await?.starts_with("221"));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(inbound_count(&sandbox).await?, 0);
    let m = common::metrics(&sandbox, "mx-a").await?;
    assert_eq!(
        common::metric_sum(&m, "fabric_smtp_refusals_total", &[("kind", "pipelining")]),
        1.0
    );
    assert_eq!(
        common::metric_sum(
            &m,
            "fabric_smtp_refusals_total",
            &[("kind", "disconnect_in_data")]
        ),
        1.0
    );
    Ok(())
}

#[tokio::test]
async fn starttls_with_the_fabric_ca_and_no_command_injection() -> anyhow::Result<()> {
    let sandbox = fabric_with_ann().await?;
    let ca = sandbox.tls_dir().join("ca.pem");
    let addr = smtp_addr(&sandbox);
    let (host, port) = addr.rsplit_once(':').context("address")?;
    let out = tokio::process::Command::new("python3")
        .arg("-c")
        .arg(
            r#"
import json, os, smtplib, socket, ssl
H, P = os.environ["HOST"], int(os.environ["PORT"])
ctx = ssl.create_default_context(cafile=os.environ["CA"])
out = {}
s = smtplib.SMTP(H, P, timeout=30)
s.ehlo("c.example")
out["offered"] = s.has_extn("starttls")
out["tls"] = s.starttls(context=ctx)[0]
out["cipher"] = s.sock.version()
s.ehlo("c.example")
out["offered_again"] = s.has_extn("starttls")
out["again"] = s.docmd("STARTTLS")[0]
out["mail"] = s.mail("bob@remote.example")[0]
out["rcpt"] = s.rcpt("ann@acme.example")[0]
code, text = s.data(b"Subject: over tls\r\n\r\nsecret\r\n")
out["data"] = [code, text.decode()]
s.quit()
# Injection: a command sent in the same packet as STARTTLS must never be answered inside TLS.
sock = socket.create_connection((H, P), timeout=30)
f = sock.makefile("rb")
f.readline()
sock.sendall(b"EHLO x.example\r\n")
while True:
    l = f.readline()
    if l[3:4] == b" ":
        break
sock.sendall(b"STARTTLS\r\nNOOP\r\n")
out["starttls_reply"] = f.readline().decode()
tls = ctx.wrap_socket(sock, server_hostname=H)
tls.settimeout(1.0)
try:
    out["injected_answer"] = tls.recv(200).decode()
except socket.timeout:
    out["injected_answer"] = None
tls.settimeout(10)
tls.sendall(b"NOOP\r\n")
out["noop"] = tls.recv(200).decode()
print(json.dumps(out))
"#,
        )
        .env("HOST", host)
        .env("PORT", port)
        .env("CA", &ca)
        .kill_on_drop(true)
        .output()
        .await?;
    if !out.status.success() {
        bail!("python: {}", String::from_utf8_lossy(&out.stderr));
    }
    let r: Value = serde_json::from_slice(&out.stdout)?;
    assert_eq!(r["offered"], true);
    assert_eq!(r["tls"], 220);
    assert!(
        r["cipher"]
            .as_str()
            .is_some_and(|v| v.starts_with("TLSv1.")),
        "{}",
        r["cipher"]
    );
    assert_eq!(
        r["offered_again"], false,
        "STARTTLS is not offered inside TLS"
    );
    assert_eq!(r["again"], 502);
    assert_eq!(r["data"][0], 250);
    assert!(
        r["starttls_reply"]
            .as_str()
            .is_some_and(|l| l.starts_with("220"))
    );
    assert_eq!(
        r["injected_answer"],
        Value::Null,
        "the injected NOOP was answered inside TLS"
    );
    assert!(r["noop"].as_str().is_some_and(|l| l.starts_with("250")));
    let id = r["data"][1]
        .as_str()
        .and_then(|t| t.rsplit(' ').next())
        .context("id")?
        .to_string();
    let (body, _) = stored(&sandbox, &id).await?;
    assert!(body.contains("with ESMTPS id"), "{body}");
    let m = common::metrics(&sandbox, "mx-a").await?;
    assert_eq!(
        common::metric_sum(
            &m,
            "fabric_smtp_refusals_total",
            &[("kind", "starttls_injection")]
        ),
        1.0
    );
    Ok(())
}

#[tokio::test]
async fn swaks_delivers_with_and_without_pipelining_and_is_refused_for_strangers()
-> anyhow::Result<()> {
    let sandbox = fabric_with_ann().await?;
    let addr = smtp_addr(&sandbox);
    let ca = sandbox.tls_dir().join("ca.pem");
    let swaks = |args: Vec<String>| async move {
        let out = tokio::process::Command::new("swaks")
            .args(&args)
            .kill_on_drop(true)
            .output()
            .await
            .context("swaks must be installed (make test installs it)")?;
        anyhow::Ok((
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        ))
    };
    let base = |to: &str| {
        vec![
            "--server".to_string(),
            addr.clone(),
            "--from".into(),
            "bob@remote.example".into(),
            "--to".into(),
            to.into(),
            "--helo".into(),
            "swaks.example".into(),
        ]
    };
    let (code, text) = swaks(base("ann@acme.example")).await?;
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("<-  250 2.0.0 queued as"), "{text}");
    let mut piped = base("ann@acme.example");
    piped.push("--pipeline".into());
    let (code, text) = swaks(piped).await?;
    assert_eq!(code, Some(0), "{text}");
    let mut tls = base("ann@acme.example");
    tls.extend([
        "--tls".to_string(),
        "--tls-verify".into(),
        "--tls-ca-path".into(),
        ca.display().to_string(),
    ]);
    let (code, text) = swaks(tls).await?;
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("TLS started"), "{text}");
    // Relaying for a stranger: refused at RCPT (swaks exits 24 when RCPT fails).
    let (code, text) = swaks(base("someone@elsewhere.example")).await?;
    assert_ne!(code, Some(0));
    assert!(text.contains("<** 550 5.7.1"), "{text}");
    assert_eq!(inbound_count(&sandbox).await?, 3);
    Ok(())
}
