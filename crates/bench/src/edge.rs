//! "redirector vs HAProxy" rows: two `smtp-sink` backends, the same `smtp-source` load straight to one
//! sink, through HAProxy 2.6 (the anchors' config: `balance leastconn`, `option smtpchk`, `check inter
//! 250 fall 2 rise 2`; scripts/haproxy-bench.sh) and through `fabric-redirector` (a small generated
//! topology whose inet-mx nodes are the sinks, `send_proxy = false`), in interleaved rounds. Each row:
//! time as a ratio of direct, the proxy's CPU per message, and one-session transaction latency (p50,
//! p99) from the bench's own SMTP client. Then a failover round per proxy (`edge_failover`).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use hdrhistogram::Histogram;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use crate::cpu;
use crate::edge_failover::{self, Failover};
use crate::summary::{Goal, Row, Summary};

pub const HAPROXY: &str = "127.0.0.20:2525";
pub const SINKS: [&str; 2] = ["127.0.0.21:2525", "127.0.0.22:2525"];
pub const REDIRECTOR: &str = "127.0.0.23:2525";
pub const REDIRECTOR_ADMIN: &str = "127.0.0.23:9100";

/// A child process killed (and reaped) when dropped.
pub struct Proc(pub Option<Child>);

impl Proc {
    pub fn spawn(mut cmd: Command, log: &Path) -> anyhow::Result<Proc> {
        let out = std::fs::File::create(log)?;
        cmd.stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out);
        fabric::die_with_parent(&mut cmd);
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {:?}", cmd.get_program()))?;
        Ok(Proc(Some(child)))
    }

    pub fn pid(&self) -> u32 {
        self.0.as_ref().map(Child::id).unwrap_or(0)
    }

    /// SIGKILL and reap.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// `smtp-sink` on `addr` (as `nobody`: it refuses to run as root otherwise).
pub fn sink(addr: &str, dir: &Path, i: usize) -> anyhow::Result<Proc> {
    let mut cmd = Command::new("/usr/sbin/smtp-sink");
    cmd.args(["-u", "nobody", "-c", addr, "1000"]);
    Proc::spawn(cmd, &dir.join(format!("sink-{i}.log")))
}

/// What is measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum System {
    Direct,
    Haproxy,
    Redirector,
}

impl System {
    pub const ALL: [System; 3] = [System::Direct, System::Haproxy, System::Redirector];

    pub fn name(self) -> &'static str {
        match self {
            System::Direct => "direct to one smtp-sink",
            System::Haproxy => "HAProxy 2.6 (leastconn, smtpchk)",
            System::Redirector => "fabric-redirector (P2C, smtp checks)",
        }
    }

    pub fn target(self) -> &'static str {
        match self {
            System::Direct => SINKS[0],
            System::Haproxy => HAPROXY,
            System::Redirector => REDIRECTOR,
        }
    }
}

/// The topology the bench's redirector runs with: the sinks stand in for inet-mx nodes.
fn topology_text() -> String {
    let node = |name: &str, role: &str, addr: &str| {
        let (ip, port) = addr.rsplit_once(':').unwrap_or((addr, "2525"));
        format!(
            "[[node]]\nname = \"{name}\"\nrole = \"{role}\"\nsite = \"bench\"\nzones = [\"internet\"]\naddress = \"{ip}\"\nports = {{ smtp = {port} }}\nadmin = 9100\n\n"
        )
    };
    let mut t = String::from(
        "[fabric]\nname = \"edge-bench\"\n\n[edge]\nsend_proxy = false\nhandoff = false\n\n[[site]]\nname = \"bench\"\n\n\
         [[zone]]\nname = \"internet\"\nkind = \"internet\"\ncidr = \"127.0.0.0/24\"\n\n",
    );
    t.push_str(&node("sink-1", "inet-mx", SINKS[0]));
    t.push_str(&node("sink-2", "inet-mx", SINKS[1]));
    t.push_str(&node("redirector", "redirector", REDIRECTOR));
    t
}

