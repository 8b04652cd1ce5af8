//! What the router tests share: the edge topology (two-site.toml, the routers of
//! `topology/two-site.toml` and stand-in redirectors), real `fabric-router` processes
//! started by the fabric's launcher and SIGKILLed on drop, and a redirector played by the test.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::Duration;

use anyhow::{Context, bail};
use fabric::{Launcher, SpawnOptions};
use node_runtime::proxy_header;
use serde::Deserialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use topology::{Node, Role, Topology};

/// Every wait in these tests is bounded by this.
pub const WAIT: Duration = Duration::from_secs(10);

/// The redirectors the routers forward to: the redirector role is not in this branch, so the tests
/// declare them here (and play them with [`FakeRedirector`]).
pub const REDIRECTORS: &str = r#"
[[node]]
name = "redirector-inet-w"
role = "redirector"
site = "west"
zones = ["internet"]
address = "127.10.1.5"
ports = { smtp = 2525 }
admin = 9100

[[node]]
name = "redirector-iso-w"
role = "redirector"
site = "west"
zones = ["isolated"]
address = "127.20.1.5"
ports = { pop3 = 1110, imap = 1143, submission = 1587 }
admin = 9100

[[node]]
name = "redirector-inet-e"
role = "redirector"
site = "east"
zones = ["internet"]
address = "127.10.2.5"
ports = { smtp = 2525 }
admin = 9100

[[node]]
name = "redirector-iso-e"
role = "redirector"
site = "east"
zones = ["isolated"]
address = "127.20.2.5"
ports = { pop3 = 1110, imap = 1143, submission = 1587 }
admin = 9100
"#;

/// The `[[node]]` entries of a topology fragment.
#[derive(Deserialize)]
struct Fragment {
    #[serde(rename = "node", default)]
    nodes: Vec<Node>,
}

pub fn workspace_root() -> PathBuf {
    testkit::workspace_root()
}

/// two-site.toml (its routers and access lists) with its redirectors replaced by the stand-ins above;
/// validated.
pub fn edge_topology() -> anyhow::Result<Topology> {
    let root = workspace_root();
    let base = std::fs::read_to_string(root.join("topology/two-site.toml"))?;
    let mut t: Topology = toml::from_str(&base).context("two-site.toml")?;
    t.nodes.retain(|n| n.role() != Role::Redirector);
    let redirectors: Fragment = toml::from_str(REDIRECTORS).context("test redirectors")?;
    t.nodes.extend(redirectors.nodes);
    let text = t.to_toml()?;
    Ok(Topology::parse(&text, Path::new("edge-test.toml"))?)
}

/// The edge topology with its ports shifted into a slot held by the returned value.
pub fn shifted_topology() -> anyhow::Result<(testkit::PortSlot, Topology)> {
    let slot = testkit::PortSlot::claim()?;
    let mut t = edge_topology()?;
    t.offset_ports(slot.offset()).map_err(anyhow::Error::msg)?;
    Ok((slot, t))
}

/// Router processes of the edge topology, in a port slot and a directory of their own.
pub struct Edge {
    pub launcher: Launcher,
    children: BTreeMap<String, Child>,
    _slot: testkit::PortSlot,
    _dir: tempfile::TempDir,
}

impl Edge {
    pub fn new() -> anyhow::Result<Edge> {
        let (slot, t) = shifted_topology()?;
        let dir = tempfile::Builder::new()
            .prefix("fabric-router-")
            .tempdir()?;
        let file = dir.path().join("topology.toml");
        std::fs::write(&file, t.to_toml()?)?;
        let bin = PathBuf::from(env!("CARGO_BIN_EXE_fabric-router"));
        let bin_dir = bin.parent().context("the binary's directory")?;
        let launcher = Launcher::new(&file, &dir.path().join("var"), bin_dir)?;
        Ok(Edge {
            launcher,
            children: BTreeMap::new(),
            _slot: slot,
            _dir: dir,
        })
    }

    pub fn node(&self, name: &str) -> anyhow::Result<&Node> {
        self.launcher
            .topology
            .node(name)
            .with_context(|| format!("no node {name}"))
    }

    /// `node`'s address for `service` (ports as shifted into this slot).
    pub fn addr(&self, node: &str, service: &str) -> anyhow::Result<SocketAddr> {
        self.node(node)?
            .service_addr(service)
            .with_context(|| format!("{node} has no {service} port"))
    }

    /// Starts a router and waits for its `/ready`.
    pub async fn start(&mut self, name: &str) -> anyhow::Result<()> {
        let child = self.launcher.spawn(
            name,
            SpawnOptions {
                die_with_parent: true,
            },
        )?;
        self.children.insert(name.to_string(), child);
        let child = self.children.get_mut(name);
        self.launcher.wait_ready(name, child, WAIT).await?;
        Ok(())
    }

    /// SIGKILLs a router and reaps it.
    pub fn kill(&mut self, name: &str) -> anyhow::Result<()> {
        let mut child = self
            .children
            .remove(name)
            .with_context(|| format!("{name} is not running"))?;
        child.kill()?;
        child.wait()?;
        Ok(())
    }

