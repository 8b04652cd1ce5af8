//! The zone data, built once from the topology: for every customer domain its SOA, NS, MX hosts and
//! the address sets (A records) of its host names. Which nodes stand behind which name is decided
//! here, each rule in its own function.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};

use hickory_server::proto::rr::rdata::{NS, SOA};
use hickory_server::proto::rr::{Name, RData, Record};
use topology::{Role, Topology};

use crate::weight::{PRIMARY_BASE, SECONDARY_BASE};

/// Why the zone data could not be built.
#[derive(Debug, thiserror::Error)]
pub enum RecordsError {
    #[error("customer domain {domain:?} is not a valid DNS name: {message}")]
    BadName { domain: String, message: String },
}

/// A group of mail servers whose `/status` measures an MX host: the nodes of one role in one site.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Group {
    pub site: String,
    pub role: Role,
}

/// One mail server of a group, polled on its admin port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Server {
    pub node: String,
    pub admin: SocketAddr,
}

/// The servers behind an MX host: the addresses its A records name and the group that measures it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MxServers {
    pub addresses: Vec<Ipv4Addr>,
    pub group: Group,
}

/// One MX host of a domain (`mx-<site>.<domain>.`).
#[derive(Debug, Clone)]
pub struct MxTarget {
    pub host: Name,
    pub site: String,
    /// 10 for the primary (home site), 20 for a secondary; the health rule adds to it.
    pub base: u16,
    pub group: Group,
}

/// Everything the server knows about one customer domain.
#[derive(Debug, Clone)]
pub struct DomainZone {
    pub domain: String,
    pub apex: Name,
    pub soa: Record,
    pub ns: Vec<Record>,
    /// Primary first, then a secondary per other site.
    pub mx: Vec<MxTarget>,
    /// Host names of the domain and their addresses (`ns-*`, `mx-*`, `mail`), in topology order.
    pub hosts: BTreeMap<Name, Vec<Ipv4Addr>>,
}

/// The zone data of every customer domain, and the groups of servers to poll.
#[derive(Debug, Clone)]
pub struct Zones {
    pub ttl: u32,
    pub domains: Vec<DomainZone>,
    pub groups: BTreeMap<Group, Vec<Server>>,
}

fn addresses_of<'a>(nodes: impl IntoIterator<Item = &'a topology::Node>) -> Vec<Ipv4Addr> {
    nodes.into_iter().map(|n| n.address).collect()
}

fn site_nodes(t: &Topology, role: Role, site: &str) -> Vec<Ipv4Addr> {
    addresses_of(t.nodes_with_role(role).filter(|n| n.site == site))
}

/// Where Internet mail enters `site`: its Internet routers (`Topology::routers(site, "internet")`),
/// which forward SMTP to the site's redirector and on to an inet-mx. In a topology without routers
/// (the fabric before its edge was built) the site's inet-mx nodes themselves. The load and health
/// that weigh it are always those of the site's inet-mx nodes: they do the work behind the routers.
pub fn internet_entry(t: &Topology, site: &str) -> MxServers {
    let routers = t.routers(site, "internet");
    let addresses = if routers.is_empty() {
        site_nodes(t, Role::InetMx, site)
    } else {
        addresses_of(routers)
    };
    MxServers {
        addresses,
        group: Group {
            site: site.to_string(),
            role: Role::InetMx,
        },
    }
}

/// The secondary MX that `site` offers for domains at home in another site. The design says: the
/// relay servers of that site (they store what the primary cannot take and retry it), so when the
/// topology has nodes with role `relay` in `site` the secondary names them and their `/status`
/// weighs it. Until relays exist, the site's Internet entry ([`internet_entry`]): its inet-mx
/// nodes accept mail for every customer domain and hand it to the stores, which mirror it home.
/// Change this one function to change where secondary mail goes.
pub fn secondary_mx(t: &Topology, site: &str) -> MxServers {
    let relays = site_nodes(t, Role::Relay, site);
    if relays.is_empty() {
        internet_entry(t, site)
    } else {
        MxServers {
            addresses: relays,
            group: Group {
                site: site.to_string(),
                role: Role::Relay,
            },
        }
    }
}

