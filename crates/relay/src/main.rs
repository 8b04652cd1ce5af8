//! `fabric-relay`: the secondary MX of the other site's customer domains (the DNS lists this site's
//! relays as MX 20 of every domain at home elsewhere).
//!
//! - `accept`: an SMTP server for those domains only (existing mailboxes, the sender blocklist),
//!   answering 250 once the message is on the `relay` queue of this site's stores, mirrored
//!   (invariant 1), with an `X-Fabric-Id` header naming the id it will be handed over with.
//! - `worker`: leases the queue and hands each message to its home site (`handover`) every
//!   `timing.relay_retry`; never bounces customer mail because the primary is down (invariant 2):
//!   a delay notice after `relay_delay_warning`, a bounce only after `relay_max_lifetime` or when an
//!   operator asks (`fabric queue bounce`).
//! - `standby`: past `timing.standby_attempts` rounds or `standby_after`, asks this site's supervisor
//!   to stand a server in for each failed one of the home site, then hands the mail to it.
//! - `returns`: delay notices and bounces (RFC 3464) to the sender.

mod accept;
mod handover;
mod returns;
mod standby;
mod worker;

use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use node_runtime::admin::{AdminServer, Readiness};
use node_runtime::sessions::{self, SessionLimit};
use node_runtime::{NodeArgs, NodeContext, shutdown};
use serde_json::json;
use smtp::Config;
use tokio::net::TcpListener;
use topology::Role;

/// Sessions served at once; more are told to come back (421). The DNS reads the count in /status.
const MAX_SESSIONS: usize = 1000;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = NodeArgs::parse();
    let ctx = NodeContext::init(&args, Role::Relay)?;
    let listener = sessions::bind(&ctx, "smtp").await?;
    let admin = TcpListener::bind(ctx.node.admin_addr())
        .await
        .with_context(|| format!("binding the admin port {}", ctx.node.admin_addr()))?;
    shutdown::cancel_on_signals(ctx.shutdown.clone())?;

    let hostname = format!("{}.{}", ctx.node.name, ctx.topology.fabric.name);
    let handler = Arc::new(accept::handler(&ctx.topology, &ctx.node, &hostname));
    let mut config = Config::new(hostname.clone());
    config.max_message_bytes = usize::try_from(ctx.topology.limits.store_max_body_bytes)
        .unwrap_or(usize::MAX)
        .saturating_sub(64 * 1024);
    let config = Arc::new(config);
    let acceptor = node_runtime::tls::acceptor(&ctx);

    let readiness = Readiness::default();
    readiness.set(true);
    let limit = SessionLimit::new(MAX_SESSIONS);
    let in_use = limit.clone();
    let worker = Arc::new(worker::Worker::new(
        ctx.topology.clone(),
        &ctx.node,
        &hostname,
    ));
    let stats = worker.stats();
    let admin_server = AdminServer::new(
        &ctx,
        readiness,
        Arc::new(move || {
            let mut counters = stats.snapshot();
            if let Some(m) = counters.as_object_mut() {
                m.insert("sessions".into(), json!(in_use.in_use()));
            }
            counters
        }),
    );
    let admin_task = tokio::spawn(admin_server.serve(admin));
    let worker_task = tokio::spawn(worker.run(ctx.shutdown.clone()));
    let domains: Vec<&str> = ctx
        .topology
        .relayed_domains(&ctx.node.site)
        .iter()
        .map(|d| d.name.as_str())
        .collect();
    tracing::info!(smtp = %listener.local_addr()?, admin = %ctx.node.admin_addr(), domains = ?domains, "relay ready");
    sessions::accept_until_shutdown(
        &ctx,
        listener,
        limit,
        b"421 4.7.0 too many sessions; try again later\r\n",
        move |stream, peer| {
            let (handler, config, acceptor) = (handler.clone(), config.clone(), acceptor.clone());
            async move { smtp::serve(stream, peer, &config, handler.as_ref(), acceptor).await }
        },
    )
    .await;
    let _ = worker_task.await;
    admin_task.abort();
    Ok(())
}
