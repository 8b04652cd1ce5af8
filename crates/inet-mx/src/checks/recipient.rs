//! The recipient check (RCPT TO): only the fabric's customer domains (550 5.7.1 relaying denied
//! otherwise: never an open relay, `fabric_inet_mx_relay_denied_total`), and only existing mailboxes
//! (550 5.1.1, `fabric_inet_mx_unknown_users_total`), read from the directory store or, when it does
//! not answer, from a mirror's copy of it; 451 4.3.0 when no copy can be read.

use std::sync::Arc;
use std::task::{Context, Poll};

use smtp::{Address, Reply};
use store_client::directory::Directory;
use topology::Topology;
use tower::{Layer, Service, ServiceExt};

use super::{CheckFuture, Inbound, Next, Step};

struct Shared {
    topology: Arc<Topology>,
    directory: Directory,
    /// Only these domains (a relay: the domains it stands in for); `None`: every customer domain.
    only: Option<Vec<String>>,
}

#[derive(Clone)]
pub struct RecipientLayer {
    shared: Arc<Shared>,
}

impl RecipientLayer {
    pub fn new(topology: Arc<Topology>, directory: Directory) -> RecipientLayer {
        RecipientLayer {
            shared: Arc::new(Shared {
                topology,
                directory,
                only: None,
            }),
        }
    }

    /// The check of a relay server: only `domains` (those whose home is another site).
    pub fn for_domains(
        topology: Arc<Topology>,
        directory: Directory,
        domains: Vec<String>,
    ) -> RecipientLayer {
        RecipientLayer {
            shared: Arc::new(Shared {
                topology,
                directory,
                only: Some(domains),
            }),
        }
    }
}

impl<S> Layer<S> for RecipientLayer {
    type Service = Recipient<S>;
    fn layer(&self, inner: S) -> Recipient<S> {
        Recipient {
            shared: self.shared.clone(),
            inner,
        }
    }
}

#[derive(Clone)]
pub struct Recipient<S> {
    shared: Arc<Shared>,
    inner: S,
}

impl Shared {
    async fn check(&self, rcpt: &Address) -> Result<(), Reply> {
        let outside = match &self.only {
            Some(domains) => !domains.iter().any(|d| d.eq_ignore_ascii_case(&rcpt.domain)),
            None => !self.topology.is_customer_domain(&rcpt.domain),
        };
        if outside {
            metrics::counter!("fabric_inet_mx_relay_denied_total").increment(1);
            return Err(Reply::new(
                550,
                "5.7.1",
                "relaying denied: not a domain of this fabric",
            ));
        }
        let address = rcpt.as_string().to_ascii_lowercase();
        match self.directory.user_recent(&address).await {
            Ok(Some(_)) => Ok(()),
            Ok(None) => {
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
}

impl<S: Next> Service<Inbound> for Recipient<S> {
    type Response = Reply;
    type Error = std::convert::Infallible;
    type Future = CheckFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Inbound) -> CheckFuture {
        let (shared, inner) = (self.shared.clone(), self.inner.clone());
        Box::pin(async move {
            if let Step::Recipient(rcpt) = &req.step
                && let Err(refused) = shared.check(rcpt).await
            {
                return Ok(refused);
            }
            inner.oneshot(req).await
        })
    }
}
