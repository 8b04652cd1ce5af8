//! `fabric compose`'s plan of the default two-site fabric: which container sits on which network with
//! which address, so that the access lists are backed by the networks (no docker needed here;
//! `make test-docker` deploys it).

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;

use fabric::compose::{self, Deployment, RenderOptions};
use topology::{Role, Topology, ZoneKind};

fn two_site() -> Deployment {
    let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("../topology/two-site.toml");
    let topology = Topology::load(&file).expect("two-site topology");
    compose::plan(&topology).expect("plan")
}

fn ip(s: &str) -> Ipv4Addr {
    s.parse().expect("address")
}

#[test]
fn zones_become_internal_networks_with_mapped_subnets() {
    let d = two_site();
    let nets: Vec<(&str, String)> = d
        .networks
        .iter()
        .map(|n| (n.name.as_str(), n.subnet.to_string()))
        .collect();
    assert_eq!(
        nets,
        [
            ("internet", "10.10.0.0/16".to_string()),
            ("isolated", "10.20.0.0/16".to_string()),
            ("lan-west", "10.1.0.0/16".to_string()),
            ("lan-east", "10.2.0.0/16".to_string()),
        ]
    );
    for n in &d.networks {
        assert!(n.subnet.contains(&n.gateway), "{}: gateway inside", n.name);
    }
    // The docker topology validates (plan() parses it) and its zones are the networks.
    for (z, n) in d.topology.zones.iter().zip(&d.networks) {
        assert_eq!(z.cidr, n.subnet);
    }
}

#[test]
fn a_zone_whose_subnet_is_in_use_moves_to_a_free_block_and_its_nodes_keep_their_offsets() {
    let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("../topology/two-site.toml");
    let topology = Topology::load(&file).expect("two-site topology");
    let mapped = compose::plan(&topology).expect("plan");
    // Another network holds part of lan-west's place, and a host route the next /16 (10.3/16 is
    // where lan-west would go next, so it goes one further).
    let taken: Vec<ipnet::Ipv4Net> = ["10.1.128.0/24", "10.3.0.0/16"]
        .iter()
        .map(|s| s.parse().expect("subnet"))
        .collect();
    let moved = compose::plan_avoiding(&topology, &taken).expect("plan avoiding");
    let subnet = |d: &Deployment, zone: &str| d.network(zone).expect("zone").subnet.to_string();
    assert_eq!(subnet(&moved, "lan-west"), "10.4.0.0/16");
    for zone in ["internet", "isolated", "lan-east"] {
        assert_eq!(subnet(&moved, zone), subnet(&mapped, zone), "{zone} stays");
    }
    for n in &moved.networks {
        for t in &taken {
            assert!(
                !n.subnet.contains(&t.network()) && !t.contains(&n.subnet.network()),
                "{} overlaps {t}",
                n.name
            );
        }
        assert!(n.subnet.contains(&n.gateway), "{}: gateway inside", n.name);
    }
    // Every container keeps its host offset on the moved network, and the docker topology says so.
    let west = moved.network("lan-west").expect("lan-west").subnet;
    let old = mapped.network("lan-west").expect("lan-west").subnet;
    let mut on_west = 0;
    for (m, o) in moved.services.iter().zip(&mapped.services) {
        assert_eq!(m.node, o.node);
        let (a, b) = (m.addresses["lan-west"], o.addresses["lan-west"]);
        assert!(west.contains(&a), "{}: {a} on {west}", m.node);
        assert_eq!(
            u32::from(a) - u32::from(west.network()),
            u32::from(b) - u32::from(old.network())
        );
        on_west += 1;
    }
    assert_eq!(
        on_west,
        moved.services.len(),
        "every node has a leg on lan-west"
    );
    let node = moved.topology.node("inet-mx-w1").expect("inet-mx-w1");
    assert_eq!(node.address, ip("10.4.10.11"));
    let zone = moved
        .topology
        .zones
        .iter()
        .find(|z| z.name == "lan-west")
        .expect("zone");
    assert_eq!(zone.cidr, west);

    // Nothing free at all: a clear error naming the zone.
    let everything: Vec<ipnet::Ipv4Net> = ["10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16"]
        .iter()
        .map(|s| s.parse().expect("subnet"))
        .collect();
    let err = compose::plan_avoiding(&topology, &everything).expect_err("no room");
    assert!(err.to_string().contains("zone \"internet\""), "{err}");
}

#[test]
fn only_the_nodes_the_dns_names_sit_in_a_zone_and_routers_alone_in_the_isolated_one() {
    let d = two_site();
    let zones: Vec<&str> = d
        .networks
        .iter()
        .filter(|n| n.kind != ZoneKind::Lan)
        .map(|n| n.name.as_str())
        .collect();
    let lans: Vec<&str> = d
        .networks
        .iter()
        .filter(|n| n.kind == ZoneKind::Lan)
        .map(|n| n.name.as_str())
        .collect();
    for s in &d.services {
        let in_zone: Vec<&&str> = zones
            .iter()
            .filter(|z| s.addresses.contains_key(**z))
            .collect();
        if compose::faces_zone(s.role) {
            assert_eq!(in_zone.len(), 1, "{}: in exactly one zone", s.node);
        } else {
            assert!(in_zone.is_empty(), "{} must sit behind the routers", s.node);
        }
        if s.addresses.contains_key("isolated") {
            assert_eq!(s.role, Role::Router, "{} in the isolated zone", s.node);
        }
        for lan in &lans {
            assert!(s.addresses.contains_key(*lan), "{}: a leg on {lan}", s.node);
        }
        // The admin port (health checks, /metrics) is on the node's own site's LAN.
        let SocketAddr::V4(admin) = s.admin else {
            panic!("v4")
        };
        let node = d.topology.node(&s.node).expect("node");
        let own_lan = d
            .topology
            .zones
            .iter()
            .find(|z| z.kind == ZoneKind::Lan && z.site.as_deref() == Some(node.site.as_str()))
            .expect("lan");
        assert!(
            own_lan.cidr.contains(admin.ip()),
            "{}: admin {admin} on {}",
            s.node,
            own_lan.name
        );
    }
}

