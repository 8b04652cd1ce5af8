//! The docker deployment of a topology: which container networks exist, which node sits on which
//! with which static address, and the topology the containers read (`fabric compose` writes both).
//!
//! Networks: one per zone of the topology (`internet`, `isolated` and each site's LAN), all
//! `internal`: a container reaches only the networks it is on; what it sends to any other is dropped
//! by docker's isolation rules on the host (no answer at all).
//!
//! Who sits where:
//! - The nodes whose address the fabric hands to the outside (routers: MX 10 and `mail.D`; relays:
//!   MX 20; dns: NS) keep their address in their zone; their admin port moves to a leg on their
//!   site's LAN (`admin_address`), so the zone sees only the services it is meant to.
//! - Every other node (stores, transfer, supervisors, mail servers, redirectors, the simulated
//!   outside world) sits on its site's LAN only: a zone's client has no route to it.
//! - Every node has a leg on every site's LAN (`networks`): the sites' LANs stretched to each other
//!   are the link between the data centers (stores mirror across it, redirectors fall back over it).
//!
//! Addresses: a zone `127.A.0.0/16` becomes the network `10.A.0.0/16`, and an address that stays in its
//! zone maps the same way (`127.10.1.1` -> `10.10.1.1`). A node moved onto its LAN `10.L.0.0/16` takes
//! `10.L.A.D` for its `127.A.B.D` (`inet-mx-w1` `127.10.1.11` -> `10.1.10.11`), a leg on another site's
//! LAN `10.L.(A+100).D`; the next free address when that one is taken. The last host of each network is
//! its gateway (the docker host's bridge address). A zone whose place overlaps a network already in
//! use on the host ([`plan_avoiding`]) moves to the next free private block of its size, its nodes
//! keeping their host offsets.

mod render;

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use topology::{Role, Topology, ZoneKind};

pub use render::{RenderOptions, render};

/// Why a topology cannot be deployed on docker.
#[derive(Debug, thiserror::Error)]
pub enum ComposeError {
    #[error("zone {zone:?}: cidr {cidr} has no room for a container network")]
    Cidr { zone: String, cidr: Ipv4Net },
    #[error("node {node:?}: site {site:?} has no LAN zone to put it on")]
    NoLan { node: String, site: String },
    #[error("node {node:?}: address {address} is in no zone")]
    NoZone { node: String, address: Ipv4Addr },
    #[error("zone {zone:?} ({cidr}): every private block of its size overlaps a network in use")]
    NoRoom { zone: String, cidr: Ipv4Net },
    #[error("network {network:?} is full")]
    Full { network: String },
    #[error("the docker topology is invalid: {0}")]
    Invalid(String),
}

/// One container network (a zone of the topology).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Network {
    /// The zone's name; the compose file's network key.
    pub name: String,
    pub kind: ZoneKind,
    pub subnet: Ipv4Net,
    pub gateway: Ipv4Addr,
}

/// One container: a node of the docker topology and its address on each network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Service {
    pub node: String,
    pub role: Role,
    /// Network name -> static address.
    pub addresses: BTreeMap<String, Ipv4Addr>,
    /// Where its health check asks (`http://ADMIN/health`).
    pub admin: std::net::SocketAddr,
    /// A named volume for its data (stores, and the outside world's spool).
    pub volume: Option<String>,
}

/// What `fabric compose` writes: the networks, the services, and the topology the containers read.
#[derive(Debug, Clone)]
pub struct Deployment {
    pub networks: Vec<Network>,
    pub services: Vec<Service>,
    pub topology: Topology,
}

impl Deployment {
    pub fn network(&self, name: &str) -> Option<&Network> {
        self.networks.iter().find(|n| n.name == name)
    }

    pub fn service(&self, node: &str) -> Option<&Service> {
        self.services.iter().find(|s| s.node == node)
    }
}

/// Whether the fabric's DNS hands this role's address to the zone's clients (so it stays there).
pub fn faces_zone(role: Role) -> bool {
    matches!(role, Role::Router | Role::Relay | Role::Dns)
}

/// The container subnet of a zone: `127.A.B.C/n` becomes `10.A.B.C/n`; a private cidr stays.
fn subnet_of(cidr: Ipv4Net) -> Ipv4Net {
    let o = cidr.network().octets();
    if o[0] != 127 {
        return cidr;
    }
    Ipv4Net::new(Ipv4Addr::new(10, o[1], o[2], o[3]), cidr.prefix_len()).unwrap_or(cidr)
}

/// An address in its own zone, moved the way the zone moved.
fn map_address(address: Ipv4Addr, from: Ipv4Net, to: Ipv4Net) -> Ipv4Addr {
    let offset = u32::from(address) - u32::from(from.network());
    Ipv4Addr::from(u32::from(to.network()) + offset)
}

