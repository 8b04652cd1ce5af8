//! `fabric queue`: see into the mail queues and act on them, like Postfix's mailq and postsuper.
//!
//! Covers `relay` (relay servers), `outbound` and `to-internet` (outbound mail) on every store of the
//! topology that answers (the others are named on stderr). An item is named by its fabric message id
//! (every item that carries it, on any store) or exactly by `STORE:QUEUE:ITEMID`.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, SystemTime};

use anyhow::{Context, bail};
use serde_json::{Map, Value, json};
use store_client::{ClientError, QueueItem, StoreClient};
use topology::Topology;

/// The queues `fabric queue` looks at, in the order mail goes through them.
pub const QUEUES: [&str; 3] = ["relay", "outbound", "to-internet"];

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// One queued item and where it is.
#[derive(Debug, Clone)]
pub struct Found {
    pub store: String,
    pub queue: String,
    pub item: QueueItem,
}

impl Found {
    fn meta(&self, key: &str) -> &Value {
        self.item
            .meta
            .as_ref()
            .and_then(|m| m.get(key))
            .unwrap_or(&Value::Null)
    }

    /// The fabric message id (meta `fabric_id`, else the item's message id).
    pub fn fabric_id(&self) -> &str {
        self.meta("fabric_id")
            .as_str()
            .unwrap_or(&self.item.message_id)
    }

    /// `STORE:QUEUE:ITEMID`, the exact name of this item.
    pub fn address(&self) -> String {
        format!("{}:{}:{}", self.store, self.queue, self.item.id)
    }

    /// When the message entered the fabric (received or submitted), else when it was queued here.
    fn since_ms(&self) -> i64 {
        self.meta("received_at_ms")
            .as_i64()
            .or_else(|| self.meta("submitted_at_ms").as_i64())
            .unwrap_or(self.item.enqueued_at_ms)
    }

    fn next_attempt(&self, now: i64) -> String {
        if self.item.held {
            "held".into()
        } else if self.item.leased {
            "leased".into()
        } else if self.item.visible_at_ms <= now {
            "now".into()
        } else {
            let secs = (self.item.visible_at_ms - now + 999) / 1000;
            format!("in {}", super::short_duration(secs.max(0) as u64))
        }
    }

    /// The machine-readable row (`fabric queue list --json`); the names are stable.
    pub fn row(&self, now: i64) -> Value {
        let rcpts: Vec<Value> = self.meta("rcpts").as_array().cloned().unwrap_or_default();
        json!({
            "message_id": self.fabric_id(),
            "queue": self.queue,
            "store": self.store,
            "item": self.address(),
            "sender": self.meta("from").as_str().unwrap_or(""),
            "recipients": rcpts,
            "size": self.item.size,
            "age_seconds": (now - self.since_ms()).max(0) / 1000,
            "attempts": self.item.attempts,
            "next_attempt": self.next_attempt(now),
            "next_attempt_at_ms": self.item.visible_at_ms,
            "held": self.item.held,
            "leased": self.item.leased,
            "last_error": self.item.last_error,
            "accepted_by": self.meta("accepted_by"),
            "bounce_requested": !self.meta("bounce_requested").is_null(),
        })
    }
}

fn client(node: &topology::Node) -> Option<StoreClient> {
    StoreClient::for_node(node).map(|c| c.with_timeout(Duration::from_secs(10)))
}

/// The stores of the topology that answer, with a client each; the others are named on stderr.
async fn reachable(t: &Topology) -> Vec<(String, StoreClient)> {
    let mut out = Vec::new();
    for node in t.nodes_with_role(topology::Role::Store) {
        let Some(c) = client(node) else { continue };
        match c.queues().await {
            Ok(_) => out.push((node.name.clone(), c)),
            Err(e) => eprintln!("fabric: {} does not answer, skipped: {e}", node.name),
        }
    }
    out
}

/// Every item of `queues` on every reachable store.
async fn gather(stores: &[(String, StoreClient)], queues: &[&str]) -> anyhow::Result<Vec<Found>> {
    let mut found = Vec::new();
    for (store, c) in stores {
        for q in queues {
            let items = match c.list_queue(q, None).await {
                Ok(items) => items,
                Err(e) => {
                    eprintln!("fabric: {store} queue {q} not listed: {e}");
                    continue;
                }
            };
            found.extend(items.into_iter().map(|item| Found {
                store: store.clone(),
                queue: q.to_string(),
                item,
            }));
        }
    }
    Ok(found)
}

fn queues_of(filter: Option<&str>) -> anyhow::Result<Vec<&str>> {
    match filter {
        None => Ok(QUEUES.to_vec()),
        Some(q) => match QUEUES.iter().find(|known| **known == q) {
            Some(known) => Ok(vec![*known]),
            None => bail!("unknown queue {q:?}: one of {}", QUEUES.join(", ")),
        },
    }
}

