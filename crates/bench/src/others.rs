//! Other work on the machine during a run. The bench shares its machine (builds, a chaos campaign),
//! and a figure means little without knowing that; so the run takes a snapshot of every process's CPU
//! time (`/proc/PID/stat`: utime + stime + cutime + cstime, so a parent counts the children it
//! reaped, as cargo counts its rustc) at the start and at the end, and charges the difference to
//! what is not the bench: not the bench's own process tree, not the reference servers it drives
//! (Postfix, Dovecot and HAProxy run as daemons), not kernel threads, not init (which reaps
//! orphans, the stopped Dovecot among them).
//!
//! A process that lived entirely between the snapshots and whose parent is gone too is missed; one
//! that was running at the start and was reaped by a living parent is charged only for its time
//! after the start.

use std::collections::{BTreeMap, HashSet};

/// One process at one instant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Proc {
    pub ppid: u32,
    pub comm: String,
    /// Start time since boot, in ticks: with the pid, tells a reused pid from the same process.
    pub start: u64,
    /// utime + stime + cutime + cstime, in ticks (USER_HZ, 100 per second on Linux).
    pub ticks: u64,
}

/// Every process by pid.
pub type Snapshot = BTreeMap<u32, Proc>;

/// The comms of the reference servers' processes (daemons, not the bench's children).
const REFERENCE: [&str; 20] = [
    "master",
    "qmgr",
    "pickup",
    "smtpd",
    "cleanup",
    "virtual",
    "trivial-rewrite",
    "anvil",
    "proxymap",
    "tlsmgr",
    "scache",
    "bounce",
    "dovecot",
    "imap",
    "imap-login",
    "pop3",
    "pop3-login",
    "auth",
    "stats",
    "haproxy",
];

const TICKS_PER_SECOND: f64 = 100.0;

/// One `/proc/PID/stat` line.
pub fn parse_stat(text: &str) -> Option<Proc> {
    let open = text.find('(')?;
    let close = text.rfind(')')?;
    let comm = text.get(open + 1..close)?.to_string();
    let f: Vec<&str> = text.get(close + 1..)?.split_whitespace().collect();
    // After the name: state(0) ppid(1) ... utime(11) stime(12) cutime(13) cstime(14) ... starttime(19).
    let ppid = f.get(1)?.parse().ok()?;
    let ticks = f
        .get(11..15)?
        .iter()
        .map(|v| v.parse::<u64>().ok())
        .sum::<Option<u64>>()?;
    let start = f.get(19)?.parse().ok()?;
    Some(Proc {
        ppid,
        comm,
        start,
        ticks,
    })
}

pub fn snapshot() -> Snapshot {
    let mut all = Snapshot::new();
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for entry in dir.flatten() {
            let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse().ok()) else {
                continue;
            };
            if let Some(p) = std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .as_deref()
                .and_then(parse_stat)
            {
                all.insert(pid, p);
            }
        }
    }
    all
}

/// `roots` and everything under them in `snap`.
fn tree(snap: &Snapshot, roots: &[u32]) -> HashSet<u32> {
    let mut seen: HashSet<u32> = HashSet::new();
    let mut frontier = roots.to_vec();
    while let Some(p) = frontier.pop() {
        if seen.insert(p) {
            frontier.extend(
                snap.iter()
                    .filter(|(_, c)| c.ppid == p)
                    .map(|(pid, _)| *pid),
            );
        }
    }
    seen
}

/// CPU seconds spent between `before` and `after` by what is not the bench (`bench`: its pid), by
/// comm, most first.
pub fn other_work(before: &Snapshot, after: &Snapshot, bench: u32) -> Vec<(String, f64)> {
    // Init (1) and the kernel threads (kthreadd, 2) are nobody's other work.
    let mut excluded = tree(after, &[bench, 2]);
    excluded.insert(1);
    let same = |pid: &u32, p: &Proc| after.get(pid).is_some_and(|a| a.start == p.start);
    let mut charged: BTreeMap<u32, i64> = after
        .iter()
        .filter(|(pid, p)| !excluded.contains(pid) && !REFERENCE.contains(&p.comm.as_str()))
        .map(|(pid, p)| {
            let base = before
                .get(pid)
                .filter(|b| b.start == p.start)
                .map_or(0, |b| b.ticks);
            (*pid, p.ticks as i64 - base as i64)
        })
        .collect();
    // A process that ended during the run is in its parent's cutime with its whole life: take back
    // the part before the start.
    for (pid, p) in before {
        if !same(pid, p)
            && let Some(parent) = charged.get_mut(&p.ppid)
            && before.get(&p.ppid).is_some_and(|pp| same(&p.ppid, pp))
        {
            *parent -= p.ticks as i64;
        }
    }
    let mut by_comm: BTreeMap<String, f64> = BTreeMap::new();
    for (pid, ticks) in charged {
        if ticks > 0
            && let Some(p) = after.get(&pid)
        {
            *by_comm.entry(p.comm.clone()).or_default() += ticks as f64 / TICKS_PER_SECOND;
        }
    }
    let mut list: Vec<(String, f64)> = by_comm.into_iter().collect();
    list.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    list
}

