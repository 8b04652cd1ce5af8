//! A whole site dies, its stores with it (issue 5: standby over the mirrored data, merge on return).
//!
//! West's every node dies while remote senders keep mailing a west customer: the stores, transfer,
//! mail servers, redirectors and routers by SIGKILL, one store and one mail server frozen by SIGSTOP
//! first, and its DNS, relays and supervisor too. East's relays hold the mail; after the threshold
//! east's supervisor brings west back as standbys, phase by phase, at west's own addresses: the
//! stores first, each rebuilt from east's copy of it (a new epoch), then transfer and the mail
//! servers, then the access path. The relays hand the mail over; ann reads everything over IMAP
//! through west's usual router with the same login, flags one message and expunges another. Then the
//! originals return with their old disks: each store sees that its mirror holds a newer epoch of it
//! and rejoins (takes the standby's history, merges its own tail back). Ann's mailbox on her home
//! store then holds every accepted message exactly once, with the flag and the expunge of the
//! outage, and she was told at the start and at the end.

mod common;
mod outage_common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use serde_json::json;
use testkit::Sandbox;
use tokio::sync::Mutex;
use topology::Topology;

use outage_common::{ImapAct, addr, continuity_sms, fabric_send, imap, inbox_counts, standbys};

const ANN: &str = "ann@acme.example";
const PASSWORD: &str = "site outage secret";
const ANN_SMS: &str = "+15550177";

