//! The checker: what the senders recorded against what the mailboxes hold, Jepsen style.
//!
//! For every message and recipient, the copies found in that recipient's INBOX are compared with what
//! the sender knows:
//! - acknowledged and 0 copies: **lost**;
//! - acknowledged and more than 1 copy: a **duplicate**, unless every extra copy is explained by an
//!   attempt whose outcome was unknown (the final dot went out, no reply came: RFC 1047's window, in
//!   which the server may have taken the message before the sender resent it), then **resent**;
//! - not acknowledged and delivered: fine (**unacknowledged-but-delivered**), unless there are more
//!   copies than attempts with unknown outcome could explain (at least one allowed): a duplicate;
//! - a campaign id found in a mailbox that is not among its recipients, or that was never sent:
//!   **unexpected**.

use std::collections::BTreeMap;

use serde::Serialize;
use topology::Topology;

use super::quiesce::Quiet;
use super::runner::FaultRun;
use super::workload::{Message, Status};

#[derive(Debug, Clone, Serialize)]
pub struct Entry {
    pub id: String,
    pub mailbox: String,
    pub copies: usize,
    /// Attempts of that message whose outcome was unknown.
    pub unknown_attempts: usize,
    pub acked: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct Recovery {
    pub id: usize,
    pub kind: &'static str,
    pub target: String,
    pub injected: Option<f64>,
    /// Seconds from the heal (SIGCONT, start) until every node answered `/ready`.
    pub ready_after_heal: Option<f64>,
    /// Seconds from the injection until the first 250 for mail to the site's domains from an
    /// attempt that started after the injection.
    pub mail_accepted_after: Option<f64>,
    /// Attempts to the site's domains that failed while the fault lasted (injection to ready).
    pub failed_attempts: usize,
    pub note: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub seed: u64,
    pub run: String,
    pub backend: String,
    pub topology: String,
    pub faults_planned: usize,
    pub faults_injected: usize,
    pub sent: usize,
    pub acknowledged: usize,
    pub refused: usize,
    pub given_up: usize,
    pub attempts: usize,
    pub unknown_attempts: usize,
    /// (message, recipient) pairs acknowledged.
    pub expected_deliveries: usize,
    /// (message, recipient) pairs found at least once.
    pub delivered: usize,
    pub lost: Vec<Entry>,
    pub duplicated: Vec<Entry>,
    pub resent: Vec<Entry>,
    pub unexpected: Vec<Entry>,
    pub unacknowledged_delivered: usize,
    /// Messages without the campaign's header in the INBOXes (other mail, notices).
    pub foreign_messages: usize,
    pub unreadable_mailboxes: Vec<String>,
    pub healed_at_end: Vec<String>,
    pub heal_errors: Vec<String>,
    pub quiescence: Quiet,
    pub recovery: Vec<Recovery>,
    pub duration_seconds: f64,
    pub ok: bool,
}

/// What the mailboxes held: per mailbox, the campaign id of each message (repeated per copy).
pub struct Read {
    pub ids: BTreeMap<String, Vec<String>>,
    pub foreign: usize,
    pub unreadable: Vec<String>,
}

pub struct Inputs<'a> {
    pub seed: u64,
    pub run: &'a str,
    pub backend: &'a str,
    pub topology_name: &'a str,
    pub topology: &'a Topology,
    pub faults_planned: usize,
    pub messages: &'a [Message],
    pub faults: &'a [FaultRun],
    pub read: Read,
    pub quiet: Quiet,
    pub healed: Vec<String>,
    pub heal_errors: Vec<String>,
    pub duration: f64,
}

