//! SMTP rows: Postfix's own load generator (`smtp-source`) against one Internet mail server of the
//! fabric and against Postfix configured as a durable receiver (scripts/postfix-bench.sh), the same
//! load for both. Accept: until `smtp-source` has every 250. End to end: until every message can be
//! read by the recipient (in the fabric: in the mailbox on its home store, where POP3 reads it; in
//! Postfix: a file in `Maildir/new`). Latency: every transaction its own session, timed by our own
//! client (`smtp-source` reports no per-message times), the same for both.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use store_client::StoreClient;

/// One round of one system.
#[derive(Debug, Clone)]
pub struct SmtpSample {
    pub accept_per_s: f64,
    pub e2e_per_s: f64,
}

/// Whether the load generator is installed (it comes with Postfix).
pub fn available() -> bool {
    Path::new("/usr/sbin/smtp-source").exists()
}

/// Installs and starts Postfix for the comparison; returns its `Maildir/new`.
pub fn setup_postfix(workspace: &Path) -> anyhow::Result<PathBuf> {
    let out = std::process::Command::new(workspace.join("scripts/postfix-bench.sh"))
        .output()
        .context("running scripts/postfix-bench.sh")?;
    if !out.status.success() {
        bail!(
            "postfix setup failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let maildir = String::from_utf8_lossy(&out.stdout).trim().to_string();
    Ok(PathBuf::from(maildir).join("new"))
}

async fn smtp_source(
    target: &str,
    rcpt: &str,
    messages: usize,
    sessions: usize,
) -> anyhow::Result<Duration> {
    let start = Instant::now();
    let out = tokio::process::Command::new("/usr/sbin/smtp-source")
        .args([
            "-s",
            &sessions.to_string(),
            "-m",
            &messages.to_string(),
            "-l",
            "4096",
        ])
        .args(["-f", "sender@test.example", "-t", rcpt, target])
        .kill_on_drop(true)
        .output()
        .await?;
    let took = start.elapsed();
    if !out.status.success() {
        bail!(
            "smtp-source against {target}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(took)
}

async fn wait_for(
    what: &str,
    mut count: impl AsyncFnMut() -> usize,
    want: usize,
) -> anyhow::Result<()> {
    let start = Instant::now();
    while count().await < want {
        if start.elapsed() > Duration::from_secs(300) {
            bail!("{what}: not all {want} messages after 5 minutes");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

async fn mailbox_count(store: &StoreClient, user: &str) -> usize {
    store
        .folders(user, None)
        .await
        .ok()
        .and_then(|v| {
            v["folders"]
                .as_array()?
                .iter()
                .find(|f| f["name"] == "INBOX")
                .and_then(|f| f["messages"].as_u64())
        })
        .unwrap_or(0) as usize
}

/// The fabric: `smtp-source` into `smtp_target` for `user`, whose mailbox is on `store`.
pub async fn fabric(
    smtp_target: &str,
    store: &StoreClient,
    user: &str,
    messages: usize,
    sessions: usize,
) -> anyhow::Result<SmtpSample> {
    let before = mailbox_count(store, user).await;
    let start = Instant::now();
    let accept = smtp_source(smtp_target, user, messages, sessions).await?;
    in_mailbox(store, user, before + messages).await?;
    let e2e = start.elapsed();
    Ok(SmtpSample {
        accept_per_s: messages as f64 / accept.as_secs_f64(),
        e2e_per_s: messages as f64 / e2e.as_secs_f64(),
    })
}

/// Waits until `user`'s INBOX holds `want` messages.
async fn in_mailbox(store: &StoreClient, user: &str, want: usize) -> anyhow::Result<()> {
    wait_for(
        "fabric mailbox",
        async || mailbox_count(store, user).await,
        want,
    )
    .await
}

/// Waits until `maildir_new` holds `want` files.
async fn in_maildir(maildir_new: &Path, want: usize) -> anyhow::Result<()> {
    wait_for("postfix Maildir", async || files_in(maildir_new), want).await
}

fn files_in(dir: &Path) -> usize {
    std::fs::read_dir(dir).map(|d| d.count()).unwrap_or(0)
}

/// Postfix on 127.0.0.1:2525, delivering into `maildir_new`.
pub async fn postfix(
    maildir_new: &Path,
    messages: usize,
    sessions: usize,
) -> anyhow::Result<SmtpSample> {
    let before = files_in(maildir_new);
    let start = Instant::now();
    let accept = smtp_source("127.0.0.1:2525", "user@bench.example", messages, sessions).await?;
    in_maildir(maildir_new, before + messages).await?;
    let e2e = start.elapsed();
    Ok(SmtpSample {
        accept_per_s: messages as f64 / accept.as_secs_f64(),
        e2e_per_s: messages as f64 / e2e.as_secs_f64(),
    })
}

/// Latency: `messages` transactions, each its own session (connect to QUIT, as a remote MTA sends),
/// over `sessions` concurrent senders into the fabric's `target`; returns once every message is in
/// `user`'s mailbox too, so the next round starts from a quiet fabric.
pub async fn fabric_latency(
    target: std::net::SocketAddr,
    store: &StoreClient,
    user: &str,
    messages: usize,
    sessions: usize,
) -> anyhow::Result<crate::Sample> {
    let before = mailbox_count(store, user).await;
    let body = std::sync::Arc::new(crate::edge_overhead::message());
    let sample = crate::edge_overhead::round(target, user, messages, sessions, body).await?;
    in_mailbox(store, user, before + messages).await?;
    Ok(sample)
}

/// The same for Postfix on 127.0.0.1:2525, until every message is a file in `maildir_new`.
pub async fn postfix_latency(
    maildir_new: &Path,
    messages: usize,
    sessions: usize,
) -> anyhow::Result<crate::Sample> {
    let before = files_in(maildir_new);
    let body = std::sync::Arc::new(crate::edge_overhead::message());
    let target = std::net::SocketAddr::from(([127, 0, 0, 1], 2525));
    let sample =
        crate::edge_overhead::round(target, "user@bench.example", messages, sessions, body).await?;
    in_maildir(maildir_new, before + messages).await?;
    Ok(sample)
}
