//! IMAP4rev1 server sessions (RFC 3501, with IDLE of RFC 2177, LITERAL- of RFC 7888, UNSELECT of
//! RFC 3691 and the response codes of RFC 5530).
//!
//! The session owns the protocol: framing and limits ([`framing`]), parsing (with `imap-codec`), states,
//! sequence numbers against UIDs, untagged updates, FETCH rendering ([`fetch`], [`mime`]) and SEARCH
//! ([`search`]). The role provides a [`Backend`] (checks a password, opens an [`Account`]); an account
//! is one user's folders, and every folder name a client gives is taken inside that account only.
//!
//! Metrics: `fabric_imap_sessions_total`, `fabric_imap_logins_total{result}`,
//! `fabric_imap_commands_total{command}`, `fabric_imap_refusals_total{kind}`,
//! `fabric_imap_fetched_messages_total`, `fabric_imap_structure_cache_total{result}`.

use std::future::Future;
use std::time::Duration;

use bytes::Bytes;

mod fetch;
mod framing;
mod mime;
mod names;
mod search;
mod selected;
mod seqset;
mod session;
mod structures;
mod updates;
mod write;

pub use session::serve;
pub use structures::StructureCache;

/// A command line (without its literals) is at most this long; longer ones get BAD.
pub const MAX_COMMAND_LINE: usize = 8 * 1024;
/// RFC 7888 LITERAL-: a non-synchronizing literal is at most 4096 octets.
pub const MAX_NONSYNC_LITERAL: u64 = 4096;
/// Literals of commands other than APPEND (LOGIN passwords, SEARCH strings) are at most this long.
pub const MAX_OTHER_LITERAL: u64 = 64 * 1024;
/// RFC 3501 5.4: the inactivity autologout timer is at least 30 minutes.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(31 * 60);

/// A message of a folder as listed by the account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageMeta {
    pub uid: u32,
    /// IMAP flags as the store keeps them (`\Seen`, `\Deleted`, keywords).
    pub flags: Vec<String>,
    pub size: u64,
    pub internal_date_ms: i64,
}

/// A folder's messages in UID order, with its UIDVALIDITY and UIDNEXT.
#[derive(Debug, Clone)]
pub struct Listing {
    pub uidvalidity: u32,
    pub uidnext: u32,
    pub messages: Vec<MessageMeta>,
}

/// A folder as LIST and STATUS show it.
#[derive(Debug, Clone)]
pub struct FolderStatus {
    pub name: String,
    pub uidvalidity: u32,
    pub uidnext: u32,
    pub messages: u32,
    pub unseen: u32,
}

/// How STORE changes flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlagOp {
    Add,
    Remove,
    Replace,
}

/// Where APPEND put a message (RFC 4315 APPENDUID).
#[derive(Debug, Clone, Copy)]
pub struct Appended {
    pub uidvalidity: u32,
    pub uid: u32,
}

#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error("no such folder")]
    NoSuchFolder,
    #[error("the message is too large")]
    TooBig,
    #[error("temporarily unavailable: {0}")]
    Unavailable(String),
}

#[derive(Debug, thiserror::Error)]
pub enum LoginError {
    /// Wrong user name or password.
    #[error("invalid user name or password")]
    Invalid,
    /// The directory or the store cannot be reached now.
    #[error("cannot check the login now: {0}")]
    Unavailable(String),
}

/// One logged-in user's folders. Folder names are relative to the user: there is no way to name
/// another user's folder through this trait.
pub trait Account: Send + Sync {
    /// Every folder of the user (INBOX first).
    fn folders(&self) -> impl Future<Output = Result<Vec<FolderStatus>, BackendError>> + Send;
    fn list(&self, folder: &str) -> impl Future<Output = Result<Listing, BackendError>> + Send;
    /// Bodies of these messages, in UID order; UIDs no longer there are left out.
    fn fetch(
        &self,
        folder: &str,
        uids: &[u32],
    ) -> impl Future<Output = Result<Vec<(u32, Bytes)>, BackendError>> + Send;
    /// Changes the flags of one message; answers its flags afterwards.
    fn store_flags(
        &self,
        folder: &str,
        uid: u32,
        op: FlagOp,
        flags: &[String],
    ) -> impl Future<Output = Result<Vec<String>, BackendError>> + Send;
    /// Removes these messages; answers the UIDs removed.
    fn expunge(
        &self,
        folder: &str,
        uids: &[u32],
    ) -> impl Future<Output = Result<Vec<u32>, BackendError>> + Send;
    /// Stores a message durably (the answer comes only once it is safe).
    fn append(
        &self,
        folder: &str,
        flags: &[String],
        internal_date_ms: Option<i64>,
        body: Vec<u8>,
    ) -> impl Future<Output = Result<Appended, BackendError>> + Send;
}

pub trait Backend: Send + Sync {
    type Account: Account;
    fn login(
        &self,
        user: &str,
        password: &str,
    ) -> impl Future<Output = Result<Self::Account, LoginError>> + Send;
}

/// Session settings.
#[derive(Debug, Clone)]
pub struct Config {
    pub hostname: String,
    /// RFC 3501 5.4: at least 30 minutes.
    pub idle_timeout: Duration,
    /// Pause before answering a wrong password.
    pub auth_failure_delay: Duration,
    /// Wrong passwords before the session is closed.
    pub max_auth_failures: usize,
    /// The largest message APPEND takes (the store's limit).
    pub max_append: u64,
    /// How often IDLE looks for changes.
    pub idle_poll: Duration,
    /// Message structures computed by any session of this node (see [`StructureCache`]).
    pub structures: StructureCache,
}

impl Config {
    pub fn new(hostname: impl Into<String>, max_append: u64) -> Config {
        Config {
            hostname: hostname.into(),
            idle_timeout: IDLE_TIMEOUT,
            auth_failure_delay: Duration::from_secs(1),
            max_auth_failures: 3,
            max_append,
            idle_poll: Duration::from_secs(1),
            structures: StructureCache::default(),
        }
    }
}

pub(crate) fn refuse(kind: &'static str) {
    metrics::counter!("fabric_imap_refusals_total", "kind" => kind).increment(1);
}
