//! Physical operations: what a store writes, with every value already decided (ids, UIDs, lease tokens,
//! times). The store's writer turns requests into these, applies them to its own database and ships the
//! very same batch to its mirrors, which apply it with the same [`apply`]. So a copy is the same database,
//! row for row, and replaying a batch twice changes nothing (every operation is an upsert or a delete).

use rusqlite::{Connection, params};
use serde::{Deserialize, Serialize};

use crate::bodies::Appender;
use crate::db;

use crate::error::StoreError;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum PhysOp {
    QueueInsert {
        queue: String,
        id: i64,
        message_id: String,
        meta: Option<String>,
        #[serde(with = "serde_bytes")]
        body: Vec<u8>,
        enqueued_at_ms: i64,
        visible_at_ms: i64,
    },
    QueueLease {
        queue: String,
        id: i64,
        lease: String,
        visible_at_ms: i64,
    },
    QueueDefer {
        queue: String,
        id: i64,
        visible_at_ms: i64,
        attempts: i64,
        last_error: Option<String>,
    },
    QueueDelete {
        queue: String,
        id: i64,
    },
    MailboxCreate {
        user: String,
        folder: String,
        uidvalidity: i64,
    },
    MessageInsert {
        user: String,
        folder: String,
        uid: i64,
        message_id: String,
        flags: String,
        internal_date_ms: i64,
        #[serde(with = "serde_bytes")]
        body: Vec<u8>,
    },
    MessageFlags {
        user: String,
        folder: String,
        uid: i64,
        flags: String,
    },
    MessageExpunge {
        user: String,
        folder: String,
        uid: i64,
    },
    TraceAppend {
        message_id: String,
        seq: i64,
        node: String,
        action: String,
        at_ms: i64,
        detail: Option<String>,
    },
    TransferAppend {
        seq: i64,
        message_id: String,
        from: String,
        to: String,
        summary: Option<String>,
        at_ms: i64,
    },
    UserPut {
        address: String,
        password_hash: String,
        alternate: Option<String>,
        sms: Option<String>,
        notify: String,
        updated_at_ms: i64,
    },
    UserDelete {
        address: String,
    },
    BlockPut {
        entry: String,
        at_ms: i64,
    },
    BlockDelete {
        entry: String,
    },
    // Queue administration (added after the others: the wire format numbers variants in order).
    /// An operator holds (`held: true`) or releases an item.
    QueueHeld {
        queue: String,
        id: i64,
        held: bool,
    },
    /// The item becomes visible at `visible_at_ms` (flush, release: now).
    QueueVisible {
        queue: String,
        id: i64,
        visible_at_ms: i64,
    },
    /// The item's metadata, replaced whole (already merged by the writer).
    QueueMeta {
        queue: String,
        id: i64,
        meta: Option<String>,
    },
    // Epochs and merges (see `epoch`).
    /// A value of the `meta` table that belongs to the store's history (its epoch, and the LSN the
    /// epoch began at), so mirrors and snapshots carry it.
    MetaSet {
        key: String,
        value: i64,
    },
    /// A mailbox's UIDVALIDITY changes: a merge could not keep its UIDs (RFC 3501 2.3.1.1).
    MailboxUidValidity {
        user: String,
        folder: String,
        uidvalidity: i64,
    },
    // Mailbox moves (`mailbox_move`), after the queue administration for the same reason.
    /// Where a mailbox lives, with its epoch (decided by the writer: the previous one plus one).
    HomePut {
        address: String,
        store: String,
        epoch: i64,
        updated_at_ms: i64,
    },
    /// A folder emptied (messages, delivered ids, catalog entries) and given this UIDVALIDITY and
    /// UIDNEXT: the start of an import that adopts the source's UIDs, or renumbers everything.
    MailboxReset {
        user: String,
        folder: String,
        uidvalidity: i64,
        uidnext: i64,
    },
    /// A message id recorded as delivered to a folder without a message (an expunge imported from
    /// another store: a tombstone); UIDNEXT passes `uid`.
    DeliveredPut {
        user: String,
        folder: String,
        message_id: String,
        uid: i64,
    },
    /// A queue item moved to another queue (archived, see `notes`), released, enqueued there at
    /// `enqueued_at_ms` and hidden until `visible_at_ms`; its body stays where it lies. (Last, so
    /// batches encoded before it existed decode as they did.)
    QueueMove {
        id: i64,
        from: String,
        to: String,
        enqueued_at_ms: i64,
        visible_at_ms: i64,
    },
    /// A mailbox message whose body is queue item `id`'s, shared rather than copied: a delivery
    /// from a queue of the same store (see `notes`). Every copy holds that item (batches apply in
    /// order), so a mirror resolves the body from its own copy of it and the body crosses the wire
    /// once, with the enqueue.
    MessageFromQueue {
        user: String,
        folder: String,
        uid: i64,
        message_id: String,
        flags: String,
        internal_date_ms: i64,
        queue: String,
        id: i64,
    },
}

