//! The `fabric` command as an operator uses it: up, status, kill (KILL and STOP), start, store
//! rebuild, down; and the foreground `fabric up` that Ctrl-C stops. Real processes, real signals.

mod common;

use std::path::PathBuf;
use std::process::{Child, Command, Output};
use std::time::Duration;

use anyhow::{Context, bail};
use fabric::process::{ProcState, proc_state};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::Value;
use store_client::StoreClient;
use testkit::PortSlot;

/// A data directory whose nodes are SIGKILLed when the test ends, however it ends.
struct Fabric {
    data: tempfile::TempDir,
    topology: PathBuf,
    _slot: PortSlot,
}

impl Fabric {
    fn new(topology: &str) -> anyhow::Result<Fabric> {
        let slot = PortSlot::claim()?;
        let data = tempfile::Builder::new().prefix("fabric-cli-").tempdir()?;
        let topology = slot.write_topology(topology, data.path())?;
        Ok(Fabric {
            data,
            topology,
            _slot: slot,
        })
    }

    fn command(&self) -> Command {
        let mut c = Command::new(testkit::bin_dir().join("fabric"));
        c.env("FABRIC_DATA_DIR", self.data.path().join("var"));
        c
    }

    fn run(&self, args: &[&str]) -> anyhow::Result<Output> {
        Ok(self.command().args(args).output()?)
    }

    /// Runs a command that must succeed; returns its stdout.
    fn ok(&self, args: &[&str]) -> anyhow::Result<String> {
        let out = self.run(args)?;
        if !out.status.success() {
            bail!(
                "fabric {args:?} failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    fn status(&self) -> anyhow::Result<Value> {
        Ok(serde_json::from_str(&self.ok(&["status", "--json"])?)?)
    }

    fn node<'a>(status: &'a Value, name: &str) -> anyhow::Result<&'a Value> {
        status["nodes"]
            .as_array()
            .and_then(|nodes| nodes.iter().find(|n| n["name"] == name))
            .with_context(|| format!("{name} missing from status: {status}"))
    }

    fn state_of(&self, name: &str) -> anyhow::Result<String> {
        let status = self.status()?;
        Ok(Fabric::node(&status, name)?["state"]
            .as_str()
            .unwrap_or("?")
            .to_string())
    }

    fn store_url(&self, name: &str) -> anyhow::Result<String> {
        let status = self.status()?;
        let addr = Fabric::node(&status, name)?["services"]["store"]
            .as_str()
            .context("no store service")?
            .to_string();
        Ok(format!("http://{addr}"))
    }

    fn pids(&self) -> Vec<u32> {
        let path = self.data.path().join("var/fabric.json");
        let Ok(text) = std::fs::read_to_string(path) else {
            return Vec::new();
        };
        let Ok(state) = serde_json::from_str::<Value>(&text) else {
            return Vec::new();
        };
        let mut pids: Vec<u32> = state["nodes"]
            .as_object()
            .map(|m| {
                m.values()
                    .filter_map(|r| r["pid"].as_u64())
                    .map(|p| p as u32)
                    .collect()
            })
            .unwrap_or_default();
        pids.extend(state["supervisor"].as_u64().map(|p| p as u32));
        pids
    }
}

impl Drop for Fabric {
    fn drop(&mut self) {
        for pid in self.pids() {
            if proc_state(pid).is_alive()
                && let Ok(raw) = i32::try_from(pid)
            {
                let _ = kill(Pid::from_raw(raw), Signal::SIGKILL);
            }
        }
    }
}

fn gone(pid: u64) -> bool {
    !proc_state(pid as u32).is_alive()
}

