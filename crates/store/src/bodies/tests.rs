//! The segment files on a real database: bodies come back whole, a batch that never committed leaves
//! nothing a row can see, dead space is given back, and a snapshot stands alone.

use std::path::{Path, PathBuf};

use rusqlite::Connection;

use super::*;
use crate::ops::{self, PhysOp};

struct Db {
    _dir: tempfile::TempDir,
    path: PathBuf,
    conn: Connection,
    bodies: Arc<Bodies>,
    appender: Appender,
}

impl Db {
    fn open() -> Db {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("store.sqlite");
        let conn = db::open_writer_sync(&path, None).expect("opens");
        let bodies = Bodies::beside(&path);
        let mut appender = Appender::open(&conn, bodies.clone()).expect("segments");
        appender.segment_bytes = 64 * 1024;
        Db {
            _dir: dir,
            path,
            conn,
            bodies,
            appender,
        }
    }

    /// One committed batch of enqueues, as the writer commits it.
    fn enqueue(&mut self, items: &[(i64, Vec<u8>)]) {
        let tx = self.conn.unchecked_transaction().expect("begins");
        for (id, body) in items {
            ops::apply(&tx, &mut self.appender, &insert(*id, body)).expect("applies");
        }
        self.appender.flush(&tx).expect("flushes");
        tx.commit().expect("commits");
    }

    fn delete(&mut self, ids: impl IntoIterator<Item = i64>) {
        for id in ids {
            let op = PhysOp::QueueDelete {
                queue: "q".into(),
                id,
            };
            ops::apply(&self.conn, &mut self.appender, &op).expect("deletes");
        }
    }

    fn body(&self, id: i64) -> Vec<u8> {
        let stored = db::row_opt(
            &self.conn,
            &format!("SELECT {COLUMNS} FROM queue_items WHERE id = ?"),
            [id],
            |r| Stored::from_row(r, 0),
        )
        .expect("reads")
        .expect("row");
        self.bodies.read(stored).expect("body")
    }

    /// The segment an item's body is in (`None` for an inline body or no item).
    fn segment_of(&self, id: i64) -> Option<i64> {
        db::scalar_opt::<Option<i64>>(
            &self.conn,
            "SELECT body_seg FROM queue_items WHERE id = ?",
            [id],
        )
        .expect("reads")
        .flatten()
    }

    fn segment_files(&self) -> Vec<i64> {
        let mut ids: Vec<i64> = std::fs::read_dir(&self.bodies.dir)
            .expect("lists")
            .filter_map(|e| {
                e.ok()?
                    .file_name()
                    .to_str()?
                    .strip_suffix(".seg")?
                    .parse()
                    .ok()
            })
            .collect();
        ids.sort();
        ids
    }
}

fn insert(id: i64, body: &[u8]) -> PhysOp {
    crate::test_db::queue_insert("q", id, body)
}

fn body_of(id: i64, len: usize) -> Vec<u8> {
    (0..len).map(|i| (i as i64 * 31 + id) as u8).collect()
}

#[test]
fn bodies_live_in_segments_and_come_back_whole() {
    let mut db = Db::open();
    let items: Vec<(i64, Vec<u8>)> = (1..=20)
        .map(|id| (id, body_of(id, 100 * id as usize)))
        .collect();
    db.enqueue(&items);
    for (id, body) in &items {
        assert_eq!(&db.body(*id), body, "item {id}");
        assert!(db.segment_of(*id).is_some(), "item {id} is in a segment");
    }
    let inline: i64 =
        db::scalar_one(&db.conn, "SELECT SUM(length(body)) FROM queue_items", []).expect("sums");
    assert_eq!(inline, 0, "no body is kept inline");
    let total: usize = items.iter().map(|(_, b)| b.len()).sum();
    assert_eq!(live_bytes(&db.conn).expect("live"), total as u64);
    // A repeated insert (a replayed batch) adds no row and leaves no bytes behind.
    let size_before: i64 =
        db::scalar_one(&db.conn, "SELECT SUM(size) FROM body_segments", []).expect("size");
    db.enqueue(&[(1, items[0].1.clone())]);
    let size_after: i64 =
        db::scalar_one(&db.conn, "SELECT SUM(size) FROM body_segments", []).expect("size");
    assert_eq!(size_before, size_after);
    // A body whose bytes changed on disk is refused, not served.
    let seg = db.segment_of(3).expect("segment");
    let off: i64 = db::scalar_one(
        &db.conn,
        "SELECT body_off FROM queue_items WHERE id = 3",
        [],
    )
    .expect("off");
    let file = OpenOptions::new()
        .write(true)
        .open(db.bodies.path(seg))
        .expect("opens");
    file.write_all_at(b"X", off as u64 + 1).expect("corrupts");
    db.bodies.files().clear();
    let stored = db::row_opt(
        &db.conn,
        &format!("SELECT {COLUMNS} FROM queue_items WHERE id = 3"),
        [],
        |r| Stored::from_row(r, 0),
    )
    .expect("reads")
    .expect("row");
    assert!(
        db.bodies.read(stored).is_err(),
        "a corrupt body is an error"
    );
}

