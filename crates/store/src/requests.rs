//! Write requests, and how the writer turns each into physical operations.
//!
//! Each request first checks what it needs (does the item exist, is the lease ours), then decides every
//! value (ids, UIDs, lease tokens, times) and applies the resulting [`PhysOp`]s through [`ops::apply`],
//! the same function a mirror uses, so both copies end up identical.

use rusqlite::{Connection, params};
use serde::Serialize;

use crate::bodies::{Appender, Stored};
use crate::db;

use crate::error::StoreError;
pub use crate::flags::{join_flags, split_flags};
use crate::mailbox_move::{self, HomeSet, ImportFolder};
use crate::notes::{self, Delivered, Delivery, TraceNote, TransferNote};
use crate::ops::{self, PhysOp};
use crate::queue_admin::{self, AdminRequest};
use crate::writer::Counters;

#[derive(Debug)]
pub enum Request {
    Enqueue {
        queue: String,
        message_id: String,
        meta: Option<String>,
        body: Vec<u8>,
    },
    Lease {
        queue: String,
        max: u32,
        visibility_ms: i64,
    },
    Ack {
        queue: String,
        id: i64,
        lease: Option<String>,
    },
    Defer {
        queue: String,
        id: i64,
        lease: Option<String>,
        until_ms: i64,
        error: Option<String>,
    },
    Append {
        user: String,
        folder: String,
        message_id: String,
        flags: Vec<String>,
        internal_date_ms: Option<i64>,
        body: Vec<u8>,
    },
    SetFlags {
        user: String,
        folder: String,
        uid: i64,
        change: FlagChange,
    },
    Expunge {
        user: String,
        folder: String,
        uids: Option<Vec<i64>>,
    },
    Trace {
        message_id: String,
        node: String,
        action: String,
        at_ms: Option<i64>,
        detail: Option<String>,
    },
    Transfer {
        message_id: String,
        from: String,
        to: String,
        summary: Option<String>,
        at_ms: Option<i64>,
    },
    UserPut {
        address: String,
        password_hash: String,
        alternate: Option<String>,
        sms: Option<String>,
        notify: String,
    },
    UserDelete {
        address: String,
    },
    BlockPut {
        entry: String,
    },
    BlockDelete {
        entry: String,
    },
    /// An operator's hold, release, flush or metadata change (`queue_admin`).
    QueueAdmin(AdminRequest),
    /// A new epoch after a rebuild, above `above` (the copy's epoch): see `epoch`.
    BeginEpoch {
        above: u64,
    },
    /// A new UIDVALIDITY for a folder a merge could not keep UIDs in.
    NewUidValidity {
        user: String,
        folder: String,
    },
    /// A mailbox's home moves to another store (`mailbox_move`).
    SetHome(HomeSet),
    /// One folder of another store's copy of a mailbox, merged into this store's (`mailbox_move`).
    Import(Box<ImportFolder>),
    /// An enqueue or an append with the trace hop that describes it (`notes`).
    Noted {
        inner: Box<Request>,
        trace: TraceNote,
    },
    /// A leased item moved to another queue, with its transfer log entry (`notes`).
    Archive {
        queue: String,
        id: i64,
        lease: Option<String>,
        to: String,
        /// Hidden in `to` for this long (an archive's retention).
        hold_ms: i64,
        transfer: Option<TransferNote>,
        /// Mailboxes the item's message goes into first, its body shared (`notes::Delivery`).
        delivery: Option<Box<Delivery>>,
    },
}

impl Request {
    /// Bytes of payload, to bound a batch.
    pub fn body_len(&self) -> usize {
        match self {
            Request::Enqueue { body, .. } | Request::Append { body, .. } => body.len(),
            Request::Import(imp) => imp.body_len(),
            Request::Noted { inner, .. } => inner.body_len() + 64,
            _ => 64,
        }
    }

    /// Whether the request adds data (and so is refused when the quota is reached). Requests that
    /// only change or remove what is there (lease, ack, defer, flags, expunge, deletes) may use the
    /// reserve above the quota, so a full store can always be emptied.
    pub fn grows(&self) -> bool {
        if let Request::Noted { inner, .. } = self {
            return inner.grows();
        }
        if let Request::Archive { delivery, .. } = self {
            return delivery.as_ref().is_some_and(|d| !d.mailboxes.is_empty());
        }
        matches!(
            self,
            Request::Enqueue { .. }
                | Request::Append { .. }
                | Request::Trace { .. }
                | Request::Transfer { .. }
                | Request::UserPut { .. }
                | Request::BlockPut { .. }
                | Request::SetHome(_)
                | Request::Import(_)
        )
    }
}

