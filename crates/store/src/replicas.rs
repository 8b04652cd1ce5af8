//! The copies this store holds for the stores it mirrors: one database per origin store, with the same
//! schema as the origin's own, kept in step by applying the origin's batches in LSN order.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use rusqlite::Connection;
use sqlx::SqlitePool;
use tokio::sync::Mutex;

use crate::bodies::{Appender, Bodies};
use crate::db;
use crate::error::StoreError;
use crate::ops::{self, Shipment};

/// The replica's writer: a synchronous connection and the LSN it has applied.
struct ReplicaWriter {
    conn: Connection,
    lsn: u64,
    /// The origin's epoch as of `lsn` (see `epoch`).
    epoch: u64,
    /// Where the copy's bodies go (see `bodies`).
    bodies: Appender,
    /// The copy's write-ahead log.
    wal: Arc<std::fs::File>,
}

/// How far a copy reaches: what `GET /v1/replica/{origin}/status` answers.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct Position {
    pub lsn: u64,
    pub epoch: u64,
    /// The first LSN of `epoch` (0 for the first epoch).
    pub epoch_start: u64,
}

pub struct Replica {
    pub origin: String,
    path: PathBuf,
    /// One shipment at a time; applied on a blocking thread so a whole shipment is one hop.
    writer: Arc<Mutex<ReplicaWriter>>,
    readers: RwLock<SqlitePool>,
    /// The segment files holding the copy's bodies.
    bodies: Arc<Bodies>,
    /// Keeps the checkpointer thread running while the replica lives.
    _alive: Arc<()>,
}

fn blocking_failed(e: tokio::task::JoinError) -> StoreError {
    StoreError::Internal(format!("replica writer thread: {e}"))
}

fn open_replica_writer(path: &Path, bodies: Arc<Bodies>) -> Result<ReplicaWriter, StoreError> {
    let conn = db::open_writer_sync(path, None)?;
    // Commits do not sync by themselves: `apply_shipment` syncs the log and the bodies together.
    conn.execute_batch("PRAGMA synchronous = NORMAL")?;
    let lsn = db::meta_get_sync(&conn, "lsn")?.max(0) as u64;
    let epoch = db::meta_get_sync(&conn, crate::epoch::EPOCH)?.max(0) as u64;
    let bodies = Appender::open(&conn, bodies)?;
    let wal = crate::syncer::open_wal(path)?;
    crate::syncer::sync_together(&bodies.unsynced_all(), &wal)?;
    Ok(ReplicaWriter {
        wal,
        conn,
        lsn,
        epoch,
        bodies,
    })
}

impl Replica {
    async fn open(origin: &str, dir: &Path) -> Result<Replica, StoreError> {
        let path = dir.join(format!("replica-{origin}.sqlite"));
        let p = path.clone();
        let bodies = Bodies::beside(&path);
        let b = bodies.clone();
        let writer = tokio::task::spawn_blocking(move || {
            let writer = open_replica_writer(&p, b.clone())?;
            if writer.bodies.damaged() == 0 {
                return Ok(writer);
            }
            // Lost bodies (a power loss before they were synced, so never acknowledged): start the
            // copy again; the origin sends it whole from its log or a snapshot.
            tracing::error!(path = %p.display(), "the copy lost bodies it had committed: starting it again from the origin");
            drop(writer);
            db::remove_files(&p).map_err(|e| StoreError::Internal(format!("removing {}: {e}", p.display())))?;
            let mut dir = p.as_os_str().to_owned();
            dir.push(".bodies");
            match std::fs::remove_dir_all(&dir) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(StoreError::Internal(format!("removing the copy's bodies: {e}"))),
            }
            open_replica_writer(&p, b)
        })
        .await
        .map_err(blocking_failed)??;
        let readers = db::open_readers(&path).await?;
        metrics::gauge!("fabric_store_replica_lsn", "origin" => origin.to_string())
            .set(writer.lsn as f64);
        let alive = Arc::new(());
        db::spawn_checkpointer(path.clone(), Arc::downgrade(&alive));
        Ok(Replica {
            origin: origin.to_string(),
            _alive: alive,
            path,
            writer: Arc::new(Mutex::new(writer)),
            readers: RwLock::new(readers),
            bodies,
        })
    }

    pub fn readers(&self) -> SqlitePool {
        self.readers
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn bodies(&self) -> Arc<Bodies> {
        self.bodies.clone()
    }

    pub async fn position(&self) -> Result<Position, StoreError> {
        let w = self.writer.lock().await;
        Ok(Position {
            lsn: w.lsn,
            epoch: w.epoch,
            epoch_start: db::meta_get_sync(&w.conn, crate::epoch::EPOCH_START)?.max(0) as u64,
        })
    }

    /// Applies a shipment; batches already held are skipped, a gap is refused.
    pub async fn apply(&self, shipment: Shipment) -> Result<u64, StoreError> {
        let mut guard = self.writer.clone().lock_owned().await;
        let (next, applied) =
            tokio::task::spawn_blocking(move || apply_shipment(&mut guard, &shipment))
                .await
                .map_err(blocking_failed)??;
        metrics::counter!("fabric_store_replica_ops_total", "origin" => self.origin.clone())
            .increment(applied);
        metrics::gauge!("fabric_store_replica_lsn", "origin" => self.origin.clone())
            .set(next as f64);
        Ok(next)
    }

    /// Writes a consistent copy of this replica to `dest`; answers its LSN.
    pub async fn snapshot(&self, dest: &Path) -> Result<u64, StoreError> {
        // Hold the writer so the LSN we report is the one in the file.
        let guard = self.writer.lock().await;
        db::snapshot_into(&self.readers(), &self.bodies, dest).await?;
        Ok(guard.lsn)
    }

    /// Replaces this replica with a full copy sent by its origin; answers the copy's LSN.
    pub async fn install(&self, file: &Path) -> Result<u64, StoreError> {
        let mut guard = self.writer.clone().lock_owned().await;
        self.readers().close().await;
        let (path, file) = (self.path.clone(), file.to_path_buf());
        let bodies = self.bodies.clone();
        let (lsn, installed) = tokio::task::spawn_blocking(move || {
            // A copy from an older epoch than the one held would undo a standby's history.
            let offered = crate::epoch::epoch_of_file(&file)?;
            if offered < guard.epoch {
                return Err(StoreError::Superseded {
                    epoch: offered,
                    have: guard.epoch,
                });
            }
            let placeholder = ReplicaWriter {
                conn: Connection::open_in_memory()?,
                lsn: 0,
                epoch: 0,
                bodies: Appender::inline(),
                wal: guard.wal.clone(),
            };
            let old = std::mem::replace(&mut *guard, placeholder);
            old.conn.close().map_err(|(_, e)| e)?;
            let installed = db::install_file(&file, &path)
                .map_err(|e| StoreError::Internal(format!("installing snapshot: {e}")));
            let fresh = open_replica_writer(&path, bodies)?;
            // The origin's own replication log means nothing in a copy.
            db::exec(&fresh.conn, "DELETE FROM replog", [])?;
            let lsn = fresh.lsn;
            *guard = fresh;
            Ok::<_, StoreError>((lsn, installed))
        })
        .await
        .map_err(blocking_failed)??;
        *self.readers.write().unwrap_or_else(|p| p.into_inner()) =
            db::open_readers(&self.path).await?;
        installed?;
        metrics::gauge!("fabric_store_replica_lsn", "origin" => self.origin.clone())
            .set(lsn as f64);
        tracing::info!(origin = %self.origin, lsn, "installed a full copy from the origin store");
        Ok(lsn)
    }
}

