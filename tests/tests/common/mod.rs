//! Helpers shared by the system tests.
#![allow(dead_code)]

pub mod raw_smtp;

use std::time::Duration;

use anyhow::{Context, bail};

use serde_json::Value;
use store_client::{Method, StoreClient};
use testkit::Sandbox;

/// A client for a store of the sandbox, with a timeout short enough for tests.
pub fn store(sandbox: &Sandbox, node: &str) -> StoreClient {
    StoreClient::new(sandbox.url(node, "store")).with_timeout(Duration::from_secs(20))
}

/// The text of a node's `/metrics`.
pub async fn metrics(sandbox: &Sandbox, node: &str) -> anyhow::Result<String> {
    let admin = StoreClient::new(sandbox.admin_url(node));
    let resp = admin
        .raw(Method::GET, "/metrics", &[], bytes::Bytes::new())
        .await?;
    Ok(String::from_utf8_lossy(&resp.body).into_owned())
}

/// Sum of the samples of `name` whose labels contain every `label="value"` pair given.
pub fn metric_sum(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (metric, rest) = match series.split_once('{') {
                Some((m, r)) => (m, r),
                None => (series, ""),
            };
            if metric != name {
                return None;
            }
            if !labels
                .iter()
                .all(|(k, v)| rest.contains(&format!("{k}=\"{v}\"")))
            {
                return None;
            }
            value.parse::<f64>().ok()
        })
        .sum()
}

/// The JSON of a node's `/v1/replication`.
pub async fn replication(sandbox: &Sandbox, node: &str) -> anyhow::Result<Value> {
    Ok(store(sandbox, node).replication().await?)
}

/// The state of `mirror` as `node` sees it ("up"/"in_sync"/...).
pub fn mirror_state(report: &Value, mirror: &str) -> Option<String> {
    report["mirrors"]
        .as_array()?
        .iter()
        .find(|m| m["mirror"] == mirror)
        .and_then(|m| m["state"].as_str().map(str::to_string))
}

/// A valid argon2id PHC string for test users (nobody logs in with it).
pub const HASH: &str = "$argon2id$v=19$m=19456,t=2,p=1$c29tZXNhbHRzb21lc2FsdA$2P1Q3tZrGJ2nVhC/6Q6zH7JgN2i0pZ6bq0m1bJ3JwH8";

/// The mini fabric with the mailbox ann@acme.example in its directory.
pub async fn fabric_with_ann() -> anyhow::Result<Sandbox> {
    let sandbox = Sandbox::start("topology/mini.toml").await?;
    store(&sandbox, "store-a")
        .put_user(
            "ann@acme.example",
            &serde_json::json!({"password_hash": HASH, "notify": "none"}),
        )
        .await?;
    Ok(sandbox)
}

/// `ADDR:PORT` of the mini fabric's Internet mail server.
pub fn smtp_addr(sandbox: &Sandbox) -> String {
    sandbox
        .url("mx-a", "smtp")
        .trim_start_matches("http://")
        .to_string()
}

/// An argon2id PHC string of `password` (a fixed salt: tests need no secrecy, only real hashes).
pub fn argon2_hash(password: &str) -> anyhow::Result<String> {
    use argon2::PasswordHasher;
    let salt = argon2::password_hash::SaltString::encode_b64(b"fixed-test-salt!")
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(argon2::Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map_err(|e| anyhow::anyhow!("{e}"))?
        .to_string())
}

/// Runs a Python script (real clients: smtplib, imaplib, poplib) with `env`; parses the JSON it prints.
pub async fn python(script: &str, env: &[(&str, String)]) -> anyhow::Result<Value> {
    let mut cmd = tokio::process::Command::new("python3");
    cmd.arg("-c").arg(script).kill_on_drop(true);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().await.context("python3 must be installed")?;
    if !out.status.success() {
        bail!("python failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(serde_json::from_slice(&out.stdout)?)
}

/// `(host, port)` of a sandbox URL such as `http://127.1.0.21:7100`.
pub fn host_port(url: &str) -> (String, String) {
    let a = url.trim_start_matches("http://");
    let (h, p) = a.rsplit_once(':').unwrap_or((a, "0"));
    (h.to_string(), p.to_string())
}

/// Calls `f` every 200 ms until it gives `Some` (or an error) or `wait` passes.
pub async fn poll<T, F, Fut>(what: &str, wait: std::time::Duration, mut f: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<Option<T>>>,
{
    let deadline = std::time::Instant::now() + wait;
    loop {
        if let Some(v) = f().await? {
            return Ok(v);
        }
        if std::time::Instant::now() > deadline {
            anyhow::bail!("{what}: not within {wait:?}");
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}
