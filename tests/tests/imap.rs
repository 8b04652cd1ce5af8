//! Reading mail over IMAP4rev1 with Python's imaplib (a client nobody here wrote), through STARTTLS
//! verified against the fabric's CA: the same bytes smtplib sent, flags/STORE/SEARCH/EXPUNGE per
//! RFC 3501, ENVELOPE and BODYSTRUCTURE of a multipart message, APPEND, Quarantine, IDLE.

mod common;

use std::time::Duration;

use anyhow::Context;
use serde_json::{Value, json};
use testkit::Sandbox;

/// The mini fabric with ann@acme.example (password "open sesame"), and the environment the Python
/// scripts read.
async fn fabric() -> anyhow::Result<(Sandbox, Vec<(&'static str, String)>)> {
    let sandbox = Sandbox::start("topology/mini.toml").await?;
    let hash = common::argon2_hash("open sesame")?;
    common::store(&sandbox, "store-a")
        .put_user(
            "ann@acme.example",
            &json!({"password_hash": hash, "notify": "none"}),
        )
        .await?;
    let (smtp_host, smtp_port) = common::host_port(&sandbox.url("mx-a", "smtp"));
    let (imap_host, imap_port) = common::host_port(&sandbox.url("intranet-a", "imap"));
    let env = vec![
        ("SMTP_HOST", smtp_host),
        ("SMTP_PORT", smtp_port),
        ("IMAP_HOST", imap_host),
        ("IMAP_PORT", imap_port),
        ("CA", sandbox.tls_dir().join("ca.pem").display().to_string()),
    ];
    Ok((sandbox, env))
}

async fn wait_for(sandbox: &Sandbox, folder: &str, n: usize) -> anyhow::Result<()> {
    let a = common::store(sandbox, "store-a");
    testkit::wait_until(
        "the messages in the folder",
        Duration::from_secs(15),
        Duration::from_millis(50),
        || async {
            a.list_mailbox("ann@acme.example", folder, None)
                .await
                .map(|l| l.messages.len() == n)
                .unwrap_or(false)
        },
    )
    .await
}

/// UIDs as SEARCH answers them: ascending.
fn uidset(v: &[&Value]) -> Value {
    let mut n: Vec<u64> = v.iter().filter_map(|x| x.as_u64()).collect();
    n.sort_unstable();
    json!(n)
}

/// Python prelude: a connection through STARTTLS, logged in as ann.
const PRELUDE: &str = r#"
import base64, imaplib, json, os, re, smtplib, ssl
H, P = os.environ["IMAP_HOST"], int(os.environ["IMAP_PORT"])
ctx = ssl.create_default_context(cafile=os.environ["CA"])
def connect():
    M = imaplib.IMAP4(H, P, timeout=30)
    M.starttls(ssl_context=ctx)
    M.login("ann@acme.example", "open sesame")
    return M
def send(msg):
    s = smtplib.SMTP(os.environ["SMTP_HOST"], int(os.environ["SMTP_PORT"]), timeout=30)
    s.sendmail("bob@remote.example", ["ann@acme.example"], msg)
    s.quit()
def uids(M, *criteria):
    typ, data = M.uid("SEARCH", None, *criteria)
    return [int(x) for x in data[0].split()]
def flags(M, uid):
    typ, data = M.uid("FETCH", str(uid), "(FLAGS)")
    return sorted(imaplib.ParseFlags(data[0]))
def dump(o):
    print(json.dumps(o, default=lambda b: b.decode(errors="replace")))
def decode(v):
    return [x.decode() if isinstance(x, bytes) else x for x in v]
"#;

#[tokio::test]
async fn imaplib_reads_smtplib_mail_byte_for_byte_with_flags_search_and_expunge()
-> anyhow::Result<()> {
    let (sandbox, env) = fabric().await?;
    let sent = common::python(
        &format!(
            "{PRELUDE}{}",
            r#"
msgs = [b"From: bob@remote.example\r\nTo: ann@acme.example\r\nSubject: msg%d\r\n\r\nbody of message %d\r\n.dot line\r\n" % (i, i) for i in (1, 2, 3)]
for m in msgs:
    send(m)
print(json.dumps({"msgs": [m.decode() for m in msgs]}))
"#
        ),
        &env,
    )
    .await?;
    wait_for(&sandbox, "INBOX", 3).await?;
    let r = common::python(
        &format!(
            "{PRELUDE}{}",
            r#"
out = {}
M = imaplib.IMAP4(H, P, timeout=30)
out["caps_plain"] = sorted(M.capabilities)
try:
    M.login("ann@acme.example", "open sesame"); out["plain_login"] = "accepted"
except M.error as e:
    out["plain_login"] = str(e)
M.starttls(ssl_context=ctx)
out["caps_tls"] = sorted(M.capabilities)
try:
    M.login("ann@acme.example", "wrong"); out["wrong"] = "accepted"
except M.error as e:
    out["wrong"] = str(e)
out["auth"] = M.authenticate("PLAIN", lambda _: b"\0ann@acme.example\0open sesame")[0]
out["list"] = decode(M.list()[1])
typ, data = M.select("INBOX")
out["exists"] = int(data[0])
out["uidvalidity"] = int(M.response("UIDVALIDITY")[1][0])
by_subject = {}
for u in uids(M, "ALL"):
    typ, data = M.uid("FETCH", str(u), "(BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
    by_subject[data[0][1].decode().strip()] = u
u1, u2, u3 = by_subject["Subject: msg1"], by_subject["Subject: msg2"], by_subject["Subject: msg3"]
out["uids"] = [u1, u2, u3]
order = sorted([u1, u2, u3])
seq = {u: order.index(u) + 1 for u in order}
out["u2_seq"] = str(seq[u2])
typ, data = M.uid("FETCH", str(u2), "(BODY.PEEK[])")
out["peek_body"] = data[0][1].decode()
out["flags_after_peek"] = flags(M, u2)
typ, data = M.uid("FETCH", str(u1), "(BODY[])")
out["body1"] = data[0][1].decode()
out["flags_after_body"] = flags(M, u1)
typ, data = M.uid("FETCH", str(u1), "(BODY.PEEK[TEXT] BODY.PEEK[]<0.9> RFC822.SIZE)")
out["text1"] = data[0][1].decode()
out["partial"] = data[1][1].decode()
out["size_line"] = data[2].decode() if isinstance(data[2], bytes) else str(data[2])
out["unseen"] = uids(M, "UNSEEN")
out["subject_search"] = uids(M, "SUBJECT", "msg3")
out["body_search"] = uids(M, "BODY", "\"message 2\"")
out["or_search"] = uids(M, "OR", "SUBJECT", "msg1", "SUBJECT", "msg3")
out["not_search"] = uids(M, "NOT", "SUBJECT", "msg1")
out["larger"] = uids(M, "LARGER", "10")
out["smaller"] = uids(M, "SMALLER", "10")
out["seq_search"] = [int(x) for x in M.search(None, "2:3")[1][0].split()]
out["since"] = uids(M, "SINCE", "1-Jan-2000")
out["before"] = uids(M, "BEFORE", "1-Jan-2000")
out["store"] = decode(M.uid("STORE", str(u2), "+FLAGS", "(\\Deleted)")[1])
M.store(str(seq[u3]), "+FLAGS.SILENT", "(\\Flagged)")
out["flagged"] = uids(M, "FLAGGED")
out["deleted"] = uids(M, "DELETED")
out["expunge"] = decode(M.expunge()[1])
out["after_expunge"] = uids(M, "ALL")
M.store("1:*", "-FLAGS", "(\\Seen)")
out["unseen_again"] = uids(M, "UNSEEN")
out["status"] = decode(M.status("INBOX", "(MESSAGES UIDNEXT UIDVALIDITY UNSEEN)")[1])
M.close()
M.logout()
M = connect()
typ, data = M.select("INBOX")
out["uidvalidity2"] = int(M.response("UIDVALIDITY")[1][0])
out["uids_again"] = uids(M, "ALL")
typ, data = M.uid("FETCH", str(u3), "(FLAGS BODY.PEEK[])")
out["body3"] = data[0][1].decode()
M.logout()
dump(out)
"#
        ),
        &env,
    )
    .await?;
    let msgs: Vec<&str> = sent["msgs"]
        .as_array()
        .context("msgs")?
        .iter()
        .filter_map(Value::as_str)
        .collect();
    // Before TLS: STARTTLS and LOGINDISABLED, and LOGIN is refused (RFC 3501 6.2.3, RFC 5530).
    let caps_plain = r["caps_plain"].to_string();
    assert!(caps_plain.contains("\"STARTTLS\"") && caps_plain.contains("LOGINDISABLED"));
    assert!(
        r["plain_login"]
            .as_str()
            .is_some_and(|s| s.contains("[PRIVACYREQUIRED]")),
        "{}",
        r["plain_login"]
    );
    let caps_tls = r["caps_tls"].to_string();
    assert!(!caps_tls.contains("STARTTLS") && !caps_tls.contains("LOGINDISABLED"));
    assert!(caps_tls.contains("AUTH=PLAIN") && caps_tls.contains("IDLE"));
    assert!(
        r["wrong"]
            .as_str()
            .is_some_and(|s| s.contains("[AUTHENTICATIONFAILED]")),
        "{}",
        r["wrong"]
    );
    assert_eq!(r["auth"], "OK");
    let list = r["list"].to_string();
    for f in ["\\\"INBOX\\\"", "\\\"Sent\\\"", "\\\"Quarantine\\\""] {
        assert!(list.contains(f), "LIST lacks {f}: {list}");
    }
    assert_eq!(r["exists"], 3);
    // The same bytes as sent, after the Received header the fabric prepends (as the POP3 test).
    let body1 = r["body1"].as_str().context("body1")?;
    assert!(body1.starts_with("Received: from "), "{body1}");
    assert!(body1.ends_with(msgs[0]), "{body1:?}\n---\n{:?}", msgs[0]);
    assert!(
        r["peek_body"]
            .as_str()
            .is_some_and(|b| b.ends_with(msgs[1]))
    );
    assert!(
        r["body3"].as_str().is_some_and(|b| b.ends_with(msgs[2])),
        "UIDs are stable across sessions"
    );
    assert_eq!(r["text1"], "body of message 1\r\n.dot line\r\n");
    assert_eq!(r["partial"], "Received:");
    assert!(
        r["size_line"]
            .as_str()
            .is_some_and(|s| s.contains(&format!("RFC822.SIZE {}", body1.len()))),
        "{}",
        r["size_line"]
    );
    // \Seen after BODY[], not after BODY.PEEK[] (RFC 3501 6.4.5).
    assert_eq!(r["flags_after_peek"], json!([]));
    assert_eq!(r["flags_after_body"], json!(["\\Seen"]));
    let u = r["uids"].as_array().context("uids")?;
    let (u1, u2, u3) = (&u[0], &u[1], &u[2]);
    assert_eq!(r["unseen"], uidset(&[u2, u3]));
    assert_eq!(r["subject_search"], uidset(&[u3]));
    assert_eq!(r["body_search"], uidset(&[u2]));
    assert_eq!(r["or_search"], uidset(&[u1, u3]));
    assert_eq!(r["not_search"], uidset(&[u2, u3]));
    assert_eq!(r["larger"], uidset(&[u1, u2, u3]));
    assert_eq!(r["smaller"], json!([]));
    assert_eq!(r["seq_search"], json!([2, 3]));
    assert_eq!(r["since"], uidset(&[u1, u2, u3]));
    assert_eq!(r["before"], json!([]));
    assert!(
        r["store"].to_string().contains("\\\\Deleted"),
        "{}",
        r["store"]
    );
    assert_eq!(r["flagged"], uidset(&[u3]));
    assert_eq!(r["deleted"], uidset(&[u2]));
    // EXPUNGE removes only \Deleted, reported by sequence number.
    assert_eq!(r["expunge"], json!([r["u2_seq"]]));
    assert_eq!(r["after_expunge"], uidset(&[u1, u3]));
    assert_eq!(r["unseen_again"], uidset(&[u1, u3]));
    assert!(
        r["status"].to_string().contains("MESSAGES 2"),
        "{}",
        r["status"]
    );
    assert_eq!(r["uidvalidity"], r["uidvalidity2"]);
    assert_eq!(r["uids_again"], uidset(&[u1, u3]));
    let listing = common::store(&sandbox, "store-a")
        .list_mailbox("ann@acme.example", "INBOX", None)
        .await?;
    assert_eq!(listing.messages.len(), 2, "the store has what EXPUNGE left");
    let m = common::metrics(&sandbox, "intranet-a").await?;
    assert_eq!(
        common::metric_sum(&m, "fabric_imap_logins_total", &[("result", "invalid")]),
        1.0
    );
    assert!(common::metric_sum(&m, "fabric_imap_fetched_messages_total", &[]) >= 3.0);
    Ok(())
}

#[tokio::test]
async fn envelope_bodystructure_append_to_sent_and_quarantine_over_imap() -> anyhow::Result<()> {
    let (sandbox, env) = fabric().await?;
    common::python(
        &format!(
            "{PRELUDE}{}",
            r#"
import base64
from email.message import EmailMessage
eicar = base64.b64decode("WDVPIVAlQEFQWzRcUFpYNTQoUF4pN0NDKTd9JEVJQ0FSLVNUQU5EQVJELUFOVElWSVJVUy1URVNULUZJTEUhJEgrSCo=")
m = EmailMessage()
m["From"] = "bob@remote.example"; m["To"] = "ann@acme.example"; m["Subject"] = "infected"
m.set_content("see attachment")
m.add_attachment(eicar, maintype="application", subtype="octet-stream", filename="eicar.com")
s = smtplib.SMTP(os.environ["SMTP_HOST"], int(os.environ["SMTP_PORT"]), timeout=30)
s.send_message(m)
s.quit()
print("{}")
"#
        ),
        &env,
    )
    .await?;
    wait_for(&sandbox, "Quarantine", 1).await?;
    let r = common::python(
        &format!(
            "{PRELUDE}{}",
            r#"
import email.policy, time
from email.message import EmailMessage
def sexp(b):
    # A small reader for IMAP parenthesised lists (strings, NIL, numbers, atoms).
    pos = 0
    def item():
        nonlocal pos
        while b[pos:pos+1] == b" ": pos += 1
        c = b[pos:pos+1]
        if c == b"(":
            pos += 1; out = []
            while True:
                while b[pos:pos+1] == b" ": pos += 1
                if b[pos:pos+1] == b")":
                    pos += 1; return out
                out.append(item())
        if c == b'"':
            pos += 1; s = b""
            while b[pos:pos+1] != b'"':
                if b[pos:pos+1] == b"\\": pos += 1
                s += b[pos:pos+1]; pos += 1
            pos += 1; return s.decode()
        m = re.match(rb"[^ ()]+", b[pos:]); pos += len(m.group(0)); t = m.group(0).decode()
        return None if t == "NIL" else t
    return item()
out = {}
m = EmailMessage()
m["From"] = "Bob Sender <bob@remote.example>"; m["To"] = "ann@acme.example"
m["Cc"] = "Carl <carl@remote.example>"; m["Subject"] = "parts"; m["Message-ID"] = "<parts-1@remote.example>"
m.set_content("plain text body\n")
m.add_alternative("<p>html body</p>\n", subtype="html")
attachment = bytes(range(256)) * 4
m.add_attachment(attachment, maintype="application", subtype="octet-stream", filename="data.bin")
raw = m.as_bytes(policy=email.policy.SMTP)
M = connect()
out["list"] = decode(M.list()[1])
out["append"] = M.append("Sent", "(\\Seen)", imaplib.Time2Internaldate(time.time()), raw)[0]
out["append_missing"] = M.append("NoSuchFolder", None, None, b"Subject: x\r\n\r\ny\r\n")[1][0].decode()
typ, data = M.select("Sent")
out["sent_exists"] = int(data[0])
typ, data = M.fetch("1", "(ENVELOPE)")
env = sexp(re.search(rb"ENVELOPE (\(.*\))\)$", data[0]).group(1))
out["envelope"] = env
typ, data = M.fetch("1", "(BODYSTRUCTURE)")
out["bodystructure"] = sexp(re.search(rb"BODYSTRUCTURE (\(.*\))\)$", data[0]).group(1))
typ, data = M.fetch("1", "(FLAGS BODY.PEEK[1.1] BODY.PEEK[1.2.MIME] BODY.PEEK[2] BODY.PEEK[HEADER.FIELDS.NOT (To Cc)] BODY[])")
parts = [d for d in data if isinstance(d, tuple)]
out["p11"] = parts[0][1].decode()
out["p12mime"] = parts[1][1].decode()
out["p2"] = base64.b64decode(parts[2][1]) == attachment
out["hdr_not"] = parts[3][1].decode()
out["full_same"] = parts[4][1] == raw
out["expected_p11"] = m.get_body(("plain",)).get_payload(decode=False).replace("\n", "\r\n")
out["sent_flags"] = flags(M, uids(M, "ALL")[0])
typ, data = M.select("Quarantine")
out["quarantine_exists"] = int(data[0])
typ, data = M.fetch("1", "(BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
out["quarantine_subject"] = data[0][1].decode().strip()
typ, data = M.select("INBOX")
out["inbox_exists"] = int(data[0])
out["other_user"] = M.select("../bob@acme.example/INBOX")[0]
M.logout()
dump(out)
"#
        ),
        &env,
    )
    .await?;
    assert!(
        r["list"].to_string().contains("Quarantine"),
        "{}",
        r["list"]
    );
    assert_eq!(r["append"], "OK");
    assert!(
        r["append_missing"]
            .as_str()
            .is_some_and(|s| s.contains("[TRYCREATE]")),
        "{}",
        r["append_missing"]
    );
    assert_eq!(r["sent_exists"], 1);
    let env = &r["envelope"];
    assert_eq!(env[1], "parts");
    assert_eq!(
        env[2],
        json!([["Bob Sender", null, "bob", "remote.example"]])
    );
    assert_eq!(env[3], env[2], "sender defaults to from");
    assert_eq!(env[5], json!([[null, null, "ann", "acme.example"]]));
    assert_eq!(env[6], json!([["Carl", null, "carl", "remote.example"]]));
    assert_eq!(env[7], Value::Null);
    assert_eq!(env[9], "<parts-1@remote.example>");
    let bs = &r["bodystructure"];
    // multipart/mixed (multipart/alternative (text/plain, text/html), application/octet-stream)
    assert_eq!(bs[0][0][0], "TEXT");
    assert_eq!(bs[0][0][1], "PLAIN");
    assert_eq!(bs[0][1][0], "TEXT");
    assert_eq!(bs[0][1][1], "HTML");
    assert_eq!(bs[0][2], "ALTERNATIVE");
    assert_eq!(bs[1][0], "APPLICATION");
    assert_eq!(bs[1][1], "OCTET-STREAM");
    assert_eq!(bs[1][5], "BASE64");
    assert_eq!(bs[2], "MIXED");
    assert_eq!(r["p11"], r["expected_p11"]);
    assert!(
        r["p12mime"]
            .as_str()
            .is_some_and(|s| s.contains("text/html"))
    );
    assert_eq!(r["p2"], true, "BODY[2] is the attachment");
    let hdr_not = r["hdr_not"].as_str().context("hdr_not")?;
    assert!(hdr_not.contains("Subject: parts") && !hdr_not.contains("Cc:"));
    assert_eq!(r["full_same"], true, "BODY[] is the appended message");
    assert_eq!(r["sent_flags"], json!(["\\Seen"]));
    assert_eq!(r["quarantine_exists"], 1);
    assert_eq!(r["quarantine_subject"], "Subject: infected");
    assert_eq!(
        r["inbox_exists"], 0,
        "the infected message is not in the INBOX"
    );
    assert_eq!(r["other_user"], "NO");
    Ok(())
}

#[tokio::test]
async fn idle_reports_new_mail_within_seconds() -> anyhow::Result<()> {
    let (_sandbox, env) = fabric().await?;
    let r = common::python(
        &format!(
            "{PRELUDE}{}",
            r#"
import socket, time
out = {}
raw = socket.create_connection((H, P), timeout=30)
f = raw.makefile("rb"); f.readline()
raw.sendall(b"a STARTTLS\r\n"); f.readline()
s = ctx.wrap_socket(raw, server_hostname=H)
f = s.makefile("rb")
def cmd(line):
    s.sendall(line + b"\r\n")
    tag = line.split(b" ")[0]
    lines = []
    while True:
        l = f.readline()
        lines.append(l.decode())
        if l.startswith(tag + b" ") or not l:
            return lines
cmd(b'b LOGIN ann@acme.example "open sesame"')
out["select"] = cmd(b"c SELECT INBOX")
s.sendall(b"d IDLE\r\n")
out["cont"] = f.readline().decode()
start = time.time()
send(b"From: bob@remote.example\r\nTo: ann@acme.example\r\nSubject: wake up\r\n\r\nnew\r\n")
s.settimeout(15)
out["push"] = f.readline().decode()
out["seconds"] = time.time() - start
s.sendall(b"DONE\r\n")
out["done"] = f.readline().decode()
out["fetch"] = cmd(b"e FETCH 1 (BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
dump(out)
"#
        ),
        &env,
    )
    .await?;
    assert!(
        r["select"].to_string().contains("* 0 EXISTS"),
        "{}",
        r["select"]
    );
    assert!(r["cont"].as_str().is_some_and(|s| s.starts_with("+")));
    assert_eq!(r["push"], "* 1 EXISTS\r\n");
    assert!(
        r["seconds"].as_f64().is_some_and(|s| s < 10.0),
        "{}",
        r["seconds"]
    );
    assert!(
        r["done"].as_str().is_some_and(|s| s.starts_with("d OK")),
        "{}",
        r["done"]
    );
    assert!(
        r["fetch"].to_string().contains("Subject: wake up"),
        "{}",
        r["fetch"]
    );
    Ok(())
}

/// A mail client's first sync (`UID FETCH 1:* (UID FLAGS RFC822.SIZE ENVELOPE BODYSTRUCTURE)`) is
/// answered from the node's structure cache the second time: the same answer, with no body read from
/// the store; and one user's cached structures never answer for another's mailbox.
#[tokio::test]
async fn first_sync_listings_come_from_the_node_cache_per_user() -> anyhow::Result<()> {
    let (sandbox, env) = fabric().await?;
    let a = common::store(&sandbox, "store-a");
    a.put_user(
        "bob@acme.example",
        &json!({"password_hash": common::argon2_hash("open sesame")?, "notify": "none"}),
    )
    .await?;
    for (user, n) in [("ann@acme.example", 3), ("bob@acme.example", 1)] {
        for i in 0..n {
            let msg = format!(
                "From: carol@remote.example\r\nTo: {user}\r\nSubject: for {user} {i}\r\n\r\nbody {i}\r\n"
            );
            a.append(user, "INBOX", None, &[], msg.into_bytes()).await?;
        }
    }
    let list = r#"
import imaplib, json, os, ssl
m = imaplib.IMAP4(os.environ["IMAP_HOST"], int(os.environ["IMAP_PORT"]))
m.starttls(ssl_context=ssl.create_default_context(cafile=os.environ["CA"]))
m.login(os.environ["USER"], "open sesame")
m.select("INBOX", readonly=True)
typ, data = m.uid("FETCH", "1:*", "(UID FLAGS RFC822.SIZE ENVELOPE BODYSTRUCTURE)")
m.logout()
print(json.dumps({"typ": typ, "data": [d.decode() if isinstance(d, bytes) else [x.decode() for x in d] for d in data]}))
"#;
    let with = |user: &str| {
        let mut e = env.clone();
        e.push(("USER", user.to_string()));
        e
    };
    let fetched = |m: &str| common::metric_sum(m, "fabric_imap_fetched_messages_total", &[]);
    let hits =
        |m: &str| common::metric_sum(m, "fabric_imap_structure_cache_total", &[("result", "hit")]);
    let first = common::python(list, &with("ann@acme.example")).await?;
    let m1 = common::metrics(&sandbox, "intranet-a").await?;
    assert_eq!(first["typ"], "OK");
    let lines = first["data"].as_array().context("data")?;
    assert_eq!(lines.len(), 3, "{first}");
    for (i, line) in lines.iter().enumerate() {
        let line = line.as_str().context("line")?;
        assert!(
            line.contains(&format!("\"for ann@acme.example {i}\"")),
            "{line}"
        );
        assert!(line.contains("BODYSTRUCTURE (\"TEXT\" \"PLAIN\""), "{line}");
    }
    assert_eq!(
        fetched(&m1),
        3.0,
        "the first listing reads the three bodies"
    );
    let second = common::python(list, &with("ann@acme.example")).await?;
    let m2 = common::metrics(&sandbox, "intranet-a").await?;
    assert_eq!(second, first, "the cached answer is the computed one");
    assert_eq!(fetched(&m2), 3.0, "the second listing reads no body");
    assert_eq!(hits(&m2) - hits(&m1), 3.0);
    // bob's UID 1 is not ann's UID 1.
    let bob = common::python(list, &with("bob@acme.example")).await?;
    let lines = bob["data"].as_array().context("data")?;
    assert_eq!(lines.len(), 1, "{bob}");
    assert!(
        lines[0]
            .as_str()
            .is_some_and(|l| l.contains("\"for bob@acme.example 0\"")),
        "{bob}"
    );
    Ok(())
}
