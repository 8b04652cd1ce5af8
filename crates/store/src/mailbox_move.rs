//! Moving a mailbox between stores: the home record (which store serves a mailbox, with an epoch that
//! only grows) and the import of one folder from another store's copy, merged by the rules of the
//! design brief ("Hard parts"):
//!
//! - the mailbox is the union of its messages by fabric message id;
//! - an expunged message (in `delivered`, no longer in `messages`) is a tombstone, and it wins: a
//!   message expunged on either side is gone after the merge, and is never delivered again;
//! - flags: the copy of the store that served the mailbox most recently wins (`prefer`);
//! - UIDs are kept when they stay strictly ascending: importing into an empty folder adopts the
//!   source's UIDVALIDITY and UIDs (IMAP clients notice nothing), importing into a copy of the same
//!   lineage (same UIDVALIDITY) keeps them when every UID means the same message on both sides and
//!   every new one is above the target's UIDNEXT; a folder with another UIDVALIDITY takes the new
//!   messages above its UIDNEXT; anything else renumbers the folder under a new, greater UIDVALIDITY
//!   (clients resynchronise, RFC 3501 2.3.1.1).
//!
//! Both requests become physical operations like any write, so mirrors get the result as it is.

use std::collections::{BTreeMap, HashMap, HashSet};

use rusqlite::params;
use serde::Serialize;

use crate::db;
use crate::error::StoreError;
use crate::ops::PhysOp;
use crate::requests::{Ctx, Reply, join_flags, split_flags};

/// `PUT /v1/homes/{address}`: `address` is served by `store` from now on.
#[derive(Debug)]
pub struct HomeSet {
    pub address: String,
    pub store: String,
    /// The epoch the caller saw; the switch is refused (409) when the record moved on meanwhile.
    pub expect_epoch: Option<i64>,
}

/// One message of the source folder; `body` is `None` when the target already has it (or it was
/// expunged at the source between the listing and the body's read: left for the next import).
#[derive(Debug, Clone)]
pub struct SourceMessage {
    pub uid: i64,
    pub message_id: String,
    pub flags: Vec<String>,
    pub internal_date_ms: i64,
    pub body: Option<Vec<u8>>,
}

/// One folder of another store's copy of the mailbox, read in one snapshot.
#[derive(Debug)]
pub struct ImportFolder {
    pub user: String,
    pub folder: String,
    pub uidvalidity: i64,
    pub uidnext: i64,
    pub messages: Vec<SourceMessage>,
    /// `(message_id, uid)` of the messages the source has expunged (tombstones).
    pub expunged: Vec<(String, i64)>,
    /// True when the source served the mailbox more recently than this store: its flags win.
    pub prefer_source: bool,
}

impl ImportFolder {
    pub fn body_len(&self) -> usize {
        self.messages
            .iter()
            .map(|m| m.body.as_ref().map_or(64, Vec::len))
            .sum()
    }
}

/// What an import did to one folder.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Imported {
    pub folder: String,
    /// Messages the target did not have, now added.
    pub copied: u64,
    /// Messages on both sides whose flags the source's copy changed.
    pub merged: u64,
    /// Messages the target had that the source had expunged: expunged here too.
    pub tombstoned: u64,
    /// How the UIDs came out: "adopted", "kept", "appended" or "renumbered".
    pub uids: &'static str,
    pub uidvalidity: i64,
    /// The folder's UIDVALIDITY differs from the source's now (its clients resynchronise).
    pub uidvalidity_changed: bool,
}

pub fn set_home(ctx: &mut Ctx<'_>, h: &HomeSet) -> Result<Reply, StoreError> {
    let current: i64 = db::scalar_opt(
        ctx.conn,
        "SELECT epoch FROM mailbox_homes WHERE address = ?",
        params![h.address],
    )?
    .unwrap_or(0);
    if let Some(expected) = h.expect_epoch
        && expected != current
    {
        return Err(StoreError::Conflict(format!(
            "the home of {} is at epoch {current}, not {expected}",
            h.address
        )));
    }
    let epoch = current + 1;
    ctx.apply(PhysOp::HomePut {
        address: h.address.clone(),
        store: h.store.clone(),
        epoch,
        updated_at_ms: ctx.now_ms,
    })?;
    Ok(Reply::Admin(serde_json::json!({
        "address": h.address,
        "store": h.store,
        "epoch": epoch,
        "updated_at_ms": ctx.now_ms,
    })))
}

/// The target folder as it is now.
struct Target {
    mailbox: Option<(i64, i64)>,
    /// message id -> UID, expunged ones included.
    delivered: HashMap<String, i64>,
    /// message id -> (UID, flags) of the messages there.
    live: HashMap<String, (i64, String)>,
}

