//! The writer: the one thread that writes a store's own database, with group commit.
//!
//! Handlers send [`Request`]s; the writer takes every request waiting (up to a batch limit), decides
//! each one's physical operations (ids, UIDs, leases), applies them in one transaction, appends the
//! batch to the replication log (`replog`, without bodies) in that same transaction, commits (without waiting for the disk: the `syncer` syncs many batches at once) and
//! hands the batch to replication. Each handler then gets its [`Reply`] and the sequence number (LSN) it
//! must see mirrored before it answers the client. So concurrent writers share fsyncs, and the mirror
//! round trip of one batch overlaps the commit of the next.
//!
//! The writer is a plain OS thread with a synchronous SQLite connection (rusqlite): a batch of N
//! requests runs as one uninterrupted sequence of statements, where an async driver would cost two
//! thread hand-offs per statement. Handlers still `await` their answer on a oneshot channel.

use std::fs::File;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use rusqlite::Connection;
use tokio::sync::{mpsc, oneshot};

use crate::bodies::{Appender, Bodies};
use crate::db;
use crate::error::StoreError;
use crate::ops::{self, PhysOp};
use crate::replication::Replication;
use crate::requests::{self, Reply, Request};
use crate::syncer::{self, Job, Syncer};
use crate::util::now_ms;

/// Most requests one transaction takes.
const MAX_BATCH: usize = 512;
/// Most body bytes one transaction takes (a single larger request still goes alone).
const MAX_BATCH_BYTES: usize = 16 * 1024 * 1024;

/// A finished write: what to answer, and the LSN that must be mirrored first.
pub type WriteResult = Result<(u64, Reply), StoreError>;

pub enum Command {
    Write(Request, oneshot::Sender<WriteResult>),
    /// Replace the database with a snapshot file (rebuild); answers the new LSN.
    Install(PathBuf, oneshot::Sender<Result<u64, StoreError>>),
    /// Answers the current LSN once every write sent before it is committed.
    Barrier(oneshot::Sender<u64>),
    /// Drops replication-log batches up to this LSN (every mirror holds them).
    Prune(u64),
}

/// The handle handlers use to reach the writer.
#[derive(Clone)]
pub struct WriterHandle {
    tx: mpsc::Sender<Command>,
}

impl WriterHandle {
    pub async fn write(&self, request: Request) -> WriteResult {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Command::Write(request, tx))
            .await
            .map_err(|_| StoreError::Unavailable("the store is shutting down".into()))?;
        rx.await
            .map_err(|_| StoreError::Unavailable("the store is shutting down".into()))?
    }

    pub async fn barrier(&self) -> Result<u64, StoreError> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Command::Barrier(tx))
            .await
            .map_err(|_| StoreError::Unavailable("the store is shutting down".into()))?;
        rx.await
            .map_err(|_| StoreError::Unavailable("the store is shutting down".into()))
    }

    pub async fn prune(&self, upto: u64) {
        let _ = self.tx.send(Command::Prune(upto)).await;
    }

    pub async fn install(&self, snapshot: PathBuf) -> Result<u64, StoreError> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Command::Install(snapshot, tx))
            .await
            .map_err(|_| StoreError::Unavailable("the store is shutting down".into()))?;
        rx.await
            .map_err(|_| StoreError::Unavailable("the store is shutting down".into()))?
    }
}

/// Counters the writer keeps in memory and persists with every batch.
#[derive(Debug, Clone, Copy, Default)]
pub struct Counters {
    pub lsn: u64,
    pub next_queue_id: i64,
    pub next_transfer_seq: i64,
}

pub struct Writer {
    conn: Connection,
    path: PathBuf,
    quota: Option<u64>,
    counters: Counters,
    repl: Arc<Replication>,
    /// Where this database's bodies go (see `bodies`).
    bodies: Appender,
    /// Syncs committed batches while the writer goes on (see `syncer`).
    syncer: Syncer,
    /// The database's write-ahead log, which the syncer syncs.
    wal: Arc<File>,
    /// Keeps the checkpointer thread running while the writer lives.
    alive: Arc<()>,
}

impl Writer {
    pub async fn open(
        path: PathBuf,
        quota: Option<u64>,
        repl: Arc<Replication>,
        bodies: Arc<Bodies>,
    ) -> Result<Writer, StoreError> {
        tokio::task::spawn_blocking(move || {
            let conn = open_deferring_syncs(&path, quota)?;
            let bodies = Appender::open(&conn, bodies)?;
            // Whatever the last run committed is on disk before anything new counts as synced.
            let wal = syncer::open_wal(&path)?;
            syncer::sync_together(&bodies.unsynced_all(), &wal)?;
            let syncer = Syncer::spawn(repl.clone())?;
            let counters = load_counters(&conn)?;
            repl.set_epoch(db::meta_get_sync(&conn, crate::epoch::EPOCH)?.max(0) as u64);
            Ok(Writer {
                conn,
                path,
                quota,
                counters,
                repl,
                bodies,
                syncer,
                wal,
                alive: Arc::new(()),
            })
        })
        .await
        .map_err(|e| StoreError::Internal(format!("opening the writer: {e}")))?
    }

