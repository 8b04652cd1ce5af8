//! `/v1/mailboxes`: append (exactly once per message id), list with UIDs and UIDVALIDITY, fetch (one or
//! several messages), flags,
//! expunge.

use axum::body::Body;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;
use sqlx::Row;

use super::queues::{message_id_or_new, unexpected};
use super::{
    Params, Shared, header_str, json_body, noted, param_i64, parse_id, path, query, read_bodies,
    read_body, read_db, write, written,
};
use crate::bodies::{COLUMNS, Stored};
use crate::error::StoreError;
use crate::requests::{FlagChange, Reply, Request, split_flags};

pub(crate) fn check_name(what: &str, s: &str) -> Result<(), StoreError> {
    if s.is_empty() || s.len() > 255 || s.chars().any(|c| c.is_control()) {
        return Err(StoreError::BadRequest(format!(
            "{what} {s:?} must be 1-255 characters without control characters"
        )));
    }
    Ok(())
}

fn check_flags(flags: &[String]) -> Result<(), StoreError> {
    for f in flags {
        if f.is_empty() || f.len() > 64 || f.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(StoreError::BadRequest(format!(
                "flag {f:?} is not a valid IMAP flag"
            )));
        }
    }
    Ok(())
}

pub async fn append(
    State(store): State<Shared>,
    p: Result<Path<(String, String)>, PathRejection>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, StoreError> {
    let (user, folder) = path(p)?;
    check_name("user", &user)?;
    check_name("folder", &folder)?;
    let message_id = message_id_or_new(&headers)?;
    let flags = header_str(&headers, "x-fabric-flags")?
        .map(split_flags)
        .unwrap_or_default();
    check_flags(&flags)?;
    let internal_date_ms = header_str(&headers, "x-fabric-internal-date-ms")?
        .map(|v| {
            v.parse::<i64>().map_err(|_| {
                StoreError::BadRequest("X-Fabric-Internal-Date-Ms must be an integer".into())
            })
        })
        .transpose()?;
    let body = read_body(&store, &headers, body).await?;
    let request = noted(
        &headers,
        Request::Append {
            user,
            folder,
            message_id,
            flags,
            internal_date_ms,
            body,
        },
    )?;
    let (reply, lsn, durable) = write(&store, request).await?;
    match reply {
        Reply::Appended {
            uid,
            uidvalidity,
            message_id,
            duplicate,
        } => Ok(written(
            if duplicate {
                StatusCode::OK
            } else {
                StatusCode::CREATED
            },
            json!({"uid": uid, "uidvalidity": uidvalidity, "message_id": message_id, "duplicate": duplicate}),
            lsn,
            &durable,
        )),
        other => Err(unexpected(other)),
    }
}

pub async fn folders(
    State(store): State<Shared>,
    p: Result<Path<String>, PathRejection>,
    q: Result<Query<Params>, QueryRejection>,
) -> Result<Response, StoreError> {
    let user = path(p)?;
    let q = query(q)?;
    let db = read_db(&store, &q)?;
    let rows = sqlx::query(
        "SELECT m.folder, m.uidvalidity, m.uidnext,
                (SELECT COUNT(*) FROM messages x WHERE x.user = m.user AND x.folder = m.folder) AS messages,
                (SELECT COUNT(*) FROM messages x WHERE x.user = m.user AND x.folder = m.folder
                   AND (' ' || x.flags || ' ') NOT LIKE '% \\Seen %') AS unseen
         FROM mailboxes m WHERE m.user = ? ORDER BY m.folder",
    )
    .bind(&user)
    .fetch_all(&db)
    .await?;
    let mut folders = Vec::new();
    for r in rows {
        folders.push(json!({
            "name": r.try_get::<String, _>("folder")?,
            "uidvalidity": r.try_get::<i64, _>("uidvalidity")?,
            "uidnext": r.try_get::<i64, _>("uidnext")?,
            "messages": r.try_get::<i64, _>("messages")?,
            "unseen": r.try_get::<i64, _>("unseen")?,
        }));
    }
    Ok(axum::Json(json!({"user": user, "folders": folders})).into_response())
}

pub async fn list(
    State(store): State<Shared>,
    p: Result<Path<(String, String)>, PathRejection>,
    q: Result<Query<Params>, QueryRejection>,
) -> Result<Response, StoreError> {
    let (user, folder) = path(p)?;
    let q = query(q)?;
    let since = param_i64(&q, "since_uid")?.unwrap_or(0);
    let db = read_db(&store, &q)?;
    let mailbox =
        sqlx::query("SELECT uidvalidity, uidnext FROM mailboxes WHERE user = ? AND folder = ?")
            .bind(&user)
            .bind(&folder)
            .fetch_optional(&db)
            .await?
            .ok_or_else(|| {
                StoreError::NotFound(format!("no folder {folder:?} for user {user:?}"))
            })?;
    let rows = sqlx::query(
        "SELECT uid, message_id, flags, size, internal_date_ms FROM messages
         WHERE user = ? AND folder = ? AND uid > ? ORDER BY uid",
    )
    .bind(&user)
    .bind(&folder)
    .bind(since)
    .fetch_all(&db)
    .await?;
    let mut messages = Vec::with_capacity(rows.len());
    for r in rows {
        messages.push(json!({
            "uid": r.try_get::<i64, _>("uid")?,
            "message_id": r.try_get::<String, _>("message_id")?,
            "flags": split_flags(&r.try_get::<String, _>("flags")?),
            "size": r.try_get::<i64, _>("size")?,
            "internal_date_ms": r.try_get::<i64, _>("internal_date_ms")?,
        }));
    }
    Ok(axum::Json(json!({
        "user": user,
        "folder": folder,
        "uidvalidity": mailbox.try_get::<i64, _>("uidvalidity")?,
        "uidnext": mailbox.try_get::<i64, _>("uidnext")?,
        "messages": messages,
    }))
    .into_response())
}

pub async fn fetch(
    State(store): State<Shared>,
    p: Result<Path<(String, String, String)>, PathRejection>,
    q: Result<Query<Params>, QueryRejection>,
) -> Result<Response, StoreError> {
    let (user, folder, uid) = path(p)?;
    let uid = parse_id("uid", &uid)?;
    let q = query(q)?;
    let db = read_db(&store, &q)?;
    let bodies = read_bodies(&store, &q)?;
    let _pin = bodies.pin().await;
    let row = sqlx::query(&format!(
        "SELECT message_id, {COLUMNS} FROM messages WHERE user = ? AND folder = ? AND uid = ?"
    ))
    .bind(&user)
    .bind(&folder)
    .bind(uid)
    .fetch_optional(&db)
    .await?
    .ok_or_else(|| {
        StoreError::NoSuchItem(format!("{user}/{folder} has no message with UID {uid}"))
    })?;
    let body = bodies.read(Stored::from_sqlx(&row)?)?;
    let mut resp = (StatusCode::OK, body).into_response();
    resp.headers_mut()
        .insert("content-type", HeaderValue::from_static("message/rfc822"));
    if let Ok(v) = HeaderValue::from_str(&row.try_get::<String, _>("message_id")?) {
        resp.headers_mut().insert("x-fabric-message-id", v);
    }
    Ok(resp)
}

/// UIDs one `bodies` request may ask for.
const MAX_BATCH_UIDS: usize = 1000;

/// `GET .../bodies?uids=1,2,3`: several messages in one answer, for IMAP FETCH. The body is, for
/// each message found (in UID order), the line `UID SIZE\n` and then SIZE bytes of the message.
pub async fn fetch_many(
    State(store): State<Shared>,
    p: Result<Path<(String, String)>, PathRejection>,
    q: Result<Query<Params>, QueryRejection>,
) -> Result<Response, StoreError> {
    let (user, folder) = path(p)?;
    let q = query(q)?;
    let uids = q
        .get("uids")
        .map(String::as_str)
        .unwrap_or("")
        .split(',')
        .filter(|s| !s.is_empty())
        .map(|s| parse_id("uid", s))
        .collect::<Result<Vec<i64>, _>>()?;
    if uids.len() > MAX_BATCH_UIDS {
        return Err(StoreError::BadRequest(format!(
            "at most {MAX_BATCH_UIDS} UIDs per request"
        )));
    }
    let db = read_db(&store, &q)?;
    let bodies = read_bodies(&store, &q)?;
    let mut out: Vec<u8> = Vec::new();
    if !uids.is_empty() {
        let marks = vec!["?"; uids.len()].join(",");
        let sql = format!(
            "SELECT uid, {COLUMNS} FROM messages WHERE user = ? AND folder = ? AND uid IN ({marks}) ORDER BY uid"
        );
        let _pin = bodies.pin().await;
        let mut query = sqlx::query(&sql).bind(&user).bind(&folder);
        for uid in &uids {
            query = query.bind(*uid);
        }
        for r in query.fetch_all(&db).await? {
            let body = bodies.read(Stored::from_sqlx(&r)?)?;
            out.extend_from_slice(
                format!("{} {}\n", r.try_get::<i64, _>("uid")?, body.len()).as_bytes(),
            );
            out.extend_from_slice(&body);
        }
    }
    let mut resp = (StatusCode::OK, out).into_response();
    resp.headers_mut().insert(
        "content-type",
        HeaderValue::from_static("application/octet-stream"),
    );
    Ok(resp)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FlagsBody {
    set: Option<Vec<String>>,
    #[serde(default)]
    add: Vec<String>,
    #[serde(default)]
    remove: Vec<String>,
}

pub async fn set_flags(
    State(store): State<Shared>,
    p: Result<Path<(String, String, String)>, PathRejection>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, StoreError> {
    let (user, folder, uid) = path(p)?;
    let uid = parse_id("uid", &uid)?;
    let b: FlagsBody = json_body(&store, &headers, body).await?;
    let change = match b.set {
        Some(set) if b.add.is_empty() && b.remove.is_empty() => {
            check_flags(&set)?;
            FlagChange::Set(set)
        }
        Some(_) => {
            return Err(StoreError::BadRequest(
                "give either \"set\" or \"add\"/\"remove\", not both".into(),
            ));
        }
        None => {
            check_flags(&b.add)?;
            check_flags(&b.remove)?;
            FlagChange::AddRemove {
                add: b.add,
                remove: b.remove,
            }
        }
    };
    let (reply, lsn, durable) = write(
        &store,
        Request::SetFlags {
            user,
            folder,
            uid,
            change,
        },
    )
    .await?;
    match reply {
        Reply::Flags(flags) => Ok(written(
            StatusCode::OK,
            json!({"uid": uid, "flags": flags}),
            lsn,
            &durable,
        )),
        other => Err(unexpected(other)),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ExpungeBody {
    uids: Option<Vec<i64>>,
}

pub async fn expunge(
    State(store): State<Shared>,
    p: Result<Path<(String, String)>, PathRejection>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, StoreError> {
    let (user, folder) = path(p)?;
    let b: ExpungeBody = json_body(&store, &headers, body).await?;
    let (reply, lsn, durable) = write(
        &store,
        Request::Expunge {
            user,
            folder,
            uids: b.uids,
        },
    )
    .await?;
    match reply {
        Reply::Expunged(uids) => Ok(written(
            StatusCode::OK,
            json!({"expunged": uids}),
            lsn,
            &durable,
        )),
        other => Err(unexpected(other)),
    }
}
