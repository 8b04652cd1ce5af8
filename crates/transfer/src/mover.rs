//! Inbound: mail the Internet side queued on `inbound` goes into each recipient's mailbox, on the store
//! that is the home of the recipient's domain (when that is the item's own store, together with the
//! archive move: one write, the body shared, see the store's `notes`). Then the move is written to the transfer log and the
//! message's trace, a copy is kept on `archive` for the retention period, and only then is the inbound
//! item acknowledged. A crash anywhere in between leaves the item leased; the lease expires and the move
//! is done again, which the mailbox de-duplicates by the fabric message id (exactly once).

use std::sync::Arc;
use std::time::Duration;

use mail_parser::MessageParser;
use serde_json::{Value, json};
use store_client::homes::Homes;
use store_client::{Delivery, Hop, Leased, StoreClient};

/// How long a leased item is ours before another transfer server may take it.
pub const LEASE: Duration = Duration::from_secs(60);
/// Items taken per lease request.
pub const BATCH: u32 = 32;

pub struct Mover {
    pub node: String,
    /// Who serves each mailbox (moved ones included).
    pub homes: Arc<Homes>,
    pub retention: Duration,
}

pub fn client(node: &topology::Node) -> Option<StoreClient> {
    StoreClient::for_node(node).map(|c| c.with_timeout(Duration::from_secs(30)))
}

/// From, To, Subject, Date and Message-ID of a message, for the transfer log.
pub fn header_summary(body: &[u8]) -> Value {
    let Some(m) = MessageParser::default().parse_headers(body) else {
        return json!({});
    };
    let addr = |a: Option<&mail_parser::Address<'_>>| {
        a.map(|a| {
            a.iter()
                .filter_map(|x| x.address().map(str::to_string))
                .collect::<Vec<_>>()
                .join(", ")
        })
    };
    json!({
        "from": addr(m.from()),
        "to": addr(m.to()),
        "subject": m.subject(),
        "date": m.date().map(|d| d.to_rfc3339()),
        "message_id": m.message_id(),
    })
}

impl Mover {
    /// The store holding a recipient's mailbox (its home record's, else its domain's home store).
    fn mailbox_store(&self, rcpt: &str) -> Option<(String, StoreClient)> {
        let store = self.homes.node(rcpt)?;
        Some((store.name.clone(), client(store)?))
    }

    /// Moves one leased inbound item of store `source_name`; on failure it is deferred and tried
    /// again later.
    pub async fn deliver(&self, source_name: &str, source: &StoreClient, item: &Leased) {
        let id = &item.message_id;
        match self.try_deliver(source_name, source, item).await {
            Ok(n) => {
                metrics::counter!("fabric_transfer_moved_total", "direction" => "inbound")
                    .increment(1);
                tracing::info!(msg_id = %id, mailboxes = n, "delivered to mailboxes");
            }
            Err(e) => {
                metrics::counter!("fabric_transfer_failures_total").increment(1);
                let delay = Duration::from_secs(5 * (1 + item.attempts.clamp(0, 11) as u64));
                tracing::warn!(msg_id = %id, error = %e, retry_in = ?delay, "move failed; deferred");
                if let Err(e) = source
                    .defer("inbound", item.id, &item.lease, delay, Some(&e))
                    .await
                {
                    tracing::warn!(msg_id = %id, error = %e, "defer failed; the lease will expire instead");
                }
            }
        }
    }

    async fn try_deliver(
        &self,
        source_name: &str,
        source: &StoreClient,
        item: &Leased,
    ) -> Result<usize, String> {
        let id = &item.message_id;
        let meta = item.meta.clone().unwrap_or_default();
        let rcpts: Vec<String> = meta["rcpts"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|r| r.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        if rcpts.is_empty() {
            return Err("no recipients in the item's metadata".into());
        }
        // An infected message (marked by the mail server's antivirus) goes to Quarantine only.
        let (folder, action) = match meta["quarantine"].as_str() {
            Some(_) => ("Quarantine", "quarantined"),
            None => ("INBOX", "delivered"),
        };
        // Mailboxes on the item's own store are delivered with the archive move below; the others
        // get the body appended first. The trace hop goes with each: "RCPT FOLDER uid N on STORE".
        let mut local = Vec::new();
        for rcpt in &rcpts {
            let (store_name, store) = self
                .mailbox_store(rcpt)
                .ok_or_else(|| format!("{rcpt}: no home store for its domain"))?;
            if store_name == source_name {
                local.push((rcpt.as_str(), folder));
                continue;
            }
            let detail = format!("on {store_name}");
            let hop = Hop {
                node: &self.node,
                action,
                detail: Some(&detail),
            };
            store
                .append_traced(rcpt, folder, Some(id), &[], Some(&hop), item.body.clone())
                .await
                .map_err(|e| format!("appending for {rcpt} on {store_name}: {e}"))?;
        }
        // The local deliveries, the archive copy, the transfer log entry and the item's removal
        // from `inbound`: one write, and the body is neither sent nor stored again.
        let summary = header_summary(&item.body);
        let detail = format!("on {source_name}");
        let delivery = Delivery {
            mailboxes: local,
            hop: Some(Hop {
                node: &self.node,
                action,
                detail: Some(&detail),
            }),
        };
        let delivered = source
            .archive_delivering(
                "inbound",
                item,
                "archive",
                self.retention,
                Some(("internet", "isolated", &summary)),
                &delivery,
            )
            .await
            .map_err(|e| format!("delivering on {source_name} and archiving: {e}"))?;
        for d in delivered.iter().filter(|d| d.duplicate) {
            tracing::info!(msg_id = %id, user = %d.user, folder = %d.folder, uid = d.uid,
                "the mailbox had the message already (an earlier attempt)");
        }
        Ok(rcpts.len())
    }

    /// Purges archived copies older than the retention period; younger ones are put back until due.
    pub async fn purge_archive(&self, store: &StoreClient) -> Result<usize, String> {
        let mut purged = 0;
        loop {
            let items = store
                .lease("archive", BATCH, LEASE)
                .await
                .map_err(|e| e.to_string())?;
            if items.is_empty() {
                return Ok(purged);
            }
            let listing = store
                .list_queue("archive", None)
                .await
                .map_err(|e| e.to_string())?;
            let now_ms = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis() as i64)
                .unwrap_or(0);
            let retention_ms = self.retention.as_millis() as i64;
            for item in &items {
                let enqueued = listing
                    .iter()
                    .find(|i| i.id == item.id)
                    .map(|i| i.enqueued_at_ms)
                    .unwrap_or(now_ms);
                let due = enqueued + retention_ms;
                if due <= now_ms {
                    store
                        .ack("archive", item.id, &item.lease)
                        .await
                        .map_err(|e| e.to_string())?;
                    purged += 1;
                    metrics::counter!("fabric_transfer_archive_purged_total").increment(1);
                } else {
                    let wait = Duration::from_millis((due - now_ms) as u64);
                    store
                        .defer("archive", item.id, &item.lease, wait, None)
                        .await
                        .map_err(|e| e.to_string())?;
                }
            }
        }
    }
}
