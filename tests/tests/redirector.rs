//! The redirectors of the two-site fabric, end to end with real processes and SIGKILL: mail through
//! redirector-inet-w (and through a router in front of it) reaches the mailbox, handed off from hop
//! to hop on this host, and the mail server sees the real client; sessions spread over
//! both west servers; the isolated redirector greets for IMAP, POP3 and submission; a server killed
//! under load leaves the pool within a second without failing a new session and returns after its
//! restart; with every west server dead mail flows through the east; with every server dead the client
//! gets 421.

mod common;

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use nix::sys::signal::Signal;
use serde_json::{Value, json};
use store_client::{Method, StoreClient};
use testkit::Sandbox;
use tokio::io::AsyncReadExt;

const USER: &str = "ann@acme.example";
/// The Python clients connect from this address, so the mail server's view of the client is telling.
const CLIENT_IP: &str = "127.10.9.77";

fn addr(sandbox: &Sandbox, node: &str, service: &str) -> String {
    sandbox
        .url(node, service)
        .trim_start_matches("http://")
        .to_string()
}

async fn status(sandbox: &Sandbox, node: &str) -> anyhow::Result<Value> {
    let resp = StoreClient::new(sandbox.admin_url(node))
        .with_timeout(Duration::from_secs(5))
        .raw(Method::GET, "/status", &[], bytes::Bytes::new())
        .await?;
    Ok(serde_json::from_slice(&resp.body)?)
}

/// One backend's row in a redirector's `/status`.
async fn backend(
    sandbox: &Sandbox,
    redirector: &str,
    service: &str,
    name: &str,
) -> anyhow::Result<Value> {
    let s = status(sandbox, redirector).await?;
    s["counters"]["services"][service]["backends"]
        .as_array()
        .and_then(|a| a.iter().find(|b| b["backend"] == name).cloned())
        .with_context(|| format!("{redirector} has no {service} backend {name}: {s}"))
}

async fn picks(sandbox: &Sandbox, redirector: &str, service: &str, name: &str) -> u64 {
    backend(sandbox, redirector, service, name)
        .await
        .ok()
        .and_then(|b| b["picks"].as_u64())
        .unwrap_or(0)
}

async fn state(sandbox: &Sandbox, redirector: &str, service: &str, name: &str) -> String {
    backend(sandbox, redirector, service, name)
        .await
        .ok()
        .and_then(|b| b["state"].as_str().map(str::to_string))
        .unwrap_or_default()
}

/// The first line a server (through the redirector) sends.
async fn greeting(target: &str) -> anyhow::Result<String> {
    let mut s = tokio::net::TcpStream::connect(target).await?;
    let mut buf = Vec::new();
    let read = async {
        let mut chunk = [0u8; 256];
        while !buf.contains(&b'\n') {
            let n = s.read(&mut chunk).await?;
            if n == 0 {
                break;
            }
            buf.extend_from_slice(&chunk[..n]);
        }
        anyhow::Ok(())
    };
    tokio::time::timeout(Duration::from_secs(10), read)
        .await
        .context("greeting timed out")??;
    Ok(String::from_utf8_lossy(&buf).trim_end().to_string())
}

async fn inbox(sandbox: &Sandbox) -> usize {
    common::store(sandbox, "store-w1")
        .list_mailbox(USER, "INBOX", None)
        .await
        .map(|l| l.messages.len())
        .unwrap_or(0)
}

async fn wait_inbox(sandbox: &Sandbox, at_least: usize) -> anyhow::Result<()> {
    testkit::wait_until(
        &format!("{at_least} messages in {USER}'s INBOX"),
        Duration::from_secs(60),
        Duration::from_millis(200),
        || async { inbox(sandbox).await >= at_least },
    )
    .await
}

/// Senders x messages through `target`, one SMTP session per message; a session that fails is tried
/// again (as an MTA would). Prints, per message, every attempt with its start time and outcome.
const LOAD: &str = r#"
import json, os, smtplib, threading, time
host, port = os.environ["TARGET"].rsplit(":", 1)
senders, per = int(os.environ["SENDERS"]), int(os.environ["PER"])
out, lock = [], threading.Lock()
def send(i):
    for j in range(per):
        msg = f"From: carol@remote.example\r\nTo: ann@acme.example\r\nSubject: {os.environ['TAG']} {i}-{j}\r\n\r\nbody\r\n"
        attempts = []
        while len(attempts) < 5:
            start = time.time()
            try:
                s = smtplib.SMTP(host, int(port), timeout=30, source_address=(os.environ["SRC"], 0))
                refused = s.sendmail("carol@remote.example", ["ann@acme.example"], msg)
                assert not refused, refused
            except Exception as e:
                attempts.append({"start": start, "ok": False, "error": repr(e)})
                time.sleep(0.05)
                continue
            try:
                s.quit()
            except Exception:
                pass
            attempts.append({"start": start, "ok": True})
            break
        with lock:
            out.append(attempts)
