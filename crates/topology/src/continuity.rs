//! Guaranteed delivery and continuity: relay servers (the secondary MX of the other site's domains)
//! and the supervisor of each site that invokes standby servers in place of failed ones.

use std::net::{Ipv4Addr, SocketAddr};

use crate::model::{Domain, Node, Role, Topology};

/// The roles a supervisor stands in for, in the order a dead site comes back: its stores first (a
/// standby store rebuilds from the other site's copy of it and begins a new epoch), then what works
/// over them (transfer, the mail servers), then the access path in front (redirectors, routers). DNS,
/// relays and supervisors get no standby: the other site's serve meanwhile.
pub const STANDBY_PHASES: [&[Role]; 4] = [
    &[Role::Store],
    &[Role::Transfer, Role::InetMx, Role::Intranet],
    &[Role::Redirector],
    &[Role::Router],
];

impl Role {
    /// Whether a supervisor can stand in for a node of this role.
    pub fn has_standby(self) -> bool {
        STANDBY_PHASES.iter().any(|phase| phase.contains(&self))
    }
}

impl Topology {
    /// The relay servers of `site`: the secondary MX for every domain whose home is another site.
    pub fn relays(&self, site: &str) -> Vec<&Node> {
        self.nodes_with_role(Role::Relay)
            .filter(|n| n.site == site)
            .collect()
    }

    /// The domains the relays of `site` stand in for: every customer domain at home elsewhere.
    pub fn relayed_domains(&self, site: &str) -> Vec<&Domain> {
        self.domains.iter().filter(|d| d.home != site).collect()
    }

    /// The home site of a customer domain.
    pub fn home_site(&self, domain: &str) -> Option<&str> {
        self.domains
            .iter()
            .find(|d| d.name.eq_ignore_ascii_case(domain))
            .map(|d| d.home.as_str())
    }

    /// The supervisor of `site` (the node that invokes and retires standby servers there).
    pub fn supervisor(&self, site: &str) -> Option<&Node> {
        self.nodes_with_role(Role::Supervisor)
            .find(|n| n.site == site)
    }

    /// The addresses of every relay: a mail server trusts a relay's fabric message id (and only a
    /// relay's) so that a message handed over twice is still delivered once.
    pub fn relay_addresses(&self) -> Vec<Ipv4Addr> {
        self.nodes_with_role(Role::Relay)
            .flat_map(Node::addresses)
            .collect()
    }

    /// The nodes of `site` a supervisor can stand in for, in phases to start one after the other
    /// (see [`STANDBY_PHASES`]); empty phases left out.
    pub fn standby_phases(&self, site: &str) -> Vec<Vec<&Node>> {
        STANDBY_PHASES
            .iter()
            .map(|roles| {
                self.nodes
                    .iter()
                    .filter(|n| n.site == site && roles.contains(&n.role()))
                    .collect::<Vec<_>>()
            })
            .filter(|phase| !phase.is_empty())
            .collect()
    }

    /// The Internet and intranet mail servers of `site`.
    pub fn mail_servers(&self, site: &str) -> Vec<&Node> {
        self.nodes
            .iter()
            .filter(|n| n.site == site && matches!(n.role(), Role::InetMx | Role::Intranet))
            .collect()
    }

    /// Where `site` takes mail over SMTP, in the order to try: its Internet routers (the path the
    /// Internet uses, when the access list forwards smtp) turned left by `rotate`, then its Internet
    /// mail servers themselves (the path between the sites). Relays hand held mail over this way and
    /// the supervisors send their flow probes along it.
    pub fn smtp_entry(&self, site: &str, rotate: usize) -> Vec<(String, SocketAddr)> {
        let mut routers: Vec<(String, SocketAddr)> = if self.acl_allows("internet", "smtp") {
            self.routers(site, "internet")
                .into_iter()
                .filter_map(|r| Some((r.name.clone(), r.service_addr("smtp")?)))
                .collect()
        } else {
            Vec::new()
        };
        if !routers.is_empty() {
            let n = rotate % routers.len();
            routers.rotate_left(n);
        }
        let servers = self
            .nodes_with_role(Role::InetMx)
            .filter(|n| n.site == site)
            .filter_map(|n| Some((n.name.clone(), n.service_addr("smtp")?)));
        routers.into_iter().chain(servers).collect()
    }
}