/// Starts `fabric-redirector` from the bench's own build.
pub fn redirector(dir: &Path) -> anyhow::Result<Proc> {
    let file = dir.join("edge-topology.toml");
    let text = topology_text();
    topology::Topology::parse(&text, &file).map_err(|e| anyhow::anyhow!("{e}"))?;
    std::fs::write(&file, text)?;
    let bin = fabric::find_bin_dir().join("fabric-redirector");
    if !bin.is_file() {
        bail!("{} is missing (cargo build --release)", bin.display());
    }
    let mut cmd = Command::new(bin);
    cmd.arg("--topology")
        .arg(&file)
        .args(["--node", "redirector", "--data-dir"])
        .arg(dir.join("redirector"))
        .env("RUST_LOG", "info");
    Proc::spawn(cmd, &dir.join("redirector.log"))
}

/// Installs what is missing and writes HAProxy's config; returns the config path.
pub fn setup_haproxy(workspace: &Path, dir: &Path) -> anyhow::Result<PathBuf> {
    let out = Command::new(workspace.join("scripts/haproxy-bench.sh"))
        .arg(dir)
        .output()
        .context("running scripts/haproxy-bench.sh")?;
    if !out.status.success() {
        bail!(
            "haproxy setup failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(PathBuf::from(
        String::from_utf8_lossy(&out.stdout).trim().to_string(),
    ))
}

pub fn haproxy(config: &Path, dir: &Path) -> anyhow::Result<Proc> {
    let mut cmd = Command::new("haproxy");
    cmd.arg("-db").arg("-f").arg(config);
    Proc::spawn(cmd, &dir.join("haproxy.log"))
}

