//! `fabric trace`: where a message went (every hop, from every store that recorded one), and the
//! recent messages of a mailbox.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, bail};
use serde_json::{Value, json};
use store_client::StoreClient;
use store_client::homes::Homes;

fn client(node: &topology::Node) -> Option<StoreClient> {
    StoreClient::for_node(node).map(|c| c.with_timeout(Duration::from_secs(10)))
}

pub fn clock(at_ms: i64) -> String {
    let secs = at_ms.div_euclid(1000);
    let ms = at_ms.rem_euclid(1000);
    let day = secs.rem_euclid(86_400);
    format!(
        "{:02}:{:02}:{:02}.{ms:03}Z",
        day / 3600,
        (day % 3600) / 60,
        day % 60
    )
}

/// Every hop of `message_id`: each store's own records, or its mirror's copy when it is down.
pub async fn trace(data_dir: &Path, message_id: &str, json_out: bool) -> anyhow::Result<()> {
    let (launcher, _) = super::running(data_dir)?;
    let hops = collect_hops(&launcher.topology, message_id).await;
    if hops.is_empty() {
        bail!("no store has a trace of {message_id}");
    }
    if json_out {
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({"message_id": message_id, "hops": hops}))?
        );
        return Ok(());
    }
    print_hops(message_id, &hops);
    Ok(())
}

/// The hops of `message_id` recorded by every store of the topology (each with `"store"`), oldest
/// first; a store that does not answer is read through its mirror's copy.
pub async fn collect_hops(t: &topology::Topology, message_id: &str) -> Vec<Value> {
    let mut hops: Vec<Value> = Vec::new();
    for store in t.nodes_with_role(topology::Role::Store) {
        let Some(c) = client(store) else { continue };
        let found = match c.get_trace(message_id, None).await {
            Ok(v) => Some(v),
            Err(_) => {
                let m = t.mirror_of(&store.name);
                let mut copy = None;
                for mirror in [m.other_site, m.same_site].into_iter().flatten() {
                    if let Some(mc) = t.node(&mirror).and_then(client)
                        && let Ok(v) = mc.get_trace(message_id, Some(&store.name)).await
                    {
                        copy = Some(v);
                        break;
                    }
                }
                copy
            }
        };
        for hop in found
            .iter()
            .flat_map(|v| v["hops"].as_array().cloned().unwrap_or_default())
        {
            let mut hop = hop;
            hop["store"] = json!(store.name);
            hops.push(hop);
        }
    }
    hops.sort_by_key(|h| {
        (
            h["at_ms"].as_i64().unwrap_or(0),
            h["seq"].as_i64().unwrap_or(0),
        )
    });
    hops
}

/// The hops as a table: time, elapsed since the first, node, action, store, detail.
pub fn print_hops(message_id: &str, hops: &[Value]) {
    let first = hops.first().and_then(|h| h["at_ms"].as_i64()).unwrap_or(0);
    println!("message {message_id}");
    println!(
        "{:<14} {:>9}  {:<14} {:<12} {:<10} DETAIL",
        "TIME", "ELAPSED", "NODE", "ACTION", "STORE"
    );
    for h in hops {
        let at = h["at_ms"].as_i64().unwrap_or(0);
        println!(
            "{:<14} {:>8}ms  {:<14} {:<12} {:<10} {}",
            clock(at),
            at - first,
            h["node"].as_str().unwrap_or(""),
            h["action"].as_str().unwrap_or(""),
            h["store"].as_str().unwrap_or(""),
            h["detail"].as_str().unwrap_or(""),
        );
    }
}

/// The most recent messages of a mailbox's INBOX.
pub async fn recipient(data_dir: &Path, address: &str, limit: usize) -> anyhow::Result<()> {
    let (launcher, _) = super::running(data_dir)?;
    let address = address.trim().to_ascii_lowercase();
    // The mailbox's home now (a moved mailbox's record), else its domain's home store.
    let homes = Homes::new(std::sync::Arc::new(launcher.topology.clone()));
    if let Err(e) = homes.refresh().await {
        eprintln!("mailbox homes unreadable ({e}); showing the domain's home store");
    }
    let store = homes
        .node(&address)
        .with_context(|| format!("{address} is not in a customer domain"))?;
    let c = client(store).context("the mailbox store has no store port")?;
    let listing = c.list_mailbox(&address, "INBOX", None).await?;
    println!(
        "{address} INBOX on {} ({} messages)",
        store.name,
        listing.messages.len()
    );
    println!("{:>6}  {:<14} {:>8}  MESSAGE ID", "UID", "RECEIVED", "SIZE");
    let n = listing.messages.len();
    for m in &listing.messages[n.saturating_sub(limit)..] {
        println!(
            "{:>6}  {:<14} {:>8}  {}",
            m.uid,
            clock(m.internal_date_ms),
            m.size,
            m.message_id
        );
    }
    Ok(())
}
