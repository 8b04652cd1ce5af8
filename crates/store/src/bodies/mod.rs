//! Message bodies outside SQLite: append-only segment files beside each database.
//!
//! A body written into SQLite is written twice: once as WAL frames at commit, once more when the
//! checkpoint copies those pages into the database file (and that copy ends in a large sync of the
//! database file, which holds every other sync on the disk behind it). A body never changes, so it
//! goes once into an append-only *segment* file instead, and its row keeps only where it lies
//! (`body_seg`, `body_off`, `body_len`, `body_crc`; the `body` column is then empty). Rows written
//! before segments existed, and the rows of snapshots (see [`inline_snapshot`]), keep their body
//! inline; both kinds are read the same way ([`Stored`]).
//!
//! Durability: the one thread that writes a database gathers a batch's bodies and writes and
//! fdatasyncs them ([`Appender::flush`]) *before* the transaction that references them commits, so a
//! committed row never points at bytes that are not on disk. `body_segments.size` is committed with
//! those rows: bytes past it were written by a batch that never committed, and opening cuts them off.
//!
//! Space: `body_segments.live` counts the bytes rows still reference; triggers keep it as rows are
//! inserted, deleted or moved. [`Appender::maintain`] deletes a sealed segment that no row references,
//! and moves the live bodies of one that is mostly dead into the active segment (compaction), so dead
//! space stays below about half of what the files hold. A store's quota counts live bytes.
//!
//! Readers take a [`Pin`] before they read a row and keep it until they have its body: while any pin
//! is held no segment file is deleted, so a reference read from a row always still resolves.

use std::collections::{BTreeSet, HashMap};
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rusqlite::{Connection, params};
use tokio::sync::{OwnedRwLockReadGuard, RwLock};

use crate::db;
use crate::error::StoreError;

mod upkeep;

pub use upkeep::{inline_snapshot, live_bytes};

/// A segment is sealed, and the next one begun, once it would grow past this.
pub const SEGMENT_BYTES: u64 = 64 * 1024 * 1024;
/// Most bytes one compaction step moves (the writer does nothing else meanwhile).
const COMPACT_STEP_BYTES: usize = 8 * 1024 * 1024;
/// How often the writer looks for segments to delete or compact.
const MAINTAIN_EVERY: Duration = Duration::from_secs(1);

/// The body columns, in the order [`Stored::from_row`] reads them.
pub const COLUMNS: &str = "body, body_seg, body_off, body_len, body_crc";

/// Segment bookkeeping, run after the tables exist (and after `db::migrate` added the columns): the
/// segments with their committed size and live bytes, an index of each table's rows by segment (for
/// compaction), and the triggers that keep `live` as rows are inserted, deleted or moved.
pub fn schema() -> String {
    let mut sql = String::from(
        "CREATE TABLE IF NOT EXISTS body_segments (
            id   INTEGER PRIMARY KEY,
            -- Bytes of the file that committed rows may reference; past it is dead.
            size INTEGER NOT NULL DEFAULT 0,
            -- Bytes rows reference now.
            live INTEGER NOT NULL DEFAULT 0
        );",
    );
    for t in TABLES {
        sql.push_str(&format!(
            "CREATE INDEX IF NOT EXISTS {t}_body_seg ON {t} (body_seg) WHERE body_seg IS NOT NULL;
            CREATE TRIGGER IF NOT EXISTS {t}_body_in AFTER INSERT ON {t}
                WHEN new.body_seg IS NOT NULL
                BEGIN UPDATE body_segments SET live = live + new.body_len WHERE id = new.body_seg; END;
            CREATE TRIGGER IF NOT EXISTS {t}_body_out AFTER DELETE ON {t}
                WHEN old.body_seg IS NOT NULL
                BEGIN UPDATE body_segments SET live = live - old.body_len WHERE id = old.body_seg; END;
            CREATE TRIGGER IF NOT EXISTS {t}_body_moved AFTER UPDATE OF body_seg, body_off ON {t}
                BEGIN
                    UPDATE body_segments SET live = live - old.body_len WHERE id = old.body_seg;
                    UPDATE body_segments SET live = live + new.body_len WHERE id = new.body_seg;
                END;"
        ));
    }
    sql
}

