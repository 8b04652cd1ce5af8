//! `fabric compose TOPOLOGY`: the docker deployment of a topology (`fabric::compose`): the compose
//! file, the docker topology the containers read beside it, the TLS directory they mount, and a
//! `var/fabric.json` so `fabric --data-dir DIR/var` (user, trace, queue, send) reaches the containers.

use std::path::{Path, PathBuf};

use anyhow::Context;
use fabric::compose::{self, RenderOptions};
use fabric::{FabricState, Launcher, find_bin_dir};
use ipnet::Ipv4Net;
use topology::Topology;

/// What `fabric compose` was asked.
pub struct Request<'a> {
    pub topology: &'a Path,
    pub output: &'a Path,
    pub image: &'a str,
    /// Print the flows of this zone (refused and allowed) instead of writing files.
    pub flows: Option<&'a str>,
    /// The compose project the file is for: its own networks are not in the way of its zones.
    pub project: &'a str,
    /// Keep every zone at its mapped place even where that overlaps a network in use.
    pub keep_subnets: bool,
}

pub async fn run(r: &Request<'_>) -> anyhow::Result<()> {
    let source = Topology::load(r.topology)?;
    let in_use = if r.keep_subnets {
        Vec::new()
    } else {
        subnets_in_use(r.project).await
    };
    let taken: Vec<Ipv4Net> = in_use.iter().map(|(_, n)| *n).collect();
    let deployment = compose::plan_avoiding(&source, &taken)
        .with_context(|| format!("planning the docker deployment of {}", r.topology.display()))?;
    let mapped = compose::plan(&source)?;
    for (moved, planned) in deployment.networks.iter().zip(&mapped.networks) {
        if moved.subnet != planned.subnet {
            let by = in_use
                .iter()
                .filter(|(_, n)| {
                    n.contains(&planned.subnet.network()) || planned.subnet.contains(&n.network())
                })
                .map(|(what, n)| format!("{what} {n}"))
                .collect::<Vec<_>>()
                .join(", ");
            eprintln!(
                "zone {}: {} overlaps {by}; its network is {} instead",
                moved.name, planned.subnet, moved.subnet
            );
        }
    }
    if let Some(zone) = r.flows {
        if deployment.network(zone).is_none() {
            anyhow::bail!("no zone {zone:?} in {}", r.topology.display());
        }
        for (what, addr) in compose::refused_flows(&deployment, zone) {
            println!("refused\t{what}\t{addr}");
        }
        for (what, addr) in compose::allowed_flows(&deployment, zone) {
            println!("allowed\t{what}\t{addr}");
        }
        return Ok(());
    }
    let dir = match r.output.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let topology_file = dir.join("topology.toml");
    let text = format!(
        "# Written by `fabric compose {}`: the topology as the containers see it (docker addresses).\n{}",
        r.topology.display(),
        deployment.topology.to_toml()?
    );
    let data_dir = dir.join("var");
    // Certificates name the nodes' addresses: new addresses, new certificates (the CA stays).
    if std::fs::read_to_string(&topology_file).ok().as_deref() != Some(text.as_str()) {
        for node in &deployment.topology.nodes {
            for ext in ["pem", "key"] {
                let f = data_dir.join("tls").join(format!("{}.{ext}", node.name));
                match std::fs::remove_file(&f) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(e).with_context(|| format!("removing {}", f.display())),
                }
            }
        }
        std::fs::write(&topology_file, &text)
            .with_context(|| format!("writing {}", topology_file.display()))?;
    }
    let launcher = Launcher::new(&topology_file, &data_dir, &find_bin_dir())
        .context("preparing the TLS directory")?;
    let absolute = launcher.topology_file.clone();
    FabricState::update(&launcher.data_dir, |s| {
        s.topology = absolute;
        s.supervisor = None;
        s.nodes.clear();
    })?;
    let options = RenderOptions {
        image: r.image.to_string(),
        topology: "./topology.toml".to_string(),
        tls_dir: "./var/tls".to_string(),
        source: r.topology.display().to_string(),
        stop_grace_secs: source.timing.shutdown_deadline.as_secs() + 5,
    };
    std::fs::write(r.output, compose::render(&deployment, &options))
        .with_context(|| format!("writing {}", r.output.display()))?;
    println!(
        "wrote {} ({} services, {} networks), {} and {}",
        r.output.display(),
        deployment.services.len(),
        deployment.networks.len(),
        topology_file.display(),
        launcher.tls_dir().display()
    );
    Ok(())
}

/// What a new network must not overlap: the host's routes (but its default route) and the Docker
/// Engine's networks outside `project`, each with what it is. The routes of docker's own bridges are
/// left to the engine's answer (the project's own networks are not in the way). An engine that does
/// not answer leaves only the routes (the file may be meant for another host).
async fn subnets_in_use(project: &str) -> Vec<(String, Ipv4Net)> {
    let routes = std::fs::read_to_string("/proc/net/route")
        .map(|t| host_routes(&t))
        .unwrap_or_default();
    let engine = async {
        let engine = docker_engine::Engine::connect(project).await?;
        engine.subnets().await
    };
    let networks = match tokio::time::timeout(std::time::Duration::from_secs(10), engine).await {
        Ok(Ok(networks)) => networks,
        Ok(Err(e)) => {
            eprintln!("not checking docker's networks: {e}");
            Vec::new()
        }
        Err(_) => {
            eprintln!("not checking docker's networks: the engine did not answer in 10 s");
            Vec::new()
        }
    };
    let docker: Vec<(String, bool, Ipv4Net)> = networks
        .iter()
        .flat_map(|n| {
            n.subnets
                .iter()
                .filter_map(|s| s.parse::<Ipv4Net>().ok())
                .map(|net| (format!("docker network {}", n.name), n.own, net))
        })
        .collect();
    let mut in_use: Vec<(String, Ipv4Net)> = routes
        .into_iter()
        .filter(|(_, r)| !docker.iter().any(|(_, _, d)| d == r))
        .collect();
    in_use.extend(
        docker
            .into_iter()
            .filter(|(_, own, _)| !own)
            .map(|(what, _, net)| (what, net)),
    );
    in_use
}

/// The routes of `/proc/net/route` (destination and mask in hex, the host's byte order), but the
/// default route.
fn host_routes(text: &str) -> Vec<(String, Ipv4Net)> {
    // The kernel prints each address as the native-order u32 of its network-order bytes.
    let hex = |s: &str| u32::from_str_radix(s, 16).ok().map(u32::to_ne_bytes);
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let (dest, mask) = (hex(f.get(1)?)?, hex(f.get(7)?)?);
            let len = u8::try_from(u32::from_be_bytes(mask).count_ones()).ok()?;
            (len > 0).then_some(())?;
            let net = Ipv4Net::new(std::net::Ipv4Addr::from(dest), len)
                .ok()?
                .trunc();
            Some((format!("host route on {}", f.first()?), net))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_routes_read_proc_net_route_but_the_default_route() {
        let text = "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n\
            eth0\t00000000\t010200C0\t0003\t0\t0\t0\t00000000\t0\t0\t0\n\
            docker0\t000011AC\t00000000\t0001\t0\t0\t0\t0000FFFF\t0\t0\t0\n\
            eth0\t000200C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n";
        let routes: Vec<String> = host_routes(text)
            .iter()
            .map(|(_, n)| n.to_string())
            .collect();
        if cfg!(target_endian = "little") {
            assert_eq!(routes, ["172.17.0.0/16", "192.0.2.0/24"]);
        }
        assert_eq!(routes.len(), 2);
    }
}
