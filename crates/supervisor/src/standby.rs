//! The standby servers of one supervisor: invoking one in place of a failed mail server (fence, spawn
//! the same role binary with the failed node's name, wait for `/ready`), watching it (restarted when it
//! exits on its own), and retiring it (SIGTERM, the shutdown deadline, SIGKILL).
//!
//! Every operation on a node holds that node's lock, so two relays asking at once start one standby.

use std::collections::{BTreeMap, HashMap};
use std::fs::OpenOptions;
use std::net::SocketAddrV4;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use node_runtime::NodeContext;
use serde::Serialize;
use tokio::sync::oneshot;
use topology::Node;

use crate::continuity::{Continuity, Event};
use crate::{fence, probe};

/// How long a standby may take to answer `/ready`.
pub const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long fencing waits for the failed node's ports to be free after SIGKILL.
const FENCE_TIMEOUT: Duration = Duration::from_secs(5);
/// How often a standby's process is looked at.
const WATCH_INTERVAL: Duration = Duration::from_millis(250);

/// What the supervisor says about one node it was asked to stand in for.
#[derive(Debug, Clone, Serialize)]
pub struct Outcome {
    pub node: String,
    /// `serving` (a standby of this supervisor serves it), `alive` (left alone), `failed`.
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
    child: Option<Child>,
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
    pub retired: AtomicU64,
    pub restarted: AtomicU64,
}

pub struct Manager {
    ctx: NodeContext,
    topology_file: PathBuf,
    bin_dir: PathBuf,
    spawner: Spawner,
    slots: Mutex<HashMap<String, Arc<tokio::sync::Mutex<Slot>>>>,
    registry: Mutex<BTreeMap<String, StandbyInfo>>,
    pub counters: Counters,
    /// Tells a site's users when its first standby starts and its last one is retired.
    continuity: Continuity,
}

