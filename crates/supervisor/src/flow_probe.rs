//! Outage detection from the mail flow itself, beside the health checks: every
//! `timing.probe_interval` the supervisor sends a probe message to each OTHER site's probe mailbox
//! (`probe@<the first domain at home there>`) along the path the Internet uses (`Topology::smtp_entry`:
//! that site's routers, then its mail servers), and waits up to one interval for it to show up in that
//! mailbox on its home store. A site cannot watch itself when it is dead, hence the other site does.
//!
//! Arrived: `fabric_probe_arrived_total{site}`, `fabric_probe_ok{site}` = 1, the time in
//! `fabric_probe_seconds{site}`, and the probe is expunged. Not sent (no 250 on any path) or not arrived
//! within the interval: `fabric_probe_missing_total{site}`, `fabric_probe_ok{site}` = 0 and a warning
//! log line `probe missing` with the site and the reason.
//!
//! The probe mailbox is created in the directory at the first probe if it does not exist (a hash that
//! matches no password: nobody logs in to it).

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use smtp::client::{self, Outcome};
use store_client::StoreClient;
use store_client::homes::Homes;
use tokio_util::sync::CancellationToken;
use topology::Topology;

/// An argon2id PHC string no password was hashed into (random salt and hash bytes).
const NO_PASSWORD: &str = "$argon2id$v=19$m=19456,t=2,p=1$cHJvYmVwcm9iZXByb2Jl$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";

struct Target {
    site: String,
    address: String,
}

pub async fn run(topology: Arc<Topology>, node: topology::Node, shutdown: CancellationToken) {
    let interval = topology.timing.probe_interval;
    if interval.is_zero() {
        return;
    }
    let targets: Vec<Target> = topology
        .sites
        .iter()
        .filter(|s| s.name != node.site)
        .filter_map(|s| {
            let domain = topology.domains.iter().find(|d| d.home == s.name)?;
            Some(Target {
                site: s.name.clone(),
                address: format!("probe@{}", domain.name),
            })
        })
        .collect();
    for t in &targets {
        metrics::gauge!("fabric_probe_ok", "site" => t.site.clone()).set(1.0);
        metrics::counter!("fabric_probe_missing_total", "site" => t.site.clone()).absolute(0);
    }
    // The probe mailboxes could be moved like any other.
    let homes = Homes::spawn(topology.clone());
    let mut seq = 0u64;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = shutdown.cancelled() => return,
        }
        for t in &targets {
            seq += 1;
            let started = Instant::now();
            let result = tokio::select! {
                r = probe(&topology, &homes, &node, t, seq, interval) => r,
                _ = shutdown.cancelled() => return,
            };
            let site = t.site.clone();
            match result {
                Ok(id) => {
                    metrics::counter!("fabric_probe_arrived_total", "site" => site.clone())
                        .increment(1);
                    metrics::gauge!("fabric_probe_ok", "site" => site.clone()).set(1.0);
                    metrics::histogram!("fabric_probe_seconds", "site" => site.clone())
                        .record(started.elapsed().as_secs_f64());
                    tracing::debug!(site = %site, msg_id = %id, took_ms = started.elapsed().as_millis() as u64, "probe arrived");
                }
                Err(why) => {
                    metrics::counter!("fabric_probe_missing_total", "site" => site.clone())
                        .increment(1);
                    metrics::gauge!("fabric_probe_ok", "site" => site.clone()).set(0.0);
                    tracing::warn!(site = %site, probe = %t.address, reason = %why, "probe missing");
                }
            }
        }
    }
}

/// One probe: sent, then found in the mailbox within `wait`; its fabric id, or why not.
async fn probe(
    topology: &Topology,
    homes: &Homes,
    node: &topology::Node,
    t: &Target,
    seq: u64,
    wait: Duration,
) -> Result<String, String> {
    ensure_mailbox(topology, &t.address).await?;
    let date = httpdate::fmt_http_date(SystemTime::now());
    let message = format!(
        "From: <probe@{me}.{fabric}>\r\nTo: <{to}>\r\nSubject: fabric probe {site} {seq}\r\n\
         Date: {date}\r\nMessage-ID: <probe-{seq}.{me}@{fabric}>\r\n\r\nA probe of the mail flow to {site}.\r\n",
        me = node.name,
        fabric = topology.fabric.name,
        to = t.address,
        site = t.site,
    );
    let options = client::Options {
        source: Some(IpAddr::V4(node.source_ip())),
        greeting_timeout: Duration::from_secs(2),
        timeout: Duration::from_secs(10),
    };
    let helo = format!("{}.{}", node.name, topology.fabric.name);
    let mut id = None;
    let mut reasons = Vec::new();
    for (name, addr) in topology.smtp_entry(&t.site, seq as usize) {
        let rcpts = [t.address.clone()];
        let from = format!("probe@{}.{}", node.name, topology.fabric.name);
        let outcome = client::deliver_with(options, addr, &helo, &from, &rcpts, message.as_bytes())
            .await
            .into_iter()
            .next();
        match outcome {
            Some(Outcome::Delivered(text)) => {
                id = text.split_whitespace().last().map(str::to_string);
                break;
            }
            Some(Outcome::Temporary(w)) | Some(Outcome::Permanent(w)) => {
                reasons.push(format!("{name}: {w}"))
            }
            None => reasons.push(format!("{name}: no answer")),
        }
    }
    let Some(id) = id else {
        return Err(format!("not sent: {}", reasons.join("; ")));
    };
    let store = homes
        .node(&t.address)
        .and_then(StoreClient::for_node)
        .ok_or("no home store for the probe mailbox")?
        .with_timeout(Duration::from_secs(5));
    let deadline = Instant::now() + wait;
    loop {
        if let Ok(listing) = store.list_mailbox(&t.address, "INBOX", None).await
            && let Some(m) = listing.messages.iter().find(|m| m.message_id == id)
        {
            let _ = store.expunge(&t.address, "INBOX", Some(&[m.uid])).await;
            return Ok(id);
        }
        if Instant::now() > deadline {
            return Err(format!(
                "{id} accepted but not in the mailbox within {wait:?}"
            ));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

async fn ensure_mailbox(topology: &Topology, address: &str) -> Result<(), String> {
    let directory = topology
        .directory_store()
        .and_then(StoreClient::for_node)
        .ok_or("no directory store")?
        .with_timeout(Duration::from_secs(5));
    match directory.get_user(address, None).await {
        Ok(Some(_)) => Ok(()),
        Ok(None) => directory
            .put_user(
                address,
                &serde_json::json!({"password_hash": NO_PASSWORD, "notify": "none"}),
            )
            .await
            .map(|_| ())
            .map_err(|e| format!("creating {address}: {e}")),
        // The directory store is down: the mailbox was made by an earlier probe, or the send says so.
        Err(_) => Ok(()),
    }
}