/// The tables whose rows hold bodies.
const TABLES: [&str; 2] = ["queue_items", "messages"];

/// Where a body lies in a segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BodyRef {
    pub seg: i64,
    pub off: i64,
    pub len: i64,
    pub crc: i64,
}

/// A body as a row holds it: inline, or where it lies.
#[derive(Debug, Clone, Default)]
pub struct Stored {
    pub inline: Vec<u8>,
    pub at: Option<BodyRef>,
}

impl Stored {
    /// Reads the [`COLUMNS`], the first at index `first`.
    pub fn from_row(r: &rusqlite::Row<'_>, first: usize) -> rusqlite::Result<Stored> {
        let seg: Option<i64> = r.get(first + 1)?;
        Ok(Stored {
            inline: r.get(first)?,
            at: match seg {
                Some(seg) => Some(BodyRef {
                    seg,
                    off: r.get(first + 2)?,
                    len: r.get(first + 3)?,
                    crc: r.get(first + 4)?,
                }),
                None => None,
            },
        })
    }

    /// Reads the [`COLUMNS`] of a row read with sqlx, by name.
    pub fn from_sqlx(r: &sqlx::sqlite::SqliteRow) -> Result<Stored, sqlx::Error> {
        use sqlx::Row;
        let seg: Option<i64> = r.try_get("body_seg")?;
        Ok(Stored {
            inline: r.try_get("body")?,
            at: match seg {
                Some(seg) => Some(BodyRef {
                    seg,
                    off: r.try_get("body_off")?,
                    len: r.try_get("body_len")?,
                    crc: r.try_get("body_crc")?,
                }),
                None => None,
            },
        })
    }
}

fn io_error(what: &str, path: &Path, e: std::io::Error) -> StoreError {
    if e.raw_os_error() == Some(28) {
        return StoreError::StorageFull;
    }
    StoreError::Internal(format!("{what} {}: {e}", path.display()))
}

fn checksum(bytes: &[u8]) -> i64 {
    crc32fast::hash(bytes) as i64
}

/// Held by a reader from reading a row to reading its body: no segment is deleted meanwhile.
pub type Pin = OwnedRwLockReadGuard<()>;

/// The segment files of one database, shared by its writer and its readers.
pub struct Bodies {
    dir: PathBuf,
    /// The database's write-ahead log (`{db}-wal`).
    wal: PathBuf,
    files: Mutex<HashMap<i64, Arc<File>>>,
    gate: Arc<RwLock<()>>,
}

impl Bodies {
    /// The segments of the database at `db_path` live in `{db_path}.bodies/`.
    pub fn beside(db_path: &Path) -> Arc<Bodies> {
        let mut dir = db_path.as_os_str().to_owned();
        dir.push(".bodies");
        let mut wal = db_path.as_os_str().to_owned();
        wal.push("-wal");
        Arc::new(Bodies {
            dir: PathBuf::from(dir),
            wal: PathBuf::from(wal),
            files: Mutex::new(HashMap::new()),
            gate: Arc::new(RwLock::new(())),
        })
    }

    pub async fn pin(&self) -> Pin {
        self.gate.clone().read_owned().await
    }

    fn path(&self, seg: i64) -> PathBuf {
        self.dir.join(format!("{seg:010}.seg"))
    }

    fn files(&self) -> std::sync::MutexGuard<'_, HashMap<i64, Arc<File>>> {
        self.files.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn file(&self, seg: i64) -> Result<Arc<File>, StoreError> {
        if let Some(f) = self.files().get(&seg) {
            return Ok(f.clone());
        }
        let path = self.path(seg);
        let file = Arc::new(File::open(&path).map_err(|e| io_error("opening", &path, e))?);
        self.files().insert(seg, file.clone());
        Ok(file)
    }

    /// The body a row holds. A body whose checksum does not match is an error, never served.
    pub fn read(&self, stored: Stored) -> Result<Vec<u8>, StoreError> {
        let Some(at) = stored.at else {
            return Ok(stored.inline);
        };
        let file = self.file(at.seg)?;
        let mut buf = vec![0u8; usize::try_from(at.len).unwrap_or(0)];
        file.read_exact_at(&mut buf, at.off.max(0) as u64)
            .map_err(|e| io_error("reading", &self.path(at.seg), e))?;
        if checksum(&buf) != at.crc {
            metrics::counter!("fabric_store_body_checksum_failures_total").increment(1);
            return Err(StoreError::Internal(format!(
                "the body at {}:{} fails its checksum",
                self.path(at.seg).display(),
                at.off
            )));
        }
        Ok(buf)
    }
}

