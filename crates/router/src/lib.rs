//! The `router` role: a TCP proxy per zone and site that enforces its zone's access list.
//!
//! A router listens on every port of its `ports` table (the fabric's service ports it guards). A
//! connection on a port whose service the zone's `[[acl]]` allows is forwarded to the site's
//! redirector of the zone, with a PROXY v2 header naming the real client first, and to another site's
//! redirector when the local one does not answer; every other connection is reset without a byte,
//! logged and counted in `fabric_acl_denied_total{rule="zone:service"}`. When the site's redirector
//! runs on the same host, an allowed connection is handed to it whole (`node_runtime::handoff`) and
//! the router leaves the data path; otherwise it relays. So nothing on the Internet side
//! reaches an intranet server, a store or an admin port through a router (invariant 4).
//!
//! # Layout
//! - `plan`: what each guarded port does, decided once from the topology.
//! - `forward`: hand the connection to the site's redirector, or connect to a redirector (bounded,
//!   from the router's address), header, splice.
//! - `refuse`: the reset, the rate-limited log line, the counters.
//! - `stats`: counters for `/metrics` and `/status`.
//!
//! The binary (`fabric-router`, `src/main.rs`) only wires this to the node runtime.

pub mod forward;
pub mod plan;
pub mod refuse;
pub mod stats;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::io::unix::AsyncFd;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use plan::{Action, Guarded, Plan, PlanError, Upstream};
use refuse::{LogLimit, Reason, Refusal};
use stats::Stats;

/// Forwarded connections open at once, across all ports; more are reset and counted.
pub const MAX_CONNECTIONS: usize = 10_000;

/// A router ready to serve: its plan, its counters and its cap.
pub struct Router {
    pub plan: Arc<Plan>,
    pub stats: Arc<Stats>,
    permits: Arc<Semaphore>,
    max_connections: usize,
    log: Arc<LogLimit>,
}

/// Why a listener could not be bound.
#[derive(Debug, thiserror::Error)]
#[error("binding the {service} port {addr}: {source}")]
pub struct BindError {
    pub service: String,
    pub addr: std::net::SocketAddr,
    #[source]
    pub source: std::io::Error,
}

impl Router {
    pub fn new(plan: Plan, max_connections: usize) -> Router {
        let stats = Stats::new(plan.ports.iter().map(|g| g.service.as_str()));
        Router {
            plan: Arc::new(plan),
            stats,
            permits: Arc::new(Semaphore::new(max_connections)),
            max_connections,
            log: Arc::new(LogLimit::new(refuse::LOG_LINES_PER_SECOND)),
        }
    }

    pub fn max_connections(&self) -> usize {
        self.max_connections
    }

    /// The router's part of `/status`.
    pub fn status(&self) -> serde_json::Value {
        self.stats.status(self.max_connections)
    }

    /// Binds every guarded port (all or nothing).
    pub async fn bind(&self) -> Result<Vec<(Guarded, TcpListener)>, BindError> {
        let mut out = Vec::new();
        for g in &self.plan.ports {
            let listener =
                node_runtime::sessions::listen(g.listen).map_err(|source| BindError {
                    service: g.service.clone(),
                    addr: g.listen,
                    source,
                })?;
            out.push((g.clone(), listener));
        }
        Ok(out)
    }

    /// Accepts on every listener until `shutdown`, then gives open flows `deadline` to end.
    pub async fn run(
        &self,
        listeners: Vec<(Guarded, TcpListener)>,
        shutdown: CancellationToken,
        tasks: TaskTracker,
        deadline: Duration,
    ) {
        let mut loops = Vec::new();
        for (guarded, listener) in listeners {
            let port = PortLoop {
                guarded: Arc::new(guarded),
                plan: self.plan.clone(),
                stats: self.stats.clone(),
                permits: self.permits.clone(),
                log: self.log.clone(),
                tasks: tasks.clone(),
            };
            loops.push(tokio::spawn(port.run(listener, shutdown.clone())));
        }
        for l in loops {
            let _ = l.await;
        }
        tracing::info!("stopping: no new connections; waiting for the open ones");
        tasks.close();
        if tokio::time::timeout(deadline, tasks.wait()).await.is_err() {
            tracing::warn!(
                ?deadline,
                "connections still open at the deadline; stopping anyway"
            );
        }
    }
}

/// The accept loop of one guarded port.
struct PortLoop {
    guarded: Arc<Guarded>,
    plan: Arc<Plan>,
    stats: Arc<Stats>,
    permits: Arc<Semaphore>,
    log: Arc<LogLimit>,
    tasks: TaskTracker,
}

