//! The compose file of a [`Deployment`], as YAML text (written by hand: the file is small and regular,
//! and the order of its keys is the reader's map).

use std::fmt::Write as _;

use super::Deployment;

/// Where the compose file finds the image and the files it mounts.
#[derive(Debug, Clone)]
pub struct RenderOptions {
    /// The image every service runs (`make docker` tags `mailfabric:latest`).
    pub image: String,
    /// The docker topology, relative to the compose file.
    pub topology: String,
    /// The TLS directory `fabric compose` filled, relative to the compose file (mounted read-only).
    pub tls_dir: String,
    /// A comment naming the source topology.
    pub source: String,
    /// Seconds a node may drain on SIGTERM before docker kills it.
    pub stop_grace_secs: u64,
}

/// Where things are inside a container.
pub const TOPOLOGY_IN_CONTAINER: &str = "/fabric/topology.toml";
pub const TLS_IN_CONTAINER: &str = "/fabric/tls";
pub const DATA_IN_CONTAINER: &str = "/data";
pub const BIN_IN_CONTAINER: &str = "/usr/local/bin";
/// The engine's socket, mounted into the supervisors (they start standby containers).
pub const DOCKER_SOCKET: &str = "/var/run/docker.sock";

/// The compose file (Compose Specification; docker-compose 1.27+ and `docker compose` read it).
pub fn render(d: &Deployment, o: &RenderOptions) -> String {
    let mut y = String::new();
    let _ = writeln!(
        y,
        "# Written by `fabric compose {}`: edit the topology and run it again.\n\
         # One service per node; one internal network per zone (no route out of a network a container\n\
         # is not on); routers, relays and dns are the only nodes with an address in a zone.\n\
         # Deploy: make compose-up (docker-compose -p mailfabric -f docker/compose.yaml up -d).",
        o.source
    );
    y.push_str("services:\n");
    for s in &d.services {
        let binary = format!("{BIN_IN_CONTAINER}/{}", s.role.binary());
        let _ = writeln!(y, "  {}:", s.node);
        let _ = writeln!(y, "    image: {}", o.image);
        let _ = writeln!(y, "    hostname: {}", s.node);
        let _ = writeln!(
            y,
            "    command: [\"{binary}\", \"--topology\", \"{TOPOLOGY_IN_CONTAINER}\", \"--node\", \"{}\", \
             \"--data-dir\", \"{DATA_IN_CONTAINER}\", \"--tls-dir\", \"{TLS_IN_CONTAINER}\"]",
            s.node
        );
        if s.role == topology::Role::Supervisor {
            // Standbys are containers started through the engine (crates/supervisor/src/host.rs).
            y.push_str("    environment:\n      FABRIC_STANDBYS: containers\n");
        }
        y.push_str("    restart: unless-stopped\n");
        let _ = writeln!(y, "    stop_grace_period: {}s", o.stop_grace_secs);
        y.push_str("    networks:\n");
        for (net, address) in &s.addresses {
            let _ = writeln!(y, "      {net}:\n        ipv4_address: {address}");
        }
        y.push_str("    volumes:\n");
        let _ = writeln!(y, "      - {}:{TOPOLOGY_IN_CONTAINER}:ro", o.topology);
        let _ = writeln!(y, "      - {}:{TLS_IN_CONTAINER}:ro", o.tls_dir);
        if s.role == topology::Role::Supervisor {
            let _ = writeln!(y, "      - {DOCKER_SOCKET}:{DOCKER_SOCKET}");
        }
        if let Some(v) = &s.volume {
            let _ = writeln!(y, "      - {v}:{DATA_IN_CONTAINER}");
        }
        y.push_str("    healthcheck:\n");
        let _ = writeln!(
            y,
            "      test: [\"CMD\", \"{BIN_IN_CONTAINER}/fabric-probe\", \"http://{}/health\"]",
            s.admin
        );
        y.push_str(
            "      interval: 5s\n      timeout: 3s\n      retries: 3\n      start_period: 30s\n",
        );
    }
    y.push_str("networks:\n");
    for n in &d.networks {
        let _ = writeln!(y, "  {}:", n.name);
        y.push_str("    driver: bridge\n    internal: true\n");
        let _ = writeln!(
            y,
            "    ipam:\n      config:\n        - subnet: {}\n          gateway: {}",
            n.subnet, n.gateway
        );
    }
    let volumes: Vec<&String> = d
        .services
        .iter()
        .filter_map(|s| s.volume.as_ref())
        .collect();
    if !volumes.is_empty() {
        y.push_str("volumes:\n");
        for v in volumes {
            let _ = writeln!(y, "  {v}: {{}}");
        }
    }
    y
}