#[test]
fn addresses_map_from_loopback_and_are_unique() {
    let d = two_site();
    let t = &d.topology;
    let addr = |n: &str| t.node(n).expect(n).address;
    assert_eq!(addr("store-w1"), ip("10.1.0.11"));
    assert_eq!(addr("store-e2"), ip("10.2.0.12"));
    assert_eq!(addr("router-inet-w1"), ip("10.10.1.1"));
    assert_eq!(addr("router-iso-e2"), ip("10.20.2.2"));
    assert_eq!(addr("dns-e"), ip("10.10.2.53"));
    assert_eq!(addr("relay-w1"), ip("10.10.1.21"));
    // Behind the routers: on the site's LAN.
    assert_eq!(addr("inet-mx-w1"), ip("10.1.10.11"));
    assert_eq!(addr("intranet-e2"), ip("10.2.20.12"));
    assert_eq!(addr("redirector-inet-w"), ip("10.1.10.5"));
    let router = t.node("router-inet-w1").expect("router");
    // `outside` (127.10.9.1, earlier in the file) took 10.1.10.1: the next free one.
    assert_eq!(router.admin_address, Some(ip("10.1.10.2")));
    assert_eq!(router.networks.get("lan-east"), Some(&ip("10.2.110.2")));
    assert_eq!(router.source_ip(), Ipv4Addr::UNSPECIFIED);

    let mut seen = BTreeSet::new();
    for s in &d.services {
        for (net, a) in &s.addresses {
            let n = d.network(net).expect("network");
            assert!(n.subnet.contains(a), "{}: {a} in {net}", s.node);
            assert_ne!(*a, n.gateway, "{}: the gateway", s.node);
            assert!(seen.insert(*a), "{a} twice");
        }
    }
    // The PROXY header and the relays' fabric ids are trusted from every address of theirs.
    assert!(t.proxy_addresses().contains(&ip("10.2.110.2")));
    assert!(t.relay_addresses().contains(&ip("10.1.10.21")));
}

#[test]
fn every_refused_flow_targets_a_network_the_zone_is_not_on() {
    let d = two_site();
    for zone in ["internet", "isolated"] {
        let net = d.network(zone).expect("zone");
        let refused = compose::refused_flows(&d, zone);
        let services: BTreeSet<&str> = refused
            .iter()
            .filter_map(|(what, _)| what.rsplit_once(':').map(|(_, s)| s))
            .collect();
        let expected: &[&str] = if zone == "internet" {
            &["admin", "imap", "pop3", "store", "submission"]
        } else {
            &["admin", "smtp", "store"]
        };
        assert_eq!(services.into_iter().collect::<Vec<_>>(), expected);
        // Every node's admin port is among them, and none of them is on the zone's network.
        assert!(refused.len() >= d.services.len());
        for (what, addr) in &refused {
            let SocketAddr::V4(a) = addr else {
                panic!("v4")
            };
            assert!(!net.subnet.contains(a.ip()), "{what} ({addr}) is on {zone}");
        }
        let allowed = compose::allowed_flows(&d, zone);
        assert_eq!(allowed.len(), if zone == "internet" { 4 } else { 12 });
        for (what, addr) in &allowed {
            let SocketAddr::V4(a) = addr else {
                panic!("v4")
            };
            assert!(net.subnet.contains(a.ip()), "{what} ({addr}) not on {zone}");
        }
    }
}

#[test]
fn the_compose_file_has_a_service_per_node_with_health_checks_and_store_volumes() {
    let d = two_site();
    let yaml = compose::render(
        &d,
        &RenderOptions {
            image: "mailfabric:latest".into(),
            topology: "./topology.toml".into(),
            tls_dir: "./var/tls".into(),
            source: "topology/two-site.toml".into(),
            stop_grace_secs: 15,
        },
    );
    assert_eq!(yaml.matches("    internal: true").count(), 4);
    assert_eq!(yaml.matches("    healthcheck:").count(), d.services.len());
    assert_eq!(
        yaml.matches("./var/tls:/fabric/tls:ro").count(),
        d.services.len()
    );
    assert!(yaml.contains(
        "command: [\"/usr/local/bin/fabric-store\", \"--topology\", \"/fabric/topology.toml\", \"--node\", \"store-w1\""
    ));
    assert!(yaml.contains("      - store-w1:/data\n"));
    assert!(yaml.contains("\"http://10.1.10.2:9180/health\"]"));
    assert!(yaml.contains("      lan-west:\n        ipv4_address: 10.1.0.11\n"));
    assert!(yaml.contains("  store-e2: {}\n"));
    // The supervisors (and only they) start standby containers through the engine's socket.
    let supervisors = d
        .services
        .iter()
        .filter(|s| s.role == Role::Supervisor)
        .count();
    assert_eq!(supervisors, 2);
    assert_eq!(
        yaml.matches("      FABRIC_STANDBYS: containers\n").count(),
        supervisors
    );
    assert_eq!(
        yaml.matches("      - /var/run/docker.sock:/var/run/docker.sock\n")
            .count(),
        supervisors
    );
}
