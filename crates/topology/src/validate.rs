//! The rules a topology must obey. Each problem names the node (or site, zone, domain) and the field.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use crate::model::{Role, Topology, ZoneKind};

/// Every rule violation in the topology, in file order; empty when it is valid.
pub(crate) fn problems(t: &Topology) -> Vec<String> {
    let mut p = Vec::new();
    if t.fabric.name.trim().is_empty() {
        p.push("[fabric] field \"name\": must not be empty".to_string());
    }
    check_sites(t, &mut p);
    check_zones(t, &mut p);
    check_domains(t, &mut p);
    check_nodes(t, &mut p);
    check_mirrors(t, &mut p);
    check_edge(t, &mut p);
    p
}

fn check_sites(t: &Topology, p: &mut Vec<String>) {
    if t.sites.is_empty() {
        p.push("[[site]]: at least one site is required".to_string());
    }
    let mut seen = BTreeSet::new();
    for s in &t.sites {
        if !seen.insert(&s.name) {
            p.push(format!("site {:?} field \"name\": defined twice", s.name));
        }
    }
}

fn check_zones(t: &Topology, p: &mut Vec<String>) {
    // Loopback, or a private range (the container networks `fabric compose` writes).
    let allowed: Vec<ipnet::Ipv4Net> = [
        "127.0.0.0/8",
        "10.0.0.0/8",
        "172.16.0.0/12",
        "192.168.0.0/16",
    ]
    .iter()
    .filter_map(|c| c.parse().ok())
    .collect();
    let mut seen = BTreeSet::new();
    for (i, z) in t.zones.iter().enumerate() {
        if !seen.insert(&z.name) {
            p.push(format!("zone {:?} field \"name\": defined twice", z.name));
        }
        if !allowed.iter().any(|a| a.contains(&z.cidr)) {
            p.push(format!(
                "zone {:?} field \"cidr\": {} is not inside 127.0.0.0/8 (or a private range)",
                z.name, z.cidr
            ));
        }
        match (z.kind, &z.site) {
            (ZoneKind::Lan, None) => p.push(format!(
                "zone {:?} field \"site\": a LAN zone must name its site",
                z.name
            )),
            (ZoneKind::Lan, Some(site)) if !t.sites.iter().any(|s| &s.name == site) => p.push(
                format!("zone {:?} field \"site\": unknown site {site:?}", z.name),
            ),
            (ZoneKind::Internet | ZoneKind::Isolated, Some(_)) => p.push(format!(
                "zone {:?} field \"site\": only LAN zones belong to a site",
                z.name
            )),
            _ => {}
        }
        for other in &t.zones[..i] {
            if other.cidr.contains(&z.cidr.network()) || z.cidr.contains(&other.cidr.network()) {
                p.push(format!(
                    "zone {:?} field \"cidr\": {} overlaps zone {:?} ({})",
                    z.name, z.cidr, other.name, other.cidr
                ));
            }
        }
    }
}

fn check_domains(t: &Topology, p: &mut Vec<String>) {
    let mut seen = BTreeSet::new();
    for d in &t.domains {
        if !seen.insert(d.name.to_ascii_lowercase()) {
            p.push(format!("domain {:?} field \"name\": defined twice", d.name));
        }
        if !t.sites.iter().any(|s| s.name == d.home) {
            p.push(format!(
                "domain {:?} field \"home\": unknown site {:?}",
                d.name, d.home
            ));
        }
    }
}

