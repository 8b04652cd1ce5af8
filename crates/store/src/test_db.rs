//! A store's database on a temporary disk, driven by write requests the way the writer drives it,
//! for unit tests of what requests do (and what a mirror replaying their operations holds).

use rusqlite::Connection;

use crate::bodies::{Appender, Bodies};
use crate::db;
use crate::error::StoreError;
use crate::ops::PhysOp;
use crate::requests::{self, Ctx, Reply, Request};
use crate::writer::Counters;

/// A queue item's insert as the writer makes it: message id `m{id}`, no meta, times 1.
pub(crate) fn queue_insert(queue: &str, id: i64, body: &[u8]) -> PhysOp {
    PhysOp::QueueInsert {
        queue: queue.into(),
        id,
        message_id: format!("m{id}"),
        meta: None,
        body: body.to_vec(),
        enqueued_at_ms: 1,
        visible_at_ms: 1,
    }
}

pub(crate) struct Db {
    _dir: tempfile::TempDir,
    pub conn: Connection,
    pub bodies: Appender,
    pub counters: Counters,
    /// Every operation applied, in order: what the mirror is shipped.
    pub shipped: Vec<PhysOp>,
}

impl Db {
    pub fn open() -> Db {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("store.sqlite");
        let conn = db::open_writer_sync(&path, None).expect("opens");
        let bodies = Appender::open(&conn, Bodies::beside(&path)).expect("segments");
        Db {
            _dir: dir,
            conn,
            bodies,
            counters: Counters {
                next_queue_id: 1,
                ..Counters::default()
            },
            shipped: Vec::new(),
        }
    }

    pub fn run(&mut self, now_ms: i64, mut request: Request) -> Result<Reply, StoreError> {
        let mut phys = Vec::new();
        let mut ctx = Ctx {
            conn: &self.conn,
            counters: &mut self.counters,
            now_ms,
            phys: &mut phys,
            bodies: &mut self.bodies,
        };
        let reply = requests::execute(&mut ctx, &mut request);
        self.bodies.flush(&self.conn).expect("flushes");
        self.shipped.extend(phys);
        reply
    }

    /// Every item, column by column, as text: two copies compare equal only if identical.
    pub fn rows(&self) -> Vec<String> {
        db::rows_all(
            &self.conn,
            "SELECT id, queue, message_id, meta, enqueued_at_ms, visible_at_ms, lease, attempts,
                    last_error, held FROM queue_items ORDER BY id",
            [],
            |r| {
                Ok(format!(
                    "{} {} {} {:?} {} {} {:?} {} {:?} {}",
                    r.get::<_, i64>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, Option<String>>(3)?,
                    r.get::<_, i64>(4)?,
                    r.get::<_, i64>(5)?,
                    r.get::<_, Option<String>>(6)?,
                    r.get::<_, i64>(7)?,
                    r.get::<_, Option<String>>(8)?,
                    r.get::<_, i64>(9)?,
                ))
            },
        )
        .expect("rows")
    }
}
