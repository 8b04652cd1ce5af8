//! The durability rule: when a committed batch counts as safe (synced on this store's disk and held by
//! the mirror that counts), and waking the writes that wait for it.

use std::time::Duration;

use tokio::sync::oneshot;

use super::{Durable, LinkStatus, Replication, lock};
use crate::error::StoreError;

impl Replication {
    /// Waits until the batch `lsn` is held by a mirror as the durability rule says, or `deadline` passes.
    pub async fn wait_durable(&self, lsn: u64, deadline: Duration) -> Result<Durable, StoreError> {
        if lsn == 0 {
            return Ok(Durable {
                copies: vec![self.me.clone()],
                degraded: false,
            });
        }
        let until = tokio::time::Instant::now() + deadline;
        loop {
            if let Some(d) = self.durable(lsn) {
                return Ok(d);
            }
            let (tx, rx) = oneshot::channel();
            lock(&self.waiters).entry(lsn).or_default().push(tx);
            // An acknowledgement may have landed between the check and the registration.
            self.wake_durable();
            match tokio::time::timeout_at(until, rx).await {
                // Woken, or dropped by a reset: check again.
                Ok(_) => {}
                Err(_) => {
                    return match self.durable(lsn) {
                        Some(d) => Ok(d),
                        None => {
                            metrics::counter!("fabric_store_unmirrored_writes_total").increment(1);
                            Err(StoreError::Unavailable(format!(
                                "write {lsn} is committed here but was not confirmed durable (synced here and held by a mirror) within {deadline:?}; retry with the same message id"
                            )))
                        }
                    };
                }
            }
        }
    }

    /// The highest LSN that is durable now: synced here, and held by the primary mirror, or by the
    /// fallback while the primary is not in sync.
    fn durable_frontier(&self) -> u64 {
        self.mirrored_frontier().min(self.local_synced())
    }

    fn mirrored_frontier(&self) -> u64 {
        let Some(primary) = self.links.get(self.primary) else {
            return 0;
        };
        let (acked, status) = primary.snapshot();
        let mut frontier = acked.unwrap_or(0);
        if status != LinkStatus::InSync
            && let Some(fb) = self.fallback.and_then(|i| self.links.get(i))
        {
            frontier = frontier.max(fb.snapshot().0.unwrap_or(0));
        }
        frontier
    }

    /// Wakes every waiter whose write is now durable.
    pub(super) fn wake_durable(&self) {
        let frontier = self.durable_frontier();
        let ready = {
            let mut waiters = lock(&self.waiters);
            let later = waiters.split_off(&(frontier + 1));
            std::mem::replace(&mut *waiters, later)
        };
        for tx in ready.into_values().flatten() {
            let _ = tx.send(());
        }
    }

    fn durable(&self, lsn: u64) -> Option<Durable> {
        if self.local_synced() < lsn {
            return None;
        }
        let primary = self.links.get(self.primary)?;
        let (acked, status) = primary.snapshot();
        if acked.unwrap_or(0) >= lsn {
            return Some(Durable {
                copies: vec![self.me.clone(), primary.name.clone()],
                degraded: false,
            });
        }
        if status != LinkStatus::InSync
            && let Some(fb) = self.fallback.and_then(|i| self.links.get(i))
            && fb.snapshot().0.unwrap_or(0) >= lsn
        {
            metrics::counter!("fabric_store_degraded_writes_total").increment(1);
            return Some(Durable {
                copies: vec![self.me.clone(), fb.name.clone()],
                degraded: true,
            });
        }
        None
    }
}
