//! New-mail notifications, sent in the background once a message is accepted. For each recipient
//! whose directory entry says `notify = "sms"` (with an `sms` number) or `notify = "alternate"`
//! (with an `alternate` address):
//!
//! - `sms`: `POST /v1/sms {"to", "text"}` to the SMS gateway (the topology's sink node, `sms` port);
//!   the text names the sender, the subject and the fabric message id;
//! - `alternate`: a short notice mail to the alternate address, handed over SMTP to the remote MX
//!   (today the topology's sink node, which acts as every remote MX).
//!
//! A failed attempt is logged and counted (`fabric_inet_mx_notify_failures_total{channel}`) and
//! tried again after 1, 2 and 4 seconds; then it is given up (`..._given_up_total{channel}`).
//! Sent: `fabric_inet_mx_notify_sent_total{channel}`. The mail itself is never touched: it is already
//! stored and acknowledged when this starts. At most [`MAX_IN_FLIGHT`] messages are being notified
//! at once; beyond that a notification is dropped and counted (`..._dropped_total`).
//!
//! [`Notifier::send_notice`] sends a notice about the service itself (not about one message) to one
//! user the same way: same channels, retries, text flattening; its metrics carry the prefix given to
//! [`Notifier::with_metrics_prefix`] (the site supervisor's continuity notices).

mod text;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use store_client::directory::Directory;
use store_client::{Method, StoreClient};
use thiserror::Error;
use tokio::sync::Semaphore;
use topology::{Role, Topology};

use smtp::client::Outcome;

/// Messages whose notifications may be under way at once.
pub const MAX_IN_FLIGHT: usize = 256;
/// Waits before the second, third and fourth attempt.
const RETRY_DELAYS: [Duration; 3] = [
    Duration::from_secs(1),
    Duration::from_secs(2),
    Duration::from_secs(4),
];
/// Deadline of one attempt.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);

/// What the notification needs of an accepted message.
pub struct Accepted {
    pub id: String,
    pub envelope_from: Option<String>,
    pub rcpts: Vec<String>,
    /// The message's header section (From and Subject are read from it).
    pub headers: Vec<u8>,
}

#[derive(Clone)]
pub struct Notifier {
    inner: Arc<Inner>,
}

struct Inner {
    directory: Directory,
    hostname: String,
    /// The SMS gateway (HTTP).
    gateway: Option<StoreClient>,
    /// Where notice mails go: the remote MX (the sink node's SMTP port).
    remote_mx: Option<SocketAddr>,
    in_flight: Arc<Semaphore>,
    /// `PREFIX_sent_total`, `PREFIX_failures_total`, `PREFIX_given_up_total`.
    prefix: &'static str,
}

/// How a user asked to be notified.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Channel {
    Sms,
    Alternate,
}

impl Channel {
    pub fn as_str(self) -> &'static str {
        match self {
            Channel::Sms => "sms",
            Channel::Alternate => "alternate",
        }
    }

    /// The channel a directory entry asks for and where it goes (`notify = "sms"` with an `sms`
    /// number, `"alternate"` with an `alternate` address); `None` for anything else.
    pub fn of(user: &Value) -> Option<(Channel, String)> {
        let (channel, target) = match user["notify"].as_str() {
            Some("sms") => (Channel::Sms, user["sms"].as_str()),
            Some("alternate") => (Channel::Alternate, user["alternate"].as_str()),
            _ => return None,
        };
        let target = target.map(str::trim).filter(|t| !t.is_empty())?;
        Some((channel, target.to_string()))
    }
}

/// A notice about the service (not about one message) for one user.
#[derive(Debug, Clone)]
pub struct Notice {
    /// Names the notice in logs and in the notice mail's Message-ID (`continuity-start-west`).
    pub tag: String,
    /// The SMS text (flattened to one line, at most two segments).
    pub sms: String,
    pub subject: String,
    /// The notice mail's body (each line flattened on its own).
    pub body: String,
}

/// A notice that was not delivered.
#[derive(Debug, Error)]
#[error("{channel} notice to {to} given up after {attempts} attempt(s): {error}")]
pub struct NoticeError {
    pub channel: &'static str,
    pub to: String,
    pub attempts: usize,
    pub error: String,
}

/// What one notification sends, built once (a retried notice mail keeps its Message-ID).
enum Payload {
    Sms(String),
    Mail(String),
}

