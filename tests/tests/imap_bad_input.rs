//! Bad input on the IMAP port, each case with a raw socket (Python `socket` + `ssl`): the tagged
//! answer RFC 3501 / 5530 / 7888 give, counted in `fabric_imap_refusals_total`, and the server still
//! serving afterwards.

mod common;

use anyhow::{Context, bail};
use serde_json::{Value, json};

#[tokio::test]
async fn bad_imap_input_gets_the_rfc_answers_and_the_server_keeps_serving() -> anyhow::Result<()> {
    let sandbox = testkit::Sandbox::start("topology/mini.toml").await?;
    let hash = common::argon2_hash("open sesame")?;
    let a = common::store(&sandbox, "store-a");
    a.put_user(
        "ann@acme.example",
        &json!({"password_hash": hash, "notify": "none"}),
    )
    .await?;
    // Another user's mail, which ann must never reach.
    a.append(
        "bob@acme.example",
        "INBOX",
        None,
        &[],
        &b"Subject: bob's secret\r\n\r\nsecret\r\n"[..],
    )
    .await?;
    let url = sandbox.url("intranet-a", "imap");
    let (host, port) = url
        .trim_start_matches("http://")
        .rsplit_once(':')
        .context("address")?;
    let out = tokio::process::Command::new("python3")
        .arg("-c")
        .arg(SCRIPT)
        .env("H", host)
        .env("P", port)
        .env("CA", sandbox.tls_dir().join("ca.pem"))
        .kill_on_drop(true)
        .output()
        .await?;
    if !out.status.success() {
        bail!("python: {}", String::from_utf8_lossy(&out.stderr));
    }
    let r: Value = serde_json::from_slice(&out.stdout)?;
    let starts = |k: &str, prefix: &str| {
        assert!(
            r[k].as_str().is_some_and(|s| s.starts_with(prefix)),
            "{k}: expected {prefix:?}, got {}",
            r[k]
        );
    };
    assert!(
        r["greeting"]
            .as_str()
            .is_some_and(|g| g.contains("STARTTLS") && g.contains("LOGINDISABLED")),
        "{}",
        r["greeting"]
    );
    starts("login_plain", "a NO [PRIVACYREQUIRED]");
    starts("auth_plain", "b NO [PRIVACYREQUIRED]");
    starts("unknown", "c BAD");
    starts("select_before_login", "d BAD");
    starts("too_long", "e BAD [TOOBIG]");
    starts("noop_after_long", "f OK");
    starts("huge_append", "g NO [TOOBIG]");
    starts("huge_login", "h BAD [TOOBIG]");
    starts("noop_after_huge", "i OK");
    starts("nonsync", "j BAD [TOOBIG]");
    assert_eq!(
        r["after_nonsync"], "closed",
        "the literal's octets are never read as commands"
    );
    starts("starttls", "k OK");
    assert_eq!(
        r["injected"],
        Value::Null,
        "the injected NOOP was answered inside TLS"
    );
    let caps = r["caps_tls"].as_str().context("caps")?;
    assert!(
        !caps.contains("STARTTLS") && !caps.contains("LOGINDISABLED"),
        "{caps}"
    );
    starts("starttls_again", "n BAD");
    starts("wrong_password", "o NO [AUTHENTICATIONFAILED]");
    assert!(
        r["wrong_seconds"].as_f64().is_some_and(|s| s >= 0.9),
        "wrong passwords are slowed"
    );
    starts("login", "p OK");
    starts("fetch_unselected", "q BAD");
    starts("select_other_user", "r NO");
    starts("select_other_user2", "s NO");
    starts("status_other_user", "t NO");
    starts("select", "u OK");
    starts("bad_seq", "v BAD");
    starts("store_bad_flag", "w BAD");
    starts("logout", "* BYE");
    starts("still_serving", "* OK");
    let m = common::metrics(&sandbox, "intranet-a").await?;
    let refused =
        |kind: &str| common::metric_sum(&m, "fabric_imap_refusals_total", &[("kind", kind)]);
    assert_eq!(refused("login_before_tls"), 2.0);
    assert_eq!(refused("unknown_command"), 1.0);
    assert_eq!(refused("line_too_long"), 1.0);
    assert_eq!(refused("literal_too_big"), 3.0);
    assert_eq!(refused("starttls_injection"), 1.0);
    assert!(refused("bad_state") >= 3.0);
    assert_eq!(
        common::metric_sum(&m, "fabric_imap_logins_total", &[("result", "invalid")]),
        1.0
    );
    Ok(())
}

