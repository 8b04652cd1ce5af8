//! Authenticated submission (RFC 6409 with AUTH, RFC 4954): customers send mail here from the isolated
//! side. The SMTP session (crate `smtp`, submission mode) offers AUTH only inside TLS and refuses MAIL
//! before AUTH; this handler decides the rest:
//!
//! - AUTH: the password against the argon2 hash in the directory;
//! - MAIL FROM: only the authenticated user's own address (553 5.7.1 otherwise);
//! - RCPT TO: a customer domain's address must exist (550 5.1.1); any other domain is allowed (the
//!   user is authenticated);
//! - DATA: a fabric message id (the same for a resend of the same message: `submission_id`) and a
//!   Received header, then, all at once: each local recipient's INBOX
//!   on the mailbox's home store (exactly once by the fabric id; never through the Internet side), ONE
//!   item on the `outbound` queue of this site's store for the remote recipients (envelope in its
//!   metadata), and a copy in the sender's `Sent`. 250 only once every one of those writes returned
//!   (each is durable on two stores when it returns).

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use serde_json::json;
use smtp::{Address, AuthError, Envelope, Handler, Reply};
use store_client::StoreClient;
use topology::Topology;

use crate::mailbox::Mailboxes;

pub struct Submission {
    node: String,
    hostname: String,
    topology: Arc<Topology>,
    mailboxes: Arc<Mailboxes>,
    /// This site's stores, in order: where the `outbound` queue item is written.
    stores: Vec<(String, StoreClient)>,
}