/// `fabric queue list`.
pub async fn list(
    data_dir: &Path,
    node: Option<&str>,
    queue: Option<&str>,
    json_out: bool,
) -> anyhow::Result<()> {
    let (launcher, _) = super::running(data_dir)?;
    let t = &launcher.topology;
    if let Some(n) = node
        && t.node(n).is_none()
    {
        bail!("no node {n:?} in the topology");
    }
    let queues = queues_of(queue)?;
    let stores = reachable(t).await;
    let mut items = gather(&stores, &queues).await?;
    if let Some(n) = node {
        items.retain(|f| f.store == n || f.meta("accepted_by").as_str() == Some(n));
    }
    let now = now_ms();
    if json_out {
        let rows: Vec<Value> = items.iter().map(|f| f.row(now)).collect();
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(());
    }
    println!(
        "{:<34} {:<12} {:<9} {:<24} {:<28} {:>8} {:>7} {:>4} {:<9} LAST ERROR",
        "MESSAGE ID", "QUEUE", "STORE", "SENDER", "RECIPIENTS", "SIZE", "AGE", "TRY", "NEXT"
    );
    for f in &items {
        let r = f.row(now);
        let rcpts: Vec<&str> = r["recipients"]
            .as_array()
            .map(|a| a.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        println!(
            "{:<34} {:<12} {:<9} {:<24} {:<28} {:>8} {:>7} {:>4} {:<9} {}",
            f.fabric_id(),
            f.queue,
            f.store,
            r["sender"].as_str().unwrap_or(""),
            rcpts.join(","),
            f.item.size,
            super::short_duration(r["age_seconds"].as_u64().unwrap_or(0)),
            f.item.attempts,
            r["next_attempt"].as_str().unwrap_or(""),
            f.item.last_error.as_deref().unwrap_or(""),
        );
    }
    // Per queue: items and the oldest one's age.
    let mut summary: BTreeMap<&str, (usize, i64)> = queues.iter().map(|q| (*q, (0, 0))).collect();
    for f in &items {
        let e = summary.entry(f.queue.as_str()).or_insert((0, 0));
        e.0 += 1;
        e.1 = e.1.max((now - f.since_ms()).max(0) / 1000);
    }
    for q in &queues {
        let (n, oldest) = summary.get(q).copied().unwrap_or((0, 0));
        println!(
            "-- {q}: {n} item{}, oldest {}",
            if n == 1 { "" } else { "s" },
            super::short_duration(oldest as u64)
        );
    }
    Ok(())
}

/// The items `id` names: `STORE:QUEUE:ITEMID` exactly, or every item carrying that fabric id.
async fn resolve(
    t: &Topology,
    stores: &[(String, StoreClient)],
    id: &str,
) -> anyhow::Result<Vec<Found>> {
    let parts: Vec<&str> = id.split(':').collect();
    if let [store, queue, item] = parts[..] {
        let item_id: i64 = item
            .parse()
            .with_context(|| format!("{id}: the item id {item:?} is not a number"))?;
        if t.node(store).is_none() {
            bail!("{id}: no store {store:?} in the topology");
        }
        let Some((_, c)) = stores.iter().find(|(name, _)| name == store) else {
            bail!("{id}: store {store} does not answer");
        };
        let items = c
            .list_queue(queue, None)
            .await
            .with_context(|| format!("listing {queue} on {store}"))?;
        return match items.into_iter().find(|i| i.id == item_id) {
            Some(item) => Ok(vec![Found {
                store: store.to_string(),
                queue: queue.to_string(),
                item,
            }]),
            None => bail!("no item {item_id} in queue {queue} of {store} (delivered already?)"),
        };
    }
    let mut matches = gather(stores, &QUEUES).await?;
    matches.retain(|f| f.fabric_id() == id || f.item.message_id == id);
    if matches.is_empty() {
        bail!(
            "no queued item has the id {id} (give a fabric message id, or STORE:QUEUE:ITEMID from \
             `fabric queue list`)"
        );
    }
    if matches.len() > 1 {
        let names: Vec<String> = matches.iter().map(Found::address).collect();
        eprintln!(
            "fabric: {} items carry {id}: {}; acting on all of them",
            matches.len(),
            names.join(", ")
        );
    }
    Ok(matches)
}

/// `fabric queue show ID`: every field of each matching item, then the message's trace.
pub async fn show(data_dir: &Path, id: &str) -> anyhow::Result<()> {
    let (launcher, _) = super::running(data_dir)?;
    let t = &launcher.topology;
    let stores = reachable(t).await;
    let found = resolve(t, &stores, id).await?;
    let now = now_ms();
    for f in &found {
        println!("item {}", f.address());
        let mut row = f.row(now);
        if let Some(o) = row.as_object_mut() {
            o.insert("item_id".into(), json!(f.item.id));
            o.insert("store_message_id".into(), json!(f.item.message_id));
            o.insert("enqueued_at_ms".into(), json!(f.item.enqueued_at_ms));
            o.insert("meta".into(), f.item.meta.clone().unwrap_or(Value::Null));
        }
        println!("{}", serde_json::to_string_pretty(&row)?);
    }
    let mut ids: Vec<&str> = found.iter().map(Found::fabric_id).collect();
    ids.dedup();
    for fabric_id in ids {
        let hops = super::trace::collect_hops(t, fabric_id).await;
        if hops.is_empty() {
            println!("no store has a trace of {fabric_id}");
        } else {
            super::trace::print_hops(fabric_id, &hops);
        }
    }
    Ok(())
}

/// What `fabric queue` does to an item.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Flush,
    Hold,
    Release,
    Bounce,
}

