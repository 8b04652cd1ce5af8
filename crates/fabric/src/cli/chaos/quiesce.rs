//! Quiescence after the heal: every store answers with its mail queues empty (what `fabric queue list`
//! and the `fabric_store_queue_depth` gauges show), and the campaign's INBOXes have not grown for
//! `settle`; bounded by `timeout`.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde::Serialize;
use store_client::StoreClient;
use topology::{Role, Topology};

/// Queues that hold work still to do (`archive` keeps moved copies for their retention period).
fn is_work(queue: &str) -> bool {
    queue != "archive"
}

#[derive(Debug, Clone, Serialize)]
pub struct Quiet {
    pub reached: bool,
    /// Seconds spent waiting.
    pub waited: f64,
    /// Items left per `store/queue` at the end (empty when reached).
    pub queued: BTreeMap<String, u64>,
    /// Messages in the campaign's INBOXes at the end.
    pub inbox_messages: u64,
    /// Stores that did not answer at the end.
    pub unreachable: Vec<String>,
}

pub async fn wait(t: &Topology, users: &[String], settle: Duration, timeout: Duration) -> Quiet {
    let start = Instant::now();
    let stores: Vec<(String, StoreClient)> = t
        .nodes_with_role(Role::Store)
        .filter_map(|n| Some((n.name.clone(), StoreClient::for_node(n)?)))
        .map(|(n, c)| (n, c.with_timeout(Duration::from_secs(5))))
        .collect();
    let homes: Vec<(String, StoreClient)> = users
        .iter()
        .filter_map(|u| {
            let c = StoreClient::for_node(t.mailbox_store(u)?)?;
            Some((u.clone(), c.with_timeout(Duration::from_secs(5))))
        })
        .collect();
    let mut last_count = None;
    let mut stable_since = Instant::now();
    let mut last_report = Instant::now();
    loop {
        let mut queued = BTreeMap::new();
        let mut unreachable = Vec::new();
        for (name, c) in &stores {
            match c.queues().await {
                Ok(v) => {
                    for q in v["queues"].as_array().into_iter().flatten() {
                        let qname = q["name"].as_str().unwrap_or("?");
                        let items = q["items"].as_u64().unwrap_or(0);
                        if is_work(qname) && items > 0 {
                            queued.insert(format!("{name}/{qname}"), items);
                        }
                    }
                }
                Err(_) => unreachable.push(name.clone()),
            }
        }
        let mut count = Some(0u64);
        for (user, c) in &homes {
            let n = c.folders(user, None).await.ok().and_then(|v| {
                v["folders"]
                    .as_array()?
                    .iter()
                    .find(|f| f["name"] == "INBOX")
                    .map(|f| f["messages"].as_u64().unwrap_or(0))
            });
            count = match (count, n) {
                (Some(a), Some(b)) => Some(a + b),
                _ => None,
            };
        }
        if count != last_count || count.is_none() {
            last_count = count;
            stable_since = Instant::now();
        }
        let quiet = queued.is_empty() && unreachable.is_empty() && stable_since.elapsed() >= settle;
        if quiet || start.elapsed() >= timeout {
            return Quiet {
                reached: quiet,
                waited: (start.elapsed().as_secs_f64() * 10.0).round() / 10.0,
                queued,
                inbox_messages: count.unwrap_or(0),
                unreachable,
            };
        }
        if last_report.elapsed() >= Duration::from_secs(10) {
            last_report = Instant::now();
            eprintln!(
                "chaos: waiting for quiescence ({:.0}s): queued {queued:?}, unreachable {unreachable:?}, inbox messages {count:?}",
                start.elapsed().as_secs_f64()
            );
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}
