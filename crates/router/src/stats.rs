//! The router's counters: Prometheus metrics (through the `metrics` facade) and the same numbers kept
//! in atomics for `/status`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use serde_json::{Value, json};

/// Counters of one guarded service.
#[derive(Default)]
pub struct ServiceStats {
    /// Connections accepted and forwarded (or attempted: see `upstream_failures`).
    pub allowed: AtomicU64,
    /// Connections the access list refused.
    pub denied: AtomicU64,
    /// Connections refused because the router was at its cap.
    pub over_capacity: AtomicU64,
    /// Forwarded connections open now.
    pub open: AtomicU64,
}

/// Every counter of a router, shared by its listeners and its `/status`.
#[derive(Default)]
pub struct Stats {
    pub services: BTreeMap<String, ServiceStats>,
    /// Flows that reached the site's own redirector.
    pub upstream_local: AtomicU64,
    /// Flows that reached another site's redirector because the local one did not answer.
    pub upstream_other_site: AtomicU64,
    /// Of `upstream_local`, flows handed whole to the redirector on the same host (not relayed).
    pub handed_off: AtomicU64,
    /// Flows closed because no redirector answered.
    pub upstream_failures: AtomicU64,
    /// Denial log lines left out by the rate limit.
    pub denial_logs_suppressed: AtomicU64,
}

impl Stats {
    pub fn new<'a>(services: impl IntoIterator<Item = &'a str>) -> Arc<Stats> {
        describe();
        Arc::new(Stats {
            services: services
                .into_iter()
                .map(|s| (s.to_string(), ServiceStats::default()))
                .collect(),
            ..Stats::default()
        })
    }

    pub fn service(&self, service: &str) -> Option<&ServiceStats> {
        self.services.get(service)
    }

    /// The router's part of `/status`.
    pub fn status(&self, max_connections: usize) -> Value {
        let per = |f: fn(&ServiceStats) -> &AtomicU64| -> Value {
            self.services
                .iter()
                .map(|(name, s)| (name.clone(), json!(f(s).load(Ordering::Relaxed))))
                .collect::<serde_json::Map<_, _>>()
                .into()
        };
        let open: u64 = self
            .services
            .values()
            .map(|s| s.open.load(Ordering::Relaxed))
            .sum();
        json!({
            "allowed": per(|s| &s.allowed),
            "denied": per(|s| &s.denied),
            "over_capacity": per(|s| &s.over_capacity),
            "open": per(|s| &s.open),
            "open_connections": open,
            "max_connections": max_connections,
            "upstream": {
                "local": self.upstream_local.load(Ordering::Relaxed),
                "other_site": self.upstream_other_site.load(Ordering::Relaxed),
                "failed": self.upstream_failures.load(Ordering::Relaxed),
                "handed_off": self.handed_off.load(Ordering::Relaxed),
            },
            "denial_logs_suppressed": self.denial_logs_suppressed.load(Ordering::Relaxed),
        })
    }
}

fn describe() {
    metrics::describe_counter!(
        "fabric_acl_denied_total",
        "Connections a router refused because its zone's access list does not allow the port's service; rule = zone:service."
    );
    metrics::describe_counter!(
        "fabric_router_connections_total",
        "Connections a router accepted on a port its access list allows, by service."
    );
    metrics::describe_gauge!(
        "fabric_router_open_connections",
        "Forwarded connections open now, by service."
    );
    metrics::describe_counter!(
        "fabric_router_bytes_total",
        metrics::Unit::Bytes,
        "Bytes spliced, by direction (to_upstream: from clients to redirectors; to_client: back). Flows handed off to a redirector on the same host are not relayed and not counted here."
    );
    metrics::describe_counter!(
        "fabric_router_upstream_total",
        "Forwarded connections by the redirector that took them: path = local (own site) or other_site."
    );
    metrics::describe_counter!(
        "fabric_router_upstream_attempt_failures_total",
        "Connection attempts to a redirector that failed or timed out (the next one is tried), by redirector."
    );
    metrics::describe_counter!(
        "fabric_router_upstream_failures_total",
        "Allowed connections closed because no redirector answered, by service."
    );
    metrics::describe_counter!(
        "fabric_router_over_capacity_total",
        "Allowed connections reset because the router had its maximum of open connections, by service."
    );
}
