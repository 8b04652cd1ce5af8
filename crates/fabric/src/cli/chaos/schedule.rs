//! The fault schedule: generated from a seed (ChaCha8, so a seed replays the same schedule anywhere),
//! under rules that keep every instant within what the fabric is designed to survive.
//!
//! Rules (a fault's *window* is from its start to its planned heal plus a recovery margin: 5 s,
//! 10 s for a store, whose mirrors must catch up, and 15 s for a whole site; the runner enforces
//! rules 2 to 4 again on the real timeline, where a recovery may take longer than planned):
//! 1. Nothing starts before the warm-up (5 % of the span, at least 3 s) or after 80 % of the span.
//! 2. At most `max_concurrent` windows overlap at any instant.
//! 3. A site down overlaps no other fault (the other site is whole while one is gone).
//! 4. Two overlapping faults never hit nodes of the same role: every role keeps a live node in the
//!    fabric, and since the stores are one role, a store's data always keeps a live copy (a store and
//!    its mirror are never both down or frozen at once), and a store that returns has caught up before
//!    the next store fault (the runner waits until every store's mirrors are in sync).
//! 5. The sink is never a target: it is the simulated Internet, not part of the fabric.
//!
//! 6. A partition (docker only) overlaps no other fault, like a site down.
//!
//! Every role is hit before any role is hit twice; one fault in twelve (at least one when there are
//! four or more) takes a whole site down, sites taking turns. With `partitions`, one fault in twelve
//! (at least one) parts the sites (every node of each loses its leg on the other site's LAN) and
//! one in twelve cuts a zone off a site (the site's nodes lose their legs on the Internet or the
//! isolated zone).

use std::time::Duration;

use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;
use topology::{Role, Topology};

/// What a fault does to its nodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    /// SIGKILL; started again after `hold`.
    Kill,
    /// SIGSTOP; SIGCONT after `hold`.
    Pause,
    /// SIGTERM (the node drains and exits), started again at once.
    Restart,
    /// SIGKILL of every node of a site (the sink excepted); all started again after `hold`.
    SiteDown,
    /// The sites cannot reach each other for `hold` (`legs` cut, then mended).
    Partition,
    /// A zone cannot reach a site for `hold`.
    ZoneCut,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Kill => "kill",
            Kind::Pause => "pause",
            Kind::Restart => "restart",
            Kind::SiteDown => "site-down",
            Kind::Partition => "partition",
            Kind::ZoneCut => "zone-cut",
        }
    }

    /// Faults that overlap no other (rules 3 and 6).
    pub fn exclusive(self) -> bool {
        matches!(self, Kind::SiteDown | Kind::Partition | Kind::ZoneCut)
    }
}

/// One planned fault.
#[derive(Debug, Clone, Serialize)]
pub struct Fault {
    pub id: usize,
    pub kind: Kind,
    /// A node's name, or a site's for `site-down`.
    pub target: String,
    /// The site the fault hurts (whose mail the recovery time watches).
    pub site: String,
    pub nodes: Vec<String>,
    /// The role of the node (`site` for a site down).
    pub role: String,
    /// Seconds from the start of the campaign.
    pub at: f64,
    /// How long the node stays down or frozen, in seconds.
    pub hold: f64,
    /// The network legs a partition cuts.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub legs: Vec<Leg>,
}

/// A container's attachment to a network of the compose file, at its address there.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Leg {
    pub node: String,
    pub network: String,
    pub address: std::net::Ipv4Addr,
}

/// The legs that join site `a` to site `b`: every node of each on the other's LAN (the sink, the
/// simulated Internet, keeps both).
pub fn partition_legs(t: &Topology, a: &str, b: &str) -> Vec<Leg> {
    let lan = |site: &str| {
        t.zones
            .iter()
            .find(|z| z.site.as_deref() == Some(site))
            .map(|z| z.name.clone())
    };
    let (Some(lan_a), Some(lan_b)) = (lan(a), lan(b)) else {
        return Vec::new();
    };
    let mut legs = Vec::new();
    for n in t.nodes.iter().filter(|n| n.role() != Role::Sink) {
        let other = if n.site == a {
            &lan_b
        } else if n.site == b {
            &lan_a
        } else {
            continue;
        };
        if let Some((_, address)) = t.node_networks(n).into_iter().find(|(net, _)| net == other) {
            legs.push(Leg {
                node: n.name.clone(),
                network: other.clone(),
                address,
            });
        }
    }
    legs
}