#[tokio::test]
async fn operators_watch_kill_restart_and_stop_nodes() -> anyhow::Result<()> {
    let f = Fabric::new("topology/mini.toml")?;
    let topology = f.topology.display().to_string();
    let table = f.ok(&["up", &topology, "--detach"])?;
    assert!(
        table.contains("store-a") && table.contains("ready"),
        "{table}"
    );

    // A second `up` on the same data directory is refused while nodes run.
    let again = f.run(&["up", &topology, "--detach"])?;
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("already running"));

    let status = f.status()?;
    assert_eq!(status["domains"][0]["name"], "acme.example");
    assert_eq!(status["domains"][0]["home"], "west");
    for name in ["store-a", "store-b"] {
        let n = Fabric::node(&status, name)?;
        assert_eq!(n["state"], "ready", "{n}");
        assert_eq!(n["role"], "store");
        let pid = n["pid"].as_u64().context("pid")?;
        assert_eq!(proc_state(pid as u32), ProcState::Running);
        assert!(
            n["admin"]
                .as_str()
                .is_some_and(|a| a.starts_with("127.1.0."))
        );
    }
    // The simulated outside world runs like any node, and `fabric outside` shows what it received.
    let sink = Fabric::node(&status, "outside")?;
    assert_eq!(
        (&sink["role"], &sink["state"]),
        (&Value::from("sink"), &Value::from("ready"))
    );
    let sms_addr = sink["services"]["sms"].as_str().context("sms service")?;
    let gateway = StoreClient::new(format!("http://{sms_addr}"));
    let posted = gateway
        .raw(
            store_client::Method::POST,
            "/v1/sms",
            &[],
            bytes::Bytes::from_static(br#"{"to": "+15550100", "text": "hello operators"}"#),
        )
        .await?;
    assert_eq!(posted.status.as_u16(), 201);
    let listed = f.ok(&["outside", "sms"])?;
    assert!(
        listed.contains("+15550100") && listed.contains("hello operators"),
        "{listed}"
    );
    let mail: Value = serde_json::from_str(&f.ok(&["outside", "messages", "--json"])?)?;
    assert_eq!(
        mail["messages"],
        serde_json::json!([]),
        "no mail left the fabric yet"
    );

    let a_url = f.store_url("store-a")?;
    let a = StoreClient::new(a_url.clone()).with_timeout(Duration::from_secs(20));
    let w = a
        .enqueue("inbound", Some("cli-1"), None, "kept across kill")
        .await?;
    assert_eq!(w.copies, vec!["store-a", "store-b"]);

    // SIGKILL: the process is gone when the command returns, and status says so.
    let a_pid = Fabric::node(&f.status()?, "store-a")?["pid"]
        .as_u64()
        .context("pid")?;
    f.ok(&["kill", "store-a"])?;
    assert!(gone(a_pid), "store-a (pid {a_pid}) survived fabric kill");
    assert_eq!(f.state_of("store-a")?, "down");
    assert!(Fabric::node(&f.status()?, "store-a")?["pid"].is_null());

    // SIGSTOP: alive but frozen; `start` resumes it.
    f.ok(&["kill", "store-b", "--signal", "stop"])?;
    assert_eq!(f.state_of("store-b")?, "stopped");
    assert!(!f.run(&["start", "store-b"])?.stdout.is_empty());
    assert_eq!(f.state_of("store-b")?, "ready");

    // Restart the killed store: the acknowledged write is there.
    f.ok(&["start", "store-a"])?;
    assert_eq!(f.state_of("store-a")?, "ready");
    let held = a.list_queue("inbound", None).await?;
    assert!(held.iter().any(|i| i.message_id == "cli-1"));
    let refused = f.run(&["start", "store-a"])?;
    assert!(
        !refused.status.success(),
        "starting a running node must fail"
    );

    // An operator-driven rebuild answers with where it rebuilt from.
    let rebuilt = f.ok(&["store", "rebuild", "store-a"])?;
    assert!(rebuilt.contains("store-b"), "{rebuilt}");
    assert!(
        a.list_queue("inbound", None)
            .await?
            .iter()
            .any(|i| i.message_id == "cli-1")
    );

    // Unknown nodes are named in the error.
    let unknown = f.run(&["kill", "store-zz"])?;
    assert!(!unknown.status.success());
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("store-zz"));

    let status = f.status()?;
    let nodes = status["nodes"].as_array().cloned().unwrap_or_default();
    let pids: Vec<u64> = nodes.iter().filter_map(|n| n["pid"].as_u64()).collect();
    assert_eq!(pids.len(), nodes.len(), "every node runs: {status}");
    f.ok(&["down"])?;
    for pid in pids {
        assert!(gone(pid), "pid {pid} survived fabric down");
    }
    assert_eq!(f.state_of("store-a")?, "down");
    Ok(())
}

