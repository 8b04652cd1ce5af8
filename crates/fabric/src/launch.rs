//! Where a fabric's files live, and starting one node as its own process.

use std::fs::OpenOptions;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use store_client::{Method, StoreClient};
use topology::{Node, Role, Topology, TopologyError};

/// Why a node could not be launched or did not become ready.
#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    #[error(transparent)]
    Topology(#[from] TopologyError),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("preparing certificates: {0}")]
    Tls(String),
    #[error("no node named {0:?} in the topology")]
    UnknownNode(String),
    #[error(
        "the binary {0} does not exist (build with `cargo build --workspace --bins`, or set FABRIC_BIN_DIR)"
    )]
    MissingBinary(PathBuf),
    #[error("{node} exited during startup ({status}); last log lines:\n{tail}")]
    ExitedEarly {
        node: String,
        status: String,
        tail: String,
    },
    #[error("{supervisor} did not retire its standby of {node}: {message}")]
    Standby {
        node: String,
        supervisor: String,
        message: String,
    },
    #[error("the ports of {node} were still taken {waited:?} after its standby was retired")]
    PortsTaken { node: String, waited: Duration },
    #[error("{node} was not ready after {waited:?} (GET {url}/ready); last log lines:\n{tail}")]
    NotReady {
        node: String,
        url: String,
        waited: Duration,
        tail: String,
    },
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> LaunchError + '_ {
    move |source| LaunchError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// How a node process is tied to whoever starts it.
#[derive(Debug, Clone, Copy, Default)]
pub struct SpawnOptions {
    /// Ask the kernel to SIGKILL the node when the starting thread dies (tests: no orphan survives a
    /// crashed test). Operators' nodes outlive the `fabric` command, so it is off by default.
    pub die_with_parent: bool,
}

/// A topology file plus the directories its nodes run from.
#[derive(Debug, Clone)]
pub struct Launcher {
    /// Absolute path of the topology file handed to every node.
    pub topology_file: PathBuf,
    pub topology: Topology,
    /// Holds `nodes/NODE/` (each node's state), `logs/NODE.log` and `fabric.json`.
    pub data_dir: PathBuf,
    /// Where the `fabric-ROLE` binaries are.
    pub bin_dir: PathBuf,
}

impl Launcher {
    pub fn new(
        topology_file: &Path,
        data_dir: &Path,
        bin_dir: &Path,
    ) -> Result<Launcher, LaunchError> {
        let topology_file = std::path::absolute(topology_file).map_err(io_err(topology_file))?;
        let topology = Topology::load(&topology_file)?;
        std::fs::create_dir_all(data_dir).map_err(io_err(data_dir))?;
        let data_dir = std::path::absolute(data_dir).map_err(io_err(data_dir))?;
        let launcher = Launcher {
            topology_file,
            topology,
            data_dir,
            bin_dir: bin_dir.to_path_buf(),
        };
        launcher.prepare_tls()?;
        Ok(launcher)
    }

    pub fn node(&self, name: &str) -> Result<&Node, LaunchError> {
        self.topology
            .node(name)
            .ok_or_else(|| LaunchError::UnknownNode(name.to_string()))
    }

    pub fn node_data_dir(&self, node: &str) -> PathBuf {
        self.data_dir.join("nodes").join(node)
    }

    pub fn log_path(&self, node: &str) -> PathBuf {
        self.data_dir.join("logs").join(format!("{node}.log"))
    }

    /// The fabric's CA and node certificates.
    pub fn tls_dir(&self) -> PathBuf {
        self.data_dir.join("tls")
    }

    /// Creates the CA and every node's certificate that do not exist yet.
    pub fn prepare_tls(&self) -> Result<(), LaunchError> {
        node_runtime::tls::ensure_certificates(&self.tls_dir(), &self.topology)
            .map_err(|e| LaunchError::Tls(e.to_string()))
    }

    pub fn state_path(&self) -> PathBuf {
        FabricStatePaths::state(&self.data_dir)
    }

