//! The copies this store holds for the stores it mirrors: one database per origin store, with the same
//! schema as the origin's own, kept in step by applying the origin's batches in LSN order.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use sqlx::{Connection, SqliteConnection, SqlitePool};
use tokio::sync::Mutex;

use crate::db;
use crate::error::StoreError;
use crate::ops::{self, Shipment};

pub struct Replica {
    pub origin: String,
    path: PathBuf,
    /// The writer connection and the LSN it has applied; one shipment at a time.
    writer: Mutex<(SqliteConnection, u64)>,
    readers: RwLock<SqlitePool>,
}

impl Replica {
    async fn open(origin: &str, dir: &Path) -> Result<Replica, StoreError> {
        let path = dir.join(format!("replica-{origin}.sqlite"));
        let mut conn = db::open_writer(&path, None).await?;
        let lsn = db::meta_get(&mut conn, "lsn").await?.max(0) as u64;
        let readers = db::open_readers(&path).await?;
        metrics::gauge!("fabric_store_replica_lsn", "origin" => origin.to_string()).set(lsn as f64);
        Ok(Replica {
            origin: origin.to_string(),
            path,
            writer: Mutex::new((conn, lsn)),
            readers: RwLock::new(readers),
        })
    }

    pub fn readers(&self) -> SqlitePool {
        self.readers
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub async fn lsn(&self) -> u64 {
        self.writer.lock().await.1
    }

    /// Applies a shipment; batches already held are skipped, a gap is refused.
    pub async fn apply(&self, shipment: Shipment) -> Result<u64, StoreError> {
        let mut guard = self.writer.lock().await;
        let (conn, lsn) = &mut *guard;
        let mut tx = conn.begin().await?;
        let mut next = *lsn;
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
                ops::apply(&mut tx, &op).await?;
                applied += 1;
            }
            next = *batch_lsn;
        }
        if next != *lsn {
            db::meta_set(&mut *tx, "lsn", next as i64).await?;
        }
        tx.commit().await?;
        *lsn = next;
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
        db::snapshot_into(&self.readers(), dest).await?;
        Ok(guard.1)
    }

    /// Replaces this replica with a full copy sent by its origin; answers the copy's LSN.
    pub async fn install(&self, file: &Path) -> Result<u64, StoreError> {
        let mut guard = self.writer.lock().await;
        let placeholder = SqliteConnection::connect("sqlite::memory:").await?;
        let old = std::mem::replace(&mut guard.0, placeholder);
        old.close().await?;
        self.readers().close().await;
        let installed = db::install_file(file, &self.path)
            .map_err(|e| StoreError::Internal(format!("installing snapshot: {e}")));
        let mut conn = db::open_writer(&self.path, None).await?;
        // The origin's own replication log means nothing in a copy.
        sqlx::query("DELETE FROM replog").execute(&mut conn).await?;
        let lsn = db::meta_get(&mut conn, "lsn").await?.max(0) as u64;
        *guard = (conn, lsn);
        *self.readers.write().unwrap_or_else(|p| p.into_inner()) =
            db::open_readers(&self.path).await?;
        installed?;
        metrics::gauge!("fabric_store_replica_lsn", "origin" => self.origin.clone())
            .set(lsn as f64);
        tracing::info!(origin = %self.origin, lsn, "installed a full copy from the origin store");
        Ok(lsn)
    }
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
