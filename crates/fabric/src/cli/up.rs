//! `fabric up` (start and supervise) and `fabric down` (stop in order).

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Child;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use fabric::process::node_state;
use fabric::state::now_unix;
use fabric::{FabricState, Launcher, NodeRecord, SpawnOptions, find_bin_dir};
use nix::sys::signal::Signal;
use tokio::signal::unix::{SignalKind, signal as on_signal};

use super::{signal, status, wait_gone};

pub async fn up(
    topology: &Path,
    data_dir: &Path,
    detach: bool,
    ready_timeout: u64,
) -> anyhow::Result<()> {
    let launcher = Launcher::new(topology, data_dir, &find_bin_dir())?;
    if let Ok(state) = FabricState::read(&launcher.data_dir) {
        let alive: Vec<&String> = state
            .nodes
            .iter()
            .filter(|(name, rec)| node_state(rec.pid, name).is_alive())
            .map(|(name, _)| name)
            .collect();
        if !alive.is_empty() {
            bail!(
                "a fabric is already running from {} ({} nodes alive: {:?}); see `fabric status`, stop it with `fabric down`",
                launcher.data_dir.display(),
                alive.len(),
                alive
            );
        }
    }
    // Handlers first: a Ctrl-C during startup must stop the nodes already started, not orphan them.
    let mut signals = Signals {
        interrupt: on_signal(SignalKind::interrupt())?,
        terminate: on_signal(SignalKind::terminate())?,
    };
    let mut children = BTreeMap::new();
    let started = Instant::now();
    let result = tokio::select! {
        r = start_all(&launcher, &mut children, Duration::from_secs(ready_timeout)) => r,
        _ = signals.recv() => Err(anyhow::anyhow!("interrupted during startup")),
    };
    if let Err(e) = result {
        eprintln!("fabric: startup failed, stopping the nodes already started");
        stop_all(&launcher, &mut children).await?;
        return Err(e);
    }
    eprintln!(
        "fabric: {} nodes ready in {:.1}s (data in {})",
        children.len(),
        started.elapsed().as_secs_f64(),
        launcher.data_dir.display()
    );
    status::print_table(&launcher, &FabricState::read(&launcher.data_dir)?).await;
    if let Err(e) = super::directory::create_demo_users(&launcher.data_dir).await {
        eprintln!("fabric: demo mailboxes not created: {e:#}");
    }
    if detach {
        return Ok(());
    }
    supervise(&launcher, children, signals).await
}

struct Signals {
    interrupt: tokio::signal::unix::Signal,
    terminate: tokio::signal::unix::Signal,
}

impl Signals {
    async fn recv(&mut self) {
        tokio::select! {
            _ = self.interrupt.recv() => {}
            _ = self.terminate.recv() => {}
        }
    }
}

async fn start_all(
    launcher: &Launcher,
    children: &mut BTreeMap<String, Child>,
    ready_timeout: Duration,
) -> anyhow::Result<()> {
    let topology_file = launcher.topology_file.clone();
    FabricState::update(&launcher.data_dir, |s| {
        s.topology = topology_file;
        s.supervisor = None;
        s.nodes.clear();
    })?;
    for node in &launcher.topology.nodes {
        for supervisor in launcher.reclaim_from_standby(&node.name).await? {
            println!(
                "{}: {supervisor} retired its standby (fail-back)",
                node.name
            );
        }
        let child = launcher.spawn(&node.name, SpawnOptions::default())?;
        let record = NodeRecord {
            pid: child.id(),
            started_at: now_unix(),
        };
        FabricState::update(&launcher.data_dir, |s| {
            s.nodes.insert(node.name.clone(), record);
        })?;
        children.insert(node.name.clone(), child);
    }
    for (name, child) in children.iter_mut() {
        launcher
            .wait_ready(name, Some(child), ready_timeout)
            .await
            .with_context(|| format!("starting {name}"))?;
    }
    Ok(())
}

