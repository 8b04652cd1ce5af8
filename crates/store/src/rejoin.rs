//! Rejoining: a store that starts with its own data after a standby continued its history.
//!
//! While a store was dead, a standby may have served in its place, rebuilt from a mirror's copy and
//! writing a new epoch (see `epoch`). When the original starts again with its old disk, its mirrors
//! hold that newer epoch. Serving its own data then would undo everything the standby did (and its
//! shipments would be refused anyway), so before it serves it rejoins:
//!
//! 1. It reads its own *tail*: the batches it committed from the new epoch's first LSN on. They never
//!    reached the copy the standby started from (the writes were in flight when it died; or, in
//!    degraded mode, only its same-site mirror held them).
//! 2. It rebuilds from the newest copy (which begins yet another epoch).
//! 3. It merges the tail back as ordinary writes, under the rules of a mailbox merge: messages and
//!    queue items join by fabric message id (a repeat adds nothing), an expunge is a tombstone that
//!    wins, log lines are appended, directory changes are replayed; flag changes and queue
//!    bookkeeping (leases, deferrals, acks) of the tail are not: the new history is the later writer
//!    and the work they describe was done again there. A folder where a merged message could not keep
//!    its UID gets a new UIDVALIDITY, so IMAP clients resynchronise (RFC 3501 2.3.1.1).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::Store;
use crate::error::StoreError;
use crate::ops::PhysOp;
use crate::rebuild;
use crate::requests::{Reply, Request, split_flags};

/// How long a starting store waits for a mirror that does not answer before it serves its own data.
const ASK_MIRRORS_FOR: Duration = Duration::from_secs(5);

/// What the tail held, and what the merge did with it (logged, and counted in
/// `fabric_store_rejoin_ops_total{op,result}`).
#[derive(Debug, Default)]
pub struct Merged {
    pub counts: BTreeMap<(&'static str, &'static str), u64>,
    pub new_uidvalidity: Vec<(String, String)>,
}

impl Merged {
    fn count(&mut self, op: &'static str, result: &'static str) {
        *self.counts.entry((op, result)).or_default() += 1;
        metrics::counter!("fabric_store_rejoin_ops_total", "op" => op, "result" => result)
            .increment(1);
    }
}

/// At start-up with its own data: rejoins if a mirror holds a newer epoch of this store.
pub async fn rejoin_if_superseded(store: &Arc<Store>) -> anyhow::Result<()> {
    let me = store.ctx.node.name.clone();
    let mine = store.repl.epoch();
    let started = Instant::now();
    let (best, missing) = loop {
        let mut best: Option<(String, store_client::ReplicaPosition)> = None;
        let mut missing = Vec::new();
        for link in store.repl.links() {
            match link.client().replica_position(&me).await {
                Ok(at)
                    if at.epoch > mine
                        && best
                            .as_ref()
                            .is_none_or(|b| (at.epoch, at.lsn) > (b.1.epoch, b.1.lsn)) =>
                {
                    best = Some((link.name.clone(), at))
                }
                Ok(_) => {}
                Err(e) => missing.push(format!("{}: {e}", link.name)),
            }
        }
        if best.is_some() || missing.is_empty() || started.elapsed() > ASK_MIRRORS_FOR {
            break (best, missing);
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(250)) => {}
            _ = store.ctx.shutdown.cancelled() => anyhow::bail!("shut down while asking the mirrors"),
        }
    };
    let Some((from, at)) = best else {
        if !missing.is_empty() {
            tracing::warn!(epoch = mine, unreachable = ?missing, "starting on this store's own data without hearing from every mirror; a mirror at a newer epoch would refuse its shipments (superseded)");
        }
        return Ok(());
    };
    tracing::warn!(from = %from, epoch = mine, mirror_epoch = at.epoch, epoch_start = at.epoch_start,
        mirror_lsn = at.lsn, lsn = store.repl.lsn(),
        "a standby continued this store while it was away: rejoining (newer copy, then this store's tail merged back)");
    let tail = read_tail(store, at.epoch_start).await?;
    rebuild::rebuild(store, Some(from.clone()), false).await?;
    let merged = merge(store, tail).await?;
    metrics::counter!("fabric_store_rejoins_total").increment(1);
    let counts: BTreeMap<String, u64> = merged
        .counts
        .iter()
        .map(|((op, result), n)| (format!("{op}.{result}"), *n))
        .collect();
    tracing::info!(from = %from, epoch = store.repl.epoch(), merged = ?counts,
        new_uidvalidity = ?merged.new_uidvalidity, "rejoined: the standby's history is this store's, its own tail merged back");
    Ok(())
}

/// The batches this store committed from `from_lsn` on, and the message id of every mailbox UID they
/// name (an expunge names a UID; the merge needs the message).
pub struct Tail {
    ops: Vec<PhysOp>,
    ids: HashMap<(String, String, i64), String>,
}

async fn read_tail(store: &Store, from_lsn: u64) -> Result<Tail, StoreError> {
    let pool = store.readers();
    let rows = crate::replog::read(&pool, &store.bodies, from_lsn, i64::MAX).await?;
    let batches = rows.len();
    let ops: Vec<PhysOp> = rows.into_iter().flat_map(|(_, batch)| batch).collect();
    let mut ids = HashMap::new();
    for op in &ops {
        let (PhysOp::MessageExpunge { user, folder, uid }
        | PhysOp::MessageFlags {
            user, folder, uid, ..
        }) = op
        else {
            continue;
        };
        let id: Option<(String,)> = sqlx::query_as(
            "SELECT message_id FROM delivered WHERE user = ? AND folder = ? AND uid = ?",
        )
        .bind(user)
        .bind(folder)
        .bind(uid)
        .fetch_optional(&pool)
        .await?;
        if let Some((id,)) = id {
            ids.insert((user.clone(), folder.clone(), *uid), id);
        }
    }
    tracing::info!(from_lsn, batches, ops = ops.len(), "read this store's tail");
    Ok(Tail { ops, ids })
}

