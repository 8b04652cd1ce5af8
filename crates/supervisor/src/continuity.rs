//! Continuity notices: when this supervisor starts the first standby for a site's mail servers (an
//! outage begins), every user whose domain is at home there and who asked for notifications
//! (`notify = "sms"` / `"alternate"`) is told once that the service moved to the standby system; when
//! the last standby for the site is retired (fail-back), they are told it is back home.
//!
//! Announcements are queued to one worker, so a site's "end" never overtakes its "start", and the
//! standby or the retirement that caused one never waits for it. The notices go out through the
//! Internet mail server's notifier (`inet_mx::notifier`: SMS gateway or a notice mail, retried,
//! text flattened), counted as `fabric_supervisor_continuity_notices_total{event, channel}`.

use std::sync::Arc;

use inet_mx::notifier::{Notice, Notifier};
use serde_json::Value;
use store_client::directory::Directory;
use tokio::sync::{Semaphore, mpsc};
use topology::Topology;

/// Notices under way at once within one announcement.
const PARALLEL: usize = 32;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// The first standby for the site is serving: the outage begins.
    Start,
    /// The last standby for the site is retired: fail-back.
    End,
}

impl Event {
    pub fn as_str(self) -> &'static str {
        match self {
            Event::Start => "start",
            Event::End => "end",
        }
    }
}

/// Sends continuity notices in the background, in the order they were announced.
pub struct Continuity {
    queue: mpsc::UnboundedSender<Announcement>,
}

/// What the worker is asked to tell: a site's users, or one moved mailbox's user.
struct Announcement {
    event: Event,
    /// The home site concerned.
    site: String,
    /// Only this user (a mailbox moved by `fabric failover --mailbox`), with the mailbox notice.
    mailbox: Option<String>,
}

struct Worker {
    topology: Arc<Topology>,
    directory: Directory,
    notifier: Notifier,
    /// "east (Relay, MD)": where the standby system is.
    standby_site: String,
}

impl Continuity {
    /// Starts the worker (call from within the tokio runtime).
    pub fn start(topology: Arc<Topology>, me: &topology::Node) -> Continuity {
        let directory = Directory::new(&topology);
        let hostname = format!("{}.{}", me.name, topology.fabric.name);
        let notifier = Notifier::new(&topology, directory.clone(), &hostname)
            .with_metrics_prefix("fabric_supervisor_notify");
        let standby_site = match topology.sites.iter().find(|s| s.name == me.site) {
            Some(s) if !s.location.is_empty() => format!("{} ({})", s.name, s.location),
            _ => me.site.clone(),
        };
        let worker = Arc::new(Worker {
            topology,
            directory,
            notifier,
            standby_site,
        });
        let (queue, mut rx) = mpsc::unbounded_channel::<Announcement>();
        tokio::spawn(async move {
            while let Some(a) = rx.recv().await {
                worker.clone().announce(a).await;
            }
        });
        Continuity { queue }
    }

    /// Queues the notices of `event` for the users of `site`; returns at once.
    pub fn announce(&self, event: Event, site: &str) {
        tracing::info!(event = event.as_str(), site, "continuity notices queued");
        let a = Announcement {
            event,
            site: site.to_string(),
            mailbox: None,
        };
        if self.queue.send(a).is_err() {
            tracing::error!(
                event = event.as_str(),
                site,
                "the continuity worker is gone: no notices"
            );
        }
    }

    /// Queues the notice of `event` for the user of one moved mailbox (at home in `site`).
    pub fn announce_mailbox(&self, event: Event, site: &str, address: &str) {
        tracing::info!(event = event.as_str(), site, user = %address, "mailbox notice queued");
        let a = Announcement {
            event,
            site: site.to_string(),
            mailbox: Some(address.to_ascii_lowercase()),
        };
        if self.queue.send(a).is_err() {
            tracing::error!(event = event.as_str(), user = %address,
                "the continuity worker is gone: no notice");
        }
    }
}

/// The notice of `event` for one mailbox moved by an operator (the words its user reads).
pub fn mailbox_notice(event: Event, site: &str, standby_site: &str) -> Notice {
    let tag = format!("mailbox-{}-{site}", event.as_str());
    match event {
        Event::Start => Notice {
            tag,
            sms: format!(
                "Mail Fabric: your mailbox moved to the standby system at {standby_site}. \
                 Nothing is lost; keep using your mail as usual."
            ),
            subject: "Your mailbox moved to the standby system".into(),
            body: format!(
                "Your mailbox moved to the standby system at {standby_site} while its home \
                 system ({site}) is being worked on.\n\nNothing is lost: keep using your mail \
                 as usual, with the same addresses and settings.\n\nYou will be told when it \
                 returns to its home system.\n"
            ),
        },
        Event::End => Notice {
            tag,
            sms: "Mail Fabric: your mailbox is back on its home system. Everything you \
                  received or sent meanwhile is in it."
                .into(),
            subject: "Your mailbox is back on its home system".into(),
            body: format!(
                "Your mailbox is back on its home system ({site}).\n\nEverything you \
                 received or sent meanwhile is in it.\n"
            ),
        },
    }
}

