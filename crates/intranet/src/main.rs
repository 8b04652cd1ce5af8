//! `fabric-intranet`: the customers' mail server on the isolated side (POP3 today).

mod mailbox;

use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use node_runtime::admin::{AdminServer, Readiness};
use node_runtime::{NodeArgs, NodeContext, shutdown};
use serde_json::json;
use store_client::directory::Directory;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use topology::Role;

const MAX_SESSIONS: usize = 1000;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = NodeArgs::parse();
    let ctx = NodeContext::init(&args, Role::Intranet)?;
    let pop3_addr = ctx
        .node
        .service_addr("pop3")
        .context("the node declares no pop3 port")?;
    let pop3_listener = TcpListener::bind(pop3_addr)
        .await
        .with_context(|| format!("binding the POP3 port {pop3_addr}"))?;
    let admin = TcpListener::bind(ctx.node.admin_addr())
        .await
        .with_context(|| format!("binding the admin port {}", ctx.node.admin_addr()))?;
    shutdown::cancel_on_signals(ctx.shutdown.clone())?;
    let mailboxes = Arc::new(mailbox::Mailboxes {
        topology: ctx.topology.clone(),
        directory: Directory::new(&ctx.topology),
    });
    let config = Arc::new(pop3::Config::new(format!(
        "{}.{}",
        ctx.node.name, ctx.topology.fabric.name
    )));
    // STLS with the node's certificate from the fabric's CA; logins wait for it.
    let acceptor = match node_runtime::tls::server_config(&ctx.tls_dir, &ctx.node.name) {
        Ok(c) => Some(tokio_rustls::TlsAcceptor::from(c)),
        Err(e) => {
            tracing::warn!(error = %e, "no certificate: STLS is not offered");
            None
        }
    };
    let readiness = Readiness::default();
    readiness.set(true);
    let sessions = Arc::new(Semaphore::new(MAX_SESSIONS));
    let s2 = sessions.clone();
    let admin_server = AdminServer::new(
        &ctx,
        readiness,
        Arc::new(move || json!({"sessions": MAX_SESSIONS - s2.available_permits()})),
    );
    let admin_task = tokio::spawn(admin_server.serve(admin));
    tracing::info!(pop3 = %pop3_addr, "intranet ready");
    loop {
        let (stream, peer) = tokio::select! {
            a = pop3_listener.accept() => match a {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    continue;
                }
            },
            _ = ctx.shutdown.cancelled() => break,
        };
        let _ = stream.set_nodelay(true);
        let (mailboxes, config, sessions) = (mailboxes.clone(), config.clone(), sessions.clone());
        let acceptor = acceptor.clone();
        ctx.tasks.spawn(async move {
            let mut stream = stream;
            let Ok(_permit) = sessions.try_acquire() else {
                use tokio::io::AsyncWriteExt;
                let _ = stream
                    .write_all(b"-ERR [SYS/TEMP] too many sessions\r\n")
                    .await;
                return;
            };
            if let Err(e) = pop3::serve(stream, &config, mailboxes.as_ref(), acceptor).await {
                tracing::debug!(peer = %peer, error = %e, "POP3 session ended with an I/O error");
            }
        });
    }
    ctx.tasks.close();
    let _ = tokio::time::timeout(ctx.topology.timing.shutdown_deadline, ctx.tasks.wait()).await;
    admin_task.abort();
    Ok(())
}
