//! The workload: uniquely numbered messages (`X-Chaos-Id: RUN-N`, and `chaos RUN-N` as the subject)
//! from several senders to the campaign's mailboxes of every customer domain, paced evenly over the
//! schedule. Most come from the Internet the way an MTA sends (MX lookup in the fabric's DNS, the
//! exchangers in preference order, each address in turn); some are customers' submissions (their
//! domain's `mail.` access points from the same DNS, STARTTLS, AUTH PLAIN). Each message is retried
//! like an MTA retries (0.5 s doubling to 5 s between rounds) until a 250, a 5xx, or the give-up bound.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;
use topology::{Role, Topology};

use super::imap::ID_HEADER;
use super::net::Tls;
use super::runner::secs;
use super::smtp::{self, Attempted, Login, Timeouts};
use crate::cli::send::{MxSender, SendError, compose};

const TIMEOUTS: Timeouts = Timeouts {
    greeting: Duration::from_secs(5),
    step: Duration::from_secs(15),
    data: Duration::from_secs(30),
};
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// How a message enters the fabric.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Path {
    /// From the Internet, to the domain's MX.
    Mx,
    /// A customer's authenticated submission.
    Submission,
}

/// One try at one address.
#[derive(Debug, Clone, Serialize)]
pub struct Attempt {
    /// Seconds from the campaign's start.
    pub at: f64,
    pub took: f64,
    /// `HOST ADDR:PORT`, or `dns` when the lookup failed.
    pub via: String,
    /// acked, temporary, permanent, unknown.
    pub result: &'static str,
    pub detail: String,
}

/// Where a message ended, from the sender's side.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Status {
    Acked,
    /// A 5xx: never resent.
    Refused,
    /// Still not acknowledged at the give-up bound.
    GaveUp,
}

#[derive(Debug, Clone, Serialize)]
pub struct Message {
    pub n: u64,
    pub id: String,
    pub path: Path,
    pub from: String,
    pub rcpts: Vec<String>,
    pub status: Status,
    pub acked_at: Option<f64>,
    pub attempts: Vec<Attempt>,
}

impl Message {
    /// Attempts whose outcome is unknown (the final dot went out, no reply came).
    pub fn unknown_attempts(&self) -> usize {
        self.attempts
            .iter()
            .filter(|a| a.result == "unknown")
            .count()
    }
}

/// What the workload needs to know.
pub struct Workload {
    pub run: String,
    pub seed: u64,
    pub messages: u64,
    pub senders: usize,
    pub span: Duration,
    pub submission_share: f64,
    pub give_up: Duration,
    pub users: Vec<String>,
    pub password: String,
    pub topology: Topology,
    pub tls: Tls,
    pub mx: MxSender,
}

impl Workload {
    /// The message id of number `n`.
    pub fn message_id(&self, n: u64) -> String {
        format!("{}-{n}", self.run)
    }
}

/// Sends every message; returns them in number order.
pub async fn run(w: Arc<Workload>, t0: Instant) -> Vec<Message> {
    let next = Arc::new(AtomicU64::new(0));
    let tasks: Vec<_> = (0..w.senders.max(1))
        .map(|_| {
            let w = w.clone();
            let next = next.clone();
            tokio::spawn(async move {
                let mut done = Vec::new();
                loop {
                    let n = next.fetch_add(1, Ordering::Relaxed);
                    if n >= w.messages {
                        return done;
                    }
                    let due = w.span.mul_f64(n as f64 / w.messages as f64);
                    tokio::time::sleep_until((t0 + due).into()).await;
                    done.push(send(&w, n, t0).await);
                    if n % 100 == 99 {
                        eprintln!("chaos: t+{:.1}s {} messages sent", secs(t0), n + 1);
                    }
                }
            })
        })
        .collect();
    let mut all = Vec::with_capacity(w.messages as usize);
    for t in tasks {
        match t.await {
            Ok(done) => all.extend(done),
            Err(e) => eprintln!("chaos: a sender task failed: {e}"),
        }
    }
    all.sort_by_key(|m| m.n);
    all
}

