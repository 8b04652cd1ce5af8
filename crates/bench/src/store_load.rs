//! Mirrored store writes: `concurrency` clients each enqueueing bodies (4 KiB by default) back to back,
//! each on its own kept-alive connection (see `lean_http`).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use crate::Sample;
use crate::lean_http::Conn;

/// Runs `concurrency` writers against the store at `addr` for `duration`; every write must come back
/// with two copies (this store and its mirror), else the run fails.
pub async fn enqueue(
    addr: std::net::SocketAddr,
    concurrency: usize,
    duration: Duration,
    body_bytes: usize,
) -> anyhow::Result<Sample> {
    let stop = Arc::new(AtomicBool::new(false));
    let single_copy = Arc::new(AtomicU64::new(0));
    let body = Arc::new(body(body_bytes));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..concurrency {
        let stop = stop.clone();
        let single_copy = single_copy.clone();
        let body = body.clone();
        tasks.spawn(async move {
            let mut hist = Histogram::<u64>::new(3)?;
            let mut conn = Conn::connect(addr).await?;
            while !stop.load(Ordering::Relaxed) {
                // Ids as the mail servers make them (UUIDv7: time-ordered), so each write lands at the
                // end of the store's message-id index as in real traffic.
                let id = format!("bench-{}", uuid::Uuid::now_v7().simple());
                let t = Instant::now();
                let written = conn.enqueue("bench", &id, &body).await?;
                hist.record(t.elapsed().as_micros() as u64)?;
                if written.copies < 2 {
                    single_copy.fetch_add(1, Ordering::Relaxed);
                }
            }
            anyhow::Ok(hist)
        });
    }
    let start = Instant::now();
    tokio::time::sleep(duration).await;
    stop.store(true, Ordering::Relaxed);
    let mut total = Histogram::<u64>::new(3)?;
    while let Some(joined) = tasks.join_next().await {
        total.add(&joined??)?;
    }
    let elapsed = start.elapsed();
    let unmirrored = single_copy.load(Ordering::Relaxed);
    if unmirrored > 0 {
        anyhow::bail!(
            "{unmirrored} writes were acknowledged with one copy: the mirror is not in the run"
        );
    }
    Ok(Sample::from_histogram(&total, elapsed))
}

fn body(len: usize) -> Vec<u8> {
    let mut body = b"Subject: bench\r\n\r\n".to_vec();
    body.resize(len.max(body.len()), b'b');
    body
}
