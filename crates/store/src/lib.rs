//! The `store` role: the fabric's NFS-style message store, served over HTTP.
//!
//! A store keeps queues (enqueue, lease, ack, defer), mailboxes (append with IMAP UIDs, flags, expunge),
//! logs (per-message trace, transfer log), configuration (directory of users, sender blocklist) and a
//! tracking catalog of where each message lives. Every write is acknowledged only once it is fsynced here
//! and on a mirror (see `replication`). It also holds the copies of the stores it mirrors (`replicas`).
//!
//! # Layout
//! - `db`: SQLite files (WAL), schema, snapshots.
//! - `bodies`: message bodies in append-only segment files beside each database, and their upkeep.
//! - `ops`: physical operations, applied identically by a store and its mirrors.
//! - `requests`: write requests and how they become physical operations.
//! - `mailbox_move`: mailbox homes (epochs) and the import that merges a mailbox from another store.
//! - `queue_admin`: operators' hold, release, flush and metadata changes of queue items.
//! - `writer`: the group-commit writer task; `syncer`: the thread that makes its commits durable
//!   while it goes on.
//! - `replication`: shipping batches to mirrors; when a write counts as durable; degraded mode.
//! - `wire`: a shipment's encoding, written and read without copying its batches.
//! - `replog`: the replication log, which keeps operations but takes bodies from their rows.
//! - `replicas`: the copies this store holds for other stores.
//! - `rebuild`: refilling a store that lost its disk from its mirror.
//! - `epoch`: which writer continues a store's history; `rejoin`: a store that comes back after a
//!   standby continued it takes the newer copy and merges back what only it had.
//! - `api`: the HTTP handlers, one module per namespace.
//!
//! The store knows nothing of SMTP, IMAP or mail parsing: bodies are bytes.

mod api;
mod bodies;
mod db;
mod epoch;
mod error;
mod flags;
mod mailbox_move;
mod notes;
mod ops;
mod queue_admin;
mod rebuild;
mod rejoin;
mod replicas;
mod replication;
mod replog;
mod requests;
mod syncer;
mod telemetry;
#[cfg(test)]
mod test_db;
mod util;
mod wire;
mod writer;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use anyhow::Context;
use node_runtime::NodeContext;
use node_runtime::admin::{AdminServer, Readiness};
use sqlx::SqlitePool;
use tokio::net::TcpListener;

use bodies::Bodies;
pub use error::StoreError;
use replicas::Replicas;
use replication::{MirrorKind, Replication};
use writer::{Writer, WriterHandle};

/// The store's options, from the topology.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    pub max_body_bytes: u64,
    pub max_lease: u32,
    pub mirror_timeout: Duration,
    /// How long a write waits for a mirror before the client is told to retry.
    pub durability_deadline: Duration,
    pub quota_bytes: Option<u64>,
}

impl StoreConfig {
    pub fn from_context(ctx: &NodeContext) -> StoreConfig {
        let t = &ctx.topology;
        StoreConfig {
            max_body_bytes: t.limits.store_max_body_bytes,
            max_lease: t.limits.store_max_lease,
            mirror_timeout: t.timing.mirror_timeout,
            durability_deadline: t.timing.mirror_timeout * 3 + Duration::from_secs(2),
            quota_bytes: ctx.node.quota_bytes.filter(|q| *q > 0),
        }
    }
}

/// A running store, shared by its handlers.
pub struct Store {
    pub ctx: NodeContext,
    pub config: StoreConfig,
    writer: WriterHandle,
    readers: RwLock<SqlitePool>,
    /// The segment files holding this store's bodies (see `bodies`).
    bodies: Arc<Bodies>,
    repl: Arc<Replication>,
    replicas: Replicas,
    ready: Readiness,
    rebuilding: AtomicBool,
    db_path: PathBuf,
}

