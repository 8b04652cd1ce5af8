//! A trace hop rides with its enqueue or append (once, never for a duplicate), and an archive move
//! keeps the item's body and meta, checks the lease, logs the transfer, and replays identically on a
//! mirror.

use rusqlite::params;
use serde_json::json;

use super::{TraceNote, TransferNote};
use crate::bodies::Appender;
use crate::db;
use crate::error::StoreError;
use crate::ops;
use crate::requests::{Reply, Request};
use crate::test_db::Db;

fn hop(action: &str, detail: Option<&str>) -> TraceNote {
    TraceNote {
        node: "mx-a".into(),
        action: action.into(),
        detail: detail.map(str::to_string),
    }
}

fn noted_enqueue(db: &mut Db, message_id: &str) -> Reply {
    db.run(
        1_000,
        Request::Noted {
            inner: Box::new(Request::Enqueue {
                queue: "inbound".into(),
                message_id: message_id.into(),
                meta: Some(json!({"rcpts": ["ann@acme.example"]}).to_string()),
                body: b"Subject: hi\r\n\r\nbody\r\n".to_vec(),
            }),
            trace: hop("accepted", Some("from 192.0.2.1 for 1 recipient(s)")),
        },
    )
    .expect("enqueues")
}

fn trace(db: &Db, message_id: &str) -> Vec<(i64, String, String, Option<String>)> {
    db::rows_all(
        &db.conn,
        "SELECT seq, node, action, detail FROM trace WHERE message_id = ? ORDER BY seq",
        params![message_id],
        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
    )
    .expect("trace")
}

fn lease(db: &mut Db) -> (i64, String) {
    match db.run(
        2_000,
        Request::Lease {
            queue: "inbound".into(),
            max: 1,
            visibility_ms: 60_000,
        },
    ) {
        Ok(Reply::Leased(items)) => (items[0].id, items[0].lease.clone()),
        other => panic!("lease: {other:?}"),
    }
}

fn archive(db: &mut Db, id: i64, lease: &str) -> Result<Reply, StoreError> {
    db.run(
        3_000,
        Request::Archive {
            queue: "inbound".into(),
            id,
            lease: Some(lease.into()),
            to: "archive".into(),
            hold_ms: 60_000,
            transfer: Some(TransferNote {
                from: "internet".into(),
                to: "isolated".into(),
                summary: Some(json!({"subject": "hi"})),
            }),
            delivery: None,
        },
    )
}

fn transfer_log(db: &Db) -> Vec<(String, String, String)> {
    db::rows_all(
        &db.conn,
        "SELECT message_id, from_side, to_side FROM transfer_log ORDER BY seq",
        [],
        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
    )
    .expect("log")
}

#[test]
fn an_enqueue_writes_its_hop_once_and_a_duplicate_none() {
    let mut db = Db::open();
    noted_enqueue(&mut db, "m1");
    match noted_enqueue(&mut db, "m1") {
        Reply::Enqueued {
            duplicate: true, ..
        } => {}
        other => panic!("expected a duplicate, got {other:?}"),
    }
    assert_eq!(
        trace(&db, "m1"),
        vec![(
            1,
            "mx-a".into(),
            "accepted".into(),
            Some("from 192.0.2.1 for 1 recipient(s)".into())
        )]
    );
}

#[test]
fn an_appends_hop_says_where_the_message_went() {
    let mut db = Db::open();
    let append = |db: &mut Db| {
        db.run(
            1_000,
            Request::Noted {
                inner: Box::new(Request::Append {
                    user: "ann@acme.example".into(),
                    folder: "Quarantine".into(),
                    message_id: "m2".into(),
                    flags: Vec::new(),
                    internal_date_ms: None,
                    body: b"x".to_vec(),
                }),
                trace: hop("quarantined", Some("on store-w1")),
            },
        )
        .expect("appends")
    };
    append(&mut db);
    append(&mut db);
    assert_eq!(
        trace(&db, "m2"),
        vec![(
            1,
            "mx-a".into(),
            "quarantined".into(),
            Some("ann@acme.example Quarantine uid 1 on store-w1".into())
        )]
    );
}

