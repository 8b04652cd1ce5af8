//! Outbound delivery: the Internet mail server drains `to-internet` of its site's stores (where the
//! transfer servers put what customers submitted) and delivers each message over SMTP to the remote
//! MX of its recipients' domains.
//!
//! - The remote MX: DNS comes later; today every non-customer domain's MX is the Internet zone's SMTP
//!   sink (the node of role `sink`, its `smtp` port).
//! - One attempt per leased item, one result per recipient: 250 delivered; 4xx or no connection:
//!   deferred (the item comes back after `outbound_retry` × 2^attempts, at most an hour); 5xx: a bounce
//!   (RFC 3464) into the sender's INBOX if the sender is a customer. Past `outbound_max_lifetime` a
//!   temporary failure becomes a bounce too.
//! - When some recipients are done and others must wait, the waiting ones move to a follow-up item
//!   (same body, id `FABRICID.rN`, written before the original is acknowledged), so a recipient
//!   that got the message is never sent it again by a retry.
//! - The item is acknowledged only after the remote MX said 250 (or the bounce is stored).
//! - An item whose meta has `bounce_requested` (`fabric queue bounce`) is not delivered: every
//!   recipient fails with "returned to the sender by the operator" through the same bounce.
//!
//! Metrics: `fabric_outbound_attempts_total`, `fabric_outbound_delivered_total`,
//! `fabric_outbound_deferred_total`, `fabric_outbound_bounced_total` (per recipient).

use smtp::dsn as bounce;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde_json::{Value, json};
use store_client::homes::Homes;
use store_client::{Leased, StoreClient};
use tokio_util::sync::CancellationToken;
use topology::Topology;

use smtp::client::{self, Outcome};

/// The queue the transfer servers fill and this worker drains.
pub const QUEUE: &str = "to-internet";
/// How long a leased item is ours: longer than one SMTP conversation can take.
const LEASE: Duration = Duration::from_secs(600);
const BATCH: u32 = 16;
const IDLE_POLL: Duration = Duration::from_millis(200);
/// Each read or write of the SMTP conversation.
const SMTP_TIMEOUT: Duration = Duration::from_secs(60);
const MAX_BACKOFF: Duration = Duration::from_secs(3600);
/// Why every recipient of an item an operator bounced (meta `bounce_requested`) failed.
pub const RETURNED: &str = "returned to the sender by the operator";

pub struct Worker {
    node: String,
    hostname: String,
    topology: Arc<Topology>,
    /// Who serves each mailbox: a bounce goes to the sender's current home.
    homes: Arc<Homes>,
    stores: Vec<(String, StoreClient)>,
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|r| r.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// The wait before attempt `attempts + 1`.
pub fn backoff(base: Duration, attempts: i64) -> Duration {
    let factor = 1u32 << attempts.clamp(0, 20) as u32;
    base.saturating_mul(factor).min(MAX_BACKOFF)
}

impl Worker {
    pub fn new(topology: Arc<Topology>, node: &topology::Node) -> Worker {
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
            hostname: format!("{}.{}", node.name, topology.fabric.name),
            homes: Homes::spawn(topology.clone()),
            topology,
            stores,
        }
    }

    /// The remote MX for a domain outside the fabric (the Internet zone's SMTP sink until DNS).
    fn remote_mx(&self, _domain: &str) -> Option<SocketAddr> {
        self.topology
            .nodes
            .iter()
            .find(|n| n.role == "sink")
            .and_then(|n| n.service_addr("smtp"))
    }

    /// Leases and delivers until shutdown.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        tracing::info!(stores = self.stores.len(), "outbound delivery worker ready");
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

