//! `/v1/queues/{queue}/items/{id}/{hold,release,flush,meta}` and `/v1/queues/{queue}/flush`: what an
//! operator does to a queue (`fabric queue`). Each is a write like any other: answered once mirrored.

use axum::body::Body;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use serde_json::{Map, Value};

use super::queues::{check_queue, unexpected};
use super::{Shared, json_body, parse_id, path, write, written};
use crate::error::StoreError;
use crate::queue_admin::AdminRequest;
use crate::requests::{Reply, Request};

/// Most bytes of metadata an operator may merge at once.
const MAX_META_BYTES: usize = 64 * 1024;

async fn run(store: &Shared, request: AdminRequest) -> Result<Response, StoreError> {
    let (reply, lsn, durable) = write(store, Request::QueueAdmin(request)).await?;
    match reply {
        Reply::Admin(v) => Ok(written(StatusCode::OK, v, lsn, &durable)),
        other => Err(unexpected(other)),
    }
}

fn item(p: Result<Path<(String, String)>, PathRejection>) -> Result<(String, i64), StoreError> {
    let (queue, id) = path(p)?;
    check_queue(&queue)?;
    Ok((queue, parse_id("item id", &id)?))
}

pub async fn hold(
    State(store): State<Shared>,
    p: Result<Path<(String, String)>, PathRejection>,
) -> Result<Response, StoreError> {
    let (queue, id) = item(p)?;
    run(&store, AdminRequest::Hold { queue, id }).await
}

pub async fn release(
    State(store): State<Shared>,
    p: Result<Path<(String, String)>, PathRejection>,
) -> Result<Response, StoreError> {
    let (queue, id) = item(p)?;
    run(&store, AdminRequest::Release { queue, id }).await
}

pub async fn flush_item(
    State(store): State<Shared>,
    p: Result<Path<(String, String)>, PathRejection>,
) -> Result<Response, StoreError> {
    let (queue, id) = item(p)?;
    run(&store, AdminRequest::FlushItem { queue, id }).await
}

pub async fn flush_queue(
    State(store): State<Shared>,
    p: Result<Path<String>, PathRejection>,
) -> Result<Response, StoreError> {
    let queue = path(p)?;
    check_queue(&queue)?;
    run(&store, AdminRequest::FlushQueue { queue }).await
}

pub async fn merge_meta(
    State(store): State<Shared>,
    p: Result<Path<(String, String)>, PathRejection>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, StoreError> {
    let (queue, id) = item(p)?;
    let meta: Value = json_body(&store, &headers, body).await?;
    let Value::Object(meta) = meta else {
        return Err(StoreError::BadRequest(
            "the body must be a JSON object (its keys are merged into the item's meta)".into(),
        ));
    };
    if Value::Object(meta.clone()).to_string().len() > MAX_META_BYTES {
        return Err(StoreError::BadRequest(format!(
            "metadata over {MAX_META_BYTES} bytes"
        )));
    }
    let meta: Map<String, Value> = meta;
    run(&store, AdminRequest::MergeMeta { queue, id, meta }).await
}
