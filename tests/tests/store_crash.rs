//! Acknowledged means durable: SIGKILL a store, or its mirror, in the middle of a burst of concurrent
//! writes, and every write that was answered with success is there after the restart, on both copies.

mod common;

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::store;
use nix::sys::signal::Signal;
use store_client::StoreClient;
use testkit::Sandbox;

const WRITERS: usize = 24;

/// Runs WRITERS concurrent writers against `client` (queue items and mailbox appends alternately)
/// until `stop` is set; returns the message ids whose writes were acknowledged.
async fn burst(client: StoreClient, stop: Arc<AtomicBool>) -> BTreeSet<String> {
    let acked = Arc::new(Mutex::new(BTreeSet::new()));
    let mut tasks = Vec::new();
    for w in 0..WRITERS {
        let client = client.clone();
        let acked = acked.clone();
        let stop = stop.clone();
        tasks.push(tokio::spawn(async move {
            let mut i = 0;
            while !stop.load(Ordering::SeqCst) {
                let id = format!("w{w}-{i}");
                let body = format!("Subject: {id}\r\n\r\n{}\r\n", "x".repeat(2000));
                let result = if i % 2 == 0 {
                    client
                        .enqueue("inbound", Some(&id), None, body)
                        .await
                        .map(|_| ())
                } else {
                    client
                        .append("ann@acme.example", "INBOX", Some(&id), &[], body)
                        .await
                        .map(|_| ())
                };
                match result {
                    Ok(()) => {
                        if let Ok(mut set) = acked.lock() {
                            set.insert(id);
                        }
                    }
                    // After the kill writes fail; keep trying until told to stop.
                    Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
                }
                i += 1;
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    acked.lock().map(|s| s.clone()).unwrap_or_default()
}

async fn held(client: &StoreClient, origin: Option<&str>) -> anyhow::Result<BTreeSet<String>> {
    let mut ids: BTreeSet<String> = client
        .list_queue("inbound", origin)
        .await?
        .into_iter()
        .map(|i| i.message_id)
        .collect();
    if let Ok(listing) = client
        .list_mailbox("ann@acme.example", "INBOX", origin)
        .await
    {
        ids.extend(listing.messages.into_iter().map(|m| m.message_id));
    }
    Ok(ids)
}

/// Starts the burst, SIGKILLs `victim` once enough writes are acknowledged, then stops the writers.
async fn kill_during_burst(
    sandbox: &mut Sandbox,
    victim: &str,
) -> anyhow::Result<BTreeSet<String>> {
    let client = store(sandbox, "store-a").with_timeout(Duration::from_secs(15));
    let stop = Arc::new(AtomicBool::new(false));
    let load = tokio::spawn(burst(client.clone(), stop.clone()));
    // Wait for a real burst: at least 150 queue items (and as many appends) acknowledged.
    testkit::wait_until(
        "a burst of acknowledged writes",
        Duration::from_secs(60),
        Duration::from_millis(20),
        || async {
            client
                .list_queue("inbound", None)
                .await
                .map(|v| v.len() >= 150)
                .unwrap_or(false)
        },
    )
    .await?;
    sandbox.kill(victim, Signal::SIGKILL)?;
    // Writers see failures now; let them try a little longer, then stop them.
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::SeqCst);
    let acked = tokio::time::timeout(Duration::from_secs(60), load).await??;
    Ok(acked)
}

#[tokio::test]
async fn sigkill_of_the_store_loses_no_acknowledged_write() -> anyhow::Result<()> {
    let mut sandbox = Sandbox::start("topology/mini.toml").await?;
    let acked = kill_during_burst(&mut sandbox, "store-a").await?;
    assert!(
        acked.len() >= 150,
        "the burst acknowledged {} writes",
        acked.len()
    );
    sandbox.start_node("store-a").await?;
    let a = store(&sandbox, "store-a");
    let b = store(&sandbox, "store-b");
    let on_a = held(&a, None).await?;
    let missing_a: Vec<_> = acked.difference(&on_a).collect();
    assert!(
        missing_a.is_empty(),
        "{} acknowledged writes lost on store-a: {:?}",
        missing_a.len(),
        &missing_a[..missing_a.len().min(10)]
    );
    let on_b = held(&b, Some("store-a")).await?;
    let missing_b: Vec<_> = acked.difference(&on_b).collect();
    assert!(
        missing_b.is_empty(),
        "{} acknowledged writes missing on the mirror",
        missing_b.len()
    );
    // And the store keeps working after the crash, mirrored as before.
    let w = a
        .enqueue("inbound", Some("after-restart"), None, "still here")
        .await?;
    assert_eq!(w.copies, vec!["store-a", "store-b"]);
    Ok(())
}

#[tokio::test]
async fn sigkill_of_the_mirror_loses_no_acknowledged_write() -> anyhow::Result<()> {
    let mut sandbox = Sandbox::start("topology/mini.toml").await?;
    let acked = kill_during_burst(&mut sandbox, "store-b").await?;
    assert!(
        acked.len() >= 150,
        "the burst acknowledged {} writes",
        acked.len()
    );
    sandbox.start_node("store-b").await?;
    let b = store(&sandbox, "store-b");
    let on_b = held(&b, Some("store-a")).await?;
    // Every acknowledged write was fsynced on the mirror before its answer, so it survived the kill.
    let missing: Vec<_> = acked.difference(&on_b).collect();
    assert!(
        missing.is_empty(),
        "{} acknowledged writes lost on the killed mirror",
        missing.len()
    );
    Ok(())
}

/// The body the log test writes under `id`: distinct per message, so a body put back from the wrong
/// row would show.
fn logged_body(id: &str) -> String {
    format!("Subject: {id}\r\n\r\n{}\r\n", id.repeat(300))
}

/// A mirror that misses writes while its origin restarts gets them from the origin's replication log,
/// which keeps operations but takes bodies from their rows: every body arrives byte for byte, and a
/// message expunged meanwhile arrives as expunged.
#[tokio::test]
async fn a_mirror_behind_a_restarted_store_gets_every_body_from_its_log() -> anyhow::Result<()> {
    const WRITES: usize = 30;
    let user = "ann@acme.example";
    let mut sandbox = Sandbox::start("topology/mini.toml").await?;
    sandbox.kill("store-b", Signal::SIGKILL)?;
    // Without its mirror no write is durable, so none is answered with success; each is committed on
    // store-a all the same and must reach store-b later.
    let a = store(&sandbox, "store-a").with_timeout(Duration::from_secs(1));
    let mut writes = tokio::task::JoinSet::new();
    for i in 0..WRITES {
        let a = a.clone();
        writes.spawn(async move {
            let q = format!("log-q{i}");
            let m = format!("log-m{i}");
            let queued = a.enqueue("inbound", Some(&q), None, logged_body(&q)).await;
            let appended = a
                .append(user, "INBOX", Some(&m), &[], logged_body(&m))
                .await;
            queued.is_ok() || appended.is_ok()
        });
    }
    while let Some(answered) = writes.join_next().await {
        assert!(!answered?, "a write was acknowledged without its mirror");
    }
    let local = store(&sandbox, "store-a");
    testkit::wait_until(
        "store-a committed every write",
        Duration::from_secs(20),
        Duration::from_millis(50),
        || async {
            let items = local.list_queue("inbound", None).await.map(|v| v.len());
            let messages = local.list_mailbox(user, "INBOX", None).await;
            items.ok() == Some(WRITES) && messages.map(|l| l.messages.len()).ok() == Some(WRITES)
        },
    )
    .await?;
    let first_uid = local.list_mailbox(user, "INBOX", None).await?.messages[0].uid;
    let _ = a.expunge(user, "INBOX", Some(&[first_uid])).await;
    // Restarted, store-a has no batch in memory: store-b is caught up from the log alone.
    sandbox.kill("store-a", Signal::SIGKILL)?;
    sandbox.start_node("store-a").await?;
    sandbox.start_node("store-b").await?;
    let a = store(&sandbox, "store-a");
    let b = store(&sandbox, "store-b");
    let on_a = a.list_mailbox(user, "INBOX", None).await?;
    assert_eq!(on_a.messages.len(), WRITES - 1, "the expunge was committed");
    testkit::wait_until(
        "store-b caught up with store-a",
        Duration::from_secs(30),
        Duration::from_millis(100),
        || async {
            let items = b
                .list_queue("inbound", Some("store-a"))
                .await
                .map(|v| v.len());
            let messages = b.list_mailbox(user, "INBOX", Some("store-a")).await;
            items.ok() == Some(WRITES)
                && messages.map(|l| l.messages.len()).ok() == Some(WRITES - 1)
        },
    )
    .await?;
    for item in b.list_queue("inbound", Some("store-a")).await? {
        let body = b.get_item("inbound", item.id, Some("store-a")).await?;
        assert_eq!(
            body,
            logged_body(&item.message_id).as_bytes(),
            "{}",
            item.message_id
        );
    }
    let on_b = b.list_mailbox(user, "INBOX", Some("store-a")).await?;
    assert!(on_b.messages.iter().all(|m| m.uid != first_uid));
    assert_eq!(on_b.uidnext, on_a.uidnext);
    for m in on_b.messages {
        let body = b.fetch(user, "INBOX", m.uid, Some("store-a")).await?;
        assert_eq!(
            body,
            logged_body(&m.message_id).as_bytes(),
            "{}",
            m.message_id
        );
    }
    Ok(())
}

/// How many bytes of its newest body segment a (dead) store's committed rows may reference.
fn committed_segment_size(sandbox: &Sandbox, node: &str) -> anyhow::Result<u64> {
    let db = rusqlite::Connection::open(sandbox.data_dir(node).join("store.sqlite"))?;
    let size: i64 = db.query_row(
        "SELECT size FROM body_segments ORDER BY id DESC LIMIT 1",
        [],
        |r| r.get(0),
    )?;
    Ok(u64::try_from(size)?)
}

/// The newest body segment of a store's own data.
fn newest_segment(sandbox: &Sandbox, node: &str) -> anyhow::Result<std::path::PathBuf> {
    let dir = sandbox.data_dir(node).join("store.sqlite.bodies");
    let mut segments: Vec<_> = std::fs::read_dir(&dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "seg"))
        .collect();
    segments.sort();
    segments
        .pop()
        .ok_or_else(|| anyhow::anyhow!("no body segment in {}", dir.display()))
}

/// Commits and bodies are synced together, so a machine that stops before a sync may keep a commit
/// whose bodies it lost. Simulated here by cutting the end off the killed store's newest segment: at
/// start-up the store finds rows whose bodies are not there, takes its mirror's copy (which held every
/// acknowledged write before it was answered) and serves every acknowledged body whole.
#[tokio::test]
async fn a_store_whose_disk_lost_bodies_takes_its_mirrors_copy() -> anyhow::Result<()> {
    let mut sandbox = Sandbox::start("topology/mini.toml").await?;
    let acked = kill_during_burst(&mut sandbox, "store-a").await?;
    assert!(acked.len() >= 150, "the burst acknowledged {}", acked.len());
    let segment = newest_segment(&sandbox, "store-a")?;
    // Cut into what committed rows reference: past the committed size lie only the bodies of a
    // batch that never committed (SIGKILL between their write and the commit), which the store
    // drops at start-up anyway.
    let committed = committed_segment_size(&sandbox, "store-a")?;
    assert!(
        committed > 20_000,
        "the segment holds {committed} committed bytes"
    );
    std::fs::OpenOptions::new()
        .write(true)
        .open(&segment)?
        .set_len(committed - 10_000)?;
    sandbox.start_node("store-a").await?;
    let a = store(&sandbox, "store-a");
    let metrics = common::metrics(&sandbox, "store-a").await?;
    assert!(
        common::metric_sum(&metrics, "fabric_store_rebuilds_total", &[]) >= 1.0,
        "the damaged store did not take its mirror's copy"
    );
    // Every acknowledged queue item reads back whole (the cut bodies were among the newest).
    let items = a.list_queue("inbound", None).await?;
    let queued: BTreeSet<String> = items.iter().map(|i| i.message_id.clone()).collect();
    let mut read = 0;
    for item in &items {
        let body = a.get_item("inbound", item.id, None).await?;
        let expected = format!(
            "Subject: {}\r\n\r\n{}\r\n",
            item.message_id,
            "x".repeat(2000)
        );
        assert_eq!(body, expected.as_bytes(), "item {}", item.message_id);
        read += 1;
    }
    let listing = a.list_mailbox("ann@acme.example", "INBOX", None).await?;
    for m in &listing.messages {
        let body = a.fetch("ann@acme.example", "INBOX", m.uid, None).await?;
        assert!(body.starts_with(format!("Subject: {}\r\n", m.message_id).as_bytes()));
        read += 1;
    }
    let held: BTreeSet<String> = queued
        .into_iter()
        .chain(listing.messages.iter().map(|m| m.message_id.clone()))
        .collect();
    let missing: Vec<_> = acked.difference(&held).collect();
    assert!(
        missing.is_empty(),
        "{} acknowledged writes lost",
        missing.len()
    );
    assert!(read >= acked.len(), "read {read} bodies");
    Ok(())
}
