//! What a router does with each port it guards, decided once at start-up from the topology.
//!
//! A router sits in one zone of one site and listens on every port of its `ports` table. For the
//! service `S` a port names: if the zone's access list allows `S`, connections are forwarded to the
//! site's redirector in that zone (at the redirector's port for `S`), and to the other sites'
//! redirectors of the zone when it does not answer; otherwise every connection is refused. The
//! topology's validation already proved a forwarding router has a redirector that serves `S`.

use std::net::SocketAddr;

use topology::{Node, Topology};

/// Why a router cannot run with the topology it was given.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error("router {node:?} must sit in exactly one zone, not {zones:?}")]
    Zones { node: String, zones: Vec<String> },
    #[error("router {node:?} guards no port (its `ports` table is empty)")]
    NoPorts { node: String },
    #[error(
        "router {node:?}: zone {zone:?} allows {service} but no redirector of the zone serves it"
    )]
    NoRedirector {
        node: String,
        zone: String,
        service: String,
    },
}

/// Where an allowed connection may go, in the order they are tried.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upstream {
    /// The redirector's node name (for logs and metrics).
    pub name: String,
    pub addr: SocketAddr,
    /// `local` for the router's own site's redirector, `other_site` for the fallbacks.
    pub path: &'static str,
}

/// What happens to a connection on one guarded port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Forward to the first of these that answers (the site's redirector first).
    Forward(Vec<Upstream>),
    /// Reset at once; counted under `rule` (`zone:service`).
    Refuse { rule: String },
}

/// One guarded port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Guarded {
    pub service: String,
    pub listen: SocketAddr,
    pub action: Action,
}

/// The router's whole plan: its zone, its site, and every port it listens on.
#[derive(Debug, Clone)]
pub struct Plan {
    pub node: String,
    pub site: String,
    pub zone: String,
    /// The router's own address: connections to redirectors are opened from it, so they recognise a
    /// router of the topology and read its PROXY header.
    pub source: std::net::IpAddr,
    pub ports: Vec<Guarded>,
    /// The relays' addresses: a relay hands mail back to this site's own servers, so its flows go to
    /// this site's redirector only, never on to the other site's (where the relay itself is).
    pub relays: Vec<std::net::Ipv4Addr>,
    /// Hand allowed connections to the site's redirector when it runs on the same host
    /// (`node_runtime::handoff`) instead of relaying their bytes (the topology's `edge.handoff`).
    pub handoff: bool,
}

impl Plan {
    pub fn build(topology: &Topology, node: &Node) -> Result<Plan, PlanError> {
        let [zone] = node.zones.as_slice() else {
            return Err(PlanError::Zones {
                node: node.name.clone(),
                zones: node.zones.clone(),
            });
        };
        if node.ports.is_empty() {
            return Err(PlanError::NoPorts {
                node: node.name.clone(),
            });
        }
        let mut ports = Vec::new();
        for service in node.ports.keys() {
            let Some(listen) = node.service_addr(service) else {
                continue;
            };
            let action = if topology.acl_allows(zone, service) {
                let upstreams = upstreams(topology, &node.site, zone, service);
                if upstreams.is_empty() {
                    return Err(PlanError::NoRedirector {
                        node: node.name.clone(),
                        zone: zone.clone(),
                        service: service.clone(),
                    });
                }
                Action::Forward(upstreams)
            } else {
                Action::Refuse {
                    rule: format!("{zone}:{service}"),
                }
            };
            ports.push(Guarded {
                service: service.clone(),
                listen,
                action,
            });
        }
        Ok(Plan {
            node: node.name.clone(),
            site: node.site.clone(),
            zone: zone.clone(),
            source: std::net::IpAddr::V4(node.source_ip()),
            ports,
            relays: topology.relay_addresses(),
            handoff: topology.edge.handoff,
        })
    }

    /// The services this router forwards.
    pub fn forwarded(&self) -> Vec<&str> {
        self.ports
            .iter()
            .filter(|g| matches!(g.action, Action::Forward(_)))
            .map(|g| g.service.as_str())
            .collect()
    }
}

/// The site's redirector of the zone first, then the other sites' (those that serve `service`).
fn upstreams(topology: &Topology, site: &str, zone: &str, service: &str) -> Vec<Upstream> {
    let local = topology
        .redirector(site, zone)
        .into_iter()
        .map(|n| (n, "local"));
    let others = topology
        .other_redirectors(site, zone)
        .into_iter()
        .map(|n| (n, "other_site"));
    local
        .chain(others)
        .filter_map(|(n, path)| {
            n.service_addr(service).map(|addr| Upstream {
                name: n.name.clone(),
                addr,
                path,
            })
        })
        .collect()
}
