//! `/v1/homes`: where moved mailboxes live (the directory store's records count; mirrored like the
//! users table), and the import that merges another store's copy of a mailbox into this store's;
//! `GET /v1/mailboxes/{user}/{folder}/export`: one folder's messages and tombstones in one snapshot,
//! what an import reads. The merge rules are `crate::mailbox_move`'s.

use std::collections::HashSet;
use std::time::Duration;

use axum::body::Body;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};
use sqlx::Row;
use store_client::StoreClient;
use store_client::homes::FolderExport;

use super::config::check_address;
use super::queues::unexpected;
use super::{Params, Shared, json_body, path, query, read_db, write, written};
use crate::Store;
use crate::error::StoreError;
use crate::mailbox_move::{HomeSet, ImportFolder, SourceMessage};
use crate::requests::{Reply, Request, split_flags};

/// Bodies asked of the source in one request.
const BODY_BATCH: usize = 200;

fn home_json(r: &sqlx::sqlite::SqliteRow) -> Result<Value, StoreError> {
    Ok(json!({
        "address": r.try_get::<String, _>("address")?,
        "store": r.try_get::<String, _>("store")?,
        "epoch": r.try_get::<i64, _>("epoch")?,
        "updated_at_ms": r.try_get::<i64, _>("updated_at_ms")?,
    }))
}

pub async fn list_homes(
    State(store): State<Shared>,
    q: Result<Query<Params>, QueryRejection>,
) -> Result<Response, StoreError> {
    let q = query(q)?;
    let db = read_db(&store, &q)?;
    let rows = sqlx::query("SELECT * FROM mailbox_homes ORDER BY address")
        .fetch_all(&db)
        .await?;
    let homes = rows.iter().map(home_json).collect::<Result<Vec<_>, _>>()?;
    Ok(axum::Json(json!({"homes": homes})).into_response())
}

