//! The access-list plan of every router of `topology/two-site.toml`: for each (zone, router,
//! port) which flows pass, where they go, and which are refused under which rule. No process needed.

mod common;

use router::{Action, Plan};
use topology::Role;

const GUARDED: [&str; 6] = ["smtp", "submission", "pop3", "imap", "store", "admin"];

#[test]
fn the_snippet_has_two_routers_per_zone_per_site_and_validates() {
    let t = common::edge_topology().expect("two-site + edge routers + redirectors is valid");
    for site in ["west", "east"] {
        for zone in ["internet", "isolated"] {
            assert_eq!(t.routers(site, zone).len(), 2, "{site} {zone}");
        }
    }
    assert_eq!(t.nodes_with_role(Role::Router).count(), 8);
    for r in t.nodes_with_role(Role::Router) {
        let ports: Vec<&str> = r.ports.keys().map(String::as_str).collect();
        let mut want = GUARDED.to_vec();
        want.sort_unstable();
        assert_eq!(ports, want, "{} guards every service port", r.name);
        assert_eq!(r.admin, 9180);
    }
}

#[test]
fn every_router_forwards_only_its_zone_services_and_refuses_the_rest() {
    let t = common::edge_topology().expect("valid");
    for node in t.nodes_with_role(Role::Router) {
        let plan = Plan::build(&t, node).expect("a plan");
        let other = if node.site == "west" { "east" } else { "west" };
        let short = if plan.zone == "internet" {
            "inet"
        } else {
            "iso"
        };
        let allowed: &[&str] = if plan.zone == "internet" {
            &["smtp"]
        } else {
            &["submission", "pop3", "imap"]
        };
        assert_eq!(plan.ports.len(), GUARDED.len());
        for g in &plan.ports {
            assert_eq!(g.listen.ip(), std::net::IpAddr::V4(node.address));
            match &g.action {
                Action::Forward(ups) => {
                    assert!(
                        allowed.contains(&g.service.as_str()),
                        "{} must not forward {}",
                        node.name,
                        g.service
                    );
                    let names: Vec<&str> = ups.iter().map(|u| u.name.as_str()).collect();
                    let local = format!("redirector-{short}-{}", &node.site[..1]);
                    let remote = format!("redirector-{short}-{}", &other[..1]);
                    assert_eq!(names, [local.as_str(), remote.as_str()], "{}", node.name);
                    assert_eq!(ups[0].path, "local");
                    assert_eq!(ups[1].path, "other_site");
                    let r = t.node(&ups[0].name).expect("redirector");
                    assert_eq!(Some(ups[0].addr), r.service_addr(&g.service));
                }
                Action::Refuse { rule } => {
                    assert!(
                        !allowed.contains(&g.service.as_str()),
                        "{} must forward {}",
                        node.name,
                        g.service
                    );
                    assert_eq!(rule, &format!("{}:{}", plan.zone, g.service));
                }
            }
        }
    }
}

#[test]
fn no_internet_router_reaches_an_intranet_server_or_a_store() {
    let t = common::edge_topology().expect("valid");
    let inside: Vec<std::net::IpAddr> = t
        .nodes
        .iter()
        .filter(|n| matches!(n.role(), Role::Intranet | Role::Store))
        .map(|n| std::net::IpAddr::V4(n.address))
        .collect();
    for node in t
        .routers("west", "internet")
        .into_iter()
        .chain(t.routers("east", "internet"))
    {
        let plan = Plan::build(&t, node).expect("a plan");
        for g in &plan.ports {
            if let Action::Forward(ups) = &g.action {
                for u in ups {
                    assert!(
                        !inside.contains(&u.addr.ip()),
                        "{} -> {}",
                        node.name,
                        u.name
                    );
                    let target = t.node(&u.name).expect("node");
                    assert_eq!(target.role(), Role::Redirector);
                    assert_eq!(target.zones, ["internet"]);
                }
            }
        }
    }
}