fn check_nodes(t: &Topology, p: &mut Vec<String>) {
    let mut names = BTreeSet::new();
    let mut addresses: BTreeMap<Ipv4Addr, &str> = BTreeMap::new();
    for n in &t.nodes {
        let at = format!("node {:?}", n.name);
        if !names.insert(&n.name) {
            p.push(format!("{at} field \"name\": defined twice"));
        }
        let role = match n.role.parse::<Role>() {
            Ok(r) => Some(r),
            Err(e) => {
                p.push(format!("{at} field \"role\": {e}"));
                None
            }
        };
        if !t.sites.iter().any(|s| s.name == n.site) {
            p.push(format!("{at} field \"site\": unknown site {:?}", n.site));
        }
        if n.zones.is_empty() {
            p.push(format!(
                "{at} field \"zones\": a node must be in at least one zone"
            ));
        }
        let mut in_a_zone = false;
        for zname in &n.zones {
            match t.zones.iter().find(|z| &z.name == zname) {
                None => p.push(format!("{at} field \"zones\": unknown zone {zname:?}")),
                Some(z) => {
                    if z.kind == ZoneKind::Lan && z.site.as_deref() != Some(n.site.as_str()) {
                        p.push(format!(
                            "{at} field \"zones\": zone {zname:?} is the LAN of site {:?}, not of {:?}",
                            z.site.as_deref().unwrap_or("?"),
                            n.site
                        ));
                    }
                    in_a_zone |= z.cidr.contains(&n.address);
                }
            }
        }
        // Behind the routers (docker), a server of a zone sits on its site's LAN.
        in_a_zone |= t.zones.iter().any(|z| {
            z.kind == ZoneKind::Lan
                && z.site.as_deref() == Some(n.site.as_str())
                && z.cidr.contains(&n.address)
        });
        if !n.zones.is_empty() && !in_a_zone {
            p.push(format!(
                "{at} field \"address\": {} is outside its zone(s) {}",
                n.address,
                n.zones.join(", ")
            ));
        }
        if let Some(other) = addresses.insert(n.address, &n.name) {
            p.push(format!(
                "{at} field \"address\": {} is already used by node {other:?}",
                n.address
            ));
        }
        check_networks(t, n, &mut addresses, p);
        let mut ports: BTreeMap<u16, &str> = BTreeMap::new();
        ports.insert(n.admin, "admin");
        for (service, port) in &n.ports {
            if *port == 0 {
                p.push(format!(
                    "{at} field \"ports.{service}\": port 0 is not allowed"
                ));
            }
            if let Some(other) = ports.insert(*port, service) {
                p.push(format!(
                    "{at} field \"ports.{service}\": port {port} is already used by {other}"
                ));
            }
        }
        if n.admin == 0 {
            p.push(format!("{at} field \"admin\": port 0 is not allowed"));
        }
        if let Some(role) = role {
            for required in role.required_ports() {
                if !n.ports.contains_key(*required) {
                    p.push(format!(
                        "{at} field \"ports.{required}\": a {role} node must declare it"
                    ));
                }
            }
            if matches!(role, Role::Sink | Role::Relay)
                && !n.zones.iter().any(|zname| {
                    t.zones
                        .iter()
                        .any(|z| &z.name == zname && z.kind == ZoneKind::Internet)
                })
            {
                p.push(format!(
                    "{at} field \"zones\": a {role} node faces the Internet and must be in an Internet-kind zone"
                ));
            }
            if role != Role::Store && n.quota_bytes.is_some() {
                p.push(format!(
                    "{at} field \"quota_bytes\": only stores have a quota"
                ));
            }
        }
    }
}

/// A node's other networks (docker): known zones, addresses inside them and used once; the admin
/// address one of the node's own.
fn check_networks<'t>(
    t: &'t Topology,
    n: &'t crate::model::Node,
    addresses: &mut BTreeMap<Ipv4Addr, &'t str>,
    p: &mut Vec<String>,
) {
    let at = format!("node {:?}", n.name);
    for (zname, address) in &n.networks {
        match t.zones.iter().find(|z| &z.name == zname) {
            None => p.push(format!("{at} field \"networks.{zname}\": unknown zone")),
            Some(z) if !z.cidr.contains(address) => p.push(format!(
                "{at} field \"networks.{zname}\": {address} is outside {}",
                z.cidr
            )),
            Some(_) => {}
        }
        if let Some(other) = addresses.insert(*address, &n.name) {
            p.push(format!(
                "{at} field \"networks.{zname}\": {address} is already used by node {other:?}"
            ));
        }
    }
    if let Some(admin) = n.admin_address
        && !n.addresses().any(|a| a == admin)
    {
        p.push(format!(
            "{at} field \"admin_address\": {admin} is not one of the node's addresses"
        ));
    }
}

