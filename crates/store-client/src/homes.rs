//! Who serves a mailbox. Every role that reads or writes a user's mailbox asks [`Homes`] instead of
//! the static `Topology::mailbox_store`: a moved mailbox has a record in the directory store
//! (`/v1/homes`, mirrored like the users table) naming its store and an epoch that only grows; a
//! mailbox without a record lives on the first store of its domain's home site, as always.
//!
//! The records are cached and refreshed every [`REFRESH`] in the background, from the directory
//! store or, when it does not answer, from its mirrors' copies ([`Directory`]); a refresh that finds
//! no source keeps what it had. So a switch takes effect everywhere within a couple of seconds, and
//! `fabric failover --mailbox` waits [`settle`] before merging what arrived at the old home meanwhile.
//! Lookups are synchronous and cost one map read.

use std::collections::HashMap;
use std::sync::{Arc, RwLock, Weak};
use std::time::Duration;

use bytes::Bytes;
use hyper::Method;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use topology::{Node, Topology};

use crate::directory::Directory;
use crate::{ClientError, MessageInfo, StoreClient, Written, origin_param, segment, written};

/// How often every resolver reads the records again.
pub const REFRESH: Duration = Duration::from_secs(1);
/// How long one source may take to answer a refresh before the next is asked.
const SOURCE_TIMEOUT: Duration = Duration::from_millis(800);

/// How long after a switch every resolver has seen it: two refreshes, each of which may try the
/// directory store and both its mirrors, and a margin.
pub fn settle() -> Duration {
    REFRESH * 2 + SOURCE_TIMEOUT * 3 + Duration::from_millis(500)
}

/// One mailbox's home record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Home {
    pub address: String,
    pub store: String,
    pub epoch: i64,
    #[serde(default)]
    pub updated_at_ms: i64,
}

/// One folder of a store's copy of a mailbox, read in one snapshot (no bodies): the messages there
/// and the ids it has expunged (tombstones).
#[derive(Debug, Clone, Deserialize)]
pub struct FolderExport {
    pub uidvalidity: i64,
    pub uidnext: i64,
    pub messages: Vec<MessageInfo>,
    pub expunged: Vec<Expunged>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Expunged {
    pub message_id: String,
    pub uid: i64,
}

impl StoreClient {
    /// Every mailbox home record (`GET /v1/homes`), of `origin`'s data when given.
    pub async fn homes(&self, origin: Option<&str>) -> Result<Vec<Home>, ClientError> {
        #[derive(Deserialize)]
        struct H {
            homes: Vec<Home>,
        }
        let path = format!("/v1/homes{}", origin_param(origin, '?'));
        let h: H = self.json(Method::GET, &path, &[], Bytes::new()).await?;
        Ok(h.homes)
    }

    /// Moves `address` to `store` (`PUT /v1/homes/{address}`): the epoch becomes the current one
    /// plus one. With `expect_epoch`, refused (409 `conflict`) when the record is not at that epoch.
    pub async fn set_home(
        &self,
        address: &str,
        store: &str,
        expect_epoch: Option<i64>,
    ) -> Result<Written<Home>, ClientError> {
        let mut body = json!({ "store": store });
        if let Some(e) = expect_epoch {
            body["epoch"] = json!(e);
        }
        let path = format!("/v1/homes/{}", segment(address));
        let resp = self
            .call(
                Method::PUT,
                &path,
                &[("content-type", "application/json".into())],
                body.to_string(),
            )
            .await?;
        written(&self.base, resp)
    }

    /// Merges `source`'s copy of the mailbox into this store's (`POST /v1/homes/{address}/import`);
    /// `prefer_source`: the source served the mailbox last, so its flags win.
    pub async fn import_mailbox(
        &self,
        address: &str,
        source: &str,
        prefer_source: bool,
    ) -> Result<Value, ClientError> {
        let body = json!({
            "source": source,
            "prefer": if prefer_source { "source" } else { "target" },
        });
        let path = format!("/v1/homes/{}/import", segment(address));
        self.json_body(Method::POST, &path, &body).await
    }

