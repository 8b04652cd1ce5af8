//! `/v1/queues`: enqueue, lease with a visibility timeout, ack, defer, list.

use axum::body::Body;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use serde_json::{Value, json};
use sqlx::Row;

use super::{
    Params, Shared, header_str, json_body, noted, param_i64, parse_id, path, query, read_bodies,
    read_body, read_db, write, written,
};
use crate::bodies::{COLUMNS, Stored};
use crate::error::StoreError;
use crate::requests::{Reply, Request};
use crate::util::now_ms;

/// Queue names are short identifiers an operator can read: letters, digits, `-`, `_`, `.`.
pub fn check_queue(name: &str) -> Result<(), StoreError> {
    if name.is_empty()
        || name.len() > 64
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
    {
        return Err(StoreError::BadRequest(format!(
            "queue name {name:?} must be 1-64 letters, digits, '-', '_' or '.'"
        )));
    }
    Ok(())
}

/// A message id is printable ASCII without spaces, at most 255 bytes.
pub fn message_id_or_new(headers: &HeaderMap) -> Result<String, StoreError> {
    match header_str(headers, "x-fabric-message-id")? {
        Some(id)
            if !id.is_empty() && id.len() <= 255 && id.bytes().all(|b| b.is_ascii_graphic()) =>
        {
            Ok(id.to_string())
        }
        Some(id) => Err(StoreError::BadRequest(format!(
            "X-Fabric-Message-Id {id:?} must be 1-255 printable ASCII characters without spaces"
        ))),
        None => Ok(format!("mf-{}", uuid::Uuid::now_v7().simple())),
    }
}