threads = [threading.Thread(target=send, args=(i,)) for i in range(senders)]
for t in threads: t.start()
for t in threads: t.join()
print(json.dumps(out))
"#;

fn load_env(target: &str, senders: usize, per: usize, tag: &str) -> Vec<(&'static str, String)> {
    vec![
        ("TARGET", target.to_string()),
        ("SENDERS", senders.to_string()),
        ("PER", per.to_string()),
        ("TAG", tag.to_string()),
        ("SRC", CLIENT_IP.to_string()),
    ]
}

/// Messages whose last attempt got 250.
fn accepted(report: &Value) -> anyhow::Result<usize> {
    let all = report.as_array().context("load report")?;
    Ok(all
        .iter()
        .filter(|a| {
            a.as_array()
                .and_then(|a| a.last())
                .is_some_and(|l| l["ok"] == true)
        })
        .count())
}

fn now_secs() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

#[tokio::test]
async fn redirectors_balance_fail_over_and_never_fail_a_new_session() -> anyhow::Result<()> {
    let mut sandbox = Sandbox::start("topology/two-site.toml").await?;
    let hash = common::argon2_hash("redirector secret")?;
    common::store(&sandbox, "store-w1")
        .put_user(USER, &json!({"password_hash": hash, "notify": "none"}))
        .await?;
    let inet_w = addr(&sandbox, "redirector-inet-w", "smtp");

    // 1. Mail through the west Internet redirector arrives, and the server saw the real client.
    let report = common::python(LOAD, &load_env(&inet_w, 1, 10, "plain")).await?;
    assert_eq!(accepted(&report)?, 10, "{report}");
    // And through a router in front of it: the router hands the connection to the redirector, the
    // redirector to the server (all on this host), and nobody relays a byte.
    let via_router = addr(&sandbox, "router-inet-w1", "smtp");
    let report = common::python(LOAD, &load_env(&via_router, 1, 5, "routed")).await?;
    assert_eq!(accepted(&report)?, 5, "{report}");
    let mut expected = 15;
    wait_inbox(&sandbox, expected).await?;
    let store = common::store(&sandbox, "store-w1");
    let listing = store.list_mailbox(USER, "INBOX", None).await?;
    for m in &listing.messages {
        let body = store.fetch(USER, "INBOX", m.uid, None).await?;
        let text = String::from_utf8_lossy(&body);
        let received = text.lines().next().unwrap_or_default();
        assert!(
            received.contains(&format!("([{CLIENT_IP}])")),
            "the mail server names the real client, not the redirector: {received}"
        );
    }
    let router = status(&sandbox, "router-inet-w1").await?;
    assert!(
        router["counters"]["upstream"]["handed_off"].as_u64() >= Some(5),
        "the router handed its sessions to the redirector: {router}"
    );
    let metrics = common::metrics(&sandbox, "router-inet-w1").await?;
    assert_eq!(
        common::metric_sum(&metrics, "fabric_router_bytes_total", &[]),
        0.0,
        "a handed-off session is not relayed by the router"
    );
    let metrics = common::metrics(&sandbox, "redirector-inet-w").await?;
    assert!(
        common::metric_sum(
            &metrics,
            "fabric_handoff_offers_total",
            &[("result", "taken")]
        ) >= 15.0,
        "the redirector handed every session to a server: {metrics}"
    );
    let mut received = 0.0;
    for mx in ["inet-mx-w1", "inet-mx-w2"] {
        let m = common::metrics(&sandbox, mx).await?;
        received += common::metric_sum(&m, "fabric_handoff_received_total", &[]);
    }
    assert!(
        received >= 15.0,
        "the servers took {received} sessions by handoff"
    );

    // 2. Both west servers took sessions (ten sequential sessions: the tie between idle servers is random).
    for mx in ["inet-mx-w1", "inet-mx-w2"] {
        let p = picks(&sandbox, "redirector-inet-w", "smtp", mx).await;
        assert!(p > 0, "{mx} got no session: {}", p);
    }
    assert_eq!(
        picks(&sandbox, "redirector-inet-w", "smtp", "redirector-inet-e").await,
        0,
        "the other site is only a fallback"
    );

    // 3. The isolated redirector greets for every protocol, from its site's intranet servers.
    for (service, prefix) in [("imap", "* OK"), ("pop3", "+OK"), ("submission", "220")] {
        let line = greeting(&addr(&sandbox, "redirector-iso-w", service)).await?;
        assert!(line.starts_with(prefix), "{service} greeting: {line:?}");
        let local = picks(&sandbox, "redirector-iso-w", service, "intranet-w1").await
            + picks(&sandbox, "redirector-iso-w", service, "intranet-w2").await;
        assert!(local >= 1, "{service} went to a west intranet server");
    }

    // 4. SIGKILL one west server under load: no new session fails, nothing acknowledged is lost.
    let env = load_env(&inet_w, 4, 30, "load");
    let load = tokio::spawn(async move { common::python(LOAD, &env).await });
    let before = picks(&sandbox, "redirector-inet-w", "smtp", "inet-mx-w1").await
        + picks(&sandbox, "redirector-inet-w", "smtp", "inet-mx-w2").await;
    testkit::wait_until(
        "the load to be under way",
        Duration::from_secs(60),
        Duration::from_millis(20),
        || async {
            picks(&sandbox, "redirector-inet-w", "smtp", "inet-mx-w1").await
                + picks(&sandbox, "redirector-inet-w", "smtp", "inet-mx-w2").await
                >= before + 25
        },
    )
    .await?;
    sandbox.kill("inet-mx-w1", Signal::SIGKILL)?;
    let killed_at = Instant::now();
    let kill_time = now_secs();
    testkit::wait_until(
        "inet-mx-w1 down",
        Duration::from_secs(5),
        Duration::from_millis(20),
        || async { state(&sandbox, "redirector-inet-w", "smtp", "inet-mx-w1").await == "down" },
    )
    .await?;
    let down_after = killed_at.elapsed();
    assert!(
        down_after < Duration::from_secs(1),
        "down after {down_after:?}"
    );
    let picks_when_down = picks(&sandbox, "redirector-inet-w", "smtp", "inet-mx-w1").await;
    let report = load.await??;
    let mut in_flight_failures = 0;
    for attempts in report.as_array().context("load report")? {
        let attempts = attempts.as_array().context("attempts")?;
        assert!(
            attempts.last().is_some_and(|a| a["ok"] == true),
            "a message was never accepted: {attempts:?}"
        );
        for a in attempts.iter().filter(|a| a["ok"] == false) {
            let start = a["start"].as_f64().unwrap_or(f64::MAX);
            assert!(
                start < kill_time,
                "a session that started after the kill failed: {a} (kill at {kill_time})"
            );
            in_flight_failures += 1;
        }
    }
    eprintln!(
        "inet-mx-w1 down after {down_after:?}; {in_flight_failures} session(s) in flight on it failed"
    );
    assert_eq!(accepted(&report)?, 120);
    assert_eq!(
        picks(&sandbox, "redirector-inet-w", "smtp", "inet-mx-w1").await,
        picks_when_down,
        "no session went to the dead server once it was down"
    );
    expected += 120;
    wait_inbox(&sandbox, expected).await?;
    let metrics = common::metrics(&sandbox, "redirector-inet-w").await?;
    assert_eq!(
        common::metric_sum(
            &metrics,
            "fabric_redirector_sessions_failed_total",
            &[("service", "smtp")]
        ),
        0.0
    );
    assert_eq!(
        common::metric_sum(
            &metrics,
            "fabric_redirector_backend_up",
            &[("backend", "inet-mx-w1")]
        ),
        0.0
    );
    // Back after a restart and two good checks.
    sandbox.start_node("inet-mx-w1").await?;
    let restarted = Instant::now();
    testkit::wait_until(
        "inet-mx-w1 up again",
        Duration::from_secs(5),
        Duration::from_millis(20),
        || async { state(&sandbox, "redirector-inet-w", "smtp", "inet-mx-w1").await == "up" },
    )
    .await?;
    eprintln!("inet-mx-w1 up {:?} after its restart", restarted.elapsed());

    // 5. Every west server dead: mail to the west redirector flows through the east.
    let east_before = picks(&sandbox, "redirector-inet-w", "smtp", "redirector-inet-e").await;
    sandbox.kill("inet-mx-w1", Signal::SIGKILL)?;
    sandbox.kill("inet-mx-w2", Signal::SIGKILL)?;
    let report = common::python(LOAD, &load_env(&inet_w, 2, 3, "east")).await?;
    assert_eq!(accepted(&report)?, 6, "{report}");
    for a in report.as_array().context("report")? {
        assert_eq!(
            a.as_array().map(Vec::len),
            Some(1),
            "first attempt took: {a}"
        );
    }
    expected += 6;
    wait_inbox(&sandbox, expected).await?;
    let east_after = picks(&sandbox, "redirector-inet-w", "smtp", "redirector-inet-e").await;
    assert!(
        east_after >= east_before + 6,
        "{east_before} -> {east_after}"
    );
    let east_servers = picks(&sandbox, "redirector-inet-e", "smtp", "inet-mx-e1").await
        + picks(&sandbox, "redirector-inet-e", "smtp", "inet-mx-e2").await;
    assert!(east_servers >= 6, "east servers took {east_servers}");
    assert_eq!(
        picks(&sandbox, "redirector-inet-e", "smtp", "redirector-inet-w").await,
        0,
        "what came from the west stays in the east"
    );

    // 6. No server anywhere: the client is told 421 and the session is counted as failed.
    sandbox.kill("inet-mx-e1", Signal::SIGKILL)?;
    sandbox.kill("inet-mx-e2", Signal::SIGKILL)?;
    let line = greeting(&inet_w).await?;
    if !line.starts_with("421 4.3.0") {
        bail!("expected 421 with no server anywhere, got {line:?}");
    }
    let metrics = common::metrics(&sandbox, "redirector-inet-w").await?;
    assert!(
        common::metric_sum(
            &metrics,
            "fabric_redirector_sessions_failed_total",
            &[("service", "smtp")]
        ) >= 1.0
    );
    Ok(())
}