pub fn check(i: Inputs<'_>) -> Report {
    let prefix = format!("{}-", i.run);
    // copies[(id, mailbox)]
    let mut copies: BTreeMap<(String, String), usize> = BTreeMap::new();
    let mut other_runs = 0;
    for (mailbox, ids) in &i.read.ids {
        for id in ids {
            if id.starts_with(&prefix) {
                *copies.entry((id.clone(), mailbox.clone())).or_default() += 1;
            } else {
                other_runs += 1;
            }
        }
    }
    let by_id: BTreeMap<&str, &Message> = i.messages.iter().map(|m| (m.id.as_str(), m)).collect();
    let mut r = Report {
        seed: i.seed,
        run: i.run.to_string(),
        backend: i.backend.to_string(),
        topology: i.topology_name.to_string(),
        faults_planned: i.faults_planned,
        faults_injected: i.faults.iter().filter(|f| f.injected.is_some()).count(),
        sent: i.messages.iter().filter(|m| !m.attempts.is_empty()).count(),
        acknowledged: count(i.messages, Status::Acked),
        refused: count(i.messages, Status::Refused),
        given_up: count(i.messages, Status::GaveUp),
        attempts: i.messages.iter().map(|m| m.attempts.len()).sum(),
        unknown_attempts: i.messages.iter().map(Message::unknown_attempts).sum(),
        expected_deliveries: 0,
        delivered: 0,
        lost: Vec::new(),
        duplicated: Vec::new(),
        resent: Vec::new(),
        unexpected: Vec::new(),
        unacknowledged_delivered: 0,
        foreign_messages: i.read.foreign + other_runs,
        unreadable_mailboxes: i.read.unreadable.clone(),
        healed_at_end: i.healed,
        heal_errors: i.heal_errors,
        quiescence: i.quiet,
        recovery: Vec::new(),
        duration_seconds: i.duration,
        ok: false,
    };
    for m in i.messages {
        let acked = m.status == Status::Acked;
        let unknown = m.unknown_attempts();
        for rcpt in &m.rcpts {
            if i.read.unreadable.contains(rcpt) {
                continue;
            }
            let n = copies.remove(&(m.id.clone(), rcpt.clone())).unwrap_or(0);
            let entry = Entry {
                id: m.id.clone(),
                mailbox: rcpt.clone(),
                copies: n,
                unknown_attempts: unknown,
                acked,
            };
            if acked {
                r.expected_deliveries += 1;
            }
            if n > 0 {
                r.delivered += 1;
            }
            match (acked, n) {
                (true, 0) => r.lost.push(entry),
                (true, 1) | (false, 0) => {}
                (true, n) if n <= 1 + unknown => r.resent.push(entry),
                (true, _) => r.duplicated.push(entry),
                (false, n) if n <= unknown.max(1) => r.unacknowledged_delivered += 1,
                (false, _) => r.duplicated.push(entry),
            }
        }
    }
    for ((id, mailbox), n) in copies {
        let m = by_id.get(id.as_str());
        r.unexpected.push(Entry {
            unknown_attempts: m.map_or(0, |m| m.unknown_attempts()),
            acked: m.is_some_and(|m| m.status == Status::Acked),
            id,
            mailbox,
            copies: n,
        });
    }
    r.recovery = i
        .faults
        .iter()
        .map(|f| recovery(f, i.messages, i.topology))
        .collect();
    r.ok = r.lost.is_empty()
        && r.duplicated.is_empty()
        && r.unexpected.is_empty()
        && r.unreadable_mailboxes.is_empty();
    r
}

fn count(messages: &[Message], status: Status) -> usize {
    messages.iter().filter(|m| m.status == status).count()
}

fn recovery(f: &FaultRun, messages: &[Message], t: &Topology) -> Recovery {
    let to_site = |m: &Message| {
        m.rcpts.iter().any(|r| {
            r.rsplit_once('@')
                .and_then(|(_, d)| t.home_of_domain(d))
                .is_some_and(|s| s == f.fault.site)
        })
    };
    let mut mail_accepted_after = None;
    let mut failed_attempts = 0;
    if let Some(injected) = f.injected {
        let end = f.ready.unwrap_or(f64::MAX);
        for m in messages.iter().filter(|m| to_site(m)) {
            for a in &m.attempts {
                if a.at >= injected && a.at <= end && a.result != "acked" {
                    failed_attempts += 1;
                }
                if a.at >= injected && a.result == "acked" {
                    let after = a.at + a.took - injected;
                    mail_accepted_after = Some(match mail_accepted_after {
                        Some(best) if best <= after => best,
                        _ => after,
                    });
                }
            }
        }
    }
    Recovery {
        id: f.fault.id,
        kind: f.fault.kind.as_str(),
        target: f.fault.target.clone(),
        injected: f.injected,
        ready_after_heal: match (f.healed, f.ready) {
            (Some(h), Some(r)) => Some(((r - h) * 10.0).round() / 10.0),
            _ => None,
        },
        mail_accepted_after: mail_accepted_after.map(|s| (s * 10.0).round() / 10.0),
        failed_attempts,
        note: f.note.clone(),
    }
}

