//! The store's data-plane HTTP API (`docs/store-api.md`): one module per namespace, routes assembled here.
//! Every answer that is not a success is a JSON error from [`StoreError`], and is counted.

mod config;
mod homes;
mod logs;
mod mailboxes;
mod queue_admin;
mod queues;
mod replica;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::body::Body;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{MatchedPath, Path, Query, Request};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use serde::de::DeserializeOwned;
use serde_json::Value;
use sqlx::SqlitePool;

use crate::Store;
use crate::bodies::Bodies;
use crate::error::StoreError;
use crate::replication::Durable;
use crate::requests::{Reply, Request as WriteRequest};

pub type Shared = Arc<Store>;

pub fn router(store: Shared) -> Router {
    Router::new()
        .route("/v1/queues", get(queues::list_queues))
        .route(
            "/v1/queues/{queue}",
            post(queues::enqueue).get(queues::list),
        )
        .route("/v1/queues/{queue}/lease", post(queues::lease))
        .route(
            "/v1/queues/{queue}/items/{id}",
            get(queues::get_item).delete(queues::ack),
        )
        .route(
            "/v1/queues/{queue}/items/{id}/archive",
            post(queues::archive),
        )
        .route("/v1/queues/{queue}/items/{id}/defer", post(queues::defer))
        .route("/v1/queues/{queue}/flush", post(queue_admin::flush_queue))
        .route(
            "/v1/queues/{queue}/items/{id}/hold",
            post(queue_admin::hold),
        )
        .route(
            "/v1/queues/{queue}/items/{id}/release",
            post(queue_admin::release),
        )
        .route(
            "/v1/queues/{queue}/items/{id}/flush",
            post(queue_admin::flush_item),
        )
        .route(
            "/v1/queues/{queue}/items/{id}/meta",
            post(queue_admin::merge_meta),
        )
        .route("/v1/mailboxes/{user}", get(mailboxes::folders))
        .route(
            "/v1/mailboxes/{user}/{folder}",
            post(mailboxes::append).get(mailboxes::list),
        )
        .route(
            "/v1/mailboxes/{user}/{folder}/expunge",
            post(mailboxes::expunge),
        )
        .route(
            "/v1/mailboxes/{user}/{folder}/bodies",
            get(mailboxes::fetch_many),
        )
        .route("/v1/mailboxes/{user}/{folder}/export", get(homes::export))
        .route("/v1/mailboxes/{user}/{folder}/{uid}", get(mailboxes::fetch))
        .route(
            "/v1/mailboxes/{user}/{folder}/{uid}/flags",
            post(mailboxes::set_flags),
        )
        .route(
            "/v1/trace/{message_id}",
            post(logs::add_hop).get(logs::get_trace),
        )
        .route(
            "/v1/transfer-log",
            post(logs::add_transfer).get(logs::list_transfers),
        )
        .route("/v1/catalog/{message_id}", get(logs::catalog))
        .route("/v1/users", get(config::list_users))
        .route(
            "/v1/users/{address}",
            put(config::put_user)
                .get(config::get_user)
                .delete(config::delete_user),
        )
        .route("/v1/homes", get(homes::list_homes))
        .route(
            "/v1/homes/{address}",
            get(homes::get_home).put(homes::put_home),
        )
        .route("/v1/homes/{address}/import", post(homes::import))
        .route("/v1/blocklist", get(config::list_blocklist))
        .route(
            "/v1/blocklist/{entry}",
            put(config::block).delete(config::unblock),
        )
        .route("/v1/replica/{origin}/apply", post(replica::apply))
        .route("/v1/replica/{origin}/status", get(replica::status))
        .route(
            "/v1/replica/{origin}/snapshot",
            get(replica::snapshot).put(replica::install),
        )
        .route("/v1/replication", get(replica::replication))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn(count_requests))
        .with_state(store)
}

async fn not_found() -> StoreError {
    StoreError::NotFound("no such path in the store API (see docs/store-api.md)".into())
}

async fn method_not_allowed() -> Response {
    let mut resp = StoreError::BadRequest("method not allowed on this path".into()).into_response();
    *resp.status_mut() = StatusCode::METHOD_NOT_ALLOWED;
    resp
}

/// Counts every request by route and status, and times it.
async fn count_requests(req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "unmatched".to_string());
    let method = req.method().as_str().to_string();
    let started = Instant::now();
    let resp = next.run(req).await;
    let status = resp.status().as_u16().to_string();
    metrics::counter!("fabric_store_requests_total", "route" => route.clone(), "method" => method, "status" => status)
        .increment(1);
    metrics::histogram!("fabric_store_request_seconds", "route" => route)
        .record(started.elapsed().as_secs_f64());
    resp
}

// --- helpers shared by the handlers ---

/// Path parameters, with a JSON 400 instead of axum's plain-text rejection.
pub fn path<T>(p: Result<Path<T>, PathRejection>) -> Result<T, StoreError> {
    p.map(|Path(t)| t)
        .map_err(|e| StoreError::BadRequest(format!("bad path: {e}")))
}

