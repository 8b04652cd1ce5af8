//! `/v1/replica/{origin}/...` and `/v1/replication`: what stores say to each other to keep copies.

use axum::body::Body;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use serde_json::json;
use tokio::io::AsyncWriteExt;

use super::{Shared, path, read_body_bytes};
use crate::error::StoreError;
use crate::ops::Shipment;

pub async fn apply(
    State(store): State<Shared>,
    p: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, StoreError> {
    let origin = path(p)?;
    let replica = store.replicas.get(&origin)?;
    let bytes = read_body_bytes(&store, &headers, body).await?;
    let shipment = Shipment::from_body(bytes)?;
    let lsn = replica.apply(shipment).await?;
    Ok(axum::Json(json!({"origin": origin, "lsn": lsn})).into_response())
}

pub async fn status(
    State(store): State<Shared>,
    p: Result<Path<String>, PathRejection>,
) -> Result<Response, StoreError> {
    let origin = path(p)?;
    let replica = store.replicas.get(&origin)?;
    let at = replica.position().await?;
    Ok(axum::Json(
        json!({"origin": origin, "lsn": at.lsn, "epoch": at.epoch, "epoch_start": at.epoch_start}),
    )
    .into_response())
}

/// Streams a consistent copy of the replica of `origin`.
pub async fn snapshot(
    State(store): State<Shared>,
    p: Result<Path<String>, PathRejection>,
) -> Result<Response, StoreError> {
    let origin = path(p)?;
    let replica = store.replicas.get(&origin)?;
    let file = store.scratch_file("snapshot-out");
    let lsn = replica.snapshot(&file).await?;
    let f = tokio::fs::File::open(&file)
        .await
        .map_err(|e| StoreError::Internal(format!("opening snapshot: {e}")))?;
    // The open handle keeps the data readable; the name can go now.
    let _ = std::fs::remove_file(&file);
    let stream = tokio_util::io::ReaderStream::new(f);
    let mut resp = (StatusCode::OK, Body::from_stream(stream)).into_response();
    resp.headers_mut().insert(
        "content-type",
        HeaderValue::from_static("application/vnd.sqlite3"),
    );
    if let Ok(v) = HeaderValue::from_str(&lsn.to_string()) {
        resp.headers_mut().insert("x-fabric-lsn", v);
    }
    Ok(resp)
}

/// Installs a full copy of `origin` sent by `origin` itself.
pub async fn install(
    State(store): State<Shared>,
    p: Result<Path<String>, PathRejection>,
    body: Body,
) -> Result<Response, StoreError> {
    let origin = path(p)?;
    let replica = store.replicas.get(&origin)?;
    let file = store.scratch_file("snapshot-in");
    let mut out = tokio::fs::File::create(&file)
        .await
        .map_err(|e| StoreError::Internal(format!("creating {}: {e}", file.display())))?;
    let mut stream = body.into_data_stream();
    while let Some(chunk) = stream.next().await {
        let chunk =
            chunk.map_err(|e| StoreError::BadRequest(format!("reading the snapshot: {e}")))?;
        out.write_all(&chunk).await.map_err(|e| {
            if e.raw_os_error() == Some(28) {
                StoreError::StorageFull
            } else {
                StoreError::Internal(e.to_string())
            }
        })?;
    }
    out.sync_all()
        .await
        .map_err(|e| StoreError::Internal(e.to_string()))?;
    drop(out);
    let result = replica.install(&file).await;
    let _ = std::fs::remove_file(&file);
    let lsn = result?;
    Ok(axum::Json(json!({"origin": origin, "lsn": lsn})).into_response())
}

pub async fn replication(State(store): State<Shared>) -> Response {
    axum::Json(store.repl.report()).into_response()
}