#[tokio::test]
async fn a_router_whose_redirector_was_sigkilled_relays_to_the_other_site_and_hands_off_again_after_its_restart()
-> anyhow::Result<()> {
    let mut sandbox = Sandbox::start("topology/two-site.toml").await?;
    let hash = common::argon2_hash("redirector secret")?;
    common::store(&sandbox, "store-w1")
        .put_user(USER, &json!({"password_hash": hash, "notify": "none"}))
        .await?;
    let via_router = addr(&sandbox, "router-inet-w1", "smtp");
    let counter = |v: &Value, key: &str| v["counters"]["upstream"][key].as_u64().unwrap_or(0);

    // 1. Handed off to the local redirector on this host.
    let report = common::python(LOAD, &load_env(&via_router, 1, 3, "before")).await?;
    assert_eq!(accepted(&report)?, 3, "{report}");
    let before = status(&sandbox, "router-inet-w1").await?;
    assert!(counter(&before, "handed_off") >= 3, "{before}");

    // 2. The redirector dies: the router's offer finds nobody, and the flow is relayed to the other
    //    site's redirector, which serves it from its own servers. No sender sees a failure.
    sandbox.kill("redirector-inet-w", Signal::SIGKILL)?;
    let report = common::python(LOAD, &load_env(&via_router, 1, 3, "redirector down")).await?;
    assert_eq!(accepted(&report)?, 3, "{report}");
    for a in report.as_array().context("report")? {
        assert_eq!(
            a.as_array().map(Vec::len),
            Some(1),
            "first attempt took: {a}"
        );
    }
    let during = status(&sandbox, "router-inet-w1").await?;
    assert_eq!(
        counter(&during, "other_site"),
        counter(&before, "other_site") + 3,
        "{during}"
    );
    assert_eq!(
        counter(&during, "handed_off"),
        counter(&before, "handed_off")
    );

    // 3. Restarted, it takes handed-off flows again (within the router's 1 s retry of the name).
    sandbox.start_node("redirector-inet-w").await?;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let report = common::python(LOAD, &load_env(&via_router, 1, 3, "after")).await?;
    assert_eq!(accepted(&report)?, 3, "{report}");
    let after = status(&sandbox, "router-inet-w1").await?;
    assert_eq!(
        counter(&after, "handed_off"),
        counter(&during, "handed_off") + 3,
        "{after}"
    );
    // Every accepted message is in the mailbox, once.
    wait_inbox(&sandbox, 9).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(inbox(&sandbox).await, 9, "each message exactly once");
    Ok(())
}
