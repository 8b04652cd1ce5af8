//! `fabric-store`: runs one store node of a topology.

use anyhow::Context;
use clap::Parser;
use node_runtime::{NodeArgs, NodeContext, shutdown};
use topology::Role;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = NodeArgs::parse();
    let ctx = NodeContext::init(&args, Role::Store)?;
    let data_addr = ctx
        .node
        .service_addr("store")
        .context("the node declares no store port")?;
    let data = node_runtime::sessions::listen(data_addr)
        .with_context(|| format!("binding the store port {data_addr}"))?;
    let admin = tokio::net::TcpListener::bind(ctx.node.admin_addr())
        .await
        .with_context(|| format!("binding the admin port {}", ctx.node.admin_addr()))?;
    shutdown::cancel_on_signals(ctx.shutdown.clone())?;
    tracing::info!(store = %data_addr, admin = %ctx.node.admin_addr(), data_dir = %ctx.data_dir.display(), "store starting");
    let result = store::serve(ctx, data, admin).await;
    if let Err(e) = &result {
        tracing::error!(error = format!("{e:#}"), "store failed");
    }
    result
}