pub async fn enqueue(
    State(store): State<Shared>,
    p: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, StoreError> {
    let queue = path(p)?;
    check_queue(&queue)?;
    let message_id = message_id_or_new(&headers)?;
    let meta = match header_str(&headers, "x-fabric-meta")? {
        Some(m) => {
            let v: Value = serde_json::from_str(m)
                .map_err(|e| StoreError::BadRequest(format!("X-Fabric-Meta is not JSON: {e}")))?;
            if !v.is_object() {
                return Err(StoreError::BadRequest(
                    "X-Fabric-Meta must be a JSON object".into(),
                ));
            }
            Some(v.to_string())
        }
        None => None,
    };
    let body = read_body(&store, &headers, body).await?;
    let request = noted(
        &headers,
        Request::Enqueue {
            queue,
            message_id,
            meta,
            body,
        },
    )?;
    let (reply, lsn, durable) = write(&store, request).await?;
    match reply {
        Reply::Enqueued {
            id,
            message_id,
            duplicate,
        } => {
            let status = if duplicate {
                StatusCode::OK
            } else {
                StatusCode::CREATED
            };
            Ok(written(
                status,
                json!({"id": id, "message_id": message_id, "duplicate": duplicate}),
                lsn,
                &durable,
            ))
        }
        other => Err(unexpected(other)),
    }
}

pub async fn list_queues(
    State(store): State<Shared>,
    q: Result<Query<Params>, QueryRejection>,
) -> Result<Response, StoreError> {
    let q = query(q)?;
    let db = read_db(&store, &q)?;
    let rows = sqlx::query(
        "SELECT queue, COUNT(*) AS items, SUM(lease IS NOT NULL AND visible_at_ms > ?) AS leased,
                SUM(visible_at_ms <= ? AND held = 0) AS ready, SUM(held) AS held
         FROM queue_items GROUP BY queue ORDER BY queue",
    )
    .bind(now_ms())
    .bind(now_ms())
    .fetch_all(&db)
    .await?;
    let mut queues = Vec::new();
    for r in rows {
        queues.push(json!({
            "name": r.try_get::<String, _>("queue")?,
            "items": r.try_get::<i64, _>("items")?,
            "leased": r.try_get::<Option<i64>, _>("leased")?.unwrap_or(0),
            "ready": r.try_get::<Option<i64>, _>("ready")?.unwrap_or(0),
            "held": r.try_get::<Option<i64>, _>("held")?.unwrap_or(0),
        }));
    }
    Ok(axum::Json(json!({ "queues": queues })).into_response())
}

pub async fn list(
    State(store): State<Shared>,
    p: Result<Path<String>, PathRejection>,
    q: Result<Query<Params>, QueryRejection>,
) -> Result<Response, StoreError> {
    let queue = path(p)?;
    let q = query(q)?;
    let limit = param_i64(&q, "limit")?.unwrap_or(1000).clamp(1, 100_000);
    let db = read_db(&store, &q)?;
    let now = now_ms();
    let rows = sqlx::query(
        "SELECT id, message_id, COALESCE(body_len, length(body)) AS size, meta, enqueued_at_ms, visible_at_ms, attempts,
                lease IS NOT NULL AND visible_at_ms > ? AS leased, last_error, held
         FROM queue_items WHERE queue = ? ORDER BY id LIMIT ?",
    )
    .bind(now)
    .bind(&queue)
    .bind(limit)
    .fetch_all(&db)
    .await?;
    let mut items = Vec::with_capacity(rows.len());
    for r in rows {
        let meta: Option<String> = r.try_get("meta")?;
        items.push(json!({
            "id": r.try_get::<i64, _>("id")?,
            "message_id": r.try_get::<String, _>("message_id")?,
            "size": r.try_get::<i64, _>("size")?,
            "meta": meta.and_then(|m| serde_json::from_str::<Value>(&m).ok()),
            "enqueued_at_ms": r.try_get::<i64, _>("enqueued_at_ms")?,
            "visible_at_ms": r.try_get::<i64, _>("visible_at_ms")?,
            "attempts": r.try_get::<i64, _>("attempts")?,
            "leased": r.try_get::<bool, _>("leased")?,
            "last_error": r.try_get::<Option<String>, _>("last_error")?,
            "held": r.try_get::<i64, _>("held")? != 0,
        }));
    }
    Ok(axum::Json(json!({ "queue": queue, "items": items })).into_response())
}

pub async fn get_item(
    State(store): State<Shared>,
    p: Result<Path<(String, String)>, PathRejection>,
    q: Result<Query<Params>, QueryRejection>,
) -> Result<Response, StoreError> {
    let (queue, id) = path(p)?;
    let id = parse_id("item id", &id)?;
    let q = query(q)?;
    let db = read_db(&store, &q)?;
    let bodies = read_bodies(&store, &q)?;
    let _pin = bodies.pin().await;
    let row = sqlx::query(&format!(
        "SELECT message_id, meta, {COLUMNS} FROM queue_items WHERE queue = ? AND id = ?"
    ))
    .bind(&queue)
    .bind(id)
    .fetch_optional(&db)
    .await?
    .ok_or_else(|| StoreError::NoSuchItem(format!("queue {queue:?} has no item {id}")))?;
    let body = bodies.read(Stored::from_sqlx(&row)?)?;
    let mut resp = (StatusCode::OK, body).into_response();
    let h = resp.headers_mut();
    h.insert(
        "content-type",
        HeaderValue::from_static("application/octet-stream"),
    );
    if let Ok(v) = HeaderValue::from_str(&row.try_get::<String, _>("message_id")?) {
        h.insert("x-fabric-message-id", v);
    }
    if let Some(meta) = row.try_get::<Option<String>, _>("meta")?
        && let Ok(v) = HeaderValue::from_str(&meta)
    {
        h.insert("x-fabric-meta", v);
    }
    Ok(resp)
}

pub async fn lease(
    State(store): State<Shared>,
    p: Result<Path<String>, PathRejection>,
    q: Result<Query<Params>, QueryRejection>,
) -> Result<Response, StoreError> {
    let queue = path(p)?;
    check_queue(&queue)?;
    let q = query(q)?;
    let max = param_i64(&q, "max")?.unwrap_or(1);
    if max < 1 || max > store.config.max_lease as i64 {
        return Err(StoreError::BadRequest(format!(
            "max must be between 1 and {}",
            store.config.max_lease
        )));
    }
    let visibility_ms = param_i64(&q, "visibility_ms")?.unwrap_or(30_000);
    if !(1..=7 * 24 * 3600 * 1000).contains(&visibility_ms) {
        return Err(StoreError::BadRequest(
            "visibility_ms must be between 1 ms and 7 days".into(),
        ));
    }
    let (reply, lsn, durable) = write(
        &store,
        Request::Lease {
            queue,
            max: max as u32,
            visibility_ms,
        },
    )
    .await?;
    match reply {
        Reply::Leased(items) => {
            let items: Vec<Value> = items
                .into_iter()
                .map(|i| {
                    json!({
                        "id": i.id,
                        "message_id": i.message_id,
                        "lease": i.lease,
                        "meta": i.meta,
                        "attempts": i.attempts,
                        "body_b64": base64::engine::general_purpose::STANDARD.encode(&i.body),
                    })
                })
                .collect();
            Ok(written(
                StatusCode::OK,
                json!({ "items": items }),
                lsn,
                &durable,
            ))
        }
        other => Err(unexpected(other)),
    }
}

pub async fn ack(
    State(store): State<Shared>,
    p: Result<Path<(String, String)>, PathRejection>,
    q: Result<Query<Params>, QueryRejection>,
) -> Result<Response, StoreError> {
    let (queue, id) = path(p)?;
    let id = parse_id("item id", &id)?;
    let q = query(q)?;
    let (_, lsn, durable) = write(
        &store,
        Request::Ack {
            queue,
            id,
            lease: q.get("lease").cloned(),
        },
    )
    .await?;
    Ok(written(
        StatusCode::OK,
        json!({"acked": true}),
        lsn,
        &durable,
    ))
}

/// What `POST /v1/queues/{queue}/items/{id}/archive` takes: the queue the item moves to, and the
/// transfer log entry of its move.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArchiveBody {
    to: String,
    /// Milliseconds the item stays hidden in `to` (an archive's retention); 0 if absent.
    #[serde(default)]
    hold_ms: i64,
    #[serde(default)]
    transfer: Option<crate::notes::TransferNote>,
    /// Mailboxes of this store the item's message goes into first, its body shared.
    #[serde(default)]
    delivery: Option<crate::notes::Delivery>,
}