/// The legs of `site`'s nodes on `zone`.
pub fn zone_legs(t: &Topology, zone: &str, site: &str) -> Vec<Leg> {
    t.nodes
        .iter()
        .filter(|n| n.site == site && n.role() != Role::Sink)
        .filter_map(|n| {
            let (_, address) = t
                .node_networks(n)
                .into_iter()
                .find(|(net, _)| net == zone)?;
            Some(Leg {
                node: n.name.clone(),
                network: zone.to_string(),
                address,
            })
        })
        .collect()
}

impl Fault {
    /// Seconds after `at` until which no conflicting fault may start.
    fn window_end(&self) -> f64 {
        let margin = match (self.kind, self.role.as_str()) {
            (Kind::SiteDown | Kind::Partition | Kind::ZoneCut, _) => 15.0,
            (_, "store") => 10.0,
            _ => 5.0,
        };
        self.at + self.hold + margin
    }

    fn overlaps(&self, other: &Fault) -> bool {
        self.at < other.window_end() && other.at < self.window_end()
    }

    pub fn conflicts(&self, other: &Fault) -> bool {
        self.kind.exclusive() || other.kind.exclusive() || self.role == other.role
    }
}

/// The knobs of a schedule.
#[derive(Debug, Clone)]
pub struct Params {
    pub seed: u64,
    pub faults: usize,
    pub span: Duration,
    pub max_concurrent: usize,
    /// Plan partitions (the backend can cut network legs).
    pub partitions: bool,
}

/// The roles a campaign may hit (rule 5).
pub const TARGET_ROLES: [Role; 9] = [
    Role::Store,
    Role::Relay,
    Role::Router,
    Role::Redirector,
    Role::Dns,
    Role::Transfer,
    Role::InetMx,
    Role::Intranet,
    Role::Supervisor,
];