/// The header's sentence: how much other work there was, against the machine's capacity over the
/// run (`cpus` × `seconds`); under 1% of it counts as none.
pub fn describe(others: &[(String, f64)], cpus: usize, seconds: f64) -> String {
    let total: f64 = others.iter().map(|(_, s)| s).sum();
    let share = 100.0 * total / (cpus.max(1) as f64 * seconds.max(1.0));
    if share < 1.0 {
        return format!(
            "no other work on the machine during the run ({total:.0} CPU-s outside the bench)"
        );
    }
    let top: Vec<String> = others
        .iter()
        .filter(|(_, s)| *s >= 1.0)
        .take(4)
        .map(|(c, s)| format!("{c} {s:.0} s"))
        .collect();
    format!(
        "**other work ran during the run**: {total:.0} CPU-s outside the bench, {share:.0}% of the \
         machine's {cpus} CPUs over the run (by process, with the children it reaped: {})",
        top.join(", ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(ppid: u32, comm: &str, start: u64, ticks: u64) -> Proc {
        Proc {
            ppid,
            comm: comm.into(),
            start,
            ticks,
        }
    }

    #[test]
    fn parses_a_stat_line_with_a_tricky_name() {
        let line = "4242 (a (b) c) S 17 4242 4242 0 -1 4194560 100 0 0 0 250 50 7 3 20 0 1 0 98765 \
                    1000 10 18446744073709551615\n";
        assert_eq!(parse_stat(line), Some(p(17, "a (b) c", 98765, 310)));
        assert_eq!(parse_stat("4242 (x) S 1 2 3"), None);
    }

    #[test]
    fn charges_only_what_is_not_the_bench() {
        let before: Snapshot = [
            (1, p(0, "init", 1, 10)),
            (2, p(0, "kthreadd", 1, 0)),
            (100, p(1, "fabric-bench", 50, 100)),
            (200, p(1, "bash", 20, 0)),
            (201, p(200, "cargo", 30, 500)),
            (300, p(1, "master", 10, 40)),
            (400, p(1, "rustc", 5, 1000)),
        ]
        .into();
        let after: Snapshot = [
            (1, p(0, "init", 1, 90)),
            (2, p(0, "kthreadd", 1, 0)),
            (3, p(2, "kworker/0:1", 60, 800)),
            (100, p(1, "fabric-bench", 50, 6000)),
            (101, p(100, "fabric-store", 55, 9000)),
            (102, p(101, "python3", 70, 300)),
            // cargo ended; bash reaped it: 500 of its ticks were before the start.
            (200, p(1, "bash", 20, 2500)),
            (300, p(1, "master", 10, 900)),
            // pid 400 reused by a new process.
            (400, p(1, "chaos", 80, 150)),
        ]
        .into();
        let others = other_work(&before, &after, 100);
        assert_eq!(
            others,
            vec![("bash".to_string(), 20.0), ("chaos".to_string(), 1.5)]
        );
    }

    #[test]
    fn says_whether_other_work_ran() {
        let quiet = describe(&[("sshd".into(), 3.0)], 2, 600.0);
        assert!(quiet.starts_with("no other work"), "{quiet}");
        let busy = describe(
            &[("cargo".into(), 600.0), ("fabric".into(), 60.0)],
            2,
            600.0,
        );
        assert!(busy.contains("other work ran"), "{busy}");
        assert!(busy.contains("660 CPU-s"), "{busy}");
        assert!(busy.contains("55%"), "{busy}");
        assert!(
            busy.contains("(by process, with the children it reaped: cargo 600 s, fabric 60 s)"),
            "{busy}"
        );
    }
}
