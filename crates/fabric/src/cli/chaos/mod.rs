//! `fabric chaos`: a seeded fault campaign while mail flows, then a Jepsen-style verdict.
//!
//! 1. Start the fabric of a topology (or `--attach` to the one running from the data directory, or
//!    `--docker PROJECT` for the compose deployment operated from the data directory).
//! 2. Create the campaign's mailboxes (`chaos-NN@DOMAIN` for every customer domain, one password).
//! 3. At once: the workload (`workload`) and the fault schedule (`schedule`, run by `runner` through
//!    a `backend::Backend`: loopback processes, or containers through the Docker Engine in `docker`).
//! 4. Heal everything, wait for quiescence (`quiesce`), read every INBOX over IMAP (`imap`).
//! 5. Check and report (`report`); fail on any loss, duplicate or unexpected message.

pub mod backend;
pub mod docker;
pub mod imap;
pub mod net;
pub mod quiesce;
pub mod report;
pub mod runner;
pub mod schedule;
pub mod smtp;
pub mod workload;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use backend::{Backend, Loopback};
use serde_json::json;
use store_client::StoreClient;
use topology::{Role, Topology};

/// `fabric chaos` options.
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// The topology to start (not used with --attach).
    #[arg(default_value = "topology/two-site.toml")]
    pub topology: PathBuf,
    /// Run against the fabric already running from the data directory (`fabric up`) and leave it
    /// running; otherwise the campaign starts its own and stops it at the end.
    #[arg(long)]
    pub attach: bool,
    /// Run against the compose deployment of this project (`make compose-up`: mailfabric), operated
    /// from the data directory `fabric compose` wrote (`--data-dir docker/var`); faults go through
    /// the Docker Engine and include network partitions.
    #[arg(long, value_name = "PROJECT", conflicts_with = "attach")]
    pub docker: Option<String>,
    /// The seed of the schedule and of the messages' shapes (printed; give it again to replay).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Messages to send, paced evenly over --duration.
    #[arg(long, default_value_t = 1000)]
    pub messages: u64,
    /// Faults to plan (the rules may leave room for fewer; the report says how many ran).
    #[arg(long, default_value_t = 10)]
    pub faults: usize,
    /// Span of the workload and of the schedule.
    #[arg(long, default_value_t = 120, value_name = "SECONDS")]
    pub duration: u64,
    /// Concurrent senders.
    #[arg(long, default_value_t = 8)]
    pub senders: usize,
    /// Share of the messages sent by customers' authenticated submission (the rest over MX).
    #[arg(long, default_value_t = 0.3)]
    pub submission_share: f64,
    /// Campaign mailboxes per customer domain.
    #[arg(long, default_value_t = 8)]
    pub users: usize,
    /// Faults at once, at most.
    #[arg(long, default_value_t = 2)]
    pub max_concurrent: usize,
    /// A sender gives a message up after trying this long.
    #[arg(long, default_value_t = 180, value_name = "SECONDS")]
    pub give_up: u64,
    /// The longest wait for quiescence after the heal.
    #[arg(long, default_value_t = 300, value_name = "SECONDS")]
    pub quiesce_timeout: u64,
    /// Quiescence: no new delivery for this long, queues empty.
    #[arg(long, default_value_t = 5, value_name = "SECONDS")]
    pub settle: u64,
    /// How long a (re)started node may take to answer /ready.
    #[arg(long, default_value_t = 90, value_name = "SECONDS")]
    pub ready_timeout: u64,
    /// Print the report as JSON (progress goes to stderr either way).
    #[arg(long)]
    pub json: bool,
    /// Print the schedule the seed gives and exit.
    #[arg(long)]
    pub plan_only: bool,
    /// Also write every message with its attempts and the report as JSON to this file.
    #[arg(long, value_name = "FILE")]
    pub record: Option<PathBuf>,
}

