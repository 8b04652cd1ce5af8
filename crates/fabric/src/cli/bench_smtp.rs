//! `fabric bench smtp`: many senders at once, each message sent the way `fabric send` sends it (MX
//! lookup in the fabric's DNS, exchangers in preference order, the next address when one fails).
//! Prints the rate, the latency percentiles of whole transactions, the failures and which exchanger
//! took how many.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use super::send::{SendError, Target, compose};

#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// The recipient of every message (a mailbox of a customer domain).
    #[arg(long)]
    pub to: String,
    #[arg(long, default_value = "bench@remote.example")]
    pub from: String,
    /// How many messages in all.
    #[arg(long, default_value_t = 1000)]
    pub messages: usize,
    /// Senders at once (each sends its messages one after the other, one session each).
    #[arg(long, default_value_t = 20)]
    pub concurrency: usize,
    /// Size of each body in bytes.
    #[arg(long, default_value_t = 4096)]
    pub size: usize,
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub target: Target,
}

#[derive(Default)]
struct Tally {
    latencies: Vec<Duration>,
    by_host: BTreeMap<String, usize>,
    temporary: usize,
    permanent: usize,
    first_error: Option<String>,
}

pub async fn run(data_dir: &std::path::Path, args: &Args) -> anyhow::Result<()> {
    let sender = Arc::new(args.target.sender(data_dir)?);
    let body: Vec<u8> = (0..args.size)
        .map(|i| {
            if i % 76 == 75 {
                b'\n'
            } else {
                b'a' + (i % 26) as u8
            }
        })
        .collect();
    let to = vec![args.to.clone()];
    let message = Arc::new(compose(&args.from, &to, "fabric bench smtp", &body));
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..args.concurrency.max(1) {
        let (sender, message, next, to) =
            (sender.clone(), message.clone(), next.clone(), to.clone());
        let (from, total) = (args.from.clone(), args.messages);
        workers.spawn(async move {
            let mut tally = Tally::default();
            while next.fetch_add(1, Ordering::Relaxed) < total {
                let t = Instant::now();
                match sender.send(&from, &to, &message).await {
                    Ok(sent) => {
                        tally.latencies.push(t.elapsed());
                        *tally.by_host.entry(sent.addr.ip().to_string()).or_default() += 1;
                    }
                    Err(e) => {
                        match e {
                            SendError::Permanent(_) => tally.permanent += 1,
                            _ => tally.temporary += 1,
                        }
                        tally.first_error.get_or_insert_with(|| e.to_string());
                    }
                }
            }
            tally
        });
    }
    let mut all = Tally::default();
    while let Some(t) = workers.join_next().await {
        let t = t?;
        all.latencies.extend(t.latencies);
        for (h, n) in t.by_host {
            *all.by_host.entry(h).or_default() += n;
        }
        all.temporary += t.temporary;
        all.permanent += t.permanent;
        if all.first_error.is_none() {
            all.first_error = t.first_error;
        }
    }
    let elapsed = started.elapsed();
    report(args, &mut all, elapsed);
    if all.temporary + all.permanent > 0 {
        anyhow::bail!(
            "{} of {} messages not sent; first error: {}",
            all.temporary + all.permanent,
            args.messages,
            all.first_error.unwrap_or_default()
        );
    }
    Ok(())
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn report(args: &Args, t: &mut Tally, elapsed: Duration) {
    t.latencies.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let sent = t.latencies.len();
    let rate = sent as f64 / elapsed.as_secs_f64().max(1e-9);
    let (p50, p90, p99) = (
        percentile(&t.latencies, 0.50),
        percentile(&t.latencies, 0.90),
        percentile(&t.latencies, 0.99),
    );
    if args.json {
        let v = serde_json::json!({
            "sent": sent, "temporary_failures": t.temporary, "permanent_failures": t.permanent,
            "seconds": elapsed.as_secs_f64(), "per_second": rate,
            "p50_ms": ms(p50), "p90_ms": ms(p90), "p99_ms": ms(p99),
            "by_host": t.by_host,
        });
        println!("{v}");
        return;
    }
    println!(
        "sent {sent} of {} in {:.2} s: {rate:.0} msg/s with {} senders ({} bytes each)",
        args.messages,
        elapsed.as_secs_f64(),
        args.concurrency,
        args.size
    );
    println!(
        "transaction latency: p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms",
        ms(p50),
        ms(p90),
        ms(p99)
    );
    println!(
        "failures: {} temporary, {} permanent",
        t.temporary, t.permanent
    );
    for (host, n) in &t.by_host {
        println!("  {host:<16} {n}");
    }
}
