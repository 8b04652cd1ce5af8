//! A sandbox per test: a topology's nodes as real processes, started with the same launcher as
//! `fabric up`, on ports shifted into a slot of their own so tests run in parallel, in a temporary
//! data directory, and SIGKILLed when the sandbox is dropped (or when the test process dies, through
//! `PR_SET_PDEATHSIG`).
//!
//! Binaries come from `FABRIC_BIN_DIR` or the target directory of the test binary: run
//! `cargo build --workspace --bins` first (`make test` does).

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use fabric::{Launcher, SpawnOptions, find_bin_dir};
use nix::fcntl::{Flock, FlockArg};
use nix::sys::signal::Signal;
use nix::unistd::Pid;
use topology::Topology;

/// Port slots: slot N adds N*100 to every port. Slot 0 is left to `make run`.
const SLOTS: u16 = 19;
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// The workspace root (where `topology/` and `Cargo.lock` are).
pub fn workspace_root() -> PathBuf {
    let mut dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    dir.pop();
    dir.pop();
    dir
}

/// Polls `check` every `interval` until it returns true; fails naming `what` after `timeout`.
pub async fn wait_until<F, Fut>(
    what: &str,
    timeout: Duration,
    interval: Duration,
    mut check: F,
) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let start = Instant::now();
    loop {
        if check().await {
            return Ok(());
        }
        if start.elapsed() > timeout {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(interval).await;
    }
}

/// A running topology owned by one test.
pub struct Sandbox {
    launcher: Launcher,
    children: BTreeMap<String, Child>,
    _slot: Flock<File>,
    dir: tempfile::TempDir,
}

impl Sandbox {
    /// Starts every node of a topology file (relative to the workspace root) and waits until all
    /// are ready.
    pub async fn start(topology: &str) -> anyhow::Result<Sandbox> {
        let path = workspace_root().join(topology);
        let t = Topology::load(&path)?;
        Sandbox::start_topology(t).await
    }

    /// Starts every node of an in-memory topology (a test's variant of a file).
    pub async fn start_topology(mut topology: Topology) -> anyhow::Result<Sandbox> {
        let (slot, n) = claim_slot()?;
        topology.offset_ports(n * 100).map_err(anyhow::Error::msg)?;
        let dir = tempfile::Builder::new().prefix("fabric-test-").tempdir()?;
        let file = dir.path().join("topology.toml");
        std::fs::write(&file, topology.to_toml()?)?;
        let launcher = Launcher::new(&file, &dir.path().join("var"), &find_bin_dir())?;
        let mut sandbox = Sandbox {
            launcher,
            children: BTreeMap::new(),
            _slot: slot,
            dir,
        };
        let names = sandbox.launcher.topology.node_names();
        for name in &names {
            sandbox.spawn(name)?;
        }
        for name in &names {
            sandbox.wait_ready(name).await?;
        }
        Ok(sandbox)
    }

    /// The topology as the nodes see it (ports shifted into this sandbox's slot).
    pub fn topology(&self) -> &Topology {
        &self.launcher.topology
    }

    /// The topology file the nodes were started with (for the `fabric` command's `--topology`).
    pub fn topology_file(&self) -> &Path {
        &self.launcher.topology_file
    }

    /// `http://ADDR:PORT` of one of a node's services.
    pub fn url(&self, node: &str, service: &str) -> String {
        let addr = self
            .launcher
            .topology
            .node(node)
            .and_then(|n| n.service_addr(service))
            .map(|a| a.to_string())
            .unwrap_or_else(|| format!("no-such-service-{node}-{service}:0"));
        format!("http://{addr}")
    }

    /// `http://ADDR:PORT` of a node's admin endpoints.
    pub fn admin_url(&self, node: &str) -> String {
        match self.launcher.topology.node(node) {
            Some(n) => self.launcher.admin_url(n),
            None => format!("http://no-such-node-{node}:0"),
        }
    }

    pub fn data_dir(&self, node: &str) -> PathBuf {
        self.launcher.node_data_dir(node)
    }

    /// The fabric's CA (`ca.pem`) and node certificates.
    pub fn tls_dir(&self) -> PathBuf {
        self.launcher.tls_dir()
    }

    pub fn log_path(&self, node: &str) -> PathBuf {
        self.launcher.log_path(node)
    }

    /// Sends `signal` to a node; for SIGKILL and SIGTERM, waits until the process has exited.
    pub fn kill(&mut self, node: &str, signal: Signal) -> anyhow::Result<()> {
        let child = self
            .children
            .get_mut(node)
            .with_context(|| format!("{node} is not running in this sandbox"))?;
        let pid = Pid::from_raw(i32::try_from(child.id())?);
        nix::sys::signal::kill(pid, signal)?;
        if matches!(signal, Signal::SIGKILL | Signal::SIGTERM) {
            child.wait()?;
            self.children.remove(node);
        }
        Ok(())
    }