pub async fn run(data_dir: &Path, args: &Args) -> anyhow::Result<()> {
    let seed = args.seed.unwrap_or_else(|| {
        u64::from_le_bytes(
            uuid::Uuid::new_v4().as_bytes()[..8]
                .try_into()
                .unwrap_or([7; 8]),
        ) >> 16
    });
    let topology = if args.attach || args.docker.is_some() {
        crate::cli::running(data_dir)?.0.topology
    } else {
        Topology::load(&args.topology)?
    };
    let params = schedule::Params {
        seed,
        faults: args.faults,
        span: Duration::from_secs(args.duration),
        max_concurrent: args.max_concurrent.max(1),
        partitions: args.docker.is_some(),
    };
    let plan = schedule::generate(&topology, &params);
    eprintln!(
        "chaos: seed {seed} (replay with --seed {seed}); {} of {} faults placed over {}s:\n{}",
        plan.len(),
        args.faults,
        args.duration,
        schedule::describe(&plan)
    );
    if args.plan_only {
        return Ok(());
    }
    let ready_timeout = Duration::from_secs(args.ready_timeout);
    if let Some(project) = &args.docker {
        let backend = docker::Docker::attach(data_dir, project).await?;
        eprintln!(
            "chaos: docker backend on {}",
            backend.topology_file().display()
        );
        return verdict(seed, campaign(&backend, args, seed, &plan).await);
    }
    let backend = if args.attach {
        Loopback::attach(data_dir)?
    } else {
        eprintln!("chaos: starting the fabric of {}", args.topology.display());
        Loopback::start_fabric(&args.topology, data_dir, ready_timeout).await?
    };
    let result = campaign(&backend, args, seed, &plan).await;
    if backend.owned() {
        eprintln!("chaos: stopping the fabric");
        if let Err(e) = backend.shutdown().await {
            eprintln!("chaos: stopping the fabric: {e:#}");
        }
    }
    verdict(seed, result)
}

fn verdict(seed: u64, result: anyhow::Result<report::Report>) -> anyhow::Result<()> {
    let report = result?;
    if !report.ok {
        bail!(
            "seed {seed}: {} lost, {} duplicated, {} unexpected, {} mailboxes unreadable (replay with --seed {seed})",
            report.lost.len(),
            report.duplicated.len(),
            report.unexpected.len(),
            report.unreadable_mailboxes.len()
        );
    }
    Ok(())
}

async fn campaign<B: Backend>(
    backend: &B,
    args: &Args,
    seed: u64,
    plan: &[schedule::Fault],
) -> anyhow::Result<report::Report> {
    let started = Instant::now();
    let t = backend.topology().clone();
    let run_id = format!("{seed}.{}", fabric::state::now_unix());
    let password = uuid::Uuid::new_v4().simple().to_string();
    let users = create_users(&t, args.users, &password).await?;
    eprintln!("chaos: {} mailboxes; run id {run_id}", users.len());
    let w = Arc::new(workload::Workload {
        run: run_id.clone(),
        seed,
        messages: args.messages,
        senders: args.senders,
        span: Duration::from_secs(args.duration),
        submission_share: args.submission_share,
        give_up: Duration::from_secs(args.give_up),
        users: users.clone(),
        password: password.clone(),
        topology: t.clone(),
        tls: net::Tls::new(&backend.tls_dir(), &t)?,
        mx: crate::cli::send::MxSender::new(&t, &[], None)?,
    });
    let ready_timeout = Duration::from_secs(args.ready_timeout);
    let t0 = Instant::now();
    let (faults, messages) = tokio::join!(
        runner::run(backend, plan, t0, args.max_concurrent.max(1), ready_timeout),
        workload::run(w.clone(), t0)
    );
    eprintln!(
        "chaos: t+{:.1}s schedule and workload done; healing",
        runner::secs(t0)
    );
    let (healed, mut heal_errors) = runner::heal_all(backend, ready_timeout).await;
    for f in plan.iter().filter(|f| !f.legs.is_empty()) {
        if let Err(e) = backend.mend(&f.legs).await {
            heal_errors.push(format!("#{} {}: {e:#}", f.id, f.target));
        }
    }
    let quiet = quiesce::wait(
        &t,
        &users,
        Duration::from_secs(args.settle),
        Duration::from_secs(args.quiesce_timeout),
    )
    .await;
    eprintln!(
        "chaos: quiescence {} after {:.0}s; reading {} mailboxes",
        if quiet.reached {
            "reached"
        } else {
            "NOT reached"
        },
        quiet.waited,
        users.len()
    );
    let read = read_mailboxes(&t, &w.tls, &users, &password).await;
    let report = report::check(report::Inputs {
        seed,
        run: &run_id,
        backend: backend.name(),
        topology_name: &backend.describe(),
        topology: &t,
        faults_planned: plan.len(),
        messages: &messages,
        faults: &faults,
        read,
        quiet,
        healed,
        heal_errors,
        duration: (started.elapsed().as_secs_f64() * 10.0).round() / 10.0,
    });
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!("{}", report::render(&report));
    }
    if let Some(file) = &args.record {
        let all = json!({"report": report, "faults": faults, "messages": messages});
        std::fs::write(file, serde_json::to_vec_pretty(&all)?)
            .with_context(|| format!("writing {}", file.display()))?;
        eprintln!("chaos: record written to {}", file.display());
    }
    Ok(report)
}