#[test]
fn archiving_moves_the_item_with_its_body_and_logs_the_transfer() {
    let mut db = Db::open();
    noted_enqueue(&mut db, "m3");
    let (id, lease) = lease(&mut db);
    // Someone else's lease moves nothing.
    match archive(&mut db, id, "not-the-lease") {
        Err(StoreError::LeaseMismatch(_)) => {}
        other => panic!("expected a lease mismatch, got {other:?}"),
    }
    assert!(transfer_log(&db).is_empty());
    archive(&mut db, id, &lease).expect("archives");
    let (queue, meta, enqueued, visible, held_lease): (String, String, i64, i64, Option<String>) =
        db::row_opt(
            &db.conn,
            "SELECT queue, meta, enqueued_at_ms, visible_at_ms, lease FROM queue_items WHERE id = ?",
            params![id],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)),
        )
        .expect("reads")
        .expect("the item is still there");
    assert_eq!(queue, "archive");
    assert!(meta.contains("ann@acme.example"));
    // Retention counts from the move: released, and hidden until it is due for the purge.
    assert_eq!((enqueued, visible, held_lease), (3_000, 63_000, None));
    let due = |db: &mut Db, now_ms: i64| match db.run(
        now_ms,
        Request::Lease {
            queue: "archive".into(),
            max: 10,
            visibility_ms: 1_000,
        },
    ) {
        Ok(Reply::Leased(items)) => items.len(),
        other => panic!("lease: {other:?}"),
    };
    assert_eq!(due(&mut db, 62_999), 0);
    assert_eq!(due(&mut db, 63_000), 1);
    let stored = db::row_opt(
        &db.conn,
        &format!(
            "SELECT {} FROM queue_items WHERE id = ?",
            crate::bodies::COLUMNS
        ),
        params![id],
        |r| crate::bodies::Stored::from_row(r, 0),
    )
    .expect("reads")
    .expect("row");
    assert_eq!(
        db.bodies.get(stored).expect("body"),
        b"Subject: hi\r\n\r\nbody\r\n"
    );
    assert_eq!(
        transfer_log(&db),
        vec![("m3".into(), "internet".into(), "isolated".into())]
    );
    // Moved already: a retry finds nothing leased in `inbound`.
    assert!(matches!(
        archive(&mut db, id, &lease),
        Err(StoreError::NoSuchItem(_))
    ));
}

#[test]
fn an_item_whose_message_the_archive_holds_is_only_removed() {
    let mut db = Db::open();
    noted_enqueue(&mut db, "m4");
    db.run(
        1_500,
        Request::Enqueue {
            queue: "archive".into(),
            message_id: "m4".into(),
            meta: None,
            body: b"older copy".to_vec(),
        },
    )
    .expect("enqueues");
    let (id, lease) = lease(&mut db);
    archive(&mut db, id, &lease).expect("archives");
    let queues: Vec<String> = db::rows_all(
        &db.conn,
        "SELECT queue FROM queue_items WHERE message_id = 'm4' ORDER BY id",
        [],
        |r| r.get(0),
    )
    .expect("rows");
    assert_eq!(queues, vec!["archive".to_string()]);
}

#[test]
fn a_mirror_replaying_the_operations_holds_the_same_rows() {
    let mut db = Db::open();
    noted_enqueue(&mut db, "m5");
    noted_enqueue(&mut db, "m6");
    let (id, lease) = lease(&mut db);
    archive(&mut db, id, &lease).expect("archives");
    let mirror = Db::open();
    let tx = mirror.conn.unchecked_transaction().expect("tx");
    for op in &db.shipped {
        ops::apply(&tx, &mut Appender::inline(), op).expect("applies");
    }
    tx.commit().expect("commits");
    assert_eq!(mirror.rows(), db.rows());
    assert_eq!(trace(&mirror, "m5"), trace(&db, "m5"));
    assert_eq!(transfer_log(&mirror), transfer_log(&db));
}

fn archive_delivering(
    db: &mut Db,
    id: i64,
    lease: &str,
    users: &[&str],
) -> Result<Vec<super::Delivered>, StoreError> {
    let reply = db.run(
        3_000,
        Request::Archive {
            queue: "inbound".into(),
            id,
            lease: Some(lease.into()),
            to: "archive".into(),
            hold_ms: 60_000,
            transfer: None,
            delivery: Some(Box::new(super::Delivery {
                mailboxes: users
                    .iter()
                    .map(|u| super::MailboxRef {
                        user: u.to_string(),
                        folder: "INBOX".into(),
                    })
                    .collect(),
                trace: Some(hop("delivered", Some("on store-w1"))),
            })),
        },
    )?;
    match reply {
        Reply::Archived(delivered) => Ok(delivered),
        other => panic!("expected Archived, got {other:?}"),
    }
}

/// Archives the item delivering to ann's and bob's INBOX: `(user, uid, duplicate)` of each.
fn deliver_ann_and_bob(db: &mut Db, id: i64, lease: &str) -> Vec<(String, i64, bool)> {
    archive_delivering(db, id, lease, &["ann@acme.example", "bob@acme.example"])
        .expect("archives")
        .into_iter()
        .map(|d| (d.user, d.uid, d.duplicate))
        .collect()
}

/// `(user, uid, message_id, size, body, where the body lies)` of every mailbox message.
type MessageRow = (String, i64, String, i64, Vec<u8>, Option<(i64, i64)>);

fn messages(db: &Db) -> Vec<MessageRow> {
    db::rows_all(
        &db.conn,
        &format!(
            "SELECT user, uid, message_id, size, {} FROM messages ORDER BY user, uid",
            crate::bodies::COLUMNS
        ),
        [],
        |r| {
            Ok((
                r.get(0)?,
                r.get(1)?,
                r.get(2)?,
                r.get(3)?,
                crate::bodies::Stored::from_row(r, 4)?,
            ))
        },
    )
    .expect("messages")
    .into_iter()
    .map(|(user, uid, id, size, stored)| {
        let at = stored.at.map(|a| (a.seg, a.off));
        (
            user,
            uid,
            id,
            size,
            db.bodies.get(stored).expect("body"),
            at,
        )
    })
    .collect()
}

