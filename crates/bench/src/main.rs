//! `fabric-bench` (`make bench`): how many mirrored 4 KiB writes per second the store acknowledges at
//! concurrency 1, 16 and 64, beside what the same disk does with plain append+fsync by 1 and by 20
//! writers. Every configuration runs once per round, rounds interleave them (so a noisy neighbour
//! hurts all alike), and the table reports each configuration's median round. Then the SMTP, reading,
//! edge and continuity parts, each printing its detailed table; at the end one summary table of every
//! row of the run (`summary`), which `--write-docs` puts into `docs/benchmarks.md` under a header naming
//! the date, the commit, the command and the machine (`machine`, `others`, `report`).

mod continuity;
mod cpu;
mod edge;
mod edge_failover;
mod edge_overhead;
mod internals;
mod lean_http;
mod machine;
mod others;
mod raw;
mod read_load;
mod reading;
mod report;
mod smtp_load;
mod store_load;
mod summary;
mod tables;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use fabric::{Launcher, SpawnOptions, find_bin_dir};
use hdrhistogram::Histogram;
use serde::Serialize;
use store_client::StoreClient;
use summary::{Goal, Row as SummaryRow, Summary};

#[derive(Debug, Parser)]
#[command(
    name = "fabric-bench",
    about = "Store writes/s and latency beside the raw fsync rate"
)]
struct Args {
    /// Rounds; each runs every configuration once, interleaved.
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    /// Length of one measurement, in seconds.
    #[arg(long, default_value_t = 3.0)]
    seconds: f64,
    /// Store concurrencies to measure.
    #[arg(long, value_delimiter = ',', default_value = "1,16,64")]
    concurrency: Vec<usize>,
    /// Raw writer counts to measure.
    #[arg(long, value_delimiter = ',', default_value = "1,20")]
    raw_writers: Vec<usize>,
    /// The topology to start (its stores are offset by --port-offset).
    #[arg(long, default_value = "topology/two-site.toml")]
    topology: PathBuf,
    /// The store written to; its mirror in the other site must ack every write.
    #[arg(long, default_value = "store-w1")]
    store: String,
    /// Added to every port so the bench does not collide with `make run`.
    #[arg(long, default_value_t = 5000)]
    port_offset: u16,
    /// Where node data and the raw files go (default: a temporary directory under ./var).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Size of each store write's body (the raw rows always write 4 KiB).
    #[arg(long, default_value_t = 4096)]
    body_bytes: usize,
    /// Messages per round for the SMTP rows (5 rounds of 2,000 make the 10,000).
    #[arg(long, default_value_t = 2000)]
    smtp_messages: usize,
    /// Concurrent SMTP sessions of the load generator.
    #[arg(long, default_value_t = 20)]
    smtp_sessions: usize,
    /// Transactions per round and system for the SMTP latency columns (each its own session, over
    /// --smtp-sessions senders); 0 skips them.
    #[arg(long, default_value_t = 1000)]
    smtp_latency: usize,
    /// Skip the SMTP rows (fabric vs Postfix).
    #[arg(long)]
    no_smtp: bool,
    /// Skip the reading rows (intranet IMAP/POP3 vs Dovecot).
    #[arg(long)]
    no_read: bool,
    /// Length of one reading measurement, in seconds.
    #[arg(long, default_value_t = 5.0)]
    read_seconds: f64,
    /// Concurrent clients (worker processes) of the reading load.
    #[arg(long, default_value_t = 20)]
    read_workers: usize,
    /// Skip the edge rows (fabric-redirector vs HAProxy in front of smtp-sink backends).
    #[arg(long)]
    no_edge: bool,
    /// Run only the edge rows (no fabric is started).
    #[arg(long)]
    only_edge: bool,
    /// Skip the continuity rows (a site's death, relays, standbys, fail-back).
    #[arg(long)]
    no_continuity: bool,
    /// Run only the continuity rows (on the fabric, which they kill in part).
    #[arg(long)]
    only_continuity: bool,
    /// Interleaved rounds of the edge rows (their p99 ratios are medians over rounds: five steady
    /// them where three swung by a fifth from run to run).
    #[arg(long, default_value_t = 5)]
    edge_rounds: usize,
    /// Messages per edge round and system (smtp-source -m).
    #[arg(long, default_value_t = 10000)]
    edge_messages: usize,
    /// One-session transactions per edge round and system, for the latency columns.
    #[arg(long, default_value_t = 300)]
    edge_latency: usize,
    /// Transactions per round and path of the edge overhead rows (the fabric's own edge: straight to
    /// an inet-mx versus through a router and a redirector).
    #[arg(long, default_value_t = 2000)]
    edge_overhead_messages: usize,
    /// Sender counts of the edge overhead rows: a moderate load and the load that saturates this
    /// machine's two cores (where the edge's own CPU competes with the mail server's).
    #[arg(long, value_delimiter = ',', default_value = "4,20")]
    edge_overhead_senders: Vec<usize>,
    /// Failover rounds per proxy (a backend SIGKILLed under load).
    #[arg(long, default_value_t = 1)]
    edge_failover_rounds: usize,
    /// Also print the results as JSON.
    #[arg(long)]
    json: bool,
    /// Write the run's summary table, with the date, commit, command and machine, into this file
    /// between `<!-- bench:latest:begin -->` and `<!-- bench:latest:end -->` (`make bench` passes
    /// docs/benchmarks.md; without it no file is touched).
    #[arg(long, value_name = "PATH")]
    write_docs: Option<PathBuf>,
    /// A line for the docs' header, e.g. what else ran on the machine that the bench cannot see.
    #[arg(long)]
    note: Option<String>,
}