/// Where a mailbox message lives, as the catalog records it (queue items are found in `queue_items`).
pub fn mailbox_location(user: &str, folder: &str, uid: i64) -> String {
    format!("mailbox/{user}/{folder}/{uid}")
}

/// Applies one operation. Returns the number of rows it changed (0 when it had already been applied).
/// Bodies go where `bodies` puts them (a segment file, or inline).
pub fn apply(conn: &Connection, bodies: &mut Appender, op: &PhysOp) -> Result<u64, StoreError> {
    let rows = match op {
        PhysOp::QueueInsert {
            queue,
            id,
            message_id,
            meta,
            body,
            enqueued_at_ms,
            visible_at_ms,
        } => {
            let at = bodies.put(conn, body)?;
            let (seg, off, len, crc) = crate::bodies::columns(at);
            let inline: &[u8] = if at.is_some() { &[] } else { body };
            let r = db::exec(conn, "INSERT INTO queue_items (queue, id, message_id, meta, body, body_seg, body_off, body_len, body_crc, enqueued_at_ms, visible_at_ms)
                 VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING", params![queue, id, message_id, meta, inline, seg, off, len, crc, enqueued_at_ms, visible_at_ms])?;
            if r == 0 {
                bodies.unput(at);
            }
            r
        }
        PhysOp::QueueLease {
            queue,
            id,
            lease,
            visible_at_ms,
        } => db::exec(conn, "UPDATE queue_items SET lease = ?, visible_at_ms = ? WHERE queue = ? AND id = ?", params![lease, visible_at_ms, queue, id])?,
        PhysOp::QueueDefer {
            queue,
            id,
            visible_at_ms,
            attempts,
            last_error,
        } => db::exec(conn, "UPDATE queue_items SET lease = NULL, visible_at_ms = ?, attempts = ?, last_error = ?
             WHERE queue = ? AND id = ?", params![visible_at_ms, attempts, last_error, queue, id])?,
        PhysOp::QueueMove {
            id,
            from,
            to,
            enqueued_at_ms,
            visible_at_ms,
        } => db::exec(
            conn,
            "UPDATE queue_items SET queue = ?, lease = NULL, attempts = 0, last_error = NULL,
             enqueued_at_ms = ?, visible_at_ms = ? WHERE queue = ? AND id = ?",
            params![to, enqueued_at_ms, visible_at_ms, from, id],
        )?,
        PhysOp::QueueDelete { queue, id } => {
            db::exec(conn, "DELETE FROM queue_items WHERE queue = ? AND id = ?", params![queue, id])?
        }
        PhysOp::MailboxCreate {
            user,
            folder,
            uidvalidity,
        } => db::exec(conn, "INSERT INTO mailboxes (user, folder, uidvalidity, uidnext) VALUES (?, ?, ?, 1)
             ON CONFLICT DO NOTHING", params![user, folder, uidvalidity])?,
        PhysOp::MessageInsert {
            user,
            folder,
            uid,
            message_id,
            flags,
            internal_date_ms,
            body,
        } => {
            let at = bodies.put(conn, body)?;
            let (seg, off, len, crc) = crate::bodies::columns(at);
            let inline: &[u8] = if at.is_some() { &[] } else { body };
            let r = db::exec(conn, "INSERT INTO messages (user, folder, uid, message_id, flags, internal_date_ms, size, body, body_seg, body_off, body_len, body_crc)
                 VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING", params![user, folder, uid, message_id, flags, internal_date_ms, body.len() as i64, inline, seg, off, len, crc])?;
            if r == 0 {
                bodies.unput(at);
            }
            message_placed(conn, user, folder, *uid, message_id, *internal_date_ms, r)?;
            r
        }
        PhysOp::MessageFromQueue {
            user,
            folder,
            uid,
            message_id,
            flags,
            internal_date_ms,
            queue,
            id,
        } => {
            // The row points at the item's body where it lies (a segment, or inline bytes copied).
            let r = db::exec(conn, "INSERT INTO messages (user, folder, uid, message_id, flags, internal_date_ms, size, body, body_seg, body_off, body_len, body_crc)
                 SELECT ?, ?, ?, ?, ?, ?, COALESCE(body_len, length(body)), body, body_seg, body_off, body_len, body_crc
                 FROM queue_items WHERE queue = ? AND id = ? ON CONFLICT DO NOTHING", params![user, folder, uid, message_id, flags, internal_date_ms, queue, id])?;
            if r == 0 {
                let placed: Option<i64> = db::scalar_opt(conn, "SELECT uid FROM messages WHERE user = ? AND folder = ? AND uid = ?", params![user, folder, uid])?;
                if placed.is_none() {
                    return Err(StoreError::Internal(format!(
                        "{user}/{folder} uid {uid}: queue {queue:?} has no item {id} to take the body from"
                    )));
                }
            }
            message_placed(conn, user, folder, *uid, message_id, *internal_date_ms, r)?;
            r
        }
        PhysOp::MessageFlags {
            user,
            folder,
            uid,
            flags,
        } => db::exec(conn, "UPDATE messages SET flags = ? WHERE user = ? AND folder = ? AND uid = ?", params![flags, user, folder, uid])?,
        PhysOp::MessageExpunge { user, folder, uid } => {
            catalog_remove(conn, &mailbox_location(user, folder, *uid))?;
            db::exec(conn, "DELETE FROM messages WHERE user = ? AND folder = ? AND uid = ?", params![user, folder, uid])?
        }
        PhysOp::TraceAppend {
            message_id,
            seq,
            node,
            action,
            at_ms,
            detail,
        } => db::exec(conn, "INSERT INTO trace (message_id, seq, node, action, at_ms, detail) VALUES (?, ?, ?, ?, ?, ?)
             ON CONFLICT DO NOTHING", params![message_id, seq, node, action, at_ms, detail])?,
        PhysOp::TransferAppend {
            seq,
            message_id,
            from,
            to,
            summary,
            at_ms,
        } => db::exec(conn, "INSERT INTO transfer_log (seq, message_id, from_side, to_side, summary, at_ms)
             VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING", params![seq, message_id, from, to, summary, at_ms])?,
        PhysOp::UserPut {
            address,
            password_hash,
            alternate,
            sms,
            notify,
            updated_at_ms,
        } => db::exec(conn, "INSERT INTO users (address, password_hash, alternate, sms, notify, updated_at_ms)
             VALUES (?, ?, ?, ?, ?, ?)
             ON CONFLICT(address) DO UPDATE SET password_hash = excluded.password_hash,
               alternate = excluded.alternate, sms = excluded.sms, notify = excluded.notify,
               updated_at_ms = excluded.updated_at_ms", params![address, password_hash, alternate, sms, notify, updated_at_ms])?,
        PhysOp::UserDelete { address } => db::exec(conn, "DELETE FROM users WHERE address = ?", params![address])?,
        PhysOp::BlockPut { entry, at_ms } => db::exec(conn, "INSERT INTO blocklist (entry, added_at_ms) VALUES (?, ?) ON CONFLICT DO NOTHING", params![entry, at_ms])?,
        PhysOp::BlockDelete { entry } => db::exec(conn, "DELETE FROM blocklist WHERE entry = ?", params![entry])?,
        PhysOp::QueueHeld { queue, id, held } => db::exec(conn, "UPDATE queue_items SET held = ? WHERE queue = ? AND id = ?", params![*held as i64, queue, id])?,
        PhysOp::QueueVisible {
            queue,
            id,
            visible_at_ms,
        } => db::exec(conn, "UPDATE queue_items SET visible_at_ms = ? WHERE queue = ? AND id = ?", params![visible_at_ms, queue, id])?,
        PhysOp::QueueMeta { queue, id, meta } => db::exec(conn, "UPDATE queue_items SET meta = ? WHERE queue = ? AND id = ?", params![meta, queue, id])?,
        PhysOp::MetaSet { key, value } => {
            db::meta_set_sync(conn, key, *value)?;
            1
        }
        PhysOp::MailboxUidValidity {
            user,
            folder,
            uidvalidity,
        } => db::exec(conn, "UPDATE mailboxes SET uidvalidity = ? WHERE user = ? AND folder = ?", params![uidvalidity, user, folder])?,
        PhysOp::HomePut {
            address,
            store,
            epoch,
            updated_at_ms,
        } => db::exec(conn, "INSERT INTO mailbox_homes (address, store, epoch, updated_at_ms) VALUES (?, ?, ?, ?)
             ON CONFLICT(address) DO UPDATE SET store = excluded.store, epoch = excluded.epoch,
               updated_at_ms = excluded.updated_at_ms WHERE excluded.epoch >= mailbox_homes.epoch", params![address, store, epoch, updated_at_ms])?,
        PhysOp::MailboxReset {
            user,
            folder,
            uidvalidity,
            uidnext,
        } => {
            // The catalog's locations are `mailbox_location`'s.
            db::exec(conn, "DELETE FROM catalog WHERE location IN
                 (SELECT 'mailbox/' || user || '/' || folder || '/' || uid FROM messages WHERE user = ? AND folder = ?)", params![user, folder])?;
            db::exec(conn, "DELETE FROM messages WHERE user = ? AND folder = ?", params![user, folder])?;
            db::exec(conn, "DELETE FROM delivered WHERE user = ? AND folder = ?", params![user, folder])?;
            db::exec(conn, "INSERT INTO mailboxes (user, folder, uidvalidity, uidnext) VALUES (?, ?, ?, ?)
                 ON CONFLICT(user, folder) DO UPDATE SET uidvalidity = excluded.uidvalidity, uidnext = excluded.uidnext", params![user, folder, uidvalidity, uidnext])?
        }
        PhysOp::DeliveredPut {
            user,
            folder,
            message_id,
            uid,
        } => {
            db::exec(conn, "UPDATE mailboxes SET uidnext = MAX(uidnext, ? + 1) WHERE user = ? AND folder = ?", params![uid, user, folder])?;
            db::exec(conn, "INSERT INTO delivered (user, folder, message_id, uid) VALUES (?, ?, ?, ?)
                 ON CONFLICT DO NOTHING", params![user, folder, message_id, uid])?
        }
    };
    Ok(rows)
}

/// What follows a message's insert (`inserted` rows: 0 when it was there already): its id recorded
/// as delivered to the folder, UIDNEXT past its UID, and its catalog entry.
fn message_placed(
    conn: &Connection,
    user: &str,
    folder: &str,
    uid: i64,
    message_id: &str,
    internal_date_ms: i64,
    inserted: u64,
) -> Result<(), StoreError> {
    db::exec(
        conn,
        "INSERT INTO delivered (user, folder, message_id, uid) VALUES (?, ?, ?, ?)
         ON CONFLICT DO NOTHING",
        params![user, folder, message_id, uid],
    )?;
    db::exec(
        conn,
        "UPDATE mailboxes SET uidnext = MAX(uidnext, ? + 1) WHERE user = ? AND folder = ?",
        params![uid, user, folder],
    )?;
    if inserted > 0 {
        catalog_add(
            conn,
            &mailbox_location(user, folder, uid),
            message_id,
            internal_date_ms,
        )?;
    }
    Ok(())
}

fn catalog_add(
    conn: &Connection,
    location: &str,
    message_id: &str,
    at_ms: i64,
) -> Result<(), StoreError> {
    db::exec(conn, "INSERT INTO catalog (location, message_id, at_ms) VALUES (?, ?, ?)
         ON CONFLICT(location) DO UPDATE SET message_id = excluded.message_id, at_ms = excluded.at_ms", params![location, message_id, at_ms])?;
    Ok(())
}

fn catalog_remove(conn: &Connection, location: &str) -> Result<(), StoreError> {
    db::exec(
        conn,
        "DELETE FROM catalog WHERE location = ?",
        params![location],
    )?;
    Ok(())
}

/// Encodes a batch of operations for the replication log and the wire, into a buffer sized for it
/// up front (grown by doubling, a batch of bodies was copied again at every step).
pub fn encode_batch(ops: &[PhysOp]) -> Result<Vec<u8>, StoreError> {
    let room = ops
        .iter()
        .map(|op| match op {
            PhysOp::QueueInsert { body, .. } | PhysOp::MessageInsert { body, .. } => body.len(),
            _ => 0,
        })
        .sum::<usize>()
        // Room for each operation's names, ids and times, and the batch's length: a short guess
        // costs one more growth, not a wrong encoding.
        + 160 * ops.len()
        + 16;
    postcard::to_extend(ops, Vec::with_capacity(room))
        .map_err(|e| StoreError::Internal(format!("encoding a batch: {e}")))
}

pub fn decode_batch(bytes: &[u8]) -> Result<Vec<PhysOp>, StoreError> {
    postcard::from_bytes(bytes)
        .map_err(|e| StoreError::BadRequest(format!("undecodable batch: {e}")))
}

/// What a store ships to a mirror in one request: consecutive batches, each with its sequence number.
#[derive(Debug, Serialize, Deserialize)]
pub struct Shipment {
    /// The origin's epoch when it shipped: a copy at a newer epoch refuses it (`Superseded`).
    pub epoch: u64,
    pub batches: Vec<(u64, bytes::Bytes)>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_round_trip() {
        let ops = vec![
            PhysOp::QueueInsert {
                queue: "inbound".into(),
                id: 7,
                message_id: "m1".into(),
                meta: Some("{}".into()),
                body: vec![1, 2, 3],
                enqueued_at_ms: 10,
                visible_at_ms: 10,
            },
            PhysOp::BlockDelete {
                entry: "spam.example".into(),
            },
        ];
        let bytes = encode_batch(&ops).expect("encodes");
        assert_eq!(decode_batch(&bytes).expect("decodes"), ops);
        // The buffer sized up front holds postcard's own encoding, byte for byte.
        assert_eq!(bytes, postcard::to_stdvec(&ops).expect("encodes"));
    }

    #[test]
    fn garbage_is_a_bad_request_not_a_panic() {
        let err = decode_batch(&[0xff, 0xff, 0xff, 0xff, 0xff]).expect_err("rejects");
        assert_eq!(err.code(), "bad_request");
    }
}