fn client(node: &topology::Node) -> Option<StoreClient> {
    StoreClient::for_node(node).map(|c| c.with_timeout(Duration::from_secs(30)))
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

impl Submission {
    pub fn new(
        topology: Arc<Topology>,
        node: &topology::Node,
        mailboxes: Arc<Mailboxes>,
    ) -> Submission {
        let stores = topology
            .site_stores(&node.site)
            .into_iter()
            .filter_map(|s| Some((s.name.clone(), client(s)?)))
            .collect();
        Submission {
            node: node.name.clone(),
            hostname: format!("{}.{}", node.name, topology.fabric.name),
            topology,
            mailboxes,
            stores,
        }
    }

    pub fn hostname(&self) -> &str {
        &self.hostname
    }

    /// The home store of a mailbox.
    fn home(&self, address: &str) -> Result<(String, StoreClient), String> {
        let node = self
            .mailboxes
            .homes
            .node(address)
            .ok_or_else(|| format!("{address}: no home store for its domain"))?;
        Ok((
            node.name.clone(),
            client(node).ok_or_else(|| format!("{}: no store port", node.name))?,
        ))
    }

    fn received(&self, env: &Envelope, id: &str) -> String {
        let date = httpdate::fmt_http_date(SystemTime::now());
        // RFC 3848: ESMTPSA is ESMTP with TLS and AUTH.
        format!(
            "Received: from {} ([{}])\r\n\tby {} (Mail Fabric) with ESMTPSA id {id};\r\n\t{date}\r\n",
            env.helo,
            env.peer.ip(),
            self.hostname,
        )
    }

    /// Appends `body` to `folder` of `user` on the mailbox's home store; returns a trace detail.
    async fn append(
        &self,
        id: &str,
        user: &str,
        folder: &str,
        flags: &[&str],
        body: Vec<u8>,
    ) -> Result<(StoreClient, String), String> {
        let (name, store) = self.home(user)?;
        let w = store
            .append(user, folder, Some(id), flags, body)
            .await
            .map_err(|e| format!("appending to {user} {folder} on {name}: {e}"))?;
        tracing::info!(msg_id = %id, user = %user, folder, store = %name, uid = w.value.uid,
            duplicate = w.value.duplicate, copies = ?w.copies, "stored in mailbox");
        Ok((
            store,
            format!("{user} {folder} uid {} on {name}", w.value.uid),
        ))
    }

    /// One item on `outbound` of this site's first store that answers.
    async fn enqueue_outbound(
        &self,
        id: &str,
        env: &Envelope,
        from: &str,
        remote: &[String],
        body: Vec<u8>,
    ) -> Result<(StoreClient, String), String> {
        let meta = json!({
            "from": from,
            "rcpts": remote,
            "helo": env.helo,
            "peer": env.peer.to_string(),
            "submitted_by": self.node,
            "submitted_at_ms": now_ms(),
        });
        let mut last = String::from("no store in this site");
        for (name, store) in &self.stores {
            match store
                .enqueue("outbound", Some(id), Some(&meta), body.clone())
                .await
            {
                Ok(w) => {
                    tracing::info!(msg_id = %id, store = %name, rcpts = remote.len(), copies = ?w.copies,
                        degraded = w.degraded, "queued for the Internet");
                    return Ok((
                        store.clone(),
                        format!(
                            "queued on outbound of {name} for {} remote recipient(s)",
                            remote.len()
                        ),
                    ));
                }
                Err(e) => {
                    tracing::warn!(msg_id = %id, store = %name, error = %e, "outbound enqueue failed; trying the next store");
                    last = e.to_string();
                }
            }
        }
        Err(last)
    }
}

impl Handler for Submission {
    async fn authenticate(&self, user: &str, password: &str) -> Result<String, AuthError> {
        match self.mailboxes.authenticate(user, password).await {
            Ok(address) => Ok(address),
            Err(pop3::LoginError::Invalid) => {
                metrics::counter!("fabric_submission_auth_failures_total").increment(1);
                Err(AuthError::Invalid)
            }
            Err(pop3::LoginError::Unavailable(e)) => Err(AuthError::Unavailable(e)),
        }
    }

    async fn check_sender(&self, env: &Envelope, from: Option<&Address>) -> Result<(), Reply> {
        let user = env.auth.as_deref().unwrap_or("");
        let own = from.is_some_and(|f| f.as_string().eq_ignore_ascii_case(user));
        if !own {
            metrics::counter!("fabric_submission_refused_total", "reason" => "sender_not_owned")
                .increment(1);
            tracing::info!(user = %user, from = ?from.map(|f| f.as_string()), "MAIL FROM not the authenticated user's address");
            return Err(Reply::new(
                553,
                "5.7.1",
                format!("sender address not owned by {user}"),
            ));
        }
        Ok(())
    }

    async fn check_recipient(&self, _env: &Envelope, rcpt: &Address) -> Result<(), Reply> {
        if !self.topology.is_customer_domain(&rcpt.domain) {
            return Ok(());
        }
        let address = rcpt.as_string().to_ascii_lowercase();
        match self.mailboxes.directory.user(&address).await {
            Ok(Some(_)) => Ok(()),
            Ok(None) => {
                metrics::counter!("fabric_submission_refused_total", "reason" => "unknown_user")
                    .increment(1);
                Err(Reply::new(550, "5.1.1", "no such mailbox"))
            }
            Err(e) => {
                tracing::warn!(error = %e, "directory unreadable");
                Err(Reply::new(
                    451,
                    "4.3.0",
                    "cannot check the recipient now; try later",
                ))
            }
        }
    }

    async fn deliver(&self, env: &Envelope, message: Vec<u8>) -> Reply {
        let (Some(user), Some(from)) = (env.auth.clone(), env.from.as_ref()) else {
            return Reply::new(530, "5.7.0", "Authentication required");
        };
        let from = from.as_string().to_ascii_lowercase();
        let started = Instant::now();
        let (mut local, mut remote) = (Vec::new(), Vec::new());
        for rcpt in &env.rcpts {
            let address = rcpt.as_string().to_ascii_lowercase();
            let list = if self.topology.is_customer_domain(&rcpt.domain) {
                &mut local
            } else {
                &mut remote
            };
            if !list.contains(&address) {
                list.push(address);
            }
        }
        // A resend after a 451 names the same id, so writes that succeeded the first time are not
        // repeated (see `submission_id`).
        let all: Vec<String> = local.iter().chain(&remote).cloned().collect();
        let id = crate::submission_id::submission_id(&user, &from, &all, &message);
        let mut body = self.received(env, &id).into_bytes();
        body.extend_from_slice(&message);
        tracing::info!(msg_id = %id, user = %user, local = local.len(), remote = remote.len(),
            bytes = body.len(), "submitted");
        // Every write at once: their store requests share group commits.
        let mut writes = Vec::new();
        for rcpt in &local {
            writes.push((
                "delivered",
                futures_boxed(self.append(&id, rcpt, "INBOX", &[], body.clone())),
            ));
        }
        writes.push((
            "filed in Sent",
            futures_boxed(self.append(&id, &user, "Sent", &["\\Seen"], body.clone())),
        ));
        if !remote.is_empty() {
            writes.push((
                "queued outbound",
                futures_boxed(self.enqueue_outbound(&id, env, &from, &remote, body.clone())),
            ));
        }
        let (actions, futures): (Vec<_>, Vec<_>) = writes.into_iter().unzip();
        let results = futures_util::future::join_all(futures).await;
        let mut traces = Vec::new();
        let mut failed = None;
        for (action, result) in actions.into_iter().zip(results) {
            match result {
                Ok((store, detail)) => traces.push((store, action, detail)),
                Err(e) => {
                    tracing::warn!(msg_id = %id, action, error = %e, "submission write failed");
                    failed = Some(e);
                }
            }
        }
        if failed.is_some() {
            metrics::counter!("fabric_submission_deferred_total").increment(1);
            return Reply::new(
                451,
                "4.3.0",
                "cannot store the message now; try again later",
            );
        }
        metrics::counter!("fabric_submission_accepted_total").increment(1);
        metrics::histogram!("fabric_submission_store_seconds")
            .record(started.elapsed().as_secs_f64());
        tracing::info!(msg_id = %id, local = local.len(), remote = remote.len(), "accepted");
        let (node, trace_id, peer) = (self.node.clone(), id.clone(), env.peer.ip());
        tokio::spawn(async move {
            for (store, action, detail) in &traces {
                let detail = format!("{detail} (submitted by a client at {peer})");
                if let Err(e) = store.trace(&trace_id, &node, action, Some(&detail)).await {
                    tracing::warn!(msg_id = %trace_id, error = %e, "trace not written");
                }
            }
        });
        Reply::new(250, "2.0.0", format!("queued as {id}"))
    }
}

type WriteFuture<'a> = std::pin::Pin<
    Box<dyn std::future::Future<Output = Result<(StoreClient, String), String>> + Send + 'a>,
>;

fn futures_boxed<'a>(
    f: impl std::future::Future<Output = Result<(StoreClient, String), String>> + Send + 'a,
) -> WriteFuture<'a> {
    Box::pin(f)
}