/// Moves a leased item to another queue (`?lease=` as for an ack) and logs its transfer, in one
/// write; the body is not sent again (see `notes`).
pub async fn archive(
    State(store): State<Shared>,
    p: Result<Path<(String, String)>, PathRejection>,
    q: Result<Query<Params>, QueryRejection>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, StoreError> {
    let (queue, id) = path(p)?;
    let id = parse_id("item id", &id)?;
    let q = query(q)?;
    let archive: ArchiveBody = json_body(&store, &headers, body).await?;
    check_queue(&archive.to)?;
    if archive.hold_ms < 0 {
        return Err(StoreError::BadRequest(
            "hold_ms must not be negative".into(),
        ));
    }
    if archive.to == queue {
        return Err(StoreError::BadRequest(format!(
            "item {id} is already in queue {queue:?}"
        )));
    }
    if let Some(d) = &archive.delivery {
        if d.mailboxes.len() > MAX_DELIVERIES {
            return Err(StoreError::BadRequest(format!(
                "at most {MAX_DELIVERIES} mailboxes per delivery"
            )));
        }
        for m in &d.mailboxes {
            super::mailboxes::check_name("user", &m.user)?;
            super::mailboxes::check_name("folder", &m.folder)?;
        }
    }
    let (reply, lsn, durable) = write(
        &store,
        Request::Archive {
            queue,
            id,
            lease: q.get("lease").cloned(),
            to: archive.to.clone(),
            hold_ms: archive.hold_ms,
            transfer: archive.transfer,
            delivery: archive.delivery.map(Box::new),
        },
    )
    .await?;
    let Reply::Archived(delivered) = reply else {
        return Err(unexpected(reply));
    };
    Ok(written(
        StatusCode::OK,
        json!({"archived": true, "to": archive.to, "delivered": delivered}),
        lsn,
        &durable,
    ))
}

/// Most mailboxes one archive request delivers to (a message's recipients are fewer: SMTP's limit).
const MAX_DELIVERIES: usize = 1000;

pub async fn defer(
    State(store): State<Shared>,
    p: Result<Path<(String, String)>, PathRejection>,
    q: Result<Query<Params>, QueryRejection>,
) -> Result<Response, StoreError> {
    let (queue, id) = path(p)?;
    let id = parse_id("item id", &id)?;
    let q = query(q)?;
    let until_ms = match (param_i64(&q, "until_ms")?, param_i64(&q, "delay_ms")?) {
        (Some(until), None) => until,
        (None, Some(delay)) if delay >= 0 => now_ms() + delay,
        (None, None) => now_ms(),
        _ => {
            return Err(StoreError::BadRequest(
                "give either until_ms or a non-negative delay_ms".into(),
            ));
        }
    };
    let (reply, lsn, durable) = write(
        &store,
        Request::Defer {
            queue,
            id,
            lease: q.get("lease").cloned(),
            until_ms,
            error: q.get("error").cloned(),
        },
    )
    .await?;
    match reply {
        Reply::Deferred { visible_at_ms } => Ok(written(
            StatusCode::OK,
            json!({ "visible_at_ms": visible_at_ms }),
            lsn,
            &durable,
        )),
        other => Err(unexpected(other)),
    }
}

pub fn unexpected(reply: Reply) -> StoreError {
    StoreError::Internal(format!("unexpected reply from the writer: {reply:?}"))
}
