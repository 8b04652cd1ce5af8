//! The typed calls, one per endpoint of the store's API (`docs/store-api.md`).

use std::path::Path;
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use futures_util::TryStreamExt;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use hyper::header::{CONTENT_LENGTH, CONTENT_TYPE};
use hyper::{Method, Request};
use serde::Deserialize;
use serde_json::Value;
use tokio::io::AsyncWriteExt;

use crate::types::LeasedWire;
use crate::{
    Appended, ClientError, Enqueued, Leased, MailboxListing, QueueItem, RawResponse,
    ReplicaPosition, StoreClient, Written, check, error_chain, origin_param, segment, written,
};

impl StoreClient {
    // --- queues ---

    /// Enqueues `body`; `message_id` makes a retry idempotent.
    pub async fn enqueue(
        &self,
        queue: &str,
        message_id: Option<&str>,
        meta: Option<&Value>,
        body: impl Into<Bytes>,
    ) -> Result<Written<Enqueued>, ClientError> {
        self.enqueue_traced(queue, message_id, meta, None, body)
            .await
    }

    pub async fn queues(&self) -> Result<Value, ClientError> {
        self.json(Method::GET, "/v1/queues", &[], Bytes::new())
            .await
    }

    pub async fn list_queue(
        &self,
        queue: &str,
        origin: Option<&str>,
    ) -> Result<Vec<QueueItem>, ClientError> {
        #[derive(Deserialize)]
        struct L {
            items: Vec<QueueItem>,
        }
        let l: L = self
            .json(
                Method::GET,
                &format!(
                    "/v1/queues/{}?limit=100000{}",
                    segment(queue),
                    origin_param(origin, '&')
                ),
                &[],
                Bytes::new(),
            )
            .await?;
        Ok(l.items)
    }

    pub async fn get_item(
        &self,
        queue: &str,
        id: i64,
        origin: Option<&str>,
    ) -> Result<Bytes, ClientError> {
        let path = format!(
            "/v1/queues/{}/items/{id}{}",
            segment(queue),
            origin_param(origin, '?')
        );
        Ok(self.call(Method::GET, &path, &[], Bytes::new()).await?.body)
    }

    pub async fn lease(
        &self,
        queue: &str,
        max: u32,
        visibility: Duration,
    ) -> Result<Vec<Leased>, ClientError> {
        #[derive(Deserialize)]
        struct L {
            items: Vec<LeasedWire>,
        }
        let path = format!(
            "/v1/queues/{}/lease?max={max}&visibility_ms={}",
            segment(queue),
            visibility.as_millis()
        );
        let l: L = self.json(Method::POST, &path, &[], Bytes::new()).await?;
        l.items
            .into_iter()
            .map(|w| {
                let body = base64::engine::general_purpose::STANDARD
                    .decode(w.body_b64.as_bytes())
                    .map_err(|e| ClientError::Decode {
                        url: format!("{}{}", self.base, path),
                        message: format!("body_b64: {e}"),
                    })?;
                Ok(Leased {
                    id: w.id,
                    message_id: w.message_id,
                    lease: w.lease,
                    meta: w.meta,
                    attempts: w.attempts,
                    body: body.into(),
                })
            })
            .collect()
    }

    /// Acknowledges (removes) a leased item.
    pub async fn ack(&self, queue: &str, id: i64, lease: &str) -> Result<(), ClientError> {
        let path = format!(
            "/v1/queues/{}/items/{id}?lease={}",
            segment(queue),
            segment(lease)
        );
        self.call(Method::DELETE, &path, &[], Bytes::new()).await?;
        Ok(())
    }

    pub async fn defer(
        &self,
        queue: &str,
        id: i64,
        lease: &str,
        delay: Duration,
        error: Option<&str>,
    ) -> Result<(), ClientError> {
        let mut path = format!(
            "/v1/queues/{}/items/{id}/defer?lease={}&delay_ms={}",
            segment(queue),
            segment(lease),
            delay.as_millis()
        );
        if let Some(e) = error {
            path.push_str(&format!("&error={}", segment(e)));
        }
        self.call(Method::POST, &path, &[], Bytes::new()).await?;
        Ok(())
    }

    // --- mailboxes ---

    pub async fn append(
        &self,
        user: &str,
        folder: &str,
        message_id: Option<&str>,
        flags: &[&str],
        body: impl Into<Bytes>,
    ) -> Result<Written<Appended>, ClientError> {
        self.append_traced(user, folder, message_id, flags, None, body)
            .await
    }

