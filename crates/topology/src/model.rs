//! The types a topology file deserializes into.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::str::FromStr;
use std::time::Duration;

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

/// The whole fabric, as written in the TOML file (after defaults are filled in).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Topology {
    /// Mailboxes `fabric up` creates with fresh passwords it prints, so a person can log in at once.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub demo_users: Vec<String>,
    pub fabric: FabricInfo,
    #[serde(default)]
    pub timing: Timing,
    #[serde(default)]
    pub limits: Limits,
    #[serde(default)]
    pub edge: crate::edge::Edge,
    #[serde(rename = "site", default)]
    pub sites: Vec<Site>,
    #[serde(rename = "zone", default)]
    pub zones: Vec<Zone>,
    #[serde(rename = "domain", default)]
    pub domains: Vec<Domain>,
    #[serde(rename = "node", default)]
    pub nodes: Vec<Node>,
    /// For each store: where its second copies go.
    #[serde(default)]
    pub mirrors: BTreeMap<String, Mirror>,
    /// What each zone's routers forward (one entry per zone); everything else is refused.
    #[serde(rename = "acl", default, skip_serializing_if = "Vec::is_empty")]
    pub acls: Vec<crate::edge::Acl>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FabricInfo {
    /// A short name for the fabric, shown by `fabric status` and in logs.
    pub name: String,
    /// The secret an operator gives to `fabric failover` (and the supervisors' manual endpoints).
    /// Absent: manual failover is refused altogether.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operator_token: Option<String>,
}

/// Timing knobs; defaults come from the design brief.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Timing {
    /// How often a relay retries the primary.
    #[serde(with = "humantime_serde")]
    pub relay_retry: Duration,
    /// How often a transfer server sweeps its queues as a backstop.
    #[serde(with = "humantime_serde")]
    pub transfer_sweep: Duration,
    /// How long a moved copy stays in the archive before it is purged.
    #[serde(with = "humantime_serde")]
    pub archive_retention: Duration,
    /// How long a store waits for a mirror before it counts it unreachable.
    #[serde(with = "humantime_serde")]
    pub mirror_timeout: Duration,
    /// How long a node may take to drain on SIGTERM before it exits anyway.
    #[serde(with = "humantime_serde")]
    pub shutdown_deadline: Duration,
    /// First wait before an outbound message is tried again (connection failure or 4xx); it doubles
    /// with every attempt, up to an hour.
    #[serde(with = "humantime_serde")]
    pub outbound_retry: Duration,
    /// How long an outbound message may wait for its remote MX before it is bounced to the sender.
    #[serde(with = "humantime_serde")]
    pub outbound_max_lifetime: Duration,
    /// A relay asks its site's supervisor for a standby once the primary has failed this long...
    #[serde(with = "humantime_serde")]
    pub standby_after: Duration,
    /// ...or this many delivery rounds in a row, whichever comes first.
    pub standby_attempts: u32,
    /// A sender whose mail still waits in a relay queue after this long gets a delay notice (RFC 3464).
    #[serde(with = "humantime_serde")]
    pub relay_delay_warning: Duration,
    /// How long customer mail may wait in a relay queue before it is returned to the sender.
    #[serde(with = "humantime_serde")]
    pub relay_max_lifetime: Duration,
    /// How often each site sends a probe message that must reach its probe mailbox.
    #[serde(with = "humantime_serde")]
    pub probe_interval: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Timing {
            relay_retry: Duration::from_secs(30),
            transfer_sweep: Duration::from_secs(30),
            archive_retention: Duration::from_secs(15 * 24 * 3600),
            mirror_timeout: Duration::from_secs(2),
            shutdown_deadline: Duration::from_secs(10),
            outbound_retry: Duration::from_secs(60),
            outbound_max_lifetime: Duration::from_secs(5 * 24 * 3600),
            standby_after: Duration::from_secs(120),
            standby_attempts: 4,
            relay_delay_warning: Duration::from_secs(4 * 3600),
            relay_max_lifetime: Duration::from_secs(5 * 24 * 3600),
            probe_interval: Duration::from_secs(60),
        }
    }
}

/// Size limits shared by the roles.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Largest body a store accepts in one request (a message, a queue item).
    pub store_max_body_bytes: u64,
    /// Largest number of items one lease request may take.
    pub store_max_lease: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            store_max_body_bytes: 50 * 1024 * 1024,
            store_max_lease: 1000,
        }
    }
}

/// A data center.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Site {
    pub name: String,
    /// Where it is, for people (e.g. "San Jose").
    #[serde(default)]
    pub location: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ZoneKind {
    /// The public side: senders, remote MTAs, SMS gateway.
    Internet,
    /// The corporate customers' own network.
    Isolated,
    /// A site's private network (stores, transfer, relays).
    Lan,
}

