//! Measuring the mail servers behind the MX hosts: every `edge.dns_refresh` each server of each group
//! is asked for `GET /status` on its admin port (400 ms at most; a dead node refuses at once). A
//! server that answers 200 and is ready is healthy; its `counters.sessions` is its load. One that
//! refuses or answers not ready counts down at once; one that does not answer in time counts down at
//! its second slow poll in a row ([`SLOW_POLLS_TO_FAIL`]) and keeps its last load until then.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use futures_util::future::join_all;
use store_client::{ClientError, Method, StoreClient};
use tokio_util::sync::CancellationToken;

use crate::records::{Group, Zones};
use crate::weight::{self, GroupHealth};

/// How long one `/status` may take before its server counts as unhealthy.
pub const STATUS_TIMEOUT: Duration = Duration::from_millis(400);

/// The latest health of every group, shared by the poller (writer) and the answers (readers).
#[derive(Clone, Default)]
pub struct HealthBoard(Arc<RwLock<BTreeMap<Group, GroupHealth>>>);

impl HealthBoard {
    pub fn get(&self, group: &Group) -> Option<GroupHealth> {
        self.0
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .get(group)
            .copied()
    }

    /// Stores a group's new health; returns the previous one.
    pub fn set(&self, group: &Group, health: GroupHealth) -> Option<GroupHealth> {
        self.0
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .insert(group.clone(), health)
    }

    pub fn snapshot(&self) -> BTreeMap<Group, GroupHealth> {
        self.0
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }
}

/// What one `/status` poll of one server found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// 200 and ready, with its open sessions.
    Ready(u64),
    /// It answered, but not ready, not 200, or not JSON.
    NotReady,
    /// Nothing listens (refused, reset): the process is gone.
    Unreachable,
    /// No answer within [`STATUS_TIMEOUT`]: frozen, or only slow for a moment.
    Slow,
}

impl Answer {
    fn label(self) -> &'static str {
        match self {
            Answer::Ready(_) => "ready",
            Answer::NotReady => "not_ready",
            Answer::Unreachable => "unreachable",
            Answer::Slow => "slow",
        }
    }
}

/// Slow answers in a row after which a server counts as down. A dead process refuses at once and
/// counts at the first poll; a busy machine can make one `/status` miss its 400 ms without anything
/// being wrong, and one such poll must not send a whole site's mail to the secondary MX.
pub const SLOW_POLLS_TO_FAIL: u32 = 2;

/// One server as the poller sees it over time.
#[derive(Debug, Default)]
pub struct ServerWatch {
    slow_in_row: u32,
    /// Sessions at the last good answer; `None` when it is counted down.
    last: Option<u64>,
}

impl ServerWatch {
    /// Folds in one poll's answer; `Some(sessions)` while the server counts as healthy.
    pub fn judge(&mut self, answer: Answer) -> Option<u64> {
        match answer {
            Answer::Ready(sessions) => {
                self.slow_in_row = 0;
                self.last = Some(sessions);
            }
            Answer::Slow => {
                self.slow_in_row += 1;
                if self.slow_in_row >= SLOW_POLLS_TO_FAIL {
                    self.last = None;
                }
            }
            Answer::NotReady | Answer::Unreachable => {
                self.slow_in_row = 0;
                self.last = None;
            }
        }
        self.last
    }
}

async fn poll_one(client: &StoreClient) -> Answer {
    let resp = match client.raw(Method::GET, "/status", &[], Vec::new()).await {
        Ok(resp) => resp,
        Err(ClientError::Timeout { .. }) => return Answer::Slow,
        Err(_) => return Answer::Unreachable,
    };
    if resp.status != 200 {
        return Answer::NotReady;
    }
    let Some(body) = resp.json() else {
        return Answer::NotReady;
    };
    if body["ready"] == false {
        return Answer::NotReady;
    }
    Answer::Ready(body["counters"]["sessions"].as_u64().unwrap_or(0))
}

