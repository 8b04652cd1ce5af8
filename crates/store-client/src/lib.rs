//! A typed HTTP client for the store's API (`docs/store-api.md`).
//!
//! Roles, the `fabric` CLI, the test kit, the benchmarks and stores themselves (to reach their mirrors)
//! all talk to stores through [`StoreClient`]. It keeps connections alive (HTTP/1.1), bounds every call
//! with a timeout, and turns the store's JSON errors into [`ClientError::Status`] so callers can branch on
//! the code (`storage_full`, `lease_mismatch`, ...).
//!
//! It knows nothing of where stores are: callers pass a base URL such as `http://127.1.0.11:7100`.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, combinators::BoxBody};
use hyper::header::{CONTENT_LENGTH, CONTENT_TYPE, HeaderName, HeaderValue};
use hyper::{HeaderMap, Request};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde::de::DeserializeOwned;
use serde_json::Value;

pub mod directory;
mod drain;
mod endpoints;
pub mod homes;
mod noted;
mod queue_admin;
mod types;
pub use drain::Drain;
pub use hyper::{Method, StatusCode};
pub use noted::{DeliveredTo, Delivery, Hop};
pub use queue_admin::{Flushed, ItemState, MergedMeta};
pub use types::*;

pub(crate) type Body = BoxBody<Bytes, Box<dyn std::error::Error + Send + Sync>>;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The store could not be reached (refused, reset, unreachable).
    #[error("{url}: {message}")]
    Connect { url: String, message: String },
    #[error("{url}: no answer within {timeout:?}")]
    Timeout { url: String, timeout: Duration },
    /// The store answered with an error status and its JSON error.
    #[error("{url}: {status} {code}: {message}")]
    Status {
        url: String,
        status: StatusCode,
        code: String,
        message: String,
        body: Value,
    },
    #[error("{url}: unexpected answer: {message}")]
    Decode { url: String, message: String },
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

impl ClientError {
    /// The store's error code (`storage_full`, `no_such_item`, ...) when it answered with one.
    pub fn code(&self) -> Option<&str> {
        match self {
            ClientError::Status { code, .. } => Some(code),
            _ => None,
        }
    }
    pub fn status(&self) -> Option<StatusCode> {
        match self {
            ClientError::Status { status, .. } => Some(*status),
            _ => None,
        }
    }
    /// True when retrying later may succeed (unreachable, timeout, 503, 507).
    pub fn is_retryable(&self) -> bool {
        match self {
            ClientError::Connect { .. } | ClientError::Timeout { .. } => true,
            ClientError::Status { status, .. } => {
                *status == StatusCode::SERVICE_UNAVAILABLE
                    || *status == StatusCode::INSUFFICIENT_STORAGE
            }
            _ => false,
        }
    }
}

/// A raw answer: status, headers, body.
#[derive(Debug)]
pub struct RawResponse {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl RawResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
    pub fn json(&self) -> Option<Value> {
        serde_json::from_slice(&self.body).ok()
    }
}

#[derive(Clone)]
pub struct StoreClient {
    base: String,
    http: Client<HttpConnector, Body>,
    timeout: Duration,
}

/// Percent-encodes one path segment (RFC 3986 unreserved characters and `@` stay as they are).
pub fn segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~@".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

