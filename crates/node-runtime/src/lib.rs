//! The node runtime every fabric binary shares.
//!
//! A role's `main` parses [`NodeArgs`], calls [`NodeContext::init`] (topology, logging, metrics), binds
//! its listeners, serves the admin endpoints with [`admin::serve`], and runs until [`NodeContext::shutdown`]
//! is cancelled by SIGTERM or SIGINT.
//!
//! # Layout
//! - `logging`: JSON log lines carrying node, site and role (human-readable on a terminal).
//! - `admin`: `/metrics`, `/health`, `/ready`, `/status` over HTTP.
//! - `shutdown`: signals to a `CancellationToken`, and the drain deadline.
//! - `sessions`: a protocol port's accept loop (session cap, PROXY headers, handed-off connections).
//! - `handoff`: passing a client's connection to the next hop on the same host (`SCM_RIGHTS`).
//!
//! This crate knows nothing about any role's protocol; roles hand it a status closure and extra routes.

pub mod admin;
pub mod handoff;
pub mod logging;
pub mod proxy_header;
pub mod sessions;
pub mod shutdown;
pub mod tls;

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use anyhow::{Context, bail};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use topology::{Node, Role, Topology};

/// The command line every node binary accepts.
#[derive(Debug, Clone, clap::Parser)]
pub struct NodeArgs {
    /// The topology file that describes the fabric.
    #[arg(long, env = "FABRIC_TOPOLOGY")]
    pub topology: PathBuf,
    /// This node's name in the topology.
    #[arg(long, env = "FABRIC_NODE")]
    pub node: String,
    /// Where this node keeps its state (default: ./var/nodes/NODE).
    #[arg(long, env = "FABRIC_NODE_DATA")]
    pub data_dir: Option<PathBuf>,
    /// Where the fabric's CA and node certificates are (default: ./var/tls).
    #[arg(long, env = "FABRIC_TLS_DIR")]
    pub tls_dir: Option<PathBuf>,
}

/// Everything a running node needs to know about itself.
#[derive(Clone)]
pub struct NodeContext {
    pub topology: Arc<Topology>,
    pub node: Node,
    pub role: Role,
    pub data_dir: PathBuf,
    /// Cancelled when the node must stop (SIGTERM, SIGINT, or a test).
    pub shutdown: CancellationToken,
    /// Tracks sessions and background work so shutdown can wait for them.
    pub tasks: TaskTracker,
    pub started: Instant,
    pub metrics: PrometheusHandle,
    /// The fabric's TLS directory (see [`tls`]).
    pub tls_dir: PathBuf,
}

impl NodeContext {
    /// Loads the topology, checks this node exists with the expected role, starts logging and metrics.
    pub fn init(args: &NodeArgs, role: Role) -> anyhow::Result<NodeContext> {
        let topology = Topology::load(&args.topology)?;
        let node = topology.node(&args.node).cloned().with_context(|| {
            format!("{}: no node named {:?}", args.topology.display(), args.node)
        })?;
        if node.role() != role {
            bail!(
                "node {:?} has role {} in {}, but this binary runs {role}",
                node.name,
                node.role,
                args.topology.display()
            );
        }
        logging::init(&node.name, &node.site, role.as_str());
        handoff::describe_metrics();
        let data_dir = args
            .data_dir
            .clone()
            .unwrap_or_else(|| PathBuf::from("var").join("nodes").join(&node.name));
        std::fs::create_dir_all(&data_dir)
            .with_context(|| format!("creating data directory {}", data_dir.display()))?;
        let mut ctx = NodeContext::new(Arc::new(topology), node, data_dir);
        if let Some(dir) = &args.tls_dir {
            ctx.tls_dir = dir.clone();
        }
        Ok(ctx)
    }

    /// A context without logging set up (tests that run a role in-process use this).
    pub fn new(topology: Arc<Topology>, node: Node, data_dir: PathBuf) -> NodeContext {
        let role = node.role();
        NodeContext {
            topology,
            node,
            role,
            data_dir,
            shutdown: CancellationToken::new(),
            tasks: TaskTracker::new(),
            started: Instant::now(),
            metrics: metrics_handle(),
            tls_dir: PathBuf::from("var").join("tls"),
        }
    }
}

/// The process-wide Prometheus recorder, installed on first use.
pub fn metrics_handle() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new();
            // Real histograms (buckets) where a summary's quantiles would hide what matters; the
            // other timings stay summaries.
            let builder = builder
                .set_buckets_for_metric(
                    Matcher::Full("fabric_supervisor_standby_ready_seconds".into()),
                    &[0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0],
                )
                .unwrap_or_else(|_| PrometheusBuilder::new());
            let recorder = builder.build_recorder();
            let handle = recorder.handle();
            // Another recorder may already be installed (a test harness); rendering then shows ours empty.
            let _ = metrics::set_global_recorder(recorder);
            handle
        })
        .clone()
}