/// One failed attempt.
struct Failure {
    error: String,
    /// Trying again will not help (a 4xx from the gateway, a 5xx from the MX).
    permanent: bool,
}

impl Notifier {
    pub fn new(topology: &Topology, directory: Directory, hostname: &str) -> Notifier {
        let sink = topology.nodes_with_role(Role::Sink).next();
        let gateway = sink
            .and_then(|n| n.service_addr("sms"))
            .map(|a| StoreClient::new(format!("http://{a}")).with_timeout(ATTEMPT_TIMEOUT));
        let remote_mx = sink.and_then(|n| n.service_addr("smtp"));
        Notifier {
            inner: Arc::new(Inner {
                directory,
                hostname: hostname.to_string(),
                gateway,
                remote_mx,
                in_flight: Arc::new(Semaphore::new(MAX_IN_FLIGHT)),
                prefix: "fabric_inet_mx_notify",
            }),
        }
    }

    /// The same notifier counting under `PREFIX_sent_total{channel}` (and `_failures_total`,
    /// `_given_up_total`) instead of `fabric_inet_mx_notify_...`. Call before sharing it.
    pub fn with_metrics_prefix(mut self, prefix: &'static str) -> Notifier {
        if let Some(inner) = Arc::get_mut(&mut self.inner) {
            inner.prefix = prefix;
        }
        self
    }

    /// Sends `notice` to one directory entry as it asked (SMS or a notice mail to its alternate
    /// address), with the retries of new-mail notifications. `Ok(None)`: the user asked for none;
    /// `Ok(Some(channel))`: delivered. Waits until delivered or given up (run it in the background).
    pub async fn send_notice(
        &self,
        user: &Value,
        notice: &Notice,
    ) -> Result<Option<Channel>, NoticeError> {
        let Some((channel, target)) = Channel::of(user) else {
            return Ok(None);
        };
        let address = user["address"].as_str().unwrap_or("");
        let payload = match channel {
            Channel::Sms => Payload::Sms(text::sms(&notice.sms)),
            Channel::Alternate => Payload::Mail(text::notice_mail(
                &notice.tag,
                address,
                &target,
                &self.inner.hostname,
                &notice.subject,
                &notice.body,
                None,
            )),
        };
        self.inner
            .deliver(&notice.tag, address, channel, &target, &payload)
            .await
            .map(|_| Some(channel))
    }

    /// Notifies the recipients of `accepted` who asked for it, in the background.
    pub fn spawn(&self, accepted: Accepted) {
        let Ok(permit) = self.inner.in_flight.clone().try_acquire_owned() else {
            metrics::counter!("fabric_inet_mx_notify_dropped_total").increment(1);
            tracing::warn!(msg_id = %accepted.id, "too many notifications under way; this one is dropped");
            return;
        };
        let inner = self.inner.clone();
        tokio::spawn(async move {
            inner.run(accepted).await;
            drop(permit);
        });
    }
}

impl Inner {
    async fn run(&self, accepted: Accepted) {
        let summary = text::Summary::read(&accepted.headers, accepted.envelope_from.as_deref());
        let rcpts: BTreeSet<&String> = accepted.rcpts.iter().collect();
        for rcpt in rcpts {
            let user = match self.directory.user_recent(rcpt).await {
                Ok(Some(u)) => u,
                Ok(None) => continue,
                Err(e) => {
                    metrics::counter!("fabric_inet_mx_notify_failures_total", "channel" => "directory")
                        .increment(1);
                    tracing::warn!(msg_id = %accepted.id, rcpt = %rcpt, error = %e,
                        "directory unreadable: no notification for this recipient");
                    continue;
                }
            };
            let Some((channel, target)) = Channel::of(&user) else {
                continue;
            };
            let id = &accepted.id;
            let payload = match channel {
                Channel::Sms => Payload::Sms(summary.sms_text(id)),
                Channel::Alternate => {
                    Payload::Mail(summary.notice(id, rcpt, &target, &self.hostname))
                }
            };
            // Given up: logged and counted by `deliver`; the mail itself is stored and delivered.
            let _ = self.deliver(id, rcpt, channel, &target, &payload).await;
        }
    }

