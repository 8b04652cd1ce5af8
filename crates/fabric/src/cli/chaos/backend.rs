//! The fault actions of a campaign behind one small trait, so the same schedule, workload and checker
//! drive the loopback fabric (processes and signals, here) and the docker fabric (`docker.rs`:
//! `docker kill`, `docker pause`/`unpause`, `docker start`, and `docker network disconnect` for
//! partitions, which only that backend can offer).

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Child;
use std::sync::Mutex;
use std::time::Duration;

use anyhow::{Context, bail};
use fabric::process::{node_state, proc_state};
use fabric::state::now_unix;
use fabric::{FabricState, Launcher, NodeRecord, ProcState, SpawnOptions, find_bin_dir};
use nix::sys::signal::Signal;
use topology::Topology;

use super::schedule::Leg;
use crate::cli::{signal, wait_gone};

/// What the campaign knows of a node between its own actions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeState {
    Running,
    Paused,
    Down,
}

/// One way of hurting and healing the nodes of a fabric. Every action returns once it took effect
/// (a killed node is gone, a started one is ready), so the schedule can time recoveries.
///
/// The campaign drives a backend from one task (faults overlap as futures of that task, not as
/// spawned tasks), so the futures need not be `Send`.
#[allow(async_fn_in_trait)]
pub trait Backend {
    /// Named in the report: `loopback`, `docker`.
    fn name(&self) -> &'static str;
    /// The topology as the nodes run it (ports, addresses).
    fn topology(&self) -> &Topology;
    /// Where the fabric's CA is (`ca.pem`), for the workload's TLS.
    fn tls_dir(&self) -> std::path::PathBuf;
    /// What the report names as the fabric (its topology file, the compose project).
    fn describe(&self) -> String;
    async fn state(&self, node: &str) -> NodeState;
    /// SIGKILL (docker kill): returns once the node is gone.
    async fn kill(&self, node: &str) -> anyhow::Result<()>;
    /// SIGTERM and the node's own drain (docker stop): returns once it exited.
    async fn terminate(&self, node: &str) -> anyhow::Result<()>;
    /// SIGSTOP (docker pause).
    async fn pause(&self, node: &str) -> anyhow::Result<()>;
    /// SIGCONT (docker unpause).
    async fn resume(&self, node: &str) -> anyhow::Result<()>;
    /// Starts a node that is down (docker start) and returns once it answers `/ready`.
    async fn start(&self, node: &str, ready_timeout: Duration) -> anyhow::Result<()>;
    /// Waits until a running node answers `/ready` (after SIGCONT).
    async fn wait_ready(&self, node: &str, timeout: Duration) -> anyhow::Result<()>;
    /// Cuts these legs of containers off their networks (a partition).
    async fn cut(&self, legs: &[Leg]) -> anyhow::Result<()> {
        bail!(
            "the {} backend cannot cut {} network legs",
            self.name(),
            legs.len()
        )
    }
    /// Gives the legs back, at the same addresses.
    async fn mend(&self, legs: &[Leg]) -> anyhow::Result<()> {
        bail!(
            "the {} backend cannot mend {} network legs",
            self.name(),
            legs.len()
        )
    }
}

/// The loopback fabric: one process per node, signals, and the launcher of `fabric up`.
///
/// Started by the campaign (`owned`): every node is our child, asks the kernel to SIGKILL it when we
/// die (PR_SET_PDEATHSIG: no node outlives a crashed campaign or test), and is stopped at the end.
/// Attached to a running fabric: pids come from `fabric.json`, restarted nodes outlive the campaign
/// like those of `fabric start`. Either way every pid is recorded in `fabric.json`, so `fabric status`
/// shows the campaign's damage as it happens.
///
/// PR_SET_PDEATHSIG fires when the spawning *thread* ends: nodes are spawned from the campaign's
/// main task, which `#[tokio::main]` runs on the main thread for the whole run.
pub struct Loopback {
    launcher: Launcher,
    owned: bool,
    children: Mutex<BTreeMap<String, Child>>,
}

