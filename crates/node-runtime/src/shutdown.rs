//! Turning SIGTERM and SIGINT into a cancelled token, and draining with a deadline.

use std::time::Duration;

use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Cancels `token` on the first SIGTERM or SIGINT.
pub fn cancel_on_signals(token: CancellationToken) -> std::io::Result<()> {
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => tracing::info!(signal = "TERM", "shutting down"),
            _ = int.recv() => tracing::info!(signal = "INT", "shutting down"),
            _ = token.cancelled() => {}
        }
        token.cancel();
    });
    Ok(())
}

/// Waits for every tracked task to finish, or for the deadline; says which happened.
pub async fn drain(tasks: &TaskTracker, deadline: Duration) -> bool {
    tasks.close();
    match tokio::time::timeout(deadline, tasks.wait()).await {
        Ok(()) => true,
        Err(_) => {
            tracing::warn!(
                deadline_ms = deadline.as_millis() as u64,
                pending = tasks.len(),
                "shutdown deadline passed; exiting with work still running"
            );
            false
        }
    }
}
