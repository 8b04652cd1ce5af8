//! The fabric's nodes as containers, through the Docker Engine API (its unix socket, through
//! `bollard`): what the supervisor needs to stand in for a failed node with a container at the same
//! addresses, and what `fabric chaos --docker` needs to hurt and heal a compose deployment.
//!
//! Containers are found by the labels `docker-compose` / `docker compose` put on them
//! (`com.docker.compose.project`, `com.docker.compose.service` = the node's name), networks by the
//! compose naming `PROJECT_NETWORK`. A standby container carries `mailfabric.standby-for` (the node)
//! and `mailfabric.standby-by` (the supervisor) and the project's label, so `compose down
//! --remove-orphans` removes it with the rest.

use std::collections::HashMap;
use std::net::Ipv4Addr;

use bollard::Docker;
use bollard::errors::Error as BollardError;
use bollard::models::{
    ContainerCreateBody, EndpointIpamConfig, EndpointSettings, HealthStatusEnum, HostConfig,
    NetworkConnectRequest, NetworkDisconnectRequest, NetworkingConfig,
};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, KillContainerOptionsBuilder, ListContainersOptionsBuilder,
    LogsOptionsBuilder, RemoveContainerOptionsBuilder, StopContainerOptionsBuilder,
};

pub const PROJECT_LABEL: &str = "com.docker.compose.project";
pub const SERVICE_LABEL: &str = "com.docker.compose.service";
pub const STANDBY_FOR_LABEL: &str = "mailfabric.standby-for";
pub const STANDBY_BY_LABEL: &str = "mailfabric.standby-by";
pub const STANDBY_SINCE_LABEL: &str = "mailfabric.standby-since-ms";
/// Where a node keeps its data inside its container (a standby gets an empty one).
pub const DATA_DIR: &str = "/data";

/// What went wrong talking to the Docker Engine.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("the Docker Engine: {what}: {source}")]
    Api {
        what: String,
        #[source]
        source: BollardError,
    },
    #[error("no container of node {node} in project {project}")]
    NoContainer { node: String, project: String },
    #[error(
        "cannot tell this process's own container (no /proc/self/mountinfo entry under /containers/)"
    )]
    NotInContainer,
    #[error("container {id} has no {what}")]
    Incomplete { id: String, what: &'static str },
}

type Result<T> = std::result::Result<T, EngineError>;

fn api(what: impl Into<String>) -> impl FnOnce(BollardError) -> EngineError {
    let what = what.into();
    move |source| EngineError::Api { what, source }
}

/// The HTTP status the engine answered with, if it answered.
fn status_of(e: &BollardError) -> Option<u16> {
    match e {
        BollardError::DockerResponseServerError { status_code, .. } => Some(*status_code),
        _ => None,
    }
}

/// A container as the fabric cares about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct State {
    pub running: bool,
    pub paused: bool,
    /// `healthy`, `unhealthy`, `starting`, or `None` without a health check.
    pub health: Option<String>,
    /// The container's main process on the host (0 when not running).
    pub pid: u32,
}

impl State {
    /// Running, not paused, and not reported unhealthy by its own health check.
    pub fn serving(&self) -> bool {
        self.running && !self.paused && self.health.as_deref() == Some("healthy")
    }
}

/// A standby container of the project.
#[derive(Debug, Clone)]
pub struct Standby {
    pub id: String,
    pub node: String,
    pub by: String,
    pub running: bool,
    pub since_ms: u64,
}

/// How to start a standby for `node`.
#[derive(Debug, Clone)]
pub struct StandbySpec<'a> {
    pub node: &'a str,
    /// The supervisor that runs it.
    pub by: &'a str,
    /// The network name of the compose file (not prefixed) -> the node's address on it.
    pub networks: &'a [(String, Ipv4Addr)],
    /// Added to the original's environment.
    pub env: Vec<String>,
    pub since_ms: u64,
}

/// A network the engine has, and its subnets as the engine writes them (`10.1.0.0/16`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkInUse {
    pub name: String,
    /// One of the project's own networks.
    pub own: bool,
    pub subnets: Vec<String>,
}

/// A connection to the Docker Engine, scoped to one compose project.
#[derive(Clone)]
pub struct Engine {
    docker: Docker,
    project: String,
}

impl Engine {
    /// Connects (`DOCKER_HOST` or `/var/run/docker.sock`) and agrees on an API version with the
    /// engine (Docker 20.10 speaks 1.41 at most).
    pub async fn connect(project: &str) -> Result<Engine> {
        let docker = Docker::connect_with_unix_defaults()
            .map_err(api("connecting to the socket"))?
            .negotiate_version()
            .await
            .map_err(api("negotiating the API version"))?;
        Ok(Engine {
            docker,
            project: project.to_string(),
        })
    }