#[derive(Debug)]
pub enum FlagChange {
    Set(Vec<String>),
    AddRemove {
        add: Vec<String>,
        remove: Vec<String>,
    },
}

#[derive(Debug, Serialize)]
pub struct LeasedItem {
    pub id: i64,
    pub message_id: String,
    pub lease: String,
    pub meta: Option<serde_json::Value>,
    pub attempts: i64,
    #[serde(skip)]
    pub body: Vec<u8>,
}

#[derive(Debug)]
pub enum Reply {
    Enqueued {
        id: i64,
        message_id: String,
        duplicate: bool,
    },
    Leased(Vec<LeasedItem>),
    Acked,
    Deferred {
        visible_at_ms: i64,
    },
    Appended {
        uid: i64,
        uidvalidity: i64,
        message_id: String,
        duplicate: bool,
    },
    Flags(Vec<String>),
    Expunged(Vec<i64>),
    Seq(i64),
    Done {
        changed: bool,
    },
    /// A queue administration answer, as the API returns it.
    Admin(serde_json::Value),
    /// An item archived, after the deliveries it carried (see `notes`).
    Archived(Vec<Delivered>),
}

/// What one request may use while the writer's transaction is open.
pub struct Ctx<'a> {
    pub conn: &'a Connection,
    pub counters: &'a mut Counters,
    pub now_ms: i64,
    pub phys: &'a mut Vec<PhysOp>,
    /// Where this database's bodies go (see `bodies`).
    pub bodies: &'a mut Appender,
}

impl Ctx<'_> {
    /// Applies an operation here and keeps it for the mirrors.
    pub(crate) fn apply(&mut self, op: PhysOp) -> Result<u64, StoreError> {
        let rows = ops::apply(self.conn, self.bodies, &op)?;
        self.phys.push(op);
        Ok(rows)
    }
}

