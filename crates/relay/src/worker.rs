//! The relay's delivery worker: leases the `relay` queue of this site's stores and hands each message
//! to its home site every `timing.relay_retry`, until it is delivered, returned after
//! `timing.relay_max_lifetime`, or returned because an operator said so (`bounce_requested` in its
//! metadata, set by `fabric queue bounce`).
//!
//! - One attempt per leased item, one outcome per recipient: delivered; temporary (every path
//!   failed): wait; permanent (the home site refused the recipient): returned to the sender.
//! - When some recipients are done and others wait, the waiting ones move to a follow-up item (same
//!   body and fabric id, id `ITEM.rN`) written before the original is acknowledged, so nobody gets the
//!   message twice from the relay (and if they did, the home site de-duplicates by the fabric id).
//! - The sender gets one delay notice once the message has waited `relay_delay_warning`; the
//!   follow-up item records that it was sent.
//! - The item is acknowledged only once every recipient is delivered or reported back.

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use serde_json::{Value, json};
use smtp::client::Outcome;
use store_client::{Leased, StoreClient};
use tokio_util::sync::CancellationToken;
use topology::Topology;

use crate::accept::QUEUE;
use crate::handover;
use crate::returns::{Returns, Sent};
use crate::standby::Standby;

const LEASE: Duration = Duration::from_secs(600);
const BATCH: u32 = 64;
const IDLE_POLL: Duration = Duration::from_millis(250);

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// What the relay did, for `/status`.
#[derive(Default)]
pub struct Stats {
    attempts: AtomicU64,
    delivered: AtomicU64,
    deferred: AtomicU64,
    bounced: AtomicU64,
    delay_notices: AtomicU64,
    standby_handovers: AtomicU64,
}

impl Stats {
    pub fn snapshot(&self) -> Value {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        json!({
            "handover_attempts": get(&self.attempts),
            "delivered": get(&self.delivered),
            "deferred": get(&self.deferred),
            "bounced": get(&self.bounced),
            "delay_notices": get(&self.delay_notices),
            "standby_handovers": get(&self.standby_handovers),
        })
    }
}

pub struct Worker {
    node: String,
    source: IpAddr,
    topology: Arc<Topology>,
    stores: Vec<(String, StoreClient)>,
    returns: Returns,
    standby: Standby,
    stats: Arc<Stats>,
}

/// A leased item's envelope, from its metadata.
struct Held {
    id: String,
    from: String,
    rcpts: Vec<String>,
    received_at_ms: i64,
    meta: Value,
}

impl Held {
    fn read(item: &Leased) -> Held {
        let meta = item.meta.clone().unwrap_or(Value::Null);
        let rcpts = meta["rcpts"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|r| r.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        Held {
            id: meta["fabric_id"]
                .as_str()
                .unwrap_or(&item.message_id)
                .to_string(),
            from: meta["from"].as_str().unwrap_or("").to_string(),
            rcpts,
            received_at_ms: meta["received_at_ms"].as_i64().unwrap_or_else(now_ms),
            meta,
        }
    }

    fn waited(&self) -> Duration {
        Duration::from_millis((now_ms() - self.received_at_ms).max(0) as u64)
    }
}

impl Worker {
    pub fn new(topology: Arc<Topology>, node: &topology::Node, hostname: &str) -> Worker {
        let stores = topology
            .site_stores(&node.site)
            .into_iter()
            .filter_map(|s| {
                let c = StoreClient::for_node(s)?.with_timeout(Duration::from_secs(30));
                Some((s.name.clone(), c))
            })
            .collect();
        Worker {
            node: node.name.clone(),
            source: IpAddr::V4(node.source_ip()),
            returns: Returns::new(topology.clone(), hostname),
            standby: Standby::new(&topology, node),
            topology,
            stores,
            stats: Arc::new(Stats::default()),
        }
    }

    pub fn stats(&self) -> Arc<Stats> {
        self.stats.clone()
    }

    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        tracing::info!(stores = self.stores.len(), retry = ?self.topology.timing.relay_retry, "relay delivery worker ready");
        let drain = store_client::Drain {
            stores: &self.stores,
            queue: QUEUE,
            batch: BATCH,
            lease: LEASE,
            idle: IDLE_POLL,
        };
        drain
            .run(shutdown, |store, item| {
                let me = self.clone();
                async move { me.handle(&store, item).await }
            })
            .await;
    }

    async fn trace(&self, store: &StoreClient, id: &str, action: &str, detail: &str) {
        if let Err(e) = store.trace(id, &self.node, action, Some(detail)).await {
            tracing::warn!(msg_id = %id, error = %e, "trace not written");
        }
    }

