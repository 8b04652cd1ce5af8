//! `fabric-inet-mx`: the fabric's Internet mail server (SMTP).

use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use inet_mx::{handler, outbound};
use node_runtime::admin::{AdminServer, Readiness};
use node_runtime::sessions::{self, SessionLimit};
use node_runtime::{NodeArgs, NodeContext, shutdown};
use serde_json::json;
use smtp::Config;
use tokio::net::TcpListener;
use topology::Role;

/// Sessions served at once; more are told to come back (421).
const MAX_SESSIONS: usize = 1000;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = NodeArgs::parse();
    let ctx = NodeContext::init(&args, Role::InetMx)?;
    let listener = sessions::bind(&ctx, "smtp").await?;
    let admin = TcpListener::bind(ctx.node.admin_addr())
        .await
        .with_context(|| format!("binding the admin port {}", ctx.node.admin_addr()))?;
    shutdown::cancel_on_signals(ctx.shutdown.clone())?;

    let handler = Arc::new(handler::MxHandler::new(ctx.topology.clone(), &ctx.node));
    let mut config = Config::new(handler.hostname());
    config.max_message_bytes = usize::try_from(ctx.topology.limits.store_max_body_bytes)
        .unwrap_or(usize::MAX)
        .saturating_sub(64 * 1024);
    let config = Arc::new(config);
    // STARTTLS with the node's certificate from the fabric's CA (`fabric up` makes them).
    let acceptor = node_runtime::tls::acceptor(&ctx);

    let readiness = Readiness::default();
    readiness.set(true);
    let limit = SessionLimit::new(MAX_SESSIONS);
    let in_use = limit.clone();
    let admin_server = AdminServer::new(
        &ctx,
        readiness,
        Arc::new(move || json!({"sessions": in_use.in_use()})),
    );
    let admin_task = tokio::spawn(admin_server.serve(admin));
    // Outbound: deliver what customers sent (queue `to-internet`) to remote MXes.
    let worker = Arc::new(outbound::Worker::new(ctx.topology.clone(), &ctx.node));
    let outbound_task = tokio::spawn(worker.run(ctx.shutdown.clone()));
    tracing::info!(smtp = %listener.local_addr()?, admin = %ctx.node.admin_addr(), "inet-mx ready");
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
    let _ = outbound_task.await;
    admin_task.abort();
    Ok(())
}
