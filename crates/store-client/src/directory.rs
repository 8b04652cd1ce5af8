//! Reading the fabric's configuration (users and blocklist) from the directory store, falling back to
//! its mirrors' copies when it does not answer. Writes go to the directory store itself.

use std::time::Duration;

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
}

fn client_of(node: &topology::Node, timeout: Duration) -> Option<StoreClient> {
    StoreClient::for_node(node).map(|c| c.with_timeout(timeout))
}

impl Directory {
    pub fn new(topology: &Topology) -> Directory {
        Directory::with_timeout(topology, Duration::from_secs(10))
    }

    /// A directory whose every read gives up on a source after `timeout` (then asks the next).
    pub fn with_timeout(topology: &Topology, timeout: Duration) -> Directory {
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
        Directory { sources }
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
