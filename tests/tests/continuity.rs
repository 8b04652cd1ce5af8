//! Guaranteed delivery through a site's outage, the whole way (issue 5's "must show"):
//!
//! Mail for west's domains flows from remote senders (`fabric send`: MX lookup in the fabric's DNS)
//! while every Internet and intranet mail server of west fails, two by SIGKILL and two frozen by
//! SIGSTOP. The DNS drops west behind east's relays; the relays accept and hold the mail, retry every
//! `relay_retry`, and after `standby_attempts` rounds ask east's supervisor for standbys; the
//! supervisor fences the frozen servers and starts standbys with the failed servers' names and
//! addresses; the relays hand the held mail to them. Ann reads everything (before and during) over
//! IMAP with the same login at her server's usual address. Then the originals are started again (the
//! launcher takes their addresses back from the standbys), and every message the fabric accepted is
//! in her mailbox exactly once.

mod common;
mod outage_common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use nix::sys::signal::Signal;
use serde_json::{Value, json};
use testkit::Sandbox;
use tokio::sync::Mutex;
use topology::Topology;

use outage_common::{addr, continuity_sms, get_json, imap_subjects, inbox_counts};

const ANN: &str = "ann@acme.example";
const PASSWORD: &str = "continuity secret";
const ANN_SMS: &str = "+15550100";
const WEST_MAIL_SERVERS: [&str; 4] = ["inet-mx-w1", "inet-mx-w2", "intranet-w1", "intranet-w2"];

