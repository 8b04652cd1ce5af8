//! The store's and the SMTP rows' tables (printed after the rounds), and the store rows of the
//! summary.

use crate::summary::{Goal, Row as SummaryRow, Summary};
use crate::{Args, Row, Sample, cpu, median_of, smtp_load};

pub fn print_store(args: &Args, rows: &[Row]) {
    let reference = args
        .raw_writers
        .iter()
        .position(|w| *w == 20)
        .or(Some(args.raw_writers.len().saturating_sub(1)))
        .and_then(|i| rows.get(i))
        .map(|r| (r.name.clone(), r.median.per_second));
    println!();
    println!(
        "{} rounds x {}s each, interleaved; medians. Store: {} acking only after its other-site mirror fsynced.",
        args.rounds, args.seconds, args.store
    );
    println!(
        "{:<44} {:>10} {:>9} {:>9} {:>10}  rounds (writes/s)",
        "measurement", "writes/s", "p50 ms", "p99 ms", "vs raw@20"
    );
    for row in rows {
        let ratio = reference
            .as_ref()
            .map(|(_, r)| format!("{:.2}", row.median.per_second / r))
            .unwrap_or_default();
        let all: Vec<String> = row
            .rounds
            .iter()
            .map(|s| format!("{:.0}", s.per_second))
            .collect();
        println!(
            "{:<44} {:>10.0} {:>9.3} {:>9.3} {:>10}  {}",
            row.name,
            row.median.per_second,
            row.median.p50_ms,
            row.median.p99_ms,
            ratio,
            all.join(" ")
        );
    }
}

/// CPU time per mirrored write, per store row: the median round (by total) of each column.
pub fn print_cpu(args: &Args, rows: &[Vec<cpu::PerWrite>]) {
    let names: Vec<String> = rows
        .first()
        .and_then(|r| r.first())
        .map(|p| p.by_store_us.keys().cloned().collect())
        .unwrap_or_default();
    println!();
    println!(
        "CPU per mirrored write (us, user+system from /proc; medians of {} rounds): all stores + the bench's client",
        args.rounds
    );
    let header: Vec<String> = names.iter().map(|n| format!("{n:>9}")).collect();
    println!(
        "{:<44} {:>8} {:>8} {}  {:>8}  rounds (total)",
        "measurement",
        "total",
        "stores",
        header.join(" "),
        "client"
    );
    for (c, samples) in args.concurrency.iter().zip(rows) {
        let col = |f: &dyn Fn(&cpu::PerWrite) -> f64| {
            median_of(&samples.iter().map(f).collect::<Vec<_>>())
        };
        let per_store = store_columns(&names, |n| {
            col(&|p| p.by_store_us.get(n).copied().unwrap_or(0.0))
        });
        let all: Vec<String> = samples
            .iter()
            .map(|p| format!("{:.0}", p.total_us()))
            .collect();
        println!(
            "{:<44} {:>8.1} {:>8.1} {}  {:>8.1}  {}",
            format!("store enqueue, mirrored, concurrency {c}"),
            col(&|p| p.total_us()),
            col(&|p| p.stores_us),
            per_store.join(" "),
            col(&|p| p.client_us),
            all.join(" ")
        );
    }
}

/// One right-aligned column per store, in `names` order.
fn store_columns(names: &[String], value: impl Fn(&str) -> f64) -> Vec<String> {
    names.iter().map(|n| format!("{:>9.1}", value(n))).collect()
}

/// Disk writes per write: what the stores wrote per mirrored write (all copies, WAL and checkpoints),
/// beside what a raw writer wrote per 4 KiB append. When the disk's bandwidth is the limit, this is
/// the figure that moves the store's rate.
pub fn print_disk(args: &Args, rows: &[Vec<cpu::PerWrite>], raw_kib: &[Vec<f64>]) {
    let names: Vec<String> = rows
        .first()
        .and_then(|r| r.first())
        .map(|p| p.disk_kib_by_store.keys().cloned().collect())
        .unwrap_or_default();
    println!();
    println!(
        "Disk writes per write (KiB, write_bytes from /proc/PID/io; medians of {} rounds)",
        args.rounds
    );
    let header: Vec<String> = names.iter().map(|n| format!("{n:>9}")).collect();
    println!("{:<44} {:>8} {}", "measurement", "total", header.join(" "));
    for (w, kib) in args.raw_writers.iter().zip(raw_kib) {
        println!(
            "{:<44} {:>8.1}",
            format!("raw append+fsync, {w} writer(s)"),
            median_of(kib)
        );
    }
    for (c, samples) in args.concurrency.iter().zip(rows) {
        let col = |f: &dyn Fn(&cpu::PerWrite) -> f64| {
            median_of(&samples.iter().map(f).collect::<Vec<_>>())
        };
        let per_store = store_columns(&names, |n| {
            col(&|p| p.disk_kib_by_store.get(n).copied().unwrap_or(0.0))
        });
        println!(
            "{:<44} {:>8.1} {}",
            format!("store enqueue, mirrored, concurrency {c}"),
            col(&|p| p.disk_kib),
            per_store.join(" ")
        );
    }
}

