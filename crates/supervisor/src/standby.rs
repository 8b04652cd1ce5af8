//! The standby servers of one supervisor: invoking one in place of a failed mail server (fence, start
//! the same role binary with the failed node's name, wait for `/ready`: a process or a container, see
//! `host`), watching it (restarted when it exits on its own), and retiring it (SIGTERM, the shutdown
//! deadline, SIGKILL).
//!
//! Every operation on a node holds that node's lock, so two relays asking at once start one standby.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use node_runtime::NodeContext;
use serde::Serialize;
use topology::Node;

use crate::continuity::{Continuity, Event};
use crate::host::{Host, Running, Verdict};
use crate::probe;

/// How often a standby is looked at.
const WATCH_INTERVAL: Duration = Duration::from_millis(250);

/// What the supervisor says about one node it was asked to stand in for.
#[derive(Debug, Clone, Serialize)]
pub struct Outcome {
    pub node: String,
    /// `serving` (a standby of this supervisor serves it), `alive` (left alone), `cut-off` (it does
    /// not answer us, but its container runs healthy: a partition, left alone), `failed`.
    pub state: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    /// When the standby started, in milliseconds since the Unix epoch.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub since_ms: Option<u64>,
    /// How long the standby took to become ready (only in the answer that started it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ready_ms: Option<u64>,
    /// The pids fencing killed before the standby took the address.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub fenced: Vec<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Outcome {
    fn new(node: &str, state: &'static str) -> Outcome {
        Outcome {
            node: node.to_string(),
            state,
            pid: None,
            since_ms: None,
            ready_ms: None,
            fenced: Vec::new(),
            error: None,
        }
    }

    fn failed(node: &str, error: String) -> Outcome {
        Outcome {
            error: Some(error),
            ..Outcome::new(node, "failed")
        }
    }
}

/// A running standby, as `GET /v1/standby` and `/status` list it.
#[derive(Debug, Clone, Serialize)]
pub struct StandbyInfo {
    pub node: String,
    pub role: String,
    pub site: String,
    pub pid: u32,
    /// The standby's container (containers only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub container: Option<String>,
    pub since_ms: u64,
    pub reason: Option<String>,
    pub requested_by: Option<String>,
    pub ready_ms: u64,
    pub restarts: u64,
}

/// Who asked and why (logged, and kept with the standby).
#[derive(Debug, Clone, Default)]
pub struct Request {
    pub force: bool,
    pub reason: Option<String>,
    pub requested_by: Option<String>,
}

#[derive(Default)]
struct Slot {
    child: Option<Running>,
    /// Bumped at every start and retirement, so a watcher of an older standby stops.
    generation: u64,
}

/// Totals for `/status`.
#[derive(Default)]
pub struct Counters {
    pub started: AtomicU64,
    pub alive: AtomicU64,
    pub failed: AtomicU64,
    pub fenced: AtomicU64,
    pub cut_off: AtomicU64,
    pub retired: AtomicU64,
    pub restarted: AtomicU64,
}

pub struct Manager {
    ctx: NodeContext,
    host: Host,
    slots: Mutex<HashMap<String, Arc<tokio::sync::Mutex<Slot>>>>,
    registry: Mutex<BTreeMap<String, StandbyInfo>>,
    pub counters: Counters,
    /// Tells a site's users when its first standby starts and its last one is retired.
    continuity: Continuity,
}

impl Manager {
    pub fn new(ctx: NodeContext, host: Host) -> Arc<Manager> {
        Arc::new(Manager {
            host,
            slots: Mutex::new(HashMap::new()),
            registry: Mutex::new(BTreeMap::new()),
            counters: Counters::default(),
            continuity: Continuity::start(ctx.topology.clone(), &ctx.node),
            ctx,
        })
    }

    pub fn topology(&self) -> &topology::Topology {
        &self.ctx.topology
    }

    /// The continuity notices (`POST /v1/notices` queues one user's).
    pub fn continuity(&self) -> &Continuity {
        &self.continuity
    }

    fn slot(&self, node: &str) -> Arc<tokio::sync::Mutex<Slot>> {
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        slots.entry(node.to_string()).or_default().clone()
    }