impl Manager {
    pub fn new(ctx: NodeContext, topology_file: PathBuf, bin_dir: PathBuf) -> Arc<Manager> {
        Arc::new(Manager {
            topology_file,
            bin_dir,
            spawner: Spawner::start(),
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
            && matches!(child.try_wait(), Ok(None))
        {
            let info = self.registry().get(&node.name).cloned();
            return Outcome {
                pid: Some(child.id()),
                since_ms: info.map(|i| i.since_ms),
                ..Outcome::new(&node.name, "serving")
            };
        }
        if !request.force && probe::healthy(node).await {
            self.count("alive", &self.counters.alive);
            tracing::info!(standby_for = %node.name, result = "alive", reason = request.reason.as_deref().unwrap_or(""),
                requested_by = request.requested_by.as_deref().unwrap_or(""), "standby not needed: the node answers");
            return Outcome::new(&node.name, "alive");
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
        let mut child = self.start_child(node).await?;
        let pid = child.id();
        tracing::info!(standby_for = %node.name, pid, fenced = ?fenced, force = request.force,
            reason = request.reason.as_deref().unwrap_or(""), requested_by = request.requested_by.as_deref().unwrap_or(""),
            "standby spawned; waiting until it is ready");
        if let Err(e) = wait_ready(node, &mut child).await {
            stop_child(&mut child, Duration::ZERO).await;
            return Err(format!("{e}; see {}", self.log_path(&node.name).display()));
        }
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
        tracing::info!(standby_for = %node.name, result = "started", pid, ready_ms = ready.as_millis() as u64,
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

    /// Kills whatever still listens on the node's address at its ports (service and admin).
    async fn fence(&self, node: &Node) -> Result<Vec<u32>, String> {
        let targets: Vec<SocketAddrV4> = node
            .ports
            .values()
            .chain(std::iter::once(&node.admin))
            .map(|p| SocketAddrV4::new(node.address, *p))
            .collect();
        let killed = fence::fence(&targets, FENCE_TIMEOUT)
            .await
            .map_err(|e| format!("fencing {}: {e}", node.name))?;
        if !killed.is_empty() {
            self.counters
                .fenced
                .fetch_add(killed.len() as u64, Ordering::Relaxed);
            metrics::counter!("fabric_supervisor_fenced_total").increment(killed.len() as u64);
            tracing::warn!(standby_for = %node.name, pids = ?killed, address = %node.address,
                "fenced: SIGKILLed the processes still holding the failed node's ports");
        }
        Ok(killed)
    }

    fn log_path(&self, node: &str) -> PathBuf {
        self.ctx.data_dir.join(format!("standby-{node}.log"))
    }

    /// Spawns the node's role binary under the node's own name (so its address and ports).
    async fn start_child(&self, node: &Node) -> Result<Child, String> {
        let binary = self.bin_dir.join(node.role().binary());
        if !binary.is_file() {
            return Err(format!("the binary {} does not exist", binary.display()));
        }
        let data = self.ctx.data_dir.join("standby").join(&node.name);
        std::fs::create_dir_all(&data).map_err(|e| format!("{}: {e}", data.display()))?;
        let log_path = self.log_path(&node.name);
        let open = || {
            OpenOptions::new()
                .create(true)
                .append(true)
                .open(&log_path)
                .map_err(|e| format!("{}: {e}", log_path.display()))
        };
        let (out, err) = (open()?, open()?);
        let mut command = Command::new(&binary);
        command
            .arg("--topology")
            .arg(&self.topology_file)
            .arg("--node")
            .arg(&node.name)
            .arg("--data-dir")
            .arg(&data)
            .arg("--tls-dir")
            .arg(&self.ctx.tls_dir)
            .env("FABRIC_STANDBY_BY", &self.ctx.node.name)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .process_group(0);
        fabric::die_with_parent(&mut command);
        self.spawner
            .spawn(command)
            .await
            .map_err(|e| format!("spawning {}: {e}", binary.display()))
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
            let status = match child.try_wait() {
                Ok(None) => continue,
                Ok(Some(status)) => status.to_string(),
                Err(e) => e.to_string(),
            };
            restarts += 1;
            self.counters.restarted.fetch_add(1, Ordering::Relaxed);
            metrics::counter!("fabric_supervisor_restarts_total").increment(1);
            tracing::warn!(standby_for = %node.name, status = %status, restarts, "standby exited on its own; restarting it");
            match self.start_child(&node).await {
                Ok(child) => {
                    if let Some(info) = self.registry().get_mut(&node.name) {
                        info.pid = child.id();
                        info.restarts = restarts;
                    }
                    guard.child = Some(child);
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
        let pid = child.id();
        stop_child(&mut child, self.ctx.topology.timing.shutdown_deadline).await;
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

/// Waits until the standby answers 200 on `/ready`, failing early if it exits.
async fn wait_ready(node: &Node, child: &mut Child) -> Result<(), String> {
    let start = Instant::now();
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!("the standby exited during startup ({status})"));
        }
        if probe::ready(node).await {
            return Ok(());
        }
        if start.elapsed() > READY_TIMEOUT {
            return Err(format!(
                "the standby was not ready after {READY_TIMEOUT:?} (GET {}/ready)",
                node.admin_addr()
            ));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// SIGTERM, up to `deadline` for the process to exit, then SIGKILL; reaps it.
async fn stop_child(child: &mut Child, deadline: Duration) {
    let pid = Pid::from_raw(i32::try_from(child.id()).unwrap_or(i32::MAX));
    if !deadline.is_zero() {
        let _ = kill(pid, Signal::SIGTERM);
        let start = Instant::now();
        while start.elapsed() < deadline {
            if !matches!(child.try_wait(), Ok(None)) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
    let _ = kill(pid, Signal::SIGKILL);
    for _ in 0..200 {
        if !matches!(child.try_wait(), Ok(None)) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

type SpawnJob = (Command, oneshot::Sender<std::io::Result<Child>>);

/// Spawns every standby from one thread that lives as long as the supervisor: `PR_SET_PDEATHSIG`
/// fires when the *thread* that forked the child exits, and tokio's blocking threads come and go.
struct Spawner {
    jobs: Mutex<std::sync::mpsc::Sender<SpawnJob>>,
}

impl Spawner {
    fn start() -> Spawner {
        let (tx, rx) = std::sync::mpsc::channel::<SpawnJob>();
        let thread = std::thread::Builder::new()
            .name("standby-spawner".into())
            .spawn(move || {
                for (mut command, reply) in rx {
                    let _ = reply.send(command.spawn());
                }
            });
        if let Err(e) = thread {
            tracing::error!(error = %e, "cannot start the standby spawner thread");
        }
        Spawner {
            jobs: Mutex::new(tx),
        }
    }

    async fn spawn(&self, command: Command) -> std::io::Result<Child> {
        let (reply, answer) = oneshot::channel();
        self.jobs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .send((command, reply))
            .map_err(|_| std::io::Error::other("the spawner thread is gone"))?;
        answer
            .await
            .map_err(|_| std::io::Error::other("the spawner thread dropped the request"))?
    }
}
