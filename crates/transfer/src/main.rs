//! `fabric-transfer`: moves mail from the Internet side's `inbound` queues into mailboxes on the
//! isolated side, and customers' `outbound` mail to the Internet side's `to-internet` queue, through
//! the stores of its site.

mod mover;
mod outbound;

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use node_runtime::admin::{AdminServer, Readiness};
use node_runtime::{NodeArgs, NodeContext, shutdown};
use serde_json::json;
use tokio::net::TcpListener;
use topology::Role;

/// Pause between polls of an empty queue: new mail moves within this.
const IDLE_POLL: Duration = Duration::from_millis(100);

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = NodeArgs::parse();
    let ctx = NodeContext::init(&args, Role::Transfer)?;
    let admin = TcpListener::bind(ctx.node.admin_addr())
        .await
        .with_context(|| format!("binding the admin port {}", ctx.node.admin_addr()))?;
    shutdown::cancel_on_signals(ctx.shutdown.clone())?;
    let readiness = Readiness::default();
    readiness.set(true);
    let admin_server = AdminServer::new(&ctx, readiness, Arc::new(|| json!({})));
    let admin_task = tokio::spawn(admin_server.serve(admin));

    let mover = Arc::new(mover::Mover {
        node: ctx.node.name.clone(),
        homes: store_client::homes::Homes::spawn(ctx.topology.clone()),
        retention: ctx.topology.timing.archive_retention,
    });
    let stores: Vec<(String, store_client::StoreClient)> = ctx
        .topology
        .site_stores(&ctx.node.site)
        .into_iter()
        .filter_map(|s| Some((s.name.clone(), mover::client(s)?)))
        .collect();
    let sweep = ctx.topology.timing.transfer_sweep;
    tracing::info!(stores = stores.len(), ?sweep, "transfer ready");
    let mut last_sweep = Instant::now();
    loop {
        let mut moved = 0usize;
        for (name, store) in &stores {
            match store.lease("inbound", mover::BATCH, mover::LEASE).await {
                Ok(items) => {
                    moved += items.len();
                    // Every leased item at once: their store writes share group commits.
                    let mut batch = tokio::task::JoinSet::new();
                    for item in items {
                        let (mover, store, name) = (mover.clone(), store.clone(), name.clone());
                        batch.spawn(async move { mover.deliver(&name, &store, &item).await });
                    }
                    while batch.join_next().await.is_some() {}
                }
                Err(e) => tracing::debug!(store = %name, error = %e, "inbound queue unreachable"),
            }
            match store.lease("outbound", mover::BATCH, mover::LEASE).await {
                Ok(items) => {
                    moved += items.len();
                    let mut batch = tokio::task::JoinSet::new();
                    for item in items {
                        let (mover, store, name) = (mover.clone(), store.clone(), name.clone());
                        batch.spawn(async move { mover.forward(&name, &store, &item).await });
                    }
                    while batch.join_next().await.is_some() {}
                }
                Err(e) => tracing::debug!(store = %name, error = %e, "outbound queue unreachable"),
            }
        }
        if last_sweep.elapsed() >= sweep {
            last_sweep = Instant::now();
            for (name, store) in &stores {
                match mover.purge_archive(store).await {
                    Ok(0) => {}
                    Ok(n) => tracing::info!(store = %name, purged = n, "archive purged"),
                    Err(e) => tracing::debug!(store = %name, error = %e, "archive sweep failed"),
                }
            }
        }
        if moved == 0 {
            tokio::select! {
                _ = tokio::time::sleep(IDLE_POLL) => {}
                _ = ctx.shutdown.cancelled() => break,
            }
        } else if ctx.shutdown.is_cancelled() {
            break;
        }
    }
    admin_task.abort();
    Ok(())
}
