//! A service's pool: its site's servers (local backends) and the other sites' redirectors (the
//! fallback), each with a health state that active checks and client connects move, and the pick.
//!
//! Health: `fall` failures in a row (checks or client connects) take a backend out; `rise` good
//! checks in a row bring it back. A client connect that succeeds clears the failure streak (the
//! server is alive) but never brings a down backend back: only checks do.
//!
//! Pick: power of two choices over open connections among the healthy local backends; the healthy
//! fallback backends only when no local one is left (and never for a connection that came from
//! another site's redirector). Open connections, not tower's request-scoped load, because a session
//! is one long-lived TCP connection whose cost is its lifetime, not a request.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use metrics::{Counter, Gauge};
use serde_json::{Value, json};

use crate::service::Service;

/// Where a backend is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A server of the redirector's own site.
    Local,
    /// Another site's redirector for the same zone and service.
    OtherSite,
}

/// What moved a backend's health.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Check,
    Connect,
}

impl Source {
    fn as_str(self) -> &'static str {
        match self {
            Source::Check => "check",
            Source::Connect => "connect",
        }
    }
}

#[derive(Debug, Default)]
struct Streak {
    fails: u32,
    oks: u32,
}

struct Handles {
    up: Gauge,
    open: Gauge,
    picks: Counter,
    check_failures: Counter,
    connect_failures: Counter,
    to_up: Counter,
    to_down: Counter,
}

/// One server (or other-site redirector) of a pool.
pub struct Backend {
    pub name: String,
    pub service: Service,
    pub addr: SocketAddr,
    pub kind: Kind,
    rise: u32,
    fall: u32,
    up: AtomicBool,
    open: AtomicUsize,
    picks: AtomicU64,
    check_failures: AtomicU64,
    connect_failures: AtomicU64,
    streak: Mutex<Streak>,
    m: Handles,
}

