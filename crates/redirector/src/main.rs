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

/// Threads that serve sessions, each with its own runtime and its own listener per port.
const SESSION_THREADS: usize = 2;

/// The main thread runs a `current_thread` runtime: health checks, the admin port, the sessions that
/// routers hand over on the same host, and its share of the TCP sessions. Relaying is kernel work
/// (about 90% of the redirector's CPU is in the TCP stack), and tokio's multi-thread runtime only adds
/// cross-thread wakeups on the fabric's two-core machines; but one thread alone is a serial stage that
/// leaves a core idle while it is preempted. So [`SESSION_THREADS`] - 1 more threads each run their
/// own runtime with their own listener per port (`SO_REUSEPORT`: the kernel spreads new connections
/// over them), as HAProxy's threads do (`docs/benchmarks.md`, "The redirector's second thread").
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
        let addr = node
            .service_addr(name)
            .with_context(|| format!("the node declares no {name} port"))?;
        let listener = sessions::listen_per_thread(addr)
            .with_context(|| format!("binding the {name} port {addr}"))?;
        pools.push((Arc::new(Pool::new(service, local, other)), listener, addr));
    }
    let admin = TcpListener::bind(node.admin_addr())
        .await
        .with_context(|| format!("binding the admin port {}", node.admin_addr()))?;
    shutdown::cancel_on_signals(ctx.shutdown.clone())?;

    for (pool, _, _) in &pools {
        for b in pool.local.iter().chain(&pool.other) {
            tokio::spawn(health::run(
                b.clone(),
                dialer.clone(),
                interval,
                ctx.shutdown.clone(),
            ));
        }
    }
    let all: Vec<Arc<Pool>> = pools.iter().map(|(p, _, _)| p.clone()).collect();
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
    let mut threads = Vec::new();
    for (pool, listener, addr) in pools {
        let limit = SessionLimit::new(MAX_SESSIONS);
        for i in 1..SESSION_THREADS {
            let listener = sessions::listen_per_thread(addr)
                .with_context(|| format!("binding {addr} for session thread {i}"))?;
            let (ctx, dialer, pool, limit) =
                (ctx.clone(), dialer.clone(), pool.clone(), limit.clone());
            let spawned = std::thread::Builder::new()
                .name(format!("sessions-{i}"))
                .spawn(move || {
                    let runtime = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build();
                    match runtime {
                        Ok(rt) => rt.block_on(accept(ctx, dialer, pool, listener, limit, i)),
                        Err(e) => tracing::error!(error = %e, "no runtime for a session thread"),
                    }
                })
                .context("starting a session thread")?;
            threads.push(spawned);
        }
        let (ctx, dialer) = (ctx.clone(), dialer.clone());
        listeners.spawn(accept(ctx, dialer, pool, listener, limit, 0));
    }
    while listeners.join_next().await.is_some() {}
    for t in threads {
        let _ = tokio::task::spawn_blocking(move || t.join()).await;
    }
    admin_task.abort();
    Ok(())
}

/// Serves `pool`'s port on the runtime it runs on until shutdown: session thread `thread` (0, the
/// main thread, also takes the sessions handed to the port).
async fn accept(
    ctx: NodeContext,
    dialer: Arc<Dialer>,
    pool: Arc<Pool>,
    listener: TcpListener,
    limit: SessionLimit,
    thread: usize,
) {
    let busy = pool.service.busy();
    let handoff = if thread == 0 {
        sessions::Handoff::Receive
    } else {
        sessions::Handoff::TcpOnly
    };
    let sessions = metrics::counter!(
        "fabric_redirector_thread_sessions_total",
        "service" => pool.service.as_str(),
        "thread" => thread.to_string()
    );
    sessions::accept_sessions(
        &ctx,
        listener,
        limit,
        busy,
        handoff,
        move |stream, client, peer| {
            sessions.increment(1);
            forward::serve(pool.clone(), dialer.clone(), stream, client, peer)
        },
    )
    .await
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
        "fabric_redirector_thread_sessions_total",
        "Client sessions each session thread served, by service (thread 0 also takes the handed-over ones)."
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
