//! The fabric's authoritative DNS server (role `dns`, binary `fabric-dns`) for the customer domains.
//!
//! Per customer domain D at home in site H: `D MX 10 mx-H.D.` (H's Internet entry) and
//! `D MX 20 mx-O.D.` for every other site O (O's secondary), `mail.D` (H's access points on the
//! isolated side), `ns-<site>.D` (the dns nodes), SOA and NS; every record with TTL `edge.dns_ttl`.
//! A record sets rotate, and the MX preferences follow the measured health and load of the servers
//! behind each host, polled every `edge.dns_refresh`.
//!
//! # Layout
//! - `records`: the zone data from the topology; which nodes stand behind which name (one function
//!   per rule: [`records::internet_entry`], [`records::secondary_mx`], [`records::access_points`]).
//! - `weight`: the re-weighting rule, a pure function ([`weight::preference`]).
//! - `health`: the poller that reads every mail server's `/status` into a [`health::HealthBoard`].
//! - `answer`: one question to its answer (REFUSED, NXDOMAIN, NODATA, rotation).
//! - `server`: the UDP and TCP loops; wire format by hickory-server / hickory-proto.

pub mod answer;
pub mod health;
pub mod records;
pub mod server;
pub mod weight;