impl Store {
    fn readers(&self) -> SqlitePool {
        self.readers
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn set_readers(&self, pool: SqlitePool) {
        self.repl.set_readers(pool.clone(), self.bodies.clone());
        *self.readers.write().unwrap_or_else(|p| p.into_inner()) = pool;
    }

    /// Refuses (503) while the store's own data is not servable: starting up or rebuilding.
    fn check_serving(&self) -> Result<(), StoreError> {
        if self.rebuilding.load(Ordering::SeqCst) {
            return Err(StoreError::Unavailable(
                "the store is rebuilding from its mirror; retry".into(),
            ));
        }
        if !self.ready.get() {
            return Err(StoreError::Unavailable(
                "the store is starting; retry".into(),
            ));
        }
        Ok(())
    }

    fn scratch_file(&self, what: &str) -> PathBuf {
        self.ctx
            .data_dir
            .join(format!("{what}-{}.sqlite", uuid::Uuid::new_v4().simple()))
    }

    fn status(&self) -> serde_json::Value {
        serde_json::json!({
            "lsn": self.repl.lsn(),
            "degraded": self.repl.degraded(),
            "rebuilding": self.rebuilding.load(Ordering::SeqCst),
            "replication": self.repl.report(),
        })
    }
}

/// Opens the store and serves its API on `data` and the admin endpoints on `admin` until shutdown.
pub async fn serve(ctx: NodeContext, data: TcpListener, admin: TcpListener) -> anyhow::Result<()> {
    telemetry::describe();
    let config = StoreConfig::from_context(&ctx);
    let db_path = ctx.data_dir.join("store.sqlite");
    let fresh = !db_path.exists();
    let me = ctx.node.name.clone();
    let mirror = ctx.topology.mirror_of(&me);
    let mut mirrors = Vec::new();
    for (name, kind) in [
        (mirror.other_site.clone(), MirrorKind::OtherSite),
        (mirror.same_site.clone(), MirrorKind::SameSite),
    ] {
        let Some(name) = name else { continue };
        let node = ctx
            .topology
            .node(&name)
            .with_context(|| format!("mirror {name:?} is not in the topology"))?;
        let addr = node
            .service_addr("store")
            .with_context(|| format!("mirror {name:?} has no store port"))?;
        mirrors.push((name, kind, format!("http://{addr}")));
    }
    let repl = Replication::new(
        me.clone(),
        mirrors,
        0,
        ctx.data_dir.clone(),
        config.mirror_timeout,
    );
    let bodies = Bodies::beside(&db_path);
    let writer = Writer::open(
        db_path.clone(),
        config.quota_bytes,
        repl.clone(),
        bodies.clone(),
    )
    .await
    .with_context(|| format!("opening {}", db_path.display()))?;
    repl.reset(writer.lsn());
    // Lost bodies (a power loss before they were synced) make this copy one to replace, as a lost
    // disk is: from the newest copy a mirror holds.
    let damaged = writer.damaged_bodies() > 0;
    let readers = db::open_readers(&db_path).await?;
    repl.set_readers(readers.clone(), bodies.clone());
    let replicas = Replicas::open(&ctx.topology.mirrored_by(&me), &ctx.data_dir)
        .await
        .context("opening the copies of mirrored stores")?;
    let ready = Readiness::default();
    let store = Arc::new(Store {
        ctx: ctx.clone(),
        config,
        writer: writer.spawn(),
        readers: RwLock::new(readers),
        bodies,
        repl: repl.clone(),
        replicas,
        ready: ready.clone(),
        rebuilding: AtomicBool::new(false),
        db_path,
    });

    let status_store = store.clone();
    let admin_server =
        AdminServer::new(&ctx, ready.clone(), Arc::new(move || status_store.status()))
            .routes(rebuild::admin_routes(store.clone()));
    let shutdown = ctx.shutdown.clone();
    let admin_task = tokio::spawn(admin_server.serve(admin));
    let app = api::router(store.clone());
    let data_shutdown = shutdown.clone();
    let data_task = tokio::spawn(async move {
        axum::serve(data, app)
            .with_graceful_shutdown(async move { data_shutdown.cancelled().await })
            .await
    });

    // Stores answer their mirrors' questions before they serve their own data, so two fresh stores
    // that mirror each other can both start.
    if (fresh || damaged) && repl.has_mirrors() {
        rebuild::recover_if_lost(&store).await?;
    } else if repl.has_mirrors() {
        rejoin::rejoin_if_superseded(&store).await?;
    }
    repl.start(shutdown.clone());
    spawn_pruner(store.clone());
    telemetry::spawn_queue_gauges(store.clone());
    ready.set(true);
    tracing::info!(lsn = repl.lsn(), fresh, "store ready");

    shutdown.cancelled().await;
    ready.set(false);
    let deadline = ctx.topology.timing.shutdown_deadline;
    let drained = tokio::time::timeout(deadline, async {
        let _ = data_task.await;
        let _ = admin_task.await;
    })
    .await
    .is_ok();
    tracing::info!(drained, "store stopped");
    Ok(())
}

/// Every few seconds, drops replication-log batches every mirror holds.
fn spawn_pruner(store: Arc<Store>) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(5));
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = store.ctx.shutdown.cancelled() => return,
            }
            let upto = store.repl.prunable();
            if upto > 0 {
                store.writer.prune(upto).await;
            }
        }
    });
}
