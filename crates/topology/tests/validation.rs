//! Topology files: the shipped ones load, and each rule names the file, the node and the field.

use std::path::{Path, PathBuf};

use topology::{Role, Topology};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn two_site_text() -> String {
    std::fs::read_to_string(root().join("topology/two-site.toml"))
        .expect("two-site.toml is readable")
}

/// two-site.toml without its edge (redirectors, routers, DNS servers, access lists), for tests that
/// add their own.
fn two_site_without_edge_nodes() -> String {
    let mut t =
        Topology::parse(&two_site_text(), Path::new("two-site.toml")).expect("two-site is valid");
    t.nodes
        .retain(|n| !matches!(n.role(), Role::Redirector | Role::Router | Role::Dns));
    t.acls.clear();
    t.to_toml().expect("serializes")
}

/// Parses `text` as if it were `bad.toml` and returns the problems (panics if it was valid).
fn problems(text: &str) -> (String, Vec<String>) {
    let err = Topology::parse(text, Path::new("bad.toml")).expect_err("topology must be refused");
    (err.to_string(), err.problems().to_vec())
}

fn assert_problem(text: &str, expected: &[&str]) {
    let (display, problems) = problems(text);
    assert!(
        display.starts_with("bad.toml"),
        "error names the file: {display}"
    );
    assert!(
        problems
            .iter()
            .any(|p| expected.iter().all(|e| p.contains(e))),
        "expected a problem containing {expected:?}, got {problems:#?}"
    );
}

#[test]
fn shipped_topologies_are_valid() {
    let two = Topology::load(root().join("topology/two-site.toml")).expect("two-site loads");
    assert_eq!(two.sites.len(), 2);
    assert_eq!(two.nodes_with_role(Role::Store).count(), 4);
    for site in ["west", "east"] {
        let stores = two
            .nodes_with_role(Role::Store)
            .filter(|n| n.site == site)
            .count();
        assert_eq!(stores, 2, "two stores in {site}");
    }
    let w1 = two.mirror_of("store-w1");
    assert_eq!(w1.other_site.as_deref(), Some("store-e1"));
    assert_eq!(w1.same_site.as_deref(), Some("store-w2"));
    assert_eq!(two.home_of_domain("ACME.example"), Some("west"));
    // Defaults from the design brief.
    assert_eq!(two.timing.relay_retry.as_secs(), 30);
    assert_eq!(two.timing.transfer_sweep.as_secs(), 30);
    assert_eq!(two.timing.archive_retention.as_secs(), 15 * 24 * 3600);
    let mini = Topology::load(root().join("topology/mini.toml")).expect("mini loads");
    assert_eq!(mini.sites.len(), 1);
    assert_eq!(mini.mirrored_by("store-b"), vec!["store-a".to_string()]);
}

#[test]
fn timing_defaults_apply_when_absent() {
    let text = two_site_text();
    let start = text.find("[timing]").expect("has timing");
    let end = text.find("[limits]").expect("has limits");
    let without = format!("{}{}", &text[..start], &text[end..]);
    let t = Topology::parse(&without, Path::new("x.toml")).expect("valid without [timing]");
    assert_eq!(t.timing.relay_retry.as_secs(), 30);
    assert_eq!(t.timing.archive_retention.as_secs(), 15 * 24 * 3600);
}

#[test]
fn duplicate_address_names_both_nodes() {
    let text = two_site_text().replace("address = \"127.1.0.12\"", "address = \"127.1.0.11\"");
    assert_problem(
        &text,
        &["node \"store-w2\"", "field \"address\"", "store-w1"],
    );
}

#[test]
fn duplicate_port_on_a_node() {
    let text = two_site_text().replacen("ports = { store = 7100 }", "ports = { store = 9100 }", 1);
    assert_problem(&text, &["node \"store-w1\"", "ports.store", "9100"]);
}

#[test]
fn unknown_role_lists_the_known_ones() {
    let text = two_site_text().replacen("role = \"store\"", "role = \"mailman\"", 1);
    assert_problem(
        &text,
        &["node \"store-w1\"", "field \"role\"", "mailman", "inet-mx"],
    );
}

#[test]
fn address_outside_its_zone() {
    let text = two_site_text().replace("address = \"127.2.0.12\"", "address = \"127.9.0.12\"");
    assert_problem(
        &text,
        &[
            "node \"store-e2\"",
            "field \"address\"",
            "outside",
            "lan-east",
        ],
    );
}

#[test]
fn node_in_the_other_sites_lan() {
    let text = two_site_text().replacen("zones = [\"lan-west\"]", "zones = [\"lan-east\"]", 1);
    assert_problem(&text, &["node \"store-w1\"", "field \"zones\"", "lan-east"]);
}

#[test]
fn missing_mirror() {
    let text = two_site_text().replace(
        "store-w1 = { other_site = \"store-e1\", same_site = \"store-w2\" }",
        "store-w1 = { same_site = \"store-w2\" }",
    );
    assert_problem(&text, &["mirrors.\"store-w1\"", "other_site", "missing"]);
}

#[test]
fn mirror_in_the_wrong_site() {
    let text = two_site_text().replace(
        "store-w1 = { other_site = \"store-e1\", same_site = \"store-w2\" }",
        "store-w1 = { other_site = \"store-w2\", same_site = \"store-e2\" }",
    );
    assert_problem(&text, &["mirrors.\"store-w1\"", "other_site", "same site"]);
    assert_problem(
        &text,
        &["mirrors.\"store-w1\"", "same_site", "store-e2", "east"],
    );
}

