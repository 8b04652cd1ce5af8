//! The edge of the fabric: DNS, routers with access lists, and redirectors.
//!
//! A router is in one zone (`internet` or `isolated`) of one site. It listens on every port in its
//! `ports` table; the services its zone's access list allows are forwarded to the site's redirector in
//! the same zone (at that redirector's port for the service), the others are refused and counted. A
//! redirector balances each service it declares over the servers of its site that offer that service
//! in its zone (inet-mx for `smtp` in the Internet zone, intranet servers for `submission`, `pop3` and
//! `imap` in the isolated zone), and over the other site's redirector when none of its own is healthy.

use std::net::Ipv4Addr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::model::{Node, Role, Topology};

/// Settings of the edge (health checks, DNS answers).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Edge {
    /// How often a redirector checks each backend with its protocol's greeting.
    #[serde(with = "humantime_serde")]
    pub check_interval: Duration,
    /// Failed checks in a row that take a backend out of the pool.
    pub check_fall: u32,
    /// Good checks in a row that bring it back.
    pub check_rise: u32,
    /// TTL of every record the fabric's DNS serves.
    #[serde(with = "humantime_serde")]
    pub dns_ttl: Duration,
    /// How often a DNS server reads the sites' load and health to re-weight its MX preferences.
    #[serde(with = "humantime_serde")]
    pub dns_refresh: Duration,
    /// Whether a redirector opens each backend connection with a PROXY v2 header naming the real
    /// client (and its health checks with a LOCAL header). On by default: the fabric's servers require
    /// the header on every connection from a redirector address. The bench turns it off in front of
    /// `smtp-sink` backends, which do not speak PROXY (HAProxy's config there has no `send-proxy`
    /// either). Connections to another site's redirector always carry the header.
    pub send_proxy: bool,
    /// Whether routers and redirectors hand a client's connection itself to the next hop when it
    /// runs on the same host (a unix socket named after its address answers), instead of relaying
    /// every byte of the session through themselves. On by default; a hop that does not answer is
    /// relayed to over TCP either way (a container per node, `smtp-sink`).
    pub handoff: bool,
}

impl Default for Edge {
    fn default() -> Self {
        Edge {
            check_interval: Duration::from_millis(250),
            check_fall: 2,
            check_rise: 2,
            dns_ttl: Duration::from_secs(5),
            dns_refresh: Duration::from_secs(1),
            send_proxy: true,
            handoff: true,
        }
    }
}

/// One zone's access list: the services its routers forward. Everything else is refused.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Acl {
    pub zone: String,
    pub allow: Vec<String>,
}

/// The services a redirector in a zone of this kind may balance, and the role that serves them.
pub fn served_by(service: &str) -> Option<Role> {
    match service {
        "smtp" => Some(Role::InetMx),
        "submission" | "pop3" | "imap" => Some(Role::Intranet),
        _ => None,
    }
}

impl Topology {
    /// The zone's access list (empty: everything is refused).
    pub fn acl_allows(&self, zone: &str, service: &str) -> bool {
        self.acls
            .iter()
            .any(|a| a.zone == zone && a.allow.iter().any(|s| s == service))
    }

    /// The redirector of `site` in `zone`, if the topology has one.
    pub fn redirector(&self, site: &str, zone: &str) -> Option<&Node> {
        self.nodes_with_role(Role::Redirector)
            .find(|n| n.site == site && n.zones.iter().any(|z| z == zone))
    }

    /// The redirectors of `zone` in the other sites (where a redirector sends what its own site cannot
    /// take).
    pub fn other_redirectors(&self, site: &str, zone: &str) -> Vec<&Node> {
        self.nodes_with_role(Role::Redirector)
            .filter(|n| n.site != site && n.zones.iter().any(|z| z == zone))
            .collect()
    }

    /// The routers of `site` in `zone`, in file order.
    pub fn routers(&self, site: &str, zone: &str) -> Vec<&Node> {
        self.nodes_with_role(Role::Router)
            .filter(|n| n.site == site && n.zones.iter().any(|z| z == zone))
            .collect()
    }

    /// The servers a redirector of `site` in `zone` balances `service` over.
    pub fn backends(&self, site: &str, zone: &str, service: &str) -> Vec<&Node> {
        let Some(role) = served_by(service) else {
            return Vec::new();
        };
        self.nodes_with_role(role)
            .filter(|n| {
                n.site == site && n.zones.iter().any(|z| z == zone) && n.ports.contains_key(service)
            })
            .collect()
    }

    /// The addresses allowed to open a connection with a PROXY protocol header (routers and
    /// redirectors): a server takes the client address from the header only on their connections.
    pub fn proxy_addresses(&self) -> Vec<Ipv4Addr> {
        self.nodes
            .iter()
            .filter(|n| matches!(n.role(), Role::Router | Role::Redirector))
            .flat_map(Node::addresses)
            .collect()
    }
}