    /// The binary that runs `node`'s role.
    pub fn binary(&self, node: &Node) -> PathBuf {
        self.bin_dir.join(node.role().binary())
    }

    /// `http://ADDR:PORT` of the node's admin endpoints.
    pub fn admin_url(&self, node: &Node) -> String {
        format!("http://{}", node.admin_addr())
    }

    /// Starts `node` as a new process in its own process group (a Ctrl-C at the terminal reaches only
    /// the `fabric` command, which then stops the nodes in order), logging to `logs/NODE.log`.
    pub fn spawn(&self, name: &str, options: SpawnOptions) -> Result<Child, LaunchError> {
        let node = self.node(name)?;
        let binary = self.binary(node);
        if !binary.is_file() {
            return Err(LaunchError::MissingBinary(binary));
        }
        let data = self.node_data_dir(name);
        std::fs::create_dir_all(&data).map_err(io_err(&data))?;
        let log_path = self.log_path(name);
        if let Some(dir) = log_path.parent() {
            std::fs::create_dir_all(dir).map_err(io_err(dir))?;
        }
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(io_err(&log_path))?;
        let log2 = log.try_clone().map_err(io_err(&log_path))?;
        let mut command = Command::new(&binary);
        command
            .arg("--topology")
            .arg(&self.topology_file)
            .arg("--node")
            .arg(name)
            .arg("--data-dir")
            .arg(&data)
            .arg("--tls-dir")
            .arg(self.tls_dir())
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .process_group(0);
        if options.die_with_parent {
            die_with_parent(&mut command);
        }
        command.spawn().map_err(io_err(&binary))
    }

