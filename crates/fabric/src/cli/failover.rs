//! `fabric failover` and `fabric failback`: manual failover with the operator's token.
//!
//! Failover asks the supervisor of another site than the failed-over one's to stand in
//! (`POST /v1/standby` with `"force": true`): the supervisor fences (SIGKILLs) the original even
//! if it is healthy, then starts a standby at its address. Failback retires the standbys
//! (`DELETE /v1/standby/NODE` on the supervisor that serves each) and then starts the originals
//! (`--restart`, through the launcher of a `fabric up` fabric) or tells the operator to.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use bytes::Bytes;
use serde_json::{Value, json};
use store_client::{Method, StoreClient};
use topology::{Node, Role, Topology};

/// What to fail over or back: one node, every node of a site that has standbys, or one mailbox.
#[derive(Debug, clap::Args)]
pub struct Target {
    /// The node (a store, transfer, inet-mx, intranet, redirector or router).
    #[arg(required_unless_present_any = ["site", "mailbox"], conflicts_with_all = ["site", "mailbox"])]
    pub node: Option<String>,
    /// Every such node of this site instead.
    #[arg(long, conflicts_with = "mailbox")]
    pub site: Option<String>,
    /// One mailbox (USER@DOMAIN) instead: it moves to the first store of the other site (failover)
    /// or back to its home store (failback), merged; nothing else moves.
    #[arg(long, value_name = "USER@DOMAIN")]
    pub mailbox: Option<String>,
    /// The operator token (`fabric.operator_token` of the topology).
    #[arg(long, env = "FABRIC_OPERATOR_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// The topology file (default: the one of the fabric in --data-dir).
    #[arg(long, env = "FABRIC_TOPOLOGY")]
    pub topology: Option<PathBuf>,
}

/// How long a supervisor may take to answer (fencing, then up to 30 s for a standby's `/ready`).
const ANSWER_TIMEOUT: Duration = Duration::from_secs(120);

fn load(target: &Target, data_dir: &Path) -> anyhow::Result<Topology> {
    let file = match &target.topology {
        Some(file) => file.clone(),
        None => {
            fabric::FabricState::read(data_dir)
                .context("no --topology given")?
                .topology
        }
    };
    Topology::load(&file).with_context(|| format!("loading {}", file.display()))
}

/// The site to fail over or back, and the nodes concerned in the order they come back (stores first,
/// see `Topology::standby_phases`).
fn scope<'t>(
    topology: &'t Topology,
    target: &Target,
) -> anyhow::Result<(String, Vec<Vec<&'t Node>>)> {
    match (&target.node, &target.site) {
        (Some(name), _) => {
            let node = topology
                .node(name)
                .with_context(|| format!("no node named {name:?} in the topology"))?;
            if !node.role().has_standby() {
                bail!(
                    "{name} is a {} node; standbys exist for stores, transfer, inet-mx, intranet, redirectors and routers",
                    node.role
                );
            }
            Ok((node.site.clone(), vec![vec![node]]))
        }
        (None, Some(site)) => {
            if !topology.sites.iter().any(|s| &s.name == site) {
                bail!("no site named {site:?} in the topology");
            }
            Ok((site.clone(), topology.standby_phases(site)))
        }
        (None, None) => bail!("give a NODE, --site SITE or --mailbox USER@DOMAIN"),
    }
}

pub(super) fn client(node: &Node) -> anyhow::Result<StoreClient> {
    let addr = node
        .service_addr("supervisor")
        .with_context(|| format!("{} has no supervisor port", node.name))?;
    Ok(StoreClient::new(format!("http://{addr}")).with_timeout(ANSWER_TIMEOUT))
}

fn auth(target: &Target) -> Vec<(&'static str, String)> {
    target
        .token
        .iter()
        .map(|t| ("authorization", format!("Bearer {}", t.trim())))
        .collect()
}

/// The supervisor's refusal, as the operator should read it.
pub(super) fn refusal(supervisor: &str, status: u16, body: &[u8]) -> String {
    let v: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let message = v["message"]
        .as_str()
        .map(str::to_string)
        .unwrap_or_else(|| String::from_utf8_lossy(body).into_owned());
    format!("{supervisor} refused ({status}): {message}")
}

