//! Where a standby runs: a process of ours on loopback (the role binary under the failed node's name,
//! after fencing whatever still holds its ports), or, in a compose deployment, a container started
//! through the Docker Engine API at the failed node's addresses on every network (after `docker kill`
//! of the failed node's container: the engine is the out-of-band fence, as IPMI is for a machine).
//!
//! The supervisor picks containers when `FABRIC_STANDBYS=containers` (`fabric compose` sets it and
//! mounts the engine's socket).

use std::fs::OpenOptions;
use std::net::SocketAddrV4;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use docker_engine::{Engine, StandbySpec};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use node_runtime::NodeContext;
use tokio::sync::oneshot;
use topology::Node;

use crate::{fence, probe};

/// How long a standby may take to answer `/ready`.
pub const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long fencing waits for the failed node to be gone.
const FENCE_TIMEOUT: Duration = Duration::from_secs(5);

/// A standby that was started.
pub enum Running {
    Process(Child),
    Container { id: String, pid: u32 },
}

impl Running {
    /// The process id (on the docker host, for a container).
    pub fn pid(&self) -> u32 {
        match self {
            Running::Process(c) => c.id(),
            Running::Container { pid, .. } => *pid,
        }
    }

    pub fn container(&self) -> Option<&str> {
        match self {
            Running::Process(_) => None,
            Running::Container { id, .. } => Some(id),
        }
    }
}

pub enum Host {
    Processes {
        topology_file: PathBuf,
        bin_dir: PathBuf,
        spawner: Spawner,
    },
    Containers(Engine),
}

/// Why a node that does not answer gets no standby from a host.
pub enum Verdict {
    Failed,
    /// Running, unpaused and healthy by its own health check inside its container: cut off from
    /// us, not dead (a partition). A standby would be a second copy of a live node.
    CutOff,
}

impl Host {
    /// Containers when `FABRIC_STANDBYS=containers`, else processes.
    pub async fn from_env(topology_file: PathBuf, bin_dir: PathBuf) -> anyhow::Result<Host> {
        if std::env::var("FABRIC_STANDBYS").as_deref() == Ok("containers") {
            let engine = Engine::connect_own_project().await?;
            tracing::info!(
                project = engine.project(),
                "standbys are containers (Docker Engine API)"
            );
            return Ok(Host::Containers(engine));
        }
        Ok(Host::Processes {
            topology_file,
            bin_dir,
            spawner: Spawner::start(),
        })
    }

