//! The store's typed errors, and how each becomes an HTTP answer (always JSON).

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    NotFound(String),
    #[error("no such item: {0}")]
    NoSuchItem(String),
    #[error("this store holds no copy of store {0:?}")]
    NoReplica(String),
    #[error("lease mismatch: {0}")]
    LeaseMismatch(String),
    /// The item is held by an operator: release it first.
    #[error("{0}")]
    Held(String),
    /// A compare-and-set lost (a mailbox home's epoch moved on meanwhile).
    #[error("{0}")]
    Conflict(String),
    #[error("batch {first} would leave a gap: this copy ends at {have}")]
    LsnGap { first: u64, have: u64 },
    /// A shipment or copy from an older epoch of its origin: a standby (or a rejoined store) has
    /// continued that store's history since, so this writer must rejoin before it ships again.
    #[error("superseded: this copy is at epoch {have}, the sender at epoch {epoch}")]
    Superseded { epoch: u64, have: u64 },
    #[error("body of {size} bytes is over the limit of {limit} bytes")]
    TooLarge { size: u64, limit: u64 },
    #[error("storage is full; retry later")]
    StorageFull,
    #[error("{0}")]
    Unavailable(String),
    #[error("database: {0}")]
    Database(String),
    #[error("{0}")]
    Internal(String),
}

impl StoreError {
    pub fn code(&self) -> &'static str {
        match self {
            StoreError::BadRequest(_) => "bad_request",
            StoreError::NotFound(_) => "not_found",
            StoreError::NoSuchItem(_) => "no_such_item",
            StoreError::NoReplica(_) => "no_replica",
            StoreError::LeaseMismatch(_) => "lease_mismatch",
            StoreError::Held(_) => "held",
            StoreError::Conflict(_) => "conflict",
            StoreError::LsnGap { .. } => "lsn_gap",
            StoreError::Superseded { .. } => "superseded",
            StoreError::TooLarge { .. } => "too_large",
            StoreError::StorageFull => "storage_full",
            StoreError::Unavailable(_) => "unavailable",
            StoreError::Database(_) => "database",
            StoreError::Internal(_) => "internal",
        }
    }

    /// Errors that refuse one request without harming the others in its batch.
    pub fn is_request_error(&self) -> bool {
        matches!(
            self,
            StoreError::BadRequest(_)
                | StoreError::NotFound(_)
                | StoreError::NoSuchItem(_)
                | StoreError::LeaseMismatch(_)
                | StoreError::Held(_)
                | StoreError::Conflict(_)
        )
    }

    /// The same error again, for every request of a failed batch.
    pub fn again(&self) -> StoreError {
        match self {
            StoreError::StorageFull => StoreError::StorageFull,
            StoreError::Unavailable(m) => StoreError::Unavailable(m.clone()),
            StoreError::Database(m) => StoreError::Database(m.clone()),
            other => StoreError::Internal(other.to_string()),
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            StoreError::BadRequest(_) => StatusCode::BAD_REQUEST,
            StoreError::NotFound(_) | StoreError::NoSuchItem(_) | StoreError::NoReplica(_) => {
                StatusCode::NOT_FOUND
            }
            StoreError::LeaseMismatch(_)
            | StoreError::Held(_)
            | StoreError::Conflict(_)
            | StoreError::LsnGap { .. }
            | StoreError::Superseded { .. } => StatusCode::CONFLICT,
            StoreError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            StoreError::StorageFull => StatusCode::INSUFFICIENT_STORAGE,
            StoreError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            StoreError::Database(_) | StoreError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        // SQLITE_FULL (13): the disk, or the store's quota, is full.
        if let sqlx::Error::Database(db) = &e
            && db.code().as_deref() == Some("13")
        {
            return StoreError::StorageFull;
        }
        if let sqlx::Error::Io(io) = &e
            && io.raw_os_error() == Some(28)
        {
            return StoreError::StorageFull;
        }
        StoreError::Database(e.to_string())
    }
}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        // SQLITE_FULL: the disk, or the store's quota, is full.
        if let rusqlite::Error::SqliteFailure(f, _) = &e
            && f.code == rusqlite::ErrorCode::DiskFull
        {
            return StoreError::StorageFull;
        }
        StoreError::Database(e.to_string())
    }
}

impl IntoResponse for StoreError {
    fn into_response(self) -> Response {
        let status = self.status();
        metrics::counter!("fabric_store_errors_total", "code" => self.code()).increment(1);
        let mut body = json!({"error": self.code(), "message": self.to_string()});
        if let StoreError::LsnGap { have, .. } = &self {
            body["have"] = json!(have);
        }
        if let StoreError::Superseded { have, .. } = &self {
            body["epoch"] = json!(have);
        }
        let mut resp = (status, axum::Json(body)).into_response();
        if matches!(self, StoreError::StorageFull | StoreError::Unavailable(_)) {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
        }
        resp
    }
}
