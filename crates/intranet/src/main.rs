//! `fabric-intranet`: the customers' mail server on the isolated side (POP3, IMAP, submission).

mod imap_backend;
mod login_cache;
mod mailbox;
mod submission;
mod submission_id;

use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use node_runtime::admin::{AdminServer, Readiness};
use node_runtime::sessions::{self, SessionLimit};
use node_runtime::{NodeArgs, NodeContext, shutdown};
use serde_json::json;
use store_client::directory::Directory;
use tokio::net::TcpListener;
use topology::Role;

const MAX_SESSIONS: usize = 1000;

fn describe_metrics() {
    metrics::describe_counter!(
        "fabric_intranet_login_cache_total",
        "POP3, IMAP and submission logins by whether a recent argon2 verification was reused (hit) or argon2 ran (miss)."
    );
    metrics::describe_counter!(
        "fabric_intranet_pop3_bodies_total",
        "Message bodies POP3 RETR and TOP served, by source: store (a store request, which reads the next messages ahead) or read_ahead."
    );
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = NodeArgs::parse();
    let ctx = NodeContext::init(&args, Role::Intranet)?;
    describe_metrics();
    let pop3_listener = sessions::bind(&ctx, "pop3").await?;
    let imap_listener = sessions::bind(&ctx, "imap").await?;
    let admin = TcpListener::bind(ctx.node.admin_addr())
        .await
        .with_context(|| format!("binding the admin port {}", ctx.node.admin_addr()))?;
    shutdown::cancel_on_signals(ctx.shutdown.clone())?;
    let mailboxes = Arc::new(mailbox::Mailboxes {
        directory: Directory::new(&ctx.topology),
        homes: store_client::homes::Homes::spawn(ctx.topology.clone()),
        logins: login_cache::LoginCache::default(),
    });
    let config = Arc::new(pop3::Config::new(format!(
        "{}.{}",
        ctx.node.name, ctx.topology.fabric.name
    )));
    // STLS with the node's certificate from the fabric's CA; logins wait for it.
    let acceptor = node_runtime::tls::acceptor(&ctx);
    let submission = submission::spawn(&ctx, mailboxes.clone(), acceptor.clone()).await?;
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
    tracing::info!(pop3 = %pop3_listener.local_addr()?, imap = %imap_listener.local_addr()?, "intranet ready");
    let imap = imap_backend::listen(
        &ctx,
        imap_listener,
        limit.clone(),
        mailboxes.clone(),
        acceptor.clone(),
    );
    let pop3 = sessions::accept_until_shutdown(
        &ctx,
        pop3_listener,
        limit,
        b"-ERR [SYS/TEMP] too many sessions\r\n",
        move |stream, _peer| {
            let (mailboxes, config, acceptor) =
                (mailboxes.clone(), config.clone(), acceptor.clone());
            async move { pop3::serve(stream, &config, mailboxes.as_ref(), acceptor).await }
        },
    );
    tokio::join!(pop3, imap);
    let _ = submission.await;
    admin_task.abort();
    Ok(())
}
