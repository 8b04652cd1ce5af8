//! A store that lost its disk is rebuilt from its mirror, online; an operator can rebuild a running one.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::store;
use nix::sys::signal::Signal;
use serde_json::json;
use store_client::{Method, StoreClient};
use testkit::Sandbox;

#[tokio::test]
async fn a_wiped_store_is_rebuilt_from_its_mirror() -> anyhow::Result<()> {
    let mut sandbox = Sandbox::start("topology/mini.toml").await?;
    let a = store(&sandbox, "store-a");
    for i in 0..200 {
        a.enqueue(
            "inbound",
            Some(&format!("q-{i}")),
            None,
            format!("queued {i}"),
        )
        .await?;
        a.append(
            "bob@acme.example",
            "INBOX",
            Some(&format!("m-{i}")),
            &[],
            format!("Subject: {i}\r\n\r\nbody\r\n"),
        )
        .await?;
    }
    a.call(Method::PUT, "/v1/blocklist/spam.example", &[], Bytes::new())
        .await?;
    let before = a.list_mailbox("bob@acme.example", "INBOX", None).await?;

    // The disk dies: kill the process, delete its data, start it again on an empty disk.
    sandbox.kill("store-a", Signal::SIGKILL)?;
    sandbox.wipe("store-a")?;
    assert!(!sandbox.data_dir("store-a").join("store.sqlite").exists());
    sandbox.start_node("store-a").await?;

    let a = store(&sandbox, "store-a");
    assert_eq!(
        a.list_queue("inbound", None).await?.len(),
        200,
        "every queue item is back"
    );
    let after = a.list_mailbox("bob@acme.example", "INBOX", None).await?;
    assert_eq!(
        after.uidvalidity, before.uidvalidity,
        "UIDVALIDITY survives the rebuild"
    );
    let uids = |l: &store_client::MailboxListing| {
        l.messages
            .iter()
            .map(|m| (m.uid, m.message_id.clone()))
            .collect::<Vec<_>>()
    };
    assert_eq!(
        uids(&after),
        uids(&before),
        "same messages under the same UIDs"
    );
    assert_eq!(
        &a.fetch("bob@acme.example", "INBOX", after.messages[7].uid, None)
            .await?[..],
        b"Subject: 7\r\n\r\nbody\r\n"
    );
    let bl = a
        .call(Method::GET, "/v1/blocklist", &[], Bytes::new())
        .await?;
    assert_eq!(
        bl.json().map(|j| j["entries"][0]["entry"].clone()),
        Some(json!("spam.example"))
    );
    let metrics = common::metrics(&sandbox, "store-a").await?;
    assert!(common::metric_sum(&metrics, "fabric_store_rebuilds_total", &[]) >= 1.0);

    // It carries on where it left off: new writes get new UIDs and reach the mirror.
    let next = a
        .append(
            "bob@acme.example",
            "INBOX",
            Some("m-new"),
            &[],
            "Subject: new\r\n\r\n",
        )
        .await?;
    assert_eq!(next.value.uid, before.uidnext);
    assert_eq!(next.copies, vec!["store-a", "store-b"]);
    let dup = a
        .append("bob@acme.example", "INBOX", Some("m-3"), &[], "again")
        .await?;
    assert!(
        dup.value.duplicate,
        "delivery stays exactly-once across the rebuild"
    );
    let b = store(&sandbox, "store-b");
    testkit::wait_until(
        "the mirror to hold the new message",
        Duration::from_secs(10),
        Duration::from_millis(50),
        || async {
            b.list_mailbox("bob@acme.example", "INBOX", Some("store-a"))
                .await
                .map(|l| l.messages.len() == 201)
                .unwrap_or(false)
        },
    )
    .await?;
    Ok(())
}

#[tokio::test]
async fn an_operator_rebuilds_a_running_store() -> anyhow::Result<()> {
    let sandbox = Sandbox::start("topology/mini.toml").await?;
    let a = store(&sandbox, "store-a");
    for i in 0..50 {
        a.enqueue("outbound", Some(&format!("o-{i}")), None, "out")
            .await?;
    }
    let admin =
        StoreClient::new(sandbox.admin_url("store-a")).with_timeout(Duration::from_secs(60));
    let resp = admin
        .call(Method::POST, "/admin/rebuild", &[], Bytes::new())
        .await?;
    let body = resp.json().unwrap_or_default();
    assert_eq!(body["rebuilt_from"], "store-b", "{body}");
    assert!(body["lsn"].as_u64().unwrap_or(0) >= 50, "{body}");
    assert_eq!(a.list_queue("outbound", None).await?.len(), 50);
    let w = a.enqueue("outbound", Some("o-after"), None, "out").await?;
    assert_eq!(w.copies, vec!["store-a", "store-b"]);
    // Rebuilding from a node that is not a mirror is refused with a clear error.
    let err = admin
        .call(
            Method::POST,
            "/admin/rebuild?from=store-zz",
            &[],
            Bytes::new(),
        )
        .await
        .expect_err("not a mirror");
    assert_eq!(err.code(), Some("unavailable"), "{err}");
    Ok(())
}
