//! The merge rules of a mailbox import, on real databases: adopt, keep, append, renumber; tombstones
//! both ways; flags from the side that served last; a mirror replaying the operations ends equal.

use serde_json::Value;

use super::{HomeSet, ImportFolder, SourceMessage};
use crate::db;
use crate::error::StoreError;
use crate::ops::{self, PhysOp};
use crate::requests::{self, Reply, Request};
use crate::test_db::Db;

const U: &str = "alice@acme.example";

impl Db {
    fn append(&mut self, now_ms: i64, id: &str) -> i64 {
        match self.run(
            now_ms,
            Request::Append {
                user: U.into(),
                folder: "INBOX".into(),
                message_id: id.into(),
                flags: Vec::new(),
                internal_date_ms: Some(now_ms),
                body: format!("Subject: {id}\r\n\r\nbody\r\n").into_bytes(),
            },
        ) {
            Ok(Reply::Appended { uid, .. }) => uid,
            other => panic!("append: {other:?}"),
        }
    }

    fn flag(&mut self, uid: i64, flag: &str) {
        self.run(
            0,
            Request::SetFlags {
                user: U.into(),
                folder: "INBOX".into(),
                uid,
                change: requests::FlagChange::AddRemove {
                    add: vec![flag.into()],
                    remove: Vec::new(),
                },
            },
        )
        .expect("flags");
    }

    fn expunge(&mut self, uid: i64) {
        self.run(
            0,
            Request::Expunge {
                user: U.into(),
                folder: "INBOX".into(),
                uids: Some(vec![uid]),
            },
        )
        .expect("expunge");
    }

