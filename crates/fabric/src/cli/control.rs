//! `fabric kill`, `fabric start` and `fabric store rebuild`: one node at a time.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use fabric::process::node_state;
use fabric::state::now_unix;
use fabric::{FabricState, NodeRecord, ProcState, SpawnOptions};
use nix::sys::signal::Signal;
use store_client::{Method, StoreClient};

use super::{signal, wait_gone};

pub async fn kill(data_dir: &Path, node: &str, sig: Signal) -> anyhow::Result<()> {
    let (launcher, state) = super::running(data_dir)?;
    launcher.node(node)?;
    let Some(record) = state.nodes.get(node) else {
        bail!("{node} is not running (never started by this fabric)");
    };
    let pid = record.pid;
    let before = node_state(pid, node);
    if !before.is_alive() {
        bail!("{node} is not running (pid {pid} is gone)");
    }
    signal(pid, sig)?;
    match sig {
        Signal::SIGKILL | Signal::SIGTERM => {
            if sig == Signal::SIGTERM && before == ProcState::Stopped {
                signal(pid, Signal::SIGCONT)?;
            }
            // Return once the process is gone, so its ports are free for `fabric start`.
            let deadline = launcher.topology.timing.shutdown_deadline + Duration::from_secs(2);
            // The identity was checked above; from here the kernel's word is enough (an exiting
            // process loses its command line before it becomes a zombie).
            if !wait_gone(deadline, || fabric::process::proc_state(pid).is_alive()).await {
                bail!("{node} (pid {pid}) is still alive {deadline:?} after {sig}");
            }
            println!("{node} (pid {pid}): {sig}, exited");
        }
        _ => println!("{node} (pid {pid}): {sig}"),
    }
    Ok(())
}

pub async fn start(data_dir: &Path, node: &str, ready_timeout: u64) -> anyhow::Result<()> {
    let (launcher, state) = super::running(data_dir)?;
    launcher.node(node)?;
    if let Some(record) = state.nodes.get(node) {
        match node_state(record.pid, node) {
            ProcState::Stopped => {
                signal(record.pid, Signal::SIGCONT)?;
                println!("{node} (pid {}): resumed with SIGCONT", record.pid);
                return Ok(());
            }
            ProcState::Running => bail!("{node} is already running (pid {})", record.pid),
            ProcState::Zombie | ProcState::Gone => {}
        }
    }
    let started = Instant::now();
    for supervisor in launcher.reclaim_from_standby(node).await? {
        println!("{node}: {supervisor} retired its standby (fail-back); starting the original");
    }
    let mut child = launcher.spawn(node, SpawnOptions::default())?;
    let record = NodeRecord {
        pid: child.id(),
        started_at: now_unix(),
    };
    FabricState::update(&launcher.data_dir, |s| {
        s.nodes.insert(node.to_string(), record.clone());
    })?;
    launcher
        .wait_ready(node, Some(&mut child), Duration::from_secs(ready_timeout))
        .await
        .with_context(|| format!("starting {node}"))?;
    println!(
        "{node} (pid {}): ready in {:.1}s, log {}",
        record.pid,
        started.elapsed().as_secs_f64(),
        launcher.log_path(node).display()
    );
    Ok(())
}

pub async fn rebuild(data_dir: &Path, node: &str) -> anyhow::Result<()> {
    let (launcher, _) = super::running(data_dir)?;
    let n = launcher.node(node)?;
    if n.role() != topology::Role::Store {
        bail!("{node} is a {} node, not a store", n.role);
    }
    let admin = StoreClient::new(launcher.admin_url(n)).with_timeout(Duration::from_secs(600));
    let resp = admin
        .raw(Method::POST, "/admin/rebuild", &[], bytes::Bytes::new())
        .await
        .with_context(|| format!("asking {node} to rebuild"))?;
    let body = String::from_utf8_lossy(&resp.body);
    if !resp.status.is_success() {
        bail!("{node} refused the rebuild ({}): {body}", resp.status);
    }
    println!("{body}");
    Ok(())
}