/// Free addresses per network, handed out deterministically.
struct Allocator {
    used: BTreeMap<String, BTreeSet<Ipv4Addr>>,
}

impl Allocator {
    fn take(&mut self, net: &Network, address: Ipv4Addr) -> bool {
        self.used
            .entry(net.name.clone())
            .or_default()
            .insert(address)
    }

    /// `preferred` (a host offset) if free, else the next free host of the network.
    fn next_from(&mut self, net: &Network, preferred: u32) -> Result<Ipv4Addr, ComposeError> {
        let first = u32::from(net.subnet.network());
        let size = 1u64 << (32 - u32::from(net.subnet.prefix_len()));
        let hosts = size.saturating_sub(2).max(1);
        for step in 0..hosts {
            let offset = ((u64::from(preferred) + step) % size) as u32;
            let candidate = Ipv4Addr::from(first + offset);
            if offset == 0
                || u64::from(offset) == size - 1
                || candidate == net.gateway
                || !self.take(net, candidate)
            {
                continue;
            }
            return Ok(candidate);
        }
        Err(ComposeError::Full {
            network: net.name.clone(),
        })
    }
}

/// The private ranges a zone's network may move to when its own place is taken, in order.
const PRIVATE: [(Ipv4Addr, u8); 3] = [
    (Ipv4Addr::new(10, 0, 0, 0), 8),
    (Ipv4Addr::new(172, 16, 0, 0), 12),
    (Ipv4Addr::new(192, 168, 0, 0), 16),
];

/// The container subnet of a zone that overlaps nothing in `taken`: its mapped place
/// ([`subnet_of`]) when free, else the next free block of the same size in 10/8 (counting on from
/// the mapped place), then in 172.16/12 and 192.168/16.
fn free_subnet(cidr: Ipv4Net, taken: &[Ipv4Net]) -> Option<Ipv4Net> {
    let mapped = subnet_of(cidr);
    let free = |n: &Ipv4Net| {
        !taken
            .iter()
            .any(|t| t.contains(&n.network()) || n.contains(&t.network()))
    };
    if free(&mapped) {
        return Some(mapped);
    }
    let prefix = mapped.prefix_len();
    for (base, len) in PRIVATE {
        let Ok(range) = Ipv4Net::new(base, len) else {
            continue;
        };
        let Ok(blocks) = range.subnets(prefix) else {
            continue; // the zone is bigger than the range
        };
        let blocks: Vec<Ipv4Net> = blocks.collect();
        let start = blocks.iter().position(|b| *b == mapped).unwrap_or(0);
        if let Some(b) = blocks
            .iter()
            .cycle()
            .skip(start)
            .take(blocks.len())
            .find(|b| free(b))
        {
            return Some(*b);
        }
    }
    None
}

/// The networks, containers and docker topology of `topology`, every zone at its mapped place.
pub fn plan(topology: &Topology) -> Result<Deployment, ComposeError> {
    plan_avoiding(topology, &[])
}