/// The shape of message `n`: path, sender, recipients (from the seed, whatever the timing).
fn plan(w: &Workload, n: u64) -> (Path, String, Vec<String>) {
    let mut rng = ChaCha8Rng::seed_from_u64(w.seed ^ n.wrapping_mul(0x9E37_79B9_7F4A_7C15));
    let submission = rng.random_bool(w.submission_share.clamp(0.0, 1.0));
    let count = if rng.random_bool(0.2) { 2 } else { 1 };
    let pick =
        |rng: &mut ChaCha8Rng, from: &[&String]| from[rng.random_range(0..from.len())].clone();
    if submission {
        let all: Vec<&String> = w.users.iter().collect();
        let from = pick(&mut rng, &all);
        let mut rcpts: Vec<String> = (0..count).map(|_| pick(&mut rng, &all)).collect();
        rcpts.dedup();
        (Path::Submission, from, rcpts)
    } else {
        // One domain per transaction, as an MTA sends.
        let domains: Vec<&str> = w.topology.domains.iter().map(|d| d.name.as_str()).collect();
        let domain = domains[rng.random_range(0..domains.len())];
        let of_domain: Vec<&String> = w
            .users
            .iter()
            .filter(|u| u.ends_with(&format!("@{domain}")))
            .collect();
        let mut rcpts: Vec<String> = (0..count).map(|_| pick(&mut rng, &of_domain)).collect();
        rcpts.dedup();
        let from = format!(
            "sender{}@remote{}.example",
            rng.random_range(1..=5),
            rng.random_range(1..=3)
        );
        (Path::Mx, from, rcpts)
    }
}

async fn send(w: &Workload, n: u64, t0: Instant) -> Message {
    let (path, from, rcpts) = plan(w, n);
    let id = w.message_id(n);
    let body = format!(
        "Message {id} of a chaos campaign.\r\nIt goes to {}.\r\n",
        rcpts.join(", ")
    );
    let mut message = format!("{ID_HEADER}: {id}\r\n").into_bytes();
    message.extend(compose(
        &from,
        &rcpts,
        &format!("chaos {id}"),
        body.as_bytes(),
    ));
    let mut m = Message {
        n,
        id,
        path,
        from,
        rcpts,
        status: Status::GaveUp,
        acked_at: None,
        attempts: Vec::new(),
    };
    let first = Instant::now();
    let mut backoff = Duration::from_millis(500);
    loop {
        let targets = match targets(w, &m).await {
            Ok(t) => t,
            Err(e) => {
                m.attempts.push(Attempt {
                    at: secs(t0),
                    took: 0.0,
                    via: "dns".into(),
                    result: "temporary",
                    detail: e.to_string(),
                });
                Vec::new()
            }
        };
        for (host, addr) in targets {
            let at = secs(t0);
            let started = Instant::now();
            let login = (m.path == Path::Submission).then(|| Login {
                user: &m.from,
                password: &w.password,
                tls: &w.tls,
            });
            let outcome = smtp::attempt(addr, &m.from, &m.rcpts, &message, login, TIMEOUTS).await;
            m.attempts.push(Attempt {
                at,
                took: (started.elapsed().as_secs_f64() * 100.0).round() / 100.0,
                via: format!("{host} {addr}"),
                result: outcome.label(),
                detail: outcome.text().to_string(),
            });
            match outcome {
                Attempted::Acked(_) => {
                    m.status = Status::Acked;
                    m.acked_at = Some(secs(t0));
                    return m;
                }
                Attempted::Permanent(_) => {
                    m.status = Status::Refused;
                    return m;
                }
                Attempted::Temporary(_) | Attempted::Unknown(_) => {}
            }
        }
        if first.elapsed() + backoff > w.give_up {
            return m;
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// The addresses to try this round, in order.
async fn targets(w: &Workload, m: &Message) -> Result<Vec<(String, SocketAddr)>, SendError> {
    match m.path {
        Path::Mx => {
            let domain = m.rcpts[0].rsplit_once('@').map(|(_, d)| d).unwrap_or("");
            let port = smtp_port(&w.topology);
            let exchangers = w.mx.exchangers(domain).await?;
            Ok(exchangers
                .into_iter()
                .flat_map(|(pref, host, addrs)| {
                    addrs
                        .into_iter()
                        .map(move |ip| (format!("{host}({pref})"), SocketAddr::new(ip, port)))
                })
                .collect())
        }
        Path::Submission => {
            let domain = m.from.rsplit_once('@').map(|(_, d)| d).unwrap_or("");
            let host = format!("mail.{domain}");
            let port = submission_port(&w.topology);
            let addrs: Vec<IpAddr> = w.mx.addresses(&host).await?;
            Ok(addrs
                .into_iter()
                .map(|ip| (host.clone(), SocketAddr::new(ip, port)))
                .collect())
        }
    }
}

/// The port remote MTAs use: the Internet routers' (or mail servers') SMTP port.
fn smtp_port(t: &Topology) -> u16 {
    first_port(t, &[Role::Router, Role::InetMx], "smtp")
}

/// The port customers submit on: the isolated routers' (or intranet servers') submission port.
fn submission_port(t: &Topology) -> u16 {
    first_port(t, &[Role::Router, Role::Intranet], "submission")
}

fn first_port(t: &Topology, roles: &[Role], service: &str) -> u16 {
    roles
        .iter()
        .flat_map(|r| t.nodes_with_role(*r))
        .find_map(|n| n.ports.get(service).copied())
        .unwrap_or(0)
}