/// The access points customers use from the isolated side (`mail.<domain>`): the isolated-zone
/// routers of the domain's home site; without routers, that site's intranet servers.
pub fn access_points(t: &Topology, site: &str) -> Vec<Ipv4Addr> {
    let routers = t.routers(site, "isolated");
    if routers.is_empty() {
        site_nodes(t, Role::Intranet, site)
    } else {
        addresses_of(routers)
    }
}

/// The name servers of the fabric, by site (the nodes with role `dns`), in topology order of sites.
fn name_servers(t: &Topology) -> Vec<(String, Vec<Ipv4Addr>)> {
    let mut out: Vec<(String, Vec<Ipv4Addr>)> = Vec::new();
    for site in &t.sites {
        let addrs = site_nodes(t, Role::Dns, &site.name);
        if !addrs.is_empty() {
            out.push((site.name.clone(), addrs));
        }
    }
    out
}

fn name(domain: &str, label: Option<&str>) -> Result<Name, RecordsError> {
    let text = match label {
        Some(l) => format!("{l}.{domain}."),
        None => format!("{domain}."),
    };
    Name::from_ascii(&text).map_err(|e| RecordsError::BadName {
        domain: domain.to_string(),
        message: e.to_string(),
    })
}

impl Zones {
    /// Builds the zone data of every customer domain of the topology.
    pub fn build(t: &Topology) -> Result<Zones, RecordsError> {
        let ttl = u32::try_from(t.edge.dns_ttl.as_secs()).unwrap_or(u32::MAX);
        let servers = name_servers(t);
        let mut groups: BTreeMap<Group, Vec<Server>> = BTreeMap::new();
        let mut domains = Vec::new();
        for d in &t.domains {
            let apex = name(&d.name, None)?;
            let mut hosts = BTreeMap::new();
            let mut ns = Vec::new();
            for (site, addrs) in &servers {
                let host = name(&d.name, Some(&format!("ns-{site}")))?;
                ns.push(Record::from_rdata(
                    apex.clone(),
                    ttl,
                    RData::NS(NS(host.clone())),
                ));
                hosts.insert(host, addrs.clone());
            }
            let mname = servers
                .iter()
                .find(|(s, _)| *s == d.home)
                .or(servers.first())
                .map(|(s, _)| name(&d.name, Some(&format!("ns-{s}"))))
                .transpose()?
                .unwrap_or_else(|| apex.clone());
            let rname = name(&d.name, Some("hostmaster"))?;
            // Serial 1: nothing transfers these zones; every server builds them from the same file.
            let soa = SOA::new(mname, rname, 1, 3600, 600, 86400, ttl);
            let soa = Record::from_rdata(apex.clone(), ttl, RData::SOA(soa));

            let mut mx = Vec::new();
            let mut targets = vec![(d.home.clone(), PRIMARY_BASE, internet_entry(t, &d.home))];
            for site in t.sites.iter().filter(|s| s.name != d.home) {
                targets.push((
                    site.name.clone(),
                    SECONDARY_BASE,
                    secondary_mx(t, &site.name),
                ));
            }
            for (site, base, servers) in targets {
                let host = name(&d.name, Some(&format!("mx-{site}")))?;
                hosts.insert(host.clone(), servers.addresses);
                groups.entry(servers.group.clone()).or_insert_with(|| {
                    t.nodes_with_role(servers.group.role)
                        .filter(|n| n.site == servers.group.site)
                        .map(|n| Server {
                            node: n.name.clone(),
                            admin: n.admin_addr(),
                        })
                        .collect()
                });
                mx.push(MxTarget {
                    host,
                    site,
                    base,
                    group: servers.group,
                });
            }
            hosts.insert(name(&d.name, Some("mail"))?, access_points(t, &d.home));
            domains.push(DomainZone {
                domain: d.name.clone(),
                apex,
                soa,
                ns,
                mx,
                hosts,
            });
        }
        Ok(Zones {
            ttl,
            domains,
            groups,
        })
    }

