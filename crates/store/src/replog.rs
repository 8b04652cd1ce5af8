//! The replication log (`replog` table): the batches this store committed that some mirror may not hold
//! yet, kept for the shippers (when the in-memory ring no longer reaches back, or after a restart) and
//! for `rejoin`'s tail.
//!
//! The log keeps every operation but not the bodies of inserted messages and queue items: those are in
//! the row the same transaction wrote (`queue_items`, `messages`), and a body never changes. Storing
//! them twice doubled what a write costs the disk: the log's copy went through the WAL and the
//! checkpoint like the row's. Reading the log puts each body back from its row. A row that is gone was
//! deleted by a later operation of the same log (an ack, an expunge, a mailbox reset), so:
//! - a queue item's insert is dropped: the item's life ends before the log does;
//! - a message's insert becomes a [`PhysOp::DeliveredPut`]: the copy still learns that the message id
//!   was delivered to the folder (invariant 3: never delivered twice) and that UIDNEXT passed its UID.
//!
//! A message delivered with its queue item's body shared ([`PhysOp::MessageFromQueue`]) is read like
//! a message's insert, from its own row: what the log gives is always self-contained.
//!
//! A queue item's row is found by its id alone (ids are unique across a store's queues): a later
//! operation of the log may have moved it to another queue ([`PhysOp::QueueMove`]), and the copy
//! replays that move after the insert. A row is the same message only if its message id matches too (a mailbox reset may give its UID to
//! another message). A log written before this change holds its bodies, and they are used as they are.

use std::borrow::Cow;

use sqlx::SqlitePool;

use crate::bodies::{Bodies, COLUMNS, Stored};
use crate::error::StoreError;
use crate::ops::{self, PhysOp};

/// Encodes a batch for the log: the operations without the bodies their rows hold.
pub fn encode(batch: &[PhysOp]) -> Result<Vec<u8>, StoreError> {
    let stripped: Vec<Cow<'_, PhysOp>> = batch.iter().map(without_body).collect();
    postcard::to_stdvec(&stripped)
        .map_err(|e| StoreError::Internal(format!("encoding a log batch: {e}")))
}

fn without_body(op: &PhysOp) -> Cow<'_, PhysOp> {
    match op {
        PhysOp::QueueInsert {
            queue,
            id,
            message_id,
            meta,
            body: _,
            enqueued_at_ms,
            visible_at_ms,
        } => Cow::Owned(PhysOp::QueueInsert {
            queue: queue.clone(),
            id: *id,
            message_id: message_id.clone(),
            meta: meta.clone(),
            body: Vec::new(),
            enqueued_at_ms: *enqueued_at_ms,
            visible_at_ms: *visible_at_ms,
        }),
        PhysOp::MessageInsert {
            user,
            folder,
            uid,
            message_id,
            flags,
            internal_date_ms,
            body: _,
        } => Cow::Owned(PhysOp::MessageInsert {
            user: user.clone(),
            folder: folder.clone(),
            uid: *uid,
            message_id: message_id.clone(),
            flags: flags.clone(),
            internal_date_ms: *internal_date_ms,
            body: Vec::new(),
        }),
        other => Cow::Borrowed(other),
    }
}

/// The logged batches from `from` on, in LSN order (at most `limit` of them), each with its bodies
/// restored.
pub async fn read(
    pool: &SqlitePool,
    bodies: &Bodies,
    from: u64,
    limit: i64,
) -> Result<Vec<(u64, Vec<PhysOp>)>, StoreError> {
    let rows: Vec<(i64, Vec<u8>)> =
        sqlx::query_as("SELECT lsn, batch FROM replog WHERE lsn >= ? ORDER BY lsn LIMIT ?")
            .bind(from as i64)
            .bind(limit)
            .fetch_all(pool)
            .await?;
    let mut out = Vec::with_capacity(rows.len());
    for (lsn, batch) in rows {
        let mut restored = Vec::new();
        for op in ops::decode_batch(&batch)? {
            if let Some(op) = restore_body(pool, bodies, op).await? {
                restored.push(op);
            }
        }
        out.push((lsn as u64, restored));
    }
    Ok(out)
}

