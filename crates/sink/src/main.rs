//! `fabric-sink`: the simulated Internet outside the fabric. An SMTP sink that acts as every remote
//! MX (keeps what it receives, durably, and can play a troubled MX) and an HTTP SMS gateway sink.
//! See `api` for the HTTP interface (on the node's `sms` port).

mod api;
mod mx;
mod spool;

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

/// SMTP sessions served at once; more are told to come back (421).
const MAX_SESSIONS: usize = 200;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = NodeArgs::parse();
    let ctx = NodeContext::init(&args, Role::Sink)?;
    let smtp_dir = ctx.data_dir.join("smtp");
    let sms_dir = ctx.data_dir.join("sms");
    let smtp_spool = Arc::new(
        spool::Spool::open(&smtp_dir)
            .with_context(|| format!("opening the mail spool {}", smtp_dir.display()))?,
    );
    let sms_spool = Arc::new(
        spool::Spool::open(&sms_dir)
            .with_context(|| format!("opening the SMS spool {}", sms_dir.display()))?,
    );
    let listener = sessions::bind(&ctx, "smtp").await?;
    let http = sessions::bind(&ctx, "sms").await?;
    let admin = TcpListener::bind(ctx.node.admin_addr())
        .await
        .with_context(|| format!("binding the admin port {}", ctx.node.admin_addr()))?;
    shutdown::cancel_on_signals(ctx.shutdown.clone())?;

    let mode = mx::ModeSwitch::default();
    mode.set(mx::Mode::Accept);
    let handler = Arc::new(mx::SinkHandler {
        spool: smtp_spool.clone(),
        mode: mode.clone(),
    });
    let config = Arc::new(Config::new(format!(
        "{}.{}",
        ctx.node.name, ctx.topology.fabric.name
    )));
    // STARTTLS is offered when the fabric's certificates exist (`fabric up` makes them).
    let acceptor = node_runtime::tls::acceptor(&ctx);

    let app = api::router(api::Api {
        smtp: smtp_spool,
        sms: sms_spool,
        mode: mode.clone(),
    });
    let stop = ctx.shutdown.clone();
    let http_task = tokio::spawn(async move {
        axum::serve(http, app)
            .with_graceful_shutdown(async move { stop.cancelled().await })
            .await
    });

    let readiness = Readiness::default();
    readiness.set(true);
    let limit = SessionLimit::new(MAX_SESSIONS);
    let in_use = limit.clone();
    let status_mode = mode.clone();
    let admin_server = AdminServer::new(
        &ctx,
        readiness,
        Arc::new(
            move || json!({"sessions": in_use.in_use(), "smtp_mode": status_mode.get().as_str()}),
        ),
    );
    let admin_task = tokio::spawn(admin_server.serve(admin));
    tracing::info!(smtp = %listener.local_addr()?, sms = %ctx.node.service_addr("sms").map(|a| a.to_string()).unwrap_or_default(),
        admin = %ctx.node.admin_addr(), "sink ready");
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
    http_task.abort();
    admin_task.abort();
    Ok(())
}
