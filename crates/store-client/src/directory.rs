//! Reading the fabric's configuration (users and blocklist) from the directory store, falling back to
//! its mirrors' copies when it does not answer. Writes go to the directory store itself.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;
use topology::Topology;

use crate::{ClientError, StoreClient};

/// Where to read, and whose data to read there (`origin` for a mirror's copy).
#[derive(Clone)]
struct Source {
    client: StoreClient,
    origin: Option<String>,
}

/// The directory of users and the sender blocklist, as every role reads them.
#[derive(Clone)]
pub struct Directory {
    sources: Vec<Source>,
    /// Users found lately, for [`Directory::user_recent`].
    recent: Arc<Mutex<HashMap<String, (Instant, Value)>>>,
}

/// How long [`Directory::user_recent`] answers from a user found earlier.
pub const RECENT_USER_TTL: Duration = Duration::from_secs(5);
/// Most users [`Directory::user_recent`] remembers.
const RECENT_USERS: usize = 50_000;

fn client_of(node: &topology::Node, timeout: Duration) -> Option<StoreClient> {
    StoreClient::for_node(node).map(|c| c.with_timeout(timeout))
}

impl Directory {
    pub fn new(topology: &Topology) -> Directory {
        Directory::with_timeout(topology, Duration::from_secs(10))
    }

    /// A directory whose every read gives up on a source after `timeout` (then asks the next).
    pub fn with_timeout(topology: &Topology, timeout: Duration) -> Directory {
        metrics::describe_counter!(
            "fabric_directory_recent_hits_total",
            "Recipient checks and notifications answered from a user found within the last 5 s."
        );
        let client_of = |node: &topology::Node| client_of(node, timeout);
        let mut sources = Vec::new();
        if let Some(dir) = topology.directory_store() {
            if let Some(client) = client_of(dir) {
                sources.push(Source {
                    client,
                    origin: None,
                });
            }
            let m = topology.mirror_of(&dir.name);
            for mirror in [m.other_site, m.same_site].into_iter().flatten() {
                if let Some(client) = topology.node(&mirror).and_then(client_of) {
                    sources.push(Source {
                        client,
                        origin: Some(dir.name.clone()),
                    });
                }
            }
        }
        Directory {
            sources,
            recent: Default::default(),
        }
    }

    /// One user (`None`: no such user), from the first source that answers.
    pub async fn user(&self, address: &str) -> Result<Option<Value>, ClientError> {
        let mut last = None;
        for s in &self.sources {
            match s.client.get_user(address, s.origin.as_deref()).await {
                Ok(found) => return Ok(found),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| ClientError::Connect {
            url: "directory".into(),
            message: "the topology has no store".into(),
        }))
    }

    /// Like [`Directory::user`], but a user found within the last [`RECENT_USER_TTL`] is answered
    /// from memory: for the checks every message makes (is the recipient a user, how does it want to
    /// be notified), where a directory read per message and recipient cost the directory store more
    /// than the message's own writes. A user not found is always asked again (a user added a moment
    /// ago is never refused for it); a change to a user's entry reaches these checks within the TTL.
    /// Logins read the directory every time ([`Directory::user`]): a changed password counts at once.
    pub async fn user_recent(&self, address: &str) -> Result<Option<Value>, ClientError> {
        let now = Instant::now();
        if let Some((at, user)) = self.recent_lock().get(address)
            && now.duration_since(*at) < RECENT_USER_TTL
        {
            metrics::counter!("fabric_directory_recent_hits_total").increment(1);
            return Ok(Some(user.clone()));
        }
        let found = self.user(address).await?;
        let mut recent = self.recent_lock();
        match &found {
            Some(user) => {
                if recent.len() >= RECENT_USERS {
                    recent.retain(|_, (at, _)| now.duration_since(*at) < RECENT_USER_TTL);
                    if recent.len() >= RECENT_USERS {
                        recent.clear();
                    }
                }
                recent.insert(address.to_string(), (now, user.clone()));
            }
            None => {
                recent.remove(address);
            }
        }
        Ok(found)
    }

    fn recent_lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, (Instant, Value)>> {
        self.recent.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Every user (the directory entries, password hashes included), from the first source that
    /// answers.
    pub async fn users(&self) -> Result<Vec<Value>, ClientError> {
        let mut last = None;
        for s in &self.sources {
            match s.client.users(s.origin.as_deref()).await {
                Ok(v) => return Ok(v["users"].as_array().cloned().unwrap_or_default()),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| ClientError::Connect {
            url: "directory".into(),
            message: "the topology has no store".into(),
        }))
    }

    /// The mailbox home records (`crate::homes`), from the first source that answers.
    pub async fn homes(&self) -> Result<Vec<crate::homes::Home>, ClientError> {
        let mut last = None;
        for s in &self.sources {
            match s.client.homes(s.origin.as_deref()).await {
                Ok(v) => return Ok(v),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| ClientError::Connect {
            url: "directory".into(),
            message: "the topology has no store".into(),
        }))
    }

    /// The blocklist entries, lowercased.
    pub async fn blocklist(&self) -> Result<Vec<String>, ClientError> {
        let mut last = None;
        for s in &self.sources {
            match s.client.blocklist(s.origin.as_deref()).await {
                Ok(v) => {
                    return Ok(v["entries"]
                        .as_array()
                        .map(|a| {
                            a.iter()
                                .filter_map(|e| e["entry"].as_str().map(str::to_ascii_lowercase))
                                .collect()
                        })
                        .unwrap_or_default());
                }
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| ClientError::Connect {
            url: "directory".into(),
            message: "the topology has no store".into(),
        }))
    }
}
