//! Measuring the mail servers behind the MX hosts: every `edge.dns_refresh` each server of each group
//! is asked for `GET /status` on its admin port (400 ms at most; a dead node refuses at once). A
//! server that answers 200 and is ready is healthy; its `counters.sessions` is its load.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use futures_util::future::join_all;
use store_client::{Method, StoreClient};
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

/// One server's answer: `Some(sessions)` when healthy.
async fn poll_one(client: &StoreClient) -> Option<u64> {
    let resp = client
        .raw(Method::GET, "/status", &[], Vec::new())
        .await
        .ok()?;
    if resp.status != 200 {
        return None;
    }
    let body = resp.json()?;
    if body["ready"] == false {
        return None;
    }
    Some(body["counters"]["sessions"].as_u64().unwrap_or(0))
}

/// Polls every group every `refresh` until `shutdown`, updating `board` and the gauges.
pub async fn run(
    zones: Arc<Zones>,
    board: HealthBoard,
    refresh: Duration,
    shutdown: CancellationToken,
) {
    let clients: Vec<(Group, Vec<StoreClient>)> = zones
        .groups
        .iter()
        .map(|(group, servers)| {
            let clients = servers
                .iter()
                .map(|s| {
                    StoreClient::new(format!("http://{}", s.admin)).with_timeout(STATUS_TIMEOUT)
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
        let polls = clients.iter().map(|(group, clients)| async move {
            let answers = join_all(clients.iter().map(poll_one)).await;
            let health = GroupHealth {
                servers: clients.len(),
                healthy: answers.iter().filter(|a| a.is_some()).count(),
                sessions: answers.iter().flatten().sum(),
            };
            (group, health)
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