    /// One folder's messages and tombstones in one snapshot (`GET .../export`).
    pub async fn export_folder(
        &self,
        user: &str,
        folder: &str,
        origin: Option<&str>,
    ) -> Result<FolderExport, ClientError> {
        let path = format!(
            "/v1/mailboxes/{}/{}/export{}",
            segment(user),
            segment(folder),
            origin_param(origin, '?')
        );
        self.json(Method::GET, &path, &[], Bytes::new()).await
    }
}

/// The cached resolver of mailbox homes.
pub struct Homes {
    topology: Arc<Topology>,
    directory: Directory,
    records: RwLock<HashMap<String, Home>>,
}

impl Homes {
    /// A resolver that knows no record yet (every mailbox at its default home) and does not refresh
    /// by itself: call [`Homes::refresh`].
    pub fn new(topology: Arc<Topology>) -> Arc<Homes> {
        metrics::describe_gauge!(
            "fabric_mailbox_homes_moved",
            "Mailboxes whose home is not their domain's default store (failed over one by one)."
        );
        metrics::describe_counter!(
            "fabric_mailbox_homes_refresh_failures_total",
            "Refreshes of the mailbox homes that found neither the directory store nor a copy of it."
        );
        let directory = Directory::with_timeout(&topology, SOURCE_TIMEOUT);
        Arc::new(Homes {
            topology,
            directory,
            records: RwLock::new(HashMap::new()),
        })
    }

    /// A resolver that refreshes itself every [`REFRESH`] while it is in use (the first refresh at
    /// once). Call from within a tokio runtime; outside one it only answers the defaults.
    pub fn spawn(topology: Arc<Topology>) -> Arc<Homes> {
        let homes = Homes::new(topology);
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(refresh_loop(Arc::downgrade(&homes)));
        }
        homes
    }

    /// A resolver with the records as they are now (for one-shot commands).
    pub async fn load(topology: Arc<Topology>) -> Result<Arc<Homes>, ClientError> {
        let homes = Homes::new(topology);
        homes.refresh().await?;
        Ok(homes)
    }

    /// Reads every record again; keeps the old ones when no source answers.
    pub async fn refresh(&self) -> Result<usize, ClientError> {
        let homes = self.directory.homes().await?;
        let n = homes.len();
        let moved = homes
            .iter()
            .filter(|h| self.topology.mailbox_store(&h.address).map(|n| &n.name) != Some(&h.store))
            .count();
        let fresh: HashMap<String, Home> = homes
            .into_iter()
            .map(|h| (h.address.to_ascii_lowercase(), h))
            .collect();
        let mut records = self.records.write().unwrap_or_else(|p| p.into_inner());
        for (address, home) in &fresh {
            if records.get(address).map(|h| (h.epoch, &h.store)) != Some((home.epoch, &home.store))
            {
                tracing::info!(user = %address, store = %home.store, epoch = home.epoch,
                    "mailbox home changed");
            }
        }
        *records = fresh;
        metrics::gauge!("fabric_mailbox_homes_moved").set(moved as f64);
        Ok(n)
    }

    /// The record of `address`, if it was ever moved.
    pub fn record(&self, address: &str) -> Option<Home> {
        let records = self.records.read().unwrap_or_else(|p| p.into_inner());
        records.get(&address.trim().to_ascii_lowercase()).cloned()
    }

    /// The store that serves `address`'s mailbox: its record's, else the first store of its domain's
    /// home site. A record naming a store the topology does not have is ignored.
    pub fn node(&self, address: &str) -> Option<&Node> {
        if let Some(home) = self.record(address) {
            match self.topology.node(&home.store) {
                Some(node) if node.service_addr("store").is_some() => return Some(node),
                _ => tracing::warn!(user = %address, store = %home.store,
                    "mailbox home names no store of the topology; using the default"),
            }
        }
        self.topology.mailbox_store(address)
    }

    /// The epoch of `address`'s home (0: never moved).
    pub fn epoch(&self, address: &str) -> i64 {
        self.record(address).map_or(0, |h| h.epoch)
    }

    /// A client for the store that serves `address`, with its name.
    pub fn client(&self, address: &str, timeout: Duration) -> Option<(String, StoreClient)> {
        let node = self.node(address)?;
        let client = StoreClient::for_node(node)?.with_timeout(timeout);
        Some((node.name.clone(), client))
    }
}

async fn refresh_loop(homes: Weak<Homes>) {
    let mut failing = false;
    loop {
        let Some(h) = homes.upgrade() else {
            return;
        };
        match h.refresh().await {
            Ok(_) if failing => {
                failing = false;
                tracing::info!("mailbox homes readable again");
            }
            Ok(_) => {}
            Err(e) => {
                metrics::counter!("fabric_mailbox_homes_refresh_failures_total").increment(1);
                if !failing {
                    tracing::warn!(error = %e, "mailbox homes unreadable; keeping the last ones");
                }
                failing = true;
            }
        }
        drop(h);
        tokio::time::sleep(REFRESH).await;
    }
}