/// The schedule for `params` on `topology`, ordered by start time. Faults the rules leave no room
/// for are dropped (the caller reports how many were planned).
pub fn generate(topology: &Topology, params: &Params) -> Vec<Fault> {
    let mut rng = ChaCha8Rng::seed_from_u64(params.seed);
    let span = params.span.as_secs_f64();
    let warmup = (span * 0.05).max(3.0);
    let last_start = span * 0.8;
    let sites: Vec<String> = topology.sites.iter().map(|s| s.name.clone()).collect();
    let site_downs = if params.faults >= 4 && sites.len() > 1 {
        (params.faults / 12).max(1)
    } else {
        0
    };
    let roles: Vec<Role> = TARGET_ROLES
        .into_iter()
        .filter(|r| topology.nodes_with_role(*r).next().is_some())
        .collect();
    let mut wanted: Vec<Fault> = Vec::with_capacity(params.faults);
    let mut role_cycle: Vec<Role> = Vec::new();
    let partitions = if params.partitions && sites.len() > 1 && params.faults >= 4 {
        (params.faults / 12).max(1)
    } else {
        0
    };
    let zones: Vec<String> = topology
        .zones
        .iter()
        .filter(|z| z.site.is_none())
        .map(|z| z.name.clone())
        .collect();
    for i in 0..params.faults {
        let p = i.wrapping_sub(site_downs);
        if i >= site_downs && p < 2 * partitions {
            // Partitions and zone cuts alternate; the sites and zones take turns.
            let k = p / 2;
            let (a, b) = (&sites[k % sites.len()], &sites[(k + 1) % sites.len()]);
            let fault = if p % 2 == 0 {
                Fault {
                    id: 0,
                    kind: Kind::Partition,
                    target: format!("{a}|{b}"),
                    site: a.clone(),
                    nodes: Vec::new(),
                    role: "partition".into(),
                    at: 0.0,
                    hold: rng.random_range(10.0..25.0),
                    legs: partition_legs(topology, a, b),
                }
            } else {
                let zone = zones
                    .get((k / sites.len()) % zones.len().max(1))
                    .map_or("", String::as_str);
                Fault {
                    id: 0,
                    kind: Kind::ZoneCut,
                    target: format!("{zone}/{a}"),
                    site: a.clone(),
                    nodes: Vec::new(),
                    role: "partition".into(),
                    at: 0.0,
                    hold: rng.random_range(8.0..20.0),
                    legs: if zone.is_empty() {
                        Vec::new()
                    } else {
                        zone_legs(topology, zone, a)
                    },
                }
            };
            if !fault.legs.is_empty() {
                wanted.push(fault);
                continue;
            }
        }
        if i < site_downs {
            let site = sites[i % sites.len()].clone();
            let nodes: Vec<String> = topology
                .nodes
                .iter()
                .filter(|n| n.site == site && n.role() != Role::Sink)
                .map(|n| n.name.clone())
                .collect();
            wanted.push(Fault {
                id: 0,
                kind: Kind::SiteDown,
                target: site.clone(),
                site,
                nodes,
                role: "site".into(),
                at: 0.0,
                hold: rng.random_range(8.0..15.0),
                legs: Vec::new(),
            });
            continue;
        }
        if role_cycle.is_empty() {
            role_cycle = roles.clone();
            role_cycle.shuffle(&mut rng);
        }
        let Some(role) = role_cycle.pop() else { break };
        let candidates: Vec<_> = topology.nodes_with_role(role).collect();
        let node = candidates[rng.random_range(0..candidates.len())];
        let kind = match rng.random_range(0..100) {
            0..45 => Kind::Kill,
            45..75 => Kind::Pause,
            _ => Kind::Restart,
        };
        let hold = match kind {
            Kind::Kill => rng.random_range(2.0..10.0),
            Kind::Pause => rng.random_range(1.0..8.0),
            _ => 0.0,
        };
        wanted.push(Fault {
            id: 0,
            kind,
            target: node.name.clone(),
            site: node.site.clone(),
            nodes: vec![node.name.clone()],
            role: role.as_str().to_string(),
            at: 0.0,
            hold,
            legs: Vec::new(),
        });
    }
    wanted.shuffle(&mut rng);
    let mut placed: Vec<Fault> = Vec::with_capacity(wanted.len());
    for mut fault in wanted {
        for _ in 0..200 {
            fault.at = rng.random_range(warmup..last_start.max(warmup + 1.0));
            if allowed(&fault, &placed, params.max_concurrent) {
                placed.push(fault);
                break;
            }
        }
    }
    placed.sort_by(|a, b| a.at.total_cmp(&b.at));
    for (i, f) in placed.iter_mut().enumerate() {
        f.id = i + 1;
        f.at = (f.at * 10.0).round() / 10.0;
        f.hold = (f.hold * 10.0).round() / 10.0;
    }
    placed
}

/// Whether `fault` may join `placed` under rules 2 to 4.
fn allowed(fault: &Fault, placed: &[Fault], max_concurrent: usize) -> bool {
    let overlapping: Vec<&Fault> = placed.iter().filter(|p| p.overlaps(fault)).collect();
    if overlapping.iter().any(|p| p.conflicts(fault)) {
        return false;
    }
    // Rule 2: count the overlaps at each start inside the new window (the maximum is at a start).
    let mut starts: Vec<f64> = vec![fault.at];
    starts.extend(overlapping.iter().map(|p| p.at).filter(|t| *t > fault.at));
    starts.iter().all(|t| {
        let live = overlapping
            .iter()
            .filter(|p| p.at <= *t && *t < p.window_end())
            .count();
        live < max_concurrent
    })
}

