//! Reading rows: the intranet mail server against Dovecot (scripts/dovecot-bench.sh, tuned as
//! ../shared/anchors.md describes), the same mailboxes on both (50 of 200 messages of 4 KiB), the same
//! load generator (scripts/read-load.py: Python's imaplib and poplib in 20 worker processes, every
//! session through STARTTLS/STLS). Each row alternates which system goes first per round.
//!
//! Server CPU is read from `/proc`: for the fabric, the intranet node plus the stores it reads from
//! (the mailbox's home store, the directory store); for Dovecot, its master and every process under it
//! (a reaped child's CPU is in its parent's `cutime`).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use argon2::PasswordHasher;
use serde::Deserialize;
use store_client::StoreClient;

pub const USERS: usize = 50;
pub const MESSAGES: usize = 200;
const PASSWORD: &str = "bench-password";
const DOVECOT_ADDR: &str = "127.0.0.30";

pub const MODES: [&str; 4] = ["imap-login", "imap-fetch", "imap-list", "pop3-retr"];

/// What the load generator printed for one run.
#[derive(Debug, Clone, Deserialize)]
pub struct LoadResult {
    pub sessions: u64,
    pub messages: u64,
    pub errors: u64,
    pub seconds: f64,
    pub first_error: Option<String>,
}

/// One run of one mode against one system.
#[derive(Debug, Clone)]
pub struct ReadSample {
    /// Logins/s for `imap-login`, messages/s otherwise.
    pub per_second: f64,
    /// Server CPU per unit (login or message), in microseconds.
    pub cpu_us: f64,
    pub errors: u64,
}

/// A system under test: where it listens and which processes are the server.
pub struct Target {
    pub name: String,
    pub imap: Option<SocketAddr>,
    pub pop3: SocketAddr,
    pub pids: Vec<u32>,
}

pub fn user(i: usize) -> String {
    format!("bench{i:02}@acme.example")
}

/// A 4,096-byte message (headers and 70-column lines, CRLF).
pub fn message(n: usize) -> Vec<u8> {
    let mut out = format!(
        "From: sender@test.example\r\nTo: reader@acme.example\r\nSubject: bench message {n}\r\n\
         Message-ID: <bench-{n}@test.example>\r\nDate: Mon, 23 Nov 2026 00:00:00 +0000\r\n\r\n"
    )
    .into_bytes();
    let line = [b'x'; 70];
    while out.len() + 72 <= 4096 - 2 {
        out.extend_from_slice(&line);
        out.extend_from_slice(b"\r\n");
    }
    let fill = 4096 - out.len() - 2;
    out.extend(std::iter::repeat_n(b'y', fill));
    out.extend_from_slice(b"\r\n");
    out
}

/// Creates the bench mailboxes in the fabric: users in the directory, messages in each INBOX on its
/// home store (mirrored writes, as mail delivered by the transfer server would be).
pub async fn populate_fabric(directory: &StoreClient, home: &StoreClient) -> anyhow::Result<()> {
    let salt = argon2::password_hash::SaltString::encode_b64(b"bench-fixed-salt")
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let hash = argon2::Argon2::default()
        .hash_password(PASSWORD.as_bytes(), &salt)
        .map_err(|e| anyhow::anyhow!("{e}"))?
        .to_string();
    for i in 0..USERS {
        directory
            .put_user(
                &user(i),
                &serde_json::json!({"password_hash": hash, "notify": "none"}),
            )
            .await?;
    }
    let jobs: Vec<(usize, usize)> = (0..USERS)
        .flat_map(|u| (0..MESSAGES).map(move |m| (u, m)))
        .collect();
    let mut tasks = tokio::task::JoinSet::new();
    for chunk in jobs.chunks(jobs.len().div_ceil(32)) {
        let (home, chunk) = (home.clone(), chunk.to_vec());
        tasks.spawn(async move {
            for (u, m) in chunk {
                let id = format!("bench-{u}-{m}");
                home.append(&user(u), "INBOX", Some(&id), &[], message(m))
                    .await?;
            }
            Ok::<_, store_client::ClientError>(())
        });
    }
    while let Some(r) = tasks.join_next().await {
        r??;
    }
    Ok(())
}

