//! Outage detection from the mail flow: each site's supervisor sends a probe message to the other
//! site's probe mailbox every `probe_interval` and waits for it there. A site whose mail servers are
//! dead misses its probes (metric and log line); when they return, the probes arrive again.

mod common;

use std::time::{Duration, Instant};

use anyhow::bail;
use nix::sys::signal::Signal;
use testkit::Sandbox;
use topology::{Role, Topology};

async fn probe_metric(sandbox: &Sandbox, supervisor: &str, name: &str, site: &str) -> f64 {
    match common::metrics(sandbox, supervisor).await {
        Ok(text) => common::metric_sum(&text, name, &[("site", site)]),
        Err(_) => -1.0,
    }
}

async fn wait_for(
    what: &str,
    wait: Duration,
    mut ok: impl AsyncFnMut() -> bool,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + wait;
    while !ok().await {
        if Instant::now() > deadline {
            bail!("{what}: not within {wait:?}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Ok(())
}

#[tokio::test]
async fn probes_reach_each_sites_mailbox_and_a_dead_site_misses_them() -> anyhow::Result<()> {
    let mut t = Topology::load(testkit::workspace_root().join("topology/two-site.toml"))?;
    t.nodes.retain(|n| {
        !matches!(
            n.role(),
            Role::Router | Role::Redirector | Role::Dns | Role::Relay | Role::Intranet
        )
    });
    t.acls.clear();
    t.timing.probe_interval = Duration::from_secs(1);
    let mut sandbox = Sandbox::start_topology(t).await?;

    // Both ways: east's supervisor probes west, west's probes east.
    for (supervisor, site) in [("supervisor-e", "west"), ("supervisor-w", "east")] {
        wait_for("probes arriving", Duration::from_secs(20), async || {
            probe_metric(&sandbox, supervisor, "fabric_probe_arrived_total", site).await >= 2.0
        })
        .await?;
        assert_eq!(
            probe_metric(&sandbox, supervisor, "fabric_probe_ok", site).await,
            1.0
        );
        assert_eq!(
            probe_metric(&sandbox, supervisor, "fabric_probe_missing_total", site).await,
            0.0
        );
    }
    // The probe mailbox exists and the probes do not pile up in it.
    let store = common::store(&sandbox, "store-w1");
    assert!(store.get_user("probe@acme.example", None).await?.is_some());
    let listing = store
        .list_mailbox("probe@acme.example", "INBOX", None)
        .await?;
    assert!(
        listing.messages.len() <= 1,
        "expunged after each probe: {listing:?}"
    );

    // West's Internet mail servers die: east sees the probes go missing.
    sandbox.kill("inet-mx-w1", Signal::SIGKILL)?;
    sandbox.kill("inet-mx-w2", Signal::SIGKILL)?;
    wait_for("a missing probe", Duration::from_secs(15), async || {
        probe_metric(
            &sandbox,
            "supervisor-e",
            "fabric_probe_missing_total",
            "west",
        )
        .await
            >= 1.0
    })
    .await?;
    assert_eq!(
        probe_metric(&sandbox, "supervisor-e", "fabric_probe_ok", "west").await,
        0.0
    );
    let log = std::fs::read_to_string(sandbox.log_path("supervisor-e"))?;
    let line = log
        .lines()
        .find(|l| l.contains("probe missing"))
        .unwrap_or_default();
    assert!(
        line.contains("\"site\":\"west\"") && line.contains("inet-mx-w1"),
        "{line}"
    );
    // East itself is fine.
    assert_eq!(
        probe_metric(&sandbox, "supervisor-w", "fabric_probe_ok", "east").await,
        1.0
    );

    // They come back: so do the probes.
    sandbox.start_node("inet-mx-w1").await?;
    sandbox.start_node("inet-mx-w2").await?;
    wait_for(
        "probes arriving again",
        Duration::from_secs(20),
        async || probe_metric(&sandbox, "supervisor-e", "fabric_probe_ok", "west").await == 1.0,
    )
    .await?;
    Ok(())
}