fn read_target(ctx: &Ctx<'_>, user: &str, folder: &str) -> Result<Target, StoreError> {
    let mailbox = db::row_opt(
        ctx.conn,
        "SELECT uidvalidity, uidnext FROM mailboxes WHERE user = ? AND folder = ?",
        params![user, folder],
        |r| Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?)),
    )?;
    let delivered = db::rows_all(
        ctx.conn,
        "SELECT message_id, uid FROM delivered WHERE user = ? AND folder = ?",
        params![user, folder],
        |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)),
    )?
    .into_iter()
    .collect();
    let live = db::rows_all(
        ctx.conn,
        "SELECT message_id, uid, flags FROM messages WHERE user = ? AND folder = ?",
        params![user, folder],
        |r| {
            Ok((
                r.get::<_, String>(0)?,
                (r.get::<_, i64>(1)?, r.get::<_, String>(2)?),
            ))
        },
    )?
    .into_iter()
    .collect();
    Ok(Target {
        mailbox,
        delivered,
        live,
    })
}

/// Whether the source's UIDs can stay as they are in a target of the same UIDVALIDITY: every UID
/// names the same message on both sides, and every message new to the target comes above its UIDNEXT
/// (in UID order), so no client of either side sees a UID change meaning or appear below one it saw.
fn uids_fit(imp: &ImportFolder, t: &Target, uidnext: i64) -> bool {
    let used: HashMap<i64, &str> = t
        .delivered
        .iter()
        .map(|(id, u)| (*u, id.as_str()))
        .collect();
    let mut new: BTreeMap<i64, bool> = BTreeMap::new();
    let all = imp
        .messages
        .iter()
        .map(|m| (m.message_id.as_str(), m.uid, true))
        .chain(imp.expunged.iter().map(|(id, u)| (id.as_str(), *u, false)));
    for (id, uid, live) in all {
        match t.delivered.get(id) {
            Some(u) if *u == uid => {}
            Some(_) => return false,
            None => {
                if used.contains_key(&uid) || new.insert(uid, live).is_some() {
                    return false;
                }
            }
        }
    }
    let mut next = uidnext;
    for (uid, live) in new {
        if live && uid < next {
            return false;
        }
        next = next.max(uid + 1);
    }
    true
}

pub fn import(ctx: &mut Ctx<'_>, imp: &ImportFolder) -> Result<Reply, StoreError> {
    let (user, folder) = (&imp.user, &imp.folder);
    let t = read_target(ctx, user, folder)?;
    let mut out = Imported {
        folder: folder.clone(),
        ..Imported::default()
    };
    let dead: HashSet<&str> = imp.expunged.iter().map(|(id, _)| id.as_str()).collect();
    // Tombstones from the source win over the target's copies.
    let doomed: Vec<i64> = t
        .live
        .iter()
        .filter(|(id, _)| dead.contains(id.as_str()))
        .map(|(_, (uid, _))| *uid)
        .collect();
    // Messages the target never had (a tombstone of its own wins too), with a body to add.
    let new: Vec<&SourceMessage> = imp
        .messages
        .iter()
        .filter(|m| !t.delivered.contains_key(&m.message_id) && m.body.is_some())
        .collect();
    let flags_of = |m: &SourceMessage| join_flags(m.flags.iter().cloned());
    let empty = t.delivered.is_empty();
    let same_lineage = t.mailbox.map(|(v, _)| v) == Some(imp.uidvalidity);
    let uidnext = t.mailbox.map_or(1, |(_, n)| n);
    let mode = if empty {
        "adopted"
    } else if same_lineage && uids_fit(imp, &t, uidnext) {
        "kept"
    } else if !same_lineage {
        "appended"
    } else {
        "renumbered"
    };
    out.uids = mode;
    match mode {
        "adopted" | "kept" => {
            if mode == "adopted" {
                ctx.apply(PhysOp::MailboxReset {
                    user: user.clone(),
                    folder: folder.clone(),
                    uidvalidity: imp.uidvalidity,
                    uidnext: imp.uidnext.max(uidnext).max(1),
                })?;
            }
            for (id, uid) in &imp.expunged {
                if !t.delivered.contains_key(id) {
                    delivered_put(ctx, user, folder, id, *uid)?;
                }
            }
            for m in &new {
                insert(ctx, user, folder, m.uid, m, flags_of(m))?;
                out.copied += 1;
            }
            out.uidvalidity = imp.uidvalidity;
        }
        "appended" => {
            let mut next = uidnext;
            let mut added: Vec<&SourceMessage> = new.clone();
            added.sort_by_key(|m| m.uid);
            for (id, _) in &imp.expunged {
                if !t.delivered.contains_key(id) {
                    delivered_put(ctx, user, folder, id, next)?;
                    next += 1;
                }
            }
            for m in added {
                insert(ctx, user, folder, next, m, flags_of(m))?;
                next += 1;
                out.copied += 1;
            }
            out.uidvalidity = t.mailbox.map_or(imp.uidvalidity, |(v, _)| v);
        }
        _ => {
            renumber(ctx, imp, &t, &new, &dead, &mut out)?;
            return Ok(Reply::Admin(imported_json(&out, imp)));
        }
    }
    for uid in &doomed {
        ctx.apply(PhysOp::MessageExpunge {
            user: user.clone(),
            folder: folder.clone(),
            uid: *uid,
        })?;
        out.tombstoned += 1;
    }
    if imp.prefer_source {
        for m in &imp.messages {
            if let Some((uid, flags)) = t.live.get(&m.message_id)
                && !dead.contains(m.message_id.as_str())
            {
                let theirs = flags_of(m);
                if &theirs != flags {
                    ctx.apply(PhysOp::MessageFlags {
                        user: user.clone(),
                        folder: folder.clone(),
                        uid: *uid,
                        flags: theirs,
                    })?;
                    out.merged += 1;
                }
            }
        }
    }
    Ok(Reply::Admin(imported_json(&out, imp)))
}

