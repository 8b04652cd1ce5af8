//! Notes that ride along with a write, so one mirrored write does what took several:
//! - a trace hop written with the enqueue or append it describes (`Request::Noted`);
//! - a queue item archived (moved to another queue, its body left where it lies) together with the
//!   transfer log entry of its move (`Request::Archive`), and, when its recipients' mailboxes are on
//!   the same store, with their deliveries, which share the item's body (`Delivery`).
//!
//! A message's trip through the fabric then costs the stores one write per hop instead of three or
//! four (enqueue + trace; append + trace; transfer log + archive copy + ack), and the archive copy no
//! longer carries the body a second time. The separate `Trace` and `Transfer` requests remain for
//! everything else.

use rusqlite::params;
use serde::{Deserialize, Serialize};

use crate::db;
use crate::error::StoreError;
use crate::ops::PhysOp;
use crate::requests::{self, Ctx, Reply, Request};

/// A trace hop to write with a request (`X-Fabric-Trace` on an enqueue or an append).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TraceNote {
    pub node: String,
    pub action: String,
    #[serde(default)]
    pub detail: Option<String>,
}

impl TraceNote {
    /// Parses the `X-Fabric-Trace` header: a JSON object with `node`, `action` and `detail`.
    pub fn from_header(value: &str) -> Result<TraceNote, StoreError> {
        let note: TraceNote = serde_json::from_str(value).map_err(|e| {
            StoreError::BadRequest(format!(
                "X-Fabric-Trace must be a JSON object with node, action and detail: {e}"
            ))
        })?;
        if note.node.is_empty() || note.action.is_empty() {
            return Err(StoreError::BadRequest(
                "X-Fabric-Trace needs a node and an action".into(),
            ));
        }
        Ok(note)
    }
}

/// A transfer log entry to write with an archive move.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TransferNote {
    pub from: String,
    pub to: String,
    #[serde(default)]
    pub summary: Option<serde_json::Value>,
}

/// Appends hop `seq + 1` of `message_id`'s trace.
pub fn append_trace(
    ctx: &mut Ctx<'_>,
    message_id: &str,
    node: &str,
    action: &str,
    at_ms: Option<i64>,
    detail: Option<String>,
) -> Result<i64, StoreError> {
    let seq: i64 = db::scalar_one(
        ctx.conn,
        "SELECT COALESCE(MAX(seq), 0) + 1 FROM trace WHERE message_id = ?",
        params![message_id],
    )?;
    ctx.apply(PhysOp::TraceAppend {
        message_id: message_id.to_string(),
        seq,
        node: node.to_string(),
        action: action.to_string(),
        at_ms: at_ms.unwrap_or(ctx.now_ms),
        detail,
    })?;
    Ok(seq)
}

/// Appends an entry to the transfer log.
pub fn append_transfer(
    ctx: &mut Ctx<'_>,
    message_id: &str,
    from: &str,
    to: &str,
    summary: Option<String>,
    at_ms: Option<i64>,
) -> Result<i64, StoreError> {
    let seq = ctx.counters.next_transfer_seq;
    ctx.counters.next_transfer_seq += 1;
    ctx.apply(PhysOp::TransferAppend {
        seq,
        message_id: message_id.to_string(),
        from: from.to_string(),
        to: to.to_string(),
        summary,
        at_ms: at_ms.unwrap_or(ctx.now_ms),
    })?;
    Ok(seq)
}

/// Runs `inner` (an enqueue or an append), then writes its trace hop, unless the write was a
/// duplicate (its first delivery wrote the hop). An append's hop says where the message went:
/// `USER FOLDER uid N`, then the note's detail.
pub fn execute_noted(
    ctx: &mut Ctx<'_>,
    inner: &mut Request,
    trace: &TraceNote,
) -> Result<Reply, StoreError> {
    let (user, folder) = match &*inner {
        Request::Append { user, folder, .. } => (Some(user.clone()), Some(folder.clone())),
        _ => (None, None),
    };
    let reply = requests::execute(ctx, inner)?;
    let (message_id, detail) = match &reply {
        Reply::Enqueued {
            message_id,
            duplicate: false,
            ..
        } => (message_id.clone(), trace.detail.clone()),
        Reply::Appended {
            message_id,
            uid,
            duplicate: false,
            ..
        } => {
            let (user, folder) = (user.unwrap_or_default(), folder.unwrap_or_default());
            let detail = placed_detail(&user, &folder, *uid, trace);
            (message_id.clone(), Some(detail))
        }
        _ => return Ok(reply),
    };
    append_trace(ctx, &message_id, &trace.node, &trace.action, None, detail)?;
    Ok(reply)
}

