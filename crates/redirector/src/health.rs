//! Active health checks, like HAProxy's `option smtpchk`: every `check_interval` each backend gets a
//! fresh connection (with a LOCAL PROXY header when headers are on), must greet with its protocol's
//! line (`220`, `+OK`, `* OK`) within the interval, is told goodbye (QUIT / LOGOUT) and closed. While a
//! state change is under way the next check comes after a quarter interval (HAProxy's `fastinter`),
//! so a dead server is out after about 1.25 intervals and a restarted one back as fast.

use std::sync::Arc;
use std::time::Duration;

use node_runtime::proxy_header;
use tokio::io::AsyncWriteExt;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::forward::{Dialer, read_greeting};
use crate::pool::{Backend, Source};

/// One check: `Ok` when the backend greeted as its protocol should.
pub async fn check(b: &Backend, dialer: &Dialer, interval: Duration) -> Result<(), String> {
    let deadline = Instant::now() + interval;
    let local = proxy_header::encode_local();
    let header = dialer.proxies_to(b).then_some(local.as_slice());
    let mut stream = dialer.connect(b, header, interval).await?;
    let left = deadline.saturating_duration_since(Instant::now());
    read_greeting(&mut stream, b.service, left).await?;
    // Goodbye is a courtesy: the check already passed.
    let _ = tokio::time::timeout(deadline.saturating_duration_since(Instant::now()), async {
        stream.write_all(b.service.goodbye()).await?;
        stream.shutdown().await
    })
    .await;
    Ok(())
}

/// Checks `b` until `stop` is cancelled.
pub async fn run(
    b: Arc<Backend>,
    dialer: Arc<Dialer>,
    interval: Duration,
    stop: CancellationToken,
) {
    // Spread the checks of a pool over the interval instead of firing them together.
    let offset = interval.mul_f64(rand::random_range(0.0..1.0));
    tokio::select! {
        _ = tokio::time::sleep(offset) => {}
        _ = stop.cancelled() => return,
    }
    loop {
        let started = Instant::now();
        match check(&b, &dialer, interval).await {
            Ok(()) => b.success(Source::Check),
            Err(e) => {
                tracing::debug!(backend = %b.name, service = b.service.as_str(), error = %e, "check failed");
                b.failure(Source::Check, &e);
            }
        }
        let wait = if b.transitioning() {
            interval / 4
        } else {
            interval
        };
        tokio::select! {
            _ = tokio::time::sleep_until(started + wait) => {}
            _ = stop.cancelled() => return,
        }
    }
}