struct Active {
    seg: i64,
    file: Arc<File>,
    /// Bytes written to the file.
    len: u64,
    /// Bytes of this batch not written yet; they follow `len`.
    pending: Vec<u8>,
}

/// Segment files written but not synced yet, and whether their directory must be synced too.
#[derive(Default, Clone)]
pub struct Unsynced {
    files: Vec<Arc<File>>,
    dir: Option<PathBuf>,
}

impl Unsynced {
    /// Adds a later batch's files.
    pub fn merge(&mut self, later: Unsynced) {
        for f in later.files {
            if !self.files.iter().any(|have| Arc::ptr_eq(have, &f)) {
                self.files.push(f);
            }
        }
        self.dir = self.dir.take().or(later.dir);
    }

    pub fn sync(&self) -> Result<(), StoreError> {
        for f in &self.files {
            f.sync_data()
                .map_err(|e| StoreError::Internal(format!("syncing a body segment: {e}")))?;
        }
        if let Some(dir) = &self.dir {
            File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(|e| io_error("syncing", dir, e))?;
        }
        Ok(())
    }
}

/// The writing side of a database's segments, owned by the one thread that writes the database.
pub struct Appender {
    bodies: Option<Arc<Bodies>>,
    /// [`SEGMENT_BYTES`], smaller in tests.
    segment_bytes: u64,
    active: Option<Active>,
    /// Segments sealed since the last flush, still to be synced.
    sealed: Vec<Arc<File>>,
    /// A segment file was created since the last flush: its directory entry must be synced too.
    created: bool,
    last_maintain: Instant,
    /// Opening found bodies that committed rows reference but the disk does not hold (see
    /// [`Appender::damaged`]).
    damaged: u64,
}

impl Appender {
    /// An appender that keeps every body inline (tests, and databases that are not a store's).
    pub fn inline() -> Appender {
        Appender {
            bodies: None,
            segment_bytes: SEGMENT_BYTES,
            active: None,
            sealed: Vec::new(),
            created: false,
            last_maintain: Instant::now(),
            damaged: 0,
        }
    }

    /// Opens the segments of the database `conn` writes: cuts off what no committed row can reference
    /// and deletes files no row of `body_segments` names.
    pub fn open(conn: &Connection, bodies: Arc<Bodies>) -> Result<Appender, StoreError> {
        let mut a = Appender::inline();
        a.bodies = Some(bodies);
        a.reload(conn)?;
        a.damaged = a.verify_tail(conn)?;
        if a.damaged > 0 {
            tracing::error!(
                bodies = a.damaged,
                "rows reference bodies the disk does not hold (the machine stopped before they were synced): this copy must be replaced"
            );
        }
        Ok(a)
    }

    /// How many bodies of the last two segments (the only ones a sync may not have covered when
    /// the machine stopped) fail to read back whole at open. Commits and bodies are synced together
    /// (see `syncer`), so a power loss may keep a commit whose bodies it lost; such a copy is
    /// replaced from a mirror (a store) or from its origin (a replica).
    pub fn damaged(&self) -> u64 {
        self.damaged
    }

    fn verify_tail(&self, conn: &Connection) -> Result<u64, StoreError> {
        let Some(bodies) = &self.bodies else {
            return Ok(0);
        };
        let last: Vec<i64> = db::rows_all(
            conn,
            "SELECT id FROM body_segments ORDER BY id DESC LIMIT 2",
            [],
            |r| r.get(0),
        )?;
        let mut damaged = 0;
        for seg in last {
            for table in TABLES {
                let rows: Vec<Stored> = db::rows_all(
                    conn,
                    &format!("SELECT {COLUMNS} FROM {table} WHERE body_seg = ?"),
                    [seg],
                    |r| Stored::from_row(r, 0),
                )?;
                for stored in rows {
                    if bodies.read(stored).is_err() {
                        damaged += 1;
                    }
                }
            }
        }
        Ok(damaged)
    }