/// A delivery's hop detail: where the message went (`USER FOLDER uid N`), then the note's detail.
fn placed_detail(user: &str, folder: &str, uid: i64, trace: &TraceNote) -> String {
    let place = format!("{user} {folder} uid {uid}");
    match &trace.detail {
        Some(d) => format!("{place} {d}"),
        None => place,
    }
}

/// Mailboxes of this store that an archived item's message goes into before it moves: what a
/// transfer server's append of the body did in a write of its own, now done with the archive move,
/// the body shared with the item rather than sent and stored again.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Delivery {
    pub mailboxes: Vec<MailboxRef>,
    /// The hop each delivery writes to the trace: `USER FOLDER uid N` before its detail.
    pub trace: Option<TraceNote>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MailboxRef {
    pub user: String,
    pub folder: String,
}

/// One delivery of an archive request (`duplicate`: the folder had the message already).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Delivered {
    pub user: String,
    pub folder: String,
    pub uid: i64,
    pub uidvalidity: i64,
    pub duplicate: bool,
}

/// Which item moves where: leased item `id` of `queue` to queue `to`, hidden there for `hold_ms`.
pub struct ArchiveMove<'a> {
    pub queue: &'a str,
    pub id: i64,
    pub lease: Option<&'a str>,
    pub to: &'a str,
    pub hold_ms: i64,
}

/// Delivers the item's message into `delivery`'s mailboxes (each at most once: a folder that
/// already has the fabric message id keeps its copy), then moves the item to queue `to` (its body
/// stays where it lies), released, enqueued there now and hidden for `hold_ms` (an archive's
/// retention: its purge then leases only what is due), and logs the transfer. If `to` already holds
/// the message (an earlier attempt got that far), the item is only removed.
pub fn execute_archive(
    ctx: &mut Ctx<'_>,
    m: ArchiveMove<'_>,
    transfer: Option<&TransferNote>,
    delivery: Option<&Delivery>,
) -> Result<Reply, StoreError> {
    let ArchiveMove {
        queue,
        id,
        lease,
        to,
        hold_ms,
    } = m;
    requests::check_lease(ctx, queue, id, lease)?;
    let message_id: String = db::scalar_one(
        ctx.conn,
        "SELECT message_id FROM queue_items WHERE id = ?",
        params![id],
    )?;
    let mut delivered = Vec::new();
    for mailbox in delivery.map(|d| d.mailboxes.as_slice()).unwrap_or_default() {
        let trace = delivery.and_then(|d| d.trace.as_ref());
        delivered.push(deliver_shared(ctx, queue, id, &message_id, mailbox, trace)?);
    }
    let already: Option<i64> = db::scalar_opt(
        ctx.conn,
        "SELECT id FROM queue_items WHERE queue = ? AND message_id = ?",
        params![to, message_id],
    )?;
    if already.is_some() {
        ctx.apply(PhysOp::QueueDelete {
            queue: queue.to_string(),
            id,
        })?;
    } else {
        ctx.apply(PhysOp::QueueMove {
            id,
            from: queue.to_string(),
            to: to.to_string(),
            enqueued_at_ms: ctx.now_ms,
            visible_at_ms: ctx.now_ms.saturating_add(hold_ms.max(0)),
        })?;
    }
    if let Some(t) = transfer {
        let summary = t.summary.as_ref().map(|s| s.to_string());
        append_transfer(ctx, &message_id, &t.from, &t.to, summary, None)?;
    }
    Ok(Reply::Archived(delivered))
}

/// Puts queue item `id`'s message into one mailbox folder, sharing the item's body, and writes the
/// delivery's trace hop; a folder that has the message already is left as it is.
fn deliver_shared(
    ctx: &mut Ctx<'_>,
    queue: &str,
    id: i64,
    message_id: &str,
    to: &MailboxRef,
    trace: Option<&TraceNote>,
) -> Result<Delivered, StoreError> {
    let (uidvalidity, uid, duplicate) = requests::uid_for(ctx, &to.user, &to.folder, message_id)?;
    let delivered = Delivered {
        user: to.user.clone(),
        folder: to.folder.clone(),
        uid,
        uidvalidity,
        duplicate,
    };
    if duplicate {
        return Ok(delivered);
    }
    ctx.apply(PhysOp::MessageFromQueue {
        user: to.user.clone(),
        folder: to.folder.clone(),
        uid: delivered.uid,
        message_id: message_id.to_string(),
        flags: String::new(),
        internal_date_ms: ctx.now_ms,
        queue: queue.to_string(),
        id,
    })?;
    if let Some(t) = trace {
        let detail = placed_detail(&to.user, &to.folder, delivered.uid, t);
        append_trace(ctx, message_id, &t.node, &t.action, None, Some(detail))?;
    }
    Ok(delivered)
}

#[cfg(test)]
mod tests;
