//! Physical operations: what a store writes, with every value already decided (ids, UIDs, lease tokens,
//! times). The store's writer turns requests into these, applies them to its own database and ships the
//! very same batch to its mirrors, which apply it with the same [`apply`]. So a copy is the same database,
//! row for row, and replaying a batch twice changes nothing (every operation is an upsert or a delete).

use serde::{Deserialize, Serialize};
use sqlx::SqliteConnection;

use crate::error::StoreError;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum PhysOp {
    QueueInsert {
        queue: String,
        id: i64,
        message_id: String,
        meta: Option<String>,
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
}

/// Where a message lives, as the catalog records it.
pub fn queue_location(queue: &str, id: i64) -> String {
    format!("queue/{queue}/{id}")
}

pub fn mailbox_location(user: &str, folder: &str, uid: i64) -> String {
    format!("mailbox/{user}/{folder}/{uid}")
}

/// Applies one operation. Returns the number of rows it changed (0 when it had already been applied).
pub async fn apply(conn: &mut SqliteConnection, op: &PhysOp) -> Result<u64, StoreError> {
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
            let r = sqlx::query(
                "INSERT INTO queue_items (queue, id, message_id, meta, body, enqueued_at_ms, visible_at_ms)
                 VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
            )
            .bind(queue)
            .bind(id)
            .bind(message_id)
            .bind(meta)
            .bind(body)
            .bind(enqueued_at_ms)
            .bind(visible_at_ms)
            .execute(&mut *conn)
            .await?
            .rows_affected();
            if r > 0 {
                catalog_add(conn, &queue_location(queue, *id), message_id, *enqueued_at_ms).await?;
            }
            r
        }
        PhysOp::QueueLease {
            queue,
            id,
            lease,
            visible_at_ms,
        } => sqlx::query(
            "UPDATE queue_items SET lease = ?, visible_at_ms = ? WHERE queue = ? AND id = ?",
        )
        .bind(lease)
        .bind(visible_at_ms)
        .bind(queue)
        .bind(id)
        .execute(&mut *conn)
        .await?
        .rows_affected(),
        PhysOp::QueueDefer {
            queue,
            id,
            visible_at_ms,
            attempts,
            last_error,
        } => sqlx::query(
            "UPDATE queue_items SET lease = NULL, visible_at_ms = ?, attempts = ?, last_error = ?
             WHERE queue = ? AND id = ?",
        )
        .bind(visible_at_ms)
        .bind(attempts)
        .bind(last_error)
        .bind(queue)
        .bind(id)
        .execute(&mut *conn)
        .await?
        .rows_affected(),
        PhysOp::QueueDelete { queue, id } => {
            catalog_remove(conn, &queue_location(queue, *id)).await?;
            sqlx::query("DELETE FROM queue_items WHERE queue = ? AND id = ?")
                .bind(queue)
                .bind(id)
                .execute(&mut *conn)
                .await?
                .rows_affected()
        }
        PhysOp::MailboxCreate {
            user,
            folder,
            uidvalidity,
        } => sqlx::query(
            "INSERT INTO mailboxes (user, folder, uidvalidity, uidnext) VALUES (?, ?, ?, 1)
             ON CONFLICT DO NOTHING",
        )
        .bind(user)
        .bind(folder)
        .bind(uidvalidity)
        .execute(&mut *conn)
        .await?
        .rows_affected(),
        PhysOp::MessageInsert {
            user,
            folder,
            uid,
            message_id,
            flags,
            internal_date_ms,
            body,
        } => {
            let r = sqlx::query(
                "INSERT INTO messages (user, folder, uid, message_id, flags, internal_date_ms, size, body)
                 VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
            )
            .bind(user)
            .bind(folder)
            .bind(uid)
            .bind(message_id)
            .bind(flags)
            .bind(internal_date_ms)
            .bind(body.len() as i64)
            .bind(body)
            .execute(&mut *conn)
            .await?
            .rows_affected();
            sqlx::query(
                "INSERT INTO delivered (user, folder, message_id, uid) VALUES (?, ?, ?, ?)
                 ON CONFLICT DO NOTHING",
            )
            .bind(user)
            .bind(folder)
            .bind(message_id)
            .bind(uid)
            .execute(&mut *conn)
            .await?;
            sqlx::query(
                "UPDATE mailboxes SET uidnext = MAX(uidnext, ? + 1) WHERE user = ? AND folder = ?",
            )
            .bind(uid)
            .bind(user)
            .bind(folder)
            .execute(&mut *conn)
            .await?;
            if r > 0 {
                catalog_add(
                    conn,
                    &mailbox_location(user, folder, *uid),
                    message_id,
                    *internal_date_ms,
                )
                .await?;
            }
            r
        }
        PhysOp::MessageFlags {
            user,
            folder,
            uid,
            flags,
        } => sqlx::query("UPDATE messages SET flags = ? WHERE user = ? AND folder = ? AND uid = ?")
            .bind(flags)
            .bind(user)
            .bind(folder)
            .bind(uid)
            .execute(&mut *conn)
            .await?
            .rows_affected(),
        PhysOp::MessageExpunge { user, folder, uid } => {
            catalog_remove(conn, &mailbox_location(user, folder, *uid)).await?;
            sqlx::query("DELETE FROM messages WHERE user = ? AND folder = ? AND uid = ?")
                .bind(user)
                .bind(folder)
                .bind(uid)
                .execute(&mut *conn)
                .await?
                .rows_affected()
        }
        PhysOp::TraceAppend {
            message_id,
            seq,
            node,
            action,
            at_ms,
            detail,
        } => sqlx::query(
            "INSERT INTO trace (message_id, seq, node, action, at_ms, detail) VALUES (?, ?, ?, ?, ?, ?)
             ON CONFLICT DO NOTHING",
        )
        .bind(message_id)
        .bind(seq)
        .bind(node)
        .bind(action)
        .bind(at_ms)
        .bind(detail)
        .execute(&mut *conn)
        .await?
        .rows_affected(),
        PhysOp::TransferAppend {
            seq,
            message_id,
            from,
            to,
            summary,
            at_ms,
        } => sqlx::query(
            "INSERT INTO transfer_log (seq, message_id, from_side, to_side, summary, at_ms)
             VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
        )
        .bind(seq)
        .bind(message_id)
        .bind(from)
        .bind(to)
        .bind(summary)
        .bind(at_ms)
        .execute(&mut *conn)
        .await?
        .rows_affected(),
        PhysOp::UserPut {
            address,
            password_hash,
            alternate,
            sms,
            notify,
            updated_at_ms,
        } => sqlx::query(
            "INSERT INTO users (address, password_hash, alternate, sms, notify, updated_at_ms)
             VALUES (?, ?, ?, ?, ?, ?)
             ON CONFLICT(address) DO UPDATE SET password_hash = excluded.password_hash,
               alternate = excluded.alternate, sms = excluded.sms, notify = excluded.notify,
               updated_at_ms = excluded.updated_at_ms",
        )
        .bind(address)
        .bind(password_hash)
        .bind(alternate)
        .bind(sms)
        .bind(notify)
        .bind(updated_at_ms)
        .execute(&mut *conn)
        .await?
        .rows_affected(),
        PhysOp::UserDelete { address } => sqlx::query("DELETE FROM users WHERE address = ?")
            .bind(address)
            .execute(&mut *conn)
            .await?
            .rows_affected(),
        PhysOp::BlockPut { entry, at_ms } => sqlx::query(
            "INSERT INTO blocklist (entry, added_at_ms) VALUES (?, ?) ON CONFLICT DO NOTHING",
        )
        .bind(entry)
        .bind(at_ms)
        .execute(&mut *conn)
        .await?
        .rows_affected(),
        PhysOp::BlockDelete { entry } => sqlx::query("DELETE FROM blocklist WHERE entry = ?")
            .bind(entry)
            .execute(&mut *conn)
            .await?
            .rows_affected(),
    };
    Ok(rows)
}

