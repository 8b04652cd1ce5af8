//! The loop every queue worker runs: lease a batch from each store in turn, handle its items
//! concurrently, and rest a moment when no store had anything.

use std::future::Future;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::{Leased, StoreClient};

/// How a worker drains one queue.
pub struct Drain<'a> {
    /// The stores to lease from, by name, in order.
    pub stores: &'a [(String, StoreClient)],
    pub queue: &'a str,
    /// Items per lease request.
    pub batch: u32,
    /// How long a leased item is the worker's (longer than handling one can take).
    pub lease: Duration,
    /// The rest when no store had anything.
    pub idle: Duration,
}

impl Drain<'_> {
    /// Leases and hands every item to `handle` (a batch's items at once) until `shutdown`.
    pub async fn run<F, Fut>(&self, shutdown: CancellationToken, handle: F)
    where
        F: Fn(StoreClient, Leased) -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        loop {
            let mut leased = 0;
            for (name, store) in self.stores {
                match store.lease(self.queue, self.batch, self.lease).await {
                    Ok(items) => {
                        leased += items.len();
                        let mut batch = tokio::task::JoinSet::new();
                        for item in items {
                            batch.spawn(handle(store.clone(), item));
                        }
                        while batch.join_next().await.is_some() {}
                    }
                    Err(e) => {
                        tracing::debug!(store = %name, queue = self.queue, error = %e, "queue unreachable")
                    }
                }
            }
            if leased == 0 || shutdown.is_cancelled() {
                tokio::select! {
                    _ = tokio::time::sleep(self.idle) => {}
                    _ = shutdown.cancelled() => return,
                }
            }
        }
    }
}
