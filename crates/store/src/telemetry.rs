//! The store's metrics, each described once so `/metrics` carries HELP text (promtool requires it).
//! docs/operations.md explains each one for operators.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
use sqlx::Row;

use crate::Store;
use crate::util::now_ms;

pub fn describe() {
    describe_counter!(
        "fabric_store_requests_total",
        "HTTP requests served, by route, method and status."
    );
    describe_histogram!(
        "fabric_store_request_seconds",
        Unit::Seconds,
        "Time to answer an HTTP request, by route (writes include the mirror's ack)."
    );
    describe_counter!(
        "fabric_store_errors_total",
        "Requests refused or failed, by error code (bad_request, too_large, storage_full, ...)."
    );
    describe_counter!(
        "fabric_store_write_batches_total",
        "Transactions committed by the writer (each one fsync)."
    );
    describe_histogram!(
        "fabric_store_batch_requests",
        "Write requests sharing one commit (group commit)."
    );
    describe_histogram!(
        "fabric_store_commit_seconds",
        Unit::Seconds,
        "Time to execute and commit one batch (its sync is the syncer's: see fabric_store_sync_seconds)."
    );
    describe_histogram!(
        "fabric_store_sync_seconds",
        Unit::Seconds,
        "One round of the syncer: fdatasync of the body segments and the WAL, in parallel."
    );
    describe_histogram!(
        "fabric_store_sync_batches",
        "Committed batches one sync round made durable."
    );
    describe_counter!(
        "fabric_store_body_segments_deleted_total",
        "Body segment files deleted because no row references them any more."
    );
    describe_counter!(
        "fabric_store_body_bytes_compacted_total",
        "Live body bytes copied out of mostly dead segments so those can be deleted."
    );
    describe_counter!(
        "fabric_store_body_checksum_failures_total",
        "Bodies whose bytes on disk fail their CRC-32 (never served)."
    );
    describe_counter!(
        "fabric_store_ops_total",
        "Physical operations written to this store's own data."
    );
    describe_counter!(
        "fabric_store_storage_full_total",
        "Batches refused because the disk or the quota is full (answered 507)."
    );
    describe_gauge!(
        "fabric_store_lsn",
        "Sequence number of the last batch committed to this store's own data."
    );
    describe_gauge!(
        "fabric_store_mirror_up",
        "1 while a mirror answers, 0 while it is unreachable, by mirror."
    );
    describe_gauge!(
        "fabric_store_mirror_acked_lsn",
        "Last batch a mirror confirmed holding, by mirror."
    );
    describe_counter!(
        "fabric_store_shipments_total",
        "Replication requests sent to a mirror, by mirror."
    );
    describe_counter!(
        "fabric_store_shipped_batches_total",
        "Batches shipped to a mirror, by mirror."
    );
    describe_counter!(
        "fabric_store_snapshots_sent_total",
        "Full copies sent to a mirror too far behind the replication log."
    );
    describe_gauge!(
        "fabric_store_degraded",
        "1 while the other site's mirror is not in sync and second copies go to the same-site mirror."
    );
    describe_counter!(
        "fabric_store_degraded_writes_total",
        "Writes acknowledged with their second copy on the same-site mirror."
    );
    describe_counter!(
        "fabric_store_unmirrored_writes_total",
        "Writes committed here that no mirror confirmed in time (answered 503, retry)."
    );
    describe_gauge!(
        "fabric_store_replica_lsn",
        "Last batch held of a mirrored store's data, by origin store."
    );
    describe_counter!(
        "fabric_store_replica_ops_total",
        "Physical operations applied to the copy of a mirrored store, by origin."
    );
    describe_counter!(
        "fabric_store_rebuilds_total",
        "Times this store replaced its data with a copy from its mirror."
    );
    describe_gauge!(
        "fabric_store_epoch",
        "This store's epoch: one more after every rebuild or rejoin."
    );
    describe_counter!(
        "fabric_store_superseded_total",
        "Shipments a mirror refused because it holds a newer epoch of this store (rejoin needed)."
    );
    describe_counter!(
        "fabric_store_rejoins_total",
        "Start-ups that found a standby had continued this store and took its history."
    );
    describe_counter!(
        "fabric_store_rejoin_ops_total",
        "What rejoins did with this store's own tail, by operation and result."
    );
    describe_counter!(
        "fabric_store_mailbox_imports_total",
        "Mailbox folders imported from another store (mailbox failover and fail-back)."
    );
    describe_counter!(
        "fabric_store_mailbox_import_failures_total",
        "Mailbox imports that failed."
    );
    describe_counter!(
        "fabric_store_mailbox_import_uidvalidity_changes_total",
        "Imported folders that got a new UIDVALIDITY because their UIDs could not be kept."
    );
    describe_gauge!(
        "fabric_store_queue_depth",
        "Items in a queue of this store's own data (held and leased ones included), by queue."
    );
    describe_gauge!(
        "fabric_store_queue_oldest_age_seconds",
        Unit::Seconds,
        "Age of the oldest item of a queue (since it was enqueued; 0 when empty), by queue."
    );
}

