//! `/v1/users` and `/v1/blocklist`: the directory of users and the sender blocklist.

use axum::body::Body;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};
use sqlx::Row;
use sqlx::sqlite::SqliteRow;

use super::{Params, Shared, json_body, path, query, read_db, write, written};
use crate::error::StoreError;
use crate::requests::{Reply, Request};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UserBody {
    password_hash: String,
    alternate: Option<String>,
    sms: Option<String>,
    #[serde(default = "none")]
    notify: String,
}

fn none() -> String {
    "none".into()
}

/// An address is `local@domain`, lower-cased, with no spaces.
pub(super) fn check_address(address: &str) -> Result<String, StoreError> {
    let a = address.trim().to_ascii_lowercase();
    match a.split_once('@') {
        Some((local, domain))
            if !local.is_empty()
                && domain.contains('.')
                && a.len() <= 254
                && !a.chars().any(|c| c.is_whitespace() || c.is_control()) =>
        {
            Ok(a)
        }
        _ => Err(StoreError::BadRequest(format!(
            "{address:?} is not a mail address"
        ))),
    }
}

pub async fn put_user(
    State(store): State<Shared>,
    p: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, StoreError> {
    let address = check_address(&path(p)?)?;
    let u: UserBody = json_body(&store, &headers, body).await?;
    argon2::PasswordHash::new(&u.password_hash).map_err(|e| {
        StoreError::BadRequest(format!("password_hash must be an argon2 PHC string: {e}"))
    })?;
    if !u.password_hash.starts_with("$argon2") {
        return Err(StoreError::BadRequest(
            "password_hash must be an argon2 hash".into(),
        ));
    }
    if !["none", "sms", "alternate"].contains(&u.notify.as_str()) {
        return Err(StoreError::BadRequest(
            "notify must be \"none\", \"sms\" or \"alternate\"".into(),
        ));
    }
    if u.notify == "sms" && u.sms.is_none() {
        return Err(StoreError::BadRequest(
            "notify = \"sms\" needs an sms number".into(),
        ));
    }
    if u.notify == "alternate" && u.alternate.is_none() {
        return Err(StoreError::BadRequest(
            "notify = \"alternate\" needs an alternate address".into(),
        ));
    }
    let alternate = u.alternate.as_deref().map(check_address).transpose()?;
    let body =
        json!({"address": address, "alternate": alternate, "sms": u.sms, "notify": u.notify});
    let (_, lsn, durable) = write(
        &store,
        Request::UserPut {
            address,
            password_hash: u.password_hash,
            alternate,
            sms: u.sms,
            notify: u.notify,
        },
    )
    .await?;
    Ok(written(StatusCode::OK, body, lsn, &durable))
}

fn user_json(r: &SqliteRow) -> Result<Value, StoreError> {
    Ok(json!({
        "address": r.try_get::<String, _>("address")?,
        "password_hash": r.try_get::<String, _>("password_hash")?,
        "alternate": r.try_get::<Option<String>, _>("alternate")?,
        "sms": r.try_get::<Option<String>, _>("sms")?,
        "notify": r.try_get::<String, _>("notify")?,
        "updated_at_ms": r.try_get::<i64, _>("updated_at_ms")?,
    }))
}

pub async fn get_user(
    State(store): State<Shared>,
    p: Result<Path<String>, PathRejection>,
    q: Result<Query<Params>, QueryRejection>,
) -> Result<Response, StoreError> {
    let address = check_address(&path(p)?)?;
    let q = query(q)?;
    let db = read_db(&store, &q)?;
    let row = sqlx::query("SELECT * FROM users WHERE address = ?")
        .bind(&address)
        .fetch_optional(&db)
        .await?
        .ok_or_else(|| StoreError::NotFound(format!("no user {address:?}")))?;
    Ok(axum::Json(user_json(&row)?).into_response())
}

pub async fn list_users(
    State(store): State<Shared>,
    q: Result<Query<Params>, QueryRejection>,
) -> Result<Response, StoreError> {
    let q = query(q)?;
    let db = read_db(&store, &q)?;
    let rows = sqlx::query("SELECT * FROM users ORDER BY address")
        .fetch_all(&db)
        .await?;
    let users = rows.iter().map(user_json).collect::<Result<Vec<_>, _>>()?;
    Ok(axum::Json(json!({"users": users})).into_response())
}

pub async fn delete_user(
    State(store): State<Shared>,
    p: Result<Path<String>, PathRejection>,
) -> Result<Response, StoreError> {
    let address = check_address(&path(p)?)?;
    let (_, lsn, durable) = write(
        &store,
        Request::UserDelete {
            address: address.clone(),
        },
    )
    .await?;
    Ok(written(
        StatusCode::OK,
        json!({"deleted": address}),
        lsn,
        &durable,
    ))
}

/// A blocklist entry is a sender address or a domain.
fn check_entry(entry: &str) -> Result<String, StoreError> {
    let e = entry.trim().to_ascii_lowercase();
    if e.is_empty()
        || e.len() > 254
        || e.chars().any(|c| c.is_whitespace() || c.is_control())
        || !e.contains('.')
    {
        return Err(StoreError::BadRequest(format!(
            "{entry:?} is neither a sender address nor a domain"
        )));
    }
    Ok(e)
}

pub async fn block(
    State(store): State<Shared>,
    p: Result<Path<String>, PathRejection>,
) -> Result<Response, StoreError> {
    let entry = check_entry(&path(p)?)?;
    let (reply, lsn, durable) = write(
        &store,
        Request::BlockPut {
            entry: entry.clone(),
        },
    )
    .await?;
    let added = matches!(reply, Reply::Done { changed: true });
    let status = if added {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok(written(
        status,
        json!({"entry": entry, "added": added}),
        lsn,
        &durable,
    ))
}

pub async fn unblock(
    State(store): State<Shared>,
    p: Result<Path<String>, PathRejection>,
) -> Result<Response, StoreError> {
    let entry = check_entry(&path(p)?)?;
    let (_, lsn, durable) = write(
        &store,
        Request::BlockDelete {
            entry: entry.clone(),
        },
    )
    .await?;
    Ok(written(
        StatusCode::OK,
        json!({"removed": entry}),
        lsn,
        &durable,
    ))
}

pub async fn list_blocklist(
    State(store): State<Shared>,
    q: Result<Query<Params>, QueryRejection>,
) -> Result<Response, StoreError> {
    let q = query(q)?;
    let db = read_db(&store, &q)?;
    let rows = sqlx::query("SELECT entry, added_at_ms FROM blocklist ORDER BY entry")
        .fetch_all(&db)
        .await?;
    let mut entries = Vec::with_capacity(rows.len());
    for r in rows {
        entries.push(json!({"entry": r.try_get::<String, _>("entry")?, "added_at_ms": r.try_get::<i64, _>("added_at_ms")?}));
    }
    Ok(axum::Json(json!({"entries": entries})).into_response())
}
