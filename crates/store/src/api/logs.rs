//! `/v1/trace`, `/v1/transfer-log` and `/v1/catalog`: where a message went, what moved between the
//! sides, and where each message lives.

use axum::body::Body;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};
use sqlx::{Row, SqlitePool};

use super::queues::unexpected;
use super::{Params, Shared, json_body, param_i64, path, query, read_db, write, written};
use crate::error::StoreError;
use crate::requests::{Reply, Request};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Hop {
    node: String,
    action: String,
    at_ms: Option<i64>,
    detail: Option<String>,
}

pub async fn add_hop(
    State(store): State<Shared>,
    p: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, StoreError> {
    let message_id = path(p)?;
    let hop: Hop = json_body(&store, &headers, body).await?;
    if hop.node.is_empty() || hop.action.is_empty() {
        return Err(StoreError::BadRequest(
            "node and action must not be empty".into(),
        ));
    }
    let (reply, lsn, durable) = write(
        &store,
        Request::Trace {
            message_id,
            node: hop.node,
            action: hop.action,
            at_ms: hop.at_ms,
            detail: hop.detail,
        },
    )
    .await?;
    match reply {
        Reply::Seq(seq) => Ok(written(
            StatusCode::CREATED,
            json!({"seq": seq}),
            lsn,
            &durable,
        )),
        other => Err(unexpected(other)),
    }
}

pub async fn get_trace(
    State(store): State<Shared>,
    p: Result<Path<String>, PathRejection>,
    q: Result<Query<Params>, QueryRejection>,
) -> Result<Response, StoreError> {
    let message_id = path(p)?;
    let q = query(q)?;
    let db = read_db(&store, &q)?;
    let rows = sqlx::query("SELECT seq, node, action, at_ms, detail FROM trace WHERE message_id = ? ORDER BY at_ms, seq")
        .bind(&message_id)
        .fetch_all(&db)
        .await?;
    let mut hops = Vec::with_capacity(rows.len());
    for r in rows {
        hops.push(json!({
            "seq": r.try_get::<i64, _>("seq")?,
            "node": r.try_get::<String, _>("node")?,
            "action": r.try_get::<String, _>("action")?,
            "at_ms": r.try_get::<i64, _>("at_ms")?,
            "detail": r.try_get::<Option<String>, _>("detail")?,
        }));
    }
    Ok(axum::Json(json!({"message_id": message_id, "hops": hops})).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Transfer {
    message_id: String,
    from: String,
    to: String,
    summary: Option<Value>,
    at_ms: Option<i64>,
}

pub async fn add_transfer(
    State(store): State<Shared>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, StoreError> {
    let t: Transfer = json_body(&store, &headers, body).await?;
    let (reply, lsn, durable) = write(
        &store,
        Request::Transfer {
            message_id: t.message_id,
            from: t.from,
            to: t.to,
            summary: t.summary.map(|s| s.to_string()),
            at_ms: t.at_ms,
        },
    )
    .await?;
    match reply {
        Reply::Seq(seq) => Ok(written(
            StatusCode::CREATED,
            json!({"seq": seq}),
            lsn,
            &durable,
        )),
        other => Err(unexpected(other)),
    }
}

pub async fn list_transfers(
    State(store): State<Shared>,
    q: Result<Query<Params>, QueryRejection>,
) -> Result<Response, StoreError> {
    let q = query(q)?;
    let after = param_i64(&q, "after")?.unwrap_or(0);
    let limit = param_i64(&q, "limit")?.unwrap_or(1000).clamp(1, 100_000);
    let db = read_db(&store, &q)?;
    let rows = sqlx::query(
        "SELECT seq, message_id, from_side, to_side, summary, at_ms FROM transfer_log WHERE seq > ? ORDER BY seq LIMIT ?",
    )
    .bind(after)
    .bind(limit)
    .fetch_all(&db)
    .await?;
    let mut entries = Vec::with_capacity(rows.len());
    for r in rows {
        let summary: Option<String> = r.try_get("summary")?;
        entries.push(json!({
            "seq": r.try_get::<i64, _>("seq")?,
            "message_id": r.try_get::<String, _>("message_id")?,
            "from": r.try_get::<String, _>("from_side")?,
            "to": r.try_get::<String, _>("to_side")?,
            "summary": summary.and_then(|s| serde_json::from_str::<Value>(&s).ok()),
            "at_ms": r.try_get::<i64, _>("at_ms")?,
        }));
    }
    Ok(axum::Json(json!({"entries": entries})).into_response())
}

async fn locations(
    db: &SqlitePool,
    message_id: &str,
    store: &str,
    held_by: &str,
) -> Result<Vec<Value>, StoreError> {
    let rows =
        sqlx::query(
            "SELECT location, at_ms FROM catalog WHERE message_id = ?
             UNION ALL
             SELECT 'queue/' || queue || '/' || id, enqueued_at_ms FROM queue_items WHERE message_id = ?
             ORDER BY location",
        )
        .bind(message_id)
        .bind(message_id)
            .fetch_all(db)
            .await?;
    let mut out = Vec::with_capacity(rows.len());
    for r in rows {
        out.push(json!({
            "store": store,
            "held_by": held_by,
            "location": r.try_get::<String, _>("location")?,
            "at_ms": r.try_get::<i64, _>("at_ms")?,
        }));
    }
    Ok(out)
}

/// Every place this store knows `message_id` lives: in its own data and in the copies it holds.
pub async fn catalog(
    State(store): State<Shared>,
    p: Result<Path<String>, PathRejection>,
) -> Result<Response, StoreError> {
    let message_id = path(p)?;
    let me = store.ctx.node.name.clone();
    let mut all = Vec::new();
    if store.check_serving().is_ok() {
        all.extend(locations(&store.readers(), &message_id, &me, &me).await?);
    }
    for replica in store.replicas.all() {
        all.extend(locations(&replica.readers(), &message_id, &replica.origin, &me).await?);
    }
    Ok(axum::Json(json!({"message_id": message_id, "locations": all})).into_response())
}
