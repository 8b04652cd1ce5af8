//! The store's metrics, each described once so `/metrics` carries HELP text (promtool requires it).
//! docs/operations.md explains each one for operators.

use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};

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
        "Time to execute and commit one batch, fsync included."
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
}
