//! Upkeep of a database's segments: giving back dead space (deleting segments no row references,
//! compacting mostly dead ones), making a snapshot stand alone, and the live bytes a quota counts.

use std::fs::File;
use std::path::Path;
use std::time::Instant;

use rusqlite::{Connection, params};

use super::{
    Appender, Bodies, COLUMNS, COMPACT_STEP_BYTES, MAINTAIN_EVERY, Stored, TABLES, columns,
    io_error,
};
use crate::db;
use crate::error::StoreError;

impl Appender {
    /// Syncs the log of the database (`{db}-wal`): what a deletion of segment files must wait for
    /// when commits do not sync by themselves (the writer's `synchronous = NORMAL`).
    fn sync_wal(&self) -> Result<(), StoreError> {
        let Some(bodies) = &self.bodies else {
            return Ok(());
        };
        match File::open(&bodies.wal) {
            Ok(f) => f
                .sync_data()
                .map_err(|e| io_error("syncing", &bodies.wal, e)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_error("opening", &bodies.wal, e)),
        }
    }

    /// Deletes sealed segments no row references and compacts one mostly dead segment; at most once
    /// a second. Runs outside any batch, on the writer's thread.
    pub fn maintain(&mut self, conn: &Connection) -> Result<(), StoreError> {
        if self.last_maintain.elapsed() < MAINTAIN_EVERY {
            return Ok(());
        }
        self.maintain_now(conn)
    }

    /// [`maintain`](Appender::maintain), whenever it last ran.
    pub fn maintain_now(&mut self, conn: &Connection) -> Result<(), StoreError> {
        let Some(bodies) = self.bodies.clone() else {
            return Ok(());
        };
        let Some(active) = self.active.as_ref().map(|a| a.seg) else {
            return Ok(());
        };
        self.last_maintain = Instant::now();
        let dead: Vec<i64> = db::rows_all(
            conn,
            "SELECT id FROM body_segments WHERE id < ? AND live <= 0",
            [active],
            |r| r.get(0),
        )?;
        if !dead.is_empty()
            && let Ok(_no_readers) = bodies.gate.try_write()
        {
            // The commits that left these segments dead must be on disk before the files go.
            self.sync_wal()?;
            for seg in dead {
                if referenced(conn, seg)? {
                    tracing::error!(segment = seg, "a segment counted dead is still referenced");
                    continue;
                }
                db::exec(conn, "DELETE FROM body_segments WHERE id = ?", [seg])?;
                bodies.files().remove(&seg);
                let path = bodies.path(seg);
                match std::fs::remove_file(&path) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(io_error("deleting", &path, e)),
                }
                metrics::counter!("fabric_store_body_segments_deleted_total").increment(1);
                tracing::debug!(segment = seg, "deleted a body segment no row references");
            }
        }
        let sparse: Option<i64> = db::scalar_opt(
            conn,
            "SELECT id FROM body_segments WHERE id < ? AND live > 0 AND live * 2 < size
             ORDER BY live LIMIT 1",
            [active],
        )?;
        if let Some(seg) = sparse {
            let tx = conn.unchecked_transaction()?;
            let moved = self.compact_step(&tx, seg).and_then(|moved| {
                self.flush(&tx)?;
                Ok(moved)
            });
            match moved {
                Ok(moved) => {
                    tx.commit()?;
                    metrics::counter!("fabric_store_body_bytes_compacted_total")
                        .increment(moved as u64);
                    tracing::debug!(segment = seg, moved, "compacted a body segment");
                }
                Err(e) => {
                    drop(tx);
                    self.reload(conn)?;
                    return Err(e);
                }
            }
        }
        Ok(())
    }

    /// Moves up to [`COMPACT_STEP_BYTES`] of the live bodies of segment `seg` into the active one.
    fn compact_step(&mut self, conn: &Connection, seg: i64) -> Result<usize, StoreError> {
        let mut moved = 0usize;
        for table in TABLES {
            let rows: Vec<(i64, Stored)> = db::rows_all(
                conn,
                &format!("SELECT rowid, {COLUMNS} FROM {table} WHERE body_seg = ? LIMIT 1024"),
                [seg],
                |r| Ok((r.get(0)?, Stored::from_row(r, 1)?)),
            )?;
            for (rowid, stored) in rows {
                if moved >= COMPACT_STEP_BYTES {
                    return Ok(moved);
                }
                let body = self.get(stored)?;
                let at = self.put(conn, &body)?;
                let (seg, off, len, crc) = columns(at);
                db::exec(
                    conn,
                    &format!(
                        "UPDATE {table} SET body_seg = ?, body_off = ?, body_len = ?, body_crc = ?
                         WHERE rowid = ?"
                    ),
                    params![seg, off, len, crc, rowid],
                )?;
                moved += body.len();
            }
        }
        Ok(moved)
    }
}

fn referenced(conn: &Connection, seg: i64) -> Result<bool, StoreError> {
    for table in TABLES {
        let found: Option<i64> = db::scalar_opt(
            conn,
            &format!("SELECT 1 FROM {table} WHERE body_seg = ? LIMIT 1"),
            [seg],
        )?;
        if found.is_some() {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Makes the snapshot database at `dest` stand alone: every body its rows reference in `bodies` is
/// put back inline, and it names no segment. Call it while holding a [`Pin`] taken before the
/// snapshot was made.
pub fn inline_snapshot(dest: &Path, bodies: &Bodies) -> Result<(), StoreError> {
    let mut conn = Connection::open(dest)?;
    let tx = conn.transaction()?;
    tx.execute("DELETE FROM body_segments", [])?;
    for table in TABLES {
        loop {
            let rows: Vec<(i64, Stored)> = db::rows_all(
                &tx,
                &format!(
                    "SELECT rowid, {COLUMNS} FROM {table} WHERE body_seg IS NOT NULL LIMIT 256"
                ),
                [],
                |r| Ok((r.get(0)?, Stored::from_row(r, 1)?)),
            )?;
            if rows.is_empty() {
                break;
            }
            for (rowid, stored) in rows {
                let body = bodies.read(stored)?;
                db::exec(
                    &tx,
                    &format!(
                        "UPDATE {table} SET body = ?, body_seg = NULL, body_off = NULL,
                         body_len = NULL, body_crc = NULL WHERE rowid = ?"
                    ),
                    params![body, rowid],
                )?;
            }
        }
    }
    tx.commit()?;
    Ok(())
}

/// Live bytes of every segment (what a quota counts).
pub fn live_bytes(conn: &Connection) -> Result<u64, StoreError> {
    let live: i64 = db::scalar_one(
        conn,
        "SELECT COALESCE(SUM(MAX(live, 0)), 0) FROM body_segments",
        [],
    )?;
    Ok(live.max(0) as u64)
}
