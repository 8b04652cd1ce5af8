//! IMAP on the intranet server: logins against the directory ([`Mailboxes::authenticate`]), each
//! account bound to the logged-in user's folders on the mailbox's home store. INBOX, Sent and
//! Quarantine always exist (empty until the store has a message in them).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use imap::{
    Account, Appended, BackendError, FlagOp, FolderStatus, Listing, LoginError, MessageMeta,
};
use store_client::{ClientError, StatusCode, StoreClient};

use crate::mailbox::Mailboxes;

/// The folders every account has.
pub const FOLDERS: [&str; 3] = ["INBOX", "Sent", "Quarantine"];
/// UIDs asked of the store in one `bodies` request.
const FETCH_BATCH: usize = 200;

/// The IMAP side of [`Mailboxes`].
pub struct ImapBackend(pub Arc<Mailboxes>);

/// One logged-in user's folders. `user` is fixed at login: no folder name reaches another user.
/// The store is the mailbox's home at each command: a session follows a mailbox that moves (the
/// folder's UIDVALIDITY tells the client whether its UIDs still hold).
pub struct ImapAccount {
    user: String,
    mailboxes: Arc<Mailboxes>,
    /// The home store the last command used, and a client for it.
    store: Mutex<(String, StoreClient)>,
}

fn unavailable(e: ClientError) -> BackendError {
    if e.status() == Some(StatusCode::PAYLOAD_TOO_LARGE) {
        return BackendError::TooBig;
    }
    BackendError::Unavailable(e.to_string())
}

fn not_found(e: &ClientError) -> bool {
    e.status() == Some(StatusCode::NOT_FOUND)
}

/// A well-known folder the store has no row for yet: empty, UIDVALIDITY 1 (the store picks the
/// real one, a timestamp, at the first message; a client then sees UIDVALIDITY change and resyncs
/// an empty folder).
fn empty_listing() -> Listing {
    Listing {
        uidvalidity: 1,
        uidnext: 1,
        messages: Vec::new(),
    }
}

fn clamp_u32(n: i64) -> u32 {
    n.clamp(0, u32::MAX as i64) as u32
}

impl imap::Backend for ImapBackend {
    type Account = ImapAccount;

    async fn login(&self, user: &str, password: &str) -> Result<ImapAccount, LoginError> {
        let address = self
            .0
            .authenticate(user, password)
            .await
            .map_err(|e| match e {
                pop3::LoginError::Invalid => LoginError::Invalid,
                pop3::LoginError::Unavailable(m) => LoginError::Unavailable(m),
            })?;
        let home = self.0.home_of(&address).map_err(|e| match e {
            pop3::LoginError::Invalid => LoginError::Invalid,
            pop3::LoginError::Unavailable(m) => LoginError::Unavailable(m),
        })?;
        Ok(ImapAccount {
            user: address,
            mailboxes: self.0.clone(),
            store: Mutex::new(home),
        })
    }
}

impl ImapAccount {
    /// A client for the store that serves the mailbox now.
    fn store(&self) -> StoreClient {
        let mut cached = self.store.lock().unwrap_or_else(|p| p.into_inner());
        let now = self
            .mailboxes
            .homes
            .node(&self.user)
            .map(|n| n.name.as_str());
        if let Some(name) = now
            && name != cached.0
            && let Ok(home) = self.mailboxes.home_of(&self.user)
        {
            tracing::info!(user = %self.user, from = %cached.0, to = %home.0,
                "mailbox moved: the IMAP session follows it");
            *cached = home;
        }
        cached.1.clone()
    }

    /// The store's folder name for a client's name (INBOX is case-insensitive, RFC 3501 5.1).
    fn folder(name: &str) -> Result<&str, BackendError> {
        if name.is_empty() || name.len() > 255 || name.chars().any(|c| c.is_control() || c == '/') {
            return Err(BackendError::NoSuchFolder);
        }
        Ok(name)
    }
}

impl Account for ImapAccount {
    async fn folders(&self) -> Result<Vec<FolderStatus>, BackendError> {
        let v = match self.store().folders(&self.user, None).await {
            Ok(v) => v,
            Err(e) if not_found(&e) => serde_json::json!({"folders": []}),
            Err(e) => return Err(unavailable(e)),
        };
        let mut found: HashMap<String, FolderStatus> = HashMap::new();
        for f in v["folders"].as_array().into_iter().flatten() {
            let name = f["name"].as_str().unwrap_or("").to_string();
            if name.is_empty() {
                continue;
            }
            found.insert(
                name.clone(),
                FolderStatus {
                    name,
                    uidvalidity: clamp_u32(f["uidvalidity"].as_i64().unwrap_or(1)),
                    uidnext: clamp_u32(f["uidnext"].as_i64().unwrap_or(1)),
                    messages: clamp_u32(f["messages"].as_i64().unwrap_or(0)),
                    unseen: clamp_u32(f["unseen"].as_i64().unwrap_or(0)),
                },
            );
        }
        let mut out = Vec::new();
        for name in FOLDERS {
            out.push(found.remove(name).unwrap_or(FolderStatus {
                name: name.to_string(),
                uidvalidity: 1,
                uidnext: 1,
                messages: 0,
                unseen: 0,
            }));
        }
        let mut rest: Vec<FolderStatus> = found.into_values().collect();
        rest.sort_by(|a, b| a.name.cmp(&b.name));
        out.extend(rest);
        Ok(out)
    }