    async fn handle(&self, store: &StoreClient, item: Leased) {
        let meta = item.meta.clone().unwrap_or(Value::Null);
        let id = meta["fabric_id"]
            .as_str()
            .unwrap_or(&item.message_id)
            .to_string();
        let from = meta["from"].as_str().unwrap_or("").to_string();
        let rcpts = strings(&meta["rcpts"]);
        let submitted = meta["submitted_at_ms"].as_i64().unwrap_or_else(now_ms);
        // An operator gave up on it (`fabric queue bounce`): back to the sender, no delivery.
        if !meta["bounce_requested"].is_null() && !rcpts.is_empty() {
            self.return_to_sender(store, &item, &id, &from, &rcpts)
                .await;
            return;
        }
        // A follow-up item waits out the backoff of the attempt that wrote it.
        if let Some(not_before) = meta["not_before_ms"].as_i64()
            && not_before > now_ms()
            && item.attempts == 0
        {
            let wait = Duration::from_millis((not_before - now_ms()).max(0) as u64);
            if let Err(e) = store.defer(QUEUE, item.id, &item.lease, wait, None).await {
                tracing::warn!(msg_id = %id, error = %e, "defer failed");
            }
            return;
        }
        if rcpts.is_empty() {
            tracing::error!(msg_id = %id, "outbound item without recipients: dropped");
            let _ = store.ack(QUEUE, item.id, &item.lease).await;
            return;
        }
        metrics::counter!("fabric_outbound_attempts_total").increment(1);
        // All recipients go to the same MX today; with DNS this groups by MX.
        let domain = rcpts[0].rsplit_once('@').map(|d| d.1).unwrap_or("");
        let outcomes = match self.remote_mx(domain) {
            Some(mx) => {
                client::deliver(mx, &self.hostname, &from, &rcpts, &item.body, SMTP_TIMEOUT).await
            }
            None => rcpts
                .iter()
                .map(|_| Outcome::Temporary("no remote MX known for the domain".into()))
                .collect(),
        };
        let expired =
            now_ms() - submitted > self.topology.timing.outbound_max_lifetime.as_millis() as i64;
        let (mut delivered, mut waiting, mut failed) = (Vec::new(), Vec::new(), Vec::new());
        for (rcpt, o) in rcpts.iter().zip(outcomes) {
            tracing::info!(msg_id = %id, rcpt = %rcpt, attempt = item.attempts + 1, outcome = ?o, "delivery attempt");
            self.trace(store, &id, "delivery attempt", &format!("{rcpt}: {o:?}"))
                .await;
            match o {
                Outcome::Delivered(_) => delivered.push(rcpt.clone()),
                Outcome::Temporary(why) if expired => failed.push((
                    rcpt.clone(),
                    format!("{why} (given up after the maximum queue lifetime)"),
                )),
                Outcome::Temporary(why) => waiting.push((rcpt.clone(), why)),
                Outcome::Permanent(why) => failed.push((rcpt.clone(), why)),
            }
        }
        metrics::counter!("fabric_outbound_delivered_total").increment(delivered.len() as u64);
        if !failed.is_empty() && !self.bounce(&id, &from, &failed, &item.body).await {
            // The bounce is not stored: nothing is acknowledged; the whole item comes back.
            self.defer(store, &item, &id, "bounce not stored yet").await;
            return;
        }
        if waiting.is_empty() {
            match store.ack(QUEUE, item.id, &item.lease).await {
                Ok(()) => {
                    tracing::info!(msg_id = %id, delivered = delivered.len(), bounced = failed.len(), "outbound done")
                }
                Err(e) => {
                    tracing::warn!(msg_id = %id, error = %e, "ack failed; the item may be tried again")
                }
            }
            return;
        }
        metrics::counter!("fabric_outbound_deferred_total").increment(waiting.len() as u64);
        let why = waiting
            .iter()
            .map(|(r, w)| format!("{r}: {w}"))
            .collect::<Vec<_>>()
            .join("; ");
        if delivered.is_empty() && failed.is_empty() {
            self.defer(store, &item, &id, &why).await;
            return;
        }
        // Some recipients are done: the others wait on a follow-up item, written before the ack.
        let rest: Vec<&String> = waiting.iter().map(|(r, _)| r).collect();
        let mut next = meta.clone();
        if let Some(m) = next.as_object_mut() {
            m.insert("rcpts".into(), json!(rest));
            m.insert("fabric_id".into(), json!(id));
        }
        let follow_id = format!("{}.r{}", item.message_id, item.attempts + 1);
        let wait = backoff(self.topology.timing.outbound_retry, item.attempts);
        if let Some(m) = next.as_object_mut() {
            m.insert(
                "not_before_ms".into(),
                json!(now_ms() + wait.as_millis() as i64),
            );
        }
        match store
            .enqueue(QUEUE, Some(&follow_id), Some(&next), item.body.clone())
            .await
        {
            Ok(_) => {
                tracing::info!(msg_id = %id, waiting = rest.len(), follow_up = %follow_id, "some recipients wait on a follow-up item");
                if let Err(e) = store.ack(QUEUE, item.id, &item.lease).await {
                    tracing::warn!(msg_id = %id, error = %e, "ack failed");
                }
            }
            Err(e) => {
                tracing::warn!(msg_id = %id, error = %e, "follow-up not written");
                self.defer(store, &item, &id, &why).await;
            }
        }
    }