    /// What an export of INBOX reads: the folder, its messages with bodies, its tombstones.
    fn export(&self, prefer_source: bool) -> ImportFolder {
        let (uidvalidity, uidnext) = db::row_opt(
            &self.conn,
            "SELECT uidvalidity, uidnext FROM mailboxes WHERE user = ? AND folder = 'INBOX'",
            [U],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .expect("reads")
        .unwrap_or((1, 1));
        let messages = db::rows_all(
            &self.conn,
            &format!(
                "SELECT uid, message_id, flags, internal_date_ms, {} FROM messages
                 WHERE user = ? AND folder = 'INBOX' ORDER BY uid",
                crate::bodies::COLUMNS
            ),
            [U],
            |r| {
                Ok((
                    SourceMessage {
                        uid: r.get(0)?,
                        message_id: r.get(1)?,
                        flags: requests::split_flags(&r.get::<_, String>(2)?),
                        internal_date_ms: r.get(3)?,
                        body: None,
                    },
                    crate::bodies::Stored::from_row(r, 4)?,
                ))
            },
        )
        .expect("reads")
        .into_iter()
        .map(|(mut m, stored)| {
            m.body = Some(self.bodies.get(stored).expect("body"));
            m
        })
        .collect::<Vec<_>>();
        let expunged = db::rows_all(
            &self.conn,
            "SELECT d.message_id, d.uid FROM delivered d WHERE d.user = ? AND d.folder = 'INBOX'
             AND NOT EXISTS (SELECT 1 FROM messages m WHERE m.user = d.user AND m.folder = d.folder
                             AND m.uid = d.uid)",
            [U],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .expect("reads");
        ImportFolder {
            user: U.into(),
            folder: "INBOX".into(),
            uidvalidity,
            uidnext,
            messages,
            expunged,
            prefer_source,
        }
    }

    fn import(&mut self, now_ms: i64, from: &Db, prefer_source: bool) -> Value {
        match self.run(
            now_ms,
            Request::Import(Box::new(from.export(prefer_source))),
        ) {
            Ok(Reply::Admin(v)) => v,
            other => panic!("import: {other:?}"),
        }
    }

    /// (uid, message id, flags) of INBOX, by UID.
    fn inbox(&self) -> Vec<(i64, String, String)> {
        db::rows_all(
            &self.conn,
            "SELECT uid, message_id, flags FROM messages WHERE user = ? AND folder = 'INBOX' ORDER BY uid",
            [U],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .expect("reads")
    }

    fn uidvalidity(&self) -> i64 {
        db::scalar_one(
            &self.conn,
            "SELECT uidvalidity FROM mailboxes WHERE user = ? AND folder = 'INBOX'",
            [U],
        )
        .expect("reads")
    }

    fn delivered(&self) -> Vec<String> {
        db::rows_all(
            &self.conn,
            "SELECT message_id FROM delivered WHERE user = ? AND folder = 'INBOX' ORDER BY message_id",
            [U],
            |r| r.get(0),
        )
        .expect("reads")
    }
}

fn ids(inbox: &[(i64, String, String)]) -> Vec<&str> {
    let mut v: Vec<&str> = inbox.iter().map(|(_, id, _)| id.as_str()).collect();
    v.sort_unstable();
    v
}

#[test]
fn a_failover_and_back_keeps_uids_flags_and_expunges() {
    let (mut home, mut other) = (Db::open(), Db::open());
    for (i, id) in ["m1", "m2", "m3"].iter().enumerate() {
        home.append(1_000_000 + i as i64, id);
    }
    home.flag(1, "\\Seen");
    // Copy into the empty other store: the same UIDVALIDITY and UIDs.
    let v = other.import(2_000_000, &home, true);
    assert_eq!(v["uids"], "adopted");
    assert_eq!(v["copied"], 3);
    assert_eq!(v["uidvalidity_changed"], false);
    assert_eq!(other.inbox(), home.inbox());
    assert_eq!(other.uidvalidity(), home.uidvalidity());
    // The other store serves: new mail, a flag, an expunge.
    assert_eq!(other.append(3_000_000, "m4"), 4);
    other.flag(2, "\\Flagged");
    other.expunge(3);
    // The delta from the old home after the switch: nothing new, the other store's flags stay.
    let v = other.import(3_500_000, &home, false);
    assert_eq!(
        (v["copied"].as_u64(), v["merged"].as_u64()),
        (Some(0), Some(0))
    );
    assert!(!ids(&other.inbox()).contains(&"m3"), "its own expunge wins");
    // Fail back: the old home is an older copy of the same lineage: UIDs kept.
    let v = home.import(4_000_000, &other, true);
    assert_eq!(v["uids"], "kept");
    assert_eq!(v["copied"], 1);
    assert_eq!(v["tombstoned"], 1);
    assert_eq!(v["merged"], 1);
    assert_eq!(home.inbox(), other.inbox());
    assert_eq!(
        home.inbox(),
        vec![
            (1, "m1".into(), "\\Seen".into()),
            (2, "m2".into(), "\\Flagged".into()),
            (4, "m4".into(), String::new()),
        ]
    );
    assert!(home.delivered().contains(&"m3".to_string()));
    // Exactly once afterwards: m3 is never delivered again.
    match home.run(
        5_000_000,
        Request::Append {
            user: U.into(),
            folder: "INBOX".into(),
            message_id: "m3".into(),
            flags: Vec::new(),
            internal_date_ms: None,
            body: b"again".to_vec(),
        },
    ) {
        Ok(Reply::Appended { duplicate, .. }) => assert!(duplicate),
        other => panic!("{other:?}"),
    }
    // Importing twice changes nothing.
    let v = home.import(6_000_000, &other, true);
    assert_eq!(
        (
            v["copied"].as_u64(),
            v["merged"].as_u64(),
            v["tombstoned"].as_u64()
        ),
        (Some(0), Some(0), Some(0))
    );
}

#[test]
fn a_uid_clash_renumbers_under_a_greater_uidvalidity() {
    let (mut home, mut other) = (Db::open(), Db::open());
    home.append(1_000_000, "m1");
    other.import(2_000_000, &home, true);
    // Both sides take a different message at UID 2 (a delivery raced the switch).
    assert_eq!(home.append(3_000_000, "stray"), 2);
    assert_eq!(other.append(3_000_001, "new"), 2);
    other.expunge(1);
    let before = other.uidvalidity();
    let v = other.import(10_000_000, &home, false);
    assert_eq!(v["uids"], "renumbered");
    assert_eq!(v["uidvalidity_changed"], true);
    assert!(other.uidvalidity() > before);
    assert_eq!(ids(&other.inbox()), vec!["new", "stray"]);
    let uids: Vec<i64> = other.inbox().iter().map(|m| m.0).collect();
    assert!(uids.windows(2).all(|w| w[0] < w[1]));
    assert!(
        other.delivered().contains(&"m1".to_string()),
        "the tombstone survives"
    );
}

#[test]
fn another_lineage_takes_the_new_messages_above_its_uidnext() {
    let (mut a, mut b) = (Db::open(), Db::open());
    a.append(1_000_000, "a1");
    b.append(2_000_000, "b1");
    let v = b.import(3_000_000, &a, true);
    assert_eq!(v["uids"], "appended");
    assert_eq!(v["uidvalidity_changed"], true);
    assert_eq!(
        b.inbox()
            .iter()
            .map(|m| (m.0, m.1.as_str()))
            .collect::<Vec<_>>(),
        vec![(1, "b1"), (2, "a1")]
    );
}

#[test]
fn a_mirror_replaying_the_import_ends_equal() {
    let (mut home, mut other, mut mirror) = (Db::open(), Db::open(), Db::open());
    home.append(1_000_000, "m1");
    home.append(1_000_001, "m2");
    home.expunge(1);
    other.append(2_000_000, "x");
    other.import(3_000_000, &home, true);
    home.append(4_000_000, "m3");
    other.import(5_000_000, &home, false);
    for op in other.shipped.iter().chain(other.shipped.iter()) {
        ops::apply(&mirror.conn, &mut mirror.bodies, op).expect("applies");
    }
    mirror.bodies.flush(&mirror.conn).expect("flushes");
    assert_eq!(mirror.inbox(), other.inbox());
    assert_eq!(mirror.delivered(), other.delivered());
    assert_eq!(mirror.uidvalidity(), other.uidvalidity());
}

#[test]
fn homes_only_move_forward() {
    let mut db = Db::open();
    let set = |store: &str, expect: Option<i64>| {
        Request::SetHome(HomeSet {
            address: U.into(),
            store: store.into(),
            expect_epoch: expect,
        })
    };
    let epoch = |r: Result<Reply, StoreError>| match r {
        Ok(Reply::Admin(v)) => v["epoch"].as_i64().expect("epoch"),
        other => panic!("{other:?}"),
    };
    assert_eq!(epoch(db.run(1, set("store-e1", Some(0)))), 1);
    assert_eq!(epoch(db.run(2, set("store-w1", None))), 2);
    let err = db
        .run(3, set("store-e1", Some(1)))
        .expect_err("stale epoch");
    assert_eq!(err.code(), "conflict");
    // A mirror replaying an older record keeps the newer one.
    let old = PhysOp::HomePut {
        address: U.into(),
        store: "store-e1".into(),
        epoch: 1,
        updated_at_ms: 1,
    };
    ops::apply(&db.conn, &mut db.bodies, &old).expect("applies");
    let store: String = db::scalar_one(
        &db.conn,
        "SELECT store FROM mailbox_homes WHERE address = ?",
        [U],
    )
    .expect("reads");
    assert_eq!(store, "store-w1");
}