const SCRIPT: &str = r#"
import json, os, socket, ssl, time, base64
H, P = os.environ["H"], int(os.environ["P"])
ctx = ssl.create_default_context(cafile=os.environ["CA"])
out = {}
def conn():
    s = socket.create_connection((H, P), timeout=30)
    f = s.makefile("rb")
    return s, f, f.readline().decode()
def tagged(s, f, data, tag):
    s.sendall(data)
    while True:
        l = f.readline()
        if not l or l.startswith(tag + b" "):
            return l.decode()
s, f, out["greeting"] = conn()
out["login_plain"] = tagged(s, f, b'a LOGIN ann@acme.example "open sesame"\r\n', b"a")
out["auth_plain"] = tagged(s, f, b"b AUTHENTICATE PLAIN " + base64.b64encode(b"\0ann@acme.example\0open sesame") + b"\r\n", b"b")
out["unknown"] = tagged(s, f, b"c FROBNICATE\r\n", b"c")
out["select_before_login"] = tagged(s, f, b"d SELECT INBOX\r\n", b"d")
out["too_long"] = tagged(s, f, b"e NOOP " + b"x" * 9000 + b"\r\n", b"e")
out["noop_after_long"] = tagged(s, f, b"f NOOP\r\n", b"f")
# Huge literals: refused at once, no continuation request, nothing read as a command.
s.sendall(b"g APPEND INBOX {99999999999}\r\n")
out["huge_append"] = f.readline().decode()
s.sendall(b"h LOGIN {99999999999999999999999}\r\n")
out["huge_login"] = f.readline().decode()
out["noop_after_huge"] = tagged(s, f, b"i NOOP\r\n", b"i")
s.close()
# LITERAL-: a non-synchronizing literal over 4096 octets gets BAD and the session ends.
s, f, _ = conn()
out["nonsync"] = tagged(s, f, b"j LOGIN {4097+}\r\n", b"j")
try:
    s.sendall(b"X NOOP\r\n" * 512 + b"X\r\n")
    rest = f.read()
except OSError:
    rest = b""
out["after_nonsync"] = "closed" if b"X OK" not in rest else rest.decode()
s.close()
# STARTTLS injection: a command in the same packet as STARTTLS is never answered inside TLS.
s, f, _ = conn()
s.sendall(b"k STARTTLS\r\nl NOOP\r\n")
out["starttls"] = f.readline().decode()
t = ctx.wrap_socket(s, server_hostname=H)
t.settimeout(1.0)
try:
    out["injected"] = t.recv(200).decode()
except socket.timeout:
    out["injected"] = None
t.settimeout(30)
f = t.makefile("rb")
t.sendall(b"m CAPABILITY\r\n")
out["caps_tls"] = f.readline().decode()
f.readline()
out["starttls_again"] = tagged(t, f, b"n STARTTLS\r\n", b"n")
start = time.time()
out["wrong_password"] = tagged(t, f, b'o LOGIN ann@acme.example "wrong"\r\n', b"o")
out["wrong_seconds"] = time.time() - start
out["login"] = tagged(t, f, b'p LOGIN ann@acme.example "open sesame"\r\n', b"p")
out["fetch_unselected"] = tagged(t, f, b"q FETCH 1 (FLAGS)\r\n", b"q")
out["select_other_user"] = tagged(t, f, b'r SELECT "../bob@acme.example/INBOX"\r\n', b"r")
out["select_other_user2"] = tagged(t, f, b's SELECT "bob@acme.example/INBOX"\r\n', b"s")
out["status_other_user"] = tagged(t, f, b't STATUS "../bob@acme.example/INBOX" (MESSAGES)\r\n', b"t")
out["select"] = tagged(t, f, b"u SELECT INBOX\r\n", b"u")
out["bad_seq"] = tagged(t, f, b"v FETCH 5 (FLAGS)\r\n", b"v")
out["store_bad_flag"] = tagged(t, f, b"w STORE 1 +FLAGS (\\Bogus(\r\n", b"w")
t.sendall(b"x LOGOUT\r\n")
out["logout"] = f.readline().decode()
t.close()
s, f, out["still_serving"] = conn()
s.close()
print(json.dumps(out))
"#;