    fn registry(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, StandbyInfo>> {
        self.registry.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The running standbys.
    pub fn list(&self) -> Vec<StandbyInfo> {
        self.registry().values().cloned().collect()
    }

    fn publish_gauge(&self) {
        let n = self.registry().len();
        metrics::gauge!("fabric_supervisor_standbys").set(n as f64);
    }

    /// Stands in for `node` if it has failed (or if `request.force`): see the module docs.
    pub async fn invoke(self: &Arc<Self>, node: &Node, request: &Request) -> Outcome {
        let slot = self.slot(&node.name);
        let mut slot = slot.lock().await;
        if let Some(child) = slot.child.as_mut()
            && self.host.exited(child).await.is_none()
        {
            let info = self.registry().get(&node.name).cloned();
            return Outcome {
                pid: Some(child.pid()),
                since_ms: info.map(|i| i.since_ms),
                ..Outcome::new(&node.name, "serving")
            };
        }
        if !request.force
            && let Some(answered) = probe::answered_by(node).await
        {
            self.count("alive", &self.counters.alive);
            tracing::info!(standby_for = %node.name, result = "alive", answered, admin = %node.admin_addr(), reason = request.reason.as_deref().unwrap_or(""),
                requested_by = request.requested_by.as_deref().unwrap_or(""), "standby not needed: the node answers");
            return Outcome::new(&node.name, "alive");
        }
        if !request.force && matches!(self.host.verdict(node).await, Verdict::CutOff) {
            self.count("cut-off", &self.counters.cut_off);
            tracing::warn!(standby_for = %node.name, result = "cut-off", reason = request.reason.as_deref().unwrap_or(""),
                requested_by = request.requested_by.as_deref().unwrap_or(""),
                "standby not started: the node does not answer us but its container runs healthy (a partition)");
            return Outcome::new(&node.name, "cut-off");
        }
        match self.take_over(node, request, &mut slot).await {
            Ok(outcome) => outcome,
            Err(error) => {
                self.count("failed", &self.counters.failed);
                tracing::error!(standby_for = %node.name, result = "failed", error = %error, "standby not started");
                Outcome::failed(&node.name, error)
            }
        }
    }

    fn count(&self, result: &'static str, counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("fabric_supervisor_invocations_total", "result" => result).increment(1);
    }

    /// Fences the failed node, starts its standby and waits until it is ready.
    async fn take_over(
        self: &Arc<Self>,
        node: &Node,
        request: &Request,
        slot: &mut Slot,
    ) -> Result<Outcome, String> {
        let fenced = self.fence(node).await?;
        let started = Instant::now();
        let since_ms = unix_ms();
        tracing::info!(standby_for = %node.name, host = self.host.kind(), fenced = ?fenced, force = request.force,
            reason = request.reason.as_deref().unwrap_or(""), requested_by = request.requested_by.as_deref().unwrap_or(""),
            "starting a standby; waiting until it is ready");
        let child = self
            .host
            .start(&self.ctx, node)
            .await
            .map_err(|e| match self.host {
                Host::Processes { .. } => format!(
                    "{e}; see {}",
                    crate::host::log_path(&self.ctx, &node.name).display()
                ),
                Host::Containers(_) => e,
            })?;
        let pid = child.pid();
        let container = child.container().map(str::to_string);
        let ready = started.elapsed();
        metrics::histogram!("fabric_supervisor_standby_ready_seconds").record(ready.as_secs_f64());
        self.count("started", &self.counters.started);
        slot.generation += 1;
        slot.child = Some(child);
        let info = StandbyInfo {
            node: node.name.clone(),
            role: node.role.clone(),
            site: node.site.clone(),
            pid,
            container: container.clone(),
            since_ms,
            reason: request.reason.clone(),
            requested_by: request.requested_by.clone(),
            ready_ms: ready.as_millis() as u64,
            restarts: 0,
        };
        // The first standby for its site (checked and inserted under one lock): an outage begins.
        let first = {
            let mut registry = self.registry();
            let first = !registry.values().any(|i| i.site == node.site);
            registry.insert(node.name.clone(), info);
            first
        };
        self.publish_gauge();
        if first {
            self.continuity.announce(Event::Start, &node.site);
        }
        tracing::info!(standby_for = %node.name, result = "started", pid, container = container.as_deref().unwrap_or(""), ready_ms = ready.as_millis() as u64,
            address = %node.address, "standby serving at the failed node's address");
        tokio::spawn(self.clone().watch(node.clone(), slot.generation));
        Ok(Outcome {
            pid: Some(pid),
            since_ms: Some(since_ms),
            ready_ms: Some(ready.as_millis() as u64),
            fenced,
            ..Outcome::new(&node.name, "serving")
        })
    }

    /// Makes sure the failed node is gone before its standby takes its addresses (`host`).
    async fn fence(&self, node: &Node) -> Result<Vec<u32>, String> {
        let killed = self.host.fence(node).await?;
        if !killed.is_empty() {
            self.counters
                .fenced
                .fetch_add(killed.len() as u64, Ordering::Relaxed);
            metrics::counter!("fabric_supervisor_fenced_total").increment(killed.len() as u64);
            tracing::warn!(standby_for = %node.name, pids = ?killed, address = %node.address, host = self.host.kind(),
                "fenced: SIGKILLed what still held the failed node's ports (its container, on docker)");
        }
        Ok(killed)
    }

    /// Restarts the standby when it exits on its own, until it is retired.
    async fn watch(self: Arc<Self>, node: Node, generation: u64) {
        let slot = self.slot(&node.name);
        let mut restarts = 0u64;
        loop {
            tokio::time::sleep(WATCH_INTERVAL).await;
            let mut guard = slot.lock().await;
            if guard.generation != generation {
                return;
            }
            let Some(child) = guard.child.as_mut() else {
                return;
            };
            let Some(status) = self.host.exited(child).await else {
                continue;
            };
            restarts += 1;
            self.counters.restarted.fetch_add(1, Ordering::Relaxed);
            metrics::counter!("fabric_supervisor_restarts_total").increment(1);
            tracing::warn!(standby_for = %node.name, status = %status, restarts, "standby exited on its own; restarting it");
            match self.host.restart(&self.ctx, &node, child).await {
                Ok(()) => {
                    let pid = child.pid();
                    if let Some(info) = self.registry().get_mut(&node.name) {
                        info.pid = pid;
                        info.restarts = restarts;
                    }
                }
                Err(error) => {
                    tracing::error!(standby_for = %node.name, error = %error, "standby could not be restarted");
                    guard.child = None;
                    self.registry().remove(&node.name);
                    self.publish_gauge();
                    return;
                }
            }
            drop(guard);
            // A standby that keeps dying (its address taken, say) is not restarted in a tight loop.
            tokio::time::sleep(Duration::from_secs(restarts.min(30))).await;
        }
    }

    /// Stops the standby of `node` (SIGTERM, the shutdown deadline, then SIGKILL); `None` if this
    /// supervisor runs none for it. With `fail_back`, retiring the last standby of a site tells its
    /// users the service is back home (not when the supervisor itself stops).
    pub async fn retire(&self, node: &str, why: &str, fail_back: bool) -> Option<StandbyInfo> {
        let slot = self.slot(node);
        let mut slot = slot.lock().await;
        slot.generation += 1;
        let mut child = slot.child.take()?;
        let (info, last) = {
            let mut registry = self.registry();
            let info = registry.remove(node);
            let last = info
                .as_ref()
                .is_some_and(|i| !registry.values().any(|o| o.site == i.site));
            (info, last)
        };
        let pid = child.pid();
        self.host
            .stop(&mut child, self.ctx.topology.timing.shutdown_deadline)
            .await;
        self.counters.retired.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("fabric_supervisor_retired_total").increment(1);
        self.publish_gauge();
        tracing::info!(standby_for = %node, pid, why, "standby retired");
        if let Some(site) = info.as_ref().map(|i| &i.site)
            && last
            && fail_back
        {
            self.continuity.announce(Event::End, site);
        }
        info
    }

    /// Takes back the standby containers this supervisor started before it was killed (a process
    /// standby dies with its supervisor; a container does not).
    pub async fn adopt(self: &Arc<Self>) {
        for (node_name, running, since_ms) in self.host.leftovers(&self.ctx.node.name).await {
            let Some(node) = self.ctx.topology.node(&node_name).cloned() else {
                continue;
            };
            let slot = self.slot(&node_name);
            let mut slot = slot.lock().await;
            let info = StandbyInfo {
                node: node.name.clone(),
                role: node.role.clone(),
                site: node.site.clone(),
                pid: running.pid(),
                container: running.container().map(str::to_string),
                since_ms,
                reason: Some("adopted after a restart of the supervisor".into()),
                requested_by: None,
                ready_ms: 0,
                restarts: 0,
            };
            tracing::info!(standby_for = %node.name, container = info.container.as_deref().unwrap_or(""),
                "adopted a standby container this supervisor started before it restarted");
            self.registry().insert(node.name.clone(), info);
            slot.generation += 1;
            slot.child = Some(running);
            tokio::spawn(self.clone().watch(node, slot.generation));
        }
        self.publish_gauge();
    }

    /// Retires every standby (the supervisor is shutting down).
    pub async fn retire_all(self: &Arc<Self>) {
        let names: Vec<String> = self.registry().keys().cloned().collect();
        let mut tasks = Vec::new();
        for name in names {
            let me = self.clone();
            tasks.push(tokio::spawn(async move {
                me.retire(&name, "supervisor shutting down", false).await
            }));
        }
        for task in tasks {
            let _ = task.await;
        }
    }
}

pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