    /// Fails every recipient with [`RETURNED`] through the bounce path, then acknowledges the item.
    async fn return_to_sender(
        &self,
        store: &StoreClient,
        item: &Leased,
        id: &str,
        from: &str,
        rcpts: &[String],
    ) {
        let failed: Vec<(String, String)> = rcpts
            .iter()
            .map(|r| (r.clone(), RETURNED.to_string()))
            .collect();
        tracing::info!(msg_id = %id, rcpts = rcpts.len(), "returned to the sender by the operator");
        self.trace(store, id, "returned", RETURNED).await;
        if !self.bounce(id, from, &failed, &item.body).await {
            self.defer(store, item, id, "bounce not stored yet").await;
            return;
        }
        if let Err(e) = store.ack(QUEUE, item.id, &item.lease).await {
            tracing::warn!(msg_id = %id, error = %e, "ack failed; the item may be returned again");
        }
    }

    async fn defer(&self, store: &StoreClient, item: &Leased, id: &str, why: &str) {
        let wait = backoff(self.topology.timing.outbound_retry, item.attempts);
        tracing::info!(msg_id = %id, attempt = item.attempts + 1, retry_in = ?wait, reason = %why, "deferred");
        self.trace(store, id, "deferred", &format!("retry in {wait:?}: {why}"))
            .await;
        if let Err(e) = store
            .defer(QUEUE, item.id, &item.lease, wait, Some(why))
            .await
        {
            tracing::warn!(msg_id = %id, error = %e, "defer failed; the lease will expire instead");
        }
    }

    /// Stores a bounce in the sender's INBOX (if the sender is a customer); true when done.
    async fn bounce(
        &self,
        id: &str,
        sender: &str,
        failed: &[(String, String)],
        body: &[u8],
    ) -> bool {
        metrics::counter!("fabric_outbound_bounced_total").increment(failed.len() as u64);
        let domain = sender.rsplit_once('@').map(|d| d.1).unwrap_or("");
        if sender.is_empty() || !self.topology.is_customer_domain(domain) {
            tracing::info!(msg_id = %id, sender = %sender, "failed recipients; the sender is not a customer: no bounce");
            return true;
        }
        let Some(home) = self.homes.node(sender) else {
            return false;
        };
        let Some(store) = StoreClient::for_node(home) else {
            return false;
        };
        let dsn = bounce::build(&self.hostname, id, sender, failed, body);
        let bounce_id = format!("{id}.bounce");
        match store
            .append(sender, "INBOX", Some(&bounce_id), &[], dsn)
            .await
        {
            Ok(w) => {
                tracing::info!(msg_id = %id, sender = %sender, failed = failed.len(), uid = w.value.uid, "bounce stored in the sender's INBOX");
                let detail = format!("bounce {bounce_id} to {sender} INBOX on {}", home.name);
                self.trace(&store, id, "bounced", &detail).await;
                true
            }
            Err(e) => {
                tracing::warn!(msg_id = %id, error = %e, "bounce not stored");
                false
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_is_capped() {
        let s = Duration::from_secs(1);
        assert_eq!(backoff(s, 0), s);
        assert_eq!(backoff(s, 3), Duration::from_secs(8));
        assert_eq!(backoff(s, 40), MAX_BACKOFF);
    }
}