/// Runs one request. Bodies move into their operations (the request is spent afterwards).
pub fn execute(ctx: &mut Ctx<'_>, request: &mut Request) -> Result<Reply, StoreError> {
    if let Request::Noted { inner, trace } = request {
        return notes::execute_noted(ctx, inner, trace);
    }
    let body = match request {
        Request::Enqueue { body, .. } | Request::Append { body, .. } => std::mem::take(body),
        _ => Vec::new(),
    };
    match &*request {
        Request::Enqueue {
            queue,
            message_id,
            meta,
            body: _,
        } => {
            // Insert first: the unique (message_id, queue) index refuses a duplicate in the same
            // b-tree descent that places a new item, so a new item costs no separate lookup.
            let id = ctx.counters.next_queue_id;
            let op = PhysOp::QueueInsert {
                queue: queue.clone(),
                id,
                message_id: message_id.clone(),
                meta: meta.clone(),
                body,
                enqueued_at_ms: ctx.now_ms,
                visible_at_ms: ctx.now_ms,
            };
            if ops::apply(ctx.conn, ctx.bodies, &op)? == 0 {
                let existing: i64 = db::scalar_one(
                    ctx.conn,
                    "SELECT id FROM queue_items WHERE queue = ? AND message_id = ?",
                    params![queue, message_id],
                )?;
                return Ok(Reply::Enqueued {
                    id: existing,
                    message_id: message_id.clone(),
                    duplicate: true,
                });
            }
            ctx.counters.next_queue_id += 1;
            ctx.phys.push(op);
            Ok(Reply::Enqueued {
                id,
                message_id: message_id.clone(),
                duplicate: false,
            })
        }
        Request::Lease {
            queue,
            max,
            visibility_ms,
        } => {
            let rows = db::rows_all(
                ctx.conn,
                &format!(
                    "SELECT id, message_id, meta, attempts, {} FROM queue_items
                     WHERE queue = ? AND visible_at_ms <= ? AND held = 0
                     ORDER BY visible_at_ms, id LIMIT ?",
                    crate::bodies::COLUMNS
                ),
                params![queue, ctx.now_ms, *max as i64],
                |r| {
                    Ok((
                        r.get::<_, i64>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, Option<String>>(2)?,
                        r.get::<_, i64>(3)?,
                        Stored::from_row(r, 4)?,
                    ))
                },
            )?;
            let mut items = Vec::with_capacity(rows.len());
            for (id, message_id, meta, attempts, stored) in rows {
                let body = ctx.bodies.get(stored)?;
                let lease = uuid::Uuid::new_v4().simple().to_string();
                items.push(LeasedItem {
                    id,
                    message_id,
                    lease: lease.clone(),
                    meta: meta.and_then(|m| serde_json::from_str(&m).ok()),
                    attempts,
                    body,
                });
                ctx.apply(PhysOp::QueueLease {
                    queue: queue.clone(),
                    id,
                    lease,
                    visible_at_ms: ctx.now_ms + visibility_ms,
                })?;
            }
            Ok(Reply::Leased(items))
        }
        Request::Ack { queue, id, lease } => {
            check_lease(ctx, queue, *id, lease.as_deref())?;
            ctx.apply(PhysOp::QueueDelete {
                queue: queue.clone(),
                id: *id,
            })?;
            Ok(Reply::Acked)
        }
        Request::Defer {
            queue,
            id,
            lease,
            until_ms,
            error,
        } => {
            let attempts = check_lease(ctx, queue, *id, lease.as_deref())?;
            ctx.apply(PhysOp::QueueDefer {
                queue: queue.clone(),
                id: *id,
                visible_at_ms: *until_ms,
                attempts: attempts + 1,
                last_error: error.clone(),
            })?;
            Ok(Reply::Deferred {
                visible_at_ms: *until_ms,
            })
        }
        Request::Append {
            user,
            folder,
            message_id,
            flags,
            internal_date_ms,
            body: _,
        } => {
            let (uidvalidity, uid, duplicate) = uid_for(ctx, user, folder, message_id)?;
            if duplicate {
                return Ok(Reply::Appended {
                    uid,
                    uidvalidity,
                    message_id: message_id.clone(),
                    duplicate: true,
                });
            }
            ctx.apply(PhysOp::MessageInsert {
                user: user.clone(),
                folder: folder.clone(),
                uid,
                message_id: message_id.clone(),
                flags: join_flags(flags.iter().cloned()),
                internal_date_ms: internal_date_ms.unwrap_or(ctx.now_ms),
                body,
            })?;
            Ok(Reply::Appended {
                uid,
                uidvalidity,
                message_id: message_id.clone(),
                duplicate: false,
            })
        }
        Request::SetFlags {
            user,
            folder,
            uid,
            change,
        } => {
            let current: Option<String> = db::scalar_opt(
                ctx.conn,
                "SELECT flags FROM messages WHERE user = ? AND folder = ? AND uid = ?",
                params![user, folder, uid],
            )?;
            let current = current.ok_or_else(|| {
                StoreError::NoSuchItem(format!("{user}/{folder} has no message with UID {uid}"))
            })?;
            let mut set: Vec<String> = split_flags(&current);
            match change {
                FlagChange::Set(flags) => set = flags.clone(),
                FlagChange::AddRemove { add, remove } => {
                    set.extend(add.iter().cloned());
                    set.retain(|f| !remove.iter().any(|r| r.eq_ignore_ascii_case(f)));
                }
            }
            let flags = join_flags(set.into_iter());
            if flags != current {
                ctx.apply(PhysOp::MessageFlags {
                    user: user.clone(),
                    folder: folder.clone(),
                    uid: *uid,
                    flags: flags.clone(),
                })?;
            }
            Ok(Reply::Flags(split_flags(&flags)))
        }
        Request::Expunge { user, folder, uids } => {
            let rows = db::rows_all(
                ctx.conn,
                "SELECT uid, flags FROM messages WHERE user = ? AND folder = ?",
                params![user, folder],
                |r| Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?)),
            )?;
            let mut gone = Vec::new();
            for (uid, flags) in rows {
                let chosen = match uids {
                    Some(list) => list.contains(&uid),
                    None => split_flags(&flags).iter().any(|f| f == "\\Deleted"),
                };
                if chosen {
                    ctx.apply(PhysOp::MessageExpunge {
                        user: user.clone(),
                        folder: folder.clone(),
                        uid,
                    })?;
                    gone.push(uid);
                }
            }
            Ok(Reply::Expunged(gone))
        }
        Request::Trace {
            message_id,
            node,
            action,
            at_ms,
            detail,
        } => notes::append_trace(ctx, message_id, node, action, *at_ms, detail.clone())
            .map(Reply::Seq),
        Request::Transfer {
            message_id,
            from,
            to,
            summary,
            at_ms,
        } => notes::append_transfer(ctx, message_id, from, to, summary.clone(), *at_ms)
            .map(Reply::Seq),
        Request::UserPut {
            address,
            password_hash,
            alternate,
            sms,
            notify,
        } => {
            let changed = ctx.apply(PhysOp::UserPut {
                address: address.clone(),
                password_hash: password_hash.clone(),
                alternate: alternate.clone(),
                sms: sms.clone(),
                notify: notify.clone(),
                updated_at_ms: ctx.now_ms,
            })?;
            Ok(Reply::Done {
                changed: changed > 0,
            })
        }
        Request::UserDelete { address } => {
            let exists: Option<String> = db::scalar_opt(
                ctx.conn,
                "SELECT address FROM users WHERE address = ?",
                params![address],
            )?;
            if exists.is_none() {
                return Err(StoreError::NotFound(format!("no user {address:?}")));
            }
            ctx.apply(PhysOp::UserDelete {
                address: address.clone(),
            })?;
            Ok(Reply::Done { changed: true })
        }
        Request::BlockPut { entry } => {
            let changed = ctx.apply(PhysOp::BlockPut {
                entry: entry.clone(),
                at_ms: ctx.now_ms,
            })?;
            Ok(Reply::Done {
                changed: changed > 0,
            })
        }
        Request::BlockDelete { entry } => {
            let changed = ctx.apply(PhysOp::BlockDelete {
                entry: entry.clone(),
            })?;
            if changed == 0 {
                return Err(StoreError::NotFound(format!(
                    "{entry:?} is not on the blocklist"
                )));
            }
            Ok(Reply::Done { changed: true })
        }
        Request::QueueAdmin(admin) => queue_admin::execute(ctx, admin),
        Request::BeginEpoch { above } => crate::epoch::begin(ctx, *above),
        Request::NewUidValidity { user, folder } => {
            crate::epoch::new_uidvalidity(ctx, user, folder)
        }
        Request::SetHome(home) => mailbox_move::set_home(ctx, home),
        Request::Import(imp) => mailbox_move::import(ctx, imp),
        Request::Archive {
            queue,
            id,
            lease,
            to,
            hold_ms,
            transfer,
            delivery,
        } => notes::execute_archive(
            ctx,
            notes::ArchiveMove {
                queue,
                id: *id,
                lease: lease.as_deref(),
                to,
                hold_ms: *hold_ms,
            },
            transfer.as_ref(),
            delivery.as_deref(),
        ),
        // Handled before the body is taken, above.
        Request::Noted { .. } => Err(StoreError::Internal("a noted request nested".into())),
    }
}