/// The notice of `event` (the words users read).
pub fn notice(event: Event, site: &str, standby_site: &str) -> Notice {
    let tag = format!("continuity-{}-{site}", event.as_str());
    match event {
        Event::Start => Notice {
            tag,
            sms: format!(
                "Mail Fabric: your mail service moved to the standby system at {standby_site}. \
                 Nothing is lost; keep using your mail as usual."
            ),
            subject: "Your mail service moved to the standby system".into(),
            body: format!(
                "Your mail service moved to the standby system at {standby_site}, because its \
                 home system ({site}) is not answering.\n\nNothing is lost: keep using your mail \
                 as usual, with the same addresses and settings.\n\nYou will be told when the \
                 service returns to its home system.\n"
            ),
        },
        Event::End => Notice {
            tag,
            sms: "Mail Fabric: your mail service is back on its home system. Everything you \
                  received or sent during the outage is in your mailbox."
                .into(),
            subject: "Your mail service is back on its home system".into(),
            body: format!(
                "Your mail service is back on its home system ({site}).\n\nEverything you \
                 received or sent during the outage is in your mailbox.\n"
            ),
        },
    }
}

impl Worker {
    /// Notifies every user at home at `site` who asked for notifications (or the one user of a
    /// moved mailbox), up to [`PARALLEL`] at once.
    async fn announce(self: Arc<Self>, a: Announcement) {
        let (event, site) = (a.event, a.site.as_str());
        let users = match self.directory.users().await {
            Ok(users) => users,
            Err(e) => {
                metrics::counter!("fabric_supervisor_continuity_failures_total", "event" => event.as_str())
                    .increment(1);
                tracing::error!(event = event.as_str(), site, error = %e,
                    "directory unreadable: no continuity notices");
                return;
            }
        };
        let notice = Arc::new(match &a.mailbox {
            Some(_) => mailbox_notice(event, site, &self.standby_site),
            None => notice(event, site, &self.standby_site),
        });
        let limit = Arc::new(Semaphore::new(PARALLEL));
        let mut tasks = tokio::task::JoinSet::new();
        let chosen = |u: &Value| match &a.mailbox {
            Some(address) => u["address"].as_str() == Some(address.as_str()),
            None => self.at_home(u, site),
        };
        for user in users.into_iter().filter(|u| chosen(u)) {
            let Ok(permit) = limit.clone().acquire_owned().await else {
                break;
            };
            let (me, notice, site) = (self.clone(), notice.clone(), site.to_string());
            tasks.spawn(async move {
                me.one(event, &site, &user, &notice).await;
                drop(permit);
            });
        }
        while tasks.join_next().await.is_some() {}
    }

    fn at_home(&self, user: &Value, site: &str) -> bool {
        user["address"]
            .as_str()
            .and_then(|a| a.rsplit_once('@'))
            .and_then(|(_, domain)| self.topology.home_site(domain))
            == Some(site)
    }

    async fn one(&self, event: Event, site: &str, user: &Value, notice: &Notice) {
        let address = user["address"].as_str().unwrap_or("");
        match self.notifier.send_notice(user, notice).await {
            Ok(None) => {}
            Ok(Some(channel)) => {
                metrics::counter!("fabric_supervisor_continuity_notices_total",
                    "event" => event.as_str(), "channel" => channel.as_str())
                .increment(1);
                tracing::info!(event = event.as_str(), site, user = %address,
                    channel = channel.as_str(), "continuity notice sent");
            }
            Err(e) => {
                metrics::counter!("fabric_supervisor_continuity_failures_total", "event" => event.as_str())
                    .increment(1);
                tracing::error!(event = event.as_str(), site, user = %address, error = %e,
                    "continuity notice given up");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notices_say_what_happened() {
        let start = notice(Event::Start, "west", "east (Relay, MD)");
        assert!(start.sms.contains("standby system at east (Relay, MD)"));
        assert!(start.sms.contains("Nothing is lost"));
        assert!(start.sms.chars().count() <= 306);
        let end = notice(Event::End, "west", "east");
        assert!(end.sms.contains("back on its home system"));
        assert!(end.body.contains("during the outage is in your mailbox"));
        assert_eq!(end.tag, "continuity-end-west");
    }
}
