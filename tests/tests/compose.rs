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
}
