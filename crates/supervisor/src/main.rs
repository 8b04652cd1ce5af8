//! `fabric-supervisor`: one per site. When a relay (or an operator) asks, it stands in for failed mail
//! servers of any site: fences the failed process (SIGKILL whatever still holds the node's ports), runs
//! the very same role binary under the failed node's name, so at its address and ports, watches it, and
//! retires it when the original comes back (`fabric start NODE` asks it to).
//!
//! - `api`: the HTTP API on the `supervisor` port;
//! - `standby`: invoking, watching and retiring standbys;
//! - `host`: where a standby runs: a process of ours, or a container (Docker Engine API);
//! - `fence`: `/proc/net/tcp` and `/proc/PID/fd`: who listens on an address, SIGKILL it;
//! - `probe`: is a mail server healthy (admin `/health`, protocol greeting);
//! - `continuity`: tells a site's users when an outage begins and ends (SMS or notice mail);
//! - `flow_probe`: a probe message to each other site's probe mailbox every `probe_interval`.

mod api;
mod continuity;
mod fence;
mod flow_probe;
mod host;
mod probe;
mod standby;

use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use node_runtime::admin::{AdminServer, Readiness};
use node_runtime::{NodeArgs, NodeContext, sessions, shutdown};
use serde_json::json;
use tokio::net::TcpListener;
use topology::Role;

fn describe_metrics() {
    metrics::describe_gauge!(
        "fabric_supervisor_standbys",
        "Standby servers this supervisor runs now."
    );
    metrics::describe_counter!(
        "fabric_supervisor_invocations_total",
        "Requests for a standby, per node, by result (started, alive, cut-off: unreachable but its container runs healthy, failed)."
    );
    metrics::describe_counter!(
        "fabric_supervisor_fenced_total",
        "Processes SIGKILLed because they still held a failed node's ports."
    );
    metrics::describe_counter!(
        "fabric_supervisor_retired_total",
        "Standbys stopped (fail-back, an operator, or the supervisor's shutdown)."
    );
    metrics::describe_counter!(
        "fabric_supervisor_restarts_total",
        "Standbys that exited on their own and were started again."
    );
    metrics::describe_histogram!(
        "fabric_supervisor_standby_ready_seconds",
        metrics::Unit::Seconds,
        "From fencing done to the standby's /ready."
    );
    metrics::describe_counter!(
        "fabric_supervisor_continuity_notices_total",
        "Continuity notices sent to users, by event (start: first standby for their site; end: \
         fail-back) and channel (sms, alternate)."
    );
    metrics::describe_counter!(
        "fabric_supervisor_continuity_failures_total",
        "Continuity notices given up (or not sent: the directory was unreadable), by event."
    );
    metrics::describe_gauge!(
        "fabric_probe_ok",
        "1 while the last probe message to the site reached its probe mailbox, else 0."
    );
    metrics::describe_counter!(
        "fabric_probe_arrived_total",
        "Probe messages that reached the site's probe mailbox."
    );
    metrics::describe_counter!(
        "fabric_probe_missing_total",
        "Probe messages not accepted, or not in the probe mailbox within one probe interval."
    );
    metrics::describe_histogram!(
        "fabric_probe_seconds",
        metrics::Unit::Seconds,
        "From sending a probe to finding it in the probe mailbox."
    );
    metrics::gauge!("fabric_supervisor_standbys").set(0.0);
    for event in ["start", "end"] {
        for channel in ["sms", "alternate"] {
            metrics::counter!("fabric_supervisor_continuity_notices_total",
                "event" => event, "channel" => channel)
            .absolute(0);
        }
    }
    for result in ["started", "alive", "cut-off", "failed"] {
        metrics::counter!("fabric_supervisor_invocations_total", "result" => result).absolute(0);
    }
    metrics::counter!("fabric_supervisor_fenced_total").absolute(0);
    metrics::counter!("fabric_supervisor_retired_total").absolute(0);
    metrics::counter!("fabric_supervisor_restarts_total").absolute(0);
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = NodeArgs::parse();
    let ctx = NodeContext::init(&args, Role::Supervisor)?;
    let topology_file = std::path::absolute(&args.topology)
        .with_context(|| format!("resolving {}", args.topology.display()))?;
    let listener = sessions::bind(&ctx, "supervisor").await?;
    let admin = TcpListener::bind(ctx.node.admin_addr())
        .await
        .with_context(|| format!("binding the admin port {}", ctx.node.admin_addr()))?;
    shutdown::cancel_on_signals(ctx.shutdown.clone())?;
    describe_metrics();

    let host = host::Host::from_env(topology_file, fabric::find_bin_dir()).await?;
    let manager = standby::Manager::new(ctx.clone(), host);
    manager.adopt().await;
    let stop = ctx.shutdown.clone();
    let app = api::router(manager.clone());
    let api_task = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async move { stop.cancelled().await })
            .await
    });

    let readiness = Readiness::default();
    readiness.set(true);
    let status_manager = manager.clone();
    let admin_server = AdminServer::new(
        &ctx,
        readiness,
        Arc::new(move || {
            use std::sync::atomic::Ordering::Relaxed;
            let c = &status_manager.counters;
            json!({
                "standbys": status_manager.list(),
                "invocations": {
                    "started": c.started.load(Relaxed),
                    "alive": c.alive.load(Relaxed),
                    "failed": c.failed.load(Relaxed),
                },
                "cut_off": c.cut_off.load(Relaxed),
                "fenced": c.fenced.load(Relaxed),
                "retired": c.retired.load(Relaxed),
                "restarted": c.restarted.load(Relaxed),
            })
        }),
    );
    let admin_task = tokio::spawn(admin_server.serve(admin));
    let probe_task = tokio::spawn(flow_probe::run(
        ctx.topology.clone(),
        ctx.node.clone(),
        ctx.shutdown.clone(),
    ));
    tracing::info!(api = %ctx.node.service_addr("supervisor").map(|a| a.to_string()).unwrap_or_default(),
        admin = %ctx.node.admin_addr(), "supervisor ready");

    ctx.shutdown.cancelled().await;
    probe_task.abort();
    manager.retire_all().await;
    let _ = api_task.await;
    admin_task.abort();
    Ok(())
}
