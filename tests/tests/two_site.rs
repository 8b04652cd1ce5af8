//! The two-site fabric: writes are mirrored to the other site; when the other site is cut off, writes
//! continue in degraded mode with the second copy in the same site, and the other site catches up when
//! it returns.

mod common;

use std::time::Duration;

use common::{metric_sum, mirror_state, replication, store};
use nix::sys::signal::Signal;
use testkit::Sandbox;

#[tokio::test]
async fn cut_off_site_degrades_then_catches_up() -> anyhow::Result<()> {
    let mut sandbox = Sandbox::start("topology/two-site.toml").await?;
    let w1 = store(&sandbox, "store-w1").with_timeout(Duration::from_secs(30));

    for i in 0..50 {
        let w = w1
            .enqueue(
                "inbound",
                Some(&format!("before-{i}")),
                None,
                "x".repeat(4096),
            )
            .await?;
        assert_eq!(
            w.copies,
            vec!["store-w1", "store-e1"],
            "the second copy is in the other site"
        );
        assert!(!w.degraded);
    }

    // Cut the east site off: kill both of its stores.
    sandbox.kill("store-e1", Signal::SIGKILL)?;
    sandbox.kill("store-e2", Signal::SIGKILL)?;
    for i in 0..50 {
        let w = w1
            .enqueue(
                "inbound",
                Some(&format!("during-{i}")),
                None,
                "y".repeat(4096),
            )
            .await?;
        assert_eq!(
            w.copies,
            vec!["store-w1", "store-w2"],
            "degraded: the second copy stays in the site"
        );
        assert!(w.degraded);
    }
    let m = common::metrics(&sandbox, "store-w1").await?;
    assert_eq!(metric_sum(&m, "fabric_store_degraded", &[]), 1.0);
    assert!(metric_sum(&m, "fabric_store_degraded_writes_total", &[]) >= 50.0);
    assert_eq!(
        metric_sum(&m, "fabric_store_mirror_up", &[("mirror", "store-e1")]),
        0.0
    );
    let log = std::fs::read_to_string(sandbox.log_path("store-w1"))?;
    assert!(
        log.lines()
            .any(|l| l.contains("degraded mode") && l.contains("\"node\":\"store-w1\"")),
        "a log line says so"
    );
    let w2 = store(&sandbox, "store-w2");
    assert_eq!(
        w2.list_queue("inbound", Some("store-w1")).await?.len(),
        100,
        "the same-site mirror holds everything"
    );

    // The east site returns and catches up; degraded mode ends.
    sandbox.start_node("store-e1").await?;
    sandbox.start_node("store-e2").await?;
    testkit::wait_until(
        "store-e1 back in sync with store-w1",
        Duration::from_secs(30),
        Duration::from_millis(100),
        || async {
            match replication(&sandbox, "store-w1").await {
                Ok(r) => {
                    mirror_state(&r, "store-e1").as_deref() == Some("in_sync")
                        && r["degraded"] == false
                }
                Err(_) => false,
            }
        },
    )
    .await?;
    let e1 = store(&sandbox, "store-e1");
    let items = e1.list_queue("inbound", Some("store-w1")).await?;
    assert_eq!(
        items.len(),
        100,
        "writes made during the outage reached the other site"
    );
    assert!(items.iter().any(|i| i.message_id == "during-49"));
    let w = w1.enqueue("inbound", Some("after"), None, "z").await?;
    assert_eq!(w.copies, vec!["store-w1", "store-e1"]);
    assert!(!w.degraded);
    let m = common::metrics(&sandbox, "store-w1").await?;
    assert_eq!(metric_sum(&m, "fabric_store_degraded", &[]), 0.0);

    // East's own stores mirror to the west as well.
    let e2 = store(&sandbox, "store-e2");
    let w = e2
        .append(
            "cy@globex.example",
            "INBOX",
            Some("g-1"),
            &[],
            "Subject: hi\r\n\r\n",
        )
        .await?;
    assert_eq!(w.copies, vec!["store-e2", "store-w2"]);
    Ok(())
}