    /// Starts again from what `conn` has committed: after a rolled-back batch, or when the database
    /// under `conn` was replaced.
    pub fn reload(&mut self, conn: &Connection) -> Result<(), StoreError> {
        self.active = None;
        self.sealed.clear();
        self.created = false;
        let Some(bodies) = self.bodies.clone() else {
            return Ok(());
        };
        bodies.files().clear();
        let dir = &bodies.dir;
        if !dir.exists() {
            std::fs::create_dir_all(dir).map_err(|e| io_error("creating", dir, e))?;
            self.created = true;
        }
        let segments: Vec<(i64, i64)> = db::rows_all(
            conn,
            "SELECT id, size FROM body_segments ORDER BY id",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?;
        let known: BTreeSet<i64> = segments.iter().map(|(id, _)| *id).collect();
        for entry in std::fs::read_dir(dir).map_err(|e| io_error("listing", dir, e))? {
            let entry = entry.map_err(|e| io_error("listing", dir, e))?;
            let name = entry.file_name();
            let id = name
                .to_str()
                .and_then(|n| n.strip_suffix(".seg"))
                .and_then(|n| n.parse::<i64>().ok());
            if let Some(id) = id
                && !known.contains(&id)
            {
                tracing::info!(segment = id, "deleting a body segment no row references");
                std::fs::remove_file(entry.path())
                    .map_err(|e| io_error("deleting", &entry.path(), e))?;
            }
        }
        if let Some(&(seg, size)) = segments.last() {
            let path = bodies.path(seg);
            let file = open_segment(&path, false)?;
            let on_disk = file
                .metadata()
                .map_err(|e| io_error("reading", &path, e))?
                .len();
            let size = size.max(0) as u64;
            if on_disk < size {
                tracing::error!(
                    segment = seg,
                    on_disk,
                    committed = size,
                    "a body segment is shorter than its committed size"
                );
            } else if on_disk > size {
                file.set_len(size)
                    .map_err(|e| io_error("truncating", &path, e))?;
                file.sync_all().map_err(|e| io_error("syncing", &path, e))?;
            }
            self.active = Some(Active {
                seg,
                file: Arc::new(file),
                len: on_disk.min(size),
                pending: Vec::new(),
            });
        }
        Ok(())
    }

    /// Begins a new segment (inside the batch's transaction, which records it).
    fn roll(&mut self, conn: &Connection, bodies: &Bodies) -> Result<(), StoreError> {
        let next = match self.active.take() {
            Some(mut old) => {
                write_pending(bodies, &mut old)?;
                db::exec(
                    conn,
                    "UPDATE body_segments SET size = ? WHERE id = ?",
                    params![old.len as i64, old.seg],
                )?;
                let seg = old.seg;
                self.sealed.push(old.file);
                seg + 1
            }
            None => db::scalar_one::<i64>(
                conn,
                "SELECT COALESCE(MAX(id), 0) + 1 FROM body_segments",
                [],
            )?,
        };
        let path = bodies.path(next);
        let file = open_segment(&path, true)?;
        db::exec(
            conn,
            "INSERT INTO body_segments (id, size, live) VALUES (?, 0, 0)",
            [next],
        )?;
        self.created = true;
        self.active = Some(Active {
            seg: next,
            file: Arc::new(file),
            len: 0,
            pending: Vec::new(),
        });
        Ok(())
    }

    /// Places a body; `None` means the row keeps it inline. The bytes reach the file at [`flush`].
    ///
    /// [`flush`]: Appender::flush
    pub fn put(&mut self, conn: &Connection, body: &[u8]) -> Result<Option<BodyRef>, StoreError> {
        let Some(bodies) = self.bodies.clone() else {
            return Ok(None);
        };
        if body.is_empty() {
            return Ok(None);
        }
        let full = match &self.active {
            None => true,
            Some(a) => {
                let end = a.len + a.pending.len() as u64;
                end > 0 && end + body.len() as u64 > self.segment_bytes
            }
        };
        if full {
            self.roll(conn, &bodies)?;
        }
        let Some(a) = self.active.as_mut() else {
            return Err(StoreError::Internal("no active body segment".into()));
        };
        let off = a.len + a.pending.len() as u64;
        a.pending.extend_from_slice(body);
        Ok(Some(BodyRef {
            seg: a.seg,
            off: off as i64,
            len: body.len() as i64,
            crc: checksum(body),
        }))
    }

    /// Takes back the last body [`put`](Appender::put) placed when its row was not written after all
    /// (a duplicate).
    pub fn unput(&mut self, at: Option<BodyRef>) {
        let (Some(at), Some(a)) = (at, self.active.as_mut()) else {
            return;
        };
        let end = a.len + a.pending.len() as u64;
        if at.seg == a.seg && at.off as u64 + at.len as u64 == end && at.off as u64 >= a.len {
            a.pending.truncate(a.pending.len() - at.len as usize);
        }
    }

    /// The body a row holds, including one placed in this batch and not flushed yet.
    pub fn get(&self, stored: Stored) -> Result<Vec<u8>, StoreError> {
        let (Some(at), Some(bodies)) = (stored.at, self.bodies.as_ref()) else {
            return Ok(stored.inline);
        };
        if let Some(a) = &self.active
            && at.seg == a.seg
            && at.off as u64 >= a.len
        {
            let start = (at.off as u64 - a.len) as usize;
            return a
                .pending
                .get(start..start + at.len as usize)
                .map(<[u8]>::to_vec)
                .ok_or_else(|| StoreError::Internal("a body past the segment's end".into()));
        }
        bodies.read(stored)
    }

    /// Writes and syncs the batch's bodies and records the segment's new size; call it inside the
    /// transaction, right before it commits.
    pub fn flush(&mut self, conn: &Connection) -> Result<(), StoreError> {
        self.write_out(conn)?.sync()
    }

    /// Writes the batch's bodies and records the segment's new size, leaving the sync to the caller
    /// (the writer's syncer, see `syncer`); call it inside the transaction, before it commits.
    pub fn write_out(&mut self, conn: &Connection) -> Result<Unsynced, StoreError> {
        let mut out = Unsynced::default();
        let Some(bodies) = self.bodies.clone() else {
            return Ok(out);
        };
        out.files.append(&mut self.sealed);
        if let Some(a) = self.active.as_mut()
            && !a.pending.is_empty()
        {
            write_pending(&bodies, a)?;
            out.files.push(a.file.clone());
            db::exec(
                conn,
                "UPDATE body_segments SET size = ? WHERE id = ?",
                params![a.len as i64, a.seg],
            )?;
        }
        if std::mem::take(&mut self.created) {
            out.dir = Some(bodies.dir.clone());
        }
        Ok(out)
    }

    /// The segment file this appender writes to, as something to sync (at start-up: whatever an
    /// earlier run wrote).
    pub fn unsynced_all(&self) -> Unsynced {
        Unsynced {
            files: self.active.iter().map(|a| a.file.clone()).collect(),
            dir: self.bodies.as_ref().map(|b| b.dir.clone()),
        }
    }
}

/// The four reference columns of a row, `NULL` for an inline body.
pub fn columns(at: Option<BodyRef>) -> (Option<i64>, Option<i64>, Option<i64>, Option<i64>) {
    match at {
        Some(r) => (Some(r.seg), Some(r.off), Some(r.len), Some(r.crc)),
        None => (None, None, None, None),
    }
}

/// Opens a segment file for writing, creating it if needed; `fresh` empties it (a new segment whose
/// file an uncommitted roll may have left behind).
fn open_segment(path: &Path, fresh: bool) -> Result<File, StoreError> {
    OpenOptions::new()
        .create(true)
        .truncate(fresh)
        .read(true)
        .write(true)
        .open(path)
        .map_err(|e| io_error(if fresh { "creating" } else { "opening" }, path, e))
}

fn write_pending(bodies: &Bodies, a: &mut Active) -> Result<(), StoreError> {
    if a.pending.is_empty() {
        return Ok(());
    }
    a.file
        .write_all_at(&a.pending, a.len)
        .map_err(|e| io_error("writing", &bodies.path(a.seg), e))?;
    a.len += a.pending.len() as u64;
    a.pending.clear();
    Ok(())
}

#[cfg(test)]
mod tests;