    /// Starts a node again (after `kill`) and waits until it is ready.
    pub async fn start_node(&mut self, node: &str) -> anyhow::Result<()> {
        if let Some(child) = self.children.get_mut(node) {
            if child.try_wait()?.is_none() {
                bail!("{node} is still running");
            }
            self.children.remove(node);
        }
        // Fail-back: a supervisor's standby holding the node's address hands it back first.
        for supervisor in self.launcher.reclaim_from_standby(node).await? {
            eprintln!("{node}: {supervisor} retired its standby (fail-back)");
        }
        self.spawn(node)?;
        self.wait_ready(node).await
    }

    /// The pid of a node this sandbox started (still running, stopped, or exited but not yet reaped).
    pub fn pid(&self, node: &str) -> Option<u32> {
        self.children.get(node).map(|c| c.id())
    }

    /// Deletes a node's data directory (a lost disk). The node must not be running.
    pub fn wipe(&self, node: &str) -> anyhow::Result<()> {
        if self.children.contains_key(node) {
            bail!("wipe {node}: kill it first");
        }
        let dir = self.data_dir(node);
        if dir.exists() {
            std::fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))?;
        }
        Ok(())
    }

    fn spawn(&mut self, node: &str) -> anyhow::Result<()> {
        let child = self.launcher.spawn(
            node,
            SpawnOptions {
                die_with_parent: true,
            },
        )?;
        self.children.insert(node.to_string(), child);
        Ok(())
    }

    async fn wait_ready(&mut self, node: &str) -> anyhow::Result<()> {
        let child = self.children.get_mut(node);
        self.launcher
            .wait_ready(node, child, READY_TIMEOUT)
            .await
            .with_context(|| format!("starting {node}"))
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        for child in self.children.values_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
        // FABRIC_TEST_KEEP=DIR keeps a copy of the whole sandbox (every node's full log and data),
        // to read a rare failure afterwards.
        if let Ok(keep) = std::env::var("FABRIC_TEST_KEEP") {
            let to = std::path::Path::new(&keep).join(format!(
                "{}-{}",
                std::process::id(),
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_millis())
                    .unwrap_or(0)
            ));
            let _ = std::process::Command::new("cp")
                .arg("-a")
                .arg(self.dir.path())
                .arg(&to)
                .status();
        }
        // Test harnesses show this only for failing tests: the nodes' last words.
        {
            for node in self.launcher.topology.nodes.iter().map(|n| &n.name) {
                eprintln!(
                    "---- last lines of {node}'s log ----\n{}",
                    self.launcher.log_tail(node, 30)
                );
            }
        }
    }
}

/// A port slot held for as long as this value lives: every port of a topology moved up by
/// `offset()` is this test's alone. For tests that start nodes another way (the `fabric` command).
pub struct PortSlot {
    _lock: Flock<File>,
    number: u16,
}

impl PortSlot {
    pub fn claim() -> anyhow::Result<PortSlot> {
        let (lock, number) = claim_slot()?;
        Ok(PortSlot {
            _lock: lock,
            number,
        })
    }

    pub fn offset(&self) -> u16 {
        self.number * 100
    }

    /// A topology file of the workspace with its ports moved into this slot, written to `dir`.
    pub fn write_topology(&self, topology: &str, dir: &Path) -> anyhow::Result<PathBuf> {
        let mut t = Topology::load(workspace_root().join(topology))?;
        t.offset_ports(self.offset()).map_err(anyhow::Error::msg)?;
        let file = dir.join("topology.toml");
        std::fs::write(&file, t.to_toml()?)?;
        Ok(file)
    }
}

/// Where the fabric binaries of this build are (`fabric`, `fabric-store`, ...).
pub fn bin_dir() -> PathBuf {
    find_bin_dir()
}

/// Takes the first free port slot, held by an exclusive flock for the sandbox's life (released by
/// the kernel even if the test process dies).
fn claim_slot() -> anyhow::Result<(Flock<File>, u16)> {
    let dir = Path::new("/tmp/mail-fabric-slots");
    std::fs::create_dir_all(dir)?;
    let start = Instant::now();
    loop {
        for n in 1..=SLOTS {
            let file = OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(dir.join(format!("slot-{n}")))?;
            if let Ok(lock) = Flock::lock(file, FlockArg::LockExclusiveNonblock) {
                return Ok((lock, n));
            }
        }
        if start.elapsed() > Duration::from_secs(120) {
            bail!("no free port slot in {} after 2 minutes", dir.display());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}
