//! `fabric-redirector`: the fabric's health-checked L4 load balancer, one per site and zone.
//!
//! For every service port the node declares it listens, balances sessions over its site's servers of
//! that service in its zone (`Topology::backends`), and over the other sites' redirectors
//! (`Topology::other_redirectors`) when none of its own is healthy. See `pool` (health and pick),
//! `health` (active checks) and `forward` (a session: connect, retry, splice).

mod forward;
mod health;
mod pool;
mod service;

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use node_runtime::admin::{AdminServer, Readiness};
use node_runtime::sessions::{self, SessionLimit};
use node_runtime::{NodeArgs, NodeContext, shutdown};
use serde_json::{Map, Value};
use tokio::net::TcpListener;
use topology::Role;

use crate::forward::Dialer;
use crate::pool::{Backend, Kind, Pool};
use crate::service::Service;

/// Sessions served at once per service; more are told to come back.
const MAX_SESSIONS: usize = 10_000;

/// One thread: relaying a session is kernel work (about 90% of the redirector's CPU is in the TCP
/// stack), and a second worker only adds cross-thread wakeups on the fabric's two-core machines
/// (measured against `tokio::main`'s default of one worker per core in `docs/benchmarks.md`).
#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args = NodeArgs::parse();
    let ctx = NodeContext::init(&args, Role::Redirector)?;
    describe_metrics();
    let node = &ctx.node;
    let topology = &ctx.topology;
    let zone = node
        .zones
        .first()
        .context("a redirector sits in one zone")?
        .clone();
    let edge = &topology.edge;
    let interval = edge.check_interval;
    let dialer = Arc::new(Dialer {
        source: IpAddr::V4(node.source_ip()),
        send_proxy: edge.send_proxy,
        handoff: edge.handoff,
        connect_timeout: (interval * 4).max(Duration::from_secs(1)),
        // A live server of the fabric greets in milliseconds; a frozen one (SIGSTOP: the kernel still
        // accepts) never does, and every session that picked it before the checks took it out waits
        // this long before moving on to the next server.
        greeting_timeout: (interval * 8).max(Duration::from_secs(2)),
        redirectors: Arc::new(
            topology
                .nodes_with_role(Role::Redirector)
                .flat_map(topology::Node::addresses)
                .map(IpAddr::V4)
                .collect(),
        ),
        relays: Arc::new(
            topology
                .relay_addresses()
                .into_iter()
                .map(IpAddr::V4)
                .collect(),
        ),
    });

    let mut pools = Vec::new();
    for name in node.ports.keys() {
        let service = Service::parse(name)
            .with_context(|| format!("a redirector cannot balance {name:?}"))?;
        let backend = |n: &topology::Node, kind| {
            n.service_addr(name).map(|addr| {
                Arc::new(Backend::new(
                    &n.name,
                    service,
                    addr,
                    kind,
                    edge.check_rise,
                    edge.check_fall,
                ))
            })
        };
        let local: Vec<Arc<Backend>> = topology
            .backends(&node.site, &zone, name)
            .into_iter()
            .filter_map(|n| backend(n, Kind::Local))
            .collect();
        let other: Vec<Arc<Backend>> = topology
            .other_redirectors(&node.site, &zone)
            .into_iter()
            .filter_map(|n| backend(n, Kind::OtherSite))
            .collect();
        if local.is_empty() {
            tracing::warn!(
                service = name,
                "no server of this site offers the service; only the other site's redirector can take it"
            );
        }
        let listener = sessions::bind(&ctx, name).await?;
        pools.push((Arc::new(Pool::new(service, local, other)), listener));
    }
    let admin = TcpListener::bind(node.admin_addr())
        .await
        .with_context(|| format!("binding the admin port {}", node.admin_addr()))?;
    shutdown::cancel_on_signals(ctx.shutdown.clone())?;

    for (pool, _) in &pools {
        for b in pool.local.iter().chain(&pool.other) {
            tokio::spawn(health::run(
                b.clone(),
                dialer.clone(),
                interval,
                ctx.shutdown.clone(),
            ));
        }
    }
    let all: Vec<Arc<Pool>> = pools.iter().map(|(p, _)| p.clone()).collect();
    let status = move || {
        let services: Map<String, Value> = all
            .iter()
            .map(|p| (p.service.as_str().to_string(), p.status()))
            .collect();
        serde_json::json!({ "services": services })
    };
    let readiness = Readiness::default();
    readiness.set(true);
    let admin_task = tokio::spawn(AdminServer::new(&ctx, readiness, Arc::new(status)).serve(admin));
    tracing::info!(zone = %zone, services = ?node.ports.keys().collect::<Vec<_>>(), send_proxy = edge.send_proxy, handoff = edge.handoff, "redirector ready");

    let mut listeners = tokio::task::JoinSet::new();
    for (pool, listener) in pools {
        let (ctx, dialer) = (ctx.clone(), dialer.clone());
        listeners.spawn(async move {
            let busy = pool.service.busy();
            sessions::accept_with_peer_until_shutdown(
                &ctx,
                listener,
                SessionLimit::new(MAX_SESSIONS),
                busy,
                move |stream, client, peer| {
                    forward::serve(pool.clone(), dialer.clone(), stream, client, peer)
                },
            )
            .await
        });
    }
    while listeners.join_next().await.is_some() {}
    admin_task.abort();
    Ok(())
}

fn describe_metrics() {
    metrics::describe_gauge!(
        "fabric_redirector_backend_up",
        "1 while the backend is in the pool (healthy), 0 while it is out."
    );
    metrics::describe_gauge!(
        "fabric_redirector_backend_connections",
        "Client sessions open to the backend now."
    );
    metrics::describe_counter!(
        "fabric_redirector_picks_total",
        "Sessions sent to the backend (every attempt, retries included)."
    );
    metrics::describe_counter!(
        "fabric_redirector_backend_failures_total",
        "Failed health checks (kind=check) and failed client connects (kind=connect)."
    );
    metrics::describe_counter!(
        "fabric_redirector_state_changes_total",
        "Times the backend went up or down (label to)."
    );
    metrics::describe_counter!(
        "fabric_redirector_sessions_total",
        "Client sessions accepted."
    );
    metrics::describe_counter!(
        "fabric_redirector_sessions_failed_total",
        "Client sessions closed because no backend, local or other site, could take them."
    );
    metrics::describe_counter!(
        "fabric_redirector_retries_total",
        "Sessions moved to another backend after a connect or greeting failed."
    );
}