    /// Connects for the project of the container this process runs in.
    pub async fn connect_own_project() -> Result<Engine> {
        let own = own_container_id().ok_or(EngineError::NotInContainer)?;
        let mut engine = Engine::connect("").await?;
        let me = engine
            .docker
            .inspect_container(&own, None)
            .await
            .map_err(api(format!("inspecting own container {own}")))?;
        engine.project = me
            .config
            .and_then(|c| c.labels)
            .and_then(|l| l.get(PROJECT_LABEL).cloned())
            .ok_or(EngineError::Incomplete {
                id: own,
                what: "compose project label",
            })?;
        Ok(engine)
    }

    pub fn project(&self) -> &str {
        &self.project
    }

    /// Every network of the engine with a subnet, and whether it is this project's: what a new
    /// network of the project must not overlap (its own networks aside).
    pub async fn subnets(&self) -> Result<Vec<NetworkInUse>> {
        let networks = self
            .docker
            .list_networks(None)
            .await
            .map_err(api("listing networks"))?;
        Ok(networks
            .into_iter()
            .filter_map(|n| {
                let own =
                    n.labels.as_ref().and_then(|l| l.get(PROJECT_LABEL)) == Some(&self.project);
                let subnets: Vec<String> = n
                    .ipam?
                    .config?
                    .into_iter()
                    .filter_map(|c| c.subnet)
                    .collect();
                Some(NetworkInUse {
                    name: n.name.unwrap_or_default(),
                    own,
                    subnets,
                })
            })
            .filter(|n| !n.subnets.is_empty())
            .collect())
    }

    /// The engine's name of a network of the compose file.
    pub fn network(&self, name: &str) -> String {
        format!("{}_{name}", self.project)
    }

    async fn list(&self, labels: &[String]) -> Result<Vec<bollard::models::ContainerSummary>> {
        let mut filters = HashMap::new();
        filters.insert("label", labels.to_vec());
        let options = ListContainersOptionsBuilder::new()
            .all(true)
            .filters(&filters)
            .build();
        self.docker
            .list_containers(Some(options))
            .await
            .map_err(api("listing containers"))
    }

    /// The id of the compose service's container of `node` (not a standby).
    pub async fn container_of(&self, node: &str) -> Result<String> {
        let found = self
            .list(&[
                format!("{PROJECT_LABEL}={}", self.project),
                format!("{SERVICE_LABEL}={node}"),
            ])
            .await?;
        found
            .into_iter()
            .filter(|c| {
                c.labels
                    .as_ref()
                    .is_none_or(|l| !l.contains_key(STANDBY_FOR_LABEL))
            })
            .find_map(|c| c.id)
            .ok_or_else(|| EngineError::NoContainer {
                node: node.to_string(),
                project: self.project.clone(),
            })
    }

    pub async fn state(&self, id: &str) -> Result<State> {
        let c = self
            .docker
            .inspect_container(id, None)
            .await
            .map_err(api(format!("inspecting {id}")))?;
        let s = c.state.unwrap_or_default();
        let health = s.health.and_then(|h| h.status).and_then(|h| match h {
            HealthStatusEnum::EMPTY | HealthStatusEnum::NONE => None,
            other => Some(other.to_string()),
        });
        Ok(State {
            running: s.running.unwrap_or(false),
            paused: s.paused.unwrap_or(false),
            health,
            pid: s.pid.and_then(|p| u32::try_from(p).ok()).unwrap_or(0),
        })
    }

    /// SIGKILL (a paused container too). A container that is not running is left as it is.
    pub async fn kill(&self, id: &str) -> Result<()> {
        let options = KillContainerOptionsBuilder::new().signal("SIGKILL").build();
        match self.docker.kill_container(id, Some(options)).await {
            Err(e) if status_of(&e) == Some(409) => Ok(()),
            r => r.map_err(api(format!("killing {id}"))),
        }
    }

    pub async fn pause(&self, id: &str) -> Result<()> {
        self.docker
            .pause_container(id)
            .await
            .map_err(api(format!("pausing {id}")))
    }

    pub async fn unpause(&self, id: &str) -> Result<()> {
        self.docker
            .unpause_container(id)
            .await
            .map_err(api(format!("unpausing {id}")))
    }