/// Polls every group every `refresh` until `shutdown`, updating `board` and the gauges.
pub async fn run(
    zones: Arc<Zones>,
    board: HealthBoard,
    refresh: Duration,
    shutdown: CancellationToken,
) {
    let mut clients: Vec<(Group, Vec<(StoreClient, ServerWatch)>)> = zones
        .groups
        .iter()
        .map(|(group, servers)| {
            let clients = servers
                .iter()
                .map(|s| {
                    let client = StoreClient::new(format!("http://{}", s.admin))
                        .with_timeout(STATUS_TIMEOUT);
                    (client, ServerWatch::default())
                })
                .collect();
            (group.clone(), clients)
        })
        .collect();
    let mut tick = tokio::time::interval(refresh.max(Duration::from_millis(50)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.cancelled() => return,
        }
        let polls = clients.iter_mut().map(|(group, servers)| async move {
            let answers = join_all(servers.iter().map(|(client, _)| poll_one(client))).await;
            let mut health = GroupHealth {
                servers: servers.len(),
                ..GroupHealth::default()
            };
            for ((_, watch), answer) in servers.iter_mut().zip(answers) {
                metrics::counter!("fabric_dns_status_polls_total", "outcome" => answer.label())
                    .increment(1);
                if let Some(sessions) = watch.judge(answer) {
                    health.healthy += 1;
                    health.sessions += sessions;
                }
            }
            (&*group, health)
        });
        let results = tokio::select! {
            r = join_all(polls) => r,
            _ = shutdown.cancelled() => return,
        };
        for (group, health) in results {
            let before = board.set(group, health);
            metrics::gauge!("fabric_dns_site_healthy_servers", "site" => group.site.clone(), "role" => group.role.as_str())
                .set(health.healthy as f64);
            if before.map(|b| b.healthy) != Some(health.healthy) {
                if health.healthy == 0 {
                    tracing::warn!(site = %group.site, role = %group.role, servers = health.servers, "no server of the site answers /status: its MX preference drops to {}", weight::DEAD);
                } else {
                    tracing::info!(site = %group.site, role = %group.role, healthy = health.healthy, servers = health.servers, sessions = health.sessions, "site health changed");
                }
            }
        }
        for zone in &zones.domains {
            for mx in &zone.mx {
                let pref = weight::preference(mx.base, board.get(&mx.group).as_ref());
                metrics::gauge!("fabric_dns_mx_preference", "domain" => zone.domain.clone(), "host" => mx.host.to_ascii().trim_end_matches('.').to_string())
                    .set(f64::from(pref));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refusing_or_unready_server_is_down_at_once() {
        for bad in [Answer::Unreachable, Answer::NotReady] {
            let mut w = ServerWatch::default();
            assert_eq!(w.judge(Answer::Ready(3)), Some(3));
            assert_eq!(w.judge(bad), None, "{bad:?}");
            assert_eq!(
                w.judge(Answer::Ready(5)),
                Some(5),
                "back at its next good answer"
            );
        }
    }

    #[test]
    fn one_slow_poll_keeps_the_server_with_its_last_load_and_two_in_a_row_take_it_out() {
        let mut w = ServerWatch::default();
        assert_eq!(w.judge(Answer::Ready(7)), Some(7));
        assert_eq!(w.judge(Answer::Slow), Some(7));
        assert_eq!(
            w.judge(Answer::Ready(2)),
            Some(2),
            "a good answer resets the count"
        );
        assert_eq!(w.judge(Answer::Slow), Some(2));
        assert_eq!(w.judge(Answer::Slow), None);
        assert_eq!(w.judge(Answer::Slow), None);
        assert_eq!(w.judge(Answer::Ready(0)), Some(0));
    }

    #[test]
    fn a_server_never_seen_answering_is_not_healthy_because_it_is_slow() {
        let mut w = ServerWatch::default();
        assert_eq!(w.judge(Answer::Slow), None);
    }
}