    pub fn lsn(&self) -> u64 {
        self.counters.lsn
    }

    /// Bodies committed rows reference that the disk lost (see `Appender::damaged`).
    pub fn damaged_bodies(&self) -> u64 {
        self.bodies.damaged()
    }

    /// Runs on its own thread until every handle is dropped.
    pub fn spawn(self) -> WriterHandle {
        let (tx, rx) = mpsc::channel(4096);
        db::spawn_checkpointer(self.path.clone(), Arc::downgrade(&self.alive));
        let spawned = std::thread::Builder::new()
            .name("store-writer".into())
            .spawn(move || self.run(rx));
        if let Err(e) = spawned {
            tracing::error!(error = %e, "could not start the writer thread");
        }
        WriterHandle { tx }
    }

    fn run(mut self, mut rx: mpsc::Receiver<Command>) {
        let mut pending: Option<Command> = None;
        loop {
            let first = match pending.take() {
                Some(c) => c,
                None => match rx.blocking_recv() {
                    Some(c) => c,
                    None => break,
                },
            };
            let first = match first {
                Command::Install(path, reply) => {
                    let result = self.install(path);
                    let _ = reply.send(result);
                    continue;
                }
                Command::Barrier(reply) => {
                    let _ = reply.send(self.counters.lsn);
                    continue;
                }
                Command::Prune(upto) => {
                    let pruned = db::exec(
                        &self.conn,
                        "DELETE FROM replog WHERE lsn <= ?",
                        [upto as i64],
                    );
                    if let Err(e) = pruned {
                        tracing::warn!(error = %e, "pruning the replication log");
                    }
                    self.maintain_bodies();
                    continue;
                }
                Command::Write(r, reply) => (r, reply),
            };
            let mut bytes = first.0.body_len();
            let mut batch = vec![first];
            while batch.len() < MAX_BATCH && bytes < MAX_BATCH_BYTES {
                match rx.try_recv() {
                    Ok(Command::Write(r, reply)) => {
                        bytes += r.body_len();
                        batch.push((r, reply));
                    }
                    Ok(other) => {
                        pending = Some(other);
                        break;
                    }
                    Err(_) => break,
                }
            }
            self.commit_batch(batch);
            self.maintain_bodies();
        }
        tracing::info!("writer stopped");
    }

    fn commit_batch(&mut self, mut batch: Vec<(Request, oneshot::Sender<WriteResult>)>) {
        let started = Instant::now();
        let saved = self.counters;
        let size = batch.len();
        let outcome = self.execute_batch(&mut batch);
        match outcome {
            Ok((replies, phys_count)) => {
                let lsn = self.counters.lsn;
                for ((_, reply_tx), reply) in batch.into_iter().zip(replies) {
                    let _ = reply_tx.send(reply.map(|r| (lsn, r)));
                }
                metrics::counter!("fabric_store_write_batches_total").increment(1);
                metrics::histogram!("fabric_store_batch_requests").record(size as f64);
                metrics::histogram!("fabric_store_commit_seconds")
                    .record(started.elapsed().as_secs_f64());
                metrics::counter!("fabric_store_ops_total").increment(phys_count as u64);
            }
            Err(e) => {
                self.counters = saved;
                if let Err(e) = self.bodies.reload(&self.conn) {
                    tracing::error!(error = %e, "reloading the body segments after a rollback");
                }
                if matches!(e, StoreError::StorageFull) {
                    metrics::counter!("fabric_store_storage_full_total").increment(1);
                    tracing::warn!(
                        requests = size,
                        "storage full: batch refused, writers told to retry later"
                    );
                } else {
                    tracing::error!(error = %e, requests = size, "batch failed and was rolled back");
                }
                for (_, reply_tx) in batch {
                    let _ = reply_tx.send(Err(e.again()));
                }
            }
        }
    }