/// A network zone: every address of a node must lie inside one of its zones.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Zone {
    pub name: String,
    pub kind: ZoneKind,
    pub cidr: Ipv4Net,
    /// The site a LAN belongs to (LAN zones only).
    #[serde(default)]
    pub site: Option<String>,
}

/// A customer domain and the site that serves it first.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Domain {
    pub name: String,
    pub home: String,
}

/// What a node does; one binary per role.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    Dns,
    Router,
    Redirector,
    InetMx,
    Intranet,
    Transfer,
    Relay,
    Store,
    /// One per site: invokes and retires standby servers when a relay (or an operator) asks.
    Supervisor,
    /// The simulated Internet outside the fabric: remote MXes (an SMTP sink) and an SMS gateway.
    Sink,
}

impl Role {
    pub const ALL: [Role; 10] = [
        Role::Dns,
        Role::Router,
        Role::Redirector,
        Role::InetMx,
        Role::Intranet,
        Role::Transfer,
        Role::Relay,
        Role::Store,
        Role::Supervisor,
        Role::Sink,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Dns => "dns",
            Role::Router => "router",
            Role::Redirector => "redirector",
            Role::InetMx => "inet-mx",
            Role::Intranet => "intranet",
            Role::Transfer => "transfer",
            Role::Relay => "relay",
            Role::Store => "store",
            Role::Supervisor => "supervisor",
            Role::Sink => "sink",
        }
    }

    /// The executable that runs this role (installed beside `fabric`).
    pub fn binary(self) -> String {
        format!("fabric-{}", self.as_str())
    }

    /// The service ports a node of this role must declare.
    pub fn required_ports(self) -> &'static [&'static str] {
        match self {
            Role::Store => &["store"],
            Role::InetMx => &["smtp"],
            Role::Intranet => &["pop3", "imap", "submission"],
            Role::Sink => &["smtp", "sms"],
            Role::Dns => &["dns"],
            Role::Relay => &["smtp"],
            Role::Supervisor => &["supervisor"],
            _ => &[],
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Role::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| {
                let known: Vec<&str> = Role::ALL.iter().map(|r| r.as_str()).collect();
                format!("unknown role {s:?} (known roles: {})", known.join(", "))
            })
    }
}

/// One process of the fabric.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Node {
    pub name: String,
    /// Kept as text so an unknown role is reported by validation with the node's name.
    pub role: String,
    pub site: String,
    pub zones: Vec<String>,
    /// The node's own loopback (or container) address.
    pub address: Ipv4Addr,
    /// Service name -> TCP port (e.g. `store = 7100`).
    #[serde(default)]
    pub ports: BTreeMap<String, u16>,
    /// Port of the admin HTTP server (`/metrics`, `/health`, `/ready`, `/status`).
    pub admin: u16,
    /// Stores only: the most bytes the node's data may take (0 or absent: no quota).
    #[serde(default)]
    pub quota_bytes: Option<u64>,
    /// Where the admin server listens when not on `address` (docker: the site-LAN address of a node
    /// whose `address` faces a zone, so that zone never reaches its admin port). One of its addresses.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admin_address: Option<Ipv4Addr>,
    /// The node's addresses on networks other than `address`'s: zone name -> address (docker, where a
    /// container sits on several networks; `fabric compose` writes them). A node with any lets the
    /// kernel choose the source address of its connections: the one on the destination's network.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub networks: BTreeMap<String, Ipv4Addr>,
}

impl Node {
    /// The role, once validation has proved it parses.
    pub fn role(&self) -> Role {
        self.role.parse().unwrap_or(Role::Store)
    }

    pub fn service_addr(&self, service: &str) -> Option<SocketAddr> {
        self.ports
            .get(service)
            .map(|p| SocketAddr::V4(SocketAddrV4::new(self.address, *p)))
    }

    pub fn admin_addr(&self) -> SocketAddr {
        let ip = self.admin_address.unwrap_or(self.address);
        SocketAddr::V4(SocketAddrV4::new(ip, self.admin))
    }

    /// Every address of the node: `address`, then its other networks' (see `networks`).
    pub fn addresses(&self) -> impl Iterator<Item = Ipv4Addr> + '_ {
        std::iter::once(self.address).chain(self.networks.values().copied())
    }

    /// The address the node's outgoing connections are bound to: its own `address` on loopback (where
    /// every address is local and the kernel would pick 127.0.0.1), unspecified on several networks
    /// (the kernel then picks the node's address on the destination's network).
    pub fn source_ip(&self) -> Ipv4Addr {
        if self.networks.is_empty() {
            self.address
        } else {
            Ipv4Addr::UNSPECIFIED
        }
    }
}

/// Where a store's second copies go.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Mirror {
    /// The store in the other site that holds the synchronous copy.
    #[serde(default)]
    pub other_site: Option<String>,
    /// The store in the same site that takes the copy while the other site is unreachable.
    #[serde(default)]
    pub same_site: Option<String>,
}