    /// The customer domain whose zone holds `qname`, if any.
    pub fn zone_of(&self, qname: &Name) -> Option<&DomainZone> {
        self.domains.iter().find(|z| z.apex.zone_of(qname))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn two_site() -> Topology {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../topology/two-site.toml");
        Topology::load(path).expect("two-site topology")
    }

    /// two-site.toml as it was before the edge: no routers in front of the servers.
    fn two_site_without_routers() -> Topology {
        let mut t = two_site();
        t.nodes
            .retain(|n| !matches!(n.role(), Role::Router | Role::Relay));
        t
    }

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().expect("address")
    }

    fn host(z: &DomainZone, n: &str) -> Vec<Ipv4Addr> {
        z.hosts
            .get(&Name::from_ascii(n).expect("name"))
            .cloned()
            .unwrap_or_default()
    }

    #[test]
    fn without_routers_mx_hosts_name_the_inet_mx_nodes() {
        let zones = Zones::build(&two_site_without_routers()).expect("zones");
        let acme = zones
            .zone_of(&Name::from_ascii("acme.example.").expect("name"))
            .expect("acme");
        assert_eq!(
            host(acme, "mx-west.acme.example."),
            [ip("127.10.1.11"), ip("127.10.1.12")]
        );
        assert_eq!(
            host(acme, "mx-east.acme.example."),
            [ip("127.10.2.11"), ip("127.10.2.12")]
        );
        assert_eq!(
            host(acme, "mail.acme.example."),
            [ip("127.20.1.11"), ip("127.20.1.12")]
        );
        assert_eq!(host(acme, "ns-west.acme.example."), [ip("127.10.1.53")]);
        assert_eq!(acme.mx[0].base, 10);
        assert_eq!(acme.mx[0].site, "west");
        assert_eq!(acme.mx[1].base, 20);
        assert_eq!(acme.mx[1].site, "east");
        let globex = zones
            .zone_of(&Name::from_ascii("x.GLOBEX.example.").expect("name"))
            .expect("globex");
        assert_eq!(globex.mx[0].site, "east");
        assert!(
            zones
                .zone_of(&Name::from_ascii("example.org.").expect("name"))
                .is_none()
        );
        assert_eq!(zones.ttl, 5);
        assert_eq!(zones.groups.len(), 2);
    }

    fn node(name: &str, role: &str, site: &str, zone: &str, address: &str) -> topology::Node {
        topology::Node {
            name: name.into(),
            role: role.into(),
            site: site.into(),
            zones: vec![zone.into()],
            address: ip(address),
            ports: Default::default(),
            admin: 9100,
            quota_bytes: None,
            admin_address: None,
            networks: Default::default(),
        }
    }

    #[test]
    fn routers_and_relays_take_over_when_the_topology_has_them() {
        let mut t = two_site_without_routers();
        for (n, site, zone, a) in [
            ("router-inet-w1", "west", "internet", "127.10.1.1"),
            ("router-inet-w2", "west", "internet", "127.10.1.2"),
            ("router-inet-e1", "east", "internet", "127.10.2.1"),
            ("router-iso-w1", "west", "isolated", "127.20.1.1"),
            ("router-iso-w2", "west", "isolated", "127.20.1.2"),
        ] {
            t.nodes.push(node(n, "router", site, zone, a));
        }
        let zones = Zones::build(&t).expect("zones");
        let acme = &zones.domains[0];
        assert_eq!(
            host(acme, "mx-west.acme.example."),
            [ip("127.10.1.1"), ip("127.10.1.2")]
        );
        assert_eq!(host(acme, "mx-east.acme.example."), [ip("127.10.2.1")]);
        assert_eq!(
            host(acme, "mail.acme.example."),
            [ip("127.20.1.1"), ip("127.20.1.2")]
        );
        // Relays of the other site become the secondary, measured by their own /status.
        t.nodes
            .push(node("relay-e1", "relay", "east", "internet", "127.10.2.41"));
        let zones = Zones::build(&t).expect("zones");
        let acme = &zones.domains[0];
        assert_eq!(host(acme, "mx-east.acme.example."), [ip("127.10.2.41")]);
        assert_eq!(acme.mx[1].group.role, Role::Relay);
        // globex is at home in the east: its primary is still the east routers.
        let globex = &zones.domains[1];
        assert_eq!(host(globex, "mx-east.globex.example."), [ip("127.10.2.1")]);
        assert_eq!(globex.mx[0].group.role, Role::InetMx);
    }
}
