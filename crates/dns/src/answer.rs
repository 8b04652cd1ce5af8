//! Answering one question from the zone data: the records, the response code and the sections.
//!
//! - a name outside every customer domain: REFUSED (we are authoritative for nothing else);
//! - a name of a customer domain that does not exist: NXDOMAIN, with the SOA;
//! - an existing name without records of the asked type: NOERROR, no answer (NODATA), with the SOA;
//! - A record sets rotate: each answer starts one address further along (round robin);
//! - MX preferences come from the health rule ([`crate::weight::preference`]) at answer time.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicUsize, Ordering};

use hickory_server::proto::op::ResponseCode;
use hickory_server::proto::rr::rdata::{A, MX};
use hickory_server::proto::rr::{DNSClass, Name, RData, Record, RecordType};

use crate::health::HealthBoard;
use crate::records::{DomainZone, MxTarget, Zones};
use crate::weight;

/// What to send back for one question.
#[derive(Debug, Default)]
pub struct Answer {
    pub rcode: ResponseCode,
    /// Whether we speak for the name (every answer inside a customer domain).
    pub authoritative: bool,
    pub answers: Vec<Record>,
    /// The SOA of negative answers (NXDOMAIN, NODATA).
    pub soa: Vec<Record>,
    pub additionals: Vec<Record>,
}

/// The authority over every customer domain: zone data, health, rotation counters.
pub struct Authority {
    zones: Zones,
    board: HealthBoard,
    /// One counter per A record set, advanced by each answer that starts with it.
    rotation: HashMap<Name, AtomicUsize>,
}

impl Authority {
    pub fn new(zones: Zones, board: HealthBoard) -> Authority {
        let rotation = zones
            .domains
            .iter()
            .flat_map(|z| z.hosts.keys().cloned())
            .map(|n| (n, AtomicUsize::new(0)))
            .collect();
        Authority {
            zones,
            board,
            rotation,
        }
    }

    pub fn zones(&self) -> &Zones {
        &self.zones
    }

    /// The preference an MX host has right now.
    pub fn preference(&self, mx: &MxTarget) -> u16 {
        weight::preference(mx.base, self.board.get(&mx.group).as_ref())
    }

    /// The A records of a host, starting one further along than the last answer if `advance`.
    fn a_records(&self, host: &Name, addrs: &[Ipv4Addr], advance: bool) -> Vec<Record> {
        let n = addrs.len();
        if n == 0 {
            return Vec::new();
        }
        let start = self
            .rotation
            .get(host)
            .map(|c| {
                if advance {
                    c.fetch_add(1, Ordering::Relaxed)
                } else {
                    c.load(Ordering::Relaxed)
                }
            })
            .unwrap_or(0)
            % n;
        addrs
            .iter()
            .cycle()
            .skip(start)
            .take(n)
            .map(|ip| Record::from_rdata(host.clone(), self.zones.ttl, RData::A(A(*ip))))
            .collect()
    }

    fn mx_records(&self, zone: &DomainZone) -> (Vec<Record>, Vec<Record>) {
        let mut answers = Vec::new();
        let mut glue = Vec::new();
        for mx in &zone.mx {
            let rdata = RData::MX(MX::new(self.preference(mx), mx.host.clone()));
            answers.push(Record::from_rdata(zone.apex.clone(), self.zones.ttl, rdata));
            if let Some(addrs) = zone.hosts.get(&mx.host) {
                glue.extend(self.a_records(&mx.host, addrs, false));
            }
        }
        (answers, glue)
    }

