//! What the stores say about the run (group commit and shipping), read from their `/metrics`.

use std::time::Duration;

use fabric::Launcher;
use store_client::{Method, StoreClient};

fn sum(text: &str, name: &str, label: Option<&str>) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let metric = series.split('{').next()?;
            if metric != name || label.is_some_and(|lab| !series.contains(lab)) {
                return None;
            }
            value.parse::<f64>().ok()
        })
        .fold(0.0, |a, b| a + b)
}

/// The route label of a mirror's shipment requests.
const APPLY: &str = "route=\"/v1/replica/{origin}/apply\"";

/// One line per store: batches committed, mean requests per batch, mean commit time, shipments.
pub async fn report(launcher: &Launcher) -> Vec<String> {
    let mut lines = Vec::new();
    for node in launcher.topology.nodes_with_role(topology::Role::Store) {
        let admin = StoreClient::new(launcher.admin_url(node)).with_timeout(Duration::from_secs(5));
        let Ok(resp) = admin
            .raw(Method::GET, "/metrics", &[], Vec::<u8>::new())
            .await
        else {
            continue;
        };
        let m = String::from_utf8_lossy(&resp.body);
        let batches = sum(&m, "fabric_store_batch_requests_count", None);
        let requests = sum(&m, "fabric_store_batch_requests_sum", None);
        let commit = sum(&m, "fabric_store_commit_seconds_sum", None);
        let shipments = sum(&m, "fabric_store_shipments_total", None);
        let shipped = sum(&m, "fabric_store_shipped_batches_total", None);
        let replica_ops = sum(&m, "fabric_store_replica_ops_total", None);
        let applies = sum(&m, "fabric_store_request_seconds_count", Some(APPLY));
        let apply_time = sum(&m, "fabric_store_request_seconds_sum", Some(APPLY));
        let syncs = sum(&m, "fabric_store_sync_seconds_count", None);
        let sync_time = sum(&m, "fabric_store_sync_seconds_sum", None);
        let per = |a: f64, b: f64| if b > 0.0 { a / b } else { 0.0 };
        lines.push(format!(
            "{:<10} commits {:>7.0} ({:>5.1} requests each, {:>6.3} ms); syncs {:>7.0} ({:>6.3} ms); shipments {:>7.0} ({:>4.1} batches each); mirror copies applied {:>7.0} ops in {:>6.0} shipments ({:>6.3} ms each)",
            node.name,
            batches,
            per(requests, batches),
            per(commit * 1000.0, batches),
            syncs,
            per(sync_time * 1000.0, syncs),
            shipments,
            per(shipped, shipments),
            replica_ops,
            applies,
            per(apply_time * 1000.0, applies),
        ));
        let routes = top_routes(&m, 8);
        if !routes.is_empty() {
            lines.push(format!("{:<10} requests: {routes}", ""));
        }
    }
    lines
}

/// The routes a store answered most often, as `METHOD route count`.
fn top_routes(text: &str, n: usize) -> String {
    let mut counts: std::collections::BTreeMap<String, f64> = Default::default();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("fabric_store_requests_total{") else {
            continue;
        };
        let Some((labels, value)) = rest.rsplit_once("} ") else {
            continue;
        };
        let label = |name: &str| {
            labels
                .split(&format!("{name}=\""))
                .nth(1)
                .and_then(|v| v.split('"').next())
                .unwrap_or("?")
                .to_string()
        };
        *counts
            .entry(format!("{} {}", label("method"), label("route")))
            .or_default() += value.parse::<f64>().unwrap_or(0.0);
    }
    let mut counts: Vec<_> = counts.into_iter().collect();
    counts.sort_by(|a, b| b.1.total_cmp(&a.1));
    counts
        .iter()
        .take(n)
        .map(|(route, count)| format!("{route} {count:.0}"))
        .collect::<Vec<_>>()
        .join(", ")
}
