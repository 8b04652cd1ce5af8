//! Replication: shipping committed batches to this store's mirrors, and deciding when a write is durable.
//!
//! Each mirror has a shipper task that sends every batch, in LSN order, one request in flight at a time
//! (whatever accumulated meanwhile goes in the next request: group commit on the mirror too). A write
//! is durable once it is committed here and its LSN is held by:
//! - the other-site mirror (or the same-site one, in a one-site fabric), normally;
//! - the same-site mirror while the other-site one is not in sync (down or catching up): degraded mode.
//!
//! A mirror that missed batches is caught up from the in-memory ring of recent batches, else from the
//! `replog` table, else (if the log no longer reaches back) with a full snapshot of this store.

use std::collections::{BTreeMap, VecDeque};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde::Serialize;
use sqlx::SqlitePool;
use store_client::{ClientError, StoreClient};
use tokio::sync::{oneshot, watch};
use tokio_util::sync::CancellationToken;

mod durability;

use crate::bodies::Bodies;
use crate::db;
use crate::error::StoreError;
use crate::ops::Shipment;

/// Keep this many bytes of recent batches in memory for shippers.
const RING_BYTES: usize = 64 * 1024 * 1024;
/// How long a same-site mirror's shipper waits to gather batches while the other-site mirror is in
/// sync (the same-site copy is then not on any write's path).
const SAME_SITE_LINGER: Duration = Duration::from_millis(100);
/// Most bytes one shipment carries.
const SHIP_BYTES: usize = 8 * 1024 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum MirrorKind {
    OtherSite,
    SameSite,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LinkStatus {
    /// The last request failed; not counted on for durability.
    Down,
    /// Answering, but still behind what was committed when it last answered.
    CatchingUp,
    /// Has everything that was committed when the last shipment left.
    InSync,
}

#[derive(Debug)]
struct LinkState {
    /// The last LSN the mirror holds; `None` until it has told us.
    acked: Option<u64>,
    status: LinkStatus,
    last_error: Option<String>,
}

pub struct Link {
    pub name: String,
    pub kind: MirrorKind,
    client: StoreClient,
    state: Mutex<LinkState>,
}

impl Link {
    fn snapshot(&self) -> (Option<u64>, LinkStatus) {
        let s = lock(&self.state);
        (s.acked, s.status)
    }
}

/// Where a durable write lives.
#[derive(Debug, Clone)]
pub struct Durable {
    pub copies: Vec<String>,
    pub degraded: bool,
}

pub struct Replication {
    me: String,
    links: Vec<Arc<Link>>,
    /// Index of the mirror that normally takes the synchronous copy.
    primary: usize,
    /// Index of the same-site mirror that takes it while the primary is not in sync.
    fallback: Option<usize>,
    local: watch::Sender<u64>,
    /// The last LSN synced to this store's own disk (see `syncer`).
    local_synced: AtomicU64,
    /// Writes waiting to be durable, by LSN; each is woken once, when a mirror that counts holds it
    /// (rather than every waiter re-checking on every acknowledgement).
    waiters: Mutex<BTreeMap<u64, Vec<oneshot::Sender<()>>>>,
    ring: Mutex<VecDeque<(u64, Bytes)>>,
    ring_bytes: Mutex<usize>,
    /// Readers of this store's own database, for the replication log and snapshots.
    readers: RwLock<Option<(SqlitePool, Arc<Bodies>)>>,
    data_dir: PathBuf,
    degraded_since: Mutex<Option<Instant>>,
    /// This store's epoch (see `epoch`): shipped with every batch so a newer copy refuses an older
    /// writer.
    epoch: AtomicU64,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Replication {
    /// `mirrors` lists (name, kind, base URL); the other-site mirror, if any, is the primary one.
    pub fn new(
        me: String,
        mirrors: Vec<(String, MirrorKind, String)>,
        lsn: u64,
        data_dir: PathBuf,
        mirror_timeout: Duration,
    ) -> Arc<Replication> {
        let links: Vec<Arc<Link>> = mirrors
            .into_iter()
            .map(|(name, kind, url)| {
                Arc::new(Link {
                    name,
                    kind,
                    client: StoreClient::new(url).with_timeout(mirror_timeout),
                    state: Mutex::new(LinkState {
                        acked: None,
                        status: LinkStatus::Down,
                        last_error: None,
                    }),
                })
            })
            .collect();
        let primary = links
            .iter()
            .position(|l| l.kind == MirrorKind::OtherSite)
            .unwrap_or(0);
        let fallback = if links.get(primary).map(|l| l.kind) == Some(MirrorKind::OtherSite) {
            links.iter().position(|l| l.kind == MirrorKind::SameSite)
        } else {
            None
        };
        metrics::gauge!("fabric_store_lsn").set(lsn as f64);
        Arc::new(Replication {
            me,
            links,
            primary,
            fallback,
            local: watch::Sender::new(lsn),
            local_synced: AtomicU64::new(lsn),
            waiters: Mutex::new(BTreeMap::new()),
            ring: Mutex::new(VecDeque::new()),
            ring_bytes: Mutex::new(0),
            readers: RwLock::new(None),
            data_dir,
            degraded_since: Mutex::new(None),
            epoch: AtomicU64::new(0),
        })
    }

    pub fn set_readers(&self, pool: SqlitePool, bodies: Arc<Bodies>) {
        *self.readers.write().unwrap_or_else(|p| p.into_inner()) = Some((pool, bodies));
    }

    fn readers(&self) -> Option<(SqlitePool, Arc<Bodies>)> {
        self.readers
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn lsn(&self) -> u64 {
        *self.local.borrow()
    }

    pub fn has_mirrors(&self) -> bool {
        !self.links.is_empty()
    }

    /// Called by the writer after a batch is committed here.
    pub fn publish(&self, lsn: u64, batch: Bytes) {
        {
            let mut ring = lock(&self.ring);
            let mut bytes = lock(&self.ring_bytes);
            *bytes += batch.len();
            ring.push_back((lsn, batch));
            while *bytes > RING_BYTES && ring.len() > 1 {
                if let Some((_, b)) = ring.pop_front() {
                    *bytes -= b.len();
                }
            }
        }
        self.local.send_replace(lsn);
        metrics::gauge!("fabric_store_lsn").set(lsn as f64);
    }

    /// After a rebuild: the log starts again at `lsn`, and every mirror must say where it stands.
    pub fn reset(&self, lsn: u64) {
        lock(&self.ring).clear();
        *lock(&self.ring_bytes) = 0;
        for link in &self.links {
            let mut s = lock(&link.state);
            s.acked = None;
            if s.status == LinkStatus::InSync {
                s.status = LinkStatus::CatchingUp;
            }
        }
        self.local.send_replace(lsn);
        self.local_synced.store(lsn, Ordering::SeqCst);
        // Waiters re-check and wait again (or time out): what they waited for may be gone.
        lock(&self.waiters).clear();
    }

    /// Called by the syncer once every batch up to `lsn` is on this store's disk.
    pub fn set_local_synced(&self, lsn: u64) {
        self.local_synced.fetch_max(lsn, Ordering::SeqCst);
        self.wake_durable();
    }

    pub fn local_synced(&self) -> u64 {
        self.local_synced.load(Ordering::SeqCst)
    }

    /// The lowest LSN every mirror holds: the log before it can go.
    pub fn prunable(&self) -> u64 {
        self.links
            .iter()
            .map(|l| l.snapshot().0.unwrap_or(0))
            .min()
            .unwrap_or_else(|| self.lsn())
    }

    pub fn degraded(&self) -> bool {
        lock(&self.degraded_since).is_some()
    }

    fn set_state(
        &self,
        link: &Link,
        acked: Option<u64>,
        status: LinkStatus,
        error: Option<String>,
    ) {
        let previous = {
            let mut s = lock(&link.state);
            let previous = s.status;
            s.acked = acked;
            s.status = status;
            if error.is_some() || status != LinkStatus::Down {
                s.last_error = error.clone();
            }
            previous
        };
        if previous != status {
            match status {
                LinkStatus::Down => {
                    tracing::warn!(mirror = %link.name, kind = ?link.kind, error = error.as_deref().unwrap_or(""), "mirror unreachable")
                }
                LinkStatus::CatchingUp => {
                    tracing::info!(mirror = %link.name, acked = acked.unwrap_or(0), lsn = self.lsn(), "mirror answering, catching up")
                }
                LinkStatus::InSync => {
                    tracing::info!(mirror = %link.name, acked = acked.unwrap_or(0), "mirror in sync")
                }
            }
        }
        let label = link.name.clone();
        metrics::gauge!("fabric_store_mirror_up", "mirror" => label.clone())
            .set(if status == LinkStatus::Down { 0.0 } else { 1.0 });
        metrics::gauge!("fabric_store_mirror_acked_lsn", "mirror" => label)
            .set(acked.unwrap_or(0) as f64);
        self.update_degraded();
        self.wake_durable();
    }

    fn update_degraded(&self) {
        let Some(primary) = self.links.get(self.primary) else {
            return;
        };
        if self.fallback.is_none() {
            return;
        }
        let degraded = primary.snapshot().1 != LinkStatus::InSync;
        let mut since = lock(&self.degraded_since);
        match (degraded, since.is_some()) {
            (true, false) => {
                *since = Some(Instant::now());
                metrics::gauge!("fabric_store_degraded").set(1.0);
                tracing::warn!(mirror = %primary.name, "degraded mode: the other site's mirror is not in sync; second copies go to the same-site mirror");
            }
            (false, true) => {
                let secs = since.map(|s| s.elapsed().as_secs_f64()).unwrap_or(0.0);
                *since = None;
                metrics::gauge!("fabric_store_degraded").set(0.0);
                tracing::info!(mirror = %primary.name, degraded_secs = secs, "degraded mode over: the other site's mirror caught up");
            }
            _ => {}
        }
    }

    /// The replication state, for `/v1/replication` and `/status`.
    pub fn report(&self) -> serde_json::Value {
        let mirrors: Vec<_> = self
            .links
            .iter()
            .map(|l| {
                let s = lock(&l.state);
                serde_json::json!({
                    "mirror": l.name,
                    "kind": l.kind,
                    "acked_lsn": s.acked,
                    "state": s.status,
                    "last_error": s.last_error,
                })
            })
            .collect();
        serde_json::json!({
            "store": self.me,
            "lsn": self.lsn(),
            "degraded": self.degraded(),
            "mirrors": mirrors,
        })
    }

    /// Starts one shipper per mirror.
    pub fn start(self: &Arc<Self>, shutdown: CancellationToken) {
        for link in &self.links {
            let repl = Arc::clone(self);
            let link = Arc::clone(link);
            let shutdown = shutdown.clone();
            tokio::spawn(async move { repl.ship(link, shutdown).await });
        }
    }

    async fn ship(&self, link: Arc<Link>, shutdown: CancellationToken) {
        let mut local = self.local.subscribe();
        let mut backoff = Duration::from_millis(50);
        let mut ahead_warned = false;
        loop {
            if shutdown.is_cancelled() {
                return;
            }
            let (acked, status) = link.snapshot();
            let acked = match acked {
                Some(a) => a,
                None => match link.client.replica_status(&self.me).await {
                    Ok(a) => {
                        let st = if status == LinkStatus::Down {
                            LinkStatus::CatchingUp
                        } else {
                            status
                        };
                        self.set_state(&link, Some(a), st, None);
                        backoff = Duration::from_millis(50);
                        continue;
                    }
                    Err(e) => {
                        self.set_state(&link, None, LinkStatus::Down, Some(e.to_string()));
                        pause(&shutdown, &mut backoff).await;
                        continue;
                    }
                },
            };
            let target = *local.borrow_and_update();
            if acked >= target {
                if acked > target {
                    if !ahead_warned {
                        tracing::error!(mirror = %link.name, mirror_lsn = acked, lsn = target, "mirror holds a newer copy of this store than this store itself: rebuild this store from it (fabric store rebuild)");
                        ahead_warned = true;
                    }
                    self.set_state(
                        &link,
                        Some(acked),
                        LinkStatus::Down,
                        Some("mirror is ahead of this store".into()),
                    );
                    pause(&shutdown, &mut backoff).await;
                    self.set_state(&link, None, LinkStatus::Down, None);
                    continue;
                }
                if status != LinkStatus::InSync {
                    self.set_state(&link, Some(acked), LinkStatus::InSync, None);
                }
                tokio::select! {
                    _ = local.changed() => {}
                    _ = shutdown.cancelled() => return,
                }
                continue;
            }
            ahead_warned = false;
            if self.lingers(&link) {
                // Not needed for durability right now: gather more batches per shipment, so the
                // same-site copy costs fewer transactions and fsyncs on its store.
                tokio::select! {
                    _ = tokio::time::sleep(SAME_SITE_LINGER) => {}
                    _ = shutdown.cancelled() => return,
                }
            }
            let batches = match self.collect(acked + 1).await {
                Ok(b) => b,
                Err(e) => {
                    tracing::error!(error = %e, "reading the replication log");
                    pause(&shutdown, &mut backoff).await;
                    continue;
                }
            };
            let outcome = if batches.first().map(|b| b.0) != Some(acked + 1) {
                self.push_snapshot(&link).await
            } else {
                self.send(&link, batches).await
            };
            match outcome {
                Ok(have) => {
                    backoff = Duration::from_millis(50);
                    let status = if have >= target {
                        LinkStatus::InSync
                    } else {
                        LinkStatus::CatchingUp
                    };
                    self.set_state(&link, Some(have), status, None);
                }
                Err(ClientError::Status { status, body, .. })
                    if status.as_u16() == 409 && body["error"] == "superseded" =>
                {
                    let theirs = body["epoch"].as_u64().unwrap_or(0);
                    metrics::counter!("fabric_store_superseded_total", "mirror" => link.name.clone())
                        .increment(1);
                    tracing::error!(mirror = %link.name, epoch = self.epoch(), mirror_epoch = theirs,
                        "superseded: the mirror's copy of this store is at a newer epoch (a standby continued it); this store must rejoin (restart it, or fabric store rebuild) and writes are not durable until then");
                    self.set_state(
                        &link,
                        None,
                        LinkStatus::Down,
                        Some(format!("superseded by epoch {theirs}")),
                    );
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_secs(5)) => {}
                        _ = shutdown.cancelled() => return,
                    }
                }
                Err(ClientError::Status { status, body, .. }) if status.as_u16() == 409 => {
                    let have = body["have"].as_u64().unwrap_or(0);
                    tracing::info!(mirror = %link.name, have, "mirror asked to resume from its own position");
                    let st = link.snapshot().1;
                    self.set_state(
                        &link,
                        Some(have),
                        if st == LinkStatus::Down {
                            LinkStatus::CatchingUp
                        } else {
                            st
                        },
                        None,
                    );
                }
                Err(e) => {
                    self.set_state(&link, None, LinkStatus::Down, Some(e.to_string()));
                    pause(&shutdown, &mut backoff).await;
                }
            }
        }
    }

    /// Whether `link` is a same-site mirror while the other-site mirror is in sync, so no write
    /// waits for it.
    fn lingers(&self, link: &Link) -> bool {
        link.kind == MirrorKind::SameSite
            && self
                .links
                .iter()
                .any(|l| l.kind == MirrorKind::OtherSite && l.snapshot().1 == LinkStatus::InSync)
    }

    async fn send(&self, link: &Link, batches: Vec<(u64, Bytes)>) -> Result<u64, ClientError> {
        let count = batches.len();
        let shipment = Shipment {
            epoch: self.epoch(),
            batches,
        };
        // The ring's own bytes go out as they are (see `wire`).
        let (chunks, len) = shipment.to_chunks();
        metrics::counter!("fabric_store_shipments_total", "mirror" => link.name.clone())
            .increment(1);
        metrics::counter!("fabric_store_shipped_batches_total", "mirror" => link.name.clone())
            .increment(count as u64);
        link.client.replica_apply(&self.me, chunks, len).await
    }

    /// Consecutive batches from `from`, from the ring if it reaches back that far, else from the log.
    async fn collect(&self, from: u64) -> Result<Vec<(u64, Bytes)>, StoreError> {
        {
            let ring = lock(&self.ring);
            if let Some((first, _)) = ring.front()
                && *first <= from
            {
                let mut out = Vec::new();
                let mut bytes = 0;
                for (lsn, b) in ring.iter().skip((from - first) as usize) {
                    if bytes > SHIP_BYTES {
                        break;
                    }
                    bytes += b.len();
                    out.push((*lsn, b.clone()));
                }
                return Ok(out);
            }
        }
        let Some((pool, bodies)) = self.readers() else {
            return Ok(Vec::new());
        };
        let mut out = Vec::new();
        let mut bytes = 0;
        for (lsn, batch) in crate::replog::read(&pool, &bodies, from, 4096).await? {
            if bytes > SHIP_BYTES {
                break;
            }
            let b = crate::ops::encode_batch(&batch)?;
            bytes += b.len();
            out.push((lsn, Bytes::from(b)));
        }
        Ok(out)
    }

    /// The log no longer reaches back to what the mirror has: send it a full copy instead.
    async fn push_snapshot(&self, link: &Link) -> Result<u64, ClientError> {
        let (pool, bodies) = self.readers().ok_or_else(|| ClientError::Decode {
            url: link.client.base().to_string(),
            message: "store not open".into(),
        })?;
        let file = self
            .data_dir
            .join(format!("outgoing-{}.sqlite", uuid::Uuid::new_v4().simple()));
        tracing::info!(mirror = %link.name, "mirror is behind the replication log: sending a full snapshot");
        db::snapshot_into(&pool, &bodies, &file)
            .await
            .map_err(|e| ClientError::Decode {
                url: link.client.base().to_string(),
                message: format!("taking a snapshot: {e}"),
            })?;
        let result = link.client.upload_snapshot(&self.me, &file).await;
        let _ = std::fs::remove_file(&file);
        if result.is_ok() {
            metrics::counter!("fabric_store_snapshots_sent_total").increment(1);
        }
        result
    }

    pub fn links(&self) -> &[Arc<Link>] {
        &self.links
    }

    pub fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::SeqCst)
    }

    pub fn set_epoch(&self, epoch: u64) {
        self.epoch.store(epoch, Ordering::SeqCst);
        metrics::gauge!("fabric_store_epoch").set(epoch as f64);
    }
}

impl Link {
    pub fn client(&self) -> &StoreClient {
        &self.client
    }
}

async fn pause(shutdown: &CancellationToken, backoff: &mut Duration) {
    tokio::select! {
        _ = tokio::time::sleep(*backoff) => {}
        _ = shutdown.cancelled() => {}
    }
    *backoff = (*backoff * 2).min(Duration::from_millis(500));
}