    /// Like [`StoreClient::append`], with the message's internal date (IMAP APPEND's date-time).
    pub async fn append_dated(
        &self,
        user: &str,
        folder: &str,
        flags: &[&str],
        internal_date_ms: Option<i64>,
        body: impl Into<Bytes>,
    ) -> Result<Written<Appended>, ClientError> {
        let mut headers = Vec::new();
        if !flags.is_empty() {
            headers.push(("x-fabric-flags", flags.join(" ")));
        }
        if let Some(ms) = internal_date_ms {
            headers.push(("x-fabric-internal-date-ms", ms.to_string()));
        }
        let path = format!("/v1/mailboxes/{}/{}", segment(user), segment(folder));
        let resp = self.call(Method::POST, &path, &headers, body).await?;
        written(&self.base, resp)
    }

    pub async fn list_mailbox(
        &self,
        user: &str,
        folder: &str,
        origin: Option<&str>,
    ) -> Result<MailboxListing, ClientError> {
        let path = format!(
            "/v1/mailboxes/{}/{}{}",
            segment(user),
            segment(folder),
            origin_param(origin, '?')
        );
        self.json(Method::GET, &path, &[], Bytes::new()).await
    }

    pub async fn folders(&self, user: &str, origin: Option<&str>) -> Result<Value, ClientError> {
        let path = format!(
            "/v1/mailboxes/{}{}",
            segment(user),
            origin_param(origin, '?')
        );
        self.json(Method::GET, &path, &[], Bytes::new()).await
    }

    pub async fn fetch(
        &self,
        user: &str,
        folder: &str,
        uid: i64,
        origin: Option<&str>,
    ) -> Result<Bytes, ClientError> {
        let path = format!(
            "/v1/mailboxes/{}/{}/{uid}{}",
            segment(user),
            segment(folder),
            origin_param(origin, '?')
        );
        Ok(self.call(Method::GET, &path, &[], Bytes::new()).await?.body)
    }

    /// Several messages of a folder in one request (at most 1000 UIDs): `(uid, bytes)` in UID order;
    /// UIDs that are not there are left out.
    pub async fn fetch_many(
        &self,
        user: &str,
        folder: &str,
        uids: &[i64],
    ) -> Result<Vec<(i64, Bytes)>, ClientError> {
        self.fetch_many_at(user, folder, uids, None).await
    }

    /// [`StoreClient::fetch_many`] from this store's copy of `origin`'s data when given.
    pub async fn fetch_many_at(
        &self,
        user: &str,
        folder: &str,
        uids: &[i64],
        origin: Option<&str>,
    ) -> Result<Vec<(i64, Bytes)>, ClientError> {
        let list: Vec<String> = uids.iter().map(|u| u.to_string()).collect();
        let path = format!(
            "/v1/mailboxes/{}/{}/bodies?uids={}{}",
            segment(user),
            segment(folder),
            list.join(","),
            origin_param(origin, '&')
        );
        let body = self.call(Method::GET, &path, &[], Bytes::new()).await?.body;
        let bad = |message: &str| ClientError::Decode {
            url: format!("{}{}", self.base, path),
            message: message.to_string(),
        };
        let mut out = Vec::with_capacity(uids.len());
        let mut at = 0usize;
        while at < body.len() {
            let nl = body[at..]
                .iter()
                .position(|b| *b == b'\n')
                .ok_or_else(|| bad("a message without its UID line"))?;
            let line = std::str::from_utf8(&body[at..at + nl]).map_err(|_| bad("UID line"))?;
            let (uid, len) = line.split_once(' ').ok_or_else(|| bad("UID line"))?;
            let uid: i64 = uid.parse().map_err(|_| bad("UID"))?;
            let len: usize = len.parse().map_err(|_| bad("size"))?;
            let start = at + nl + 1;
            let end = start.checked_add(len).filter(|e| *e <= body.len());
            let end = end.ok_or_else(|| bad("truncated message"))?;
            out.push((uid, body.slice(start..end)));
            at = end;
        }
        Ok(out)
    }