/// Waits until `target` greets with 220.
pub async fn wait_greeting(target: &str, timeout: Duration) -> anyhow::Result<()> {
    let start = Instant::now();
    loop {
        let greeted = tokio::time::timeout(Duration::from_secs(1), async {
            let s = TcpStream::connect(target).await?;
            let mut r = BufReader::new(s);
            let mut line = String::new();
            r.read_line(&mut line).await?;
            anyhow::Ok(line.starts_with("220"))
        })
        .await;
        if matches!(greeted, Ok(Ok(true))) {
            return Ok(());
        }
        if start.elapsed() > timeout {
            bail!("{target} did not greet with 220 within {timeout:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `smtp-source -s SESSIONS -m MESSAGES -l 4096` against `target`; the time it took and its stderr.
pub async fn smtp_source(
    target: &str,
    messages: usize,
    sessions: usize,
) -> anyhow::Result<(Duration, String, bool)> {
    let start = Instant::now();
    let out = tokio::process::Command::new("/usr/sbin/smtp-source")
        .args(["-s", &sessions.to_string(), "-m", &messages.to_string()])
        .args(["-l", "4096", "-f", "sender@test.example"])
        .args(["-t", "user@bench.example", target])
        .kill_on_drop(true)
        .output()
        .await?;
    Ok((
        start.elapsed(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
        out.status.success(),
    ))
}

/// A 4 KiB message body (dot-terminated) for [`transaction`].
pub fn body() -> String {
    format!(
        "From: sender@test.example\r\nTo: user@bench.example\r\nSubject: bench\r\n\r\n{}\r\n.\r\n",
        "x".repeat(76).repeat(53)
    )
}

/// One SMTP session with one message, timed from connect to the 221.
pub async fn transaction(target: &str, body: &str) -> anyhow::Result<Duration> {
    let start = Instant::now();
    let s = TcpStream::connect(target).await?;
    s.set_nodelay(true)?;
    let mut s = BufReader::new(s);
    expect(&mut s, "220").await?;
    for (cmd, code) in [
        ("EHLO bench.example\r\n", "250"),
        ("MAIL FROM:<sender@test.example>\r\n", "250"),
        ("RCPT TO:<user@bench.example>\r\n", "250"),
        ("DATA\r\n", "354"),
    ] {
        s.get_mut().write_all(cmd.as_bytes()).await?;
        expect(&mut s, code).await?;
    }
    s.get_mut().write_all(body.as_bytes()).await?;
    expect(&mut s, "250").await?;
    s.get_mut().write_all(b"QUIT\r\n").await?;
    expect(&mut s, "221").await?;
    Ok(start.elapsed())
}

/// `n` transactions one after the other into `h` (microseconds).
async fn latency(target: &str, n: usize, h: &mut Histogram<u64>) -> anyhow::Result<()> {
    let body = body();
    for _ in 0..n {
        let took = transaction(target, &body).await?;
        h.record(took.as_micros() as u64)?;
    }
    Ok(())
}

/// Reads one (possibly multi-line) reply and checks its code.
async fn expect(s: &mut BufReader<TcpStream>, code: &str) -> anyhow::Result<()> {
    loop {
        let mut line = String::new();
        if s.read_line(&mut line).await? == 0 {
            bail!("connection closed waiting for {code}");
        }
        if !line.starts_with(code) {
            bail!("expected {code}, got {line:?}");
        }
        if line.as_bytes().get(3) != Some(&b'-') {
            return Ok(());
        }
    }
}

/// Options of the edge rows.
pub struct Options {
    pub rounds: usize,
    pub messages: usize,
    pub sessions: usize,
    pub latency_transactions: usize,
    pub failover_rounds: usize,
}

struct Column {
    secs: Vec<f64>,
    cpu_us: Vec<f64>,
    latency: Histogram<u64>,
}

/// Runs the rows and prints the tables; a missing tool skips them with the reason.
pub async fn rows(
    o: &Options,
    workspace: &Path,
    dir: &Path,
    summary: &mut Summary,
) -> anyhow::Result<()> {
    println!();
    let config = match setup_haproxy(workspace, dir) {
        Ok(c) => c,
        Err(e) => {
            println!("redirector vs HAProxy: skipped ({e})");
            summary.skip("edge vs HAProxy", e.to_string());
            return Ok(());
        }
    };
    let mut sinks = vec![sink(SINKS[0], dir, 1)?, sink(SINKS[1], dir, 2)?];
    let mut haproxy = haproxy(&config, dir)?;
    let mut ours = redirector(dir)?;
    for t in SINKS.iter().chain([&HAPROXY, &REDIRECTOR]) {
        wait_greeting(t, Duration::from_secs(20)).await?;
    }
    // Warm up every path (connections, caches, the checkers' first rounds).
    for s in System::ALL {
        smtp_source(s.target(), 500, o.sessions).await?;
    }
    let pid = |s: System, h: &Proc, r: &Proc| match s {
        System::Direct => None,
        System::Haproxy => Some(h.pid()),
        System::Redirector => Some(r.pid()),
    };
    let mut cols = Vec::new();
    for _ in System::ALL {
        cols.push(Column {
            secs: Vec::new(),
            cpu_us: Vec::new(),
            latency: Histogram::new(3)?,
        });
    }
    for round in 0..o.rounds {
        eprintln!("edge round {}/{}", round + 1, o.rounds);
        for k in 0..System::ALL.len() {
            let i = (round + k) % System::ALL.len();
            let s = System::ALL[i];
            let p = pid(s, &haproxy, &ours);
            let before = p.and_then(cpu::process_seconds);
            let (took, err, ok) = smtp_source(s.target(), o.messages, o.sessions).await?;
            if !ok {
                bail!("smtp-source through {}: {err}", s.name());
            }
            let after = p.and_then(cpu::process_seconds);
            cols[i].secs.push(took.as_secs_f64());
            if let (Some(b), Some(a)) = (before, after) {
                cols[i].cpu_us.push((a - b) * 1e6 / o.messages as f64);
            }
            latency(s.target(), o.latency_transactions, &mut cols[i].latency).await?;
        }
    }
    print_rows(o, &cols);
    summarize(o, &cols, summary);
    let mut failovers: Vec<(System, Failover)> = Vec::new();
    for round in 0..o.failover_rounds {
        for loaded in [true, false] {
            for s in [System::Haproxy, System::Redirector] {
                eprintln!(
                    "failover round {}/{} through {} (load: {loaded})",
                    round + 1,
                    o.failover_rounds,
                    s.name()
                );
                let f = edge_failover::run(s, o, &mut sinks, dir, loaded).await?;
                failovers.push((s, f));
            }
        }
    }
    edge_failover::print(o, &failovers);
    edge_failover::summarize(&failovers, summary);
    haproxy.kill();
    ours.kill();
    Ok(())
}

pub fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

fn print_rows(o: &Options, cols: &[Column]) {
    println!(
        "redirector vs HAProxy: smtp-source -s {} -m {} -l 4096 per round into 2 smtp-sink backends, {} rounds interleaved (medians);",
        o.sessions, o.messages, o.rounds
    );
    println!(
        "latency: {} one-session transactions (connect..221) per round from the bench's client; +ms p50: over direct.",
        o.latency_transactions
    );
    println!(
        "{:<40} {:>8} {:>9} {:>10} {:>11} {:>9} {:>9}  rounds (s)",
        "system", "msg/s", "time x", "+ms p50", "CPU us/msg", "p50 ms", "p99 ms"
    );
    let direct = median(&cols[0].secs);
    let direct_p50 = cols[0].latency.value_at_quantile(0.5) as f64 / 1000.0;
    for (s, c) in System::ALL.iter().zip(cols) {
        let t = median(&c.secs);
        let p50 = c.latency.value_at_quantile(0.5) as f64 / 1000.0;
        let p99 = c.latency.value_at_quantile(0.99) as f64 / 1000.0;
        let cpu = if c.cpu_us.is_empty() {
            "-".to_string()
        } else {
            format!("{:.1}", median(&c.cpu_us))
        };
        let rounds: Vec<String> = c.secs.iter().map(|x| format!("{x:.2}")).collect();
        println!(
            "{:<40} {:>8.0} {:>8.2}x {:>10.3} {:>11} {:>9.3} {:>9.3}  {}",
            s.name(),
            o.messages as f64 / t,
            t / direct,
            p50 - direct_p50,
            cpu,
            p50,
            p99,
            rounds.join(" ")
        );
    }
}

/// The summary's rows: the redirector against HAProxy on the same backends (issue 4: throughput at
/// least HAProxy's), and the straight path as the ceiling.
fn summarize(o: &Options, cols: &[Column], summary: &mut Summary) {
    let area = "edge vs HAProxy (issue 4)";
    let [direct, haproxy, ours] = [0, 1, 2].map(|i| &cols[i]);
    let rate = |c: &Column| o.messages as f64 / median(&c.secs).max(1e-9);
    let at = |c: &Column, q: f64| c.latency.value_at_quantile(q) as f64 / 1000.0;
    summary.push(
        Row::new(
            area,
            "smtp-source into 2 smtp-sinks: direct to one sink",
            "msg/s",
        )
        .against(rate(direct), "(no proxy)"),
    );
    summary.push(
        Row::new(area, "smtp-source through fabric-redirector", "msg/s")
            .fabric(rate(ours))
            .against(rate(haproxy), "HAProxy")
            .goal(Goal::RatioAtLeast(1.0)),
    );
    let cpu = |c: &Column| (!c.cpu_us.is_empty()).then(|| median(&c.cpu_us));
    if let (Some(f), Some(h)) = (cpu(ours), cpu(haproxy)) {
        summary.push(
            Row::new(area, "proxy CPU per message", "us")
                .fabric(f)
                .against(h, "HAProxy"),
        );
    }
    for (name, q) in [("p50", 0.5), ("p99", 0.99)] {
        summary.push(
            Row::new(
                area,
                format!("one-message session {name} through the proxy"),
                "ms",
            )
            .fabric(at(ours, q))
            .against(at(haproxy, q), "HAProxy"),
        );
    }
}