fn check_mirrors(t: &Topology, p: &mut Vec<String>) {
    let stores: Vec<_> = t
        .nodes
        .iter()
        .filter(|n| n.role.parse::<Role>() == Ok(Role::Store))
        .collect();
    for origin in t.mirrors.keys() {
        if !stores.iter().any(|s| &s.name == origin) {
            p.push(format!(
                "mirrors.{origin:?}: no store named {origin:?} (mirrors are for stores)"
            ));
        }
    }
    for store in &stores {
        let at = format!("mirrors.{:?}", store.name);
        let m = t.mirrors.get(&store.name).cloned().unwrap_or_default();
        let other_sites_have_stores = stores.iter().any(|s| s.site != store.site);
        let own_site_has_others = stores
            .iter()
            .any(|s| s.site == store.site && s.name != store.name);
        match &m.other_site {
            None if other_sites_have_stores => p.push(format!(
                "{at} field \"other_site\": missing (store {:?} needs a mirror in another site)",
                store.name
            )),
            None => {}
            Some(name) => match stores.iter().find(|s| &s.name == name) {
                None => p.push(format!(
                    "{at} field \"other_site\": {name:?} is not a store"
                )),
                Some(s) if s.site == store.site => p.push(format!(
                    "{at} field \"other_site\": {name:?} is in site {:?}, the same site as {:?}",
                    s.site, store.name
                )),
                Some(_) => {}
            },
        }
        match &m.same_site {
            None if own_site_has_others => p.push(format!(
                "{at} field \"same_site\": missing (site {:?} has another store to take the copy)",
                store.site
            )),
            None if m.other_site.is_none() => p.push(format!(
                "{at}: store {:?} has no mirror at all; add another store",
                store.name
            )),
            None => {}
            Some(name) if name == &store.name => p.push(format!(
                "{at} field \"same_site\": a store cannot mirror itself"
            )),
            Some(name) => match stores.iter().find(|s| &s.name == name) {
                None => p.push(format!("{at} field \"same_site\": {name:?} is not a store")),
                Some(s) if s.site != store.site => p.push(format!(
                    "{at} field \"same_site\": {name:?} is in site {:?}, not in {:?}",
                    s.site, store.site
                )),
                Some(_) => {}
            },
        }
    }
}

fn check_edge(t: &Topology, p: &mut Vec<String>) {
    let mut zones = BTreeSet::new();
    for acl in &t.acls {
        let at = format!("acl for zone {:?}", acl.zone);
        if !zones.insert(&acl.zone) {
            p.push(format!("{at}: defined twice"));
        }
        match t.zones.iter().find(|z| z.name == acl.zone) {
            None => p.push(format!("{at} field \"zone\": unknown zone")),
            Some(z) if z.kind == ZoneKind::Lan => p.push(format!(
                "{at} field \"zone\": routers guard the Internet and isolated zones, not a LAN"
            )),
            Some(_) => {}
        }
        for service in &acl.allow {
            if crate::edge::served_by(service).is_none() {
                p.push(format!(
                    "{at} field \"allow\": {service:?} is not a mail service (smtp, submission, pop3, imap)"
                ));
            }
        }
    }
    if t.edge.check_fall == 0 || t.edge.check_rise == 0 {
        p.push("[edge] fields \"check_fall\" and \"check_rise\": must be at least 1".to_string());
    }
    if t.edge.check_interval.is_zero() {
        p.push("[edge] field \"check_interval\": must not be zero".to_string());
    }
    for n in &t.nodes {
        let role = n.role.parse::<Role>();
        let at = format!("node {:?}", n.name);
        if !matches!(role, Ok(Role::Router) | Ok(Role::Redirector)) {
            continue;
        }
        let edge_zones: Vec<&str> = n
            .zones
            .iter()
            .filter(|z| {
                t.zones
                    .iter()
                    .any(|zone| &zone.name == *z && zone.kind != ZoneKind::Lan)
            })
            .map(String::as_str)
            .collect();
        if edge_zones.len() != 1 || n.zones.len() != 1 {
            p.push(format!(
                "{at} field \"zones\": a {} sits in exactly one Internet or isolated zone",
                n.role
            ));
            continue;
        }
        let zone = edge_zones[0];
        if role == Ok(Role::Redirector) {
            if n.ports.is_empty() {
                p.push(format!(
                    "{at} field \"ports\": a redirector must declare a service"
                ));
            }
            for service in n.ports.keys() {
                if crate::edge::served_by(service).is_none() {
                    p.push(format!(
                        "{at} field \"ports.{service}\": a redirector balances mail services only"
                    ));
                }
            }
            if t.nodes.iter().any(|o| {
                o.name != n.name && o.role == n.role && o.site == n.site && o.zones == n.zones
            }) {
                p.push(format!(
                    "{at}: site {:?} already has a redirector in zone {zone:?}",
                    n.site
                ));
            }
        } else {
            let allowed: Vec<&String> = n.ports.keys().filter(|s| t.acl_allows(zone, s)).collect();
            if !allowed.is_empty() {
                match t.redirector(&n.site, zone) {
                    None => p.push(format!(
                        "{at}: zone {zone:?} forwards {} but site {:?} has no redirector there",
                        allowed
                            .iter()
                            .map(|s| s.as_str())
                            .collect::<Vec<_>>()
                            .join(", "),
                        n.site
                    )),
                    Some(r) => {
                        for s in allowed {
                            if !r.ports.contains_key(s) {
                                p.push(format!(
                                    "{at} field \"ports.{s}\": redirector {:?} does not serve {s}",
                                    r.name
                                ));
                            }
                        }
                    }
                }
            }
        }
    }
}
