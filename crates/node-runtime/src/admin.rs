//! The admin HTTP server every node runs on its admin port:
//! - `GET /metrics`: Prometheus text exposition;
//! - `GET /health`: 200 while the process runs;
//! - `GET /ready`: 200 once the node serves, 503 before and while it cannot (e.g. a store rebuilding);
//! - `GET /status`: JSON with node, role, site, uptime and the role's key counters.
//!
//! Roles add their own routes (e.g. a store's `POST /admin/rebuild`) with [`AdminServer::routes`].

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::{Value, json};
use tokio::net::TcpListener;

use crate::NodeContext;

/// A closure that returns the role's part of `/status`.
pub type StatusFn = Arc<dyn Fn() -> Value + Send + Sync>;

/// Whether the node is ready to serve; roles flip it.
#[derive(Clone, Default)]
pub struct Readiness(Arc<AtomicBool>);

impl Readiness {
    pub fn set(&self, ready: bool) {
        self.0.store(ready, Ordering::SeqCst);
    }
    pub fn get(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

#[derive(Clone)]
struct AdminState {
    ctx: NodeContext,
    ready: Readiness,
    status: StatusFn,
}

/// The admin server, built up by the role before it is served.
pub struct AdminServer {
    state: AdminState,
    extra: Router,
}

impl AdminServer {
    pub fn new(ctx: &NodeContext, ready: Readiness, status: StatusFn) -> AdminServer {
        AdminServer {
            state: AdminState {
                ctx: ctx.clone(),
                ready,
                status,
            },
            extra: Router::new(),
        }
    }

    /// Adds role-specific routes (already given their own state).
    pub fn routes(mut self, routes: Router) -> AdminServer {
        self.extra = self.extra.merge(routes);
        self
    }

    /// Serves until the node's shutdown token is cancelled.
    pub async fn serve(self, listener: TcpListener) -> std::io::Result<()> {
        let shutdown = self.state.ctx.shutdown.clone();
        let metrics = self.state.ctx.metrics.clone();
        let ctx = &self.state.ctx;
        metrics::describe_gauge!(
            "fabric_node_info",
            "Always 1; its labels name the node, its role and its site."
        );
        metrics::gauge!("fabric_node_info", "node" => ctx.node.name.clone(), "role" => ctx.role.as_str(), "site" => ctx.node.site.clone()).set(1.0);
        metrics::describe_gauge!(
            "fabric_node_start_time_seconds",
            metrics::Unit::Seconds,
            "When the node started, in seconds since the Unix epoch."
        );
        let started = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs_f64() - ctx.started.elapsed().as_secs_f64())
            .unwrap_or(0.0);
        metrics::gauge!("fabric_node_start_time_seconds").set(started);
        let upkeep_stop = shutdown.clone();
        // Summaries and histograms need periodic upkeep when the recorder is not installed by a builder.
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(5));
            loop {
                tokio::select! {
                    _ = tick.tick() => metrics.run_upkeep(),
                    _ = upkeep_stop.cancelled() => break,
                }
            }
        });
        let app = Router::new()
            .route("/metrics", get(metrics_text))
            .route("/health", get(health))
            .route("/ready", get(ready))
            .route("/status", get(status))
            .with_state(self.state)
            .merge(self.extra)
            .fallback(not_found);
        axum::serve(listener, app)
            .with_graceful_shutdown(async move { shutdown.cancelled().await })
            .await
    }
}

async fn metrics_text(State(s): State<AdminState>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        s.ctx.metrics.render(),
    )
        .into_response()
}

async fn health() -> Response {
    (StatusCode::OK, axum::Json(json!({"status": "alive"}))).into_response()
}

async fn ready(State(s): State<AdminState>) -> Response {
    if s.ready.get() {
        (StatusCode::OK, axum::Json(json!({"ready": true}))).into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(json!({"ready": false})),
        )
            .into_response()
    }
}

async fn status(State(s): State<AdminState>) -> Response {
    let ctx = &s.ctx;
    let mut body = json!({
        "node": ctx.node.name,
        "role": ctx.role.as_str(),
        "site": ctx.node.site,
        "fabric": ctx.topology.fabric.name,
        "pid": std::process::id(),
        "uptime_secs": ctx.started.elapsed().as_secs_f64(),
        "ready": s.ready.get(),
        "counters": (s.status)(),
    });
    // A standby server says so, and which supervisor runs it.
    if let Some(by) = crate::logging::standby_by() {
        body["standby_by"] = Value::String(by);
    }
    axum::Json(body).into_response()
}

async fn not_found() -> Response {
    (
        StatusCode::NOT_FOUND,
        axum::Json(json!({"error": "not_found", "message": "no such admin endpoint"})),
    )
        .into_response()
}