fn wait_for(what: &str, timeout: Duration, mut check: impl FnMut() -> bool) -> anyhow::Result<()> {
    let start = std::time::Instant::now();
    while !check() {
        if start.elapsed() > timeout {
            bail!("timed out waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// Kills the foreground `fabric up` if the test fails before it stops by itself.
struct Foreground(Child);

impl Drop for Foreground {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn ctrl_c_stops_a_foreground_fabric_cleanly() -> anyhow::Result<()> {
    let f = Fabric::new("topology/mini.toml")?;
    let mut up = Foreground(
        f.command()
            .args(["up", &f.topology.display().to_string()])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()?,
    );
    // `fabric up` records itself as the supervisor once every node is ready and it is watching them.
    let state_file = f.data.path().join("var/fabric.json");
    wait_for("fabric up to supervise", Duration::from_secs(60), || {
        std::fs::read_to_string(&state_file)
            .ok()
            .and_then(|t| serde_json::from_str::<Value>(&t).ok())
            .is_some_and(|s| s["supervisor"].as_u64() == Some(u64::from(up.0.id())))
    })?;
    assert!(
        f.status()?["nodes"]
            .as_array()
            .is_some_and(|n| n.iter().all(|n| n["state"] == "ready"))
    );
    let node_pids: Vec<u32> = f.pids().into_iter().filter(|p| *p != up.0.id()).collect();
    let node_count = f.status()?["nodes"].as_array().map_or(0, Vec::len);
    assert_eq!(node_pids.len(), node_count);

    // A node killed under the supervisor is reaped (no zombie left behind).
    let status = f.status()?;
    let b_pid = Fabric::node(&status, "store-b")?["pid"]
        .as_u64()
        .context("pid")? as u32;
    f.ok(&["kill", "store-b"])?;
    wait_for(
        "the supervisor to reap store-b",
        Duration::from_secs(5),
        || proc_state(b_pid) == ProcState::Gone,
    )?;

    // Ctrl-C is SIGINT to the foreground process.
    kill(Pid::from_raw(i32::try_from(up.0.id())?), Signal::SIGINT)?;
    let mut exit = None;
    wait_for(
        "fabric up to exit after Ctrl-C",
        Duration::from_secs(20),
        || {
            exit = up.0.try_wait().ok().flatten();
            exit.is_some()
        },
    )?;
    assert!(
        exit.is_some_and(|e| e.success()),
        "fabric up exited with {exit:?}"
    );
    for pid in node_pids {
        assert!(
            !proc_state(pid).is_alive(),
            "node pid {pid} survived Ctrl-C"
        );
    }
    assert!(
        f.status()?["nodes"]
            .as_array()
            .is_some_and(|n| n.iter().all(|n| n["state"] == "down"))
    );
    Ok(())
}

#[tokio::test]
async fn operators_manage_users_and_the_blocklist_on_a_running_fabric() -> anyhow::Result<()> {
    use argon2::PasswordVerifier;
    use std::io::Write;

    let f = Fabric::new("topology/mini.toml")?;
    let up = f.ok(&["up", &f.topology.display().to_string(), "--detach"])?;
    // The demo mailbox was created and its password printed; the password is the real one.
    let demo_password = up
        .lines()
        .find_map(|l| l.strip_prefix("demo mailbox demo@acme.example"))
        .and_then(|rest| rest.split_whitespace().nth(1))
        .with_context(|| format!("no demo password in: {up}"))?
        .to_string();
    let store = StoreClient::new(f.store_url("store-a")?).with_timeout(Duration::from_secs(20));
    let demo = store
        .get_user("demo@acme.example", None)
        .await?
        .context("demo user")?;
    let demo_hash = demo["password_hash"].as_str().context("hash")?.to_string();
    let parsed = argon2::PasswordHash::new(&demo_hash).map_err(|e| anyhow::anyhow!("{e}"))?;
    assert!(
        argon2::Argon2::default()
            .verify_password(demo_password.as_bytes(), &parsed)
            .is_ok()
    );
    let mut add = f
        .command()
        .args([
            "user",
            "add",
            "Ann@Acme.Example",
            "--password-stdin",
            "--notify",
            "sms",
            "--sms",
            "+15550100",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()?;
    add.stdin
        .take()
        .context("stdin")?
        .write_all(b"s3cret pass\n")?;
    assert!(add.wait()?.success());
    // The directory holds an argon2 hash of exactly that password (the newline is not part of it).
    let user = store
        .get_user("ann@acme.example", None)
        .await?
        .context("ann saved")?;
    let hash = user["password_hash"].as_str().context("hash")?.to_string();
    let parsed = argon2::PasswordHash::new(&hash).map_err(|e| anyhow::anyhow!("{e}"))?;
    assert!(
        argon2::Argon2::default()
            .verify_password(b"s3cret pass", &parsed)
            .is_ok()
    );
    assert!(
        argon2::Argon2::default()
            .verify_password(b"wrong", &parsed)
            .is_err()
    );
    assert_eq!(user["notify"], "sms");
    // Listing never shows the hash.
    let listed = f.ok(&["user", "list", "--json"])?;
    assert!(
        listed.contains("ann@acme.example") && !listed.contains("argon2"),
        "{listed}"
    );
    // Not a customer domain: refused.
    assert!(
        !f.run(&["user", "add", "x@elsewhere.example", "--password", "p"])?
            .status
            .success()
    );
    // passwd replaces the hash.
    f.ok(&[
        "user",
        "passwd",
        "ann@acme.example",
        "--password",
        "another one",
    ])?;
    let user = store
        .get_user("ann@acme.example", None)
        .await?
        .context("ann kept")?;
    assert_ne!(user["password_hash"].as_str(), Some(hash.as_str()));
    // Blocklist round trip.
    f.ok(&["blocklist", "add", "Spammer.Example"])?;
    assert_eq!(f.ok(&["blocklist", "list"])?.trim(), "spammer.example");
    f.ok(&["blocklist", "remove", "spammer.example"])?;
    assert_eq!(f.ok(&["blocklist", "list"])?.trim(), "");
    // A message's hops, by `fabric trace`: sent with a raw SMTP conversation to the mail server.
    let status = f.status()?;
    let smtp = Fabric::node(&status, "mx-a")?["services"]["smtp"]
        .as_str()
        .context("smtp address")?
        .to_string();
    let reply = tokio::task::spawn_blocking(move || -> anyhow::Result<String> {
        use std::io::{BufRead, BufReader, Write};
        let stream = std::net::TcpStream::connect(&smtp)?;
        let mut r = BufReader::new(stream.try_clone()?);
        let mut w = stream;
        let mut last = String::new();
        for cmd in [
            "",
            "EHLO t.example\r\n",
            "MAIL FROM:<x@remote.example>\r\n",
            "RCPT TO:<demo@acme.example>\r\n",
            "DATA\r\n",
            "Subject: t\r\n\r\nhi\r\n.\r\n",
        ] {
            w.write_all(cmd.as_bytes())?;
            loop {
                last.clear();
                r.read_line(&mut last)?;
                if last.as_bytes().get(3) != Some(&b'-') {
                    break;
                }
            }
        }
        Ok(last)
    })
    .await??;
    assert!(reply.starts_with("250"), "{reply}");
    let id = reply
        .trim_end()
        .rsplit(' ')
        .next()
        .context("id")?
        .to_string();
    let mut trace = String::new();
    for _ in 0..100 {
        // The first hop is written just after the 250, the second when the transfer moves it.
        let out = f.run(&["trace", &id])?;
        trace = String::from_utf8_lossy(&out.stdout).into_owned();
        if out.status.success() && trace.contains("delivered") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        trace.contains("mx-a") && trace.contains("accepted"),
        "{trace}"
    );
    assert!(
        trace.contains("transfer-a") && trace.contains("delivered"),
        "{trace}"
    );
    let listed = f.ok(&["trace", "--recipient", "demo@acme.example"])?;
    assert!(listed.contains(&id), "{listed}");
    assert!(!f.run(&["trace", "no-such-message"])?.status.success());
    // Removing a user takes it out of the directory.
    f.ok(&["user", "remove", "ann@acme.example"])?;
    assert!(store.get_user("ann@acme.example", None).await?.is_none());
    f.ok(&["down"])?;
    Ok(())
}