/// Puts an insert's body back from its row; see the module docs for a row that is gone.
async fn restore_body(
    pool: &SqlitePool,
    bodies: &Bodies,
    op: PhysOp,
) -> Result<Option<PhysOp>, StoreError> {
    // A delivery that shared a queue item's body reads it from its own row, as an insert does: the
    // item may be gone by the time the log is read, and a copy catching up from the log may never
    // have held it (its insert dropped, below).
    let op = match op {
        PhysOp::MessageFromQueue {
            user,
            folder,
            uid,
            message_id,
            flags,
            internal_date_ms,
            ..
        } => PhysOp::MessageInsert {
            user,
            folder,
            uid,
            message_id,
            flags,
            internal_date_ms,
            body: Vec::new(),
        },
        other => other,
    };
    match op {
        PhysOp::QueueInsert {
            queue,
            id,
            message_id,
            meta,
            body,
            enqueued_at_ms,
            visible_at_ms,
        } if body.is_empty() => {
            let _pin = bodies.pin().await;
            let row = sqlx::query(&format!(
                "SELECT {COLUMNS} FROM queue_items WHERE id = ? AND message_id = ?"
            ))
            .bind(id)
            .bind(&message_id)
            .fetch_optional(pool)
            .await?;
            let Some(row) = row else {
                return Ok(None);
            };
            let body = bodies.read(Stored::from_sqlx(&row)?)?;
            Ok(Some(PhysOp::QueueInsert {
                queue,
                id,
                message_id,
                meta,
                body,
                enqueued_at_ms,
                visible_at_ms,
            }))
        }
        PhysOp::MessageInsert {
            user,
            folder,
            uid,
            message_id,
            flags,
            internal_date_ms,
            body,
        } if body.is_empty() => {
            let _pin = bodies.pin().await;
            let row = sqlx::query(&format!(
                "SELECT {COLUMNS} FROM messages
                 WHERE user = ? AND folder = ? AND uid = ? AND message_id = ?"
            ))
            .bind(&user)
            .bind(&folder)
            .bind(uid)
            .bind(&message_id)
            .fetch_optional(pool)
            .await?;
            let body = match row {
                Some(row) => Some(bodies.read(Stored::from_sqlx(&row)?)?),
                None => None,
            };
            Ok(Some(match body {
                Some(body) => PhysOp::MessageInsert {
                    user,
                    folder,
                    uid,
                    message_id,
                    flags,
                    internal_date_ms,
                    body,
                },
                None => PhysOp::DeliveredPut {
                    user,
                    folder,
                    message_id,
                    uid,
                },
            }))
        }
        other => Ok(Some(other)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn insert(id: i64, body: &[u8]) -> PhysOp {
        crate::test_db::queue_insert("inbound", id, body)
    }

    #[test]
    fn the_log_holds_every_operation_but_no_body() {
        let batch = vec![
            insert(1, &[7u8; 4096]),
            PhysOp::QueueDelete {
                queue: "inbound".into(),
                id: 1,
            },
        ];
        let logged = encode(&batch).expect("encodes");
        assert!(logged.len() < 100, "{} bytes logged", logged.len());
        let decoded = ops::decode_batch(&logged).expect("decodes");
        assert_eq!(decoded, vec![insert(1, b""), batch[1].clone()]);
    }

    #[tokio::test]
    async fn reading_the_log_restores_bodies_and_keeps_what_a_deleted_row_leaves() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("store.sqlite");
        let conn = crate::db::open_writer_sync(&path, None).expect("opens");
        let bodies = Bodies::beside(&path);
        let mut appender = crate::bodies::Appender::open(&conn, bodies.clone()).expect("segments");
        let message = |uid: i64, id: &str, body: &[u8]| PhysOp::MessageInsert {
            user: "ann@acme.example".into(),
            folder: "INBOX".into(),
            uid,
            message_id: id.into(),
            flags: String::new(),
            internal_date_ms: 5,
            body: body.to_vec(),
        };
        let batches = [
            vec![insert(1, b"queued one"), insert(2, b"queued two")],
            vec![
                message(1, "kept", b"kept body"),
                message(2, "gone", b"gone body"),
                // Delivered sharing item 2's body, which a later batch deletes.
                PhysOp::MessageFromQueue {
                    user: "bob@acme.example".into(),
                    folder: "INBOX".into(),
                    uid: 1,
                    message_id: "m2".into(),
                    flags: String::new(),
                    internal_date_ms: 5,
                    queue: "inbound".into(),
                    id: 2,
                },
            ],
            vec![
                PhysOp::QueueDelete {
                    queue: "inbound".into(),
                    id: 2,
                },
                PhysOp::MessageExpunge {
                    user: "ann@acme.example".into(),
                    folder: "INBOX".into(),
                    uid: 2,
                },
                // Archived: the row moves to another queue, its body stays.
                PhysOp::QueueMove {
                    id: 1,
                    from: "inbound".into(),
                    to: "archive".into(),
                    enqueued_at_ms: 9,
                    visible_at_ms: 99,
                },
            ],
        ];
        for (lsn, batch) in batches.iter().enumerate() {
            for op in batch {
                ops::apply(&conn, &mut appender, op).expect("applies");
            }
            appender.flush(&conn).expect("flushes");
            conn.execute(
                "INSERT INTO replog (lsn, batch) VALUES (?, ?)",
                rusqlite::params![lsn as i64 + 1, encode(batch).expect("encodes")],
            )
            .expect("logs");
        }
        let pool = crate::db::open_readers(&path).await.expect("readers");
        let read = read(&pool, &bodies, 1, 100).await.expect("reads");
        let lsns: Vec<u64> = read.iter().map(|(lsn, _)| *lsn).collect();
        assert_eq!(lsns, vec![1, 2, 3]);
        // The item acked later has no insert left; the other comes back whole, though a later
        // batch moved its row to another queue.
        assert_eq!(read[0].1, vec![insert(1, b"queued one")]);
        // The expunged message leaves its tombstone (delivered, UIDNEXT past 2); the other is whole.
        assert_eq!(
            read[1].1,
            vec![
                message(1, "kept", b"kept body"),
                PhysOp::DeliveredPut {
                    user: "ann@acme.example".into(),
                    folder: "INBOX".into(),
                    message_id: "gone".into(),
                    uid: 2,
                },
                // The shared delivery comes back self-contained, though its item is gone.
                PhysOp::MessageInsert {
                    user: "bob@acme.example".into(),
                    folder: "INBOX".into(),
                    uid: 1,
                    message_id: "m2".into(),
                    flags: String::new(),
                    internal_date_ms: 5,
                    body: b"queued two".to_vec(),
                },
            ]
        );
        assert_eq!(read[2].1, batches[2]);
        // From a later LSN on, only the later batches.
        assert_eq!(read_from(&pool, &bodies, 3).await, vec![3]);
    }

    async fn read_from(pool: &SqlitePool, bodies: &Bodies, from: u64) -> Vec<u64> {
        read(pool, bodies, from, 100)
            .await
            .expect("reads")
            .into_iter()
            .map(|(lsn, _)| lsn)
            .collect()
    }
}