impl Loopback {
    /// Starts every node of `topology` (the sink too: it is the outside world), waits until all are
    /// ready. Refuses when a fabric already runs from `data_dir`.
    pub async fn start_fabric(
        topology: &Path,
        data_dir: &Path,
        ready_timeout: Duration,
    ) -> anyhow::Result<Loopback> {
        let launcher = Launcher::new(topology, data_dir, &find_bin_dir())?;
        if let Ok(state) = FabricState::read(&launcher.data_dir)
            && state
                .nodes
                .iter()
                .any(|(name, rec)| node_state(rec.pid, name).is_alive())
        {
            bail!(
                "a fabric already runs from {}: stop it (`fabric down`) or use --attach",
                launcher.data_dir.display()
            );
        }
        let topology_file = launcher.topology_file.clone();
        FabricState::update(&launcher.data_dir, |s| {
            s.topology = topology_file;
            s.supervisor = Some(std::process::id());
            s.nodes.clear();
        })?;
        let backend = Loopback {
            launcher,
            owned: true,
            children: Mutex::new(BTreeMap::new()),
        };
        let names: Vec<String> = backend.node_names();
        for name in &names {
            backend.spawn(name)?;
        }
        for name in &names {
            backend.ready_child(name, ready_timeout).await?;
        }
        Ok(backend)
    }

    /// A fabric started by `fabric up` (or another campaign that kept it) from `data_dir`.
    pub fn attach(data_dir: &Path) -> anyhow::Result<Loopback> {
        let (launcher, state) = crate::cli::running(data_dir)?;
        let dead: Vec<&String> = state
            .nodes
            .iter()
            .filter(|(name, rec)| !node_state(rec.pid, name).is_alive())
            .map(|(name, _)| name)
            .collect();
        if state.nodes.is_empty() {
            bail!("no fabric runs from {}", data_dir.display());
        }
        if !dead.is_empty() {
            eprintln!(
                "chaos: attached; these nodes are not running (the heal will start them): {dead:?}"
            );
        }
        Ok(Loopback {
            launcher,
            owned: false,
            children: Mutex::new(BTreeMap::new()),
        })
    }

    /// Whether the campaign started (and so stops) the fabric.
    pub fn owned(&self) -> bool {
        self.owned
    }

    fn node_names(&self) -> Vec<String> {
        self.launcher.topology.node_names()
    }

    fn pid(&self, node: &str) -> Option<u32> {
        FabricState::read(&self.launcher.data_dir)
            .ok()
            .and_then(|s| s.nodes.get(node).map(|r| r.pid))
    }

    /// Collects our children that exited, so none lingers as a zombie.
    fn reap(&self) {
        if let Ok(mut children) = self.children.lock() {
            children.retain(|_, c| !matches!(c.try_wait(), Ok(Some(_))));
        }
    }

    fn spawn(&self, node: &str) -> anyhow::Result<()> {
        let child = self.launcher.spawn(
            node,
            SpawnOptions {
                die_with_parent: self.owned,
            },
        )?;
        let record = NodeRecord {
            pid: child.id(),
            started_at: now_unix(),
        };
        FabricState::update(&self.launcher.data_dir, |s| {
            s.nodes.insert(node.to_string(), record);
        })?;
        if let Ok(mut children) = self.children.lock() {
            children.insert(node.to_string(), child);
        }
        Ok(())
    }

    /// Waits for `/ready`, failing early (with the log's tail) if our child exits meanwhile.
    async fn ready_child(&self, node: &str, timeout: Duration) -> anyhow::Result<()> {
        let start = std::time::Instant::now();
        loop {
            let exited = self
                .children
                .lock()
                .ok()
                .and_then(|mut c| c.get_mut(node).map(|c| c.try_wait()));
            if let Some(Ok(Some(status))) = exited {
                bail!(
                    "{node} exited during startup ({status}); last log lines:\n{}",
                    self.launcher.log_tail(node, 20)
                );
            }
            let step = Duration::from_secs(2).min(timeout.saturating_sub(start.elapsed()));
            if self.launcher.wait_ready(node, None, step).await.is_ok() {
                return Ok(());
            }
            if start.elapsed() >= timeout {
                bail!(
                    "{node} not ready after {timeout:?}; last log lines:\n{}",
                    self.launcher.log_tail(node, 20)
                );
            }
        }
    }

