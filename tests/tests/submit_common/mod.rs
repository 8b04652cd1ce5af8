//! Helpers for the submission and outbound tests: users with real argon2 passwords, Python's
//! smtplib through STARTTLS verified against the fabric's CA, and mailbox reads.
#![allow(dead_code)]

use std::time::Duration;

use anyhow::{Context, bail};
use serde_json::{Value, json};
use testkit::Sandbox;

pub const PASSWORD: &str = "open sesame";

/// A PHC argon2id hash of `password`.
pub fn hash(password: &str) -> anyhow::Result<String> {
    use argon2::PasswordHasher;
    let salt = argon2::password_hash::SaltString::encode_b64(b"fixed-test-salt!")
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(argon2::Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map_err(|e| anyhow::anyhow!("{e}"))?
        .to_string())
}

/// Adds mailboxes (password [`PASSWORD`]) to the directory of the sandbox.
pub async fn add_users(sandbox: &Sandbox, users: &[&str]) -> anyhow::Result<()> {
    let h = hash(PASSWORD)?;
    let directory = sandbox
        .topology()
        .directory_store()
        .context("no store")?
        .name
        .clone();
    for u in users {
        crate::common::store(sandbox, &directory)
            .put_user(u, &json!({"password_hash": h, "notify": "none"}))
            .await?;
    }
    Ok(())
}

/// `(host, port)` of a node's service.
pub fn host_port(sandbox: &Sandbox, node: &str, service: &str) -> (String, String) {
    let url = sandbox.url(node, service);
    let a = url.trim_start_matches("http://");
    let (h, p) = a.rsplit_once(':').unwrap_or((a, "0"));
    (h.to_string(), p.to_string())
}

/// Runs a Python script with `HOST`, `PORT` (the intranet server's submission port) and `CA` set;
/// returns what it printed as JSON.
pub async fn python(sandbox: &Sandbox, node: &str, script: &str) -> anyhow::Result<Value> {
    let (host, port) = host_port(sandbox, node, "submission");
    let out = tokio::process::Command::new("python3")
        .arg("-c")
        .arg(script)
        .env("HOST", host)
        .env("PORT", port)
        .env("CA", sandbox.tls_dir().join("ca.pem"))
        .env("PASSWORD", PASSWORD)
        .kill_on_drop(true)
        .output()
        .await
        .context("python3 must be installed")?;
    if !out.status.success() {
        bail!("python failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(serde_json::from_slice(&out.stdout)?)
}

/// Submits one message with smtplib (STARTTLS verified, AUTH PLAIN); returns the DATA reply text.
pub async fn submit(
    sandbox: &Sandbox,
    node: &str,
    user: &str,
    rcpts: &[&str],
    body: &str,
) -> anyhow::Result<String> {
    let script = format!(
        r#"
import json, os, smtplib, ssl
ctx = ssl.create_default_context(cafile=os.environ["CA"])
s = smtplib.SMTP(os.environ["HOST"], int(os.environ["PORT"]), timeout=60)
s.starttls(context=ctx)
s.login({user:?}, os.environ["PASSWORD"])
s.mail({user:?})
for r in {rcpts:?}:
    code, text = s.rcpt(r)
    assert code == 250, (r, code, text)
code, text = s.data({body:?}.encode())
s.quit()
print(json.dumps([code, text.decode()]))
"#,
        rcpts = rcpts.to_vec(),
    );
    let r = python(sandbox, node, &script).await?;
    if r[0] != 250 {
        bail!("DATA refused: {r}");
    }
    Ok(r[1].as_str().unwrap_or("").to_string())
}

/// The fabric message id in a `250 2.0.0 queued as ID` text.
pub fn queued_id(text: &str) -> anyhow::Result<String> {
    Ok(text
        .rsplit(' ')
        .next()
        .filter(|id| id.len() == 32)
        .with_context(|| format!("no id in {text:?}"))?
        .to_string())
}

/// The messages (fabric id, body) of a folder, read from the mailbox's home store.
pub async fn folder(
    sandbox: &Sandbox,
    user: &str,
    folder: &str,
) -> anyhow::Result<Vec<(String, String)>> {
    let home = sandbox
        .topology()
        .mailbox_store(user)
        .context("no home store")?
        .name
        .clone();
    let store = crate::common::store(sandbox, &home);
    let listing = match store.list_mailbox(user, folder, None).await {
        Ok(l) => l.messages,
        Err(e) if e.status() == Some(store_client::StatusCode::NOT_FOUND) => Vec::new(),
        Err(e) => return Err(e.into()),
    };
    let mut out = Vec::new();
    for m in listing {
        let body = store.fetch(user, folder, m.uid, None).await?;
        out.push((m.message_id, String::from_utf8_lossy(&body).into_owned()));
    }
    Ok(out)
}

/// Waits until `folder` of `user` holds at least `n` messages; returns them.
pub async fn wait_for(
    sandbox: &Sandbox,
    user: &str,
    name: &str,
    n: usize,
    timeout: Duration,
) -> anyhow::Result<Vec<(String, String)>> {
    let start = std::time::Instant::now();
    loop {
        let msgs = folder(sandbox, user, name).await?;
        if msgs.len() >= n {
            return Ok(msgs);
        }
        if start.elapsed() > timeout {
            bail!(
                "{user} {name} has {} message(s) after {timeout:?}, wanted {n}",
                msgs.len()
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
