//! The end of the pipeline: the hand-off to the store. MAIL FROM and RCPT TO that got this far are
//! accepted. A message gets a Received header and is enqueued on `inbound` in this site's first
//! store (the next one if it fails), with the envelope and the antivirus verdict as metadata; the
//! 250 ("queued as ID") goes out only once the store says the write is mirrored (invariant 1).

use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime};

use serde_json::{Value, json};
use smtp::{Envelope, Reply};
use store_client::{Hop, StoreClient};
use topology::Topology;
use tower::Service;

use super::{CheckFuture, Inbound, Message, Step, pass};

struct Shared {
    node: String,
    hostname: String,
    /// Where accepted mail goes: `inbound` (the Internet mail server) or `relay` (a relay server).
    queue: &'static str,
    /// A relay names the fabric id in the message (`smtp::fabric_id`) for its later hand-over.
    name_id: bool,
    /// This site's stores, in order: where mail is written.
    stores: Vec<(String, StoreClient)>,
}

#[derive(Clone)]
pub struct StoreHandoff {
    shared: Arc<Shared>,
}

fn client(node: &topology::Node) -> Option<StoreClient> {
    StoreClient::for_node(node).map(|c| c.with_timeout(Duration::from_secs(30)))
}

impl StoreHandoff {
    pub fn new(topology: &Topology, node: &topology::Node, hostname: &str) -> StoreHandoff {
        Self::to_queue(topology, node, hostname, "inbound", false)
    }

    /// The hand-off onto another queue of the site's stores; with `name_id` the message carries an
    /// `X-Fabric-Id` header under the Received line (what a relay hands over later).
    pub fn to_queue(
        topology: &Topology,
        node: &topology::Node,
        hostname: &str,
        queue: &'static str,
        name_id: bool,
    ) -> StoreHandoff {
        let stores = topology
            .site_stores(&node.site)
            .into_iter()
            .filter_map(|s| Some((s.name.clone(), client(s)?)))
            .collect();
        StoreHandoff {
            shared: Arc::new(Shared {
                node: node.name.clone(),
                hostname: hostname.to_string(),
                queue,
                name_id,
                stores,
            }),
        }
    }
}

impl Shared {
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

    async fn deliver(&self, env: &Envelope, message: Message) -> Reply {
        let id = message.id;
        let mut body = self.received(env, &id).into_bytes();
        if self.name_id && smtp::fabric_id::valid(&id) {
            body.extend_from_slice(smtp::fabric_id::header_line(&id).as_bytes());
        }
        body.extend_from_slice(&message.body);
        let received_at_ms = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        let meta: Value = json!({
            "quarantine": message.quarantine,
            "from": env.from.as_ref().map(|a| a.as_string()),
            "rcpts": env.rcpts.iter().map(|a| a.as_string().to_ascii_lowercase()).collect::<Vec<_>>(),
            "helo": env.helo,
            "peer": env.peer.to_string(),
            "received_by": self.node,
            "accepted_by": self.node,
            "fabric_id": id,
            "received_at_ms": received_at_ms,
        });
        let started = Instant::now();
        // The trace's first hop is written with the message itself: one write, before the 250.
        let detail = format!(
            "from {} for {} recipient(s)",
            env.peer.ip(),
            env.rcpts.len()
        );
        let hop = Hop {
            node: &self.node,
            action: "accepted",
            detail: Some(&detail),
        };
        for (name, store) in &self.stores {
            match store
                .enqueue_traced(self.queue, Some(&id), Some(&meta), Some(&hop), body.clone())
                .await
            {
                Ok(w) => {
                    metrics::counter!("fabric_inet_mx_accepted_total", "queue" => self.queue)
                        .increment(1);
                    metrics::histogram!("fabric_inet_mx_store_seconds")
                        .record(started.elapsed().as_secs_f64());
                    tracing::info!(msg_id = %id, store = %name, copies = ?w.copies, degraded = w.degraded,
                        queue = self.queue, bytes = body.len(), rcpts = env.rcpts.len(), "accepted");
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

impl Service<Inbound> for StoreHandoff {
    type Response = Reply;
    type Error = std::convert::Infallible;
    type Future = CheckFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Inbound) -> CheckFuture {
        let shared = self.shared.clone();
        Box::pin(async move {
            Ok(match req.step {
                Step::Sender(_) | Step::Recipient(_) => pass(),
                Step::Data(message) => shared.deliver(&req.env, message).await,
            })
        })
    }
}