    /// Starts a stopped container (one already running is left alone).
    pub async fn start(&self, id: &str) -> Result<()> {
        match self.docker.start_container(id, None).await {
            Err(e) if status_of(&e) == Some(304) => Ok(()),
            r => r.map_err(api(format!("starting {id}"))),
        }
    }

    /// SIGTERM, then SIGKILL after `grace_secs` (docker stop).
    pub async fn stop(&self, id: &str, grace_secs: i32) -> Result<()> {
        let options = StopContainerOptionsBuilder::new().t(grace_secs).build();
        match self.docker.stop_container(id, Some(options)).await {
            Err(e) if status_of(&e) == Some(304) => Ok(()),
            r => r.map_err(api(format!("stopping {id}"))),
        }
    }

    /// Removes a container, running or not (gone already is fine).
    pub async fn remove(&self, id: &str) -> Result<()> {
        let options = RemoveContainerOptionsBuilder::new().force(true).build();
        match self.docker.remove_container(id, Some(options)).await {
            Err(e) if status_of(&e) == Some(404) => Ok(()),
            r => r.map_err(api(format!("removing {id}"))),
        }
    }

    /// The last `lines` lines the container wrote (stdout and stderr), for an error message.
    pub async fn log_tail(&self, id: &str, lines: usize) -> String {
        use futures_util::StreamExt;
        let options = LogsOptionsBuilder::new()
            .stdout(true)
            .stderr(true)
            .tail(&lines.to_string())
            .build();
        let mut stream = self.docker.logs(id, Some(options));
        let mut out = String::new();
        while let Some(Ok(chunk)) = stream.next().await {
            out.push_str(&chunk.to_string());
        }
        out
    }

    /// Cuts the container's leg on a network of the compose file.
    pub async fn disconnect(&self, network: &str, id: &str) -> Result<()> {
        let request = NetworkDisconnectRequest {
            container: id.to_string(),
            force: Some(true),
        };
        self.docker
            .disconnect_network(&self.network(network), request)
            .await
            .map_err(api(format!("disconnecting {id} from {network}")))
    }

    /// Gives the container its leg on a network back, at `address`.
    pub async fn connect_leg(&self, network: &str, id: &str, address: Ipv4Addr) -> Result<()> {
        let request = NetworkConnectRequest {
            container: id.to_string(),
            endpoint_config: Some(endpoint(address)),
        };
        self.docker
            .connect_network(&self.network(network), request)
            .await
            .map_err(api(format!("connecting {id} to {network} at {address}")))
    }

    /// The networks (compose names, unprefixed) the container has a leg on now.
    pub async fn legs(&self, id: &str) -> Result<Vec<String>> {
        let c = self
            .docker
            .inspect_container(id, None)
            .await
            .map_err(api(format!("inspecting {id}")))?;
        let prefix = format!("{}_", self.project);
        Ok(c.network_settings
            .and_then(|n| n.networks)
            .map(|n| {
                n.into_keys()
                    .filter_map(|k| k.strip_prefix(&prefix).map(str::to_string))
                    .collect()
            })
            .unwrap_or_default())
    }

    /// The project's standby containers, of `node` and/or by `by` when given.
    pub async fn standbys(&self, node: Option<&str>, by: Option<&str>) -> Result<Vec<Standby>> {
        let mut labels = vec![
            format!("{PROJECT_LABEL}={}", self.project),
            STANDBY_FOR_LABEL.to_string(),
        ];
        labels.extend(node.map(|n| format!("{STANDBY_FOR_LABEL}={n}")));
        labels.extend(by.map(|b| format!("{STANDBY_BY_LABEL}={b}")));
        Ok(self
            .list(&labels)
            .await?
            .into_iter()
            .filter_map(|c| {
                let l = c.labels.unwrap_or_default();
                Some(Standby {
                    id: c.id?,
                    node: l.get(STANDBY_FOR_LABEL)?.clone(),
                    by: l.get(STANDBY_BY_LABEL).cloned().unwrap_or_default(),
                    running: c.state.is_some_and(|s| s.to_string() == "running"),
                    since_ms: l
                        .get(STANDBY_SINCE_LABEL)
                        .and_then(|s| s.parse().ok())
                        .unwrap_or(0),
                })
            })
            .collect())
    }