/// One transaction, one fsync, for every new batch of the shipment.
fn apply_shipment(w: &mut ReplicaWriter, shipment: &Shipment) -> Result<(u64, u64), StoreError> {
    let applied = apply_in_one_transaction(w, shipment);
    if applied.is_err()
        && let Err(e) = w.bodies.reload(&w.conn)
    {
        tracing::error!(error = %e, "reloading the body segments after a rollback");
    }
    let (next, epoch, applied) = applied?;
    w.lsn = next;
    w.epoch = epoch;
    if let Err(e) = w.bodies.maintain(&w.conn) {
        tracing::warn!(error = %e, "body segment maintenance failed; retried later");
    }
    Ok((next, applied))
}

fn apply_in_one_transaction(
    w: &mut ReplicaWriter,
    shipment: &Shipment,
) -> Result<(u64, u64, u64), StoreError> {
    if shipment.epoch < w.epoch {
        return Err(StoreError::Superseded {
            epoch: shipment.epoch,
            have: w.epoch,
        });
    }
    let tx = w.conn.transaction()?;
    let mut next = w.lsn;
    let mut epoch = w.epoch;
    let mut applied = 0u64;
    for (batch_lsn, bytes) in &shipment.batches {
        if *batch_lsn <= next {
            continue;
        }
        if *batch_lsn != next + 1 {
            return Err(StoreError::LsnGap {
                first: *batch_lsn,
                have: next,
            });
        }
        for op in ops::decode_batch(bytes)? {
            ops::apply(&tx, &mut w.bodies, &op)?;
            if let Some(e) = crate::epoch::epoch_set_by(&op) {
                epoch = e;
            }
            applied += 1;
        }
        next = *batch_lsn;
    }
    if next != w.lsn {
        db::meta_set_sync(&tx, "lsn", next as i64)?;
    }
    let unsynced = w.bodies.write_out(&tx)?;
    tx.commit()?;
    // Answered only once the bodies and the commit are both on disk (see `syncer`).
    crate::syncer::sync_together(&unsynced, &w.wal)?;
    Ok((next, epoch, applied))
}

/// Every copy this store holds, by origin store name.
#[derive(Clone, Default)]
pub struct Replicas(Arc<BTreeMap<String, Arc<Replica>>>);

impl Replicas {
    pub async fn open(origins: &[String], dir: &Path) -> Result<Replicas, StoreError> {
        let mut map = BTreeMap::new();
        for origin in origins {
            map.insert(origin.clone(), Arc::new(Replica::open(origin, dir).await?));
        }
        Ok(Replicas(Arc::new(map)))
    }

    pub fn get(&self, origin: &str) -> Result<Arc<Replica>, StoreError> {
        self.0
            .get(origin)
            .cloned()
            .ok_or_else(|| StoreError::NoReplica(origin.to_string()))
    }

    pub fn all(&self) -> impl Iterator<Item = &Arc<Replica>> {
        self.0.values()
    }
}