pub type Params = HashMap<String, String>;

pub fn query(q: Result<Query<Params>, QueryRejection>) -> Result<Params, StoreError> {
    q.map(|Query(q)| q)
        .map_err(|e| StoreError::BadRequest(format!("bad query string: {e}")))
}

pub fn param_i64(q: &Params, key: &str) -> Result<Option<i64>, StoreError> {
    q.get(key)
        .map(|v| {
            v.parse::<i64>().map_err(|_| {
                StoreError::BadRequest(format!(
                    "query parameter {key:?} must be an integer, not {v:?}"
                ))
            })
        })
        .transpose()
}

pub fn parse_id(what: &str, s: &str) -> Result<i64, StoreError> {
    s.parse::<i64>().ok().filter(|n| *n > 0).ok_or_else(|| {
        StoreError::BadRequest(format!("{what} must be a positive integer, not {s:?}"))
    })
}

pub fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> Result<Option<&'a str>, StoreError> {
    headers
        .get(name)
        .map(|v| {
            v.to_str()
                .map_err(|_| StoreError::BadRequest(format!("header {name} is not text")))
        })
        .transpose()
}

/// `request` with the trace hop of an `X-Fabric-Trace` header, if there is one (see `notes`).
pub fn noted(headers: &HeaderMap, request: WriteRequest) -> Result<WriteRequest, StoreError> {
    Ok(match header_str(headers, "x-fabric-trace")? {
        Some(value) => WriteRequest::Noted {
            inner: Box::new(request),
            trace: crate::notes::TraceNote::from_header(value)?,
        },
        None => request,
    })
}

/// Reads a request body, refusing (413) anything over the store's limit before reading it all.
pub async fn read_body(
    store: &Store,
    headers: &HeaderMap,
    body: Body,
) -> Result<Vec<u8>, StoreError> {
    Ok(read_body_bytes(store, headers, body).await?.to_vec())
}

/// [`read_body`] into one shared buffer (collected with a single copy), for a caller that keeps
/// slices of it.
pub async fn read_body_bytes(
    store: &Store,
    headers: &HeaderMap,
    body: Body,
) -> Result<bytes::Bytes, StoreError> {
    let limit = store.config.max_body_bytes;
    if let Some(len) =
        header_str(headers, header::CONTENT_LENGTH.as_str())?.and_then(|v| v.parse::<u64>().ok())
        && len > limit
    {
        return Err(StoreError::TooLarge { size: len, limit });
    }
    match axum::body::to_bytes(body, limit as usize).await {
        Ok(b) => Ok(b),
        Err(e) => {
            let text = format!("{e}");
            if text.contains("length limit") {
                Err(StoreError::TooLarge {
                    size: limit + 1,
                    limit,
                })
            } else {
                Err(StoreError::BadRequest(format!("reading the body: {e}")))
            }
        }
    }
}

pub async fn json_body<T: DeserializeOwned>(
    store: &Store,
    headers: &HeaderMap,
    body: Body,
) -> Result<T, StoreError> {
    let bytes = read_body(store, headers, body).await?;
    serde_json::from_slice(&bytes)
        .map_err(|e| StoreError::BadRequest(format!("malformed JSON: {e}")))
}

/// Sends a write to the writer and waits until it is durable on a mirror too.
pub async fn write(
    store: &Store,
    request: WriteRequest,
) -> Result<(Reply, u64, Durable), StoreError> {
    store.check_serving()?;
    let (lsn, reply) = store.writer.write(request).await?;
    let durable = store
        .repl
        .wait_durable(lsn, store.config.durability_deadline)
        .await?;
    Ok((reply, lsn, durable))
}

/// A JSON answer for a write, with its durability in headers.
pub fn written(status: StatusCode, body: Value, lsn: u64, durable: &Durable) -> Response {
    let mut resp = (status, axum::Json(body)).into_response();
    let h = resp.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&lsn.to_string()) {
        h.insert("x-fabric-lsn", v);
    }
    if let Ok(v) = HeaderValue::from_str(&durable.copies.join(",")) {
        h.insert("x-fabric-copies", v);
    }
    h.insert(
        "x-fabric-degraded",
        HeaderValue::from_static(if durable.degraded { "true" } else { "false" }),
    );
    resp
}

/// The segment files of the database [`read_db`] answers (see `bodies`).
pub fn read_bodies(store: &Store, q: &Params) -> Result<Arc<Bodies>, StoreError> {
    match q.get("origin") {
        Some(origin) if origin != &store.ctx.node.name => Ok(store.replicas.get(origin)?.bodies()),
        _ => Ok(store.bodies.clone()),
    }
}

/// The database a read goes to: this store's own, or the copy it holds of `?origin=`.
pub fn read_db(store: &Store, q: &Params) -> Result<SqlitePool, StoreError> {
    match q.get("origin") {
        Some(origin) if origin != &store.ctx.node.name => Ok(store.replicas.get(origin)?.readers()),
        _ => {
            store.check_serving()?;
            Ok(store.readers())
        }
    }
}