impl Backend {
    /// A backend that starts up (as HAProxy's do): the first checks take it out if it is not.
    pub fn new(
        name: &str,
        service: Service,
        addr: SocketAddr,
        kind: Kind,
        rise: u32,
        fall: u32,
    ) -> Backend {
        let labels = [
            ("service", service.as_str().to_string()),
            ("backend", name.to_string()),
        ];
        let failures = |kind: &'static str| {
            let mut l = labels.to_vec();
            l.push(("kind", kind.to_string()));
            metrics::counter!("fabric_redirector_backend_failures_total", &l)
        };
        let changes = |to: &'static str| {
            let mut l = labels.to_vec();
            l.push(("to", to.to_string()));
            metrics::counter!("fabric_redirector_state_changes_total", &l)
        };
        let m = Handles {
            up: metrics::gauge!("fabric_redirector_backend_up", &labels),
            open: metrics::gauge!("fabric_redirector_backend_connections", &labels),
            picks: metrics::counter!("fabric_redirector_picks_total", &labels),
            check_failures: failures("check"),
            connect_failures: failures("connect"),
            to_up: changes("up"),
            to_down: changes("down"),
        };
        m.up.set(1.0);
        m.open.set(0.0);
        m.picks.absolute(0);
        Backend {
            name: name.to_string(),
            service,
            addr,
            kind,
            rise: rise.max(1),
            fall: fall.max(1),
            up: AtomicBool::new(true),
            open: AtomicUsize::new(0),
            picks: AtomicU64::new(0),
            check_failures: AtomicU64::new(0),
            connect_failures: AtomicU64::new(0),
            streak: Mutex::new(Streak::default()),
            m,
        }
    }

    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Acquire)
    }

    pub fn open(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    /// Whether a state change is under way (a failure while up, a success while down): the checker
    /// then checks again sooner (HAProxy's `fastinter`).
    pub fn transitioning(&self) -> bool {
        let s = self.lock();
        if self.is_up() { s.fails > 0 } else { s.oks > 0 }
    }

    /// Records a good check or a client connect that reached the server's greeting.
    pub fn success(&self, source: Source) {
        let mut s = self.lock();
        s.fails = 0;
        if source == Source::Connect {
            return;
        }
        s.oks = s.oks.saturating_add(1);
        if !self.is_up() && s.oks >= self.rise {
            let reason = format!("{} good checks in a row", s.oks);
            self.change(true, &reason);
        }
    }

    /// Records a failed check or client connect.
    pub fn failure(&self, source: Source, reason: &str) {
        match source {
            Source::Check => {
                self.check_failures.fetch_add(1, Ordering::Relaxed);
                self.m.check_failures.increment(1);
            }
            Source::Connect => {
                self.connect_failures.fetch_add(1, Ordering::Relaxed);
                self.m.connect_failures.increment(1);
            }
        }
        let mut s = self.lock();
        s.oks = 0;
        s.fails = s.fails.saturating_add(1);
        if self.is_up() && s.fails >= self.fall {
            let why = format!(
                "{} failures in a row, last by {}: {reason}",
                s.fails,
                source.as_str()
            );
            self.change(false, &why);
        }
    }

    fn change(&self, up: bool, reason: &str) {
        let (from, to) = if up { ("down", "up") } else { ("up", "down") };
        self.up.store(up, Ordering::Release);
        self.m.up.set(if up { 1.0 } else { 0.0 });
        if up {
            self.m.to_up.increment(1);
            tracing::info!(backend = %self.name, service = self.service.as_str(), addr = %self.addr, from, to, reason, "backend state changed");
        } else {
            self.m.to_down.increment(1);
            tracing::warn!(backend = %self.name, service = self.service.as_str(), addr = %self.addr, from, to, reason, "backend state changed");
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Streak> {
        self.streak.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Counts a pick and an open connection until the guard is dropped.
    pub fn take(self: &Arc<Self>) -> OpenGuard {
        self.picks.fetch_add(1, Ordering::Relaxed);
        self.m.picks.increment(1);
        let open = self.open.fetch_add(1, Ordering::Relaxed) + 1;
        self.m.open.set(open as f64);
        OpenGuard(self.clone())
    }

    pub fn status(&self) -> Value {
        json!({
            "backend": self.name,
            "addr": self.addr.to_string(),
            "kind": match self.kind { Kind::Local => "local", Kind::OtherSite => "other-site" },
            "state": if self.is_up() { "up" } else { "down" },
            "open": self.open(),
            "picks": self.picks.load(Ordering::Relaxed),
            "check_failures": self.check_failures.load(Ordering::Relaxed),
            "connect_failures": self.connect_failures.load(Ordering::Relaxed),
        })
    }
}

/// An open connection to a backend (counted while it lives).
pub struct OpenGuard(Arc<Backend>);

impl Drop for OpenGuard {
    fn drop(&mut self) {
        let open = self
            .0
            .open
            .fetch_sub(1, Ordering::Relaxed)
            .saturating_sub(1);
        self.0.m.open.set(open as f64);
    }
}

/// A service's backends, the local ones first.
pub struct Pool {
    pub service: Service,
    pub local: Vec<Arc<Backend>>,
    pub other: Vec<Arc<Backend>>,
    sessions: AtomicU64,
    failed: AtomicU64,
    retries: AtomicU64,
    m_sessions: Counter,
    m_failed: Counter,
    m_retries: Counter,
}

impl Pool {
    pub fn new(service: Service, local: Vec<Arc<Backend>>, other: Vec<Arc<Backend>>) -> Pool {
        let s = service.as_str();
        let m_failed = metrics::counter!("fabric_redirector_sessions_failed_total", "service" => s);
        m_failed.absolute(0);
        let m_retries = metrics::counter!("fabric_redirector_retries_total", "service" => s);
        m_retries.absolute(0);
        Pool {
            service,
            local,
            other,
            sessions: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            retries: AtomicU64::new(0),
            m_sessions: metrics::counter!("fabric_redirector_sessions_total", "service" => s),
            m_failed,
            m_retries,
        }
    }

    /// The next backend for a session that already tried `tried`: a healthy local one by power of
    /// two choices, else (unless `local_only`) a healthy other-site redirector the same way.
    pub fn next(&self, tried: &[Arc<Backend>], local_only: bool) -> Option<Arc<Backend>> {
        let fresh = |b: &&Arc<Backend>| b.is_up() && !tried.iter().any(|t| Arc::ptr_eq(t, b));
        let local: Vec<&Arc<Backend>> = self.local.iter().filter(fresh).collect();
        if let Some(b) = two_choices(&local) {
            return Some(b.clone());
        }
        if local_only {
            return None;
        }
        let other: Vec<&Arc<Backend>> = self.other.iter().filter(fresh).collect();
        two_choices(&other).cloned()
    }

    pub fn session_started(&self) {
        self.sessions.fetch_add(1, Ordering::Relaxed);
        self.m_sessions.increment(1);
    }

    pub fn session_failed(&self) {
        self.failed.fetch_add(1, Ordering::Relaxed);
        self.m_failed.increment(1);
    }

    pub fn retried(&self) {
        self.retries.fetch_add(1, Ordering::Relaxed);
        self.m_retries.increment(1);
    }

    pub fn status(&self) -> Value {
        let backends: Vec<Value> = self
            .local
            .iter()
            .chain(&self.other)
            .map(|b| b.status())
            .collect();
        json!({
            "sessions": self.sessions.load(Ordering::Relaxed),
            "sessions_failed": self.failed.load(Ordering::Relaxed),
            "retries": self.retries.load(Ordering::Relaxed),
            "healthy_local": self.local.iter().filter(|b| b.is_up()).count(),
            "backends": backends,
        })
    }
}

/// Power of two choices: two distinct candidates at random, the one with fewer open connections
/// (the first drawn on a tie, which is itself random).
fn two_choices<'a>(c: &[&'a Arc<Backend>]) -> Option<&'a Arc<Backend>> {
    match c.len() {
        0 => None,
        1 => Some(c[0]),
        n => {
            let i = rand::random_range(0..n);
            let mut j = rand::random_range(0..n - 1);
            if j >= i {
                j += 1;
            }
            let (a, b) = (c[i], c[j]);
            Some(if b.open() < a.open() { b } else { a })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backend(name: &str, kind: Kind) -> Arc<Backend> {
        Arc::new(Backend::new(
            name,
            Service::Smtp,
            "127.0.0.1:25".parse().expect("valid"),
            kind,
            2,
            2,
        ))
    }

    #[test]
    fn fall_and_rise_need_streaks() {
        let b = backend("a", Kind::Local);
        assert!(b.is_up());
        b.failure(Source::Check, "refused");
        assert!(b.is_up() && b.transitioning());
        b.success(Source::Connect);
        b.failure(Source::Connect, "refused");
        assert!(b.is_up(), "a success in between resets the streak");
        b.failure(Source::Check, "refused");
        assert!(!b.is_up());
        b.success(Source::Connect);
        assert!(!b.is_up(), "only checks bring a backend back");
        b.success(Source::Check);
        assert!(!b.is_up() && b.transitioning());
        b.success(Source::Check);
        assert!(b.is_up() && !b.transitioning());
    }

    #[test]
    fn picks_the_less_loaded_local_then_the_other_site() {
        let (a, b) = (backend("a", Kind::Local), backend("b", Kind::Local));
        let far = backend("far", Kind::OtherSite);
        let pool = Pool::new(Service::Smtp, vec![a.clone(), b.clone()], vec![far.clone()]);
        let _busy = a.take();
        for _ in 0..20 {
            let got = pool.next(&[], false).expect("a backend");
            assert!(Arc::ptr_eq(&got, &b), "b has fewer open connections");
        }
        let got = pool.next(std::slice::from_ref(&b), false).expect("a");
        assert!(Arc::ptr_eq(&got, &a), "retry goes to the one not tried");
        let got = pool
            .next(&[a.clone(), b.clone()], false)
            .expect("the other site");
        assert!(Arc::ptr_eq(&got, &far));
        assert!(pool.next(&[a.clone(), b.clone()], true).is_none());
        for x in [&a, &b] {
            x.failure(Source::Check, "x");
            x.failure(Source::Check, "x");
        }
        let got = pool.next(&[], false).expect("the other site");
        assert!(Arc::ptr_eq(&got, &far));
        assert!(
            pool.next(&[], true).is_none(),
            "from a redirector: local only"
        );
    }
}
