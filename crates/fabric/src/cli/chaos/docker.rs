//! The docker fabric (`fabric compose`, `make compose-up`): every fault through the Docker Engine
//! API. Kill is `docker kill` (SIGKILL), pause is `docker pause` (the cgroup freezer: every process
//! of the container stops at once), restart is `docker stop` (SIGTERM, the drain, then SIGKILL) and
//! `docker start`, and partitions cut containers' legs off networks (`docker network disconnect`),
//! mended with `docker network connect` at the same address. Only this backend can partition.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use docker_engine::Engine;
use fabric::Launcher;
use topology::Topology;

use super::backend::{Backend, NodeState};
use super::schedule::Leg;

pub struct Docker {
    engine: Engine,
    launcher: Launcher,
    ids: Mutex<HashMap<String, String>>,
}

impl Docker {
    /// The compose deployment of `project`, operated from `data_dir` (`fabric compose` wrote its
    /// `fabric.json`, naming the topology as the containers see it, and its TLS directory).
    pub async fn attach(data_dir: &Path, project: &str) -> anyhow::Result<Docker> {
        let (launcher, _) = crate::cli::running(data_dir)?;
        let engine = Engine::connect(project).await?;
        let docker = Docker {
            engine,
            launcher,
            ids: Mutex::new(HashMap::new()),
        };
        // Every container exists and answers /ready (a deployment just brought up is given time).
        let names = docker.launcher.topology.node_names();
        for name in &names {
            docker
                .id(name)
                .await
                .with_context(|| format!("project {project}"))?;
            docker.wait_ready(name, Duration::from_secs(120)).await?;
        }
        Ok(docker)
    }

    pub fn topology_file(&self) -> &Path {
        &self.launcher.topology_file
    }

    async fn id(&self, node: &str) -> anyhow::Result<String> {
        if let Some(id) = self.ids.lock().ok().and_then(|m| m.get(node).cloned()) {
            return Ok(id);
        }
        let id = self.engine.container_of(node).await?;
        if let Ok(mut m) = self.ids.lock() {
            m.insert(node.to_string(), id.clone());
        }
        Ok(id)
    }

    async fn wait_stopped(&self, id: &str, timeout: Duration) -> anyhow::Result<()> {
        let start = Instant::now();
        while self.engine.state(id).await?.running {
            if start.elapsed() > timeout {
                bail!("container {id} still runs after {timeout:?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(())
    }
}

impl Backend for Docker {
    fn name(&self) -> &'static str {
        "docker"
    }

    fn topology(&self) -> &Topology {
        &self.launcher.topology
    }

    fn tls_dir(&self) -> PathBuf {
        self.launcher.tls_dir()
    }

    fn describe(&self) -> String {
        format!(
            "{} (project {})",
            self.launcher.topology_file.display(),
            self.engine.project()
        )
    }

    async fn state(&self, node: &str) -> NodeState {
        let Ok(id) = self.id(node).await else {
            return NodeState::Down;
        };
        match self.engine.state(&id).await {
            Ok(s) if s.paused => NodeState::Paused,
            Ok(s) if s.running => NodeState::Running,
            // An engine that does not answer says nothing about the node: count it as running,
            // so the campaign neither skips its faults nor "heals" it.
            Err(_) => NodeState::Running,
            Ok(_) => NodeState::Down,
        }
    }

    async fn kill(&self, node: &str) -> anyhow::Result<()> {
        let id = self.id(node).await?;
        self.engine.kill(&id).await?;
        self.wait_stopped(&id, Duration::from_secs(10)).await
    }

    async fn terminate(&self, node: &str) -> anyhow::Result<()> {
        let id = self.id(node).await?;
        let grace = self.launcher.topology.timing.shutdown_deadline.as_secs() + 2;
        self.engine
            .stop(&id, i32::try_from(grace).unwrap_or(30))
            .await?;
        self.wait_stopped(&id, Duration::from_secs(grace + 5)).await
    }

    /// The freezer can fail to stop a busy container in time ("unable to freeze"): tried 3 times.
    async fn pause(&self, node: &str) -> anyhow::Result<()> {
        let id = self.id(node).await?;
        let mut tries = 0;
        loop {
            tries += 1;
            match self.engine.pause(&id).await {
                Ok(()) => return Ok(()),
                Err(e) if tries >= 3 => return Err(e.into()),
                Err(e) => {
                    eprintln!("chaos: pausing {node} (try {tries}): {e}; again");
                    tokio::time::sleep(Duration::from_millis(300)).await;
                }
            }
        }
    }

    async fn resume(&self, node: &str) -> anyhow::Result<()> {
        Ok(self.engine.unpause(&self.id(node).await?).await?)
    }

    async fn start(&self, node: &str, ready_timeout: Duration) -> anyhow::Result<()> {
        let id = self.id(node).await?;
        if self.engine.state(&id).await?.running {
            bail!("{node} is still running");
        }
        // Fail-back: the supervisor serving it retires its standby container (and gives the
        // addresses back); a standby left by a supervisor that is down itself is removed here.
        for supervisor in self.launcher.retire_standbys(node).await? {
            eprintln!("chaos: {node}: {supervisor} retired its standby (fail-back)");
        }
        for standby in self.engine.standbys(Some(node), None).await? {
            eprintln!(
                "chaos: {node}: removing the standby container {} left by {}",
                &standby.id[..12.min(standby.id.len())],
                standby.by
            );
            self.engine.remove(&standby.id).await?;
        }
        self.engine.start(&id).await?;
        self.wait_ready(node, ready_timeout).await
    }

    async fn wait_ready(&self, node: &str, timeout: Duration) -> anyhow::Result<()> {
        self.launcher
            .wait_ready(node, None, timeout)
            .await
            .with_context(|| format!("{node} not ready within {timeout:?}"))
    }

    async fn cut(&self, legs: &[Leg]) -> anyhow::Result<()> {
        for leg in legs {
            let id = self.id(&leg.node).await?;
            if self.engine.legs(&id).await?.contains(&leg.network) {
                self.engine.disconnect(&leg.network, &id).await?;
            }
        }
        Ok(())
    }

    async fn mend(&self, legs: &[Leg]) -> anyhow::Result<()> {
        let mut errors = Vec::new();
        for leg in legs {
            let id = self.id(&leg.node).await?;
            if self.engine.legs(&id).await?.contains(&leg.network) {
                continue;
            }
            if let Err(e) = self
                .engine
                .connect_leg(&leg.network, &id, leg.address)
                .await
            {
                errors.push(format!("{}: {e}", leg.node));
            }
        }
        if !errors.is_empty() {
            bail!("legs not mended: {}", errors.join("; "));
        }
        Ok(())
    }
}