/// A mailbox's record, or its default home (epoch 0, `"default": true`) when it never moved.
pub async fn get_home(
    State(store): State<Shared>,
    p: Result<Path<String>, PathRejection>,
    q: Result<Query<Params>, QueryRejection>,
) -> Result<Response, StoreError> {
    let address = check_address(&path(p)?)?;
    let q = query(q)?;
    let db = read_db(&store, &q)?;
    let row = sqlx::query("SELECT * FROM mailbox_homes WHERE address = ?")
        .bind(&address)
        .fetch_optional(&db)
        .await?;
    if let Some(row) = row {
        let mut v = home_json(&row)?;
        v["default"] = json!(false);
        return Ok(axum::Json(v).into_response());
    }
    let default =
        store.ctx.topology.mailbox_store(&address).ok_or_else(|| {
            StoreError::NotFound(format!("{address} is not in a customer domain"))
        })?;
    Ok(
        axum::Json(json!({"address": address, "store": default.name, "epoch": 0, "default": true}))
            .into_response(),
    )
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct HomeBody {
    store: String,
    /// The epoch the caller saw (compare-and-set).
    epoch: Option<i64>,
}

fn check_store(store: &Store, name: &str) -> Result<(), StoreError> {
    match store.ctx.topology.node(name) {
        Some(n) if n.service_addr("store").is_some() => Ok(()),
        _ => Err(StoreError::BadRequest(format!(
            "{name:?} is not a store of the topology"
        ))),
    }
}

pub async fn put_home(
    State(store): State<Shared>,
    p: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, StoreError> {
    let address = check_address(&path(p)?)?;
    let b: HomeBody = json_body(&store, &headers, body).await?;
    check_store(&store, &b.store)?;
    if !store
        .ctx
        .topology
        .is_customer_domain(address.rsplit_once('@').map_or("", |d| d.1))
    {
        return Err(StoreError::BadRequest(format!(
            "{address} is not in a customer domain"
        )));
    }
    let (reply, lsn, durable) = write(
        &store,
        Request::SetHome(HomeSet {
            address,
            store: b.store,
            expect_epoch: b.epoch,
        }),
    )
    .await?;
    match reply {
        Reply::Admin(v) => {
            tracing::info!(user = %v["address"].as_str().unwrap_or(""), store = %v["store"].as_str().unwrap_or(""),
                epoch = v["epoch"].as_i64().unwrap_or(0), "mailbox home set");
            Ok(written(StatusCode::OK, v, lsn, &durable))
        }
        other => Err(unexpected(other)),
    }
}

/// `GET /v1/mailboxes/{user}/{folder}/export`: the folder, its messages (no bodies) and its
/// tombstones, read in one transaction so a message is never both missing and not expunged.
pub async fn export(
    State(store): State<Shared>,
    p: Result<Path<(String, String)>, PathRejection>,
    q: Result<Query<Params>, QueryRejection>,
) -> Result<Response, StoreError> {
    let (user, folder) = path(p)?;
    let q = query(q)?;
    let db = read_db(&store, &q)?;
    let mut tx = db.begin().await?;
    let mailbox =
        sqlx::query("SELECT uidvalidity, uidnext FROM mailboxes WHERE user = ? AND folder = ?")
            .bind(&user)
            .bind(&folder)
            .fetch_optional(&mut *tx)
            .await?
            .ok_or_else(|| {
                StoreError::NotFound(format!("no folder {folder:?} for user {user:?}"))
            })?;
    let rows = sqlx::query(
        "SELECT uid, message_id, flags, size, internal_date_ms FROM messages
         WHERE user = ? AND folder = ? ORDER BY uid",
    )
    .bind(&user)
    .bind(&folder)
    .fetch_all(&mut *tx)
    .await?;
    let dead = sqlx::query(
        "SELECT d.message_id, d.uid FROM delivered d WHERE d.user = ? AND d.folder = ?
         AND NOT EXISTS (SELECT 1 FROM messages m WHERE m.user = d.user AND m.folder = d.folder
                         AND m.uid = d.uid AND m.message_id = d.message_id)
         ORDER BY d.uid",
    )
    .bind(&user)
    .bind(&folder)
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;
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
    let mut expunged = Vec::with_capacity(dead.len());
    for r in dead {
        expunged.push(json!({
            "message_id": r.try_get::<String, _>("message_id")?,
            "uid": r.try_get::<i64, _>("uid")?,
        }));
    }
    Ok(axum::Json(json!({
        "user": user,
        "folder": folder,
        "uidvalidity": mailbox.try_get::<i64, _>("uidvalidity")?,
        "uidnext": mailbox.try_get::<i64, _>("uidnext")?,
        "messages": messages,
        "expunged": expunged,
    }))
    .into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ImportBody {
    /// The store whose copy is merged in (read from it, or from a mirror's copy when it is down).
    source: String,
    /// "source" (default): the source served the mailbox last, its flags win; "target": this store's.
    prefer: Option<String>,
}

/// Where the source's copy is read: the source itself, then its mirrors' copies (`?origin=`).
fn readers(store: &Store, source: &str) -> Vec<(String, StoreClient, Option<String>)> {
    let t = &store.ctx.topology;
    let client = |name: &str| {
        t.node(name)
            .and_then(StoreClient::for_node)
            .map(|c| c.with_timeout(Duration::from_secs(30)))
    };
    let mut out = Vec::new();
    if let Some(c) = client(source) {
        out.push((source.to_string(), c, None));
    }
    let m = t.mirror_of(source);
    for mirror in [m.other_site, m.same_site].into_iter().flatten() {
        if let Some(c) = client(&mirror) {
            out.push((mirror, c, Some(source.to_string())));
        }
    }
    out
}

/// `POST /v1/homes/{address}/import`: every folder of the source's copy merged into this store's.
pub async fn import(
    State(store): State<Shared>,
    p: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, StoreError> {
    let user = check_address(&path(p)?)?;
    let b: ImportBody = json_body(&store, &headers, body).await?;
    check_store(&store, &b.source)?;
    if b.source == store.ctx.node.name {
        return Err(StoreError::BadRequest(
            "a store cannot import from itself".into(),
        ));
    }
    let prefer_source = match b.prefer.as_deref() {
        None | Some("source") => true,
        Some("target") => false,
        Some(other) => {
            return Err(StoreError::BadRequest(format!(
                "prefer must be \"source\" or \"target\", not {other:?}"
            )));
        }
    };
    store.check_serving()?;
    let mut last = None;
    for (name, client, origin) in readers(&store, &b.source) {
        match import_from(&store, &user, &client, origin.as_deref(), prefer_source).await {
            Ok((folders, lsn, durable)) => {
                let read_from = match &origin {
                    Some(o) => format!("{name} (its copy of {o})"),
                    None => name,
                };
                let total = |k: &str| folders.iter().filter_map(|f| f[k].as_u64()).sum::<u64>();
                let changed = folders
                    .iter()
                    .filter(|f| f["uidvalidity_changed"] == json!(true))
                    .count();
                for (k, metric) in [
                    ("copied", "fabric_store_mailbox_import_copied_total"),
                    ("merged", "fabric_store_mailbox_import_merged_total"),
                    ("tombstoned", "fabric_store_mailbox_import_tombstoned_total"),
                ] {
                    metrics::counter!(metric).increment(total(k));
                }
                metrics::counter!("fabric_store_mailbox_imports_total").increment(1);
                metrics::counter!("fabric_store_mailbox_import_uidvalidity_changes_total")
                    .increment(changed as u64);
                tracing::info!(user = %user, source = %b.source, read_from = %read_from,
                    copied = total("copied"), merged = total("merged"),
                    tombstoned = total("tombstoned"), uidvalidity_changes = changed,
                    prefer = if prefer_source { "source" } else { "target" }, "mailbox imported");
                let body = json!({
                    "user": user,
                    "source": b.source,
                    "read_from": read_from,
                    "copied": total("copied"),
                    "merged": total("merged"),
                    "tombstoned": total("tombstoned"),
                    "uidvalidity_changes": changed,
                    "folders": folders,
                });
                return Ok(match durable {
                    Some(d) => written(StatusCode::OK, body, lsn, &d),
                    None => axum::Json(body).into_response(),
                });
            }
            Err(ReadError::Source(e)) => {
                tracing::warn!(user = %user, source = %b.source, reader = %name, error = %e,
                    "source copy unreadable here; trying the next");
                last = Some(e);
            }
            Err(ReadError::Here(e)) => return Err(e),
        }
    }
    metrics::counter!("fabric_store_mailbox_import_failures_total").increment(1);
    Err(StoreError::Unavailable(format!(
        "no copy of {}'s data answered: {}",
        b.source,
        last.unwrap_or_else(|| "no reader".into())
    )))
}

enum ReadError {
    /// The source (or the mirror holding its copy) failed: try the next reader.
    Source(String),
    /// This store failed: the answer.
    Here(StoreError),
}

type Imported = (Vec<Value>, u64, Option<crate::replication::Durable>);

async fn import_from(
    store: &Store,
    user: &str,
    client: &StoreClient,
    origin: Option<&str>,
    prefer_source: bool,
) -> Result<Imported, ReadError> {
    let folders = client
        .folders(user, origin)
        .await
        .map_err(|e| ReadError::Source(e.to_string()))?;
    let names: Vec<String> = folders["folders"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|f| f["name"].as_str().map(str::to_string))
        .collect();
    let mut out = Vec::new();
    let mut last: Option<(u64, crate::replication::Durable)> = None;
    for folder in names {
        let export = match client.export_folder(user, &folder, origin).await {
            Ok(e) => e,
            // Gone since the folder list: nothing to merge.
            Err(e) if e.status() == Some(store_client::StatusCode::NOT_FOUND) => continue,
            Err(e) => return Err(ReadError::Source(e.to_string())),
        };
        let have = delivered_here(store, user, &folder)
            .await
            .map_err(ReadError::Here)?;
        let request = read_folder(user, &folder, export, &have, client, origin, prefer_source)
            .await
            .map_err(ReadError::Source)?;
        let (reply, lsn, durable) = write(store, Request::Import(Box::new(request)))
            .await
            .map_err(ReadError::Here)?;
        match reply {
            Reply::Admin(v) => out.push(v),
            other => return Err(ReadError::Here(unexpected(other))),
        }
        last = Some((lsn, durable));
    }
    Ok(match last {
        Some((lsn, d)) => (out, lsn, Some(d)),
        None => (out, 0, None),
    })
}

/// The message ids this store's folder has (expunged ones included): their bodies are not read.
async fn delivered_here(
    store: &Store,
    user: &str,
    folder: &str,
) -> Result<HashSet<String>, StoreError> {
    let rows = sqlx::query("SELECT message_id FROM delivered WHERE user = ? AND folder = ?")
        .bind(user)
        .bind(folder)
        .fetch_all(&store.readers())
        .await?;
    rows.iter()
        .map(|r| {
            r.try_get::<String, _>("message_id")
                .map_err(StoreError::from)
        })
        .collect()
}

async fn read_folder(
    user: &str,
    folder: &str,
    export: FolderExport,
    have: &HashSet<String>,
    client: &StoreClient,
    origin: Option<&str>,
    prefer_source: bool,
) -> Result<ImportFolder, String> {
    let wanted: Vec<i64> = export
        .messages
        .iter()
        .filter(|m| !have.contains(&m.message_id))
        .map(|m| m.uid)
        .collect();
    let mut bodies = std::collections::HashMap::new();
    for chunk in wanted.chunks(BODY_BATCH) {
        for (uid, body) in client
            .fetch_many_at(user, folder, chunk, origin)
            .await
            .map_err(|e| e.to_string())?
        {
            bodies.insert(uid, body.to_vec());
        }
    }
    let messages = export
        .messages
        .into_iter()
        .map(|m| SourceMessage {
            body: bodies.remove(&m.uid),
            uid: m.uid,
            message_id: m.message_id,
            flags: m.flags,
            internal_date_ms: m.internal_date_ms,
        })
        .collect();
    Ok(ImportFolder {
        user: user.to_string(),
        folder: folder.to_string(),
        uidvalidity: export.uidvalidity,
        uidnext: export.uidnext,
        messages,
        expunged: export
            .expunged
            .into_iter()
            .map(|e| (e.message_id, e.uid))
            .collect(),
        prefer_source,
    })
}
