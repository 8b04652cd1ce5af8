//! Customers' mailboxes as the intranet server's protocols see them: logins checked against the
//! argon2 hashes of the directory, messages on the mailbox's home store.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use argon2::PasswordVerifier;
use pop3::{LoginError, MessageRef};
use store_client::StoreClient;
use store_client::directory::Directory;
use store_client::homes::Homes;

use crate::login_cache::LoginCache;

pub struct Mailboxes {
    pub directory: Directory,
    /// Who serves each mailbox (moved ones included).
    pub homes: Arc<Homes>,
    /// Logins argon2 accepted recently (see `login_cache`).
    pub logins: LoginCache,
}

/// How far a POP3 RETR or TOP reads ahead: clients fetch a maildrop in order, so the store request
/// for one message brings the next ones too (the IMAP side fetches whole ranges the same way), up to
/// this many messages and this many bytes by the sizes listed at login (the first one always comes).
const READ_AHEAD_MESSAGES: usize = 32;
const READ_AHEAD_BYTES: u64 = 256 * 1024;

/// One user's INBOX, listed at login.
pub struct Inbox {
    user: String,
    store: StoreClient,
    messages: Vec<MessageRef>,
    /// Bodies read ahead and not asked for yet, by UID: at most one window, replaced by the next
    /// store request. A message's bytes never change, so what was read ahead stays right.
    ahead: Mutex<BTreeMap<i64, bytes::Bytes>>,
}

impl Inbox {
    fn new(user: String, store: StoreClient, messages: Vec<MessageRef>) -> Inbox {
        Inbox {
            user,
            store,
            messages,
            ahead: Mutex::new(BTreeMap::new()),
        }
    }

    /// The UIDs one store request fetches for `uid`: it and the messages listed after it.
    fn window(&self, uid: i64) -> Vec<i64> {
        let Some(at) = self.messages.iter().position(|m| m.uid == uid) else {
            return vec![uid];
        };
        let mut bytes = 0u64;
        let mut uids = Vec::new();
        for m in &self.messages[at..] {
            let full = uids.len() >= READ_AHEAD_MESSAGES
                || bytes.saturating_add(m.size) > READ_AHEAD_BYTES;
            if !uids.is_empty() && full {
                break;
            }
            bytes = bytes.saturating_add(m.size);
            uids.push(m.uid);
        }
        uids
    }

    fn take_ahead(&self, uid: i64) -> Option<bytes::Bytes> {
        self.ahead.lock().ok().and_then(|mut a| a.remove(&uid))
    }
}

impl Mailboxes {
    /// Checks a password against the directory; `Ok(address)` when it matches.
    pub async fn authenticate(&self, user: &str, password: &str) -> Result<String, LoginError> {
        let address = user.trim().to_ascii_lowercase();
        let entry = self
            .directory
            .user(&address)
            .await
            .map_err(|e| LoginError::Unavailable(e.to_string()))?
            .ok_or(LoginError::Invalid)?;
        let hash = entry["password_hash"].as_str().unwrap_or("").to_string();
        if self.logins.verified(&address, &hash, password) {
            metrics::counter!("fabric_intranet_login_cache_total", "result" => "hit").increment(1);
            return Ok(address);
        }
        metrics::counter!("fabric_intranet_login_cache_total", "result" => "miss").increment(1);
        let (stored, password) = (hash.clone(), password.to_string());
        let checked = password.clone();
        // Verifying an argon2 hash takes tens of milliseconds of CPU: off the async workers.
        let ok = tokio::task::spawn_blocking(move || {
            argon2::PasswordHash::new(&hash)
                .map(|h| {
                    argon2::Argon2::default()
                        .verify_password(password.as_bytes(), &h)
                        .is_ok()
                })
                .unwrap_or(false)
        })
        .await
        .unwrap_or(false);
        if ok {
            self.logins.remember(&address, &stored, &checked);
            Ok(address)
        } else {
            Err(LoginError::Invalid)
        }
    }

    pub fn store_of(&self, address: &str) -> Result<StoreClient, LoginError> {
        self.home_of(address).map(|(_, c)| c)
    }

    /// The store that serves `address` now, with its name.
    pub fn home_of(&self, address: &str) -> Result<(String, StoreClient), LoginError> {
        self.homes
            .client(address, Duration::from_secs(30))
            .ok_or_else(|| LoginError::Unavailable(format!("no home store for {address}")))
    }
}

impl pop3::Backend for Mailboxes {
    type Drop = Inbox;

    async fn login(&self, user: &str, password: &str) -> Result<Inbox, LoginError> {
        let address = self.authenticate(user, password).await?;
        let store = self.store_of(&address)?;
        let listing = match store.list_mailbox(&address, "INBOX", None).await {
            Ok(l) => l.messages,
            // A user who never received mail has no INBOX yet.
            Err(e) if e.status() == Some(store_client::StatusCode::NOT_FOUND) => Vec::new(),
            Err(e) => return Err(LoginError::Unavailable(e.to_string())),
        };
        let messages = listing
            .into_iter()
            .map(|m| MessageRef {
                uid: m.uid,
                unique_id: m.message_id,
                size: m.size.max(0) as u64,
            })
            .collect();
        tracing::info!(user = %address, "POP3 login");
        Ok(Inbox::new(address, store, messages))
    }
}

impl pop3::Maildrop for Inbox {
    fn messages(&self) -> &[MessageRef] {
        &self.messages
    }

    async fn fetch(&self, uid: i64) -> Result<Vec<u8>, String> {
        if let Some(body) = self.take_ahead(uid) {
            metrics::counter!("fabric_intranet_pop3_bodies_total", "source" => "read_ahead")
                .increment(1);
            return Ok(body.to_vec());
        }
        metrics::counter!("fabric_intranet_pop3_bodies_total", "source" => "store").increment(1);
        let mut got = self
            .store
            .fetch_many(&self.user, "INBOX", &self.window(uid))
            .await
            .map_err(|e| e.to_string())?;
        let Some(at) = got.iter().position(|(u, _)| *u == uid) else {
            return Err(format!("message UID {uid} is no longer in the INBOX"));
        };
        let (_, body) = got.remove(at);
        if let Ok(mut ahead) = self.ahead.lock() {
            *ahead = got.into_iter().collect();
        }
        Ok(body.to_vec())
    }

    async fn expunge(&self, uids: Vec<i64>) -> Result<(), String> {
        self.store
            .expunge(&self.user, "INBOX", Some(&uids))
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    }
}
