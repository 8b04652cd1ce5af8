//! What the Internet mail server does with a session's mail: each SMTP step (MAIL FROM, RCPT TO,
//! the end of DATA) goes through the pipeline of inbound checks in [`crate::checks`] (recipient,
//! antivirus, sender blocklist, notification) down to the hand-off to the store, and the session
//! answers with what the pipeline answers.

use std::sync::Arc;

use smtp::{Address, Envelope, Handler, Reply};
use store_client::directory::Directory;
use topology::Topology;
use tower::ServiceExt;

use crate::checks::{self, Inbound, Message, Pipeline, Step};
use crate::notifier::Notifier;

pub struct MxHandler {
    hostname: String,
    pipeline: Pipeline,
    /// The relays' addresses: only their `X-Fabric-Id` is taken (see `smtp::fabric_id`).
    relays: Vec<std::net::Ipv4Addr>,
}

impl MxHandler {
    pub fn new(topology: Arc<Topology>, node: &topology::Node) -> MxHandler {
        let hostname = format!("{}.{}", node.name, topology.fabric.name);
        // The directory store, then its mirrors' copies.
        let directory = Directory::new(&topology);
        let relays = topology.relay_addresses();
        let pipeline = checks::pipeline(
            checks::recipient::RecipientLayer::new(topology.clone(), directory.clone()),
            checks::blocklist::BlocklistLayer::new(directory.clone()),
            checks::notify::NotifyLayer::new(Notifier::new(&topology, directory, &hostname)),
            checks::handoff::StoreHandoff::new(&topology, node, &hostname),
        );
        MxHandler {
            hostname,
            pipeline,
            relays,
        }
    }

    /// A handler running another pipeline (a relay's: its own recipient rule and queue). It takes no
    /// `X-Fabric-Id` from anyone.
    pub fn with_pipeline(hostname: String, pipeline: Pipeline) -> MxHandler {
        MxHandler {
            hostname,
            pipeline,
            relays: Vec::new(),
        }
    }

    pub fn hostname(&self) -> &str {
        &self.hostname
    }

    async fn run(&self, env: &Envelope, step: Step) -> Reply {
        let req = Inbound {
            env: env.clone(),
            step,
        };
        match self.pipeline.clone().oneshot(req).await {
            Ok(reply) => reply,
            Err(never) => match never {},
        }
    }
}

impl Handler for MxHandler {
    async fn check_sender(&self, env: &Envelope, from: Option<&Address>) -> Result<(), Reply> {
        let reply = self.run(env, Step::Sender(from.cloned())).await;
        if reply.is_positive() {
            Ok(())
        } else {
            Err(reply)
        }
    }

    async fn check_recipient(&self, env: &Envelope, rcpt: &Address) -> Result<(), Reply> {
        let reply = self.run(env, Step::Recipient(rcpt.clone())).await;
        if reply.is_positive() {
            Ok(())
        } else {
            Err(reply)
        }
    }

    async fn deliver(&self, env: &Envelope, message: Vec<u8>) -> Reply {
        // A relay handing over held mail names the id it accepted the message under, so a second
        // hand-over of the same message is recognised downstream (exactly once into the mailbox).
        let from_relay = match env.peer.ip() {
            std::net::IpAddr::V4(ip) => self.relays.contains(&ip),
            std::net::IpAddr::V6(_) => false,
        };
        let relayed = from_relay
            .then(|| smtp::fabric_id::find(&message))
            .flatten();
        if relayed.is_some() {
            metrics::counter!("fabric_inet_mx_relayed_total").increment(1);
        }
        let message = Message {
            id: relayed.unwrap_or_else(|| uuid::Uuid::now_v7().simple().to_string()),
            body: message,
            quarantine: None,
        };
        self.run(env, Step::Data(message)).await
    }
}