/// One measurement.
#[derive(Debug, Clone, Serialize)]
pub struct Sample {
    pub per_second: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub count: u64,
}

impl Sample {
    pub fn from_histogram(h: &Histogram<u64>, elapsed: Duration) -> Sample {
        Sample {
            per_second: h.len() as f64 / elapsed.as_secs_f64(),
            p50_ms: h.value_at_quantile(0.5) as f64 / 1000.0,
            p99_ms: h.value_at_quantile(0.99) as f64 / 1000.0,
            count: h.len(),
        }
    }
}

#[derive(Debug, Serialize)]
struct Row {
    name: String,
    rounds: Vec<Sample>,
    median: Sample,
}

fn median(samples: &[Sample]) -> Sample {
    let mut sorted = samples.to_vec();
    sorted.sort_by(|a, b| a.per_second.total_cmp(&b.per_second));
    sorted[sorted.len() / 2].clone()
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if let Some(path) = &args.write_docs {
        report::check(path)?;
    }
    let started = machine::now_unix();
    // The commit measured is the one at the start (the checkout may move during a long run).
    let commit = machine::git_commit();
    let (clock, before) = (Instant::now(), others::snapshot());
    let base = args
        .data_dir
        .clone()
        .unwrap_or_else(|| PathBuf::from("var"));
    std::fs::create_dir_all(&base)?;
    let work = tempfile::Builder::new()
        .prefix("bench-")
        .tempdir_in(&base)?;
    let mut summary = Summary::default();
    if let Err(e) = measure(&args, work.path(), &mut summary).await {
        // What was measured before the failure is still worth seeing (not worth writing into the
        // docs), and the nodes' logs say why it failed.
        if !summary.rows.is_empty() {
            println!("\nMeasured before the failure:\n{}", summary.render());
        }
        let kept = work.keep();
        eprintln!(
            "the run's directory (the nodes' logs under fabric/logs) is kept: {}",
            kept.display()
        );
        return Err(e);
    }

    let seconds = clock.elapsed().as_secs_f64();
    let machine = machine::Machine::describe(work.path());
    let others = others::other_work(&before, &others::snapshot(), std::process::id());
    let cpus = machine.nproc.unwrap_or(machine.cpu.count);
    let info = report::RunInfo {
        started_unix: started,
        seconds,
        commit,
        command: machine::command_line(),
        machine: machine.line(),
        others: others::describe(&others, cpus, seconds),
        note: args.note.clone(),
    };
    let section = report::section(&info, &summary);
    println!();
    print!("{section}");
    if let Some(path) = &args.write_docs {
        report::write(path, &section)?;
        println!("\n(written to {})", path.display());
    }
    Ok(())
}