/// [`plan`], with each zone's network moved off the subnets in `taken` (the engine's other networks,
/// the host's routes): docker refuses a network whose subnet overlaps another ("Pool overlaps with
/// other one on this address space"). A moved zone keeps its nodes' host offsets.
pub fn plan_avoiding(topology: &Topology, taken: &[Ipv4Net]) -> Result<Deployment, ComposeError> {
    let mut networks = Vec::new();
    // Zones whose own place is free keep it; a moved zone goes round all of them.
    let mut around = taken.to_vec();
    around.extend(topology.zones.iter().map(|z| subnet_of(z.cidr)));
    for z in &topology.zones {
        let subnet = match free_subnet(z.cidr, taken) {
            Some(s) if s == subnet_of(z.cidr) => Some(s),
            _ => free_subnet(z.cidr, &around),
        }
        .ok_or_else(|| ComposeError::NoRoom {
            zone: z.name.clone(),
            cidr: z.cidr,
        })?;
        if subnet.prefix_len() > 29 {
            return Err(ComposeError::Cidr {
                zone: z.name.clone(),
                cidr: z.cidr,
            });
        }
        around.push(subnet);
        let gateway = Ipv4Addr::from(u32::from(subnet.broadcast()) - 1);
        networks.push(Network {
            name: z.name.clone(),
            kind: z.kind,
            subnet,
            gateway,
        });
    }
    let zone_net = |address: Ipv4Addr| {
        topology
            .zones
            .iter()
            .zip(&networks)
            .find(|(z, _)| z.cidr.contains(&address))
    };
    let lan_of = |site: &str| {
        topology
            .zones
            .iter()
            .zip(&networks)
            .find(|(z, _)| z.kind == ZoneKind::Lan && z.site.as_deref() == Some(site))
            .map(|(_, n)| n)
    };
    let lans: Vec<&Network> = networks
        .iter()
        .filter(|n| n.kind == ZoneKind::Lan)
        .collect();
    let mut alloc = Allocator {
        used: BTreeMap::new(),
    };
    for n in &networks {
        alloc.take(n, n.gateway);
    }

    // First the addresses that keep their place (so a moved node never takes one).
    let mut home: BTreeMap<String, (String, Ipv4Addr)> = BTreeMap::new();
    for node in &topology.nodes {
        let (zone, net) = zone_net(node.address).ok_or_else(|| ComposeError::NoZone {
            node: node.name.clone(),
            address: node.address,
        })?;
        if faces_zone(node.role()) || zone.kind == ZoneKind::Lan {
            let address = map_address(node.address, zone.cidr, net.subnet);
            alloc.take(net, address);
            home.insert(node.name.clone(), (net.name.clone(), address));
        }
    }
    let mut docker = topology.clone();
    let mut services = Vec::new();
    for (node, out) in topology.nodes.iter().zip(docker.nodes.iter_mut()) {
        let [_, a, _, d] = node.address.octets();
        let lan = lan_of(&node.site).ok_or_else(|| ComposeError::NoLan {
            node: node.name.clone(),
            site: node.site.clone(),
        })?;
        let (net, address) = match home.get(&node.name) {
            Some(h) => h.clone(),
            None => {
                let address = alloc.next_from(lan, (u32::from(a) << 8) | u32::from(d))?;
                (lan.name.clone(), address)
            }
        };
        let mut addresses = BTreeMap::from([(net.clone(), address)]);
        out.address = address;
        out.admin_address = None;
        out.networks.clear();
        for other in &lans {
            if other.name == net {
                continue;
            }
            let own = other.name == lan.name;
            let high = if own { a } else { a.wrapping_add(100) };
            let leg = alloc.next_from(other, (u32::from(high) << 8) | u32::from(d))?;
            out.networks.insert(other.name.clone(), leg);
            addresses.insert(other.name.clone(), leg);
            if own {
                out.admin_address = Some(leg);
            }
        }
        let volume = matches!(node.role(), Role::Store | Role::Sink).then(|| node.name.clone());
        services.push(Service {
            node: node.name.clone(),
            role: node.role(),
            addresses,
            admin: out.admin_addr(),
            volume,
        });
    }
    for (z, net) in docker.zones.iter_mut().zip(&networks) {
        z.cidr = net.subnet;
    }
    let text = docker
        .to_toml()
        .map_err(|e| ComposeError::Invalid(e.to_string()))?;
    Topology::parse(&text, std::path::Path::new("docker topology"))
        .map_err(|e| ComposeError::Invalid(e.to_string()))?;
    Ok(Deployment {
        networks,
        services,
        topology: docker,
    })
}

/// Every flow the access list of `zone` refuses, as the connections a client in the zone would open
/// to the fabric's nodes: for each service its routers guard but do not forward, every node that
/// serves it (`admin`: every node's admin port). None may have a path from the zone's network.
pub fn refused_flows(deployment: &Deployment, zone: &str) -> Vec<(String, std::net::SocketAddr)> {
    let t = &deployment.topology;
    let guarded: BTreeSet<&str> = t
        .nodes_with_role(Role::Router)
        .filter(|r| r.zones.iter().any(|z| z == zone))
        .flat_map(|r| r.ports.keys().map(String::as_str))
        .filter(|s| !t.acl_allows(zone, s))
        .collect();
    let mut flows = Vec::new();
    for service in guarded {
        for n in &t.nodes {
            let target = if service == "admin" {
                Some(n.admin_addr())
            } else if n.role() == Role::Router {
                None
            } else {
                n.service_addr(service)
            };
            if let Some(addr) = target {
                flows.push((format!("{}:{service}", n.name), addr));
            }
        }
    }
    flows
}

/// The flows the access list of `zone` forwards: every router of the zone at each allowed port.
pub fn allowed_flows(deployment: &Deployment, zone: &str) -> Vec<(String, std::net::SocketAddr)> {
    let t = &deployment.topology;
    t.nodes_with_role(Role::Router)
        .filter(|r| r.zones.iter().any(|z| z == zone))
        .flat_map(|r| {
            r.ports
                .keys()
                .filter(|s| t.acl_allows(zone, s))
                .filter_map(|s| Some((format!("{}:{s}", r.name), r.service_addr(s)?)))
        })
        .collect()
}
