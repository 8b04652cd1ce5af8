//! `fabric failover --mailbox USER@DOMAIN` and `fabric failback --mailbox USER@DOMAIN`: one mailbox
//! moves to the first store of the other site and back; every other mailbox, of the same domain
//! too, stays where it is. Operator token only.
//!
//! The order loses nothing: (1) the new home imports the mailbox from the old one (read from it, or
//! from a mirror's copy when it is down), the old home's flags winning; (2) the home record in the
//! directory switches, its epoch raised by one (compare-and-set on the epoch read); (3) the command
//! waits until every role's resolver has seen the switch (`homes::settle`); (4) the new home imports
//! again, keeping its own flags: whatever reached the old home before the switch was seen is merged.
//! The user is told at failover (start) and at failback (end), through a supervisor's continuity
//! notices (`POST /v1/notices`), like a site outage.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use bytes::Bytes;
use serde_json::{Value, json};
use store_client::homes::{self, Home, Homes};
use store_client::{Method, StoreClient};
use topology::{Node, Role, Topology};

/// How long an import may take (it reads and writes the whole mailbox).
const IMPORT_TIMEOUT: Duration = Duration::from_secs(300);

/// The operator's token must be given and match the topology's.
fn authorize(topology: &Topology, token: Option<&str>) -> anyhow::Result<String> {
    let Some(expected) = topology.fabric.operator_token.as_deref() else {
        bail!("refused: the fabric has no operator_token, so manual failover is disabled");
    };
    let Some(given) = token.map(str::trim).filter(|t| !t.is_empty()) else {
        bail!(
            "refused: moving a mailbox needs the operator token (--token or FABRIC_OPERATOR_TOKEN)"
        );
    };
    let same = given.len() == expected.len()
        && given
            .bytes()
            .zip(expected.bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0;
    if !same {
        bail!("refused: wrong operator token");
    }
    Ok(given.to_string())
}

fn store_client(node: &Node, timeout: Duration) -> anyhow::Result<StoreClient> {
    Ok(StoreClient::for_node(node)
        .with_context(|| format!("{} has no store port", node.name))?
        .with_timeout(timeout))
}

/// A mailbox and where it is now.
struct Mailbox<'t> {
    address: String,
    /// The domain's home site and its first store (the mailbox's default home).
    home_site: String,
    default: &'t Node,
    /// The record in the directory store (epoch 0: never moved).
    current: Home,
}

async fn locate<'t>(topology: &'t Topology, address: &str) -> anyhow::Result<Mailbox<'t>> {
    let address = address.trim().to_ascii_lowercase();
    let domain = address
        .rsplit_once('@')
        .map(|(_, d)| d)
        .with_context(|| format!("{address:?} is not a mail address"))?;
    let home_site = topology
        .home_site(domain)
        .with_context(|| format!("{domain} is not a customer domain of the topology"))?
        .to_string();
    let default = topology
        .mailbox_store(&address)
        .with_context(|| format!("{home_site} has no store"))?;
    let directory = topology
        .directory_store()
        .context("the topology has no store")?;
    // The record is read from the directory store itself: the switch is a compare-and-set there.
    let records = store_client(directory, Duration::from_secs(10))?
        .homes(None)
        .await
        .with_context(|| format!("reading the mailbox homes on {}", directory.name))?;
    let current = records
        .into_iter()
        .find(|h| h.address == address)
        .unwrap_or_else(|| Home {
            address: address.clone(),
            store: default.name.clone(),
            epoch: 0,
            updated_at_ms: 0,
        });
    Ok(Mailbox {
        address,
        home_site,
        default,
        current,
    })
}

pub async fn failover(
    topology: &Topology,
    token: Option<&str>,
    address: &str,
) -> anyhow::Result<()> {
    let token = authorize(topology, token)?;
    let m = locate(topology, address).await?;
    if m.current.store != m.default.name {
        bail!(
            "{} is already served by {} (epoch {}); fail it back with `fabric failback --mailbox {}`",
            m.address,
            m.current.store,
            m.current.epoch,
            m.address
        );
    }
    let to = topology
        .sites
        .iter()
        .filter(|s| s.name != m.home_site)
        .find_map(|s| topology.site_stores(&s.name).into_iter().next())
        .with_context(|| format!("no store outside {} to move {} to", m.home_site, m.address))?;
    let epoch = move_mailbox(topology, &m, to).await?;
    notify(topology, &token, &to.site, "start", &m.address).await;
    println!(
        "{} is served by {} now (epoch {epoch}); every other mailbox stays where it was; \
         fail it back with `fabric failback --mailbox {}`",
        m.address, to.name, m.address
    );
    Ok(())
}

