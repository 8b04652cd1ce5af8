//! Rebuilding a store from its mirror, online.
//!
//! A store that starts on an empty disk first asks each of its mirrors how much of it they hold; if any
//! holds something, the store lost its disk, and it takes the newest copy before it serves (it does not
//! serve an empty mailbox in the meantime). An operator can also rebuild a running store whose data is
//! damaged: `fabric store rebuild NODE` calls `POST /admin/rebuild` on its admin port.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::Router;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde_json::json;

use crate::api::{Params, query};
use crate::error::StoreError;
use crate::requests::{Reply, Request};
use crate::{Store, db};

pub fn admin_routes(store: Arc<Store>) -> Router {
    Router::new()
        .route("/admin/rebuild", post(rebuild_handler))
        .with_state(store)
}

async fn rebuild_handler(
    State(store): State<Arc<Store>>,
    q: Result<Query<Params>, QueryRejection>,
) -> Result<Response, StoreError> {
    let q = query(q)?;
    let (from, lsn) = rebuild(&store, q.get("from").cloned(), true).await?;
    Ok(
        axum::Json(json!({"store": store.ctx.node.name, "rebuilt_from": from, "lsn": lsn}))
            .into_response(),
    )
}

/// At start-up on an empty disk: waits until every mirror has said what it holds of this store, and
/// rebuilds from the newest copy if there is one. A standby store that finds no copy still begins a
/// new epoch: what it writes is a history the original's own must not be mistaken for.
pub async fn recover_if_lost(store: &Arc<Store>) -> anyhow::Result<()> {
    let me = store.ctx.node.name.clone();
    let mut attempts = 0u64;
    loop {
        let mut best: Option<(String, (u64, u64))> = None;
        let mut missing = Vec::new();
        for link in store.repl.links() {
            match link.client().replica_position(&me).await {
                Ok(at) if at.lsn > 0 && best.as_ref().is_none_or(|b| (at.epoch, at.lsn) > b.1) => {
                    best = Some((link.name.clone(), (at.epoch, at.lsn)));
                }
                Ok(_) => {}
                Err(e) => missing.push(format!("{}: {e}", link.name)),
            }
        }
        if let Some((from, (epoch, lsn))) = best {
            tracing::warn!(from = %from, mirror_lsn = lsn, mirror_epoch = epoch, "empty disk but a mirror holds this store's data: rebuilding before serving");
            rebuild(store, Some(from), false).await?;
            return Ok(());
        }
        if missing.is_empty() {
            if node_runtime::logging::standby_by().is_some() {
                store.writer.write(Request::BeginEpoch { above: 0 }).await?;
                tracing::info!(
                    epoch = store.repl.epoch(),
                    "standby on an empty copy: a new epoch of this store begins"
                );
            }
            return Ok(());
        }
        if attempts.is_multiple_of(20) {
            tracing::warn!(unreachable = ?missing, "empty disk: waiting for every mirror to say whether it holds this store's data");
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(500)) => attempts += 1,
            _ = store.ctx.shutdown.cancelled() => anyhow::bail!("shut down while waiting for mirrors"),
        }
    }
}

/// Replaces this store's data with the newest copy held by its mirrors (or by `from`), and begins a
/// new epoch (see `epoch`). With `settle`, writes this store already accepted first reach the mirrors
/// (a running store; at start-up nothing ships yet).
pub async fn rebuild(
    store: &Arc<Store>,
    from: Option<String>,
    settle: bool,
) -> Result<(String, u64), StoreError> {
    if store.rebuilding.swap(true, Ordering::SeqCst) {
        return Err(StoreError::Unavailable(
            "a rebuild is already running".into(),
        ));
    }
    let result = run(store, from, settle).await;
    store.rebuilding.store(false, Ordering::SeqCst);
    match &result {
        Ok((from, lsn)) => {
            metrics::counter!("fabric_store_rebuilds_total").increment(1);
            tracing::info!(from = %from, lsn, "rebuilt from mirror");
        }
        Err(e) => tracing::error!(error = %e, "rebuild failed; the store keeps its previous data"),
    }
    result
}

async fn run(
    store: &Arc<Store>,
    from: Option<String>,
    settle: bool,
) -> Result<(String, u64), StoreError> {
    let me = store.ctx.node.name.clone();
    if settle {
        // Let writes already accepted reach the mirrors, so the copy we take includes them.
        let local = store.writer.barrier().await?;
        let _ = store
            .repl
            .wait_durable(local, store.config.mirror_timeout * 2)
            .await;
    }
    let mut best: Option<(String, (u64, u64))> = None;
    for link in store.repl.links() {
        if from.as_deref().is_some_and(|f| f != link.name) {
            continue;
        }
        match link.client().replica_position(&me).await {
            Ok(at) if best.as_ref().is_none_or(|b| (at.epoch, at.lsn) > b.1) => {
                best = Some((link.name.clone(), (at.epoch, at.lsn)))
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(mirror = %link.name, error = %e, "mirror unreachable for rebuild")
            }
        }
    }
    let (source, (source_epoch, _)) = best.ok_or_else(|| match &from {
        Some(f) => {
            StoreError::Unavailable(format!("{f:?} is not a reachable mirror of this store"))
        }
        None => StoreError::Unavailable("no mirror of this store is reachable".into()),
    })?;
    let link = store
        .repl
        .links()
        .iter()
        .find(|l| l.name == source)
        .ok_or_else(|| StoreError::Internal("mirror vanished".into()))?;
    let file = store.scratch_file("rebuild");
    let lsn = link
        .client()
        .download_snapshot(&me, &file)
        .await
        .map_err(|e| StoreError::Unavailable(format!("downloading the copy from {source}: {e}")))?;
    tracing::info!(from = %source, lsn, "downloaded this store's copy; installing it");
    store.readers().close().await;
    let installed = store.writer.install(file.clone()).await;
    let _ = std::fs::remove_file(&file);
    store.set_readers(db::open_readers(&store.db_path).await?);
    installed?;
    // What follows is a history of its own: a new epoch, so the old writer's copies cannot mix in.
    let (lsn, reply) = store
        .writer
        .write(Request::BeginEpoch {
            above: source_epoch,
        })
        .await?;
    if let Reply::Seq(epoch) = reply {
        tracing::info!(from = %source, epoch, epoch_start = lsn, "a new epoch of this store begins");
    }
    Ok((source, lsn))
}
