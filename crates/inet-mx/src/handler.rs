//! What the Internet mail server does with a session's mail: the inbound checks and the hand-off.
//!
//! - sender: the fabric's blocklist (an address or a whole domain) refuses with 550 5.7.1;
//! - recipient: only the fabric's customer domains (550 5.7.1 relaying denied otherwise: never an open
//!   relay), and only existing mailboxes (550 5.1.1), read from the directory store or, when it does
//!   not answer, from a mirror's copy of it;
//! - DATA: a fabric message id, a Received header, and the message enqueued on `inbound` in this
//!   site's store, mirrored; 250 only after the store says it is durable.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use serde_json::{Value, json};
use smtp::{Address, Envelope, Handler, Reply};
use store_client::StoreClient;
use store_client::directory::Directory;
use tokio::sync::Mutex;
use topology::Topology;

/// How long a read of the blocklist is reused.
const BLOCKLIST_TTL: Duration = Duration::from_secs(2);

pub struct MxHandler {
    node: String,
    hostname: String,
    topology: Arc<Topology>,
    /// This site's stores, in order: where mail is written.
    stores: Vec<(String, StoreClient)>,
    /// The directory store, then its mirrors' copies.
    directory: Directory,
    blocklist: Mutex<Option<(Instant, Vec<String>)>>,
}

fn client(node: &topology::Node) -> Option<StoreClient> {
    StoreClient::for_node(node).map(|c| c.with_timeout(Duration::from_secs(30)))
}

impl MxHandler {
    pub fn new(topology: Arc<Topology>, node: &topology::Node) -> MxHandler {
        let stores = topology
            .site_stores(&node.site)
            .into_iter()
            .filter_map(|s| Some((s.name.clone(), client(s)?)))
            .collect();
        let directory = Directory::new(&topology);
        MxHandler {
            node: node.name.clone(),
            hostname: format!("{}.{}", node.name, topology.fabric.name),
            topology,
            stores,
            directory,
            blocklist: Mutex::new(None),
        }
    }

    pub fn hostname(&self) -> &str {
        &self.hostname
    }

    async fn blocklist(&self) -> Result<Vec<String>, String> {
        let mut cached = self.blocklist.lock().await;
        if let Some((at, list)) = cached.as_ref()
            && at.elapsed() < BLOCKLIST_TTL
        {
            return Ok(list.clone());
        }
        let list = self
            .directory
            .blocklist()
            .await
            .map_err(|e| e.to_string())?;
        *cached = Some((Instant::now(), list.clone()));
        Ok(list)
    }

    async fn user_exists(&self, address: &str) -> Result<bool, String> {
        self.directory
            .user(address)
            .await
            .map(|u| u.is_some())
            .map_err(|e| e.to_string())
    }

    fn received(&self, env: &Envelope, id: &str) -> String {
        let date = httpdate::fmt_http_date(SystemTime::now());
        // RFC 5322 dates use "+0000"; httpdate writes "GMT", which RFC 5322 also accepts (obs-zone).
        format!(
            "Received: from {} ([{}])\r\n\tby {} (Mail Fabric) with {} id {id};\r\n\t{date}\r\n",
            env.helo,
            env.peer.ip(),
            self.hostname,
            if env.tls { "ESMTPS" } else { "ESMTP" },
        )
    }
}

impl Handler for MxHandler {
    async fn check_sender(&self, _env: &Envelope, from: Option<&Address>) -> Result<(), Reply> {
        let Some(from) = from else {
            return Ok(());
        };
        let list = match self.blocklist().await {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(error = %e, "blocklist unreadable; refusing for now");
                return Err(Reply::new(
                    451,
                    "4.3.0",
                    "cannot check the sender now; try later",
                ));
            }
        };
        let address = from.as_string().to_ascii_lowercase();
        if list.iter().any(|e| *e == address || *e == from.domain) {
            metrics::counter!("fabric_inet_mx_blocked_senders_total").increment(1);
            tracing::info!(sender = %address, "sender on the blocklist: refused");
            return Err(Reply::new(550, "5.7.1", "sender refused by policy"));
        }
        Ok(())
    }

    async fn check_recipient(&self, _env: &Envelope, rcpt: &Address) -> Result<(), Reply> {
        if !self.topology.is_customer_domain(&rcpt.domain) {
            metrics::counter!("fabric_inet_mx_relay_denied_total").increment(1);
            return Err(Reply::new(
                550,
                "5.7.1",
                "relaying denied: not a domain of this fabric",
            ));
        }
        let address = rcpt.as_string().to_ascii_lowercase();
        match self.user_exists(&address).await {
            Ok(true) => Ok(()),
            Ok(false) => {
                metrics::counter!("fabric_inet_mx_unknown_users_total").increment(1);
                Err(Reply::new(550, "5.1.1", "no such mailbox"))
            }
            Err(e) => {
                tracing::warn!(error = %e, "directory unreadable");
                Err(Reply::new(
                    451,
                    "4.3.0",
                    "cannot check the recipient now; try later",
                ))
            }
        }
    }

    async fn deliver(&self, env: &Envelope, message: Vec<u8>) -> Reply {
        let id = uuid::Uuid::now_v7().simple().to_string();
        let mut body = self.received(env, &id).into_bytes();
        body.extend_from_slice(&message);
        let infected = crate::antivirus::scan(&message);
        let meta: Value = json!({
            "quarantine": infected,
            "from": env.from.as_ref().map(|a| a.as_string()),
            "rcpts": env.rcpts.iter().map(|a| a.as_string().to_ascii_lowercase()).collect::<Vec<_>>(),
            "helo": env.helo,
            "peer": env.peer.to_string(),
            "received_by": self.node,
        });
        let started = Instant::now();
        for (name, store) in &self.stores {
            match store
                .enqueue("inbound", Some(&id), Some(&meta), body.clone())
                .await
            {
                Ok(w) => {
                    metrics::counter!("fabric_inet_mx_accepted_total").increment(1);
                    if let Some(virus) = infected {
                        metrics::counter!("fabric_inet_mx_infected_total").increment(1);
                        tracing::warn!(msg_id = %id, virus, "infected message: it goes to the recipients' Quarantine, never to their INBOX");
                    }
                    metrics::histogram!("fabric_inet_mx_store_seconds")
                        .record(started.elapsed().as_secs_f64());
                    tracing::info!(msg_id = %id, store = %name, copies = ?w.copies, degraded = w.degraded,
                        bytes = body.len(), rcpts = env.rcpts.len(), "accepted");
                    let (store, node) = (store.clone(), self.node.clone());
                    let detail = format!(
                        "from {} for {} recipient(s)",
                        env.peer.ip(),
                        env.rcpts.len()
                    );
                    let trace_id = id.clone();
                    tokio::spawn(async move {
                        if let Err(e) = store
                            .trace(&trace_id, &node, "accepted", Some(&detail))
                            .await
                        {
                            tracing::warn!(msg_id = %trace_id, error = %e, "trace not written");
                        }
                    });
                    return Reply::new(250, "2.0.0", format!("queued as {id}"));
                }
                Err(e) => {
                    tracing::warn!(msg_id = %id, store = %name, error = %e, "store refused or unreachable; trying the next");
                }
            }
        }
        metrics::counter!("fabric_inet_mx_deferred_total").increment(1);
        Reply::new(
            451,
            "4.3.0",
            "cannot store the message now; try again later",
        )
    }
}