    pub async fn set_flags(
        &self,
        user: &str,
        folder: &str,
        uid: i64,
        change: &Value,
    ) -> Result<Vec<String>, ClientError> {
        #[derive(Deserialize)]
        struct F {
            flags: Vec<String>,
        }
        let path = format!(
            "/v1/mailboxes/{}/{}/{uid}/flags",
            segment(user),
            segment(folder)
        );
        let f: F = self.json_body(Method::POST, &path, change).await?;
        Ok(f.flags)
    }

    pub async fn expunge(
        &self,
        user: &str,
        folder: &str,
        uids: Option<&[i64]>,
    ) -> Result<Vec<i64>, ClientError> {
        #[derive(Deserialize)]
        struct E {
            expunged: Vec<i64>,
        }
        let body = match uids {
            Some(u) => serde_json::json!({ "uids": u }),
            None => serde_json::json!({}),
        };
        let path = format!(
            "/v1/mailboxes/{}/{}/expunge",
            segment(user),
            segment(folder)
        );
        let e: E = self.json_body(Method::POST, &path, &body).await?;
        Ok(e.expunged)
    }

    // --- logs, configuration, catalog ---

    pub async fn trace(
        &self,
        message_id: &str,
        node: &str,
        action: &str,
        detail: Option<&str>,
    ) -> Result<(), ClientError> {
        let body = serde_json::json!({"node": node, "action": action, "detail": detail});
        let _: Value = self
            .json_body(
                Method::POST,
                &format!("/v1/trace/{}", segment(message_id)),
                &body,
            )
            .await?;
        Ok(())
    }

    /// Appends to the transfer log: a message moved `from` one side `to` the other.
    pub async fn log_transfer(
        &self,
        message_id: &str,
        from: &str,
        to: &str,
        summary: &Value,
    ) -> Result<(), ClientError> {
        let body = serde_json::json!({"message_id": message_id, "from": from, "to": to, "summary": summary});
        let _: Value = self
            .json_body(Method::POST, "/v1/transfer-log", &body)
            .await?;
        Ok(())
    }

    pub async fn get_trace(
        &self,
        message_id: &str,
        origin: Option<&str>,
    ) -> Result<Value, ClientError> {
        let path = format!(
            "/v1/trace/{}{}",
            segment(message_id),
            origin_param(origin, '?')
        );
        self.json(Method::GET, &path, &[], Bytes::new()).await
    }

    pub async fn put_user(&self, address: &str, user: &Value) -> Result<Value, ClientError> {
        self.json_body(
            Method::PUT,
            &format!("/v1/users/{}", segment(address)),
            user,
        )
        .await
    }

