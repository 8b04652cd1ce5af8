//! `fabric status`: the domains and every node, as a table or as JSON for scripts.

use std::path::Path;
use std::time::Duration;

use fabric::process::node_state;
use fabric::state::now_unix;
use fabric::{FabricState, Launcher, ProcState};
use serde::Serialize;
use store_client::{Method, StoreClient};

use super::short_duration;

#[derive(Debug, Serialize)]
struct NodeView {
    name: String,
    role: String,
    site: String,
    zones: Vec<String>,
    address: String,
    /// service name -> ADDR:PORT
    services: std::collections::BTreeMap<String, String>,
    admin: String,
    /// `ready`, `starting` (alive, not ready yet), `stopped` (SIGSTOP), `down`, `standby` (the node is
    /// down and a supervisor's standby serves at its address).
    state: &'static str,
    pid: Option<u32>,
    /// The supervisor whose standby serves in the node's place.
    #[serde(skip_serializing_if = "Option::is_none")]
    standby_by: Option<String>,
    uptime_seconds: Option<u64>,
}

#[derive(Debug, Serialize)]
struct DomainView {
    name: String,
    home: String,
}

#[derive(Debug, Serialize)]
struct FabricView {
    fabric: String,
    topology: String,
    data_dir: String,
    domains: Vec<DomainView>,
    nodes: Vec<NodeView>,
}

async fn is_ready(admin: String) -> bool {
    let client = StoreClient::new(format!("http://{admin}")).with_timeout(Duration::from_secs(1));
    client
        .raw(Method::GET, "/ready", &[], bytes::Bytes::new())
        .await
        .is_ok_and(|r| r.status.is_success())
}

/// A standby's supervisor and pid, if a standby answers at `admin`.
async fn standby_at(admin: String) -> Option<(String, u32)> {
    let client = StoreClient::new(format!("http://{admin}")).with_timeout(Duration::from_secs(1));
    let resp = client
        .raw(Method::GET, "/status", &[], bytes::Bytes::new())
        .await
        .ok()?;
    let status: serde_json::Value = serde_json::from_slice(&resp.body).ok()?;
    let by = status["standby_by"].as_str()?.to_string();
    let pid = u32::try_from(status["pid"].as_u64()?).ok()?;
    Some((by, pid))
}

async fn view(launcher: &Launcher, state: &FabricState) -> FabricView {
    let mut probes = tokio::task::JoinSet::new();
    let mut standbys = tokio::task::JoinSet::new();
    let mut nodes = Vec::new();
    for (i, node) in launcher.topology.nodes.iter().enumerate() {
        let record = state.nodes.get(&node.name);
        let proc = record.map_or(ProcState::Gone, |r| node_state(r.pid, &node.name));
        let admin = node.admin_addr().to_string();
        if proc == ProcState::Running {
            probes.spawn(async move { (i, is_ready(admin).await) });
        } else if !proc.is_alive()
            && matches!(
                node.role(),
                topology::Role::InetMx | topology::Role::Intranet
            )
        {
            standbys.spawn(async move { (i, standby_at(admin).await) });
        }
        let alive = proc.is_alive();
        nodes.push(NodeView {
            name: node.name.clone(),
            role: node.role.clone(),
            site: node.site.clone(),
            zones: node.zones.clone(),
            address: node.address.to_string(),
            services: node
                .ports
                .iter()
                .map(|(service, port)| (service.clone(), format!("{}:{port}", node.address)))
                .collect(),
            admin: node.admin_addr().to_string(),
            state: match proc {
                ProcState::Stopped => "stopped",
                ProcState::Running => "starting",
                ProcState::Zombie | ProcState::Gone => "down",
            },
            pid: record.filter(|_| alive).map(|r| r.pid),
            standby_by: None,
            uptime_seconds: record
                .filter(|_| alive)
                .map(|r| now_unix().saturating_sub(r.started_at)),
        });
    }
    while let Some(Ok((i, ready))) = probes.join_next().await {
        if ready && let Some(n) = nodes.get_mut(i) {
            n.state = "ready";
        }
    }
    while let Some(Ok((i, standby))) = standbys.join_next().await {
        if let Some((by, pid)) = standby
            && let Some(n) = nodes.get_mut(i)
        {
            n.state = "standby";
            n.pid = Some(pid);
            n.standby_by = Some(by);
        }
    }
    FabricView {
        fabric: launcher.topology.fabric.name.clone(),
        topology: launcher.topology_file.display().to_string(),
        data_dir: launcher.data_dir.display().to_string(),
        domains: launcher
            .topology
            .domains
            .iter()
            .map(|d| DomainView {
                name: d.name.clone(),
                home: d.home.clone(),
            })
            .collect(),
        nodes,
    }
}

/// Prints rows with every column padded to its widest cell.
fn print_columns(rows: &[Vec<String>]) {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|s| s.len())
                .max()
                .unwrap_or(0)
        })
        .collect();
    for row in rows {
        let cells: Vec<String> = row
            .iter()
            .enumerate()
            .map(|(c, cell)| format!("{cell:<w$}", w = widths[c]))
            .collect();
        println!("{}", cells.join("  ").trim_end());
    }
}

pub async fn print_table(launcher: &Launcher, state: &FabricState) {
    let v = view(launcher, state).await;
    println!(
        "fabric {}  (topology {}, data {})",
        v.fabric, v.topology, v.data_dir
    );
    println!();
    let mut rows = vec![vec!["DOMAIN".to_string(), "HOME SITE".to_string()]];
    rows.extend(
        v.domains
            .iter()
            .map(|d| vec![d.name.clone(), d.home.clone()]),
    );
    print_columns(&rows);
    println!();
    let mut rows = vec![
        [
            "NODE", "ROLE", "SITE", "SERVICES", "ADMIN", "STATE", "PID", "UPTIME",
        ]
        .map(String::from)
        .to_vec(),
    ];
    for n in &v.nodes {
        let services: Vec<String> = n.services.iter().map(|(s, a)| format!("{s}={a}")).collect();
        rows.push(vec![
            n.name.clone(),
            n.role.clone(),
            n.site.clone(),
            services.join(","),
            n.admin.clone(),
            match &n.standby_by {
                Some(by) => format!("standby ({by})"),
                None => n.state.to_string(),
            },
            n.pid.map_or("-".into(), |p| p.to_string()),
            n.uptime_seconds.map_or("-".into(), short_duration),
        ]);
    }
    print_columns(&rows);
}

pub async fn status(data_dir: &Path, json: bool) -> anyhow::Result<()> {
    let (launcher, state) = super::running(data_dir)?;
    if json {
        let v = view(&launcher, &state).await;
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        print_table(&launcher, &state).await;
    }
    Ok(())
}