#[tokio::test]
async fn mail_for_a_dead_site_waits_in_the_relay_reaches_a_standby_and_is_merged_back_exactly_once()
-> anyhow::Result<()> {
    let mut t = Topology::load(testkit::workspace_root().join("topology/two-site.toml"))?;
    t.timing.relay_retry = Duration::from_secs(1);
    t.timing.standby_attempts = 3;
    t.timing.standby_after = Duration::from_secs(20);
    let mut sandbox = Sandbox::start_topology(t).await?;
    let hash = common::argon2_hash(PASSWORD)?;
    common::store(&sandbox, "store-w1")
        .put_user(
            ANN,
            &json!({"password_hash": hash, "notify": "sms", "sms": ANN_SMS}),
        )
        .await?;
    let file = tempfile::NamedTempFile::new()?;
    std::fs::write(file.path(), sandbox.topology().to_toml()?)?;
    let topo = file.path().to_path_buf();

    // Before the outage.
    // (subject, when its send started, when its 250 came)
    let accepted: Arc<Mutex<Vec<(String, Instant, Instant)>>> = Arc::default();
    for i in 0..3 {
        let subject = format!("before {i}");
        let started = Instant::now();
        outage_common::fabric_send(&topo, ANN, &subject).await?;
        accepted
            .lock()
            .await
            .push((subject, started, Instant::now()));
    }

    // A steady load from two remote senders, for the whole outage.
    let load = outage_common::SteadyLoad::start(&topo, ANN, 2, &accepted);
    tokio::time::sleep(Duration::from_secs(1)).await;

    // Every mail server of west fails: two die, two freeze.
    let dying = Instant::now();
    sandbox.kill("inet-mx-w1", Signal::SIGKILL)?;
    sandbox.kill("intranet-w1", Signal::SIGKILL)?;
    sandbox.kill("inet-mx-w2", Signal::SIGSTOP)?;
    sandbox.kill("intranet-w2", Signal::SIGSTOP)?;
    let died = Instant::now();

    // East's relays take west's mail and hold it.
    let relay_accepted = || async {
        let mut n = 0.0;
        for relay in ["relay-e1", "relay-e2"] {
            let text = common::metrics(&sandbox, relay).await?;
            n += common::metric_sum(
                &text,
                "fabric_inet_mx_accepted_total",
                &[("queue", "relay")],
            );
        }
        anyhow::Ok(n)
    };
    common::poll(
        "a relay of east accepts west's mail",
        Duration::from_secs(30),
        || async { Ok((relay_accepted().await? > 0.0).then_some(())) },
    )
    .await?;
    println!(
        "first message accepted by a relay {:?} after the site died",
        died.elapsed()
    );

    // After the threshold the relays ask east's supervisor: standbys for all four, at their addresses.
    let supervisor = sandbox.url("supervisor-e", "supervisor");
    common::poll(
        "standbys for every west mail server",
        Duration::from_secs(90),
        || async {
            let v = get_json(supervisor.clone(), "/v1/standby").await?;
            let serving: Vec<String> = v["standbys"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|s| s["node"].as_str().map(str::to_string))
                .collect();
            Ok(WEST_MAIL_SERVERS
                .iter()
                .all(|n| serving.iter().any(|s| s == n))
                .then_some(()))
        },
    )
    .await?;
    println!("standbys serving {:?} after the site died", died.elapsed());
    for node in WEST_MAIL_SERVERS {
        let status = get_json(sandbox.admin_url(node), "/status").await?;
        assert_eq!(status["standby_by"], "supervisor-e", "{node}: {status}");
    }

    // Ann was told once that her service moved (SMS, as her directory entry asks).
    common::poll(
        "the start notice at the SMS gateway",
        Duration::from_secs(30),
        || async { Ok((continuity_sms(&sandbox, ANN_SMS).await? == (1, 0)).then_some(())) },
    )
    .await?;

    // The load goes on a little on the standbys, then stops.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let failed_sends = load.stop().await?;
    let sends = accepted.lock().await.clone();
    println!(
        "{} messages accepted, {failed_sends} sends refused",
        sends.len()
    );
    // A send under way while the servers died may have been stored by a server that died or froze
    // before its 250 reached the sender, who then sent it again elsewhere: SMTP's own duplicate
    // window (RFC 1047), one new transaction the fabric cannot tell from a new message. Only those
    // may arrive twice; everything else exactly once.
    let in_flight: Vec<String> = sends
        .iter()
        .filter(|(_, started, ended)| *started <= died && *ended >= dying)
        .map(|(s, _, _)| s.clone())
        .collect();
    assert!(
        in_flight.len() <= 2,
        "one send per sender at most: {in_flight:?}"
    );
    let accepted: Vec<String> = sends.into_iter().map(|(s, _, _)| s).collect();
    assert!(relay_accepted().await? >= 1.0);

    // Everything accepted (before and during) reaches the mailbox, and ann reads it over IMAP with
    // the same login at her server's usual address, now served by the standby.
    common::poll(
        "every accepted message in ann's INBOX",
        Duration::from_secs(90),
        || async {
            let counts = inbox_counts(&sandbox, "store-w1", ANN).await?;
            Ok(accepted
                .iter()
                .all(|s| counts.contains_key(s))
                .then_some(()))
        },
    )
    .await?;
    let on_standby = imap_subjects(
        &sandbox,
        &addr(&sandbox, "intranet-w1", "imap"),
        true,
        (ANN, PASSWORD),
    )
    .await?;
    for s in &accepted {
        assert!(
            on_standby.contains(s),
            "{s} on the standby's IMAP: {on_standby:?}"
        );
    }

    // The originals come back: the launcher takes each address back from its standby.
    for node in ["inet-mx-w2", "intranet-w2"] {
        // Fenced (SIGKILLed) by the supervisor while frozen: reap it.
        let _ = sandbox.kill(node, Signal::SIGKILL);
    }
    for node in WEST_MAIL_SERVERS {
        sandbox.start_node(node).await?;
        let status = get_json(sandbox.admin_url(node), "/status").await?;
        assert!(
            status.get("standby_by").is_none_or(Value::is_null),
            "{node}: {status}"
        );
    }
    let v = get_json(supervisor.clone(), "/v1/standby").await?;
    assert_eq!(v["standbys"], json!([]), "every standby retired: {v}");
    common::poll(
        "the end notice at the SMS gateway",
        Duration::from_secs(30),
        || async { Ok((continuity_sms(&sandbox, ANN_SMS).await? == (1, 1)).then_some(())) },
    )
    .await?;

    // After the fail-back: new mail flows to the originals, and every message is there exactly once.
    outage_common::fabric_send(&topo, ANN, "after the outage").await?;
    let mut all = accepted.clone();
    all.push("after the outage".to_string());
    let counts = common::poll(
        "the message after fail-back",
        Duration::from_secs(60),
        || async {
            let counts = inbox_counts(&sandbox, "store-w1", ANN).await?;
            Ok(counts.contains_key("after the outage").then_some(counts))
        },
    )
    .await?;
    let mut twice = 0;
    for s in &all {
        let n = counts.get(s).copied().unwrap_or(0);
        if n == 2 && in_flight.contains(s) {
            twice += 1;
            continue;
        }
        assert_eq!(n, 1, "{s} exactly once: {counts:?}");
    }
    println!("{twice} message(s) sent again by their sender after an unanswered first attempt");
    assert_eq!(
        counts.values().sum::<usize>(),
        all.len() + twice,
        "nothing unexpected: {counts:?}"
    );
    let through_router = imap_subjects(
        &sandbox,
        &addr(&sandbox, "router-iso-w1", "imap"),
        false,
        (ANN, PASSWORD),
    )
    .await?;
    assert_eq!(
        through_router.len(),
        all.len() + twice,
        "{through_router:?}"
    );
    let queues = common::store(&sandbox, "store-e1")
        .list_queue("relay", None)
        .await
        .context("relay queue")?;
    assert!(queues.is_empty(), "the relay queue drained: {queues:?}");
    Ok(())
}
