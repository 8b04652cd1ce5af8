//! Held items and leases, flush and metadata merges, a mirror replaying the operations, and the
//! migration of a database written before `held` existed.

use rusqlite::Connection;
use serde_json::{Value, json};

use super::AdminRequest;
use crate::bodies::Appender;
use crate::db;
use crate::error::StoreError;
use crate::ops::{self, PhysOp};
use crate::requests::{Reply, Request};
use crate::test_db::Db;

impl Db {
    fn admin(&mut self, now_ms: i64, request: AdminRequest) -> Result<Value, StoreError> {
        match self.run(now_ms, Request::QueueAdmin(request))? {
            Reply::Admin(v) => Ok(v),
            other => panic!("unexpected reply {other:?}"),
        }
    }

    fn enqueue(&mut self, now_ms: i64, message_id: &str) -> i64 {
        match self.run(
            now_ms,
            Request::Enqueue {
                queue: "q".into(),
                message_id: message_id.into(),
                meta: Some(json!({"from": "ann@acme.example"}).to_string()),
                body: b"body".to_vec(),
            },
        ) {
            Ok(Reply::Enqueued { id, .. }) => id,
            other => panic!("enqueue: {other:?}"),
        }
    }

    fn lease(&mut self, now_ms: i64, visibility_ms: i64) -> Vec<i64> {
        match self.run(
            now_ms,
            Request::Lease {
                queue: "q".into(),
                max: 10,
                visibility_ms,
            },
        ) {
            Ok(Reply::Leased(items)) => items.iter().map(|i| i.id).collect(),
            other => panic!("lease: {other:?}"),
        }
    }

    fn defer(&mut self, now_ms: i64, id: i64, until_ms: i64) {
        self.run(
            now_ms,
            Request::Defer {
                queue: "q".into(),
                id,
                lease: None,
                until_ms,
                error: Some("451 try later".into()),
            },
        )
        .expect("defers");
    }

    fn visible_at(&self, id: i64) -> i64 {
        db::scalar_one(
            &self.conn,
            "SELECT visible_at_ms FROM queue_items WHERE id = ?",
            [id],
        )
        .expect("item")
    }
}

fn hold(id: i64) -> AdminRequest {
    AdminRequest::Hold {
        queue: "q".into(),
        id,
    }
}

fn release(id: i64) -> AdminRequest {
    AdminRequest::Release {
        queue: "q".into(),
        id,
    }
}

fn flush(id: i64) -> AdminRequest {
    AdminRequest::FlushItem {
        queue: "q".into(),
        id,
    }
}

#[test]
fn a_held_item_is_never_leased_until_released() {
    let mut db = Db::open();
    let a = db.enqueue(1_000, "a");
    let b = db.enqueue(1_000, "b");
    let v = db.admin(1_100, hold(a)).expect("holds");
    assert_eq!(v["held"], true);
    assert_eq!(db.lease(2_000, 500), vec![b], "only the item not held");
    db.defer(2_100, b, 100_000);
    assert!(db.lease(3_000, 500).is_empty());
    let v = db.admin(4_000, release(a)).expect("releases");
    assert_eq!(
        (v["held"].clone(), v["visible_at_ms"].clone()),
        (json!(false), json!(1_000))
    );
    assert_eq!(db.lease(4_000, 500), vec![a]);
}

#[test]
fn a_leased_item_held_keeps_its_lease_then_is_not_leased_again() {
    let mut db = Db::open();
    let a = db.enqueue(1_000, "a");
    assert_eq!(db.lease(1_000, 500), vec![a]);
    let v = db.admin(1_100, hold(a)).expect("holds a leased item");
    assert_eq!(
        (v["held"].clone(), v["leased"].clone()),
        (json!(true), json!(true))
    );
    assert_eq!(db.visible_at(a), 1_500, "the lease is not shortened");
    assert!(db.lease(2_000, 500).is_empty(), "lease over, still held");
    // Flush refuses a held item; release makes it visible at once.
    let err = db.admin(2_100, flush(a)).expect_err("held");
    assert_eq!(err.code(), "held");
    db.admin(2_200, release(a)).expect("releases");
    assert_eq!(db.lease(2_200, 500), vec![a]);
    // Flush and a metadata change of a leased item leave the lease as it is.
    let v = db.admin(2_300, flush(a)).expect("flush of a leased item");
    assert_eq!(v["visible_at_ms"], 2_700);
    let v = db
        .admin(
            2_400,
            AdminRequest::MergeMeta {
                queue: "q".into(),
                id: a,
                meta: json!({"bounce_requested": {"by": "operator"}})
                    .as_object()
                    .cloned()
                    .unwrap_or_default(),
            },
        )
        .expect("merges");
    assert_eq!(
        v["meta"]["from"], "ann@acme.example",
        "merged, not replaced"
    );
    assert_eq!(v["meta"]["bounce_requested"]["by"], "operator");
    assert_eq!(db.visible_at(a), 2_700);
}