/// The report for a terminal.
pub fn render(r: &Report) -> String {
    let mut o = String::new();
    let opt = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.1}s"));
    o.push_str(&format!(
        "chaos campaign {} (seed {}, {} backend, {}), {:.0}s\n\n",
        r.run, r.seed, r.backend, r.topology, r.duration_seconds
    ));
    o.push_str(&format!(
        "  faults injected           {} of {} planned\n",
        r.faults_injected, r.faults_planned
    ));
    o.push_str(&format!("  messages sent             {}\n", r.sent));
    o.push_str(&format!("  acknowledged (250)        {}\n", r.acknowledged));
    o.push_str(&format!("  refused (5xx)             {}\n", r.refused));
    o.push_str(&format!("  given up                  {}\n", r.given_up));
    o.push_str(&format!(
        "  attempts                  {} ({} with unknown outcome)\n",
        r.attempts, r.unknown_attempts
    ));
    o.push_str(&format!(
        "  deliveries expected       {}\n",
        r.expected_deliveries
    ));
    o.push_str(&format!("  delivered                 {}\n", r.delivered));
    o.push_str(&format!("  LOST                      {}\n", r.lost.len()));
    o.push_str(&format!(
        "  DUPLICATED                {}\n",
        r.duplicated.len()
    ));
    o.push_str(&format!(
        "  UNEXPECTED                {}\n",
        r.unexpected.len()
    ));
    o.push_str(&format!("  resent after unknown      {}\n", r.resent.len()));
    o.push_str(&format!(
        "  unacknowledged, delivered {}\n",
        r.unacknowledged_delivered
    ));
    o.push_str(&format!(
        "  quiescence                {} after {:.0}s{}\n",
        if r.quiescence.reached {
            "reached"
        } else {
            "NOT reached"
        },
        r.quiescence.waited,
        if r.quiescence.queued.is_empty() {
            String::new()
        } else {
            format!(" (queued: {:?})", r.quiescence.queued)
        }
    ));
    if !r.healed_at_end.is_empty() {
        o.push_str(&format!(
            "  healed at the end         {:?}\n",
            r.healed_at_end
        ));
    }
    for e in &r.heal_errors {
        o.push_str(&format!("  heal error                {e}\n"));
    }
    if !r.unreadable_mailboxes.is_empty() {
        o.push_str(&format!(
            "  UNREADABLE mailboxes      {:?}\n",
            r.unreadable_mailboxes
        ));
    }
    for (name, list) in [
        ("lost", &r.lost),
        ("duplicated", &r.duplicated),
        ("unexpected", &r.unexpected),
    ] {
        for e in list.iter().take(20) {
            o.push_str(&format!(
                "  {name}: {} in {} ({} copies, acked {}, {} unknown attempts)\n",
                e.id, e.mailbox, e.copies, e.acked, e.unknown_attempts
            ));
        }
    }
    o.push_str("\n  fault                            injected  ready after heal  mail accepted after  failed attempts\n");
    for f in &r.recovery {
        o.push_str(&format!(
            "  #{:<3} {:<9} {:<18} {:>9} {:>17} {:>20} {:>16}{}\n",
            f.id,
            f.kind,
            f.target,
            opt(f.injected),
            opt(f.ready_after_heal),
            opt(f.mail_accepted_after),
            f.failed_attempts,
            f.note
                .as_ref()
                .map_or(String::new(), |n| format!("  ({n})"))
        ));
    }
    o.push_str(&format!(
        "\nverdict: {}\n",
        if r.ok {
            "OK: nothing lost, nothing duplicated"
        } else {
            "FAILED"
        }
    ));
    o
}
