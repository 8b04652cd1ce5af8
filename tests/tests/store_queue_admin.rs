//! Queue administration through the store's API, seen from the mirror: hold, release, flush and a
//! metadata merge are mirrored before they are answered, and a held item is never leased.

mod common;

use std::time::Duration;

use common::store;
use serde_json::json;
use testkit::Sandbox;

#[tokio::test]
async fn holds_releases_flushes_and_meta_merges_reach_the_mirror() -> anyhow::Result<()> {
    let sandbox = Sandbox::start("topology/mini.toml").await?;
    let a = store(&sandbox, "store-a");
    let b = store(&sandbox, "store-b");
    let meta = json!({"from": "ann@acme.example"});
    let one = a
        .enqueue("relay", Some("m-1"), Some(&meta), "one")
        .await?
        .value
        .id;
    let two = a.enqueue("relay", Some("m-2"), None, "two").await?.value.id;

    // Held: never leased, and the mirror's copy says so as soon as the hold is answered.
    let held = a.hold("relay", one).await?;
    assert!(held.value.held);
    assert_eq!(held.copies, vec!["store-a", "store-b"]);
    let copy = b.list_queue("relay", Some("store-a")).await?;
    assert!(copy.iter().any(|i| i.id == one && i.held), "{copy:?}");
    let leased = a.lease("relay", 10, Duration::from_secs(60)).await?;
    assert_eq!(leased.iter().map(|l| l.id).collect::<Vec<_>>(), vec![two]);
    assert!(
        a.lease("relay", 10, Duration::from_secs(60))
            .await?
            .is_empty()
    );

    // Flush of a held item: 409 held; of a leased one: the lease stands.
    let err = a.flush_item("relay", one).await.expect_err("held");
    assert_eq!(err.code(), Some("held"));
    assert!(a.flush_item("relay", two).await?.value.leased);
    assert!(
        a.lease("relay", 10, Duration::from_secs(60))
            .await?
            .is_empty()
    );

    // Metadata merged (not replaced) on the item and on the mirror's copy.
    let patch = json!({"bounce_requested": {"by": "operator"}});
    let merged = a
        .merge_meta("relay", one, patch.as_object().expect("object"))
        .await?;
    assert_eq!(merged.value.meta["from"], "ann@acme.example");
    let copy = b.list_queue("relay", Some("store-a")).await?;
    let on_mirror = copy.iter().find(|i| i.id == one).expect("mirrored item");
    assert_eq!(
        on_mirror
            .meta
            .as_ref()
            .map(|m| m["bounce_requested"]["by"].clone()),
        Some(json!("operator"))
    );

    // Released: leased at once.
    let released = a.release("relay", one).await?;
    assert!(!released.value.held);
    let leased = a.lease("relay", 10, Duration::from_secs(60)).await?;
    assert_eq!(leased.iter().map(|l| l.id).collect::<Vec<_>>(), vec![one]);
    assert!(
        !b.list_queue("relay", Some("store-a"))
            .await?
            .iter()
            .any(|i| i.held)
    );

    // Unknown items: 404 no_such_item; flush of a whole queue counts what it brought forward.
    let err = a.hold("relay", 424_242).await.expect_err("unknown");
    assert_eq!(err.code(), Some("no_such_item"));
    a.defer(
        "relay",
        one,
        &leased[0].lease,
        Duration::from_secs(600),
        Some("451"),
    )
    .await?;
    assert_eq!(a.flush_queue("relay").await?.value.flushed, 1);
    assert_eq!(
        a.lease("relay", 10, Duration::from_secs(60)).await?.len(),
        1
    );
    Ok(())
}
