//! Opening a store database: SQLite in WAL mode with `synchronous = FULL` (the writers then choose
//! `NORMAL` and sync through `syncer`), so by default a commit returns only once
//! its WAL frames are fsynced. The same schema holds a store's own data and the copies it keeps for the
//! stores it mirrors, so a mirror's copy can become a store's data again by copying one file.

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use rusqlite::types::FromSql;
use rusqlite::{Connection, OptionalExtension, Params};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};

use crate::error::StoreError;

const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
-- Queue ids are unique across queues (one counter per store), so the id is the rowid: one b-tree for
-- the rows, one for de-duplication and lookup by message id, one for leasing.
CREATE TABLE IF NOT EXISTS queue_items (
    id             INTEGER PRIMARY KEY,
    queue          TEXT NOT NULL,
    message_id     TEXT NOT NULL,
    meta           TEXT,
    body           BLOB NOT NULL,
    enqueued_at_ms INTEGER NOT NULL,
    visible_at_ms  INTEGER NOT NULL,
    lease          TEXT,
    attempts       INTEGER NOT NULL DEFAULT 0,
    last_error     TEXT,
    -- 1 while an operator holds the item: never leased until released.
    held           INTEGER NOT NULL DEFAULT 0,
    -- Where the body lies when it is not inline in `body` (see `bodies`).
    body_seg       INTEGER,
    body_off       INTEGER,
    body_len       INTEGER,
    body_crc       INTEGER
);
CREATE UNIQUE INDEX IF NOT EXISTS queue_items_message ON queue_items (message_id, queue);
CREATE INDEX IF NOT EXISTS queue_items_visible ON queue_items (queue, visible_at_ms);
CREATE TABLE IF NOT EXISTS mailboxes (
    user        TEXT NOT NULL,
    folder      TEXT NOT NULL,
    uidvalidity INTEGER NOT NULL,
    uidnext     INTEGER NOT NULL,
    PRIMARY KEY (user, folder)
);
CREATE TABLE IF NOT EXISTS messages (
    user             TEXT NOT NULL,
    folder           TEXT NOT NULL,
    uid              INTEGER NOT NULL,
    message_id       TEXT NOT NULL,
    flags            TEXT NOT NULL,
    internal_date_ms INTEGER NOT NULL,
    size             INTEGER NOT NULL,
    body             BLOB NOT NULL,
    body_seg         INTEGER,
    body_off         INTEGER,
    body_len         INTEGER,
    body_crc         INTEGER,
    PRIMARY KEY (user, folder, uid)
);
-- Every message id ever appended to a folder, expunged ones included: delivery is exactly once.
CREATE TABLE IF NOT EXISTS delivered (
    user       TEXT NOT NULL,
    folder     TEXT NOT NULL,
    message_id TEXT NOT NULL,
    uid        INTEGER NOT NULL,
    PRIMARY KEY (user, folder, message_id)
);
CREATE TABLE IF NOT EXISTS trace (
    message_id TEXT NOT NULL,
    seq        INTEGER NOT NULL,
    node       TEXT NOT NULL,
    action     TEXT NOT NULL,
    at_ms      INTEGER NOT NULL,
    detail     TEXT,
    PRIMARY KEY (message_id, seq)
);
CREATE TABLE IF NOT EXISTS transfer_log (
    seq        INTEGER PRIMARY KEY,
    message_id TEXT NOT NULL,
    from_side  TEXT NOT NULL,
    to_side    TEXT NOT NULL,
    summary    TEXT,
    at_ms      INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS users (
    address       TEXT PRIMARY KEY,
    password_hash TEXT NOT NULL,
    alternate     TEXT,
    sms           TEXT,
    notify        TEXT NOT NULL,
    updated_at_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS blocklist (
    entry       TEXT PRIMARY KEY,
    added_at_ms INTEGER NOT NULL
);
-- Where each moved mailbox lives (the directory store's copy counts): no row means the first store of
-- the domain's home site. `epoch` only grows; every switch raises it by one.
CREATE TABLE IF NOT EXISTS mailbox_homes (
    address       TEXT PRIMARY KEY,
    store         TEXT NOT NULL,
    epoch         INTEGER NOT NULL,
    updated_at_ms INTEGER NOT NULL
);
-- The tracking catalog: where each mailbox message lives in this store's data. Queue items need no
-- entry: `queue_items_message` finds them by message id.
CREATE TABLE IF NOT EXISTS catalog (
    location   TEXT PRIMARY KEY,
    message_id TEXT NOT NULL,
    at_ms      INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS catalog_message ON catalog (message_id);
-- Batches not yet held by every mirror (only a store's own database uses it).
CREATE TABLE IF NOT EXISTS replog (
    lsn   INTEGER PRIMARY KEY,
    batch BLOB NOT NULL
);
"#;

/// SQLite's page size; the quota is enforced in pages.
pub const PAGE_SIZE: u64 = 4096;

/// Pages SQLite may use above the quota: only requests that free or change data (lease, ack, expunge)
/// reach them, because growing requests are refused at the quota itself (see `writer`).
pub fn reserve_pages(quota_bytes: u64, page_size: u64) -> u64 {
    (quota_bytes / page_size / 8).max(64)
}

/// The page size of an open database: [`PAGE_SIZE`] for a database created by this version, the size
/// it was created with for an older one (SQLite cannot change it in WAL mode).
pub fn page_size_sync(conn: &Connection) -> Result<u64, StoreError> {
    let size: i64 = scalar_one(conn, "PRAGMA page_size", [])?;
    Ok(u64::try_from(size).unwrap_or(PAGE_SIZE).max(512))
}

fn options(path: &Path) -> Result<SqliteConnectOptions, StoreError> {
    let url = format!("sqlite://{}", path.display());
    Ok(SqliteConnectOptions::from_str(&url)
        .map_err(|e| StoreError::Internal(format!("database path {}: {e}", path.display())))?
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Full)
        .busy_timeout(Duration::from_secs(30))
        .pragma("page_size", PAGE_SIZE.to_string())
        // Checkpoint often enough that the WAL stays small; SQLite fsyncs the database when it does.
        .pragma("wal_autocheckpoint", "4000")
        .statement_cache_capacity(64))
}

/// Opens (creating if needed) the single synchronous connection that writes a database; the writer
/// runs it on a thread of its own, so a whole batch costs no hop between threads per statement.
/// `quota_bytes` caps the database size: past it (plus a reserve for housekeeping) SQLite answers
/// SQLITE_FULL, as on a full disk.
pub fn open_writer_sync(path: &Path, quota_bytes: Option<u64>) -> Result<Connection, StoreError> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(Duration::from_secs(30))?;
    conn.execute_batch(&format!(
        "PRAGMA page_size = {PAGE_SIZE}; PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL;
         PRAGMA wal_autocheckpoint = {WAL_AUTOCHECKPOINT_PAGES};"
    ))?;
    conn.execute_batch(SCHEMA)?;
    migrate(&conn)?;
    conn.execute_batch(&crate::bodies::schema())?;
    conn.set_prepared_statement_cache_capacity(64);
    if let Some(quota) = quota_bytes.filter(|q| *q > 0) {
        let page_size = page_size_sync(&conn)?;
        let pages = (quota / page_size).max(16) + reserve_pages(quota, page_size);
        conn.execute_batch(&format!("PRAGMA max_page_count = {pages}"))?;
    }
    Ok(conn)
}

/// Brings a database written by an earlier version (a store's own data, a replica, a snapshot from an
/// older mirror) up to [`SCHEMA`]: columns added since are added with their defaults.
pub fn migrate(conn: &Connection) -> Result<(), StoreError> {
    let columns_of = |table: &str| -> Result<Vec<String>, StoreError> {
        let mut stmt = conn.prepare(&format!("PRAGMA table_info({table})"))?;
        let names = stmt.query_map([], |r| r.get::<_, String>(1))?;
        Ok(names.collect::<Result<Vec<String>, _>>()?)
    };
    if !columns_of("queue_items")?.iter().any(|c| c == "held") {
        conn.execute_batch("ALTER TABLE queue_items ADD COLUMN held INTEGER NOT NULL DEFAULT 0")?;
        tracing::info!("database migrated: queue_items.held added");
    }
    for table in ["queue_items", "messages"] {
        if !columns_of(table)?.iter().any(|c| c == "body_seg") {
            conn.execute_batch(&format!(
                "ALTER TABLE {table} ADD COLUMN body_seg INTEGER;
                 ALTER TABLE {table} ADD COLUMN body_off INTEGER;
                 ALTER TABLE {table} ADD COLUMN body_len INTEGER;
                 ALTER TABLE {table} ADD COLUMN body_crc INTEGER;"
            ))?;
            tracing::info!(table, "database migrated: body segment columns added");
        }
    }
    Ok(())
}

/// Pages of WAL after which the writer itself checkpoints: a safety net, since a checkpointer thread
/// (see [`spawn_checkpointer`]) normally copies the WAL into the database well before.
const WAL_AUTOCHECKPOINT_PAGES: u64 = 32_000;
/// How often the checkpointer runs.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(500);

/// Copies the WAL of the database at `path` into the database file every half second, on a thread of
/// its own, so the writer's commits never wait for a checkpoint. Pages rewritten by many batches
/// (indexes, counters) reach the database file once per checkpoint instead of once per few batches.
/// Stops when `alive` can no longer be upgraded (its owner is gone).
pub fn spawn_checkpointer(path: PathBuf, alive: std::sync::Weak<()>) {
    let spawned = std::thread::Builder::new()
        .name("store-checkpoint".into())
        .spawn(move || {
            while alive.upgrade().is_some() {
                std::thread::sleep(CHECKPOINT_EVERY);
                // Open each time: a rebuild may swap the file under a long-lived connection. Never
                // create: a missing file is a swap in progress.
                let conn = Connection::open_with_flags(
                    &path,
                    rusqlite::OpenFlags::SQLITE_OPEN_READ_WRITE
                        | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
                );
                let result = conn.and_then(|c| {
                    c.busy_timeout(Duration::from_secs(1))?;
                    c.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()))
                });
                if let Err(e) = result {
                    tracing::debug!(error = %e, path = %path.display(), "checkpoint skipped");
                }
            }
        });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "no checkpointer thread; the writer checkpoints by itself");
    }
}

