//! Every node's `/metrics` is accepted by the real Prometheus tool (`promtool check metrics`), and the
//! admin endpoints answer as documented.

mod common;

use std::io::Write;
use std::process::{Command, Stdio};

use bytes::Bytes;
use store_client::{Method, StoreClient};
use testkit::Sandbox;

#[tokio::test]
async fn metrics_pass_promtool_and_admin_endpoints_answer() -> anyhow::Result<()> {
    let sandbox = Sandbox::start("topology/mini.toml").await?;
    let a = common::store(&sandbox, "store-a");
    a.enqueue("inbound", None, None, "x").await?;
    let _ = a.raw(Method::GET, "/v1/nope", &[], Bytes::new()).await?;
    for node in ["store-a", "store-b"] {
        let text = common::metrics(&sandbox, node).await?;
        assert!(text.contains("fabric_node_info"), "{text}");
        let mut child = Command::new("promtool")
            .args(["check", "metrics"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| {
                anyhow::anyhow!("promtool (Debian package prometheus) must be installed: {e}")
            })?;
        child
            .stdin
            .take()
            .ok_or_else(|| anyhow::anyhow!("stdin"))?
            .write_all(text.as_bytes())?;
        let out = child.wait_with_output()?;
        assert!(
            out.status.success(),
            "promtool rejected {node}'s metrics:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let admin = StoreClient::new(sandbox.admin_url(node));
        let status = admin
            .raw(Method::GET, "/status", &[], Bytes::new())
            .await?
            .json()
            .unwrap_or_default();
        assert_eq!(status["node"], node);
        assert_eq!(status["role"], "store");
        assert_eq!(status["site"], "west");
        assert!(status["uptime_secs"].as_f64().is_some());
        assert!(status["counters"]["lsn"].as_u64().is_some(), "{status}");
        assert_eq!(
            admin
                .raw(Method::GET, "/ready", &[], Bytes::new())
                .await?
                .status
                .as_u16(),
            200
        );
        assert_eq!(
            admin
                .raw(Method::GET, "/health", &[], Bytes::new())
                .await?
                .status
                .as_u16(),
            200
        );
    }
    // Log lines are JSON carrying node, site and role.
    let log = std::fs::read_to_string(sandbox.log_path("store-a"))?;
    let line = log
        .lines()
        .find(|l| l.contains("store ready"))
        .ok_or_else(|| anyhow::anyhow!("no ready line in {log}"))?;
    let v: serde_json::Value = serde_json::from_str(line)?;
    assert_eq!(
        (v["node"].as_str(), v["site"].as_str(), v["role"].as_str()),
        (Some("store-a"), Some("west"), Some("store"))
    );
    Ok(())
}
