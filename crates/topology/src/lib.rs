//! The fabric's topology model: one TOML file names the fabric, its sites and zones, every node with its
//! own address and ports, the customer domains, the mirroring table and the timing knobs.
//!
//! # Layout
//! - `model`: the types the file deserializes into, with the design's defaults.
//! - `edge`: access lists, edge settings, and which nodes a router or redirector forwards to.
//! - `validate`: every rule a topology must obey, reported with the file, the node and the field.
//!
//! This crate knows nothing about processes, sockets or storage: it only describes a fabric.

mod continuity;
mod edge;
mod model;
mod validate;

use std::path::{Path, PathBuf};

pub use continuity::STANDBY_PHASES;
pub use edge::{Acl, Edge, served_by};
pub use model::{
    Domain, FabricInfo, Limits, Mirror, Node, Role, Site, Timing, Topology, Zone, ZoneKind,
};

/// Why a topology could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum TopologyError {
    #[error("{file}: cannot read: {source}")]
    Read {
        file: PathBuf,
        source: std::io::Error,
    },
    #[error("{file}: {source}")]
    Parse {
        file: PathBuf,
        source: Box<toml::de::Error>,
    },
    #[error("{file}: invalid topology:\n{}", problems.iter().map(|p| format!("  - {p}")).collect::<Vec<_>>().join("\n"))]
    Invalid {
        file: PathBuf,
        problems: Vec<String>,
    },
}

impl TopologyError {
    /// The individual rule violations (empty for read and parse errors).
    pub fn problems(&self) -> &[String] {
        match self {
            TopologyError::Invalid { problems, .. } => problems,
            _ => &[],
        }
    }
}

impl Topology {
    /// Reads, parses and validates a topology file.
    pub fn load(path: impl AsRef<Path>) -> Result<Topology, TopologyError> {
        let file = path.as_ref().to_path_buf();
        let text = std::fs::read_to_string(&file).map_err(|source| TopologyError::Read {
            file: file.clone(),
            source,
        })?;
        Topology::parse(&text, &file)
    }

    /// Parses and validates topology text; `file` is only used in error messages.
    pub fn parse(text: &str, file: &Path) -> Result<Topology, TopologyError> {
        let topology: Topology = toml::from_str(text).map_err(|source| TopologyError::Parse {
            file: file.to_path_buf(),
            source: Box::new(source),
        })?;
        let problems = validate::problems(&topology);
        if problems.is_empty() {
            Ok(topology)
        } else {
            Err(TopologyError::Invalid {
                file: file.to_path_buf(),
                problems,
            })
        }
    }

    /// Serializes the topology back to TOML (used to write a relocated copy for tests).
    pub fn to_toml(&self) -> Result<String, toml::ser::Error> {
        toml::to_string_pretty(self)
    }

    pub fn node(&self, name: &str) -> Option<&Node> {
        self.nodes.iter().find(|n| n.name == name)
    }

    /// Every node's name, in the topology's order.
    pub fn node_names(&self) -> Vec<String> {
        self.nodes.iter().map(|n| n.name.clone()).collect()
    }

    pub fn nodes_with_role(&self, role: Role) -> impl Iterator<Item = &Node> {
        self.nodes.iter().filter(move |n| n.role() == role)
    }

    /// The mirroring entry of a store (empty when it has none).
    pub fn mirror_of(&self, store: &str) -> Mirror {
        self.mirrors.get(store).cloned().unwrap_or_default()
    }

    /// The stores whose copies `node` holds (as their other-site or same-site mirror).
    pub fn mirrored_by(&self, node: &str) -> Vec<String> {
        self.mirrors
            .iter()
            .filter(|(_, m)| {
                m.other_site.as_deref() == Some(node) || m.same_site.as_deref() == Some(node)
            })
            .map(|(origin, _)| origin.clone())
            .collect()
    }

    /// Moves every port (service and admin) up by `offset`, so several copies of one topology can run on
    /// the same addresses at once (tests do this). Fails if a port would leave the u16 range.
    pub fn offset_ports(&mut self, offset: u16) -> Result<(), String> {
        for node in &mut self.nodes {
            node.admin = node
                .admin
                .checked_add(offset)
                .ok_or_else(|| format!("node {:?}: admin port overflows", node.name))?;
            for (service, port) in node.ports.iter_mut() {
                *port = port
                    .checked_add(offset)
                    .ok_or_else(|| format!("node {:?}: port {service} overflows", node.name))?;
            }
        }
        Ok(())
    }

    /// The stores of a site, in the order the topology lists them: the first is where the site's
    /// servers write, the next ones take over when it does not answer.
    pub fn site_stores(&self, site: &str) -> Vec<&Node> {
        self.nodes
            .iter()
            .filter(|n| n.role() == Role::Store && n.site == site)
            .collect()
    }

    /// The store that holds the fabric's configuration (the directory of users and the sender
    /// blocklist): the first store of the topology. Its mirrors hold copies readers can fall back to.
    pub fn directory_store(&self) -> Option<&Node> {
        self.nodes.iter().find(|n| n.role() == Role::Store)
    }

    /// The store that is the home of a mailbox: the first store of its domain's home site.
    pub fn mailbox_store(&self, address: &str) -> Option<&Node> {
        let domain = address.rsplit_once('@')?.1;
        let site = self.home_of_domain(domain)?;
        self.site_stores(site).into_iter().next()
    }

    /// Whether `domain` is one of the fabric's customer domains.
    pub fn is_customer_domain(&self, domain: &str) -> bool {
        self.home_of_domain(domain).is_some()
    }

    /// Every network `node` is on with its address there: the zone of its `address` (the narrowest
    /// zone holding it) first, then its other legs (`networks`, written by `fabric compose`).
    pub fn node_networks(&self, node: &Node) -> Vec<(String, std::net::Ipv4Addr)> {
        let main = self
            .zones
            .iter()
            .filter(|z| z.cidr.contains(&node.address))
            .max_by_key(|z| z.cidr.prefix_len())
            .map(|z| (z.name.clone(), node.address));
        let mut all: Vec<(String, std::net::Ipv4Addr)> = main.into_iter().collect();
        for (name, address) in &node.networks {
            if !all.iter().any(|(n, _)| n == name) {
                all.push((name.clone(), *address));
            }
        }
        all
    }

    /// The site a customer domain lives in.
    pub fn home_of_domain(&self, domain: &str) -> Option<&str> {
        self.domains
            .iter()
            .find(|d| d.name.eq_ignore_ascii_case(domain))
            .map(|d| d.home.as_str())
    }
}
