//! The subcommands of `fabric`.

pub mod bench_smtp;
pub mod chaos;
pub mod compose;
pub mod control;
pub mod directory;
pub mod failover;
pub mod mailbox_move;
pub mod outside;
pub mod queue;
pub mod send;
pub mod status;
pub mod trace;
pub mod up;

use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use fabric::{FabricState, Launcher, find_bin_dir};
use nix::sys::signal::{Signal, kill as send};
use nix::unistd::Pid;

/// The launcher of the fabric recorded in `data_dir/fabric.json`.
pub fn running(data_dir: &Path) -> anyhow::Result<(Launcher, FabricState)> {
    let state = FabricState::read(data_dir)?;
    let launcher = Launcher::new(&state.topology, data_dir, &find_bin_dir())
        .with_context(|| format!("loading the fabric of {}", data_dir.display()))?;
    Ok((launcher, state))
}

/// Sends `signal` to `pid`, ignoring a process that is already gone.
pub fn signal(pid: u32, signal: Signal) -> anyhow::Result<()> {
    let Ok(raw) = i32::try_from(pid) else {
        anyhow::bail!("pid {pid} out of range");
    };
    match send(Pid::from_raw(raw), signal) {
        Ok(()) | Err(nix::errno::Errno::ESRCH) => Ok(()),
        Err(e) => Err(e).with_context(|| format!("sending {signal} to pid {pid}")),
    }
}

/// Waits until `alive()` turns false or `deadline` passes; returns whether it died.
pub async fn wait_gone(deadline: Duration, mut alive: impl FnMut() -> bool) -> bool {
    let start = std::time::Instant::now();
    while alive() {
        if start.elapsed() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    true
}

/// Formats a duration as `1h02m`, `3m12s` or `45s`.
pub fn short_duration(secs: u64) -> String {
    match secs {
        s if s >= 3600 => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
        s if s >= 60 => format!("{}m{:02}s", s / 60, s % 60),
        s => format!("{s}s"),
    }
}