#[test]
fn a_batch_that_never_committed_leaves_nothing_behind() {
    let mut db = Db::open();
    db.enqueue(&[(1, body_of(1, 1000))]);
    let seg = db.segment_of(1).expect("segment");
    {
        let tx = db.conn.unchecked_transaction().expect("begins");
        ops::apply(&tx, &mut db.appender, &insert(2, &body_of(2, 5000))).expect("applies");
        db.appender.flush(&tx).expect("written");
        // Dropped without commit: rolled back, as when the process dies before the commit.
    }
    let on_disk = std::fs::metadata(db.bodies.path(seg)).expect("stat").len();
    assert_eq!(on_disk, 6000, "the uncommitted body reached the file");
    // Opening again (a restart) cuts the file back to what committed rows can reference.
    let mut reopened = Appender::open(&db.conn, db.bodies.clone()).expect("reopens");
    assert_eq!(
        std::fs::metadata(db.bodies.path(seg)).expect("stat").len(),
        1000
    );
    db.appender = Appender::inline();
    std::mem::swap(&mut db.appender, &mut reopened);
    db.enqueue(&[(3, body_of(3, 700))]);
    assert_eq!(db.body(1), body_of(1, 1000));
    assert_eq!(db.body(3), body_of(3, 700));
    assert_eq!(live_bytes(&db.conn).expect("live"), 1700);
    // A segment file no row names (its batch never committed) is deleted at open.
    let stray = db.bodies.path(seg + 7);
    std::fs::write(&stray, b"never committed").expect("writes");
    Appender::open(&db.conn, db.bodies.clone()).expect("reopens");
    assert!(!stray.exists());
}

#[test]
fn dead_segments_are_deleted_and_sparse_ones_compacted() {
    let mut db = Db::open();
    // 10 KiB bodies in 64 KiB segments: six per segment.
    let items: Vec<(i64, Vec<u8>)> = (1..=30).map(|id| (id, body_of(id, 10 * 1024))).collect();
    for chunk in items.chunks(3) {
        db.enqueue(chunk);
    }
    let files = db.segment_files();
    assert_eq!(files.len(), 5, "{files:?}");
    let first = files[0];
    let in_first: Vec<i64> = (1..=30)
        .filter(|id| db.segment_of(*id) == Some(first))
        .collect();
    let second = files[1];
    let in_second: Vec<i64> = (1..=30)
        .filter(|id| db.segment_of(*id) == Some(second))
        .collect();
    // Every item of the first segment acked, all but one of the second.
    db.delete(in_first.iter().copied());
    db.delete(in_second.iter().skip(1).copied());
    db.appender.maintain_now(&db.conn).expect("maintains");
    let files = db.segment_files();
    assert!(
        !files.contains(&first),
        "the dead segment is deleted: {files:?}"
    );
    let kept = in_second[0];
    assert_ne!(db.segment_of(kept), Some(second), "the live body moved");
    assert_eq!(db.body(kept), body_of(kept, 10 * 1024));
    // Once nothing references it, the sparse segment goes too.
    db.appender.maintain_now(&db.conn).expect("maintains");
    assert!(!db.segment_files().contains(&second));
    for id in (1..=30).filter(|id| !in_first.contains(id) && !in_second[1..].contains(id)) {
        assert_eq!(db.body(id), body_of(id, 10 * 1024), "item {id}");
    }
    let live: usize = (1..=30)
        .filter(|id| !in_first.contains(id) && !in_second[1..].contains(id))
        .count()
        * 10
        * 1024;
    assert_eq!(live_bytes(&db.conn).expect("live"), live as u64);
    // A reader's pin holds segments in place: nothing is deleted while it is held.
    let rest: Vec<i64> = (1..=30)
        .filter(|id| {
            db.segment_of(*id)
                .is_some_and(|s| s == db.segment_files()[0])
        })
        .collect();
    db.delete(rest);
    let pin = db.bodies.gate.clone().try_read_owned().expect("pins");
    let before = db.segment_files();
    db.appender.maintain_now(&db.conn).expect("maintains");
    assert_eq!(db.segment_files(), before, "pinned");
    drop(pin);
    db.appender.maintain_now(&db.conn).expect("maintains");
    assert_eq!(db.segment_files().len(), before.len() - 1);
}

#[tokio::test]
async fn a_snapshot_stands_alone() {
    let mut db = Db::open();
    let items: Vec<(i64, Vec<u8>)> = (1..=12).map(|id| (id, body_of(id, 9000))).collect();
    db.enqueue(&items);
    let pool = db::open_readers(&db.path).await.expect("readers");
    let dest = db.path.with_file_name("snapshot.sqlite");
    db::snapshot_into(&pool, &db.bodies, &dest)
        .await
        .expect("snapshot");
    check_inline(&dest, &items);
}

fn check_inline(path: &Path, items: &[(i64, Vec<u8>)]) {
    let conn = Connection::open(path).expect("opens");
    let refs: i64 = db::scalar_one(
        &conn,
        "SELECT COUNT(*) FROM queue_items WHERE body_seg IS NOT NULL",
        [],
    )
    .expect("counts");
    assert_eq!(refs, 0);
    let segments: i64 =
        db::scalar_one(&conn, "SELECT COUNT(*) FROM body_segments", []).expect("counts");
    assert_eq!(segments, 0);
    for (id, body) in items {
        let inline: Vec<u8> =
            db::scalar_one(&conn, "SELECT body FROM queue_items WHERE id = ?", [id])
                .expect("reads");
        assert_eq!(&inline, body);
    }
}

#[test]
fn bodies_a_commit_kept_but_the_disk_lost_are_found_at_open() {
    let mut db = Db::open();
    db.enqueue(&[(1, body_of(1, 3000)), (2, body_of(2, 3000))]);
    assert_eq!(
        Appender::open(&db.conn, db.bodies.clone())
            .expect("opens")
            .damaged(),
        0
    );
    // The machine stopped after the commit reached the disk but before the second body did.
    let seg = db.segment_of(2).expect("segment");
    let file = OpenOptions::new()
        .write(true)
        .open(db.bodies.path(seg))
        .expect("opens");
    file.write_all_at(&[0u8; 3000], 3000).expect("zeroes");
    db.bodies.files().clear();
    let reopened = Appender::open(&db.conn, db.bodies.clone()).expect("opens");
    assert_eq!(reopened.damaged(), 1);
}