    async fn signal_and_wait(&self, node: &str, sig: Signal) -> anyhow::Result<()> {
        let Some(pid) = self.pid(node) else {
            bail!("{node} has no recorded pid");
        };
        if !node_state(pid, node).is_alive() {
            bail!("{node} (pid {pid}) is not running");
        }
        signal(pid, sig)?;
        if sig == Signal::SIGTERM {
            signal(pid, Signal::SIGCONT)?;
        }
        let deadline = self.launcher.topology.timing.shutdown_deadline + Duration::from_secs(2);
        let gone = wait_gone(deadline, || {
            self.reap();
            proc_state(pid).is_alive()
        })
        .await;
        if !gone {
            signal(pid, Signal::SIGKILL)?;
            wait_gone(Duration::from_secs(5), || {
                self.reap();
                proc_state(pid).is_alive()
            })
            .await;
        }
        self.reap();
        Ok(())
    }

    /// The end of a campaign that started the fabric: every node stops (SIGTERM, SIGKILL after the
    /// shutdown deadline). An attached fabric is left running.
    pub async fn shutdown(&self) -> anyhow::Result<()> {
        if !self.owned {
            return Ok(());
        }
        let mut children = std::mem::take(
            &mut *self
                .children
                .lock()
                .map_err(|_| anyhow::anyhow!("the children table is poisoned"))?,
        );
        crate::cli::up::stop_all(&self.launcher, &mut children).await
    }
}

impl Backend for Loopback {
    fn name(&self) -> &'static str {
        "loopback"
    }

    fn topology(&self) -> &Topology {
        &self.launcher.topology
    }

    fn tls_dir(&self) -> std::path::PathBuf {
        self.launcher.tls_dir()
    }

    fn describe(&self) -> String {
        self.launcher.topology_file.display().to_string()
    }

    async fn state(&self, node: &str) -> NodeState {
        self.reap();
        match self.pid(node).map(|pid| node_state(pid, node)) {
            Some(ProcState::Running) => NodeState::Running,
            Some(ProcState::Stopped) => NodeState::Paused,
            _ => NodeState::Down,
        }
    }

    async fn kill(&self, node: &str) -> anyhow::Result<()> {
        self.signal_and_wait(node, Signal::SIGKILL).await
    }

    async fn terminate(&self, node: &str) -> anyhow::Result<()> {
        self.signal_and_wait(node, Signal::SIGTERM).await
    }

    async fn pause(&self, node: &str) -> anyhow::Result<()> {
        let pid = self.pid(node).context("no recorded pid")?;
        signal(pid, Signal::SIGSTOP)
    }

    async fn resume(&self, node: &str) -> anyhow::Result<()> {
        let pid = self.pid(node).context("no recorded pid")?;
        signal(pid, Signal::SIGCONT)
    }

    async fn start(&self, node: &str, ready_timeout: Duration) -> anyhow::Result<()> {
        if self.state(node).await != NodeState::Down {
            bail!("{node} is still running");
        }
        // Fail-back: a supervisor's standby at the node's address hands it back first.
        for supervisor in self.launcher.reclaim_from_standby(node).await? {
            eprintln!("chaos: {node}: {supervisor} retired its standby (fail-back)");
        }
        self.spawn(node)?;
        self.ready_child(node, ready_timeout).await
    }

    async fn wait_ready(&self, node: &str, timeout: Duration) -> anyhow::Result<()> {
        self.ready_child(node, timeout).await
    }
}