    /// The home site of a message's recipients (they are all of one site: the relay accepts only
    /// the domains it stands in for, and hands each site's recipients over separately below).
    fn home_of(&self, rcpt: &str) -> String {
        let domain = rcpt.rsplit_once('@').map(|d| d.1).unwrap_or("");
        self.topology.home_site(domain).unwrap_or("").to_string()
    }

    /// One hand-over of `rcpts` (all of `home`), asking for a standby first when one is due.
    async fn hand_over(
        &self,
        store: &StoreClient,
        item: &Leased,
        held: &Held,
        home: &str,
        rcpts: &[String],
    ) -> Vec<Outcome> {
        let paths = self
            .topology
            .smtp_entry(home, item.attempts.max(0) as usize);
        let helo = self.returns.hostname().to_string();
        let (path, outcomes) =
            handover::deliver(&paths, self.source, &helo, &held.from, rcpts, &item.body).await;
        let all_waiting = outcomes.iter().all(|o| matches!(o, Outcome::Temporary(_)));
        if !all_waiting || !self.standby.due(item.attempts + 1, held.waited()) {
            if let Some(p) = path {
                tracing::info!(msg_id = %held.id, path = %p, "handed over");
            }
            return outcomes;
        }
        let reason = format!(
            "{home} has not taken mail for {:?} (attempt {})",
            held.waited(),
            item.attempts + 1
        );
        let serving = self.standby.ask(home, &reason).await;
        if serving.is_empty() {
            return outcomes;
        }
        let detail = format!("standby serving {}: handing over again", serving.join(", "));
        self.trace(store, &held.id, "standby", &detail).await;
        let (path, again) =
            handover::deliver(&paths, self.source, &helo, &held.from, rcpts, &item.body).await;
        if path.is_some() {
            self.stats.standby_handovers.fetch_add(1, Ordering::Relaxed);
            tracing::info!(msg_id = %held.id, path = ?path, standby = ?serving, "handed over to the standby");
        }
        again
    }

