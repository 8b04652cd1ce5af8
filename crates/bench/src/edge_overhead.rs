//! Edge rows: the same SMTP load straight to one Internet mail server and through the whole edge
//! (an Internet router, then the site's redirector, then whichever mail server it picks), in
//! interleaved rounds. Each transaction is a whole session as a remote MTA runs it (connect, greeting,
//! EHLO, MAIL, RCPT, DATA, 250, QUIT), timed from connect to the answer to QUIT, so the percentiles
//! are of what a sender waits for, and the 250 means the message is mirrored on two stores.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::bail;
use hdrhistogram::Histogram;
use smtp::client::{self, Outcome};

use crate::Sample;
use crate::summary::{Goal, Row, Summary};

/// `messages` transactions over `sessions` concurrent senders to `target`.
pub async fn round(
    target: SocketAddr,
    rcpt: &str,
    messages: usize,
    sessions: usize,
    body: Arc<Vec<u8>>,
) -> anyhow::Result<Sample> {
    let next = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..sessions.max(1) {
        let (next, body, rcpt) = (next.clone(), body.clone(), vec![rcpt.to_string()]);
        tasks.spawn(async move {
            let mut h = Histogram::<u64>::new(3)?;
            let mut failed = Vec::new();
            while next.fetch_add(1, Ordering::Relaxed) < messages {
                let t = Instant::now();
                let outcome = client::deliver(
                    target,
                    "bench.remote.example",
                    "sender@remote.example",
                    &rcpt,
                    &body,
                    Duration::from_secs(30),
                )
                .await;
                match outcome.first() {
                    Some(Outcome::Delivered(_)) => {
                        h.record(t.elapsed().as_micros() as u64)?;
                    }
                    other => failed.push(format!("{other:?}")),
                }
            }
            anyhow::Ok((h, failed))
        });
    }
    let mut all = Histogram::<u64>::new(3)?;
    let mut failed = Vec::new();
    while let Some(r) = tasks.join_next().await {
        let (h, f) = r??;
        all.add(&h)?;
        failed.extend(f);
    }
    let elapsed = start.elapsed();
    if !failed.is_empty() {
        bail!(
            "{} of {messages} transactions to {target} failed; first: {}",
            failed.len(),
            failed[0]
        );
    }
    Ok(Sample::from_histogram(&all, elapsed))
}

/// A 4 KiB message body with headers, CRLF lines.
pub fn message() -> Vec<u8> {
    let mut m =
        b"From: sender@remote.example\r\nTo: ann@acme.example\r\nSubject: edge bench\r\n\r\n"
            .to_vec();
    while m.len() < 4096 {
        m.extend_from_slice(
            b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789\r\n",
        );
    }
    m
}

/// The rows: for each sender count, `rounds` interleaved rounds of `messages` transactions, straight
/// to the first Internet mail server and through the first Internet router of the same site.
pub async fn rows(
    launcher: &fabric::Launcher,
    rounds: usize,
    messages: usize,
    senders: &[usize],
    summary: &mut Summary,
) -> anyhow::Result<()> {
    use anyhow::Context;
    use topology::Role;
    let t = &launcher.topology;
    let mx = t
        .nodes_with_role(Role::InetMx)
        .next()
        .context("the topology has no inet-mx")?;
    let Some(router) = t
        .routers(&mx.site, "internet")
        .into_iter()
        .find(|r| t.acl_allows("internet", "smtp") && r.ports.contains_key("smtp"))
    else {
        println!("\nedge overhead: skipped (the topology has no Internet router forwarding SMTP)");
        summary.skip(
            "edge overhead",
            "the topology has no Internet router forwarding SMTP",
        );
        return Ok(());
    };
    let user = "ann@acme.example";
    let directory = t.directory_store().context("no directory store")?;
    store_client::StoreClient::new(format!(
        "http://{}",
        directory.service_addr("store").context("store port")?
    ))
    .put_user(
        user,
        &serde_json::json!({"password_hash": crate::BENCH_HASH, "notify": "none"}),
    )
    .await?;
    let direct = mx.service_addr("smtp").context("smtp port")?;
    let via = router.service_addr("smtp").context("smtp port")?;
    let body = Arc::new(message());
    for &sessions in senders {
        let (straight, edge) = compare(
            mx,
            router,
            direct,
            via,
            user,
            rounds,
            messages,
            sessions,
            body.clone(),
        )
        .await?;
        let area = "edge overhead (issue 4)";
        let path = format!("through {} + redirector, {sessions} senders", router.name);
        let what = format!("straight to {}", mx.name);
        summary.push(
            Row::new(area, format!("{path}: rate"), "msg/s")
                .fabric(edge.per_second)
                .against(straight.per_second, &what),
        );
        summary.push(
            Row::new(area, format!("{path}: session p50"), "ms")
                .fabric(edge.p50_ms)
                .against(straight.p50_ms, &what),
        );
        summary.push(
            Row::new(area, format!("{path}: session p99"), "ms")
                .fabric(edge.p99_ms)
                .against(straight.p99_ms, &what)
                .goal(Goal::RatioBelow(1.15)),
        );
    }
    Ok(())
}

/// One pair of rows (straight, through the edge) at one sender count; their medians.
#[allow(clippy::too_many_arguments)]
async fn compare(
    mx: &topology::Node,
    router: &topology::Node,
    direct: SocketAddr,
    via: SocketAddr,
    user: &str,
    rounds: usize,
    messages: usize,
    sessions: usize,
    body: Arc<Vec<u8>>,
) -> anyhow::Result<(Sample, Sample)> {
    // Warm both paths (connections to the stores, health state of the redirector).
    round(direct, user, sessions, sessions, body.clone()).await?;
    round(via, user, sessions, sessions, body.clone()).await?;
    let mut samples: [Vec<Sample>; 2] = [Vec::new(), Vec::new()];
    for r in 0..rounds {
        eprintln!(
            "edge overhead, {sessions} senders: round {}/{rounds}",
            r + 1
        );
        for k in 0..2 {
            let which = (r + k) % 2;
            let target = if which == 0 { direct } else { via };
            samples[which].push(round(target, user, messages, sessions, body.clone()).await?);
        }
    }
    let med = |v: &[Sample]| crate::median(v);
    let (d, e) = (med(&samples[0]), med(&samples[1]));
    println!();
    println!(
        "Edge overhead: {messages} SMTP transactions (4 KiB, each its own session, 250 = mirrored) over {sessions} senders per round, {rounds} rounds interleaved; medians."
    );
    println!("{:<48} {:>9} {:>9} {:>9}", "", "msg/s", "p50 ms", "p99 ms");
    println!(
        "{:<48} {:>9.0} {:>9.2} {:>9.2}",
        format!("straight to {}", mx.name),
        d.per_second,
        d.p50_ms,
        d.p99_ms
    );
    println!(
        "{:<48} {:>9.0} {:>9.2} {:>9.2}",
        format!("through {} + its redirector", router.name),
        e.per_second,
        e.p50_ms,
        e.p99_ms
    );
    println!(
        "edge: time x{:.2}, p99 x{:.2} (goal: p99 under x1.15)",
        d.per_second / e.per_second.max(1e-9),
        e.p99_ms / d.p99_ms.max(1e-9)
    );
    Ok((d, e))
}
