//! What goes back to a sender: a delay notice or a bounce (RFC 3464, `smtp::dsn`). A sender in a
//! customer domain gets it in the INBOX of the mailbox's home store (exactly once, keyed by
//! `ID.delay` / `ID.bounce`); anyone else gets it over SMTP from the null reverse path (RFC 5321 6.1:
//! a report is never answered by another report) at the remote MX (today the Internet zone's sink,
//! which acts as every remote MX). The null sender gets nothing.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use smtp::client::{self, Outcome};
use store_client::StoreClient;
use store_client::homes::Homes;
use topology::{Role, Topology};

pub struct Returns {
    topology: Arc<Topology>,
    /// Who serves each mailbox: a report goes to the sender's current home.
    homes: Arc<Homes>,
    hostname: String,
}

/// What became of a report.
#[derive(Debug, PartialEq, Eq)]
pub enum Sent {
    /// Stored or handed over (or nobody to send it to).
    Done(String),
    /// Try again later.
    Later(String),
}

impl Returns {
    pub fn new(topology: Arc<Topology>, hostname: &str) -> Returns {
        Returns {
            homes: Homes::spawn(topology.clone()),
            topology,
            hostname: hostname.to_string(),
        }
    }

    pub fn hostname(&self) -> &str {
        &self.hostname
    }

    fn remote_mx(&self) -> Option<SocketAddr> {
        self.topology
            .nodes_with_role(Role::Sink)
            .find_map(|n| n.service_addr("smtp"))
    }

    /// Sends `report` (a DSN for message `id`, kind `suffix`: "delay" or "bounce") to `sender`.
    pub async fn send(&self, id: &str, suffix: &str, sender: &str, report: Vec<u8>) -> Sent {
        if sender.is_empty() {
            return Sent::Done("the null sender gets no report".into());
        }
        let domain = sender.rsplit_once('@').map(|d| d.1).unwrap_or("");
        if self.topology.is_customer_domain(domain) {
            let Some(home) = self.homes.node(sender) else {
                return Sent::Later(format!("no home store for {sender}"));
            };
            let Some(store) = StoreClient::for_node(home) else {
                return Sent::Later(format!("{} has no store port", home.name));
            };
            let report_id = format!("{id}.{suffix}");
            return match store
                .append(sender, "INBOX", Some(&report_id), &[], report)
                .await
            {
                Ok(_) => Sent::Done(format!("{report_id} in {sender}'s INBOX on {}", home.name)),
                Err(e) => Sent::Later(format!("{sender}'s INBOX: {e}")),
            };
        }
        let Some(mx) = self.remote_mx() else {
            return Sent::Later("no remote MX known".into());
        };
        let rcpts = [sender.to_string()];
        let timeout = Duration::from_secs(30);
        let outcome = client::deliver(mx, &self.hostname, "", &rcpts, &report, timeout).await;
        match outcome.into_iter().next() {
            Some(Outcome::Delivered(w)) => Sent::Done(format!("to {sender} at {mx}: {w}")),
            // A report the sender's MX refuses for good cannot be reported in turn.
            Some(Outcome::Permanent(w)) => Sent::Done(format!("refused by {mx}, dropped: {w}")),
            Some(Outcome::Temporary(w)) => Sent::Later(w),
            None => Sent::Later("no outcome".into()),
        }
    }
}