pub async fn failback(
    topology: &Topology,
    token: Option<&str>,
    address: &str,
) -> anyhow::Result<()> {
    let token = authorize(topology, token)?;
    let m = locate(topology, address).await?;
    if m.current.store == m.default.name {
        bail!(
            "{} is at home on {} already (epoch {}): nothing to fail back",
            m.address,
            m.default.name,
            m.current.epoch
        );
    }
    let serving_site = topology
        .node(&m.current.store)
        .map(|n| n.site.clone())
        .unwrap_or_default();
    let epoch = move_mailbox(topology, &m, m.default).await?;
    notify(topology, &token, &serving_site, "end", &m.address).await;
    println!(
        "{} is back home on {} (epoch {epoch})",
        m.address, m.default.name
    );
    Ok(())
}

/// Copy, switch, settle, merge the delta. Returns the new epoch.
async fn move_mailbox(topology: &Topology, m: &Mailbox<'_>, to: &Node) -> anyhow::Result<i64> {
    let from = m.current.store.as_str();
    let target = store_client(to, IMPORT_TIMEOUT)?;
    println!(
        "moving {} from {from} to {} (epoch {} -> {})",
        m.address,
        to.name,
        m.current.epoch,
        m.current.epoch + 1
    );
    let copied = target
        .import_mailbox(&m.address, from, true)
        .await
        .with_context(|| format!("copying {} from {from} into {}", m.address, to.name))?;
    report("copied", &copied);
    let directory = topology
        .directory_store()
        .context("the topology has no store")?;
    let switched = store_client(directory, Duration::from_secs(30))?
        .set_home(&m.address, &to.name, Some(m.current.epoch))
        .await
        .with_context(|| format!("switching the home of {} on {}", m.address, directory.name))?;
    let epoch = switched.value.epoch;
    println!(
        "home of {} switched to {} (epoch {epoch}); waiting {:.1}s for every server to see it",
        m.address,
        to.name,
        homes::settle().as_secs_f64()
    );
    tokio::time::sleep(homes::settle()).await;
    // Confirm what the servers read (the directory or its mirrors' copies).
    let seen = Homes::load(Arc::new(topology.clone()))
        .await
        .map(|h| h.epoch(&m.address))
        .unwrap_or(0);
    if seen < epoch {
        eprintln!("warning: the directory copies still show epoch {seen}; merging anyway");
    }
    let delta = target
        .import_mailbox(&m.address, from, false)
        .await
        .with_context(|| format!("merging what reached {from} meanwhile into {}", to.name))?;
    report("merged the delta", &delta);
    Ok(epoch)
}

fn report(what: &str, v: &Value) {
    println!(
        "  {what} from {}: {} copied, {} flags merged, {} tombstoned, {} UIDVALIDITY changes",
        v["read_from"].as_str().unwrap_or("?"),
        v["copied"],
        v["merged"],
        v["tombstoned"],
        v["uidvalidity_changes"]
    );
    for f in v["folders"].as_array().into_iter().flatten() {
        println!(
            "    {}: UIDs {} (UIDVALIDITY {}{})",
            f["folder"].as_str().unwrap_or("?"),
            f["uids"].as_str().unwrap_or("?"),
            f["uidvalidity"],
            if f["uidvalidity_changed"] == json!(true) {
                ", changed: clients resynchronise"
            } else {
                ""
            }
        );
    }
}

/// Asks the supervisor of `site` to tell the user (a notice is never worth failing the move).
async fn notify(topology: &Topology, token: &str, site: &str, event: &str, address: &str) {
    let supervisor = topology
        .nodes_with_role(Role::Supervisor)
        .find(|s| s.site == site)
        .or_else(|| topology.nodes_with_role(Role::Supervisor).next());
    let Some(supervisor) = supervisor else {
        eprintln!("warning: no supervisor in the topology: {address} is not notified");
        return;
    };
    let client = match super::failover::client(supervisor) {
        Ok(c) => c.with_timeout(Duration::from_secs(10)),
        Err(e) => {
            eprintln!("warning: {e:#}: {address} is not notified");
            return;
        }
    };
    let body = json!({"event": event, "user": address}).to_string();
    let headers = [
        ("authorization", format!("Bearer {token}")),
        ("content-type", "application/json".to_string()),
    ];
    match client
        .raw(Method::POST, "/v1/notices", &headers, Bytes::from(body))
        .await
    {
        Ok(resp) if resp.status.is_success() => {
            println!("{address} is told ({event} notice, by {})", supervisor.name);
        }
        Ok(resp) => eprintln!(
            "warning: {}",
            super::failover::refusal(&supervisor.name, resp.status.as_u16(), &resp.body)
        ),
        Err(e) => eprintln!(
            "warning: {} unreachable ({e}): {address} is not notified",
            supervisor.name
        ),
    }
}
