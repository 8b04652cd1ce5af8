//! Epochs: which writer continues a store's history.
//!
//! A store's history is its sequence of batches (LSNs). When a store is rebuilt from a mirror's copy
//! (a lost disk, an operator's rebuild, or a standby started in place of a dead store), the copy may
//! end before what the old writer had committed: from there on, the new writer's batches are a
//! different history. So every rebuild begins a new epoch: its first batch records `epoch` (one more
//! than any it has seen) and `epoch_start` (that batch's LSN) in the `meta` table, as physical
//! operations, so every mirror and every snapshot carries them.
//!
//! Two rules follow (see `rejoin`): a copy at a newer epoch refuses shipments and snapshots from an
//! older one (`StoreError::Superseded`), so an old writer that wakes up cannot overwrite what its
//! standby wrote; and a store that starts with its own data asks its mirrors first, and if one holds a
//! newer epoch of it, it rejoins: takes that copy and merges back what it had committed after
//! `epoch_start` that the new history lacks.

use std::path::Path;

use rusqlite::{Connection, OpenFlags, params};

use crate::db;
use crate::error::StoreError;
use crate::ops::PhysOp;
use crate::requests::{Ctx, Reply};

pub const EPOCH: &str = "epoch";
pub const EPOCH_START: &str = "epoch_start";

/// The epoch an operation sets, if it is an epoch change.
pub fn epoch_set_by(op: &PhysOp) -> Option<u64> {
    match op {
        PhysOp::MetaSet { key, value } if key == EPOCH => Some((*value).max(0) as u64),
        _ => None,
    }
}

/// The epoch recorded in a database file (a snapshot about to be installed).
pub fn epoch_of_file(path: &Path) -> Result<u64, StoreError> {
    let conn = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    Ok(db::meta_get_sync(&conn, EPOCH)?.max(0) as u64)
}

/// Begins a new epoch above both this database's and `above` (the copy it was rebuilt from).
pub fn begin(ctx: &mut Ctx<'_>, above: u64) -> Result<Reply, StoreError> {
    let current = db::meta_get_sync(ctx.conn, EPOCH)?.max(0) as u64;
    let epoch = current.max(above) + 1;
    ctx.apply(PhysOp::MetaSet {
        key: EPOCH.into(),
        value: epoch as i64,
    })?;
    // The writer gives this batch the next LSN.
    ctx.apply(PhysOp::MetaSet {
        key: EPOCH_START.into(),
        value: (ctx.counters.lsn + 1) as i64,
    })?;
    Ok(Reply::Seq(epoch as i64))
}

/// Gives a mailbox a new UIDVALIDITY, greater than the one it had (RFC 3501 2.3.1.1): a merge put
/// messages under UIDs a client may have seen for others.
pub fn new_uidvalidity(ctx: &mut Ctx<'_>, user: &str, folder: &str) -> Result<Reply, StoreError> {
    let current: Option<i64> = db::scalar_opt(
        ctx.conn,
        "SELECT uidvalidity FROM mailboxes WHERE user = ? AND folder = ?",
        params![user, folder],
    )?;
    let Some(current) = current else {
        return Err(StoreError::NotFound(format!(
            "no folder {folder:?} for {user}"
        )));
    };
    let uidvalidity = (current + 1)
        .max(ctx.now_ms / 1000)
        .clamp(1, u32::MAX as i64);
    ctx.apply(PhysOp::MailboxUidValidity {
        user: user.to_string(),
        folder: folder.to_string(),
        uidvalidity,
    })?;
    Ok(Reply::Seq(uidvalidity))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_epoch_key_sets_the_epoch() {
        let set = PhysOp::MetaSet {
            key: EPOCH.into(),
            value: 3,
        };
        let start = PhysOp::MetaSet {
            key: EPOCH_START.into(),
            value: 90,
        };
        assert_eq!(epoch_set_by(&set), Some(3));
        assert_eq!(epoch_set_by(&start), None);
    }
}