    /// Creates (does not start) a standby container for `spec.node`: the original's image, command,
    /// health check and read-only mounts, an empty data directory, the original's addresses on
    /// every network. The original must not hold them (killed first: the fencing). A standby of the
    /// same name left from before is removed first.
    pub async fn create_standby(&self, spec: &StandbySpec<'_>) -> Result<String> {
        let original = self.container_of(spec.node).await?;
        let c = self
            .docker
            .inspect_container(&original, None)
            .await
            .map_err(api(format!("inspecting {original}")))?;
        let config = c.config.ok_or(EngineError::Incomplete {
            id: original.clone(),
            what: "config",
        })?;
        let binds: Vec<String> = c
            .host_config
            .and_then(|h| h.binds)
            .unwrap_or_default()
            .into_iter()
            .filter(|b| b.split(':').nth(1) != Some(DATA_DIR))
            .collect();
        let name = format!("{}-{}-standby", self.project, spec.node);
        self.remove(&name).await?;
        let mut env = config.env.unwrap_or_default();
        env.extend(spec.env.iter().cloned());
        let labels = HashMap::from([
            (PROJECT_LABEL.to_string(), self.project.clone()),
            (SERVICE_LABEL.to_string(), format!("{}-standby", spec.node)),
            (STANDBY_FOR_LABEL.to_string(), spec.node.to_string()),
            (STANDBY_BY_LABEL.to_string(), spec.by.to_string()),
            (STANDBY_SINCE_LABEL.to_string(), spec.since_ms.to_string()),
        ]);
        let mut networks = spec.networks.iter();
        let first = networks.next().ok_or(EngineError::Incomplete {
            id: original.clone(),
            what: "network in the topology",
        })?;
        let body = ContainerCreateBody {
            hostname: config.hostname,
            env: Some(env),
            cmd: config.cmd,
            entrypoint: config.entrypoint,
            image: config.image,
            healthcheck: config.healthcheck,
            labels: Some(labels),
            stop_signal: config.stop_signal,
            host_config: Some(HostConfig {
                binds: Some(binds),
                ..Default::default()
            }),
            networking_config: Some(NetworkingConfig {
                endpoints_config: Some(HashMap::from([(
                    self.network(&first.0),
                    endpoint(first.1),
                )])),
            }),
            ..Default::default()
        };
        let options = CreateContainerOptionsBuilder::new().name(&name).build();
        let created = self
            .docker
            .create_container(Some(options), body)
            .await
            .map_err(api(format!("creating {name}")))?;
        // API 1.41 takes one network at creation; the other legs join before the start.
        for (network, address) in networks {
            if let Err(e) = self.connect_leg(network, &created.id, *address).await {
                let _ = self.remove(&created.id).await;
                return Err(e);
            }
        }
        Ok(created.id)
    }
}

fn endpoint(address: Ipv4Addr) -> EndpointSettings {
    EndpointSettings {
        ipam_config: Some(EndpointIpamConfig {
            ipv4_address: Some(address.to_string()),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The id of the container this process runs in, from the engine's bind mounts of
/// `/etc/hostname` and friends (`.../containers/ID/hostname`) in `/proc/self/mountinfo`.
pub fn own_container_id() -> Option<String> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    container_id_in_mountinfo(&text)
}

/// See [`own_container_id`].
pub fn container_id_in_mountinfo(text: &str) -> Option<String> {
    text.lines().find_map(|line| {
        let (_, rest) = line.split_once("/containers/")?;
        let id = rest.split('/').next()?;
        (id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit())).then(|| id.to_string())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_id_from_mountinfo() {
        let id = "4f".repeat(32);
        let text = format!(
            "612 585 0:52 / / rw,relatime - overlay overlay rw\n\
             640 612 254:1 /var/lib/docker/containers/{id}/hostname /etc/hostname rw - ext4 /dev/vda rw\n"
        );
        assert_eq!(container_id_in_mountinfo(&text), Some(id));
        assert_eq!(
            container_id_in_mountinfo("22 1 0:21 / /proc rw - proc proc rw\n"),
            None
        );
        // A path under some other "containers" directory that is not an engine id.
        assert_eq!(
            container_id_in_mountinfo("1 2 0:1 /srv/containers/web/x /x rw - ext4 /dev/vda rw\n"),
            None
        );
    }

    #[test]
    fn serving_needs_a_healthy_running_unpaused_container() {
        let s = State {
            running: true,
            paused: false,
            health: Some("healthy".into()),
            pid: 7,
        };
        assert!(s.serving());
        assert!(
            !State {
                paused: true,
                ..s.clone()
            }
            .serving()
        );
        assert!(
            !State {
                health: Some("unhealthy".into()),
                ..s.clone()
            }
            .serving()
        );
        assert!(
            !State {
                running: false,
                ..s
            }
            .serving()
        );
    }
}
