//! Standby invocation: once a home site has failed long enough (an item's `attempts` reach
//! `timing.standby_attempts`, or it has waited `timing.standby_after`), the relay asks its own site's
//! supervisor to stand a server in for every failed mail server of that site
//! (`POST /v1/standby {"site"}`; the supervisor checks which ones failed, fences them and starts a
//! standby with the same name and address). The standbys work over the same stores, so held mail is
//! then handed over to them like to the originals.
//!
//! Asks are serialized per site and an answer is reused for a few seconds, so a queue full of mail
//! for one dead site makes one request, not one per message.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use store_client::{Method, StoreClient};
use tokio::sync::Mutex;
use topology::Topology;

/// How long an answer is reused.
const REUSE: Duration = Duration::from_secs(5);

pub struct Standby {
    supervisor: Option<(String, StoreClient)>,
    me: String,
    attempts: u32,
    after: Duration,
    asked: Mutex<HashMap<String, (Instant, Vec<String>)>>,
}

impl Standby {
    pub fn new(topology: &Topology, node: &topology::Node) -> Standby {
        let supervisor = topology.supervisor(&node.site).and_then(|s| {
            let addr = s.service_addr("supervisor")?;
            let client =
                StoreClient::new(format!("http://{addr}")).with_timeout(Duration::from_secs(60));
            Some((s.name.clone(), client))
        });
        Standby {
            supervisor,
            me: node.name.clone(),
            attempts: topology.timing.standby_attempts,
            after: topology.timing.standby_after,
            asked: Mutex::new(HashMap::new()),
        }
    }

    /// Whether an item that failed its `attempts`-th round after waiting `waited` calls for a standby.
    pub fn due(&self, attempts: i64, waited: Duration) -> bool {
        self.supervisor.is_some()
            && (attempts >= i64::from(self.attempts.max(1)) || waited >= self.after)
    }

    /// Asks for standbys at `site`; the nodes a standby serves (empty when none could be started).
    pub async fn ask(&self, site: &str, reason: &str) -> Vec<String> {
        let Some((name, client)) = &self.supervisor else {
            return Vec::new();
        };
        let mut asked = self.asked.lock().await;
        if let Some((at, serving)) = asked.get(site)
            && at.elapsed() < REUSE
        {
            return serving.clone();
        }
        let body = json!({"site": site, "reason": reason, "requested_by": self.me});
        // Counted before the call: the supervisor answers once the standbys serve.
        metrics::counter!("fabric_relay_standby_requests_total", "result" => "sent").increment(1);
        let started = Instant::now();
        let answer = client
            .call(
                Method::POST,
                "/v1/standby",
                &[("content-type", "application/json".to_string())],
                body.to_string(),
            )
            .await;
        let serving = match answer.map(|r| r.json()) {
            Ok(Some(v)) => {
                let serving = nodes_in_state(&v, "serving");
                metrics::counter!("fabric_relay_standby_requests_total", "result" => "answered")
                    .increment(1);
                tracing::info!(supervisor = %name, site, serving = ?serving, answer = %v,
                    took_ms = started.elapsed().as_millis() as u64, "standby requested");
                serving
            }
            Ok(None) => {
                metrics::counter!("fabric_relay_standby_requests_total", "result" => "failed")
                    .increment(1);
                tracing::warn!(supervisor = %name, site, "standby request: the answer is not JSON");
                Vec::new()
            }
            Err(e) => {
                metrics::counter!("fabric_relay_standby_requests_total", "result" => "failed")
                    .increment(1);
                tracing::warn!(supervisor = %name, site, error = %e, "standby request failed");
                Vec::new()
            }
        };
        asked.insert(site.to_string(), (Instant::now(), serving.clone()));
        serving
    }
}

/// The nodes of a supervisor's answer (`{"nodes": [{"node", "state"}]}`) in `state`.
fn nodes_in_state(answer: &Value, state: &str) -> Vec<String> {
    answer["nodes"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter(|n| n["state"] == state)
                .filter_map(|n| n["node"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_serving_nodes_of_an_answer() {
        let v = json!({"nodes": [
            {"node": "inet-mx-w1", "state": "serving"},
            {"node": "inet-mx-w2", "state": "alive"},
            {"node": "intranet-w1", "state": "failed", "error": "x"},
        ]});
        assert_eq!(nodes_in_state(&v, "serving"), vec!["inet-mx-w1"]);
        assert!(nodes_in_state(&json!({}), "serving").is_empty());
    }
}