/// `chaos-NN@DOMAIN` for every customer domain, all with `password`, in the directory.
async fn create_users(
    t: &Topology,
    per_domain: usize,
    password: &str,
) -> anyhow::Result<Vec<String>> {
    let directory = t.directory_store().context("the topology has no store")?;
    let client = StoreClient::for_node(directory)
        .context("the directory store has no store port")?
        .with_timeout(Duration::from_secs(30));
    let hash = crate::cli::directory::hash_password(password)?;
    let mut users = Vec::new();
    for d in &t.domains {
        for i in 1..=per_domain.max(1) {
            let user = format!("chaos-{i:02}@{}", d.name);
            client
                .put_user(&user, &json!({"password_hash": hash, "notify": "none"}))
                .await
                .with_context(|| format!("creating {user}"))?;
            users.push(user);
        }
    }
    Ok(users)
}

/// Where a customer of `site` reads mail: its isolated routers, then its intranet servers.
fn imap_addrs(t: &Topology, site: &str) -> Vec<SocketAddr> {
    t.routers(site, "isolated")
        .into_iter()
        .chain(t.nodes_with_role(Role::Intranet).filter(|n| n.site == site))
        .filter_map(|n| n.service_addr("imap"))
        .collect()
}

/// Every campaign INBOX over IMAP; a mailbox no address could serve after a few rounds is named
/// unreadable (and left out of the verdict, which says so).
async fn read_mailboxes(
    t: &Topology,
    tls: &net::Tls,
    users: &[String],
    password: &str,
) -> report::Read {
    let mut ids = BTreeMap::new();
    let mut foreign = 0;
    let mut unreadable = Vec::new();
    for user in users {
        let site = user
            .rsplit_once('@')
            .and_then(|(_, d)| t.home_of_domain(d))
            .unwrap_or_default()
            .to_string();
        let addrs = imap_addrs(t, &site);
        let mut got = None;
        'rounds: for round in 0..5 {
            for addr in &addrs {
                match imap::inbox_ids(*addr, tls, user, password, Duration::from_secs(30)).await {
                    Ok(r) => {
                        got = Some(r);
                        break 'rounds;
                    }
                    Err(e) => eprintln!("chaos: reading {user} at {addr} (round {round}): {e:#}"),
                }
            }
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
        match got {
            Some((found, without)) => {
                foreign += without;
                ids.insert(user.clone(), found);
            }
            None => unreadable.push(user.clone()),
        }
    }
    report::Read {
        ids,
        foreign,
        unreadable,
    }
}