    /// One user of the directory; `None` when there is no such user.
    pub async fn get_user(
        &self,
        address: &str,
        origin: Option<&str>,
    ) -> Result<Option<Value>, ClientError> {
        let path = format!(
            "/v1/users/{}{}",
            segment(address),
            origin_param(origin, '?')
        );
        match self.json(Method::GET, &path, &[], Bytes::new()).await {
            Ok(v) => Ok(Some(v)),
            Err(e)
                if e.status() == Some(hyper::StatusCode::NOT_FOUND)
                    && e.code() == Some("not_found") =>
            {
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    /// The sender blocklist: `{"entries": [{"entry", "added_at_ms"}]}`.
    pub async fn blocklist(&self, origin: Option<&str>) -> Result<Value, ClientError> {
        self.json(
            Method::GET,
            &format!("/v1/blocklist{}", origin_param(origin, '?')),
            &[],
            Bytes::new(),
        )
        .await
    }

    pub async fn users(&self, origin: Option<&str>) -> Result<Value, ClientError> {
        self.json(
            Method::GET,
            &format!("/v1/users{}", origin_param(origin, '?')),
            &[],
            Bytes::new(),
        )
        .await
    }

    pub async fn catalog(&self, message_id: &str) -> Result<Value, ClientError> {
        self.json(
            Method::GET,
            &format!("/v1/catalog/{}", segment(message_id)),
            &[],
            Bytes::new(),
        )
        .await
    }

    pub async fn replication(&self) -> Result<Value, ClientError> {
        self.json(Method::GET, "/v1/replication", &[], Bytes::new())
            .await
    }

    // --- between stores ---

    /// The last batch of `origin` this store holds a copy of.
    pub async fn replica_status(&self, origin: &str) -> Result<u64, ClientError> {
        Ok(self.replica_position(origin).await?.lsn)
    }

    /// How far this store's copy of `origin` reaches, and at which epoch of `origin`.
    pub async fn replica_position(&self, origin: &str) -> Result<ReplicaPosition, ClientError> {
        self.json(
            Method::GET,
            &format!("/v1/replica/{}/status", segment(origin)),
            &[],
            Bytes::new(),
        )
        .await
    }

    /// Ships encoded batches to a mirror; answers the mirror's LSN after it applied them. The
    /// shipment's encoding is `chunks` in order (`len` bytes in all), sent as one body without
    /// joining them (the batches are not copied).
    pub async fn replica_apply(
        &self,
        origin: &str,
        chunks: Vec<Bytes>,
        len: usize,
    ) -> Result<u64, ClientError> {
        #[derive(Deserialize)]
        struct S {
            lsn: u64,
        }
        let path = format!("/v1/replica/{}/apply", segment(origin));
        let frames = futures_util::stream::iter(
            chunks
                .into_iter()
                .map(|c| Ok::<_, Box<dyn std::error::Error + Send + Sync>>(Frame::data(c))),
        );
        let body = BodyExt::boxed(StreamBody::new(frames));
        let headers = [
            (
                CONTENT_TYPE.as_str(),
                "application/octet-stream".to_string(),
            ),
            (CONTENT_LENGTH.as_str(), len.to_string()),
        ];
        let resp = self.send(Method::POST, &path, &headers, body).await?;
        let resp = crate::check(&self.base, &path, resp)?;
        let s: S = serde_json::from_slice(&resp.body).map_err(|e| ClientError::Decode {
            url: format!("{}{path}", self.base),
            message: e.to_string(),
        })?;
        Ok(s.lsn)
    }

    /// Downloads the copy of `origin` held by this store into `dest`; answers its LSN.
    pub async fn download_snapshot(&self, origin: &str, dest: &Path) -> Result<u64, ClientError> {
        let path = format!("/v1/replica/{}/snapshot", segment(origin));
        let url = format!("{}{}", self.base, path);
        let req = Request::builder()
            .method(Method::GET)
            .uri(&url)
            .body(
                Full::new(Bytes::new())
                    .map_err(|never| match never {})
                    .boxed(),
            )
            .map_err(|e| ClientError::Decode {
                url: url.clone(),
                message: e.to_string(),
            })?;
        let resp = self
            .http
            .request(req)
            .await
            .map_err(|e| ClientError::Connect {
                url: url.clone(),
                message: error_chain(&e),
            })?;
        let (parts, mut body) = resp.into_parts();
        if !parts.status.is_success() {
            let bytes = body
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            return check(
                &self.base,
                &path,
                RawResponse {
                    status: parts.status,
                    headers: parts.headers,
                    body: bytes,
                },
            )
            .map(|_| 0);
        }
        let lsn = parts
            .headers
            .get("x-fabric-lsn")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| ClientError::Decode {
                url: url.clone(),
                message: "no X-Fabric-Lsn header".into(),
            })?;
        let mut file = tokio::fs::File::create(dest).await?;
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| ClientError::Connect {
                url: url.clone(),
                message: e.to_string(),
            })?;
            if let Ok(data) = frame.into_data() {
                file.write_all(&data).await?;
            }
        }
        file.sync_all().await?;
        Ok(lsn)
    }

    /// Uploads a database file as the copy of `origin` held by this store; answers its LSN.
    pub async fn upload_snapshot(&self, origin: &str, file: &Path) -> Result<u64, ClientError> {
        #[derive(Deserialize)]
        struct S {
            lsn: u64,
        }
        let f = tokio::fs::File::open(file).await?;
        let len = f.metadata().await?.len();
        let stream = tokio_util::io::ReaderStream::new(f)
            .map_ok(Frame::data)
            .map_err(|e| Box::new(e) as Box<dyn std::error::Error + Send + Sync>);
        let body = BodyExt::boxed(StreamBody::new(stream));
        let path = format!("/v1/replica/{}/snapshot", segment(origin));
        let slow = StoreClient {
            timeout: self.timeout.max(Duration::from_secs(600)),
            ..self.clone()
        };
        let resp = slow
            .send(
                Method::PUT,
                &path,
                &[(CONTENT_LENGTH.as_str(), len.to_string())],
                body,
            )
            .await?;
        let resp = check(&self.base, &path, resp)?;
        let s: S = serde_json::from_slice(&resp.body).map_err(|e| ClientError::Decode {
            url: path,
            message: e.to_string(),
        })?;
        Ok(s.lsn)
    }
}
