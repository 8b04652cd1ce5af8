//! `fabric-inet-mx`: the fabric's Internet mail server (SMTP).

mod antivirus;
mod handler;

use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use node_runtime::admin::{AdminServer, Readiness};
use node_runtime::{NodeArgs, NodeContext, shutdown};
use serde_json::json;
use smtp::Config;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use topology::Role;

/// Sessions served at once; more are told to come back (421).
const MAX_SESSIONS: usize = 1000;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = NodeArgs::parse();
    let ctx = NodeContext::init(&args, Role::InetMx)?;
    let smtp_addr = ctx
        .node
        .service_addr("smtp")
        .context("the node declares no smtp port")?;
    let listener = TcpListener::bind(smtp_addr)
        .await
        .with_context(|| format!("binding the SMTP port {smtp_addr}"))?;
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
    let acceptor = match node_runtime::tls::server_config(&ctx.tls_dir, &ctx.node.name) {
        Ok(c) => Some(tokio_rustls::TlsAcceptor::from(c)),
        Err(e) => {
            tracing::warn!(error = %e, "no certificate: STARTTLS is not offered");
            None
        }
    };
    let readiness = Readiness::default();
    readiness.set(true);
    let sessions = Arc::new(Semaphore::new(MAX_SESSIONS));
    let status_sessions = sessions.clone();
    let admin_server = AdminServer::new(
        &ctx,
        readiness,
        Arc::new(move || json!({"sessions": MAX_SESSIONS - status_sessions.available_permits()})),
    );
    let admin_task = tokio::spawn(admin_server.serve(admin));
    tracing::info!(smtp = %smtp_addr, admin = %ctx.node.admin_addr(), "inet-mx ready");

    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    continue;
                }
            },
            _ = ctx.shutdown.cancelled() => break,
        };
        let _ = stream.set_nodelay(true);
        let (handler, config, sessions) = (handler.clone(), config.clone(), sessions.clone());
        let acceptor = acceptor.clone();
        ctx.tasks.spawn(async move {
            let mut stream = stream;
            let Ok(_permit) = sessions.try_acquire() else {
                metrics::counter!("fabric_smtp_refusals_total", "kind" => "too_many_sessions")
                    .increment(1);
                use tokio::io::AsyncWriteExt;
                let _ = stream
                    .write_all(b"421 4.7.0 too many sessions; try again later\r\n")
                    .await;
                return;
            };
            if let Err(e) = smtp::serve(stream, peer, &config, handler.as_ref(), acceptor).await {
                tracing::debug!(peer = %peer, error = %e, "session ended with an I/O error");
            }
        });
    }
    tracing::info!("stopping: no new sessions; waiting for the open ones");
    ctx.tasks.close();
    let deadline = ctx.topology.timing.shutdown_deadline;
    if tokio::time::timeout(deadline, ctx.tasks.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            ?deadline,
            "sessions still open at the deadline; stopping anyway"
        );
    }
    admin_task.abort();
    Ok(())
}