impl Action {
    fn verb(self) -> &'static str {
        match self {
            Action::Flush => "flushed",
            Action::Hold => "held",
            Action::Release => "released",
            Action::Bounce => "marked for return to the sender",
        }
    }
}

async fn act_on(c: &StoreClient, f: &Found, action: Action) -> Result<String, ClientError> {
    let (queue, id) = (f.queue.as_str(), f.item.id);
    // A follow-up item (some recipients done, the others waiting) carries its own not-before time in
    // its meta: "now" must clear it too, or the worker would put it back to wait.
    if matches!(action, Action::Flush | Action::Release) && !f.meta("not_before_ms").is_null() {
        let mut clear = Map::new();
        clear.insert("not_before_ms".into(), Value::Null);
        if !(action == Action::Flush && f.item.held) {
            c.merge_meta(queue, id, &clear).await?;
        }
    }
    let detail = match action {
        Action::Flush => {
            let s = c.flush_item(queue, id).await?.value;
            if s.leased {
                "leased by a worker: it is being tried now".to_string()
            } else {
                "due now".to_string()
            }
        }
        Action::Hold => {
            let s = c.hold(queue, id).await?.value;
            if s.leased {
                "a worker holds its lease: held once this attempt ends".to_string()
            } else {
                "no attempts until released".to_string()
            }
        }
        Action::Release => {
            c.release(queue, id).await?;
            "due now".to_string()
        }
        Action::Bounce => {
            let mut meta = Map::new();
            meta.insert(
                "bounce_requested".into(),
                json!({"by": "operator", "at_ms": now_ms()}),
            );
            let m = c.merge_meta(queue, id, &meta).await?.value;
            if m.held {
                "held: returned once released".to_string()
            } else {
                "the worker of the queue returns it to the sender".to_string()
            }
        }
    };
    Ok(detail)
}

/// `fabric queue flush|hold|release|bounce ID`.
pub async fn act(data_dir: &Path, id: &str, action: Action) -> anyhow::Result<()> {
    let (launcher, _) = super::running(data_dir)?;
    let t = &launcher.topology;
    let stores = reachable(t).await;
    let found = resolve(t, &stores, id).await?;
    let mut failed = 0;
    for f in &found {
        let Some((_, c)) = stores.iter().find(|(name, _)| *name == f.store) else {
            continue;
        };
        match act_on(c, f, action).await {
            Ok(detail) => println!(
                "{} ({}): {}; {detail}",
                f.address(),
                f.fabric_id(),
                action.verb()
            ),
            Err(e) if e.code() == Some("held") => {
                failed += 1;
                eprintln!(
                    "fabric: {} is held: release it first (fabric queue release {})",
                    f.address(),
                    f.address()
                );
            }
            Err(e) if e.code() == Some("no_such_item") => {
                failed += 1;
                eprintln!(
                    "fabric: {} is gone (delivered or returned meanwhile)",
                    f.address()
                );
            }
            Err(e) => {
                failed += 1;
                eprintln!("fabric: {}: {e}", f.address());
            }
        }
    }
    if failed > 0 {
        bail!("{failed} of {} items not {}", found.len(), action.verb());
    }
    Ok(())
}

/// `fabric queue flush` without an id: every queue of every store that answers.
pub async fn flush_all(data_dir: &Path) -> anyhow::Result<()> {
    let (launcher, _) = super::running(data_dir)?;
    let stores = reachable(&launcher.topology).await;
    if stores.is_empty() {
        bail!("no store answers");
    }
    let mut total = 0;
    for (store, c) in &stores {
        for q in QUEUES {
            let n = c
                .flush_queue(q)
                .await
                .with_context(|| format!("flushing {q} on {store}"))?
                .value
                .flushed;
            total += n;
            println!("{store} {q}: {n} flushed");
        }
    }
    println!("{total} items due now");
    Ok(())
}