    /// One transaction for the whole batch. Per-request refusals (404, 409, 400) leave the batch going;
    /// a database error rolls all of it back.
    fn execute_batch(
        &mut self,
        batch: &mut [(Request, oneshot::Sender<WriteResult>)],
    ) -> Result<(Vec<Result<Reply, StoreError>>, usize), StoreError> {
        let tx = self.conn.transaction()?;
        let mut phys: Vec<PhysOp> = Vec::new();
        let mut replies = Vec::with_capacity(batch.len());
        // The store's clock (`util::now_ms`): monotonic, so batches never run before an earlier one.
        let now = now_ms();
        // Growing requests stop at the quota; the reserve above it is kept for housekeeping.
        let mut used = match self.quota {
            Some(_) => db::used_bytes_sync(&tx)?,
            None => 0,
        };
        for (request, _) in batch.iter_mut() {
            if let Some(quota) = self.quota
                && request.grows()
            {
                let size = request.body_len() as u64 + 512;
                if used + size > quota {
                    metrics::counter!("fabric_store_storage_full_total").increment(1);
                    tracing::warn!(
                        quota,
                        used,
                        "quota reached: write refused, writer told to retry later"
                    );
                    replies.push(Err(StoreError::StorageFull));
                    continue;
                }
                used += size;
            }
            let mut ctx = requests::Ctx {
                conn: &tx,
                counters: &mut self.counters,
                now_ms: now,
                phys: &mut phys,
                bodies: &mut self.bodies,
            };
            match requests::execute(&mut ctx, request) {
                Ok(reply) => replies.push(Ok(reply)),
                Err(e) if e.is_request_error() => replies.push(Err(e)),
                Err(e) => return Err(e),
            }
        }
        let encoded = if phys.is_empty() {
            None
        } else {
            self.counters.lsn += 1;
            // Mirrors get the whole batch; the log keeps it without the bodies this transaction
            // also writes into their rows (see `replog`).
            let encoded = ops::encode_batch(&phys)?;
            db::exec(
                &tx,
                "INSERT INTO replog (lsn, batch) VALUES (?, ?)",
                rusqlite::params![self.counters.lsn as i64, crate::replog::encode(&phys)?],
            )?;
            db::meta_set_sync(&tx, "lsn", self.counters.lsn as i64)?;
            db::meta_set_sync(&tx, "next_queue_id", self.counters.next_queue_id)?;
            Some(encoded)
        };
        // Written now; the syncer makes the bodies and the commit durable together (see `syncer`).
        let unsynced = self.bodies.write_out(&tx)?;
        tx.commit()?;
        if encoded.is_some() {
            self.syncer.submit(Job {
                lsn: self.counters.lsn,
                bodies: unsynced,
                wal: self.wal.clone(),
            });
        }
        if let Some(epoch) = phys.iter().rev().find_map(crate::epoch::epoch_set_by) {
            self.repl.set_epoch(epoch);
        }
        if let Some(encoded) = encoded {
            self.repl.publish(self.counters.lsn, encoded.into());
        }
        Ok((replies, phys.len()))
    }

    fn maintain_bodies(&mut self) {
        if let Err(e) = self.bodies.maintain(&self.conn) {
            tracing::warn!(error = %e, "body segment maintenance failed; retried later");
        }
    }

    /// Swaps the database for a snapshot taken from a mirror, and restarts replication from its LSN.
    fn install(&mut self, snapshot: PathBuf) -> Result<u64, StoreError> {
        // Close our connection before the file under it moves.
        let placeholder = Connection::open_in_memory()?;
        let old = std::mem::replace(&mut self.conn, placeholder);
        old.close().map_err(|(_, e)| e)?;
        let installed = db::install_file(&snapshot, &self.path)
            .map_err(|e| StoreError::Internal(format!("installing snapshot: {e}")));
        // Whatever happened, reopen what is at the path so the store keeps a working connection.
        let conn = open_deferring_syncs(&self.path, self.quota)?;
        self.wal = syncer::open_wal(&self.path)?;
        // A mirror's copy carries no replication log of ours worth keeping: start afresh.
        db::exec(&conn, "DELETE FROM replog", [])?;
        self.bodies.reload(&conn)?;
        self.counters = load_counters(&conn)?;
        self.repl
            .set_epoch(db::meta_get_sync(&conn, crate::epoch::EPOCH)?.max(0) as u64);
        self.conn = conn;
        self.repl.reset(self.counters.lsn);
        installed?;
        Ok(self.counters.lsn)
    }
}

/// The writer's connection: commits do not sync by themselves, the syncer does (see `syncer`).
fn open_deferring_syncs(
    path: &std::path::Path,
    quota: Option<u64>,
) -> Result<Connection, StoreError> {
    let conn = db::open_writer_sync(path, quota)?;
    conn.execute_batch("PRAGMA synchronous = NORMAL")?;
    Ok(conn)
}

fn load_counters(conn: &Connection) -> Result<Counters, StoreError> {
    let lsn = db::meta_get_sync(conn, "lsn")?.max(0) as u64;
    let stored_next = db::meta_get_sync(conn, "next_queue_id")?;
    let max_id: Option<i64> = db::scalar_one(conn, "SELECT MAX(id) FROM queue_items", [])?;
    let max_seq: Option<i64> = db::scalar_one(conn, "SELECT MAX(seq) FROM transfer_log", [])?;
    Ok(Counters {
        lsn,
        next_queue_id: stored_next.max(max_id.unwrap_or(0) + 1).max(1),
        next_transfer_seq: max_seq.unwrap_or(0) + 1,
    })
}
