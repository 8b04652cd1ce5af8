//! Outbound: mail customers submitted on the isolated side (queue `outbound`) moves to the Internet
//! side: onto `to-internet` of the same store, which the Internet mail servers of the site drain and
//! deliver to remote MXes. Like the inbound move, it is written to the transfer log (header summary)
//! and the message's trace, a copy is kept on `archive` for the retention period, and the `outbound`
//! item is acknowledged last.
//!
//! Exactly once onto `to-internet`: the enqueue carries the fabric message id (the store refuses a
//! second item with the same id while the first is queued), and a move repeated after a crash first
//! asks the store's catalog whether the archive copy, written after the `to-internet` item, is there
//! already: then the move was complete and the item is only acknowledged.

use std::time::Duration;

use serde_json::Value;
use store_client::{Hop, Leased, StoreClient};

use crate::mover::{Mover, header_summary};

/// The queue the Internet mail servers deliver from.
pub const TO_INTERNET: &str = "to-internet";

impl Mover {
    /// Moves one leased outbound item; on failure it is deferred and tried again later.
    pub async fn forward(&self, source_name: &str, source: &StoreClient, item: &Leased) {
        let id = &item.message_id;
        match self.try_forward(source_name, source, item).await {
            Ok(again) => {
                metrics::counter!("fabric_transfer_moved_total", "direction" => "outbound")
                    .increment(1);
                tracing::info!(msg_id = %id, repeated = again, "moved to the Internet side");
            }
            Err(e) => {
                metrics::counter!("fabric_transfer_failures_total").increment(1);
                let delay = Duration::from_secs(5 * (1 + item.attempts.clamp(0, 11) as u64));
                tracing::warn!(msg_id = %id, error = %e, retry_in = ?delay, "outbound move failed; deferred");
                if let Err(e) = source
                    .defer("outbound", item.id, &item.lease, delay, Some(&e))
                    .await
                {
                    tracing::warn!(msg_id = %id, error = %e, "defer failed; the lease will expire instead");
                }
            }
        }
    }

    /// Whether the archive of `source` already holds this message (a previous move got that far).
    async fn archived(&self, source_name: &str, source: &StoreClient, id: &str) -> bool {
        let Ok(catalog) = source.catalog(id).await else {
            return false;
        };
        catalog["locations"].as_array().is_some_and(|l| {
            l.iter().any(|loc| {
                loc["store"] == source_name
                    && loc["location"]
                        .as_str()
                        .is_some_and(|s| s.starts_with("queue/archive/"))
            })
        })
    }

    async fn try_forward(
        &self,
        source_name: &str,
        source: &StoreClient,
        item: &Leased,
    ) -> Result<bool, String> {
        let id = &item.message_id;
        let again = self.archived(source_name, source, id).await;
        if !again {
            let mut meta = item.meta.clone().unwrap_or(Value::Null);
            if let Some(m) = meta.as_object_mut() {
                m.insert("transferred_by".into(), self.node.clone().into());
            }
            let detail = format!("{TO_INTERNET} on {source_name}");
            let hop = Hop {
                node: &self.node,
                action: "transferred",
                detail: Some(&detail),
            };
            let w = source
                .enqueue_traced(
                    TO_INTERNET,
                    Some(id),
                    Some(&meta),
                    Some(&hop),
                    item.body.clone(),
                )
                .await
                .map_err(|e| format!("enqueue on {TO_INTERNET} of {source_name}: {e}"))?;
            tracing::info!(msg_id = %id, store = %source_name, duplicate = w.value.duplicate,
                copies = ?w.copies, "queued for the Internet mail servers");
        }
        // The archive copy and the transfer log entry, with the item's removal from `outbound`, in
        // one write (the body stays where it is).
        let summary = header_summary(&item.body);
        source
            .archive(
                "outbound",
                item.id,
                &item.lease,
                "archive",
                self.retention,
                (!again).then_some(("isolated", "internet", &summary)),
            )
            .await
            .map_err(|e| format!("archiving: {e}"))?;
        Ok(again)
    }
}