    async fn list(&self, folder: &str) -> Result<Listing, BackendError> {
        let folder = Self::folder(folder)?;
        match self.store().list_mailbox(&self.user, folder, None).await {
            Ok(l) => Ok(Listing {
                uidvalidity: clamp_u32(l.uidvalidity),
                uidnext: clamp_u32(l.uidnext),
                messages: l
                    .messages
                    .into_iter()
                    .map(|m| MessageMeta {
                        uid: clamp_u32(m.uid),
                        flags: m.flags,
                        size: m.size.max(0) as u64,
                        internal_date_ms: m.internal_date_ms,
                    })
                    .collect(),
            }),
            Err(e) if not_found(&e) && FOLDERS.contains(&folder) => Ok(empty_listing()),
            Err(e) if not_found(&e) => Err(BackendError::NoSuchFolder),
            Err(e) => Err(unavailable(e)),
        }
    }

    async fn fetch(&self, folder: &str, uids: &[u32]) -> Result<Vec<(u32, Bytes)>, BackendError> {
        let folder = Self::folder(folder)?;
        let mut out = Vec::with_capacity(uids.len());
        for chunk in uids.chunks(FETCH_BATCH) {
            let ids: Vec<i64> = chunk.iter().map(|u| i64::from(*u)).collect();
            let got = self
                .store()
                .fetch_many(&self.user, folder, &ids)
                .await
                .map_err(unavailable)?;
            out.extend(got.into_iter().map(|(uid, b)| (clamp_u32(uid), b)));
        }
        Ok(out)
    }

    async fn store_flags(
        &self,
        folder: &str,
        uid: u32,
        op: FlagOp,
        flags: &[String],
    ) -> Result<Vec<String>, BackendError> {
        let folder = Self::folder(folder)?;
        let change = match op {
            FlagOp::Add => serde_json::json!({ "add": flags }),
            FlagOp::Remove => serde_json::json!({ "remove": flags }),
            FlagOp::Replace => serde_json::json!({ "set": flags }),
        };
        self.store()
            .set_flags(&self.user, folder, i64::from(uid), &change)
            .await
            .map_err(unavailable)
    }

    async fn expunge(&self, folder: &str, uids: &[u32]) -> Result<Vec<u32>, BackendError> {
        let folder = Self::folder(folder)?;
        let ids: Vec<i64> = uids.iter().map(|u| i64::from(*u)).collect();
        let gone = self
            .store()
            .expunge(&self.user, folder, Some(&ids))
            .await
            .map_err(unavailable)?;
        Ok(gone.into_iter().map(clamp_u32).collect())
    }

    async fn append(
        &self,
        folder: &str,
        flags: &[String],
        internal_date_ms: Option<i64>,
        body: Vec<u8>,
    ) -> Result<Appended, BackendError> {
        let folder = Self::folder(folder)?;
        let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
        // Returns only once the message is fsynced on two stores (invariant 1).
        let written = self
            .store()
            .append_dated(&self.user, folder, &flags, internal_date_ms, body)
            .await
            .map_err(unavailable)?;
        tracing::info!(
            message_id = %written.value.message_id,
            user = %self.user,
            folder,
            uid = written.value.uid,
            copies = ?written.copies,
            "IMAP APPEND durable"
        );
        Ok(Appended {
            uidvalidity: clamp_u32(written.value.uidvalidity),
            uid: clamp_u32(written.value.uid),
        })
    }
}

/// Serves IMAP on `listener` until shutdown (STARTTLS with the node's certificate; logins wait
/// for it).
pub async fn listen(
    ctx: &node_runtime::NodeContext,
    listener: tokio::net::TcpListener,
    limit: node_runtime::sessions::SessionLimit,
    mailboxes: Arc<Mailboxes>,
    acceptor: Option<tokio_rustls::TlsAcceptor>,
) {
    let config = Arc::new(imap::Config::new(
        format!("{}.{}", ctx.node.name, ctx.topology.fabric.name),
        ctx.topology.limits.store_max_body_bytes,
    ));
    let backend = Arc::new(ImapBackend(mailboxes));
    node_runtime::sessions::accept_until_shutdown(
        ctx,
        listener,
        limit,
        b"* BYE [UNAVAILABLE] Too many sessions\r\n",
        move |stream, _peer| {
            let (backend, config, acceptor) = (backend.clone(), config.clone(), acceptor.clone());
            async move { imap::serve(stream, &config, backend.as_ref(), acceptor).await }
        },
    )
    .await;
}
