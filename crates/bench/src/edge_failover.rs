//! The failover round of the edge rows: a load of concurrent SMTP sessions (one message each, the
//! bench's own client, because `smtp-source` exits at its first failed session) through a proxy; one
//! `smtp-sink` backend is SIGKILLed under it; the round measures how long the proxy takes to mark it
//! down (our `/status`; HAProxy's stats socket `show stat`), how long to mark it up again after a
//! restart, and which sessions failed: in flight on the killed sink (no L4 proxy can save those) or
//! started after the kill (the ones a proxy should never fail).

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use store_client::{Method, StoreClient};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::OnceCell;

use crate::edge::{self, Options, Proc, SINKS, System};
use crate::summary::{Goal, Row, Summary};

/// One failover round.
#[derive(Debug, Clone, Default)]
pub struct Failover {
    pub down_s: Option<f64>,
    pub up_s: Option<f64>,
    pub failed_in_flight: u64,
    pub failed_new: u64,
    /// Sessions per second over the round (kill, restart and waits included).
    pub per_s: f64,
    /// Whether the round ran under load (idle rounds see the active checks alone).
    pub loaded: bool,
}

/// Whether the proxy has the first sink in its pool (`None`: could not tell).
async fn first_sink_up(s: System, dir: &Path) -> Option<bool> {
    match s {
        System::Direct => None,
        System::Redirector => {
            let resp = StoreClient::new(format!("http://{}", edge::REDIRECTOR_ADMIN))
                .with_timeout(Duration::from_secs(1))
                .raw(Method::GET, "/status", &[], Vec::<u8>::new())
                .await
                .ok()?;
            let v: serde_json::Value = serde_json::from_slice(&resp.body).ok()?;
            let b = v["counters"]["services"]["smtp"]["backends"]
                .as_array()?
                .iter()
                .find(|b| b["backend"] == "sink-1")?
                .clone();
            Some(b["state"] == "up")
        }
        System::Haproxy => {
            let mut sock = tokio::net::UnixStream::connect(dir.join("haproxy.sock"))
                .await
                .ok()?;
            sock.write_all(b"show stat\n").await.ok()?;
            let mut text = String::new();
            tokio::time::timeout(Duration::from_secs(1), sock.read_to_string(&mut text))
                .await
                .ok()?
                .ok()?;
            let mut lines = text.lines();
            let header: Vec<&str> = lines.next()?.trim_start_matches("# ").split(',').collect();
            let status = header.iter().position(|h| *h == "status")?;
            let row = lines.find(|l| l.starts_with("smtp_sinks,s1,"))?;
            let field = row.split(',').nth(status)?;
            Some(field.starts_with("UP"))
        }
    }
}

