//! The HTTP side of the outside world, on the node's `sms` port:
//!
//! - `POST /v1/sms` `{"to": "+15550100", "text": "..."}`: the SMS gateway; stores the message
//!   durably, then 201 `{"id", "time"}`;
//! - `GET /v1/sms`: every SMS received, oldest first;
//! - `GET /v1/smtp/messages`: every mail received (id, time, mail_from, rcpt_to, size, ...);
//! - `GET /v1/smtp/messages/{id}`: one mail's raw bytes (`message/rfc822`);
//! - `GET|POST /v1/smtp/mode` `{"mode": "accept"|"tempfail"|"reject"}`: how the SMTP sink answers.
//!
//! Bad input (malformed JSON, a missing or empty field, an unknown mode, a bad id) gets 400 (404 for
//! an unknown id) with `{"error", "message"}`, counted in `fabric_sink_bad_requests_total{endpoint}`.

use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use bytes::Bytes;
use serde::Deserialize;
use serde_json::{Map, Value, json};

use crate::mx::{Mode, ModeSwitch};
use crate::spool::{Spool, SpoolError, valid_id};

/// The longest SMS text accepted (a long SMS is several segments; gateways cap it around here).
pub const MAX_SMS_TEXT: usize = 1600;

#[derive(Clone)]
pub struct Api {
    pub smtp: Arc<Spool>,
    pub sms: Arc<Spool>,
    pub mode: ModeSwitch,
}

pub fn router(api: Api) -> Router {
    Router::new()
        .route("/v1/sms", get(list_sms).post(post_sms))
        .route("/v1/smtp/messages", get(list_mail))
        .route("/v1/smtp/messages/{id}", get(get_mail))
        .route("/v1/smtp/mode", get(get_mode).post(post_mode))
        .with_state(api)
}

fn error(status: StatusCode, code: &str, message: impl Into<String>) -> Response {
    (
        status,
        axum::Json(json!({"error": code, "message": message.into()})),
    )
        .into_response()
}

fn bad_request(endpoint: &'static str, message: impl Into<String>) -> Response {
    metrics::counter!("fabric_sink_bad_requests_total", "endpoint" => endpoint).increment(1);
    let message = message.into();
    tracing::info!(endpoint, %message, "bad request refused");
    error(StatusCode::BAD_REQUEST, "bad_request", message)
}

fn storage_error(kind: &'static str, e: &SpoolError) -> Response {
    metrics::counter!("fabric_sink_store_errors_total", "kind" => kind).increment(1);
    tracing::error!(error = %e, kind, "spool error");
    error(
        StatusCode::INTERNAL_SERVER_ERROR,
        "storage",
        "the sink could not read or write its spool",
    )
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, SpoolError> + Send + 'static,
) -> Result<T, SpoolError> {
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => r,
        Err(e) => Err(SpoolError::Io {
            path: "task".into(),
            source: std::io::Error::other(e.to_string()),
        }),
    }
}

#[derive(Deserialize)]
struct SmsIn {
    to: String,
    text: String,
}

/// A phone number as gateways take it: an optional `+` and 3 to 15 digits (E.164 has at most 15).
fn valid_number(to: &str) -> bool {
    let digits = to.strip_prefix('+').unwrap_or(to);
    (3..=15).contains(&digits.len()) && digits.bytes().all(|b| b.is_ascii_digit())
}

async fn post_sms(State(api): State<Api>, body: Bytes) -> Response {
    let sms: SmsIn = match serde_json::from_slice(&body) {
        Ok(s) => s,
        Err(e) => return bad_request("sms", format!("the body is not a valid SMS request: {e}")),
    };
    if !valid_number(&sms.to) {
        return bad_request(
            "sms",
            "\"to\" must be a phone number: an optional + and 3 to 15 digits",
        );
    }
    if sms.text.is_empty() || sms.text.chars().count() > MAX_SMS_TEXT {
        return bad_request(
            "sms",
            format!("\"text\" must have 1 to {MAX_SMS_TEXT} characters"),
        );
    }
    let mut meta = Map::new();
    meta.insert("to".into(), Value::from(sms.to.clone()));
    meta.insert("text".into(), Value::from(sms.text.clone()));
    let spool = api.sms.clone();
    let text = sms.text.into_bytes();
    match blocking(move || spool.put(&text, meta)).await {
        Ok(sidecar) => {
            metrics::counter!("fabric_sink_sms_stored_total").increment(1);
            tracing::info!(sink_id = %sidecar["id"], to = %sms.to, "SMS received from the fabric");
            (
                StatusCode::CREATED,
                axum::Json(json!({"id": sidecar["id"], "time": sidecar["time"]})),
            )
                .into_response()
        }
        Err(e) => storage_error("sms", &e),
    }
}

async fn list_sms(State(api): State<Api>) -> Response {
    let spool = api.sms.clone();
    match blocking(move || spool.list()).await {
        Ok(list) => axum::Json(json!({"messages": list})).into_response(),
        Err(e) => storage_error("sms", &e),
    }
}

async fn list_mail(State(api): State<Api>) -> Response {
    let spool = api.smtp.clone();
    match blocking(move || spool.list()).await {
        Ok(list) => axum::Json(json!({"messages": list})).into_response(),
        Err(e) => storage_error("smtp", &e),
    }
}

async fn get_mail(State(api): State<Api>, Path(id): Path<String>) -> Response {
    if !valid_id(&id) {
        return bad_request("smtp_message", "a message id is 32 lowercase hex digits");
    }
    let spool = api.smtp.clone();
    match blocking(move || spool.get(&id)).await {
        Ok(Some(bytes)) => ([(header::CONTENT_TYPE, "message/rfc822")], bytes).into_response(),
        Ok(None) => error(StatusCode::NOT_FOUND, "not_found", "no such message"),
        Err(e) => storage_error("smtp", &e),
    }
}

#[derive(Deserialize)]
struct ModeIn {
    mode: String,
}

async fn get_mode(State(api): State<Api>) -> Response {
    axum::Json(json!({"mode": api.mode.get().as_str()})).into_response()
}

async fn post_mode(State(api): State<Api>, body: Bytes) -> Response {
    let want: ModeIn = match serde_json::from_slice(&body) {
        Ok(m) => m,
        Err(e) => return bad_request("smtp_mode", format!("the body is not a mode request: {e}")),
    };
    let Some(mode) = Mode::parse(&want.mode) else {
        return bad_request(
            "smtp_mode",
            format!("unknown mode {:?} (accept, tempfail or reject)", want.mode),
        );
    };
    api.mode.set(mode);
    metrics::counter!("fabric_sink_smtp_mode_changes_total", "mode" => mode.as_str()).increment(1);
    tracing::info!(mode = mode.as_str(), "SMTP sink mode changed");
    axum::Json(json!({"mode": mode.as_str()})).into_response()
}
