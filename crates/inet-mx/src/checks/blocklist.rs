//! The sender blocklist (MAIL FROM): an address or a whole domain on the store's blocklist is refused
//! with 550 5.7.1 and counted (`fabric_inet_mx_blocked_senders_total`). A list that cannot be read
//! gives 451 4.3.0 (try later), never a silent accept. The list is reused for two seconds.

use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use smtp::Reply;
use store_client::directory::Directory;
use tokio::sync::Mutex;
use tower::{Layer, Service, ServiceExt};

use super::{CheckFuture, Inbound, Next, Step};

/// How long a read of the blocklist is reused.
const BLOCKLIST_TTL: Duration = Duration::from_secs(2);

struct Shared {
    directory: Directory,
    cached: Mutex<Option<(Instant, Vec<String>)>>,
}

#[derive(Clone)]
pub struct BlocklistLayer {
    shared: Arc<Shared>,
}

impl BlocklistLayer {
    pub fn new(directory: Directory) -> BlocklistLayer {
        BlocklistLayer {
            shared: Arc::new(Shared {
                directory,
                cached: Mutex::new(None),
            }),
        }
    }
}

impl<S> Layer<S> for BlocklistLayer {
    type Service = Blocklist<S>;
    fn layer(&self, inner: S) -> Blocklist<S> {
        Blocklist {
            shared: self.shared.clone(),
            inner,
        }
    }
}

#[derive(Clone)]
pub struct Blocklist<S> {
    shared: Arc<Shared>,
    inner: S,
}

impl Shared {
    async fn list(&self) -> Result<Vec<String>, String> {
        let mut cached = self.cached.lock().await;
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

    async fn check(&self, from: &smtp::Address) -> Result<(), Reply> {
        let list = match self.list().await {
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
}

impl<S: Next> Service<Inbound> for Blocklist<S> {
    type Response = Reply;
    type Error = std::convert::Infallible;
    type Future = CheckFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Inbound) -> CheckFuture {
        let (shared, inner) = (self.shared.clone(), self.inner.clone());
        Box::pin(async move {
            if let Step::Sender(Some(from)) = &req.step
                && let Err(refused) = shared.check(from).await
            {
                return Ok(refused);
            }
            inner.oneshot(req).await
        })
    }
}