    /// Answers one question.
    pub fn answer(&self, qname: &Name, qtype: RecordType, qclass: DNSClass) -> Answer {
        let refused = Answer {
            rcode: ResponseCode::Refused,
            ..Answer::default()
        };
        if !matches!(qclass, DNSClass::IN | DNSClass::ANY) {
            return refused;
        }
        let Some(zone) = self.zones.zone_of(qname) else {
            return refused;
        };
        let mut out = Answer {
            rcode: ResponseCode::NoError,
            authoritative: true,
            ..Answer::default()
        };
        let any = qtype == RecordType::ANY;
        if *qname == zone.apex {
            if any || qtype == RecordType::SOA {
                out.answers.push(zone.soa.clone());
            }
            if any || qtype == RecordType::NS {
                out.answers.extend(zone.ns.iter().cloned());
                for ns in &zone.ns {
                    if let RData::NS(host) = ns.data()
                        && let Some(addrs) = zone.hosts.get(&host.0)
                    {
                        out.additionals
                            .extend(self.a_records(&host.0, addrs, false));
                    }
                }
            }
            if any || qtype == RecordType::MX {
                let (mx, glue) = self.mx_records(zone);
                out.answers.extend(mx);
                out.additionals.extend(glue);
            }
        } else if let Some(addrs) = zone.hosts.get(qname) {
            if any || qtype == RecordType::A {
                out.answers = self.a_records(qname, addrs, true);
            }
        } else {
            out.rcode = ResponseCode::NXDomain;
        }
        if out.answers.is_empty() {
            out.soa.push(zone.soa.clone());
            out.additionals.clear();
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::records::Group;
    use crate::weight::GroupHealth;
    use topology::{Role, Topology};

    fn authority() -> (Authority, HealthBoard) {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../topology/two-site.toml");
        let t = Topology::load(path).expect("two-site topology");
        let board = HealthBoard::default();
        (
            Authority::new(Zones::build(&t).expect("zones"), board.clone()),
            board,
        )
    }

    fn n(s: &str) -> Name {
        Name::from_ascii(s).expect("name")
    }

    fn mx_prefs(a: &Answer) -> Vec<(u16, String)> {
        a.answers
            .iter()
            .filter_map(|r| match r.data() {
                RData::MX(mx) => Some((mx.preference(), mx.exchange().to_ascii())),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn mx_of_a_domain_names_home_first_then_the_other_site() {
        let (auth, _) = authority();
        let a = auth.answer(&n("acme.example."), RecordType::MX, DNSClass::IN);
        assert_eq!(a.rcode, ResponseCode::NoError);
        assert!(a.authoritative);
        assert_eq!(
            mx_prefs(&a),
            [
                (10, "mx-west.acme.example.".to_string()),
                (20, "mx-east.acme.example.".to_string())
            ]
        );
        assert_eq!(a.additionals.len(), 4, "glue: two A records per MX host");
        assert!(a.answers.iter().all(|r| r.ttl() == 5));
        let g = auth.answer(&n("GLOBEX.example."), RecordType::MX, DNSClass::IN);
        assert_eq!(mx_prefs(&g)[0], (10, "mx-east.globex.example.".to_string()));
    }

    #[test]
    fn a_record_sets_rotate() {
        let (auth, _) = authority();
        let first = |a: &Answer| match a.answers[0].data() {
            RData::A(ip) => ip.0,
            _ => Ipv4Addr::UNSPECIFIED,
        };
        let q = n("mx-west.acme.example.");
        let one = auth.answer(&q, RecordType::A, DNSClass::IN);
        let two = auth.answer(&q, RecordType::A, DNSClass::IN);
        let three = auth.answer(&q, RecordType::A, DNSClass::IN);
        assert_eq!(one.answers.len(), 2);
        assert_ne!(first(&one), first(&two));
        assert_eq!(first(&one), first(&three));
    }

    #[test]
    fn negative_answers() {
        let (auth, _) = authority();
        let nx = auth.answer(&n("nope.acme.example."), RecordType::A, DNSClass::IN);
        assert_eq!(nx.rcode, ResponseCode::NXDomain);
        assert_eq!(nx.soa.len(), 1);
        assert!(nx.authoritative);
        let nodata = auth.answer(&n("mail.acme.example."), RecordType::AAAA, DNSClass::IN);
        assert_eq!(nodata.rcode, ResponseCode::NoError);
        assert!(nodata.answers.is_empty());
        assert_eq!(nodata.soa.len(), 1);
        let refused = auth.answer(&n("example.org."), RecordType::A, DNSClass::IN);
        assert_eq!(refused.rcode, ResponseCode::Refused);
        assert!(!refused.authoritative);
        let chaos = auth.answer(&n("acme.example."), RecordType::TXT, DNSClass::CH);
        assert_eq!(chaos.rcode, ResponseCode::Refused);
    }

    #[test]
    fn a_dead_home_site_drops_behind_the_secondary() {
        let (auth, board) = authority();
        let west = Group {
            site: "west".into(),
            role: Role::InetMx,
        };
        board.set(
            &west,
            GroupHealth {
                servers: 2,
                healthy: 0,
                sessions: 0,
            },
        );
        let a = auth.answer(&n("acme.example."), RecordType::MX, DNSClass::IN);
        assert_eq!(
            mx_prefs(&a),
            [
                (90, "mx-west.acme.example.".to_string()),
                (20, "mx-east.acme.example.".to_string())
            ]
        );
        // globex (home east) names west's relays as its secondary: they are weighed on their own
        // (the board knows nothing of them yet: base 20), and drop to 90 when they die.
        let g = auth.answer(&n("globex.example."), RecordType::MX, DNSClass::IN);
        assert_eq!(mx_prefs(&g)[1].0, 20);
        let west_relays = Group {
            site: "west".into(),
            role: Role::Relay,
        };
        board.set(
            &west_relays,
            GroupHealth {
                servers: 2,
                healthy: 0,
                sessions: 0,
            },
        );
        let g = auth.answer(&n("globex.example."), RecordType::MX, DNSClass::IN);
        assert_eq!(mx_prefs(&g)[1].0, 90);
    }
}