/// Checks that `lease` (when given) still holds the item; returns its attempt count.
/// A lease that expired but was not taken by anyone else still counts: the work was done.
pub(crate) fn check_lease(
    ctx: &mut Ctx<'_>,
    queue: &str,
    id: i64,
    lease: Option<&str>,
) -> Result<i64, StoreError> {
    let row = db::row_opt(
        ctx.conn,
        "SELECT lease, attempts FROM queue_items WHERE queue = ? AND id = ?",
        params![queue, id],
        |r| Ok((r.get::<_, Option<String>>(0)?, r.get::<_, i64>(1)?)),
    )?
    .ok_or_else(|| StoreError::NoSuchItem(format!("queue {queue:?} has no item {id}")))?;
    let (held, attempts) = row;
    if let Some(given) = lease
        && held.as_deref() != Some(given)
    {
        return Err(StoreError::LeaseMismatch(format!(
            "item {id} of queue {queue:?} is not held by lease {given}"
        )));
    }
    Ok(attempts)
}

/// Where `message_id` goes in a folder (created if needed): `(uidvalidity, uid, duplicate)`, the
/// UID it has if the folder had it already (`duplicate`), else the folder's UIDNEXT.
pub(crate) fn uid_for(
    ctx: &mut Ctx<'_>,
    user: &str,
    folder: &str,
    message_id: &str,
) -> Result<(i64, i64, bool), StoreError> {
    let uidvalidity = ensure_mailbox(ctx, user, folder)?;
    let existing: Option<i64> = db::scalar_opt(
        ctx.conn,
        "SELECT uid FROM delivered WHERE user = ? AND folder = ? AND message_id = ?",
        params![user, folder, message_id],
    )?;
    if let Some(uid) = existing {
        return Ok((uidvalidity, uid, true));
    }
    let uid: i64 = db::scalar_one(
        ctx.conn,
        "SELECT uidnext FROM mailboxes WHERE user = ? AND folder = ?",
        params![user, folder],
    )?;
    Ok((uidvalidity, uid, false))
}

/// Creates the mailbox folder if needed; returns its UIDVALIDITY.
fn ensure_mailbox(ctx: &mut Ctx<'_>, user: &str, folder: &str) -> Result<i64, StoreError> {
    let existing: Option<i64> = db::scalar_opt(
        ctx.conn,
        "SELECT uidvalidity FROM mailboxes WHERE user = ? AND folder = ?",
        params![user, folder],
    )?;
    if let Some(v) = existing {
        return Ok(v);
    }
    // Seconds since the epoch: grows over time, so a recreated folder gets a new UIDVALIDITY (RFC 3501).
    let uidvalidity = (ctx.now_ms / 1000).clamp(1, u32::MAX as i64);
    ctx.apply(PhysOp::MailboxCreate {
        user: user.to_string(),
        folder: folder.to_string(),
        uidvalidity,
    })?;
    Ok(uidvalidity)
}