/// How often the queue gauges are refreshed at most.
const QUEUE_GAUGES_EVERY: Duration = Duration::from_secs(1);
/// The refresh scans every queued item: it waits this many times as long as the last scan took, so
/// a long backlog (a relay holding mail for a dead site, a queue nobody consumes) costs the store at
/// most 2% of a CPU rather than a scan a second.
const QUEUE_GAUGES_COST_FACTOR: u32 = 50;

/// How long to wait before the next refresh of the queue gauges, after one that took `took`.
fn queue_gauges_pause(took: Duration) -> Duration {
    QUEUE_GAUGES_EVERY.max(took.saturating_mul(QUEUE_GAUGES_COST_FACTOR))
}

/// Refreshes `fabric_store_queue_depth` and `fabric_store_queue_oldest_age_seconds` every second
/// (less often on a long backlog, see `queue_gauges_pause`) with one GROUP BY over the queue index;
/// a queue that emptied reads 0.
pub fn spawn_queue_gauges(store: Arc<Store>) {
    tokio::spawn(async move {
        let mut seen: BTreeSet<String> = BTreeSet::new();
        let mut pause = QUEUE_GAUGES_EVERY;
        loop {
            tokio::select! {
                _ = tokio::time::sleep(pause) => {}
                _ = store.ctx.shutdown.cancelled() => return,
            }
            if store.check_serving().is_err() {
                continue;
            }
            let started = std::time::Instant::now();
            let rows = sqlx::query(
                "SELECT queue, COUNT(*) AS items, MIN(enqueued_at_ms) AS oldest
                 FROM queue_items GROUP BY queue",
            )
            .fetch_all(&store.readers())
            .await;
            pause = queue_gauges_pause(started.elapsed());
            let rows = match rows {
                Ok(r) => r,
                Err(e) => {
                    tracing::debug!(error = %e, "queue gauges not refreshed");
                    continue;
                }
            };
            let now = now_ms();
            let mut present = BTreeSet::new();
            for r in rows {
                let (Ok(queue), Ok(items), Ok(oldest)) = (
                    r.try_get::<String, _>("queue"),
                    r.try_get::<i64, _>("items"),
                    r.try_get::<i64, _>("oldest"),
                ) else {
                    continue;
                };
                let age = (now - oldest).max(0) as f64 / 1000.0;
                metrics::gauge!("fabric_store_queue_depth", "queue" => queue.clone())
                    .set(items as f64);
                metrics::gauge!("fabric_store_queue_oldest_age_seconds", "queue" => queue.clone())
                    .set(age);
                present.insert(queue);
            }
            for gone in seen.difference(&present) {
                metrics::gauge!("fabric_store_queue_depth", "queue" => gone.clone()).set(0.0);
                metrics::gauge!("fabric_store_queue_oldest_age_seconds", "queue" => gone.clone())
                    .set(0.0);
            }
            seen.extend(present);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_queue_gauges_refresh_every_second_unless_the_scan_is_long() {
        assert_eq!(
            queue_gauges_pause(Duration::from_millis(3)),
            QUEUE_GAUGES_EVERY
        );
        assert_eq!(
            queue_gauges_pause(Duration::from_millis(20)),
            QUEUE_GAUGES_EVERY
        );
        // A 60 ms scan: every 3 s, 2% of a CPU.
        assert_eq!(
            queue_gauges_pause(Duration::from_millis(60)),
            Duration::from_secs(3)
        );
    }
}