impl StoreClient {
    /// A client for the store at `base` (e.g. `http://127.1.0.11:7100`), with a 30 s timeout.
    pub fn new(base: impl Into<String>) -> StoreClient {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(Duration::from_secs(2)));
        let http = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .pool_max_idle_per_host(256)
            .build(connector);
        StoreClient {
            base: base.into().trim_end_matches('/').to_string(),
            http,
            timeout: Duration::from_secs(30),
        }
    }

    pub fn with_timeout(mut self, timeout: Duration) -> StoreClient {
        self.timeout = timeout;
        self
    }

    /// A client for a store node of the topology (`None` if the node has no store port).
    pub fn for_node(node: &topology::Node) -> Option<StoreClient> {
        let addr = node.service_addr("store")?;
        Some(StoreClient::new(format!("http://{addr}")))
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    /// Sends a request and reads the whole answer, whatever its status.
    pub async fn raw(
        &self,
        method: Method,
        path_and_query: &str,
        headers: &[(&str, String)],
        body: impl Into<Bytes>,
    ) -> Result<RawResponse, ClientError> {
        let body: Bytes = body.into();
        let mut all: Vec<(&str, String)> = headers.to_vec();
        all.push((CONTENT_LENGTH.as_str(), body.len().to_string()));
        let full = |b: Bytes| Full::new(b).map_err(|never| match never {}).boxed();
        let first = self
            .send(method.clone(), path_and_query, &all, full(body.clone()))
            .await;
        match first {
            // A pooled connection to a node that restarted fails on first use; a read is safe to
            // send again on a fresh connection.
            Err(ClientError::Connect { .. }) if method == Method::GET || method == Method::HEAD => {
                self.send(method, path_and_query, &all, full(body)).await
            }
            other => other,
        }
    }

    pub(crate) async fn send(
        &self,
        method: Method,
        path_and_query: &str,
        headers: &[(&str, String)],
        body: Body,
    ) -> Result<RawResponse, ClientError> {
        let url = format!("{}{}", self.base, path_and_query);
        let mut req = Request::builder().method(method).uri(&url);
        for (name, value) in headers {
            let name =
                HeaderName::from_bytes(name.as_bytes()).map_err(|e| ClientError::Decode {
                    url: url.clone(),
                    message: format!("header name: {e}"),
                })?;
            let value = HeaderValue::from_str(value).map_err(|e| ClientError::Decode {
                url: url.clone(),
                message: format!("header value: {e}"),
            })?;
            req = req.header(name, value);
        }
        let req = req.body(body).map_err(|e| ClientError::Decode {
            url: url.clone(),
            message: e.to_string(),
        })?;
        let call = async {
            let resp = self
                .http
                .request(req)
                .await
                .map_err(|e| ClientError::Connect {
                    url: url.clone(),
                    message: error_chain(&e),
                })?;
            let (parts, body) = resp.into_parts();
            let body = body
                .collect()
                .await
                .map_err(|e| ClientError::Connect {
                    url: url.clone(),
                    message: format!("reading the answer: {e}"),
                })?
                .to_bytes();
            Ok(RawResponse {
                status: parts.status,
                headers: parts.headers,
                body,
            })
        };
        tokio::time::timeout(self.timeout, call)
            .await
            .map_err(|_| ClientError::Timeout {
                url: url.clone(),
                timeout: self.timeout,
            })?
    }

    /// Sends a request and turns an error status into [`ClientError::Status`].
    pub async fn call(
        &self,
        method: Method,
        path_and_query: &str,
        headers: &[(&str, String)],
        body: impl Into<Bytes>,
    ) -> Result<RawResponse, ClientError> {
        let resp = self.raw(method, path_and_query, headers, body).await?;
        check(&self.base, path_and_query, resp)
    }

    pub(crate) async fn json<T: DeserializeOwned>(
        &self,
        method: Method,
        path_and_query: &str,
        headers: &[(&str, String)],
        body: impl Into<Bytes>,
    ) -> Result<T, ClientError> {
        let resp = self.call(method, path_and_query, headers, body).await?;
        serde_json::from_slice(&resp.body).map_err(|e| ClientError::Decode {
            url: format!("{}{}", self.base, path_and_query),
            message: e.to_string(),
        })
    }

    pub(crate) async fn json_body<T: DeserializeOwned>(
        &self,
        method: Method,
        path_and_query: &str,
        body: &Value,
    ) -> Result<T, ClientError> {
        let bytes = serde_json::to_vec(body).unwrap_or_default();
        self.json(
            method,
            path_and_query,
            &[(CONTENT_TYPE.as_str(), "application/json".into())],
            bytes,
        )
        .await
    }
}

pub(crate) fn origin_param(origin: Option<&str>, sep: char) -> String {
    origin
        .map(|o| format!("{sep}origin={}", segment(o)))
        .unwrap_or_default()
}

pub(crate) fn check(base: &str, path: &str, resp: RawResponse) -> Result<RawResponse, ClientError> {
    if resp.status.is_success() {
        return Ok(resp);
    }
    let body: Value = serde_json::from_slice(&resp.body).unwrap_or(Value::Null);
    Err(ClientError::Status {
        url: format!("{base}{path}"),
        status: resp.status,
        code: body["error"].as_str().unwrap_or("unknown").to_string(),
        message: body["message"]
            .as_str()
            .map(str::to_string)
            .unwrap_or_else(|| String::from_utf8_lossy(&resp.body).into_owned()),
        body,
    })
}

pub(crate) fn written<T: DeserializeOwned>(
    base: &str,
    resp: RawResponse,
) -> Result<Written<T>, ClientError> {
    let value: T = serde_json::from_slice(&resp.body).map_err(|e| ClientError::Decode {
        url: base.to_string(),
        message: e.to_string(),
    })?;
    Ok(Written {
        lsn: resp
            .header("x-fabric-lsn")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0),
        copies: resp
            .header("x-fabric-copies")
            .map(|v| v.split(',').map(str::to_string).collect())
            .unwrap_or_default(),
        degraded: resp.header("x-fabric-degraded") == Some("true"),
        value,
    })
}

pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(inner) = source {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        source = inner.source();
    }
    s
}