/// Foreground mode: reap nodes that exit (an operator's `fabric kill`), report them, and stop
/// everything on Ctrl-C or SIGTERM (`fabric down` from another terminal sends that).
async fn supervise(
    launcher: &Launcher,
    mut children: BTreeMap<String, Child>,
    mut signals: Signals,
) -> anyhow::Result<()> {
    let me = std::process::id();
    FabricState::update(&launcher.data_dir, |s| s.supervisor = Some(me))?;
    eprintln!("fabric: supervising; Ctrl-C stops every node (or run `fabric down`)");
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    loop {
        tokio::select! {
            _ = signals.recv() => break,
            _ = tick.tick() => reap(&mut children),
        }
    }
    eprintln!("fabric: stopping");
    stop_all(launcher, &mut children).await
}

/// Collects exited children so they do not linger as zombies, and says which node died how.
fn reap(children: &mut BTreeMap<String, Child>) {
    children.retain(|name, child| match child.try_wait() {
        Ok(Some(status)) => {
            eprintln!("fabric: {name} (pid {}) exited: {status}", child.id());
            false
        }
        _ => true,
    });
}

/// SIGTERM to every live node, SIGKILL to those still alive after the shutdown deadline; clears the
/// state's pids.
pub async fn stop_all(
    launcher: &Launcher,
    children: &mut BTreeMap<String, Child>,
) -> anyhow::Result<()> {
    let state = FabricState::read(&launcher.data_dir).unwrap_or_default();
    let live: Vec<(String, u32)> = state
        .nodes
        .iter()
        .filter(|(name, rec)| node_state(rec.pid, name).is_alive())
        .map(|(name, rec)| (name.clone(), rec.pid))
        .collect();
    for (_, pid) in &live {
        // A stopped node cannot act on SIGTERM until it is resumed.
        signal(*pid, Signal::SIGTERM)?;
        signal(*pid, Signal::SIGCONT)?;
    }
    let deadline = launcher.topology.timing.shutdown_deadline;
    let all_gone = wait_gone(deadline, || {
        reap_quietly(children);
        live.iter()
            .any(|(_, pid)| fabric::process::proc_state(*pid).is_alive())
    })
    .await;
    if !all_gone {
        for (name, pid) in &live {
            if fabric::process::proc_state(*pid).is_alive() {
                eprintln!("fabric: {name} did not stop within {deadline:?}; SIGKILL");
                signal(*pid, Signal::SIGKILL)?;
            }
        }
        wait_gone(Duration::from_secs(5), || {
            reap_quietly(children);
            live.iter()
                .any(|(_, pid)| fabric::process::proc_state(*pid).is_alive())
        })
        .await;
    }
    reap_quietly(children);
    FabricState::update(&launcher.data_dir, |s| {
        s.nodes.clear();
        if s.supervisor == Some(std::process::id()) {
            s.supervisor = None;
        }
    })?;
    eprintln!("fabric: {} nodes stopped", live.len());
    Ok(())
}

fn reap_quietly(children: &mut BTreeMap<String, Child>) {
    children.retain(|_, child| !matches!(child.try_wait(), Ok(Some(_))));
}

/// `fabric down`: asks a foreground supervisor to stop (it owns the children), then stops anything
/// left.
pub async fn down(data_dir: &Path) -> anyhow::Result<()> {
    let (launcher, state) = super::running(data_dir)?;
    if let Some(pid) = state.supervisor
        && pid != std::process::id()
        && fabric::process::proc_state(pid).is_alive()
    {
        signal(pid, Signal::SIGTERM)?;
        let deadline = launcher.topology.timing.shutdown_deadline + Duration::from_secs(10);
        wait_gone(deadline, || fabric::process::proc_state(pid).is_alive()).await;
    }
    stop_all(&launcher, &mut BTreeMap::new()).await?;
    FabricState::update(&launcher.data_dir, |s| s.supervisor = None)?;
    Ok(())
}