/// The schedule as lines for the operator (and for a replay to compare).
pub fn describe(faults: &[Fault]) -> String {
    let mut out = String::new();
    for f in faults {
        let hold = match f.kind {
            Kind::Restart => String::new(),
            _ => format!(" for {:.1}s", f.hold),
        };
        out.push_str(&format!(
            "  #{:<3} t+{:>6.1}s  {:<9} {}{hold}\n",
            f.id,
            f.at,
            f.kind.as_str(),
            f.target
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn two_site() -> Topology {
        let path =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../topology/two-site.toml");
        Topology::load(path).expect("the default topology loads")
    }

    fn params(seed: u64, faults: usize, span: u64) -> Params {
        Params {
            seed,
            faults,
            span: Duration::from_secs(span),
            max_concurrent: 2,
            partitions: false,
        }
    }

    #[test]
    fn a_seed_replays_the_same_schedule() {
        let t = two_site();
        let a = describe(&generate(&t, &params(42, 20, 300)));
        let b = describe(&generate(&t, &params(42, 20, 300)));
        let c = describe(&generate(&t, &params(43, 20, 300)));
        assert_eq!(a, b);
        assert_ne!(a, c);
    }

    #[test]
    fn the_rules_hold_and_every_role_is_hit() {
        let t = two_site();
        for seed in 0..50 {
            let faults = generate(&t, &params(seed, 50, 900));
            assert!(
                faults.len() >= 45,
                "seed {seed}: only {} placed",
                faults.len()
            );
            for (i, a) in faults.iter().enumerate() {
                assert!(
                    a.nodes
                        .iter()
                        .all(|n| t.node(n).is_some_and(|n| n.role() != Role::Sink))
                );
                for b in &faults[i + 1..] {
                    if a.overlaps(b) {
                        assert!(
                            !a.conflicts(b),
                            "seed {seed}: #{} and #{} conflict",
                            a.id,
                            b.id
                        );
                    }
                }
                let live = faults
                    .iter()
                    .filter(|b| b.at <= a.at && a.at < b.window_end())
                    .count();
                assert!(live <= 2, "seed {seed}: {live} faults at once at #{}", a.id);
            }
            for role in TARGET_ROLES {
                assert!(
                    faults.iter().any(|f| f.role == role.as_str()),
                    "seed {seed}: {role} never hit"
                );
            }
            assert!(faults.iter().any(|f| f.kind == Kind::SiteDown));
        }
    }

    #[test]
    fn partitions_cut_every_leg_between_the_sites_and_only_those() {
        let docker = fabric::compose::plan(&two_site())
            .expect("docker plan")
            .topology;
        let legs = partition_legs(&docker, "west", "east");
        let west = docker
            .nodes
            .iter()
            .filter(|n| n.site == "west" && n.role() != Role::Sink);
        let east = docker.nodes.iter().filter(|n| n.site == "east");
        // Every node but the sink has a leg on the other site's LAN, and loses exactly it.
        assert_eq!(legs.len(), west.clone().count() + east.clone().count());
        for n in west {
            assert!(legs.contains(&Leg {
                node: n.name.clone(),
                network: "lan-east".into(),
                address: n.networks["lan-east"],
            }));
        }
        for n in east {
            assert!(
                legs.iter()
                    .any(|l| l.node == n.name && l.network == "lan-west")
            );
        }
        assert!(legs.iter().all(|l| !l.node.starts_with("sink")));
        // Cutting the Internet off west takes the legs of west's routers, relays and dns there.
        let cut = zone_legs(&docker, "internet", "west");
        let mut names: Vec<&str> = cut.iter().map(|l| l.node.as_str()).collect();
        names.sort();
        assert_eq!(
            names,
            [
                "dns-w",
                "relay-w1",
                "relay-w2",
                "router-inet-w1",
                "router-inet-w2"
            ]
        );
        let mut p = params(11, 50, 900);
        p.partitions = true;
        let faults = generate(&docker, &p);
        let parts: Vec<&Fault> = faults
            .iter()
            .filter(|f| matches!(f.kind, Kind::Partition | Kind::ZoneCut))
            .collect();
        assert!(
            parts.iter().any(|f| f.kind == Kind::Partition),
            "{}",
            describe(&faults)
        );
        assert!(
            parts.iter().any(|f| f.kind == Kind::ZoneCut),
            "{}",
            describe(&faults)
        );
        for f in &parts {
            assert!(!f.legs.is_empty());
            assert!(
                faults.iter().all(|o| o.id == f.id || !o.overlaps(f)),
                "#{} overlaps another fault",
                f.id
            );
        }
    }

    #[test]
    fn a_short_campaign_fits_its_faults() {
        let t = two_site();
        let faults = generate(&t, &params(7, 8, 90));
        assert!(faults.len() >= 6, "{}", describe(&faults));
        assert!(faults.iter().all(|f| f.at >= 4.5 && f.at <= 72.0));
    }
}