#[test]
fn flush_brings_waiting_items_forward_and_skips_held_and_leased_ones() {
    let mut db = Db::open();
    let ids: Vec<i64> = (0..4)
        .map(|i| db.enqueue(1_000, &format!("m{i}")))
        .collect();
    for id in &ids[..3] {
        db.defer(1_000, *id, 60_000);
    }
    db.admin(1_000, hold(ids[1])).expect("holds");
    assert_eq!(db.lease(1_000, 30_000), vec![ids[3]]);
    let v = db
        .admin(2_000, AdminRequest::FlushQueue { queue: "q".into() })
        .expect("flushes");
    assert_eq!(v["flushed"], 2, "the two waiting items not held: {v}");
    assert_eq!(db.visible_at(ids[0]), 2_000);
    assert_eq!(db.visible_at(ids[2]), 2_000);
    assert_eq!(db.visible_at(ids[1]), 60_000, "held");
    assert_eq!(db.visible_at(ids[3]), 31_000, "leased");
    db.defer(2_000, ids[2], 50_000);
    let v = db.admin(3_000, flush(ids[2])).expect("flushes one");
    assert_eq!(v["visible_at_ms"], 3_000);
    let err = db.admin(2_000, hold(99)).expect_err("unknown");
    assert_eq!(err.code(), "no_such_item");
}

#[test]
fn a_mirror_replaying_the_operations_twice_holds_the_same_rows() {
    let mut db = Db::open();
    let a = db.enqueue(1_000, "a");
    let b = db.enqueue(1_000, "b");
    db.lease(1_000, 500);
    db.defer(1_100, b, 90_000);
    db.admin(1_200, hold(a)).expect("holds");
    db.admin(
        1_300,
        AdminRequest::MergeMeta {
            queue: "q".into(),
            id: b,
            meta: json!({"k": 1}).as_object().cloned().unwrap_or_default(),
        },
    )
    .expect("merges");
    db.admin(1_400, release(a)).expect("releases");
    db.admin(1_500, hold(a)).expect("holds again");
    let shipped = std::mem::take(&mut db.shipped);
    assert!(
        shipped
            .iter()
            .any(|op| matches!(op, PhysOp::QueueHeld { .. }))
    );
    assert!(
        shipped
            .iter()
            .any(|op| matches!(op, PhysOp::QueueMeta { .. }))
    );
    // Through the wire format, as replication ships it.
    let batch = ops::decode_batch(&ops::encode_batch(&shipped).expect("encodes")).expect("decodes");
    let mut mirror = Db::open();
    for _ in 0..2 {
        for op in &batch {
            ops::apply(&mirror.conn, &mut mirror.bodies, op).expect("applies");
        }
        mirror.bodies.flush(&mirror.conn).expect("flushes");
        assert_eq!(mirror.rows(), db.rows());
    }
    assert!(db.rows()[0].ends_with(" 1"), "a is held: {:?}", db.rows());
}

#[test]
fn a_database_from_before_held_is_migrated_at_open() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("replica-old.sqlite");
    {
        let old = Connection::open(&path).expect("opens");
        old.execute_batch(
            "CREATE TABLE queue_items (id INTEGER PRIMARY KEY, queue TEXT NOT NULL,
               message_id TEXT NOT NULL, meta TEXT, body BLOB NOT NULL,
               enqueued_at_ms INTEGER NOT NULL, visible_at_ms INTEGER NOT NULL, lease TEXT,
               attempts INTEGER NOT NULL DEFAULT 0, last_error TEXT);
             INSERT INTO queue_items (id, queue, message_id, body, enqueued_at_ms, visible_at_ms)
               VALUES (1, 'q', 'old', x'00', 5, 5);",
        )
        .expect("old schema");
    }
    let conn = db::open_writer_sync(&path, None).expect("migrates");
    let held: i64 =
        db::scalar_one(&conn, "SELECT held FROM queue_items WHERE id = 1", []).expect("column");
    assert_eq!(held, 0);
    // Opening again finds the column and changes nothing.
    drop(conn);
    let conn = db::open_writer_sync(&path, None).expect("reopens");
    ops::apply(
        &conn,
        &mut Appender::inline(),
        &PhysOp::QueueHeld {
            queue: "q".into(),
            id: 1,
            held: true,
        },
    )
    .expect("applies");
}
