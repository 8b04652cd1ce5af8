//! The syncer: makes a store's committed batches durable on its own disk while its writer goes on.
//!
//! The writer commits with `synchronous = NORMAL`: a commit writes its WAL frames (and the batch's
//! bodies, see `bodies`) without waiting for the disk, and the batch is shipped to the mirrors at once.
//! The syncer thread then fdatasyncs the body segments and the WAL, for every batch committed since its
//! last round at once, and tells replication which LSN is on this disk (`Replication::set_local_synced`).
//! A write is answered only once its LSN is synced here AND held by a mirror (see `replication`), so
//! the local sync, the mirror's apply and the next batch's statements all overlap.
//!
//! What this changes on a crash: a killed process loses nothing it committed (the kernel still holds
//! those pages and writes them). An operating-system crash or power loss may lose the last batches
//! that were not yet synced here, which nobody was told were durable; a mirror that already applied
//! them is then ahead of this store, which the shipper reports (`mirror holds a newer copy of this
//! store`) and a rebuild from that mirror resolves.
//!
//! A failed fdatasync is not retried: after one, the kernel may have dropped the pages it could not
//! write and a later sync would report success without them. The store stops instead (as PostgreSQL
//! does) and, started again, reads back what really is on disk.

use std::fs::File;
use std::path::Path;
use std::sync::Arc;
use std::sync::mpsc;
use std::sync::{Mutex, OnceLock};
use std::time::Instant;

use crate::bodies::Unsynced;
use crate::error::StoreError;
use crate::replication::Replication;

/// What one committed batch leaves to sync.
pub struct Job {
    pub lsn: u64,
    pub bodies: Unsynced,
    /// The database's write-ahead log.
    pub wal: Arc<File>,
}

pub struct Syncer {
    tx: mpsc::Sender<Job>,
}

impl Syncer {
    pub fn spawn(repl: Arc<Replication>) -> Result<Syncer, StoreError> {
        let (tx, rx) = mpsc::channel();
        std::thread::Builder::new()
            .name("store-syncer".into())
            .spawn(move || run(rx, repl))
            .map_err(|e| StoreError::Internal(format!("starting the syncer thread: {e}")))?;
        Ok(Syncer { tx })
    }

    pub fn submit(&self, job: Job) {
        if self.tx.send(job).is_err() {
            tracing::error!("the syncer thread is gone: stopping the store");
            std::process::abort();
        }
    }
}

/// Opens the write-ahead log of the database at `db_path` for syncing.
pub fn open_wal(db_path: &Path) -> Result<Arc<File>, StoreError> {
    let mut wal = db_path.as_os_str().to_owned();
    wal.push("-wal");
    // SQLite creates the log when the writer opens the database; creating an empty one is harmless.
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&wal)
        .map_err(|e| StoreError::Internal(format!("opening {}: {e}", Path::new(&wal).display())))?;
    Ok(Arc::new(file))
}

/// Syncs body segments and a write-ahead log, in parallel: both must be on disk before what they hold
/// counts.
pub fn sync_together(bodies: &Unsynced, wal: &File) -> Result<(), StoreError> {
    let (done, segments) = mpsc::sync_channel(1);
    let owned = bodies.clone();
    helpers().run(Box::new(move || {
        let _ = done.send(owned.sync());
    }));
    let log = wal.sync_data();
    let segments = segments.recv().unwrap_or_else(|_| {
        Err(StoreError::Internal(
            "the segment sync helper is gone".into(),
        ))
    });
    segments?;
    log.map_err(|e| StoreError::Internal(format!("syncing the write-ahead log: {e}")))
}

type Task = Box<dyn FnOnce() + Send>;

/// Long-lived threads that sync the body segments while the caller syncs the log, so no sync pays
/// for starting a thread (on two busy CPUs that costs a time slice).
struct Helpers {
    tx: Mutex<mpsc::Sender<Task>>,
}

impl Helpers {
    fn run(&self, task: Task) {
        let sent = self.tx.lock().unwrap_or_else(|p| p.into_inner()).send(task);
        if let Err(mpsc::SendError(task)) = sent {
            // No helper left: sync here, one after the other.
            task();
        }
    }
}

fn helpers() -> &'static Helpers {
    static HELPERS: OnceLock<Helpers> = OnceLock::new();
    HELPERS.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<Task>();
        let rx = Arc::new(Mutex::new(rx));
        for i in 0..2 {
            let rx = rx.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("store-sync-{i}"))
                .spawn(move || {
                    loop {
                        let task = rx.lock().unwrap_or_else(|p| p.into_inner()).recv();
                        match task {
                            Ok(task) => task(),
                            Err(_) => return,
                        }
                    }
                });
            if let Err(e) = spawned {
                tracing::warn!(error = %e, "no segment sync helper thread");
            }
        }
        Helpers { tx: Mutex::new(tx) }
    })
}

fn run(rx: mpsc::Receiver<Job>, repl: Arc<Replication>) {
    while let Ok(first) = rx.recv() {
        let started = Instant::now();
        let mut lsn = first.lsn;
        let mut bodies = first.bodies;
        let mut wal = first.wal;
        let mut batches = 1u64;
        while let Ok(job) = rx.try_recv() {
            lsn = lsn.max(job.lsn);
            bodies.merge(job.bodies);
            wal = job.wal;
            batches += 1;
        }
        if let Err(e) = sync_together(&bodies, &wal) {
            tracing::error!(error = %e, lsn, "fdatasync failed: the store stops rather than answer for writes that may not be on disk");
            std::process::abort();
        }
        metrics::histogram!("fabric_store_sync_seconds").record(started.elapsed().as_secs_f64());
        metrics::histogram!("fabric_store_sync_batches").record(batches as f64);
        repl.set_local_synced(lsn);
    }
}