    /// Sends `payload` with retries; returns the attempts it took.
    async fn deliver(
        &self,
        id: &str,
        rcpt: &str,
        channel: Channel,
        target: &str,
        payload: &Payload,
    ) -> Result<usize, NoticeError> {
        let label = channel.as_str();
        let prefix = self.prefix;
        let mut attempt = 0;
        loop {
            let result = match payload {
                Payload::Sms(text) => self.sms(target, text).await,
                Payload::Mail(notice) => self.mail(target, notice).await,
            };
            match result {
                Ok(()) => {
                    metrics::counter!(format!("{prefix}_sent_total"), "channel" => label)
                        .increment(1);
                    tracing::info!(msg_id = %id, rcpt = %rcpt, channel = label, to = %target,
                        attempt = attempt + 1, "notification sent");
                    return Ok(attempt + 1);
                }
                Err(f) => {
                    metrics::counter!(format!("{prefix}_failures_total"), "channel" => label)
                        .increment(1);
                    let last = f.permanent || attempt == RETRY_DELAYS.len();
                    if last {
                        metrics::counter!(format!("{prefix}_given_up_total"), "channel" => label)
                            .increment(1);
                        tracing::error!(msg_id = %id, rcpt = %rcpt, channel = label, to = %target,
                            attempt = attempt + 1, error = %f.error, permanent = f.permanent,
                            "notification given up");
                        return Err(NoticeError {
                            channel: label,
                            to: target.to_string(),
                            attempts: attempt + 1,
                            error: f.error,
                        });
                    }
                    tracing::warn!(msg_id = %id, rcpt = %rcpt, channel = label, to = %target,
                        attempt = attempt + 1, error = %f.error, "notification failed; retrying");
                    if let Some(delay) = RETRY_DELAYS.get(attempt) {
                        tokio::time::sleep(*delay).await;
                    }
                    attempt += 1;
                }
            }
        }
    }

    async fn sms(&self, to: &str, text: &str) -> Result<(), Failure> {
        let Some(gateway) = &self.gateway else {
            return Err(Failure {
                error: "the topology has no SMS gateway (a sink node with an sms port)".into(),
                permanent: true,
            });
        };
        let body = json!({"to": to, "text": text}).to_string();
        let resp = gateway
            .raw(
                Method::POST,
                "/v1/sms",
                &[("content-type", "application/json".to_string())],
                body,
            )
            .await
            .map_err(|e| Failure {
                error: e.to_string(),
                permanent: false,
            })?;
        if resp.status.is_success() {
            return Ok(());
        }
        Err(Failure {
            error: format!(
                "the SMS gateway answered {}: {}",
                resp.status,
                String::from_utf8_lossy(&resp.body)
            ),
            permanent: resp.status.is_client_error(),
        })
    }

    async fn mail(&self, to: &str, notice: &str) -> Result<(), Failure> {
        let Some(mx) = self.remote_mx else {
            return Err(Failure {
                error: "the topology has no remote MX (a sink node with an smtp port)".into(),
                permanent: true,
            });
        };
        // The same SMTP client as outbound delivery, for one recipient.
        let outcome = smtp::client::deliver(
            mx,
            &self.hostname,
            "",
            &[to.to_string()],
            notice.as_bytes(),
            ATTEMPT_TIMEOUT,
        )
        .await;
        match outcome.into_iter().next() {
            Some(Outcome::Delivered(_)) => Ok(()),
            Some(Outcome::Temporary(error)) => Err(Failure {
                error,
                permanent: false,
            }),
            Some(Outcome::Permanent(error)) => Err(Failure {
                error,
                permanent: true,
            }),
            None => Err(Failure {
                error: "the SMTP client gave no outcome".into(),
                permanent: false,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_channel_needs_its_target() {
        let of = |v: Value| Channel::of(&v);
        assert_eq!(
            of(json!({"notify": "sms", "sms": "+1555"})),
            Some((Channel::Sms, "+1555".to_string()))
        );
        assert_eq!(
            of(json!({"notify": "alternate", "alternate": "a@b.example", "sms": "+1"})),
            Some((Channel::Alternate, "a@b.example".to_string()))
        );
        assert_eq!(
            of(json!({"notify": "sms", "alternate": "a@b.example"})),
            None
        );
        assert_eq!(of(json!({"notify": "alternate", "alternate": " "})), None);
        assert_eq!(of(json!({"notify": "none", "sms": "+1555"})), None);
        assert_eq!(of(json!({})), None);
    }
}