impl PortLoop {
    async fn run(self, listener: TcpListener, shutdown: CancellationToken) {
        // Accepted connections stay out of the poller until a flow needs it there: most are given
        // to the redirector at once, and registering each only to deregister it is two system
        // calls per connection for nothing.
        let listener = match listener.into_std().and_then(polled_listener) {
            Ok(l) => l,
            Err(e) => {
                tracing::error!(service = %self.guarded.service, error = %e, "cannot poll the listener; this port accepts nothing");
                return;
            }
        };
        loop {
            let (stream, peer) = tokio::select! {
                accepted = accept(&listener) => match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // Out of descriptors or a connection reset before accept: do not spin.
                        tracing::warn!(service = %self.guarded.service, error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
                _ = shutdown.cancelled() => break,
            };
            self.handle(stream, peer);
        }
    }

    fn handle(&self, stream: std::net::TcpStream, peer: std::net::SocketAddr) {
        let g = &self.guarded;
        let upstreams = match &g.action {
            Action::Refuse { rule } => {
                let refusal = Refusal {
                    client: peer,
                    local: stream.local_addr().unwrap_or(g.listen),
                    service: &g.service,
                    rule,
                    reason: Reason::Acl,
                };
                refuse::refuse(stream, refusal, &self.stats, &self.log);
                return;
            }
            Action::Forward(upstreams) => upstreams,
        };
        let Ok(permit) = self.permits.clone().try_acquire_owned() else {
            let rule = format!("{}:{}", self.plan.zone, g.service);
            let refusal = Refusal {
                client: peer,
                local: stream.local_addr().unwrap_or(g.listen),
                service: &g.service,
                rule: &rule,
                reason: Reason::OverCapacity,
            };
            refuse::refuse(stream, refusal, &self.stats, &self.log);
            return;
        };
        metrics::counter!("fabric_router_connections_total", "service" => g.service.clone())
            .increment(1);
        if let Some(s) = self.stats.service(&g.service) {
            s.allowed.fetch_add(1, Ordering::Relaxed);
        }
        let (guarded, stats) = (g.clone(), self.stats.clone());
        let via = forward::Via {
            source: self.plan.source,
            handoff: self.plan.handoff,
        };
        let from_relay = match peer.ip() {
            std::net::IpAddr::V4(ip) => self.plan.relays.contains(&ip),
            std::net::IpAddr::V6(_) => false,
        };
        let upstreams: Vec<_> = upstreams
            .iter()
            .filter(|u| !from_relay || u.path == "local")
            .cloned()
            .collect();
        self.tasks.spawn(async move {
            let _permit = permit;
            let _open = OpenGuard::new(&stats, &guarded.service);
            let result = forward::forward(
                stream,
                peer,
                guarded.listen,
                via,
                &guarded.service,
                &upstreams,
                &stats,
            )
            .await;
            if let Err(e) = result {
                tracing::debug!(client = %peer, service = %guarded.service, error = %e, "flow ended early");
            }
        });
    }
}

/// The next connection on `listener`, left out of the poller (and blocking: whoever serves it sets
/// what it needs: relaying makes it nonblocking, a refusal only resets it).
async fn accept(
    listener: &AsyncFd<std::net::TcpListener>,
) -> std::io::Result<(std::net::TcpStream, std::net::SocketAddr)> {
    loop {
        let mut ready = listener.readable().await?;
        if let Ok(accepted) = ready.try_io(|l| l.get_ref().accept()) {
            return accepted;
        }
    }
}

/// Registers a listener for readiness only. Tokio deprecated its safe constructors because a
/// `T: AsRawFd` could hand out a descriptor it does not own; a `std::net::TcpListener` owns its
/// descriptor for as long as the registration lives, which is what the unsafe replacement asks its
/// caller to promise (as in `node_runtime::handoff`).
#[allow(deprecated)]
fn polled_listener(l: std::net::TcpListener) -> std::io::Result<AsyncFd<std::net::TcpListener>> {
    AsyncFd::new(l)
}

/// Counts a flow as open (gauge and `/status`) for as long as it lives.
struct OpenGuard<'a> {
    stats: &'a Stats,
    service: &'a str,
}

impl<'a> OpenGuard<'a> {
    fn new(stats: &'a Stats, service: &'a str) -> OpenGuard<'a> {
        if let Some(s) = stats.service(service) {
            s.open.fetch_add(1, Ordering::Relaxed);
        }
        metrics::gauge!("fabric_router_open_connections", "service" => service.to_string())
            .increment(1.0);
        OpenGuard { stats, service }
    }
}

impl Drop for OpenGuard<'_> {
    fn drop(&mut self) {
        if let Some(s) = self.stats.service(self.service) {
            s.open.fetch_sub(1, Ordering::Relaxed);
        }
        metrics::gauge!("fabric_router_open_connections", "service" => self.service.to_string())
            .decrement(1.0);
    }
}

/// Raises the soft open-file limit towards the hard one so `wanted` connections (two descriptors
/// each) fit, and returns the cap that does fit.
pub fn fit_connection_cap(wanted: usize) -> usize {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    const SPARE: u64 = 256;
    let need = (wanted as u64).saturating_mul(2).saturating_add(SPARE);
    let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else {
        return wanted;
    };
    let target = need.min(hard);
    let soft = if target > soft && setrlimit(Resource::RLIMIT_NOFILE, target, hard).is_ok() {
        target
    } else {
        soft
    };
    let fits = usize::try_from(soft.saturating_sub(SPARE) / 2).unwrap_or(wanted);
    wanted.min(fits.max(1))
}