/// Every part the options ask for, each printing its own tables and adding its rows to `summary`.
async fn measure(args: &Args, work: &std::path::Path, summary: &mut Summary) -> anyhow::Result<()> {
    let duration = Duration::from_secs_f64(args.seconds);
    if args.only_edge {
        summary.skip(
            "store, SMTP, reading, edge overhead and continuity",
            "--only-edge",
        );
        return edge_rows(args, work, summary).await;
    }

    // The fabric, as `fabric up` runs it, on ports of its own.
    let mut topology = topology::Topology::load(&args.topology)?;
    topology
        .offset_ports(args.port_offset)
        .map_err(anyhow::Error::msg)?;
    // The continuity rows measure from the threshold, not the retry period: shorter rounds than the
    // production 30 s keep the run short without changing what is measured.
    topology.timing.relay_retry = Duration::from_secs(5);
    topology.timing.standby_attempts = 3;
    let topo_file = work.join("topology.toml");
    std::fs::write(&topo_file, topology.to_toml()?)?;
    let launcher = Launcher::new(&topo_file, &work.join("fabric"), &find_bin_dir())?;
    let mut children = Vec::new();
    for node in &launcher.topology.nodes {
        let child = launcher.spawn(
            &node.name,
            SpawnOptions {
                die_with_parent: true,
            },
        )?;
        children.push((node.name.clone(), child));
    }
    let pids: std::collections::BTreeMap<String, u32> =
        children.iter().map(|(n, c)| (n.clone(), c.id())).collect();
    let stores = cpu::Watch::new(
        children
            .iter()
            .filter(|(name, _)| {
                launcher
                    .topology
                    .node(name)
                    .is_some_and(|n| n.role() == topology::Role::Store)
            })
            .map(|(name, child)| (name.clone(), child.id()))
            .collect(),
    );
    let result = if args.only_continuity {
        wait_all_ready(&launcher).await
    } else {
        run(args, &launcher, &stores, work, duration, summary).await
    };
    let result = match result {
        Ok(()) if !args.no_read && !args.only_continuity => {
            reading::rows(args, &launcher, work, &pids, summary).await
        }
        other => other,
    };
    let result = match result {
        Ok(()) if !args.no_edge && !args.only_continuity => {
            edge_overhead::rows(
                &launcher,
                args.edge_rounds,
                args.edge_overhead_messages,
                &args.edge_overhead_senders,
                summary,
            )
            .await
        }
        other => other,
    };
    let result = match result {
        Ok(()) if !args.no_continuity => {
            // A continuity round that does not finish is a finding, not a reason to lose the run's
            // other rows: the table names it where the rows would be.
            match continuity::rows(&launcher, &topo_file, &mut children, summary).await {
                Ok(()) => Ok(()),
                Err(e) => {
                    eprintln!("continuity did not finish: {e:#}");
                    summary.skip("continuity", format!("did not finish: {e}"));
                    Ok(())
                }
            }
        }
        other => other,
    };
    for (_, child) in &mut children {
        let _ = child.kill();
        let _ = child.wait();
    }
    result?;
    for (skipped, part, flag) in [
        (args.no_read, "reading vs Dovecot", "--no-read"),
        (
            args.no_edge,
            "edge overhead and edge vs HAProxy",
            "--no-edge",
        ),
        (args.no_continuity, "continuity", "--no-continuity"),
    ] {
        if skipped && !args.only_continuity {
            summary.skip(part, flag);
        }
    }
    if args.only_continuity {
        summary.skip("store, SMTP, reading and edge", "--only-continuity");
    }
    if args.no_edge || args.only_continuity {
        return Ok(());
    }
    edge_rows(args, work, summary).await
}