    pub fn kind(&self) -> &'static str {
        match self {
            Host::Processes { .. } => "process",
            Host::Containers(_) => "container",
        }
    }

    /// Asked about a node that answers neither `/health` nor its greeting.
    pub async fn verdict(&self, node: &Node) -> Verdict {
        let Host::Containers(engine) = self else {
            return Verdict::Failed;
        };
        let Ok(id) = engine.container_of(&node.name).await else {
            return Verdict::Failed;
        };
        match engine.state(&id).await {
            Ok(state) if state.serving() => Verdict::CutOff,
            _ => Verdict::Failed,
        }
    }

    /// Makes sure the failed node is gone: SIGKILL whatever holds its ports (processes), `docker
    /// kill` of its container (containers). Returns the pids killed.
    pub async fn fence(&self, node: &Node) -> Result<Vec<u32>, String> {
        match self {
            Host::Processes { .. } => {
                let targets: Vec<SocketAddrV4> = node
                    .ports
                    .values()
                    .chain(std::iter::once(&node.admin))
                    .map(|p| SocketAddrV4::new(node.address, *p))
                    .collect();
                fence::fence(&targets, FENCE_TIMEOUT)
                    .await
                    .map_err(|e| format!("fencing {}: {e}", node.name))
            }
            Host::Containers(engine) => {
                let id = engine
                    .container_of(&node.name)
                    .await
                    .map_err(|e| e.to_string())?;
                let before = engine.state(&id).await.map_err(|e| e.to_string())?;
                if !before.running {
                    return Ok(Vec::new());
                }
                engine.kill(&id).await.map_err(|e| e.to_string())?;
                let start = Instant::now();
                while engine.state(&id).await.map_err(|e| e.to_string())?.running {
                    if start.elapsed() > FENCE_TIMEOUT {
                        return Err(format!(
                            "{}'s container {id} still runs {FENCE_TIMEOUT:?} after docker kill",
                            node.name
                        ));
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Ok(vec![before.pid])
            }
        }
    }

    /// Starts the standby of `node` (its data directory empty) and waits until it is ready.
    pub async fn start(&self, ctx: &NodeContext, node: &Node) -> Result<Running, String> {
        let mut running = match self {
            Host::Processes {
                topology_file,
                bin_dir,
                spawner,
            } => Running::Process(start_process(ctx, node, topology_file, bin_dir, spawner).await?),
            Host::Containers(engine) => {
                let networks = ctx.topology.node_networks(node);
                let spec = StandbySpec {
                    node: &node.name,
                    by: &ctx.node.name,
                    networks: &networks,
                    env: vec![format!("FABRIC_STANDBY_BY={}", ctx.node.name)],
                    since_ms: crate::standby::unix_ms(),
                };
                let id = engine
                    .create_standby(&spec)
                    .await
                    .map_err(|e| e.to_string())?;
                if let Err(e) = engine.start(&id).await {
                    let _ = engine.remove(&id).await;
                    return Err(e.to_string());
                }
                let pid = engine.state(&id).await.map(|s| s.pid).unwrap_or(0);
                Running::Container { id, pid }
            }
        };
        if let Err(e) = self.wait_ready(node, &mut running).await {
            let e = match (self, &running) {
                (Host::Containers(engine), Running::Container { id, .. }) => {
                    format!("{e}; its last lines:\n{}", engine.log_tail(id, 10).await)
                }
                _ => e,
            };
            self.stop(&mut running, Duration::ZERO).await;
            return Err(e);
        }
        Ok(running)
    }

    /// `Some(how it ended)` once the standby is no longer running.
    pub async fn exited(&self, running: &mut Running) -> Option<String> {
        match (self, running) {
            (_, Running::Process(child)) => match child.try_wait() {
                Ok(None) => None,
                Ok(Some(status)) => Some(status.to_string()),
                Err(e) => Some(e.to_string()),
            },
            (Host::Containers(engine), Running::Container { id, .. }) => {
                match engine.state(id).await {
                    Ok(s) if s.running => None,
                    Ok(_) => Some(format!("container {id} exited")),
                    // The engine did not answer: no verdict this time.
                    Err(docker_engine::EngineError::Api { .. }) => None,
                    Err(e) => Some(e.to_string()),
                }
            }
            (Host::Processes { .. }, Running::Container { .. }) => {
                Some("a container standby without the engine".into())
            }
        }
    }

    /// Starts the standby again after it exited on its own.
    pub async fn restart(
        &self,
        ctx: &NodeContext,
        node: &Node,
        running: &mut Running,
    ) -> Result<(), String> {
        match (self, &mut *running) {
            (Host::Containers(engine), Running::Container { id, pid }) => {
                engine.start(id).await.map_err(|e| e.to_string())?;
                *pid = engine.state(id).await.map(|s| s.pid).unwrap_or(0);
                Ok(())
            }
            _ => {
                *running = self.start(ctx, node).await?;
                Ok(())
            }
        }
    }

    /// SIGTERM (docker stop), up to `deadline`, then SIGKILL; a container is removed after.
    pub async fn stop(&self, running: &mut Running, deadline: Duration) {
        match (self, running) {
            (_, Running::Process(child)) => stop_child(child, deadline).await,
            (Host::Containers(engine), Running::Container { id, .. }) => {
                let grace = i32::try_from(deadline.as_secs()).unwrap_or(i32::MAX);
                if let Err(e) = engine.stop(id, grace).await {
                    tracing::warn!(container = %id, error = %e, "stopping a standby container");
                }
                if let Err(e) = engine.remove(id).await {
                    tracing::warn!(container = %id, error = %e, "removing a standby container");
                }
            }
            (Host::Processes { .. }, Running::Container { .. }) => {}
        }
    }

    /// Containers: the standbys this supervisor started before it was restarted, still running
    /// (adopted) and stopped ones (removed). Processes die with their supervisor.
    pub async fn leftovers(&self, by: &str) -> Vec<(String, Running, u64)> {
        let Host::Containers(engine) = self else {
            return Vec::new();
        };
        let mut adopted = Vec::new();
        match engine.standbys(None, Some(by)).await {
            Ok(list) => {
                for s in list {
                    if s.running {
                        let pid = engine.state(&s.id).await.map(|st| st.pid).unwrap_or(0);
                        adopted.push((s.node, Running::Container { id: s.id, pid }, s.since_ms));
                    } else if let Err(e) = engine.remove(&s.id).await {
                        tracing::warn!(container = %s.id, error = %e, "removing a stopped standby");
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "listing this supervisor's standby containers"),
        }
        adopted
    }

    async fn wait_ready(&self, node: &Node, running: &mut Running) -> Result<(), String> {
        let start = Instant::now();
        loop {
            if let Some(status) = self.exited(running).await {
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
}

pub fn log_path(ctx: &NodeContext, node: &str) -> PathBuf {
    ctx.data_dir.join(format!("standby-{node}.log"))
}

/// Spawns the node's role binary under the node's own name (so its address and ports).
async fn start_process(
    ctx: &NodeContext,
    node: &Node,
    topology_file: &std::path::Path,
    bin_dir: &std::path::Path,
    spawner: &Spawner,
) -> Result<Child, String> {
    let binary = bin_dir.join(node.role().binary());
    if !binary.is_file() {
        return Err(format!("the binary {} does not exist", binary.display()));
    }
    let data = ctx.data_dir.join("standby").join(&node.name);
    std::fs::create_dir_all(&data).map_err(|e| format!("{}: {e}", data.display()))?;
    let log_path = log_path(ctx, &node.name);
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
        .arg(topology_file)
        .arg("--node")
        .arg(&node.name)
        .arg("--data-dir")
        .arg(&data)
        .arg("--tls-dir")
        .arg(&ctx.tls_dir)
        .env("FABRIC_STANDBY_BY", &ctx.node.name)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .process_group(0);
    fabric::die_with_parent(&mut command);
    spawner
        .spawn(command)
        .await
        .map_err(|e| format!("spawning {}: {e}", binary.display()))
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

type SpawnJob = (Command, oneshot::Sender<std::io::Result<Child>>);

/// Spawns every standby from one thread that lives as long as the supervisor: `PR_SET_PDEATHSIG`
/// fires when the *thread* that forked the child exits, and tokio's blocking threads come and go.
pub struct Spawner {
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