#[tokio::test]
async fn a_dead_site_with_its_stores_comes_back_as_standbys_and_merges_back_exactly_once()
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
    let login = (ANN, PASSWORD);
    let west: Vec<(String, String)> = sandbox
        .topology()
        .nodes
        .iter()
        // The sink is the outside world (remote MXes, the SMS gateway), not part of the site.
        .filter(|n| n.site == "west" && n.role != "sink")
        .map(|n| (n.name.clone(), n.role.clone()))
        .collect();

    // Before the outage: three messages, one of them flagged by ann.
    let accepted: Arc<Mutex<Vec<(String, Instant, Instant)>>> = Arc::default();
    for i in 0..3 {
        let subject = format!("before {i}");
        let started = Instant::now();
        fabric_send(&topo, ANN, &subject).await?;
        accepted
            .lock()
            .await
            .push((subject, started, Instant::now()));
    }
    common::poll(
        "the first mail in ann's INBOX",
        Duration::from_secs(30),
        || async {
            let counts = inbox_counts(&sandbox, "store-w1", ANN).await?;
            Ok((counts.len() == 3).then_some(()))
        },
    )
    .await?;
    let router_imap = addr(&sandbox, "router-iso-w1", "imap");
    let (uidvalidity, _) = imap(
        &sandbox,
        &router_imap,
        false,
        login,
        ImapAct::Flag("before 0", "\\Flagged"),
    )
    .await?;

    // A steady load from two remote senders for the whole outage.
    let load = outage_common::SteadyLoad::start(&topo, ANN, 2, &accepted);
    tokio::time::sleep(Duration::from_secs(1)).await;

    // West dies whole: a store and a mail server freeze first, then everything is SIGKILLed (the
    // frozen ones stay frozen: the supervisor must fence them).
    let dying = Instant::now();
    sandbox.kill("store-w2", Signal::SIGSTOP)?;
    sandbox.kill("intranet-w2", Signal::SIGSTOP)?;
    for (node, _) in &west {
        if node != "store-w2" && node != "intranet-w2" {
            sandbox.kill(node, Signal::SIGKILL)?;
        }
    }
    let died = Instant::now();

    // East's supervisor brings back every serving node of west as a standby at its own address.
    let served: Vec<&String> = west
        .iter()
        .filter(|(_, role)| {
            [
                "store",
                "transfer",
                "inet-mx",
                "intranet",
                "redirector",
                "router",
            ]
            .contains(&role.as_str())
        })
        .map(|(n, _)| n)
        .collect();
    common::poll(
        "standbys for every serving node of west",
        Duration::from_secs(120),
        || async {
            let serving = standbys(&sandbox, "supervisor-e").await?;
            Ok(served.iter().all(|n| serving.contains(n)).then_some(()))
        },
    )
    .await?;
    println!("west's standbys serving {:?} after it died", died.elapsed());
    let status = outage_common::get_json(sandbox.admin_url("store-w1"), "/status").await?;
    assert_eq!(status["standby_by"], "supervisor-e", "{status}");
    common::poll(
        "the start notice at the SMS gateway",
        Duration::from_secs(30),
        || async { Ok((continuity_sms(&sandbox, ANN_SMS).await? == (1, 0)).then_some(())) },
    )
    .await?;

    // Ann reads on the standbys, through west's usual router, with the same login: everything from
    // before, with its flag; she expunges one message.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (during_validity, during) = imap(
        &sandbox,
        &router_imap,
        false,
        login,
        ImapAct::Expunge("before 1"),
    )
    .await?;
    assert_eq!(
        during_validity, uidvalidity,
        "the standby keeps the mailbox's UIDs"
    );
    assert!(
        during
            .iter()
            .any(|(s, f)| s == "before 0" && f.contains("\\Flagged")),
        "{during:?}"
    );
    assert!(during.iter().all(|(s, _)| s != "before 1"), "{during:?}");

    let failed_sends = load.stop().await?;
    let sends = accepted.lock().await.clone();
    println!(
        "{} messages accepted, {failed_sends} sends refused",
        sends.len()
    );
    // Only a send under way at the death may arrive twice (the sender resent after no answer: RFC
    // 1047's duplicate window); everything else exactly once.
    let in_flight: Vec<String> = sends
        .iter()
        .filter(|(_, started, ended)| *started <= died && *ended >= dying)
        .map(|(s, _, _)| s.clone())
        .collect();
    let wanted: Vec<String> = sends
        .into_iter()
        .map(|(s, _, _)| s)
        .filter(|s| s != "before 1")
        .collect();
    assert!(
        wanted.iter().filter(|s| s.starts_with("load")).count() >= 4,
        "the load went on: {wanted:?}"
    );
    common::poll(
        "every accepted message on the standby",
        Duration::from_secs(120),
        || async {
            let counts = inbox_counts(&sandbox, "store-w1", ANN).await?;
            Ok(wanted.iter().all(|s| counts.contains_key(s)).then_some(()))
        },
    )
    .await?;

    // The originals return with their old disks, phase by phase (stores first); the launcher takes
    // each address back from its standby. The frozen ones were fenced (SIGKILLed): reap them.
    let _ = sandbox.kill("store-w2", Signal::SIGKILL);
    let _ = sandbox.kill("intranet-w2", Signal::SIGKILL);
    for phase in [
        &["store"][..],
        &["transfer", "inet-mx", "intranet"],
        &["redirector"],
        &["router"],
        &["dns", "relay", "supervisor"],
    ] {
        for (node, _) in west.iter().filter(|(_, r)| phase.contains(&r.as_str())) {
            sandbox.start_node(node).await?;
        }
    }
    assert_eq!(
        standbys(&sandbox, "supervisor-e").await?,
        Vec::<String>::new()
    );
    for store in ["store-w1", "store-w2"] {
        let text = common::metrics(&sandbox, store).await?;
        let log = std::fs::read_to_string(sandbox.log_path(store)).unwrap_or_default();
        let said: Vec<&str> = log
            .lines()
            .filter(|l| {
                l.contains("epoch")
                    || l.contains("rejoin")
                    || l.contains("superseded")
                    || l.contains("ready")
                    || l.contains("rebuil")
            })
            .collect();
        assert_eq!(
            common::metric_sum(&text, "fabric_store_rejoins_total", &[]),
            1.0,
            "{store} rejoined its standby's history: {said:#?}"
        );
        let status = outage_common::get_json(sandbox.admin_url(store), "/status").await?;
        assert!(status["standby_by"].is_null(), "{store}: {status}");
    }
    common::poll(
        "the end notice at the SMS gateway",
        Duration::from_secs(30),
        || async { Ok((continuity_sms(&sandbox, ANN_SMS).await? == (1, 1)).then_some(())) },
    )
    .await?;

    // After fail-back: new mail flows to the originals; every message exactly once, the outage's
    // flag and expunge kept, read through the original router and server.
    fabric_send(&topo, ANN, "after the outage").await?;
    let mut all = wanted.clone();
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
    assert_eq!(counts.get("before 1"), None, "the outage's expunge holds");
    assert_eq!(
        counts.values().sum::<usize>(),
        all.len() + twice,
        "nothing unexpected: {counts:?}"
    );
    let (_, after) = imap(&sandbox, &router_imap, false, login, ImapAct::Read).await?;
    assert_eq!(after.len(), all.len() + twice, "{after:?}");
    assert!(
        after
            .iter()
            .any(|(s, f)| s == "before 0" && f.contains("\\Flagged")),
        "{after:?}"
    );
    let relay_queue = common::store(&sandbox, "store-e1")
        .list_queue("relay", None)
        .await?;
    assert!(
        relay_queue.is_empty(),
        "the relay queue drained: {relay_queue:?}"
    );
    Ok(())
}
