//! The shapes of the store's answers.

use bytes::Bytes;
use serde::Deserialize;
use serde_json::Value;

/// A write's answer with its durability: which stores hold it, and whether the fabric is degraded.
#[derive(Debug, Clone)]
pub struct Written<T> {
    pub value: T,
    /// The replication sequence number of the batch that carried the write.
    pub lsn: u64,
    /// The stores that hold the write durably, the receiving store first.
    pub copies: Vec<String>,
    /// True when the second copy went to the same-site mirror because the other site was unreachable.
    pub degraded: bool,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Enqueued {
    pub id: i64,
    pub message_id: String,
    pub duplicate: bool,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Appended {
    pub uid: i64,
    pub uidvalidity: i64,
    pub message_id: String,
    pub duplicate: bool,
}

#[derive(Debug, Clone, Deserialize)]
pub struct QueueItem {
    pub id: i64,
    pub message_id: String,
    pub size: i64,
    pub meta: Option<Value>,
    pub enqueued_at_ms: i64,
    pub visible_at_ms: i64,
    pub attempts: i64,
    pub leased: bool,
    pub last_error: Option<String>,
    /// Held by an operator: never leased until released (absent from older stores: false).
    #[serde(default)]
    pub held: bool,
}

#[derive(Debug, Clone, Deserialize)]
pub(crate) struct LeasedWire {
    pub id: i64,
    pub message_id: String,
    pub lease: String,
    pub meta: Option<Value>,
    pub attempts: i64,
    pub body_b64: String,
}

#[derive(Debug, Clone)]
pub struct Leased {
    pub id: i64,
    pub message_id: String,
    pub lease: String,
    pub meta: Option<Value>,
    pub attempts: i64,
    pub body: Bytes,
}

#[derive(Debug, Clone, Deserialize)]
pub struct MailboxListing {
    pub uidvalidity: i64,
    pub uidnext: i64,
    pub messages: Vec<MessageInfo>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct MessageInfo {
    pub uid: i64,
    pub message_id: String,
    pub flags: Vec<String>,
    pub size: i64,
    pub internal_date_ms: i64,
}

/// How far a store's copy of another store reaches (`GET /v1/replica/{origin}/status`).
#[derive(Debug, Clone, Copy, Deserialize)]
pub struct ReplicaPosition {
    /// The last batch of the origin the copy holds.
    pub lsn: u64,
    /// The origin's epoch as of that batch: a rebuilt or standby store begins a new one.
    #[serde(default)]
    pub epoch: u64,
    /// The first LSN of `epoch`.
    #[serde(default)]
    pub epoch_start: u64,
}