/// Runs a statement; answers the rows it changed.
pub fn exec(conn: &Connection, sql: &str, params: impl Params) -> Result<u64, StoreError> {
    Ok(conn.prepare_cached(sql)?.execute(params)? as u64)
}

/// The first column of the first row, if there is a row.
pub fn scalar_opt<T: FromSql>(
    conn: &Connection,
    sql: &str,
    params: impl Params,
) -> Result<Option<T>, StoreError> {
    Ok(conn
        .prepare_cached(sql)?
        .query_row(params, |r| r.get(0))
        .optional()?)
}

/// The first column of the one row the query must answer.
pub fn scalar_one<T: FromSql>(
    conn: &Connection,
    sql: &str,
    params: impl Params,
) -> Result<T, StoreError> {
    Ok(conn.prepare_cached(sql)?.query_row(params, |r| r.get(0))?)
}

/// The first row, mapped.
pub fn row_opt<T>(
    conn: &Connection,
    sql: &str,
    params: impl Params,
    map: impl FnOnce(&rusqlite::Row<'_>) -> rusqlite::Result<T>,
) -> Result<Option<T>, StoreError> {
    Ok(conn
        .prepare_cached(sql)?
        .query_row(params, map)
        .optional()?)
}

/// Every row, mapped.
pub fn rows_all<T>(
    conn: &Connection,
    sql: &str,
    params: impl Params,
    map: impl FnMut(&rusqlite::Row<'_>) -> rusqlite::Result<T>,
) -> Result<Vec<T>, StoreError> {
    let mut stmt = conn.prepare_cached(sql)?;
    let rows = stmt.query_map(params, map)?;
    Ok(rows.collect::<Result<Vec<T>, _>>()?)
}

/// Reads a counter from the `meta` table (0 when absent), on the writer's connection.
pub fn meta_get_sync(conn: &Connection, key: &str) -> Result<i64, StoreError> {
    Ok(scalar_opt(conn, "SELECT value FROM meta WHERE key = ?", [key])?.unwrap_or(0))
}

pub fn meta_set_sync(conn: &Connection, key: &str, value: i64) -> Result<(), StoreError> {
    exec(
        conn,
        "INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
        rusqlite::params![key, value],
    )?;
    Ok(())
}

/// Bytes the store holds now: its database's pages minus the free ones, plus the bodies rows
/// reference in segment files (see `bodies`), on the writer's connection.
pub fn used_bytes_sync(conn: &Connection) -> Result<u64, StoreError> {
    let pages: i64 = scalar_one(conn, "PRAGMA page_count", [])?;
    let free: i64 = scalar_one(conn, "PRAGMA freelist_count", [])?;
    Ok(
        (pages.saturating_sub(free)).max(0) as u64 * page_size_sync(conn)?
            + crate::bodies::live_bytes(conn)?,
    )
}

/// Opens a pool of read connections to a database the writer has already created.
pub async fn open_readers(path: &Path) -> Result<SqlitePool, StoreError> {
    Ok(SqlitePoolOptions::new()
        .max_connections(4)
        .min_connections(1)
        .connect_with(options(path)?.read_only(true))
        .await?)
}

/// Writes a consistent copy of a database to `dest` (which must not exist), using `VACUUM INTO`,
/// with every body inline so the copy stands alone (see `bodies::inline_snapshot`).
pub async fn snapshot_into(
    pool: &SqlitePool,
    bodies: &std::sync::Arc<crate::bodies::Bodies>,
    dest: &Path,
) -> Result<(), StoreError> {
    // No segment is deleted from before the copy is taken until its bodies are read.
    let pin = bodies.pin().await;
    let dest_str = dest
        .to_str()
        .ok_or_else(|| StoreError::Internal("snapshot path is not UTF-8".into()))?;
    sqlx::query("VACUUM INTO ?")
        .bind(dest_str)
        .execute(pool)
        .await?;
    let (bodies, dest) = (bodies.clone(), dest.to_path_buf());
    tokio::task::spawn_blocking(move || {
        let _pin = pin;
        crate::bodies::inline_snapshot(&dest, &bodies)
    })
    .await
    .map_err(|e| StoreError::Internal(format!("snapshot thread: {e}")))?
}

/// Removes a database file and its WAL and shared-memory files.
pub fn remove_files(path: &Path) -> std::io::Result<()> {
    for suffix in ["", "-wal", "-shm"] {
        let mut p = path.as_os_str().to_owned();
        p.push(suffix);
        match std::fs::remove_file(&p) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Moves a snapshot file into place as the database at `path` and fsyncs the directory, so the swap
/// survives a crash.
pub fn install_file(snapshot: &Path, path: &Path) -> std::io::Result<()> {
    std::fs::File::open(snapshot)?.sync_all()?;
    remove_files(path)?;
    std::fs::rename(snapshot, path)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}
