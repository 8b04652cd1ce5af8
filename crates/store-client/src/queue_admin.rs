//! The typed calls of queue administration (`docs/store-api.md`, Queues): hold, release, flush an
//! item or a queue, merge metadata. `fabric queue` uses them.

use bytes::Bytes;
use hyper::Method;
use hyper::header::CONTENT_TYPE;
use serde::Deserialize;
use serde_json::{Map, Value};

use crate::{ClientError, StoreClient, Written, segment, written};

/// The answer to hold, release and flush of one item.
#[derive(Debug, Clone, Deserialize)]
pub struct ItemState {
    pub id: i64,
    pub held: bool,
    /// True when a worker holds the item's lease (which hold, flush and release never shorten).
    #[serde(default)]
    pub leased: bool,
    /// When the item can be leased next (release and flush only).
    #[serde(default)]
    pub visible_at_ms: Option<i64>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Flushed {
    pub flushed: u64,
}

#[derive(Debug, Clone, Deserialize)]
pub struct MergedMeta {
    pub id: i64,
    /// The item's whole metadata after the merge.
    pub meta: Value,
    #[serde(default)]
    pub held: bool,
}

impl StoreClient {
    async fn item_action<T: serde::de::DeserializeOwned>(
        &self,
        queue: &str,
        id: i64,
        action: &str,
        body: Option<&Value>,
    ) -> Result<Written<T>, ClientError> {
        let path = format!("/v1/queues/{}/items/{id}/{action}", segment(queue));
        let resp = match body {
            Some(b) => {
                let bytes = serde_json::to_vec(b).unwrap_or_default();
                let headers = [(CONTENT_TYPE.as_str(), "application/json".to_string())];
                self.call(Method::POST, &path, &headers, bytes).await?
            }
            None => self.call(Method::POST, &path, &[], Bytes::new()).await?,
        };
        written(&self.base, resp)
    }

    /// Holds an item: it is never leased until released (a leased item finishes its lease first).
    pub async fn hold(&self, queue: &str, id: i64) -> Result<Written<ItemState>, ClientError> {
        self.item_action(queue, id, "hold", None).await
    }

    /// Releases a held item and makes it visible now.
    pub async fn release(&self, queue: &str, id: i64) -> Result<Written<ItemState>, ClientError> {
        self.item_action(queue, id, "release", None).await
    }

    /// Makes an item visible now; `409 held` if it is held.
    pub async fn flush_item(
        &self,
        queue: &str,
        id: i64,
    ) -> Result<Written<ItemState>, ClientError> {
        self.item_action(queue, id, "flush", None).await
    }

    /// Makes every item of a queue that is neither held nor leased visible now.
    pub async fn flush_queue(&self, queue: &str) -> Result<Written<Flushed>, ClientError> {
        let path = format!("/v1/queues/{}/flush", segment(queue));
        let resp = self.call(Method::POST, &path, &[], Bytes::new()).await?;
        written(&self.base, resp)
    }

    /// Merges `meta`'s top-level keys into an item's metadata and makes it visible now (unless held).
    pub async fn merge_meta(
        &self,
        queue: &str,
        id: i64,
        meta: &Map<String, Value>,
    ) -> Result<Written<MergedMeta>, ClientError> {
        let body = Value::Object(meta.clone());
        self.item_action(queue, id, "meta", Some(&body)).await
    }
}
