//! `fabric-dns`: the fabric's authoritative DNS server for the customer domains (UDP and TCP).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use anyhow::Context;
use clap::Parser;
use dns::answer::Authority;
use dns::health::{self, HealthBoard};
use dns::records::Zones;
use dns::server::{self, DnsServer, Stats};
use node_runtime::admin::{AdminServer, Readiness};
use node_runtime::{NodeArgs, NodeContext, shutdown};
use serde_json::{Value, json};
use tokio::net::{TcpListener, UdpSocket};
use topology::Role;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = NodeArgs::parse();
    let ctx = NodeContext::init(&args, Role::Dns)?;
    let addr = ctx
        .node
        .service_addr("dns")
        .context("a dns node needs a `dns` port")?;
    let udp = UdpSocket::bind(addr)
        .await
        .with_context(|| format!("binding UDP {addr}"))?;
    let tcp =
        node_runtime::sessions::listen(addr).with_context(|| format!("binding TCP {addr}"))?;
    let admin = TcpListener::bind(ctx.node.admin_addr())
        .await
        .with_context(|| format!("binding the admin port {}", ctx.node.admin_addr()))?;
    shutdown::cancel_on_signals(ctx.shutdown.clone())?;

    let zones = Zones::build(&ctx.topology)?;
    let board = HealthBoard::default();
    let authority = Arc::new(Authority::new(zones.clone(), board.clone()));
    let stats = Arc::new(Stats::default());
    let server = Arc::new(DnsServer::new(authority.clone(), stats.clone()));
    describe_metrics();

    let readiness = Readiness::default();
    readiness.set(true);
    let status = {
        let (authority, stats, board) = (authority.clone(), stats.clone(), board.clone());
        Arc::new(move || status(&authority, &stats, &board))
    };
    let admin_task = tokio::spawn(AdminServer::new(&ctx, readiness, status).serve(admin));
    let poller = tokio::spawn(health::run(
        Arc::new(zones),
        board,
        ctx.topology.edge.dns_refresh,
        ctx.shutdown.clone(),
    ));
    let udp_task = tokio::spawn(server::serve_udp(server.clone(), udp, ctx.shutdown.clone()));
    tracing::info!(dns = %addr, admin = %ctx.node.admin_addr(), domains = ctx.topology.domains.len(), "dns ready");
    server::serve_tcp(server, tcp, ctx.tasks.clone(), ctx.shutdown.clone()).await;
    let _ = udp_task.await;
    let _ = poller.await;
    shutdown::drain(&ctx.tasks, ctx.topology.timing.shutdown_deadline).await;
    admin_task.abort();
    Ok(())
}

/// `/status` counters: queries, bad requests, each MX host's preference and each group's health.
fn status(authority: &Authority, stats: &Stats, board: &HealthBoard) -> Value {
    let mut preferences = BTreeMap::new();
    for zone in &authority.zones().domains {
        let hosts: BTreeMap<String, u16> = zone
            .mx
            .iter()
            .map(|mx| (host_label(&mx.host), authority.preference(mx)))
            .collect();
        preferences.insert(zone.domain.clone(), hosts);
    }
    let sites: Vec<Value> = board
        .snapshot()
        .into_iter()
        .map(|(g, h)| {
            json!({"site": g.site, "role": g.role.as_str(), "servers": h.servers,
                   "healthy": h.healthy, "sessions": h.sessions})
        })
        .collect();
    json!({
        "queries": stats.queries.load(Ordering::Relaxed),
        "bad_requests": stats.bad_requests.load(Ordering::Relaxed),
        "preferences": preferences,
        "sites": sites,
    })
}

fn host_label(host: &hickory_server::proto::rr::Name) -> String {
    host.to_ascii().trim_end_matches('.').to_string()
}

fn describe_metrics() {
    metrics::describe_counter!(
        "fabric_dns_queries_total",
        "DNS questions answered, by question type, response code and transport."
    );
    metrics::describe_counter!(
        "fabric_dns_bad_requests_total",
        "Packets that are not a DNS query we can decode (answered FORMERR when possible, else dropped)."
    );
    metrics::describe_gauge!(
        "fabric_dns_mx_preference",
        "The preference each MX host of each customer domain has now (lower wins; 90: nothing behind it answers)."
    );
    metrics::describe_gauge!(
        "fabric_dns_site_healthy_servers",
        "Mail servers of a site (by role) that count as healthy: ready at the last /status poll, or slow at only that one."
    );
    metrics::describe_counter!(
        "fabric_dns_status_polls_total",
        "The health poller's /status polls of the mail servers, by outcome (ready, not_ready, unreachable, slow: no answer within 400 ms)."
    );
}