/// The redirector vs HAProxy rows (they need no fabric: smtp-sink backends).
async fn edge_rows(
    args: &Args,
    work: &std::path::Path,
    summary: &mut Summary,
) -> anyhow::Result<()> {
    let options = edge::Options {
        rounds: args.edge_rounds,
        messages: args.edge_messages,
        sessions: args.smtp_sessions,
        latency_transactions: args.edge_latency,
        failover_rounds: args.edge_failover_rounds,
    };
    let dir = work.join("edge");
    std::fs::create_dir_all(&dir)?;
    edge::rows(&options, &std::env::current_dir()?, &dir, summary).await
}

async fn wait_all_ready(launcher: &Launcher) -> anyhow::Result<()> {
    for node in &launcher.topology.nodes {
        launcher
            .wait_ready(&node.name, None, Duration::from_secs(60))
            .await?;
    }
    Ok(())
}

async fn run(
    args: &Args,
    launcher: &Launcher,
    stores: &cpu::Watch,
    dir: &std::path::Path,
    duration: Duration,
    summary: &mut Summary,
) -> anyhow::Result<()> {
    wait_all_ready(launcher).await?;
    let node = launcher.node(&args.store)?;
    let addr = node
        .service_addr("store")
        .with_context(|| format!("{} has no store port", args.store))?;
    // Warm up: connections, SQLite caches, the mirror link in sync.
    store_load::enqueue(addr, 16, Duration::from_secs(1), args.body_bytes).await?;

    let raw_dir = dir.join("raw");
    std::fs::create_dir_all(&raw_dir)?;
    let mut rows: Vec<Row> = args
        .raw_writers
        .iter()
        .map(|w| format!("raw append+fsync, {w} writer(s)"))
        .chain(
            args.concurrency
                .iter()
                .map(|c| format!("store enqueue, mirrored, concurrency {c}")),
        )
        .map(|name| Row {
            name,
            rounds: Vec::new(),
            median: Sample {
                per_second: 0.0,
                p50_ms: 0.0,
                p99_ms: 0.0,
                count: 0,
            },
        })
        .collect();
    // The SMTP comparison: Postfix set up beside the fabric, a mailbox for the load.
    let smtp = if args.no_smtp || !smtp_load::available() && std::env::var_os("CI").is_some() {
        None
    } else {
        let maildir = smtp_load::setup_postfix(&std::env::current_dir()?)?;
        let mx = launcher
            .topology
            .nodes_with_role(topology::Role::InetMx)
            .next()
            .context("the topology has no inet-mx")?;
        let target = mx
            .service_addr("smtp")
            .context("inet-mx without smtp port")?
            .to_string();
        let user = "ann@acme.example";
        let home = launcher
            .topology
            .mailbox_store(user)
            .context("no home store for acme.example")?;
        let dir = launcher
            .topology
            .directory_store()
            .context("no directory store")?;
        let dir_client = StoreClient::new(format!(
            "http://{}",
            dir.service_addr("store").context("store port")?
        ));
        dir_client
            .put_user(
                user,
                &serde_json::json!({"password_hash": BENCH_HASH, "notify": "none"}),
            )
            .await?;
        let home_client = StoreClient::new(format!(
            "http://{}",
            home.service_addr("store").context("store port")?
        ))
        .with_timeout(Duration::from_secs(30));
        Some((maildir, target, mx.name.clone(), home_client, user))
    };
    let mut smtp_rows: [Vec<smtp_load::SmtpSample>; 2] = [Vec::new(), Vec::new()];
    let mut smtp_latency: [Vec<Sample>; 2] = [Vec::new(), Vec::new()];
    let mut cpu_rows: Vec<Vec<cpu::PerWrite>> = vec![Vec::new(); args.concurrency.len()];
    let mut raw_kib: Vec<Vec<f64>> = vec![Vec::new(); args.raw_writers.len()];
    for round in 1..=args.rounds {
        eprintln!("round {round}/{}", args.rounds);
        if let Some((maildir, target, _, home, user)) = &smtp {
            // Alternate which system goes first.
            for k in 0..2 {
                let which = (round + k) % 2;
                let sample = if which == 0 {
                    smtp_load::fabric(target, home, user, args.smtp_messages, args.smtp_sessions)
                        .await?
                } else {
                    smtp_load::postfix(maildir, args.smtp_messages, args.smtp_sessions).await?
                };
                smtp_rows[which].push(sample);
            }
            if args.smtp_latency > 0 {
                for k in 0..2 {
                    let which = (round + k) % 2;
                    let (n, s) = (args.smtp_latency, args.smtp_sessions);
                    let sample = if which == 0 {
                        let addr = target.parse().context("inet-mx address")?;
                        smtp_load::fabric_latency(addr, home, user, n, s).await?
                    } else {
                        smtp_load::postfix_latency(maildir, n, s).await?
                    };
                    smtp_latency[which].push(sample);
                }
            }
        }
        let mut i = 0;
        for &w in &args.raw_writers {
            let d = raw_dir.clone();
            let written = cpu::own_written_bytes();
            let s =
                tokio::task::spawn_blocking(move || raw::append_fsync(&d, w, duration)).await??;
            if s.count > 0 {
                raw_kib[i].push((cpu::own_written_bytes() - written) / s.count as f64 / 1024.0);
            }
            rows[i].rounds.push(s);
            i += 1;
        }
        for (j, &c) in args.concurrency.iter().enumerate() {
            let before = stores.read();
            let s = store_load::enqueue(addr, c, duration, args.body_bytes).await?;
            cpu_rows[j].push(cpu::PerWrite::between(&before, &stores.read(), s.count));
            rows[i].rounds.push(s);
            i += 1;
        }
    }
    for row in &mut rows {
        row.median = median(&row.rounds);
    }
    tables::print_store(args, &rows);
    tables::print_cpu(args, &cpu_rows);
    tables::print_disk(args, &cpu_rows, &raw_kib);
    tables::summarize_store(args, &rows, &cpu_rows, &raw_kib, summary);
    match &smtp {
        Some((_, _, mx, _, _)) => {
            let [fabric, postfix] = tables::print_smtp(args, mx, &smtp_rows);
            let area = "SMTP vs Postfix (issue 3)";
            for (what, f, p) in [
                ("accepted (250)", fabric.0, postfix.0),
                ("end to end (in the mailbox)", fabric.1, postfix.1),
            ] {
                summary.push(
                    SummaryRow::new(area, format!("smtp-source into {mx}: {what}"), "msg/s")
                        .fabric(f)
                        .against(p, "Postfix")
                        .goal(Goal::RatioAtLeast(1.5)),
                );
            }
            if let Some([f, p]) = tables::print_smtp_latency(args, mx, &smtp_latency) {
                for (what, f, p) in [("p50", f.p50_ms, p.p50_ms), ("p99", f.p99_ms, p.p99_ms)] {
                    let m = format!(
                        "{what} of a whole session into {mx}, {} senders",
                        args.smtp_sessions
                    );
                    summary.push(
                        SummaryRow::new(area, m, "ms")
                            .fabric(f)
                            .against(p, "Postfix"),
                    );
                }
            }
        }
        None if args.no_smtp => summary.skip("SMTP vs Postfix", "--no-smtp"),
        None => summary.skip("SMTP vs Postfix", "smtp-source missing under CI"),
    }
    println!();
    println!("store internals over the whole run (from /metrics):");
    for line in internals::report(launcher).await {
        println!("  {line}");
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
    }
    Ok(())
}

/// A valid argon2 PHC string for the bench's mailbox (nobody logs in with it).
const BENCH_HASH: &str = "$argon2id$v=19$m=19456,t=2,p=1$c29tZXNhbHRzb21lc2FsdA$2P1Q3tZrGJ2nVhC/6Q6zH7JgN2i0pZ6bq0m1bJ3JwH8";

fn median_of(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}