pub async fn failover(data_dir: &Path, target: &Target) -> anyhow::Result<()> {
    let topology = load(target, data_dir)?;
    if let Some(address) = &target.mailbox {
        return super::mailbox_move::failover(&topology, target.token.as_deref(), address).await;
    }
    let (site, _) = scope(&topology, target)?;
    let supervisor = topology
        .nodes_with_role(Role::Supervisor)
        .find(|s| s.site != site)
        .with_context(|| format!("no supervisor outside {site} to stand in for it"))?;
    let mut ask = json!({
        "force": true,
        "reason": "manual failover by the operator",
        "requested_by": "operator",
    });
    match &target.node {
        Some(node) => ask["node"] = json!(node),
        None => ask["site"] = json!(site),
    }
    println!(
        "asking {} ({}) to stand in; it fences the originals first",
        supervisor.name, supervisor.site
    );
    let resp = client(supervisor)?
        .raw(
            Method::POST,
            "/v1/standby",
            &[
                auth(target),
                vec![("content-type", "application/json".to_string())],
            ]
            .concat(),
            Bytes::from(ask.to_string()),
        )
        .await
        .with_context(|| format!("asking {}", supervisor.name))?;
    if !resp.status.is_success() {
        bail!(refusal(&supervisor.name, resp.status.as_u16(), &resp.body));
    }
    let answer: Value = serde_json::from_slice(&resp.body)
        .with_context(|| format!("{}'s answer is not JSON", supervisor.name))?;
    let mut failed = Vec::new();
    for n in answer["nodes"].as_array().into_iter().flatten() {
        let name = n["node"].as_str().unwrap_or("?");
        let state = n["state"].as_str().unwrap_or("?");
        let mut line = format!("{name}: {state}");
        if let Some(pid) = n["pid"].as_u64() {
            line.push_str(&format!(", standby pid {pid}"));
        }
        if let Some(ms) = n["ready_ms"].as_u64() {
            line.push_str(&format!(", ready in {:.1}s", ms as f64 / 1000.0));
        }
        if let Some(fenced) = n["fenced"].as_array().filter(|f| !f.is_empty()) {
            let pids: Vec<String> = fenced.iter().map(Value::to_string).collect();
            line.push_str(&format!(", fenced pid {}", pids.join(" ")));
        }
        if let Some(error) = n["error"].as_str() {
            line.push_str(&format!(": {error}"));
        }
        if let Some(addr) = topology.node(name).map(|n| n.address) {
            line.push_str(&format!(" (at {addr}, by {})", supervisor.name));
        }
        println!("{line}");
        if state != "serving" {
            failed.push(name.to_string());
        }
    }
    if !failed.is_empty() {
        bail!("no standby serves {}", failed.join(", "));
    }
    println!(
        "users of {site} who asked for notifications are told (SMS or notice mail); \
         fail back with `fabric failback`"
    );
    Ok(())
}

pub async fn failback(
    data_dir: &Path,
    target: &Target,
    restart: bool,
    ready_timeout: u64,
) -> anyhow::Result<()> {
    let topology = load(target, data_dir)?;
    if let Some(address) = &target.mailbox {
        return super::mailbox_move::failback(&topology, target.token.as_deref(), address).await;
    }
    let (site, phases) = scope(&topology, target)?;
    if restart {
        // Checked first: nothing is retired unless the originals can be started here.
        fabric::FabricState::read(data_dir)
            .context("--restart starts the originals through a fabric started with `fabric up`")?;
    }
    // Who serves what, asked once.
    let mut serving: Vec<(&Node, String)> = Vec::new();
    for supervisor in topology.nodes_with_role(Role::Supervisor) {
        let Ok(resp) = client(supervisor)?
            .raw(Method::GET, "/v1/standby", &[], Bytes::new())
            .await
        else {
            continue;
        };
        let list: Value = serde_json::from_slice(&resp.body).unwrap_or(Value::Null);
        for node in list["standbys"].as_array().into_iter().flatten() {
            if let Some(name) = node["node"].as_str() {
                serving.push((supervisor, name.to_string()));
            }
        }
    }
    // Phase by phase (stores first): a phase's standbys retire and, with --restart, its originals
    // start (a store rejoins: it takes the standby's history) before the next phase's retire.
    let mut retired = Vec::new();
    for phase in phases {
        let mut this_phase = Vec::new();
        let mut errors = Vec::new();
        for node in phase {
            for (supervisor, _) in serving.iter().filter(|(_, n)| n == &node.name) {
                let resp = client(supervisor)?
                    .raw(
                        Method::DELETE,
                        &format!("/v1/standby/{}", node.name),
                        &auth(target),
                        Bytes::new(),
                    )
                    .await
                    .with_context(|| {
                        format!("asking {} to retire {}", supervisor.name, node.name)
                    })?;
                if resp.status.is_success() {
                    println!("{}: {} retired its standby", node.name, supervisor.name);
                    this_phase.push(node.name.clone());
                } else {
                    errors.push(refusal(&supervisor.name, resp.status.as_u16(), &resp.body));
                }
            }
        }
        if !errors.is_empty() {
            bail!(errors.join("\n"));
        }
        for node in &this_phase {
            if restart {
                super::control::start(data_dir, node, ready_timeout).await?;
            } else {
                println!("{node} has no server now: start the original with `fabric start {node}`");
            }
        }
        retired.extend(this_phase);
    }
    if retired.is_empty() {
        bail!(
            "no supervisor runs a standby for {}",
            target.node.as_deref().unwrap_or(&site)
        );
    }
    println!("users of {site} who asked for notifications are told the service is back home");
    Ok(())
}