fn imported_json(out: &Imported, imp: &ImportFolder) -> serde_json::Value {
    let mut out = out.clone();
    out.uidvalidity_changed = out.uidvalidity != imp.uidvalidity;
    serde_json::to_value(&out).unwrap_or_default()
}

fn insert(
    ctx: &mut Ctx<'_>,
    user: &str,
    folder: &str,
    uid: i64,
    m: &SourceMessage,
    flags: String,
) -> Result<(), StoreError> {
    ctx.apply(PhysOp::MessageInsert {
        user: user.to_string(),
        folder: folder.to_string(),
        uid,
        message_id: m.message_id.clone(),
        flags,
        internal_date_ms: m.internal_date_ms,
        body: m.body.clone().unwrap_or_default(),
    })?;
    Ok(())
}

fn delivered_put(
    ctx: &mut Ctx<'_>,
    user: &str,
    folder: &str,
    message_id: &str,
    uid: i64,
) -> Result<(), StoreError> {
    ctx.apply(PhysOp::DeliveredPut {
        user: user.to_string(),
        folder: folder.to_string(),
        message_id: message_id.to_string(),
        uid,
    })?;
    Ok(())
}

/// The union under a new UIDVALIDITY, greater than both sides': tombstones first, then the messages
/// in arrival order (internal date, then message id).
fn renumber(
    ctx: &mut Ctx<'_>,
    imp: &ImportFolder,
    t: &Target,
    new: &[&SourceMessage],
    dead: &HashSet<&str>,
    out: &mut Imported,
) -> Result<(), StoreError> {
    let (user, folder) = (&imp.user, &imp.folder);
    let old_validity = t.mailbox.map_or(0, |(v, _)| v);
    let uidvalidity = (ctx.now_ms / 1000)
        .max(old_validity + 1)
        .max(imp.uidvalidity + 1)
        .clamp(1, u32::MAX as i64);
    let theirs: HashMap<&str, &SourceMessage> = imp
        .messages
        .iter()
        .map(|m| (m.message_id.as_str(), m))
        .collect();
    // The target's own messages, bodies included, before the reset empties the folder.
    let rows = db::rows_all(
        ctx.conn,
        &format!(
            "SELECT uid, message_id, flags, internal_date_ms, {} FROM messages
             WHERE user = ? AND folder = ?",
            crate::bodies::COLUMNS
        ),
        params![user, folder],
        |r| {
            Ok((
                SourceMessage {
                    uid: r.get(0)?,
                    message_id: r.get(1)?,
                    flags: split_flags(&r.get::<_, String>(2)?),
                    internal_date_ms: r.get(3)?,
                    body: None,
                },
                crate::bodies::Stored::from_row(r, 4)?,
            ))
        },
    )?;
    let mut keep = Vec::with_capacity(rows.len());
    for (mut m, stored) in rows {
        m.body = Some(ctx.bodies.get(stored)?);
        keep.push(m);
    }
    let before = keep.len();
    keep.retain(|m| !dead.contains(m.message_id.as_str()));
    out.tombstoned = (before - keep.len()) as u64;
    if imp.prefer_source {
        for m in keep.iter_mut() {
            if let Some(s) = theirs.get(m.message_id.as_str())
                && join_flags(s.flags.iter().cloned()) != join_flags(m.flags.iter().cloned())
            {
                m.flags = s.flags.clone();
                out.merged += 1;
            }
        }
    }
    out.copied = new.len() as u64;
    keep.extend(new.iter().map(|m| (*m).clone()));
    keep.sort_by(|a, b| {
        (a.internal_date_ms, &a.message_id).cmp(&(b.internal_date_ms, &b.message_id))
    });
    let live: HashSet<&str> = keep.iter().map(|m| m.message_id.as_str()).collect();
    let mut tombstones: Vec<&str> = t
        .delivered
        .keys()
        .map(String::as_str)
        .chain(imp.expunged.iter().map(|(id, _)| id.as_str()))
        .filter(|id| !live.contains(id))
        .collect();
    tombstones.sort_unstable();
    tombstones.dedup();
    ctx.apply(PhysOp::MailboxReset {
        user: user.clone(),
        folder: folder.clone(),
        uidvalidity,
        uidnext: 1,
    })?;
    let mut uid = 1;
    for id in tombstones {
        delivered_put(ctx, user, folder, id, uid)?;
        uid += 1;
    }
    for m in &keep {
        insert(
            ctx,
            user,
            folder,
            uid,
            m,
            join_flags(m.flags.iter().cloned()),
        )?;
        uid += 1;
    }
    out.uids = "renumbered";
    out.uidvalidity = uidvalidity;
    Ok(())
}

#[cfg(test)]
#[path = "mailbox_move_tests.rs"]
mod tests;