    async fn handle(&self, store: &StoreClient, item: Leased) {
        let held = Held::read(&item);
        if let Some(not_before) = held.meta["not_before_ms"].as_i64()
            && not_before > now_ms()
            && item.attempts == 0
        {
            let wait = Duration::from_millis((not_before - now_ms()).max(0) as u64);
            let _ = store.defer(QUEUE, item.id, &item.lease, wait, None).await;
            return;
        }
        if held.rcpts.is_empty() {
            tracing::error!(msg_id = %held.id, "relay item without recipients: dropped");
            let _ = store.ack(QUEUE, item.id, &item.lease).await;
            return;
        }
        let operator = held.meta.get("bounce_requested").is_some();
        let expired = held.waited() >= self.topology.timing.relay_max_lifetime;
        let mut outcomes: Vec<(String, Outcome)> = Vec::new();
        if operator {
            for r in &held.rcpts {
                let why = "returned to the sender by the operator (fabric queue bounce)";
                outcomes.push((r.clone(), Outcome::Permanent(why.into())));
            }
        } else {
            self.stats.attempts.fetch_add(1, Ordering::Relaxed);
            metrics::counter!("fabric_relay_attempts_total").increment(1);
            let mut homes: Vec<String> = held.rcpts.iter().map(|r| self.home_of(r)).collect();
            homes.sort();
            homes.dedup();
            for home in homes {
                let rcpts: Vec<String> = held
                    .rcpts
                    .iter()
                    .filter(|r| self.home_of(r) == home)
                    .cloned()
                    .collect();
                let got = self.hand_over(store, &item, &held, &home, &rcpts).await;
                outcomes.extend(rcpts.into_iter().zip(got));
            }
        }
        let (mut delivered, mut waiting, mut failed) = (Vec::new(), Vec::new(), Vec::new());
        for (rcpt, o) in outcomes {
            tracing::info!(msg_id = %held.id, rcpt = %rcpt, attempt = item.attempts + 1, outcome = ?o, "hand-over attempt");
            match o {
                Outcome::Delivered(_) => delivered.push(rcpt),
                Outcome::Temporary(why) if expired => failed.push((
                    rcpt,
                    format!("{why} (given up after the maximum queue lifetime)"),
                )),
                Outcome::Temporary(why) => waiting.push((rcpt, why)),
                Outcome::Permanent(why) => failed.push((rcpt, why)),
            }
        }
        if !delivered.is_empty() {
            metrics::counter!("fabric_relay_delivered_total").increment(delivered.len() as u64);
            self.stats
                .delivered
                .fetch_add(delivered.len() as u64, Ordering::Relaxed);
            let detail = format!("handed over for {}", delivered.join(", "));
            self.trace(store, &held.id, "relayed", &detail).await;
        }
        if !failed.is_empty() {
            let dsn = smtp::dsn::build(
                self.returns.hostname(),
                &held.id,
                &held.from,
                &failed,
                &item.body,
            );
            match self.returns.send(&held.id, "bounce", &held.from, dsn).await {
                Sent::Done(how) => {
                    metrics::counter!("fabric_relay_bounced_total").increment(failed.len() as u64);
                    self.stats
                        .bounced
                        .fetch_add(failed.len() as u64, Ordering::Relaxed);
                    tracing::info!(msg_id = %held.id, sender = %held.from, failed = failed.len(), how = %how, "returned to the sender");
                    self.trace(store, &held.id, "bounced", &how).await;
                }
                Sent::Later(why) => {
                    // Nothing is acknowledged until the sender has the report.
                    self.defer(
                        store,
                        &item,
                        &held.id,
                        &format!("bounce not sent yet: {why}"),
                    )
                    .await;
                    return;
                }
            }
        }
        if waiting.is_empty() {
            if let Err(e) = store.ack(QUEUE, item.id, &item.lease).await {
                tracing::warn!(msg_id = %held.id, error = %e, "ack failed; the item may be tried again");
            }
            return;
        }
        let why = waiting
            .iter()
            .map(|(r, w)| format!("{r}: {w}"))
            .collect::<Vec<_>>()
            .join("; ");
        let warn_now = held.meta["delay_notified"].as_bool() != Some(true)
            && held.waited() >= self.topology.timing.relay_delay_warning;
        let mut notified = false;
        if warn_now {
            let until = SystemTime::UNIX_EPOCH
                + Duration::from_millis(held.received_at_ms.max(0) as u64)
                + self.topology.timing.relay_max_lifetime;
            let dsn = smtp::dsn::build_delay(
                self.returns.hostname(),
                &held.id,
                &held.from,
                &waiting,
                &item.body,
                until,
            );
            match self.returns.send(&held.id, "delay", &held.from, dsn).await {
                Sent::Done(how) => {
                    notified = true;
                    metrics::counter!("fabric_relay_delay_notices_total").increment(1);
                    self.stats.delay_notices.fetch_add(1, Ordering::Relaxed);
                    tracing::info!(msg_id = %held.id, sender = %held.from, how = %how, "delay notice sent");
                    self.trace(store, &held.id, "delay notice", &how).await;
                }
                Sent::Later(e) => {
                    tracing::warn!(msg_id = %held.id, error = %e, "delay notice not sent; next round")
                }
            }
        }
        metrics::counter!("fabric_relay_deferred_total").increment(waiting.len() as u64);
        self.stats
            .deferred
            .fetch_add(waiting.len() as u64, Ordering::Relaxed);
        if delivered.is_empty() && failed.is_empty() && !notified {
            self.defer(store, &item, &held.id, &why).await;
            return;
        }
        // Some recipients are done, or the notice went out: the rest waits on a follow-up item that
        // says so, written before this one is acknowledged.
        let rest: Vec<&String> = waiting.iter().map(|(r, _)| r).collect();
        let mut next = held.meta.clone();
        if let Some(m) = next.as_object_mut() {
            m.insert("rcpts".into(), json!(rest));
            m.insert("fabric_id".into(), json!(held.id));
            m.insert("received_at_ms".into(), json!(held.received_at_ms));
            m.insert(
                "not_before_ms".into(),
                json!(now_ms() + self.topology.timing.relay_retry.as_millis() as i64),
            );
            m.insert("last_error".into(), json!(why));
            if notified {
                m.insert("delay_notified".into(), json!(true));
            }
        }
        let follow_id = format!("{}.r{}", item.message_id, item.attempts + 1);
        match store
            .enqueue(QUEUE, Some(&follow_id), Some(&next), item.body.clone())
            .await
        {
            Ok(_) => {
                tracing::info!(msg_id = %held.id, waiting = rest.len(), follow_up = %follow_id, "the rest waits on a follow-up item");
                if let Err(e) = store.ack(QUEUE, item.id, &item.lease).await {
                    tracing::warn!(msg_id = %held.id, error = %e, "ack failed");
                }
            }
            Err(e) => {
                tracing::warn!(msg_id = %held.id, error = %e, "follow-up not written");
                self.defer(store, &item, &held.id, &why).await;
            }
        }
    }

    async fn defer(&self, store: &StoreClient, item: &Leased, id: &str, why: &str) {
        let wait = self.topology.timing.relay_retry;
        tracing::info!(msg_id = %id, attempt = item.attempts + 1, retry_in = ?wait, reason = %why, "held; retrying later");
        self.trace(store, id, "held", &format!("retry in {wait:?}: {why}"))
            .await;
        if let Err(e) = store
            .defer(QUEUE, item.id, &item.lease, wait, Some(why))
            .await
        {
            tracing::warn!(msg_id = %id, error = %e, "defer failed; the lease will expire instead");
        }
    }
}
