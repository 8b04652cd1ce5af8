//! Queue administration for operators (`fabric queue`, like Postfix's postsuper): hold an item so it
//! is never leased, release it, flush an item or a whole queue (visible now), and merge keys into an
//! item's metadata. Each request becomes physical operations (`QueueHeld`, `QueueVisible`,
//! `QueueMeta`) that set values, so a mirror replaying them twice ends up the same.
//!
//! A leased item keeps its lease: a hold takes effect when the lease ends (the item is then not
//! leased again), and flush or a metadata change never shortens it.

use rusqlite::params;
use serde_json::{Map, Value, json};

use crate::db;
use crate::error::StoreError;
use crate::ops::PhysOp;
use crate::requests::{Ctx, Reply};

#[derive(Debug)]
pub enum AdminRequest {
    Hold {
        queue: String,
        id: i64,
    },
    Release {
        queue: String,
        id: i64,
    },
    FlushItem {
        queue: String,
        id: i64,
    },
    FlushQueue {
        queue: String,
    },
    MergeMeta {
        queue: String,
        id: i64,
        meta: Map<String, Value>,
    },
}

/// What the writer needs to know of an item before changing it.
struct ItemState {
    held: bool,
    leased: bool,
    visible_at_ms: i64,
    meta: Option<String>,
}

fn item(ctx: &Ctx<'_>, queue: &str, id: i64) -> Result<ItemState, StoreError> {
    db::row_opt(
        ctx.conn,
        "SELECT held, lease IS NOT NULL AND visible_at_ms > ?, visible_at_ms, meta
         FROM queue_items WHERE queue = ? AND id = ?",
        params![ctx.now_ms, queue, id],
        |r| {
            Ok(ItemState {
                held: r.get::<_, i64>(0)? != 0,
                leased: r.get::<_, bool>(1)?,
                visible_at_ms: r.get(2)?,
                meta: r.get(3)?,
            })
        },
    )?
    .ok_or_else(|| StoreError::NoSuchItem(format!("queue {queue:?} has no item {id}")))
}

/// Makes a waiting item visible now (a leased one keeps its lease); answers when it is visible.
fn make_visible(
    ctx: &mut Ctx<'_>,
    queue: &str,
    id: i64,
    state: &ItemState,
) -> Result<i64, StoreError> {
    if state.leased || state.visible_at_ms <= ctx.now_ms {
        return Ok(state.visible_at_ms);
    }
    let now = ctx.now_ms;
    ctx.apply(PhysOp::QueueVisible {
        queue: queue.to_string(),
        id,
        visible_at_ms: now,
    })?;
    Ok(now)
}

fn set_held(ctx: &mut Ctx<'_>, queue: &str, id: i64, held: bool) -> Result<(), StoreError> {
    ctx.apply(PhysOp::QueueHeld {
        queue: queue.to_string(),
        id,
        held,
    })?;
    Ok(())
}

pub fn execute(ctx: &mut Ctx<'_>, request: &AdminRequest) -> Result<Reply, StoreError> {
    match request {
        AdminRequest::Hold { queue, id } => {
            let state = item(ctx, queue, *id)?;
            if !state.held {
                set_held(ctx, queue, *id, true)?;
            }
            Ok(Reply::Admin(
                json!({"id": id, "held": true, "leased": state.leased}),
            ))
        }
        AdminRequest::Release { queue, id } => {
            let state = item(ctx, queue, *id)?;
            if state.held {
                set_held(ctx, queue, *id, false)?;
            }
            let visible_at_ms = make_visible(ctx, queue, *id, &state)?;
            Ok(Reply::Admin(json!({
                "id": id, "held": false, "leased": state.leased, "visible_at_ms": visible_at_ms
            })))
        }
        AdminRequest::FlushItem { queue, id } => {
            let state = item(ctx, queue, *id)?;
            if state.held {
                return Err(StoreError::Held(format!(
                    "item {id} of queue {queue:?} is held: release it first"
                )));
            }
            let visible_at_ms = make_visible(ctx, queue, *id, &state)?;
            Ok(Reply::Admin(json!({
                "id": id, "held": false, "leased": state.leased, "visible_at_ms": visible_at_ms
            })))
        }
        AdminRequest::FlushQueue { queue } => {
            // Waiting items: not held, not leased (a lease clears only on defer), due later.
            let ids: Vec<i64> = db::rows_all(
                ctx.conn,
                "SELECT id FROM queue_items
                 WHERE queue = ? AND held = 0 AND lease IS NULL AND visible_at_ms > ? ORDER BY id",
                params![queue, ctx.now_ms],
                |r| r.get(0),
            )?;
            let now = ctx.now_ms;
            for id in &ids {
                ctx.apply(PhysOp::QueueVisible {
                    queue: queue.clone(),
                    id: *id,
                    visible_at_ms: now,
                })?;
            }
            Ok(Reply::Admin(json!({"flushed": ids.len()})))
        }
        AdminRequest::MergeMeta { queue, id, meta } => {
            let state = item(ctx, queue, *id)?;
            let mut merged = state
                .meta
                .as_deref()
                .and_then(|m| serde_json::from_str::<Value>(m).ok())
                .and_then(|v| match v {
                    Value::Object(o) => Some(o),
                    _ => None,
                })
                .unwrap_or_default();
            for (k, v) in meta {
                merged.insert(k.clone(), v.clone());
            }
            let merged = Value::Object(merged);
            ctx.apply(PhysOp::QueueMeta {
                queue: queue.clone(),
                id: *id,
                meta: Some(merged.to_string()),
            })?;
            let visible_at_ms = if state.held {
                state.visible_at_ms
            } else {
                make_visible(ctx, queue, *id, &state)?
            };
            Ok(Reply::Admin(json!({
                "id": id, "meta": merged, "held": state.held, "visible_at_ms": visible_at_ms
            })))
        }
    }
}

#[cfg(test)]
#[path = "queue_admin_tests.rs"]
mod tests;