#[test]
fn mirror_that_is_not_a_store() {
    let text = two_site_text().replace("store-e1 = { other_site", "store-zz = { other_site");
    assert_problem(&text, &["mirrors.\"store-zz\"", "no store"]);
}

#[test]
fn unknown_field_is_a_parse_error_with_position() {
    let text = two_site_text().replacen("admin = 9100", "admin = 9100\nadmn = 1", 1);
    let err = Topology::parse(&text, Path::new("bad.toml")).expect_err("refused");
    let msg = err.to_string();
    assert!(msg.contains("bad.toml") && msg.contains("admn"), "{msg}");
}

#[test]
fn offset_ports_moves_every_port() {
    let mut t = Topology::load(root().join("topology/mini.toml")).expect("mini loads");
    t.offset_ports(300).expect("fits");
    let a = t.node("store-a").expect("store-a");
    assert_eq!(a.admin, 9400);
    assert_eq!(a.ports["store"], 7400);
    assert!(t.offset_ports(u16::MAX).is_err());
    let text = t.to_toml().expect("serializes");
    let again = Topology::parse(&text, Path::new("relocated.toml")).expect("round-trips");
    assert_eq!(again.node("store-b").expect("store-b").ports["store"], 7400);
}

#[test]
fn sink_must_be_in_an_internet_zone() {
    let two = Topology::load(root().join("topology/two-site.toml")).expect("two-site loads");
    let sink = two
        .nodes_with_role(Role::Sink)
        .next()
        .expect("two-site has a sink node");
    assert_eq!(sink.name, "outside");
    assert_eq!(Role::Sink.required_ports(), &["smtp", "sms"]);
    // The same node moved into the west LAN: refused, naming the node and the field.
    let text = two_site_text().replace(
        "zones = [\"internet\"]\naddress = \"127.10.9.1\"",
        "zones = [\"lan-west\"]\naddress = \"127.1.9.1\"",
    );
    assert_problem(
        &text,
        &["node \"outside\"", "field \"zones\"", "Internet-kind zone"],
    );
    // And without its sms port.
    let text = two_site_text().replace(
        "ports = { smtp = 2525, sms = 8025 }",
        "ports = { smtp = 2525 }",
    );
    assert_problem(&text, &["node \"outside\"", "ports.sms", "sink"]);
}

/// The west site's Internet edge: an access list, two routers and a redirector.
const WEST_INTERNET_EDGE: &str = r#"
[[acl]]
zone = "internet"
allow = ["smtp"]

[[node]]
name = "router-x1"
role = "router"
site = "west"
zones = ["internet"]
address = "127.10.1.201"
ports = { smtp = 2525, imap = 1143, store = 7100 }
admin = 9180

[[node]]
name = "router-x2"
role = "router"
site = "west"
zones = ["internet"]
address = "127.10.1.202"
ports = { smtp = 2525 }
admin = 9180

[[node]]
name = "redirector-x"
role = "redirector"
site = "west"
zones = ["internet"]
address = "127.10.1.205"
ports = { smtp = 2525 }
admin = 9100
"#;

#[test]
fn edge_nodes_know_where_they_forward() {
    let text = format!("{}{WEST_INTERNET_EDGE}", two_site_without_edge_nodes());
    let t = Topology::parse(&text, Path::new("edge.toml")).expect("edge topology is valid");
    assert!(t.acl_allows("internet", "smtp"));
    assert!(!t.acl_allows("internet", "imap"));
    assert!(!t.acl_allows("isolated", "smtp"));
    assert_eq!(
        t.redirector("west", "internet").map(|n| n.name.as_str()),
        Some("redirector-x")
    );
    assert!(t.redirector("east", "internet").is_none());
    let routers: Vec<_> = t
        .routers("west", "internet")
        .iter()
        .map(|n| n.name.clone())
        .collect();
    assert_eq!(routers, ["router-x1", "router-x2"]);
    let backends: Vec<_> = t
        .backends("west", "internet", "smtp")
        .iter()
        .map(|n| n.name.clone())
        .collect();
    assert_eq!(backends, ["inet-mx-w1", "inet-mx-w2"]);
    assert!(t.backends("west", "internet", "imap").is_empty());
    let proxies = t.proxy_addresses();
    assert_eq!(proxies.len(), 3);
    assert!(proxies.contains(&"127.10.1.205".parse().expect("an address")));
    assert_eq!(t.edge.check_interval.as_millis(), 250);
    assert_eq!((t.edge.check_fall, t.edge.check_rise), (2, 2));
}

#[test]
fn router_that_forwards_needs_a_redirector() {
    let edge = WEST_INTERNET_EDGE.replace("role = \"redirector\"", "role = \"inet-mx\"");
    assert_problem(
        &format!("{}{edge}", two_site_without_edge_nodes()),
        &["router-x1", "has no redirector"],
    );
}

#[test]
fn acl_allows_only_mail_services_in_edge_zones() {
    let bad = "\n[[acl]]\nzone = \"lan-west\"\nallow = [\"store\"]\n";
    let text = format!("{}{bad}", two_site_without_edge_nodes());
    assert_problem(&text, &["zone \"lan-west\"", "not a LAN"]);
    assert_problem(&text, &["\"store\"", "not a mail service"]);
}

#[test]
fn redirector_balances_mail_services_only() {
    let edge = WEST_INTERNET_EDGE.replace(
        "ports = { smtp = 2525 }\nadmin = 9100",
        "ports = { smtp = 2525, store = 7100 }\nadmin = 9100",
    );
    assert_problem(
        &format!("{}{edge}", two_site_without_edge_nodes()),
        &["redirector-x", "ports.store", "mail services only"],
    );
}
