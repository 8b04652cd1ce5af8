//! `fabric compose TOPOLOGY`: the docker deployment of a topology (`fabric::compose`): the compose
//! file, the docker topology the containers read beside it, the TLS directory they mount, and a
//! `var/fabric.json` so `fabric --data-dir DIR/var` (user, trace, queue, send) reaches the containers.

use std::path::{Path, PathBuf};

use anyhow::Context;
use fabric::compose::{self, RenderOptions};
use fabric::{FabricState, Launcher, find_bin_dir};
use topology::Topology;

/// What `fabric compose` was asked.
pub struct Request<'a> {
    pub topology: &'a Path,
    pub output: &'a Path,
    pub image: &'a str,
    /// Print the flows of this zone (refused and allowed) instead of writing files.
    pub flows: Option<&'a str>,
}

pub fn run(r: &Request) -> anyhow::Result<()> {
    let source = Topology::load(r.topology)?;
    let deployment = compose::plan(&source)
        .with_context(|| format!("planning the docker deployment of {}", r.topology.display()))?;
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