    /// Waits until the node answers 200 on `/ready`, failing early if `child` exits.
    pub async fn wait_ready(
        &self,
        name: &str,
        mut child: Option<&mut Child>,
        timeout: Duration,
    ) -> Result<(), LaunchError> {
        let node = self.node(name)?;
        let url = self.admin_url(node);
        let client = StoreClient::new(url.clone()).with_timeout(Duration::from_secs(2));
        let start = Instant::now();
        loop {
            if let Some(child) = child.as_deref_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                return Err(LaunchError::ExitedEarly {
                    node: name.to_string(),
                    status: status.to_string(),
                    tail: self.log_tail(name, 20),
                });
            }
            if let Ok(resp) = client
                .raw(Method::GET, "/ready", &[], bytes::Bytes::new())
                .await
                && resp.status.is_success()
            {
                return Ok(());
            }
            if start.elapsed() > timeout {
                return Err(LaunchError::NotReady {
                    node: name.to_string(),
                    url,
                    waited: timeout,
                    tail: self.log_tail(name, 20),
                });
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Fail-back: before an original mail server starts, every supervisor of the topology that runs a
    /// standby in its place retires it (`DELETE /v1/standby/NODE` with the topology's operator
    /// token), and this waits until the node's ports are free. Returns the supervisors that retired
    /// one. A supervisor that does not answer runs no standby (its standbys die with it). Other roles
    /// never have standbys: nothing to ask.
    pub async fn reclaim_from_standby(&self, name: &str) -> Result<Vec<String>, LaunchError> {
        let retired_by = self.retire_standbys(name).await?;
        if !retired_by.is_empty() {
            wait_ports_free(self.node(name)?, Duration::from_secs(10)).await?;
        }
        Ok(retired_by)
    }

    /// Asks every supervisor that runs a standby of `name` to retire it; returns those that did
    /// (a standby container is gone, its addresses free, when its supervisor answers).
    pub async fn retire_standbys(&self, name: &str) -> Result<Vec<String>, LaunchError> {
        let node = self.node(name)?;
        if !node.role().has_standby() {
            return Ok(Vec::new());
        }
        let retire_timeout = self.topology.timing.shutdown_deadline + Duration::from_secs(5);
        let mut retired_by = Vec::new();
        for supervisor in self.topology.nodes_with_role(Role::Supervisor) {
            let Some(addr) = supervisor.service_addr("supervisor") else {
                continue;
            };
            let client =
                StoreClient::new(format!("http://{addr}")).with_timeout(Duration::from_secs(2));
            let Ok(resp) = client
                .raw(Method::GET, "/v1/standby", &[], bytes::Bytes::new())
                .await
            else {
                continue;
            };
            let list: serde_json::Value = serde_json::from_slice(&resp.body).unwrap_or_default();
            let serves = list["standbys"]
                .as_array()
                .is_some_and(|all| all.iter().any(|s| s["node"] == name));
            if !resp.status.is_success() || !serves {
                continue;
            }
            let fail = |message: String| LaunchError::Standby {
                node: name.to_string(),
                supervisor: supervisor.name.clone(),
                message,
            };
            // The supervisor retires only for the operator's token; the launcher has the topology.
            let auth: Vec<(&str, String)> = self
                .topology
                .fabric
                .operator_token
                .iter()
                .map(|t| ("authorization", format!("Bearer {t}")))
                .collect();
            let resp = client
                .with_timeout(retire_timeout)
                .raw(
                    Method::DELETE,
                    &format!("/v1/standby/{name}"),
                    &auth,
                    bytes::Bytes::new(),
                )
                .await
                .map_err(|e| fail(e.to_string()))?;
            // 404: it was retired meanwhile (another fail-back), which is what we want.
            if !resp.status.is_success() && resp.status.as_u16() != 404 {
                return Err(fail(format!(
                    "{}: {}",
                    resp.status,
                    String::from_utf8_lossy(&resp.body)
                )));
            }
            retired_by.push(supervisor.name.clone());
        }
        Ok(retired_by)
    }

    /// The last `lines` lines of a node's log (for error messages).
    pub fn log_tail(&self, node: &str, lines: usize) -> String {
        let text = std::fs::read_to_string(self.log_path(node)).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

/// Waits until every port of `node` (services and admin) can be bound at its address again.
async fn wait_ports_free(node: &Node, timeout: Duration) -> Result<(), LaunchError> {
    let addrs: Vec<std::net::SocketAddr> = node
        .ports
        .keys()
        .filter_map(|s| node.service_addr(s))
        .chain(std::iter::once(node.admin_addr()))
        .collect();
    let start = Instant::now();
    // std binds with SO_REUSEADDR, as the nodes do: a port in TIME_WAIT counts as free.
    while !addrs.iter().all(|a| std::net::TcpListener::bind(a).is_ok()) {
        if start.elapsed() > timeout {
            return Err(LaunchError::PortsTaken {
                node: node.name.clone(),
                waited: timeout,
            });
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

/// File names under a data directory.
pub struct FabricStatePaths;

impl FabricStatePaths {
    pub fn state(data_dir: &Path) -> PathBuf {
        data_dir.join("fabric.json")
    }
    pub fn lock(data_dir: &Path) -> PathBuf {
        data_dir.join("fabric.lock")
    }
}

#[allow(unsafe_code)]
/// Makes the child get SIGKILL when the process that spawned it dies (Linux `PR_SET_PDEATHSIG`).
pub fn die_with_parent(command: &mut Command) {
    // SAFETY: the closure runs in the forked child before exec and only calls prctl(2), which is
    // async-signal-safe; it allocates nothing and touches no lock.
    unsafe {
        command.pre_exec(|| {
            nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)
                .map_err(std::io::Error::from)
        });
    }
}

/// Where the node binaries are: `FABRIC_BIN_DIR`, else beside the running executable (for a test
/// binary in `target/PROFILE/deps`, the profile directory above it).
pub fn find_bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("FABRIC_BIN_DIR") {
        return PathBuf::from(dir);
    }
    let exe = std::env::current_exe().unwrap_or_default();
    let mut dir = exe.parent().map(Path::to_path_buf).unwrap_or_default();
    if dir.file_name().is_some_and(|n| n == "deps") {
        dir.pop();
    }
    dir
}