/// Sets up and starts Dovecot with the same mailboxes; returns its master's pid.
pub fn start_dovecot(workspace: &Path, dir: &Path, cert: &Path, key: &Path) -> anyhow::Result<u32> {
    std::fs::create_dir_all(dir)?;
    let msg = dir.join("message.eml");
    std::fs::write(&msg, message(0))?;
    let out = std::process::Command::new(workspace.join("scripts/dovecot-bench.sh"))
        .arg(dir)
        .arg(cert)
        .arg(key)
        .arg(USERS.to_string())
        .arg(MESSAGES.to_string())
        .arg(&msg)
        .output()
        .context("running scripts/dovecot-bench.sh")?;
    if !out.status.success() {
        bail!(
            "dovecot setup failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .last()
        .and_then(|l| l.trim().parse().ok())
        .context("dovecot-bench.sh printed no pid")
}

pub fn dovecot_target(master: u32) -> anyhow::Result<Target> {
    Ok(Target {
        name: "dovecot 2.3 (tuned, STARTTLS)".into(),
        imap: Some(format!("{DOVECOT_ADDR}:1143").parse()?),
        pop3: format!("{DOVECOT_ADDR}:1110").parse()?,
        pids: vec![master],
    })
}

pub fn stop_dovecot(master: u32) {
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(master as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
}

/// utime+stime+cutime+cstime of a process, in clock ticks.
fn ticks(pid: u32) -> Option<(u32, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces: fields start after the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ppid = f.get(1)?.parse().ok()?;
    let sum = f
        .get(11..15)?
        .iter()
        .filter_map(|v| v.parse::<u64>().ok())
        .sum();
    Some((ppid, sum))
}

/// CPU seconds used so far by `roots` and every process under them.
pub fn tree_cpu_seconds(roots: &[u32]) -> f64 {
    let mut procs: BTreeMap<u32, (u32, u64)> = BTreeMap::new();
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for e in dir.flatten() {
            if let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok())
                && let Some(t) = ticks(pid)
            {
                procs.insert(pid, t);
            }
        }
    }
    let mut total = 0u64;
    let mut frontier: Vec<u32> = roots.to_vec();
    while let Some(p) = frontier.pop() {
        if let Some((_, t)) = procs.get(&p) {
            total += t;
        }
        frontier.extend(
            procs
                .iter()
                .filter(|(_, (ppid, _))| *ppid == p)
                .map(|(c, _)| *c),
        );
    }
    // /proc counts in USER_HZ, which Linux fixes at 100 whatever the kernel's own tick rate.
    total as f64 / 100.0
}

/// Runs the load generator once in `mode` against `target`.
pub async fn run(
    workspace: &Path,
    target: &Target,
    mode: &str,
    workers: usize,
    seconds: f64,
) -> anyhow::Result<Option<ReadSample>> {
    let addr = if mode == "pop3-retr" {
        target.pop3
    } else {
        match target.imap {
            Some(a) => a,
            None => return Ok(None),
        }
    };
    let script: PathBuf = workspace.join("scripts/read-load.py");
    let before = tree_cpu_seconds(&target.pids);
    let out = tokio::process::Command::new("python3")
        .arg(script)
        .arg(mode)
        .arg(addr.ip().to_string())
        .arg(addr.port().to_string())
        .args(["--users", &USERS.to_string()])
        .args(["--messages", &MESSAGES.to_string()])
        .args(["--workers", &workers.to_string()])
        .args(["--seconds", &seconds.to_string()])
        .kill_on_drop(true)
        .output()
        .await
        .context("python3 must be installed")?;
    let cpu = tree_cpu_seconds(&target.pids) - before;
    if !out.status.success() {
        bail!(
            "read-load.py failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let r: LoadResult = serde_json::from_slice(&out.stdout)
        .with_context(|| format!("read-load.py said {}", String::from_utf8_lossy(&out.stdout)))?;
    if let Some(e) = &r.first_error {
        eprintln!("  {} {mode}: {} errors, first: {e}", target.name, r.errors);
    }
    let units = if mode == "imap-login" {
        r.sessions
    } else {
        r.messages
    };
    Ok(Some(ReadSample {
        per_second: units as f64 / r.seconds.max(0.001),
        cpu_us: if units > 0 {
            cpu * 1e6 / units as f64
        } else {
            0.0
        },
        errors: r.errors,
    }))
}

/// One mode's medians: the fabric's (index 0) and Dovecot's (1).
#[derive(Debug, Clone)]
pub struct ModeMedians {
    pub mode: String,
    pub rate: [f64; 2],
    pub cpu_us: [f64; 2],
}

/// Prints the reading table: per mode, each system's median rate and CPU per unit; returns the
/// medians of the modes both systems ran.
pub fn print_table(
    targets: &[Target; 2],
    rows: &BTreeMap<&str, [Vec<ReadSample>; 2]>,
    rounds: usize,
    workers: usize,
) -> Vec<ModeMedians> {
    let mut medians = Vec::new();
    fn med(v: &mut [f64]) -> f64 {
        v.sort_by(f64::total_cmp);
        v.get(v.len() / 2).copied().unwrap_or(0.0)
    }
    println!();
    println!(
        "Reading: scripts/read-load.py, {workers} clients, {USERS} mailboxes x {MESSAGES} x 4 KiB, STARTTLS on both, \
         {rounds} rounds interleaved; medians."
    );
    println!(
        "{:<12} {:>14} {:>14} {:>8} {:>12} {:>12} {:>8}  errors",
        "load", "fabric /s", "dovecot /s", "ratio", "fabric cpu", "dovecot cpu", "cpu ratio"
    );
    for (mode, samples) in rows {
        let mut rate = [0.0; 2];
        let mut cpu = [0.0; 2];
        let mut errors = [0u64; 2];
        for i in 0..2 {
            rate[i] = med(&mut samples[i].iter().map(|s| s.per_second).collect::<Vec<_>>());
            cpu[i] = med(&mut samples[i].iter().map(|s| s.cpu_us).collect::<Vec<_>>());
            errors[i] = samples[i].iter().map(|s| s.errors).sum();
        }
        if samples[0].is_empty() {
            println!(
                "{:<12} {:>14} {:>14.0}   (the fabric's intranet server has no port for it)",
                mode, "n/a", rate[1]
            );
            continue;
        }
        medians.push(ModeMedians {
            mode: mode.to_string(),
            rate,
            cpu_us: cpu,
        });
        let ratio = |a: f64, b: f64| {
            if b > 0.0 {
                format!("{:.2}x", a / b)
            } else {
                "-".into()
            }
        };
        println!(
            "{:<12} {:>14.0} {:>14.0} {:>8} {:>10.0}us {:>10.0}us {:>8}  {} / {}",
            mode,
            rate[0],
            rate[1],
            ratio(rate[0], rate[1]),
            cpu[0],
            cpu[1],
            ratio(cpu[0], cpu[1]),
            errors[0],
            errors[1]
        );
    }
    println!(
        "(units: logins for imap-login, messages otherwise; cpu = server CPU per unit: {} vs {}; goal: \
         fabric rate >= dovecot, fabric cpu < dovecot)",
        targets[0].name, targets[1].name
    );
    medians
}
