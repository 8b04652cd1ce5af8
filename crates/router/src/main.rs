//! `fabric-router`: the fabric's edge router (see the library's documentation).

use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use node_runtime::admin::{AdminServer, Readiness};
use node_runtime::{NodeArgs, NodeContext, shutdown};
use router::{MAX_CONNECTIONS, Plan, Router};
use tokio::net::TcpListener;
use topology::Role;

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args = NodeArgs::parse();
    let ctx = NodeContext::init(&args, Role::Router)?;
    let plan = Plan::build(&ctx.topology, &ctx.node)?;
    let cap = router::fit_connection_cap(MAX_CONNECTIONS);
    if cap < MAX_CONNECTIONS {
        tracing::warn!(
            cap,
            wanted = MAX_CONNECTIONS,
            "the open-file limit allows fewer connections than wanted"
        );
    }
    let router = Arc::new(Router::new(plan, cap));
    let listeners = router.bind().await?;
    let admin = TcpListener::bind(ctx.node.admin_addr())
        .await
        .with_context(|| format!("binding the admin port {}", ctx.node.admin_addr()))?;
    shutdown::cancel_on_signals(ctx.shutdown.clone())?;

    let readiness = Readiness::default();
    readiness.set(true);
    let status = router.clone();
    let admin_server = AdminServer::new(&ctx, readiness, Arc::new(move || status.status()));
    let admin_task = tokio::spawn(admin_server.serve(admin));
    tracing::info!(
        zone = %router.plan.zone,
        forwards = ?router.plan.forwarded(),
        ports = router.plan.ports.len(),
        max_connections = cap,
        admin = %ctx.node.admin_addr(),
        "router ready"
    );
    router
        .run(
            listeners,
            ctx.shutdown.clone(),
            ctx.tasks.clone(),
            ctx.topology.timing.shutdown_deadline,
        )
        .await;
    admin_task.abort();
    Ok(())
}