/// Polls until the first sink's state is `want`; seconds since `since`.
async fn wait_state(s: System, dir: &Path, want: bool, since: Instant) -> Option<f64> {
    while since.elapsed() < Duration::from_secs(10) {
        if first_sink_up(s, dir).await == Some(want) {
            return Some(since.elapsed().as_secs_f64());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    None
}

pub async fn run(
    s: System,
    o: &Options,
    sinks: &mut [Proc],
    dir: &Path,
    loaded: bool,
) -> anyhow::Result<Failover> {
    let stop = Arc::new(AtomicBool::new(false));
    let killed: Arc<OnceCell<Instant>> = Arc::new(OnceCell::new());
    let (ok, in_flight, new) = (
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
    );
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..if loaded { o.sessions } else { 0 } {
        let (stop, killed) = (stop.clone(), killed.clone());
        let (ok, in_flight, new) = (ok.clone(), in_flight.clone(), new.clone());
        workers.spawn(async move {
            let body = edge::body();
            while !stop.load(Ordering::Relaxed) {
                let start = Instant::now();
                match edge::transaction(s.target(), &body).await {
                    Ok(_) => ok.fetch_add(1, Ordering::Relaxed),
                    Err(_) => match killed.get() {
                        Some(k) if start > *k => new.fetch_add(1, Ordering::Relaxed),
                        _ => in_flight.fetch_add(1, Ordering::Relaxed),
                    },
                };
            }
        });
    }
    let began = Instant::now();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let first = sinks.first_mut().context("no sink")?;
    first.kill();
    let at = Instant::now();
    let _ = killed.set(at);
    let down_s = wait_state(s, dir, false, at).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    *first = edge::sink(SINKS[0], dir, 1)?;
    let restarted = Instant::now();
    let up_s = wait_state(s, dir, true, restarted).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    while workers.join_next().await.is_some() {}
    let total = ok.load(Ordering::Relaxed)
        + in_flight.load(Ordering::Relaxed)
        + new.load(Ordering::Relaxed);
    Ok(Failover {
        per_s: total as f64 / began.elapsed().as_secs_f64(),
        down_s,
        up_s,
        failed_in_flight: in_flight.load(Ordering::Relaxed),
        failed_new: new.load(Ordering::Relaxed),
        loaded,
    })
}

pub fn print(o: &Options, rounds: &[(System, Failover)]) {
    if rounds.is_empty() {
        return;
    }
    println!();
    println!(
        "failover: one smtp-sink SIGKILLed, idle or under {} concurrent one-message sessions through the proxy (the bench's client),",
        o.sessions
    );
    println!(
        "restarted 0.5 s after it is marked down. down s: kill -> marked down; up s: restarted -> marked up."
    );
    println!(
        "{:<40} {:>5} {:>9} {:>9} {:>10} {:>16} {:>18}",
        "proxy", "load", "down s", "up s", "sessions/s", "failed in flight", "failed, new (goal 0)"
    );
    let secs = |v: Option<f64>| {
        v.map(|x| format!("{x:.3}"))
            .unwrap_or_else(|| "never".into())
    };
    for (s, f) in rounds {
        println!(
            "{:<40} {:>5} {:>9} {:>9} {:>10} {:>16} {:>18}",
            s.name(),
            if f.loaded { "yes" } else { "idle" },
            secs(f.down_s),
            secs(f.up_s),
            format!("{:.0}", f.per_s),
            f.failed_in_flight,
            f.failed_new
        );
    }
}

/// The summary's failover rows, redirector against HAProxy: time to mark a killed backend down
/// (issue 4: under 0.5 s), loaded and idle, back up after its restart, and failed sessions (none that
/// started after the kill). Times are medians over the rounds; `never` if no round saw it happen.
pub fn summarize(rounds: &[(System, Failover)], summary: &mut Summary) {
    if rounds.is_empty() {
        return;
    }
    let area = "edge vs HAProxy (issue 4)";
    let of = |s: System, loaded: Option<bool>| -> Vec<&Failover> {
        rounds
            .iter()
            .filter(|(sys, f)| *sys == s && loaded.is_none_or(|l| f.loaded == l))
            .map(|(_, f)| f)
            .collect()
    };
    let median_of = |v: Vec<f64>| (!v.is_empty()).then(|| edge::median(&v));
    let time = |s: System, loaded: Option<bool>, pick: fn(&Failover) -> Option<f64>| {
        median_of(of(s, loaded).into_iter().filter_map(pick).collect())
    };
    for (loaded, label) in [(true, "under load"), (false, "idle")] {
        let f = time(System::Redirector, Some(loaded), |f| f.down_s);
        let h = time(System::Haproxy, Some(loaded), |f| f.down_s);
        let mut row = Row::new(area, format!("killed backend marked down, {label}"), "s").fabric(f);
        if let Some(h) = h {
            row = row.against(h, "HAProxy");
        }
        summary.push(row.goal(Goal::AtMost(0.5)));
    }
    let f = time(System::Redirector, None, |f| f.up_s);
    let h = time(System::Haproxy, None, |f| f.up_s);
    let mut row = Row::new(area, "restarted backend marked up", "s").fabric(f);
    if let Some(h) = h {
        row = row.against(h, "HAProxy");
    }
    summary.push(row);
    let sum = |s: System, pick: fn(&Failover) -> u64| -> f64 {
        of(s, None).into_iter().map(pick).sum::<u64>() as f64
    };
    summary.push(
        Row::new(
            area,
            "sessions failed that started after the kill",
            "sessions",
        )
        .fabric(sum(System::Redirector, |f| f.failed_new))
        .against(sum(System::Haproxy, |f| f.failed_new), "HAProxy")
        .goal(Goal::AtMost(0.0)),
    );
    summary.push(
        Row::new(
            area,
            "sessions failed in flight on the killed backend",
            "sessions",
        )
        .fabric(sum(System::Redirector, |f| f.failed_in_flight))
        .against(sum(System::Haproxy, |f| f.failed_in_flight), "HAProxy"),
    );
}
