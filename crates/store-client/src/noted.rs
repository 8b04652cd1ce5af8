//! Writes that carry their trace hop or their transfer log entry, so a message's hop costs the
//! stores one mirrored write instead of several (the store's `notes`).

use bytes::Bytes;
use hyper::Method;
use hyper::header::CONTENT_TYPE;
use serde_json::{Value, json};

use serde::Deserialize;

use crate::{Appended, ClientError, Enqueued, Leased, StoreClient, Written, segment, written};

/// A trace hop written by the store together with the write it describes (`X-Fabric-Trace`).
#[derive(Debug, Clone)]
pub struct Hop<'a> {
    pub node: &'a str,
    pub action: &'a str,
    pub detail: Option<&'a str>,
}

impl Hop<'_> {
    fn header(&self) -> (&'static str, String) {
        let text =
            json!({"node": self.node, "action": self.action, "detail": self.detail}).to_string();
        // Header values are visible ASCII: anything else in the detail is escaped as JSON allows
        // (and DEL, which serde_json leaves as it is).
        let mut ascii = String::with_capacity(text.len());
        for c in text.chars() {
            if c.is_ascii() && !c.is_ascii_control() {
                ascii.push(c);
            } else {
                for unit in c.encode_utf16(&mut [0u16; 2]) {
                    ascii.push_str(&format!("\\u{unit:04x}"));
                }
            }
        }
        ("x-fabric-trace", ascii)
    }
}

impl StoreClient {
    /// Enqueues `body` and, unless it is a duplicate, writes `hop` to the message's trace in the
    /// same write.
    pub async fn enqueue_traced(
        &self,
        queue: &str,
        message_id: Option<&str>,
        meta: Option<&Value>,
        hop: Option<&Hop<'_>>,
        body: impl Into<Bytes>,
    ) -> Result<Written<Enqueued>, ClientError> {
        let mut headers = Vec::new();
        if let Some(id) = message_id {
            headers.push(("x-fabric-message-id", id.to_string()));
        }
        if let Some(meta) = meta {
            headers.push(("x-fabric-meta", meta.to_string()));
        }
        if let Some(hop) = hop {
            headers.push(hop.header());
        }
        let resp = self
            .call(
                Method::POST,
                &format!("/v1/queues/{}", segment(queue)),
                &headers,
                body,
            )
            .await?;
        written(&self.base, resp)
    }

    /// Appends a message and, unless it is a duplicate, writes `hop` to its trace in the same write;
    /// the store puts `USER FOLDER uid N` before the hop's detail.
    pub async fn append_traced(
        &self,
        user: &str,
        folder: &str,
        message_id: Option<&str>,
        flags: &[&str],
        hop: Option<&Hop<'_>>,
        body: impl Into<Bytes>,
    ) -> Result<Written<Appended>, ClientError> {
        let mut headers = Vec::new();
        if let Some(id) = message_id {
            headers.push(("x-fabric-message-id", id.to_string()));
        }
        if !flags.is_empty() {
            headers.push(("x-fabric-flags", flags.join(" ")));
        }
        if let Some(hop) = hop {
            headers.push(hop.header());
        }
        let path = format!("/v1/mailboxes/{}/{}", segment(user), segment(folder));
        let resp = self.call(Method::POST, &path, &headers, body).await?;
        written(&self.base, resp)
    }

    /// Moves leased item `id` of `queue` to queue `to` (its body stays in the store), hidden there
    /// for `hold` (an archive's retention), and appends the transfer log entry of the move (`from`
    /// side, `to_side`, `summary`), in one write: what an archive enqueue, a transfer log append and
    /// an ack did in three.
    pub async fn archive(
        &self,
        queue: &str,
        id: i64,
        lease: &str,
        to: &str,
        hold: std::time::Duration,
        transfer: Option<(&str, &str, &Value)>,
    ) -> Result<(), ClientError> {
        let path = format!(
            "/v1/queues/{}/items/{id}/archive?lease={}",
            segment(queue),
            segment(lease)
        );
        self.archive_call(&path, to, hold, transfer, None).await?;
        Ok(())
    }

    /// What [`archive`](Self::archive) does, after delivering leased `item`'s message into
    /// `delivery`'s mailboxes of this same store, all in one write: the mailboxes share the body the
    /// store holds already, so it is neither sent nor stored again. A folder that has the message
    /// (by fabric message id) keeps its copy (`duplicate`).
    pub async fn archive_delivering(
        &self,
        queue: &str,
        item: &Leased,
        to: &str,
        hold: std::time::Duration,
        transfer: Option<(&str, &str, &Value)>,
        delivery: &Delivery<'_>,
    ) -> Result<Vec<DeliveredTo>, ClientError> {
        let path = format!(
            "/v1/queues/{}/items/{}/archive?lease={}",
            segment(queue),
            item.id,
            segment(&item.lease)
        );
        let mailboxes: Vec<Value> = delivery
            .mailboxes
            .iter()
            .map(|(user, folder)| json!({"user": user, "folder": folder}))
            .collect();
        let trace = delivery
            .hop
            .as_ref()
            .map(|h| json!({"node": h.node, "action": h.action, "detail": h.detail}));
        let delivery = json!({"mailboxes": mailboxes, "trace": trace});
        let resp = self
            .archive_call(&path, to, hold, transfer, Some(delivery))
            .await?;
        let archived: Written<Archived> = written(&self.base, resp)?;
        Ok(archived.value.delivered)
    }

    async fn archive_call(
        &self,
        path: &str,
        to: &str,
        hold: std::time::Duration,
        transfer: Option<(&str, &str, &Value)>,
        delivery: Option<Value>,
    ) -> Result<crate::RawResponse, ClientError> {
        let mut body = json!({
            "to": to,
            "hold_ms": i64::try_from(hold.as_millis()).unwrap_or(i64::MAX),
            "transfer": transfer.map(|(from, to_side, summary)| json!({"from": from, "to": to_side, "summary": summary})),
        });
        if let Some(d) = delivery {
            body["delivery"] = d;
        }
        let bytes = serde_json::to_vec(&body).unwrap_or_default();
        self.call(
            Method::POST,
            path,
            &[(CONTENT_TYPE.as_str(), "application/json".into())],
            bytes,
        )
        .await
    }
}

/// Mailboxes an archive delivers into first (`(user, folder)`), and the hop each delivery writes to
/// the trace (the store puts `USER FOLDER uid N` before its detail).
#[derive(Debug, Clone, Default)]
pub struct Delivery<'a> {
    pub mailboxes: Vec<(&'a str, &'a str)>,
    pub hop: Option<Hop<'a>>,
}

/// One delivery an archive made.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct DeliveredTo {
    pub user: String,
    pub folder: String,
    pub uid: i64,
    pub uidvalidity: i64,
    pub duplicate: bool,
}

#[derive(Deserialize)]
struct Archived {
    #[serde(default)]
    delivered: Vec<DeliveredTo>,
}