#[test]
fn an_archive_delivers_into_mailboxes_sharing_the_items_body() {
    let mut db = Db::open();
    noted_enqueue(&mut db, "m7");
    let (id, lease) = lease(&mut db);
    let item_at: (i64, i64) = db::row_opt(
        &db.conn,
        "SELECT body_seg, body_off FROM queue_items WHERE id = ?",
        params![id],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )
    .expect("reads")
    .expect("the item's body lies in a segment");
    let shipped_before = db.shipped.len();
    assert_eq!(
        deliver_ann_and_bob(&mut db, id, &lease),
        vec![
            ("ann@acme.example".into(), 1, false),
            ("bob@acme.example".into(), 1, false)
        ]
    );
    let body = b"Subject: hi\r\n\r\nbody\r\n".to_vec();
    let len = body.len() as i64;
    assert_eq!(
        messages(&db),
        vec![
            (
                "ann@acme.example".into(),
                1,
                "m7".into(),
                len,
                body.clone(),
                Some(item_at)
            ),
            (
                "bob@acme.example".into(),
                1,
                "m7".into(),
                len,
                body.clone(),
                Some(item_at)
            ),
        ],
        "both messages point at the item's body: nothing was written twice"
    );
    // Nothing shipped to the mirrors carries the body again.
    for op in &db.shipped[shipped_before..] {
        assert!(
            !matches!(
                op,
                ops::PhysOp::MessageInsert { .. } | ops::PhysOp::QueueInsert { .. }
            ),
            "{op:?}"
        );
    }
    let hops: Vec<Option<String>> = trace(&db, "m7").into_iter().map(|h| h.3).collect();
    assert_eq!(
        hops[1..],
        [
            Some("ann@acme.example INBOX uid 1 on store-w1".to_string()),
            Some("bob@acme.example INBOX uid 1 on store-w1".to_string()),
        ]
    );
    // The archive copy still reads whole, and a mirror (bodies inline) gets the same mailboxes.
    let mirror = Db::open();
    let tx = mirror.conn.unchecked_transaction().expect("tx");
    for op in &db.shipped {
        ops::apply(&tx, &mut Appender::inline(), op).expect("applies");
    }
    tx.commit().expect("commits");
    let strip = |rows: Vec<MessageRow>| -> Vec<MessageRow> {
        rows.into_iter()
            .map(|(u, uid, id, size, body, _)| (u, uid, id, size, body, None))
            .collect()
    };
    assert_eq!(strip(messages(&mirror)), strip(messages(&db)));
    assert_eq!(mirror.rows(), db.rows());
}

#[test]
fn an_archive_leaves_a_folder_that_has_the_message_as_it_is() {
    let mut db = Db::open();
    noted_enqueue(&mut db, "m8");
    db.run(
        1_500,
        Request::Append {
            user: "ann@acme.example".into(),
            folder: "INBOX".into(),
            message_id: "m8".into(),
            flags: vec!["\\Seen".into()],
            internal_date_ms: None,
            body: b"Subject: hi\r\n\r\nbody\r\n".to_vec(),
        },
    )
    .expect("appends");
    let (id, lease) = lease(&mut db);
    // Someone else's lease delivers nothing.
    assert!(matches!(
        archive_delivering(&mut db, id, "not-the-lease", &["bob@acme.example"]),
        Err(StoreError::LeaseMismatch(_))
    ));
    assert!(messages(&db).iter().all(|m| m.0 == "ann@acme.example"));
    assert_eq!(
        deliver_ann_and_bob(&mut db, id, &lease),
        vec![
            ("ann@acme.example".into(), 1, true),
            ("bob@acme.example".into(), 1, false)
        ]
    );
    let flags: String = db::scalar_one(
        &db.conn,
        "SELECT flags FROM messages WHERE user = 'ann@acme.example'",
        [],
    )
    .expect("flags");
    assert_eq!(flags, "\\Seen");
    assert_eq!(messages(&db).len(), 2);
}

#[test]
fn a_copy_without_the_item_refuses_a_shared_delivery() {
    let mirror = Db::open();
    let tx = mirror.conn.unchecked_transaction().expect("tx");
    let op = ops::PhysOp::MessageFromQueue {
        user: "ann@acme.example".into(),
        folder: "INBOX".into(),
        uid: 1,
        message_id: "m9".into(),
        flags: String::new(),
        internal_date_ms: 1,
        queue: "inbound".into(),
        id: 42,
    };
    assert!(matches!(
        ops::apply(&tx, &mut Appender::inline(), &op),
        Err(StoreError::Internal(_))
    ));
}