/// Prints the SMTP table; the medians (accept, end to end) of the fabric and of Postfix.
pub fn print_smtp(
    args: &Args,
    mx: &str,
    rows: &[Vec<smtp_load::SmtpSample>; 2],
) -> [(f64, f64); 2] {
    println!();
    println!(
        "SMTP: smtp-source -s {} -m {} -l 4096 per round, {} rounds interleaved; medians (msg/s).",
        args.smtp_sessions, args.smtp_messages, args.rounds
    );
    println!(
        "{:<58} {:>10} {:>12}  rounds accept / end-to-end",
        "system", "accept", "end-to-end"
    );
    let names = [
        format!("fabric {mx} (250 after fsync on 2 stores) -> mailbox"),
        "postfix (queue file fsynced before 250) -> Maildir".to_string(),
    ];
    let mut medians = [(0.0, 0.0); 2];
    for (i, name) in names.iter().enumerate() {
        let acc: Vec<f64> = rows[i].iter().map(|s| s.accept_per_s).collect();
        let e2e: Vec<f64> = rows[i].iter().map(|s| s.e2e_per_s).collect();
        medians[i] = (median_of(&acc), median_of(&e2e));
        let fmt = |v: &[f64]| {
            v.iter()
                .map(|x| format!("{x:.0}"))
                .collect::<Vec<_>>()
                .join(" ")
        };
        println!(
            "{:<58} {:>10.0} {:>12.0}  {} / {}",
            name,
            medians[i].0,
            medians[i].1,
            fmt(&acc),
            fmt(&e2e)
        );
    }
    if medians[1].0 > 0.0 && medians[1].1 > 0.0 {
        println!(
            "{:<58} {:>9.2}x {:>11.2}x  (goal: 1.5x both)",
            "fabric / postfix",
            medians[0].0 / medians[1].0,
            medians[0].1 / medians[1].1
        );
    }
    medians
}

/// Prints the SMTP latency table; the medians of the rounds (fabric, Postfix), if both ran.
pub fn print_smtp_latency(args: &Args, mx: &str, rows: &[Vec<Sample>; 2]) -> Option<[Sample; 2]> {
    if rows.iter().any(|r| r.is_empty()) {
        return None;
    }
    println!();
    println!(
        "SMTP latency: {} transactions per round, each its own session (connect to QUIT), over {} senders; {} rounds interleaved, medians.",
        args.smtp_latency, args.smtp_sessions, args.rounds
    );
    println!(
        "{:<58} {:>10} {:>10} {:>10}",
        "system", "msg/s", "p50 ms", "p99 ms"
    );
    let names = [format!("fabric {mx}"), "postfix".to_string()];
    // Each column's own median over the rounds.
    let med = |r: &[Sample]| {
        let of = |f: fn(&Sample) -> f64| median_of(&r.iter().map(f).collect::<Vec<_>>());
        Sample {
            per_second: of(|s| s.per_second),
            p50_ms: of(|s| s.p50_ms),
            p99_ms: of(|s| s.p99_ms),
            count: r.iter().map(|s| s.count).sum(),
        }
    };
    let medians = [med(&rows[0]), med(&rows[1])];
    for (name, m) in names.iter().zip(&medians) {
        println!(
            "{:<58} {:>10.0} {:>10.2} {:>10.2}",
            name, m.per_second, m.p50_ms, m.p99_ms
        );
    }
    Some(medians)
}

/// The store rows for the summary: raw rates as the reference, each concurrency's mirrored rate
/// against 20 raw writers (issue 2's goal at the highest concurrency), CPU per write.
pub fn summarize_store(
    args: &Args,
    rows: &[Row],
    cpu_rows: &[Vec<cpu::PerWrite>],
    raw_kib: &[Vec<f64>],
    summary: &mut Summary,
) {
    let area = "store (issue 2)";
    let raw = &rows[..args.raw_writers.len().min(rows.len())];
    let reference = raw
        .iter()
        .zip(&args.raw_writers)
        .find(|(_, w)| **w == 20)
        .or_else(|| raw.iter().zip(&args.raw_writers).next_back())
        .map(|(r, w)| (r.median.per_second, format!("raw fsync, {w} writers")));
    for row in raw {
        summary.push(
            SummaryRow::new(area, &row.name, "writes/s")
                .against(row.median.per_second, "raw fsync"),
        );
    }
    let top = args.concurrency.iter().max().copied();
    for (row, c) in rows[raw.len()..].iter().zip(&args.concurrency) {
        let mut r = SummaryRow::new(area, &row.name, "writes/s").fabric(row.median.per_second);
        if let Some((v, what)) = &reference {
            r = r.against(*v, what);
            if Some(*c) == top {
                r = r.goal(Goal::RatioAtLeast(1.0));
            }
        }
        summary.push(r);
    }
    for (c, samples) in args.concurrency.iter().zip(cpu_rows) {
        let total = median_of(&samples.iter().map(|p| p.total_us()).collect::<Vec<_>>());
        summary.push(
            SummaryRow::new(
                "CPU per write",
                format!("stores + bench client per mirrored write, concurrency {c}"),
                "us",
            )
            .fabric(total),
        );
    }
    // Disk bytes at the highest concurrency, against a raw writer's (the 20-writer row if measured).
    let raw_disk = args
        .raw_writers
        .iter()
        .zip(raw_kib)
        .find(|(w, _)| **w == 20)
        .or_else(|| args.raw_writers.iter().zip(raw_kib).next_back())
        .map(|(w, k)| (median_of(k), format!("raw fsync, {w} writers")));
    if let Some((c, samples)) = args.concurrency.iter().zip(cpu_rows).next_back() {
        let kib = median_of(&samples.iter().map(|p| p.disk_kib).collect::<Vec<_>>());
        let mut r = SummaryRow::new(
            "disk per write",
            format!("KiB the stores write per mirrored write, concurrency {c}"),
            "KiB",
        )
        .fabric(kib);
        if let Some((v, what)) = raw_disk {
            r = r.against(v, &what);
        }
        summary.push(r);
    }
}