/// Sessions of submission served at once.
const MAX_SESSIONS: usize = 1000;

/// Binds the `submission` port and serves it until shutdown, in a task of its own.
pub async fn spawn(
    ctx: &node_runtime::NodeContext,
    mailboxes: Arc<Mailboxes>,
    acceptor: Option<tokio_rustls::TlsAcceptor>,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let listener = node_runtime::sessions::bind(ctx, "submission").await?;
    let handler = Arc::new(Submission::new(ctx.topology.clone(), &ctx.node, mailboxes));
    let mut config = smtp::Config::new(handler.hostname());
    config.submission = true;
    config.max_message_bytes = usize::try_from(ctx.topology.limits.store_max_body_bytes)
        .unwrap_or(usize::MAX)
        .saturating_sub(64 * 1024);
    let config = Arc::new(config);
    tracing::info!(submission = %listener.local_addr()?, "submission listening");
    let ctx = ctx.clone();
    Ok(tokio::spawn(async move {
        node_runtime::sessions::accept_until_shutdown(
            &ctx,
            listener,
            node_runtime::sessions::SessionLimit::new(MAX_SESSIONS),
            b"421 4.7.0 too many sessions; try again later\r\n",
            move |stream, peer| {
                let (handler, config, acceptor) =
                    (handler.clone(), config.clone(), acceptor.clone());
                async move { smtp::serve(stream, peer, &config, handler.as_ref(), acceptor).await }
            },
        )
        .await;
    }))
}