/// Replays the tail onto the new history as ordinary writes (see the module docs for the rules).
pub async fn merge(store: &Store, tail: Tail) -> Result<Merged, StoreError> {
    let mut merged = Merged::default();
    let mut moved: BTreeSet<(String, String)> = BTreeSet::new();
    for op in tail.ops {
        match op {
            PhysOp::QueueInsert {
                queue,
                message_id,
                meta,
                body,
                ..
            } => {
                let request = Request::Enqueue {
                    queue,
                    message_id,
                    meta,
                    body,
                };
                match store.writer.write(request).await?.1 {
                    Reply::Enqueued {
                        duplicate: true, ..
                    } => merged.count("enqueue", "present"),
                    _ => merged.count("enqueue", "merged"),
                }
            }
            PhysOp::MessageInsert {
                user,
                folder,
                uid,
                message_id,
                flags,
                internal_date_ms,
                body,
            } => {
                let request = Request::Append {
                    user: user.clone(),
                    folder: folder.clone(),
                    message_id,
                    flags: split_flags(&flags),
                    internal_date_ms: Some(internal_date_ms),
                    body,
                };
                match store.writer.write(request).await?.1 {
                    Reply::Appended {
                        duplicate: false,
                        uid: new_uid,
                        ..
                    } => {
                        merged.count("append", "merged");
                        if new_uid != uid {
                            moved.insert((user, folder));
                        }
                    }
                    _ => merged.count("append", "present"),
                }
            }
            PhysOp::MessageExpunge { user, folder, uid } => {
                let Some(id) = tail.ids.get(&(user.clone(), folder.clone(), uid)) else {
                    merged.count("expunge", "unknown");
                    continue;
                };
                let now: Option<(i64,)> = sqlx::query_as(
                    "SELECT uid FROM messages WHERE user = ? AND folder = ? AND message_id = ?",
                )
                .bind(&user)
                .bind(&folder)
                .bind(id)
                .fetch_optional(&store.readers())
                .await?;
                let Some((now,)) = now else {
                    merged.count("expunge", "present");
                    continue;
                };
                let request = Request::Expunge {
                    user,
                    folder,
                    uids: Some(vec![now]),
                };
                store.writer.write(request).await?;
                merged.count("expunge", "merged");
            }
            PhysOp::TraceAppend {
                message_id,
                node,
                action,
                at_ms,
                detail,
                ..
            } => {
                let request = Request::Trace {
                    message_id,
                    node,
                    action,
                    at_ms: Some(at_ms),
                    detail,
                };
                store.writer.write(request).await?;
                merged.count("trace", "merged");
            }
            PhysOp::TransferAppend {
                message_id,
                from,
                to,
                summary,
                at_ms,
                ..
            } => {
                let request = Request::Transfer {
                    message_id,
                    from,
                    to,
                    summary,
                    at_ms: Some(at_ms),
                };
                store.writer.write(request).await?;
                merged.count("transfer_log", "merged");
            }
            PhysOp::UserPut {
                address,
                password_hash,
                alternate,
                sms,
                notify,
                ..
            } => {
                let request = Request::UserPut {
                    address,
                    password_hash,
                    alternate,
                    sms,
                    notify,
                };
                store.writer.write(request).await?;
                merged.count("user", "merged");
            }
            PhysOp::UserDelete { address } => {
                store.writer.write(Request::UserDelete { address }).await?;
                merged.count("user_delete", "merged");
            }
            PhysOp::BlockPut { entry, .. } => {
                store.writer.write(Request::BlockPut { entry }).await?;
                merged.count("block", "merged");
            }
            PhysOp::BlockDelete { entry } => {
                store.writer.write(Request::BlockDelete { entry }).await?;
                merged.count("block_delete", "merged");
            }
            PhysOp::MessageFlags { .. } => merged.count("flags", "superseded"),
            PhysOp::QueueLease { .. }
            | PhysOp::QueueDefer { .. }
            | PhysOp::QueueDelete { .. }
            | PhysOp::QueueMove { .. }
            | PhysOp::QueueHeld { .. }
            | PhysOp::QueueVisible { .. }
            | PhysOp::QueueMeta { .. } => merged.count("queue_state", "superseded"),
            // A mailbox move of the tail: the operator's command failed without its answer; the
            // newer history's homes and imports stand (run the move again).
            PhysOp::HomePut { .. } | PhysOp::MailboxReset { .. } | PhysOp::DeliveredPut { .. } => {
                merged.count("mailbox_move", "superseded")
            }
            // The log's reader turns these into inserts (or delivered ids) already.
            PhysOp::MessageFromQueue { .. } => merged.count("append", "unread"),
            PhysOp::MailboxCreate { .. }
            | PhysOp::MetaSet { .. }
            | PhysOp::MailboxUidValidity { .. } => {}
        }
    }
    for (user, folder) in moved {
        let request = Request::NewUidValidity {
            user: user.clone(),
            folder: folder.clone(),
        };
        store.writer.write(request).await?;
        tracing::warn!(user = %user, folder = %folder, "merged messages could not keep their UIDs: the folder has a new UIDVALIDITY");
        merged.new_uidvalidity.push((user, folder));
    }
    Ok(merged)
}