    /// GET `path` on a node's admin port: the body.
    pub async fn admin_get(&self, node: &str, path: &str) -> anyhow::Result<String> {
        let addr = self.node(node)?.admin_addr();
        let mut s = timeout(TcpStream::connect(addr)).await??;
        let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        s.write_all(req.as_bytes()).await?;
        let mut body = Vec::new();
        timeout(s.read_to_end(&mut body)).await??;
        let text = String::from_utf8_lossy(&body).into_owned();
        match text.split_once("\r\n\r\n") {
            Some((head, body)) if head.starts_with("HTTP/1.1 200") => Ok(body.to_string()),
            _ => bail!("GET {path} on {node}: {text}"),
        }
    }

    /// A metric's value on a node's `/metrics` (0 when absent). `series` is `name{labels}`.
    pub async fn metric(&self, node: &str, series: &str) -> anyhow::Result<f64> {
        let text = self.admin_get(node, "/metrics").await?;
        Ok(metric_value(&text, series))
    }

    pub fn log(&self, node: &str) -> String {
        std::fs::read_to_string(self.launcher.log_path(node)).unwrap_or_default()
    }
}

impl Drop for Edge {
    fn drop(&mut self) {
        for child in self.children.values_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
        for name in self.children.keys() {
            eprintln!(
                "---- last lines of {name}'s log ----\n{}",
                self.launcher.log_tail(name, 30)
            );
        }
    }
}

/// The value of one series in Prometheus text (labels in the exporter's order), 0 if absent.
pub fn metric_value(text: &str, series: &str) -> f64 {
    text.lines()
        .filter_map(|l| l.strip_prefix(series))
        .filter_map(|rest| rest.strip_prefix(' '))
        .find_map(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

/// Bounds a wait by [`WAIT`].
pub async fn timeout<F: std::future::Future>(f: F) -> anyhow::Result<F::Output> {
    tokio::time::timeout(WAIT, f)
        .await
        .map_err(|_| anyhow::anyhow!("timed out after {WAIT:?}"))
}

/// A client from an address of its own in the zone (so the header's address is unmistakable).
pub async fn connect_from(source: &str, to: SocketAddr) -> anyhow::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(format!("{source}:0").parse()?)?;
    Ok(timeout(socket.connect(to)).await??)
}

/// One connection a [`FakeRedirector`] took: who opened it and whom its PROXY header named.
#[derive(Debug, Clone)]
pub struct Arrival {
    pub peer: SocketAddr,
    pub client: Option<SocketAddr>,
}

/// A redirector played by the test: reads the PROXY v2 header, greets with `HELLO <client>\r\n`,
/// then echoes until EOF and closes its side.
pub struct FakeRedirector {
    pub arrivals: mpsc::UnboundedReceiver<Arrival>,
    task: Option<JoinHandle<()>>,
}

impl FakeRedirector {
    pub async fn listen(addr: SocketAddr) -> anyhow::Result<FakeRedirector> {
        let listener = TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding {addr}"))?;
        let (tx, arrivals) = mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            while let Ok((mut s, peer)) = listener.accept().await {
                let tx = tx.clone();
                tokio::spawn(async move {
                    let Ok(client) = proxy_header::read(&mut s, WAIT).await else {
                        let _ = tx.send(Arrival { peer, client: None });
                        return;
                    };
                    let _ = tx.send(Arrival { peer, client });
                    let who = client.map(|c| c.to_string()).unwrap_or_default();
                    let _ = s.write_all(format!("HELLO {who}\r\n").as_bytes()).await;
                    let (mut r, mut w) = s.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                    let _ = w.shutdown().await;
                });
            }
        });
        Ok(FakeRedirector {
            arrivals,
            task: Some(task),
        })
    }

    /// The next connection that arrived (bounded wait).
    pub async fn next(&mut self) -> anyhow::Result<Arrival> {
        timeout(self.arrivals.recv())
            .await?
            .context("the redirector stopped")
    }
}

impl FakeRedirector {
    /// Stops listening (the listener is closed when this returns).
    pub async fn close(mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
            let _ = task.await;
        }
    }
}

impl Drop for FakeRedirector {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

/// Talks through an allowed flow: reads the greeting, sends `payload`, half-closes, and returns
/// everything read until the far side closed.
pub async fn round_trip(mut s: TcpStream, payload: &[u8]) -> anyhow::Result<String> {
    s.write_all(payload).await?;
    s.shutdown().await?;
    let mut got = Vec::new();
    timeout(s.read_to_end(&mut got)).await??;
    Ok(String::from_utf8_lossy(&got).into_owned())
}

/// Connects to a refused port and asserts the router reset it without a byte. On loopback the reset
/// can arrive before the connecting task looks at its socket: then `connect` itself reports it (a
/// refusal by a closed port, ECONNREFUSED, does not pass).
pub async fn assert_refused_at(from: &str, to: SocketAddr, what: &str) -> anyhow::Result<()> {
    match connect_from(from, to).await {
        Ok(s) => assert_refused(s, what).await,
        Err(e)
            if e.downcast_ref::<std::io::Error>()
                .is_some_and(|e| e.kind() == std::io::ErrorKind::ConnectionReset) =>
        {
            Ok(())
        }
        Err(e) => Err(e.context(format!("connecting to {what}"))),
    }
}

/// Asserts the router refused `s`: a reset or an EOF, and not one byte.
pub async fn assert_refused(mut s: TcpStream, what: &str) -> anyhow::Result<()> {
    let mut buf = [0u8; 64];
    match timeout(s.read(&mut buf)).await? {
        Ok(0) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => Ok(()),
        Ok(n) => bail!("{what}: the router sent {n} bytes: {:?}", &buf[..n]),
        Err(e) => bail!("{what}: unexpected error {e}"),
    }
}
