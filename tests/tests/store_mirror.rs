//! Writes go through one store and are read back from its mirror; every namespace works end to end.
//! One sandbox (the mini topology: store-a mirrors to store-b) for the whole file.

mod common;

use std::time::Duration;

use common::store;
use serde_json::json;
use testkit::Sandbox;

use common::HASH;

/// Queues no node of the mini topology consumes (its transfer server leases `inbound` and `outbound`
/// every 100 ms, and would take the test's items from under it).
const QUEUE: &str = "test-work";
const EXPIRY_QUEUE: &str = "test-expiry";

#[tokio::test]
async fn writes_through_one_store_are_readable_from_its_mirror() -> anyhow::Result<()> {
    let sandbox = Sandbox::start("topology/mini.toml").await?;
    let a = store(&sandbox, "store-a");
    let b = store(&sandbox, "store-b");

    // Queues: enqueue, read back from the mirror, idempotent retry.
    let first = a
        .enqueue(
            QUEUE,
            Some("msg-1"),
            Some(&json!({"rcpt": "ann@acme.example"})),
            "body one",
        )
        .await?;
    assert!(!first.value.duplicate);
    assert_eq!(
        first.copies,
        vec!["store-a", "store-b"],
        "acknowledged on the store and its mirror"
    );
    assert!(!first.degraded);
    let again = a.enqueue(QUEUE, Some("msg-1"), None, "body one").await?;
    assert!(
        again.value.duplicate,
        "same message id is not enqueued twice"
    );
    assert_eq!(again.value.id, first.value.id);
    let on_mirror = b.list_queue(QUEUE, Some("store-a")).await?;
    assert_eq!(on_mirror.len(), 1);
    assert_eq!(on_mirror[0].message_id, "msg-1");
    assert_eq!(
        on_mirror[0].meta.as_ref().map(|m| m["rcpt"].clone()),
        Some(json!("ann@acme.example"))
    );
    assert_eq!(
        &b.get_item(QUEUE, first.value.id, Some("store-a")).await?[..],
        b"body one"
    );
    // store-b's own data is separate from its copy of store-a.
    assert!(b.list_queue(QUEUE, None).await?.is_empty());

    // Lease hides the item; defer brings it back later with an attempt counted; ack removes it.
    let leased = a.lease(QUEUE, 10, Duration::from_secs(60)).await?;
    assert_eq!(leased.len(), 1);
    assert_eq!(&leased[0].body[..], b"body one");
    assert!(
        a.lease(QUEUE, 10, Duration::from_secs(60))
            .await?
            .is_empty(),
        "leased item is invisible"
    );
    a.defer(
        QUEUE,
        leased[0].id,
        &leased[0].lease,
        Duration::from_millis(0),
        Some("remote said 451"),
    )
    .await?;
    let items = a.list_queue(QUEUE, None).await?;
    assert_eq!(items[0].attempts, 1);
    assert_eq!(items[0].last_error.as_deref(), Some("remote said 451"));
    let leased = a.lease(QUEUE, 10, Duration::from_secs(60)).await?;
    assert_eq!(
        leased.len(),
        1,
        "deferred item is visible again once its time has come"
    );
    let stale = a
        .ack(QUEUE, leased[0].id, "not-the-lease")
        .await
        .expect_err("wrong lease refused");
    assert_eq!(stale.code(), Some("lease_mismatch"));
    a.ack(QUEUE, leased[0].id, &leased[0].lease).await?;
    assert!(a.list_queue(QUEUE, None).await?.is_empty());
    assert!(
        b.list_queue(QUEUE, Some("store-a")).await?.is_empty(),
        "the ack reached the mirror"
    );

    // Short visibility: an unacked lease expires and the item comes back.
    a.enqueue(EXPIRY_QUEUE, Some("msg-2"), None, "two").await?;
    let l = a.lease(EXPIRY_QUEUE, 1, Duration::from_millis(200)).await?;
    assert_eq!(l.len(), 1);
    // What the last try answered goes into the failure message (an error and an empty lease differ).
    let last = std::sync::Mutex::new(String::from("no try yet"));
    testkit::wait_until(
        "expired lease to return the item",
        Duration::from_secs(5),
        Duration::from_millis(50),
        || async {
            let answer = a.lease(EXPIRY_QUEUE, 1, Duration::from_secs(60)).await;
            let returned = matches!(&answer, Ok(v) if v.len() == 1);
            if let Ok(mut l) = last.lock() {
                *l = match answer {
                    Ok(v) => format!("{} item(s)", v.len()),
                    Err(e) => format!("error: {e}"),
                };
            }
            returned
        },
    )
    .await
    .map_err(|e| {
        let last = last.lock().map(|l| l.clone()).unwrap_or_default();
        e.context(format!("the last lease answered {last}"))
    })?;

    // Mailboxes: UIDs ascend, UIDVALIDITY is stable, append is exactly once per message id.
    let m1 = a
        .append(
            "ann@acme.example",
            "INBOX",
            Some("mail-1"),
            &[],
            "Subject: one\r\n\r\nhi\r\n",
        )
        .await?;
    let m2 = a
        .append(
            "ann@acme.example",
            "INBOX",
            Some("mail-2"),
            &["\\Flagged"],
            "Subject: two\r\n\r\nho\r\n",
        )
        .await?;
    assert_eq!(m1.value.uid + 1, m2.value.uid);
    assert_eq!(m1.value.uidvalidity, m2.value.uidvalidity);
    let dup = a
        .append(
            "ann@acme.example",
            "INBOX",
            Some("mail-1"),
            &[],
            "Subject: one\r\n\r\nhi\r\n",
        )
        .await?;
    assert!(dup.value.duplicate);
    assert_eq!(dup.value.uid, m1.value.uid);
    let flags = a
        .set_flags(
            "ann@acme.example",
            "INBOX",
            m1.value.uid,
            &json!({"add": ["\\Seen", "\\Deleted"]}),
        )
        .await?;
    assert_eq!(flags, vec!["\\Deleted", "\\Seen"]);
    let gone = a.expunge("ann@acme.example", "INBOX", None).await?;
    assert_eq!(gone, vec![m1.value.uid]);
    let again = a
        .append(
            "ann@acme.example",
            "INBOX",
            Some("mail-1"),
            &[],
            "Subject: one\r\n\r\nhi\r\n",
        )
        .await?;
    assert!(
        again.value.duplicate,
        "an expunged message id is still delivered only once"
    );
    let listing = b
        .list_mailbox("ann@acme.example", "INBOX", Some("store-a"))
        .await?;
    assert_eq!(listing.uidvalidity, m1.value.uidvalidity);
    assert_eq!(listing.messages.len(), 1);
    assert_eq!(listing.messages[0].uid, m2.value.uid);
    assert_eq!(listing.messages[0].flags, vec!["\\Flagged"]);
    assert_eq!(listing.uidnext, m2.value.uid + 1);
    assert_eq!(
        &b.fetch("ann@acme.example", "INBOX", m2.value.uid, Some("store-a"))
            .await?[..],
        b"Subject: two\r\n\r\nho\r\n"
    );

    // Logs and configuration, read from the mirror.
    a.trace("mail-2", "inet-mx-w1", "received", Some("from 192.0.2.1"))
        .await?;
    a.trace("mail-2", "transfer-w1", "delivered", None).await?;
    let trace = b.get_trace("mail-2", Some("store-a")).await?;
    let actions: Vec<_> = trace["hops"]
        .as_array()
        .map(|h| h.iter().map(|x| x["action"].clone()).collect())
        .unwrap_or_default();
    assert_eq!(actions, vec![json!("received"), json!("delivered")]);
    a.put_user(
        "ann@acme.example",
        &json!({"password_hash": HASH, "sms": "+15550100", "notify": "sms"}),
    )
    .await?;
    let users = b.users(Some("store-a")).await?;
    assert_eq!(users["users"][0]["address"], "ann@acme.example");
    assert_eq!(users["users"][0]["notify"], "sms");
    a.call(
        store_client::Method::PUT,
        "/v1/blocklist/spammer.example",
        &[],
        bytes::Bytes::new(),
    )
    .await?;
    let bl = b
        .call(
            store_client::Method::GET,
            "/v1/blocklist?origin=store-a",
            &[],
            bytes::Bytes::new(),
        )
        .await?;
    assert_eq!(
        bl.json().map(|j| j["entries"][0]["entry"].clone()),
        Some(json!("spammer.example"))
    );

    // The catalog says where mail-2 lives, on the store and on its mirror.
    let catalog = b.catalog("mail-2").await?;
    let locs = catalog["locations"].as_array().cloned().unwrap_or_default();
    assert!(
        locs.iter().any(|l| l["store"] == "store-a"
            && l["held_by"] == "store-b"
            && l["location"] == format!("mailbox/ann@acme.example/INBOX/{}", m2.value.uid)),
        "{catalog}"
    );
    // A queue item is found by its message id too, in the store's data and in the mirror's copy.
    let queued = b.catalog("msg-2").await?;
    let queued_at: Vec<(String, String)> = queued["locations"]
        .as_array()
        .map(|l| {
            l.iter()
                .map(|x| {
                    (
                        x["held_by"].as_str().unwrap_or("").to_string(),
                        x["location"].as_str().unwrap_or("").to_string(),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    assert_eq!(queued_at.len(), 1, "{queued}");
    assert_eq!(queued_at[0].0, "store-b");
    assert!(
        queued_at[0]
            .1
            .starts_with(&format!("queue/{EXPIRY_QUEUE}/")),
        "{queued}"
    );
    let catalog_a = a.catalog("mail-2").await?;
    assert!(catalog_a["locations"].as_array().is_some_and(|l| {
        l.iter()
            .any(|x| x["store"] == "store-a" && x["held_by"] == "store-a")
    }));
    Ok(())
}