async fn catalog_add(
    conn: &mut SqliteConnection,
    location: &str,
    message_id: &str,
    at_ms: i64,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO catalog (location, message_id, at_ms) VALUES (?, ?, ?)
         ON CONFLICT(location) DO UPDATE SET message_id = excluded.message_id, at_ms = excluded.at_ms",
    )
    .bind(location)
    .bind(message_id)
    .bind(at_ms)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

async fn catalog_remove(conn: &mut SqliteConnection, location: &str) -> Result<(), StoreError> {
    sqlx::query("DELETE FROM catalog WHERE location = ?")
        .bind(location)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// Encodes a batch of operations for the replication log and the wire.
pub fn encode_batch(ops: &[PhysOp]) -> Result<Vec<u8>, StoreError> {
    postcard::to_stdvec(ops).map_err(|e| StoreError::Internal(format!("encoding a batch: {e}")))
}

pub fn decode_batch(bytes: &[u8]) -> Result<Vec<PhysOp>, StoreError> {
    postcard::from_bytes(bytes)
        .map_err(|e| StoreError::BadRequest(format!("undecodable batch: {e}")))
}

/// What a store ships to a mirror in one request: consecutive batches, each with its sequence number.
#[derive(Debug, Serialize, Deserialize)]
pub struct Shipment {
    pub batches: Vec<(u64, Vec<u8>)>,
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
    }

    #[test]
    fn garbage_is_a_bad_request_not_a_panic() {
        let err = decode_batch(&[0xff, 0xff, 0xff, 0xff, 0xff]).expect_err("rejects");
        assert_eq!(err.code(), "bad_request");
    }
}
