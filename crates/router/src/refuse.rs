//! Refusing a connection: a TCP reset (SO_LINGER 0) without a byte, one log line, one count.
//!
//! A flood of refused connections must not become a flood of log lines: at most
//! [`LOG_LINES_PER_SECOND`] denials are logged per second; the others are only counted, and the next
//! line logged says how many were left out.

use std::net::SocketAddr;
use std::sync::Mutex;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use std::net::TcpStream;

use nix::sys::socket::{setsockopt, sockopt};

use crate::stats::Stats;

/// Denial log lines per second at most.
pub const LOG_LINES_PER_SECOND: u32 = 20;

/// Why a connection was refused (the log line's `reason`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// The zone's access list does not allow the port's service.
    Acl,
    /// The router has its maximum of open connections.
    OverCapacity,
}

impl Reason {
    fn as_str(self) -> &'static str {
        match self {
            Reason::Acl => "acl",
            Reason::OverCapacity => "over_capacity",
        }
    }
}

/// A fixed-window limit on log lines.
pub struct LogLimit {
    window: Mutex<Window>,
    per_second: u32,
}

struct Window {
    start: Instant,
    logged: u32,
    suppressed: u64,
}

impl LogLimit {
    pub fn new(per_second: u32) -> LogLimit {
        LogLimit {
            window: Mutex::new(Window {
                start: Instant::now(),
                logged: 0,
                suppressed: 0,
            }),
            per_second,
        }
    }

    /// `Some(n)` if a line may be logged now (`n`: lines left out since the last one logged);
    /// `None` if this one must be left out.
    pub fn admit(&self) -> Option<u64> {
        let Ok(mut w) = self.window.lock() else {
            return Some(0);
        };
        if w.start.elapsed() >= Duration::from_secs(1) {
            w.start = Instant::now();
            w.logged = 0;
        }
        if w.logged < self.per_second {
            w.logged += 1;
            Some(std::mem::take(&mut w.suppressed))
        } else {
            w.suppressed += 1;
            None
        }
    }
}

/// One refused connection, as logged.
#[derive(Debug, Clone, Copy)]
pub struct Refusal<'a> {
    pub client: SocketAddr,
    pub local: SocketAddr,
    pub service: &'a str,
    /// `zone:service`, the label of `fabric_acl_denied_total`.
    pub rule: &'a str,
    pub reason: Reason,
}

/// Resets `stream` (no byte sent), logs the denial within the limit and counts it. The connection
/// never enters the poller: nothing is read from it or written to it.
pub fn refuse(stream: TcpStream, r: Refusal<'_>, stats: &Stats, log: &LogLimit) {
    let Refusal {
        client,
        local,
        service,
        rule,
        reason,
    } = r;
    let counters = stats.service(service);
    match reason {
        Reason::Acl => {
            metrics::counter!("fabric_acl_denied_total", "rule" => rule.to_string()).increment(1);
            if let Some(c) = counters {
                c.denied.fetch_add(1, Ordering::Relaxed);
            }
        }
        Reason::OverCapacity => {
            metrics::counter!("fabric_router_over_capacity_total", "service" => service.to_string())
                .increment(1);
            if let Some(c) = counters {
                c.over_capacity.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
    // Counted before the reset, so whoever sees the reset also sees the count.
    // SO_LINGER 0: close() sends RST and discards anything queued; nothing was written anyway.
    let zero_linger = nix::libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    if let Err(e) = setsockopt(&stream, sockopt::Linger, &zero_linger) {
        tracing::debug!(error = %e, "SO_LINGER 0 failed; closing normally");
    }
    drop(stream);
    match log.admit() {
        Some(suppressed) => tracing::warn!(
            client = %client,
            port = local.port(),
            service,
            rule,
            reason = reason.as_str(),
            suppressed,
            "connection refused"
        ),
        None => {
            stats.denial_logs_suppressed.fetch_add(1, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_log_limit_admits_a_burst_then_reports_what_it_left_out() {
        let limit = LogLimit::new(3);
        assert_eq!(limit.admit(), Some(0));
        assert_eq!(limit.admit(), Some(0));
        assert_eq!(limit.admit(), Some(0));
        assert_eq!(limit.admit(), None);
        assert_eq!(limit.admit(), None);
        if let Ok(mut w) = limit.window.lock() {
            w.start = Instant::now() - Duration::from_secs(2);
        }
        assert_eq!(
            limit.admit(),
            Some(2),
            "the next line says two were left out"
        );
        assert_eq!(limit.admit(), Some(0));
    }
}
