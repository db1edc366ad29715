//! A stack's containers as Docker has them, read back by their `quarry.*` labels, and the
//! create/start/remove calls the reconciler makes.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;

use bollard::models::{
    ContainerCreateBody, ContainerSummary, EndpointSettings, HostConfig, NetworkingConfig,
    PortBinding, RestartPolicy, RestartPolicyNameEnum,
};
use bollard::query_parameters::{
    CreateContainerOptions, ListContainersOptions, LogsOptions, RemoveContainerOptions,
    StopContainerOptions,
};
use futures_util::StreamExt;

use super::origin::{Origin, ORIGIN};
use super::{is_not_found, DockerError, Engine};
pub use crate::reconcile::diff::{NodeMeta, ObservedContainer, RunState};
use crate::types::{labels, DesiredContainer, Kind, SliceId};

/// Labels quarry adds beside the shared ones, so `quarry ps` and the read-back of the current
/// state need nothing but Docker.
pub mod extra_labels {
    /// The container's alias on the stack network (its `Placement::host`).
    pub const HOST: &str = "quarry.host";
    /// The health check, as JSON.
    pub const HEALTH: &str = "quarry.health";
    /// The node's domains, comma separated (web only).
    pub const DOMAINS: &str = "quarry.domains";
    /// The node's definition field by field, as JSON.
    pub const FIELDS: &str = "quarry.fields";
    /// The container ports, main one first, comma separated.
    pub const PORTS: &str = "quarry.ports";
}

/// Where a local run (`quarry start`) publishes ports: the host's loopback only (the router
/// and the health checker run on the host). In the cluster a server publishes on its cluster
/// address instead, so other servers reach the replicas ([`create`]'s `publish_ip`).
pub const PUBLISH_IP: std::net::IpAddr = std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

fn label_filter(stack: &str) -> HashMap<String, Vec<String>> {
    HashMap::from([(
        "label".to_owned(),
        vec![format!("{}={stack}", labels::STACK)],
    )])
}

/// Every container of the engine (running or not), filtered by Docker's list filters if given.
async fn list_all(
    engine: &Engine,
    filters: Option<HashMap<String, Vec<String>>>,
) -> Result<Vec<ContainerSummary>, DockerError> {
    let options = ListContainersOptions {
        all: true,
        filters,
        ..Default::default()
    };
    engine
        .client()
        .list_containers(Some(options))
        .await
        .map_err(|e| DockerError::api("listing containers", e))
}

/// The ids of every container labelled with the stack that `origin` made ([`Origin::owns`]),
/// whatever their other labels.
pub async fn stack_container_ids(
    engine: &Engine,
    stack: &str,
    origin: &Origin,
) -> Result<Vec<String>, DockerError> {
    let list = list_all(engine, Some(label_filter(stack))).await?;
    Ok(list
        .into_iter()
        .filter(|c| origin.owns(c.labels.as_ref().unwrap_or(&HashMap::new())))
        .filter_map(|c| c.id)
        .collect())
}

/// Every container `origin` made of every stack on the engine whose labels quarry can read,
/// by stack (each list sorted as [`observe`] sorts it).
pub async fn observe_all(
    engine: &Engine,
    origin: &Origin,
) -> Result<BTreeMap<String, Vec<ObservedContainer>>, DockerError> {
    let filters = HashMap::from([("label".to_owned(), vec![labels::STACK.to_owned()])]);
    let mut stacks: Vec<String> = list_all(engine, Some(filters))
        .await?
        .into_iter()
        .filter_map(|c| c.labels)
        .filter(|l| origin.owns(l))
        .filter_map(|l| l.get(labels::STACK).cloned())
        .collect();
    stacks.sort();
    stacks.dedup();
    let mut out = BTreeMap::new();
    for stack in stacks {
        let observed = observe(engine, &stack, origin).await?;
        out.insert(stack, observed);
    }
    Ok(out)
}

/// Every container of the stack that `origin` made whose labels quarry can read, sorted by
/// node, revision and replica. (Containers carrying the stack label but not the others are
/// skipped here; `quarry stop` still removes them through [`stack_container_ids`].)
pub async fn observe(
    engine: &Engine,
    stack: &str,
    origin: &Origin,
) -> Result<Vec<ObservedContainer>, DockerError> {
    let mut out = Vec::new();
    for id in stack_container_ids(engine, stack, origin).await? {
        let inspect = match engine.client().inspect_container(&id, None).await {
            Ok(i) => i,
            // Removed between the list and the inspect.
            Err(e) if is_not_found(&e) => continue,
            Err(e) => return Err(DockerError::api(format!("inspecting container {id}"), e)),
        };
        let labels = inspect
            .config
            .as_ref()
            .and_then(|c| c.labels.clone())
            .unwrap_or_default();
        if !origin.owns(&labels) {
            continue; // relabelled between the list and the inspect: not ours
        }
        let state = inspect.state.unwrap_or_default();
        let running = state.running.unwrap_or(false) || state.restarting.unwrap_or(false);
        let status = state
            .status
            .map(|s| s.to_string())
            .unwrap_or_else(|| "unknown".to_owned());
        let bindings = inspect
            .host_config
            .and_then(|h| h.port_bindings)
            .unwrap_or_default();
        let host_ports = parse_bindings(&bindings);
        let publish_ip = bindings
            .values()
            .flatten()
            .flatten()
            .find_map(|b| b.host_ip.as_deref()?.parse::<IpAddr>().ok());
        let name = inspect
            .name
            .unwrap_or_default()
            .trim_start_matches('/')
            .to_owned();
        if let Some(c) = from_labels(&labels) {
            out.push(ObservedContainer {
                id,
                name,
                state: if running {
                    RunState::Running
                } else {
                    RunState::Stopped
                },
                status,
                host_ports,
                publish_ip,
                image: inspect
                    .config
                    .as_ref()
                    .and_then(|c| c.image.clone())
                    .unwrap_or_default(),
                started_at: state.started_at.filter(|s| !s.starts_with("0001-")),
                pid: state.pid.filter(|p| *p > 0),
                ..c
            });
        }
    }
    out.sort_by(|a, b| {
        (&a.node, a.revision, a.replica, &a.id).cmp(&(&b.node, b.revision, b.replica, &b.id))
    });
    Ok(out)
}

/// The quarry fields of a container from its labels; `None` if one is missing or malformed.
fn from_labels(l: &HashMap<String, String>) -> Option<ObservedContainer> {
    let kind = match l.get(labels::KIND)?.as_str() {
        "service" => Kind::Service,
        "web" => Kind::Web,
        "worker" => Kind::Worker,
        _ => return None,
    };
    Some(ObservedContainer {
        id: String::new(),
        name: String::new(),
        node: l.get(labels::NODE)?.clone(),
        kind,
        revision: l.get(labels::REVISION)?.parse().ok()?,
        definition: l.get(labels::DEFINITION)?.clone(),
        replica: l.get(labels::REPLICA)?.parse().ok()?,
        slice: SliceId(l.get(labels::SLICE)?.clone()),
        host: l.get(extra_labels::HOST)?.clone(),
        health: l
            .get(extra_labels::HEALTH)
            .and_then(|h| serde_json::from_str(h).ok()),
        domains: l
            .get(extra_labels::DOMAINS)
            .map(|d| {
                d.split(',')
                    .filter(|s| !s.is_empty())
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default(),
        fields: l
            .get(extra_labels::FIELDS)
            .and_then(|f| serde_json::from_str(f).ok())
            .unwrap_or_default(),
        ports: l
            .get(extra_labels::PORTS)
            .map(|p| p.split(',').filter_map(|p| p.parse().ok()).collect())
            .unwrap_or_default(),
        state: RunState::Stopped,
        status: String::new(),
        host_ports: BTreeMap::new(),
        publish_ip: None,
        image: String::new(),
        started_at: None,
        pid: None,
    })
}

fn parse_bindings(bindings: &HashMap<String, Option<Vec<PortBinding>>>) -> BTreeMap<u16, u16> {
    let mut out = BTreeMap::new();
    for (key, list) in bindings {
        let Some(port) = key.strip_suffix("/tcp").and_then(|p| p.parse::<u16>().ok()) else {
            continue;
        };
        let host = list
            .iter()
            .flatten()
            .find_map(|b| b.host_port.as_deref().and_then(|p| p.parse::<u16>().ok()));
        if let Some(host) = host {
            out.insert(port, host);
        }
    }
    out
}

/// Creates (does not start) the container of a placed desired container on `network`, its
/// ports published on `publish_ip` (loopback for a local run, the server's cluster address in
/// the cluster), named and labelled as `origin`'s. `meta` (domains, definition fields) is
/// recorded in labels so the current state can be read back. The container's hostname is
/// `NODE-rREVISION-REPLICA`; its alias on the stack network is its placement's host unless
/// that is an address.
pub async fn create(
    engine: &Engine,
    network: &str,
    desired: &DesiredContainer,
    meta: &NodeMeta,
    publish_ip: IpAddr,
    origin: &Origin,
) -> Result<String, DockerError> {
    let name = origin.container_name(desired);
    let placement = desired.placement.as_ref();
    let hostname = format!("{}-r{}-{}", desired.node, desired.revision, desired.replica);
    let host = placement
        .map(|p| p.host.clone())
        .unwrap_or_else(|| hostname.clone());
    let aliases = if host.parse::<IpAddr>().is_ok() {
        vec![hostname.clone()]
    } else {
        vec![host.clone()]
    };
    let mut labels: HashMap<String, String> = desired.labels().into_iter().collect();
    labels.insert(extra_labels::HOST.to_owned(), host.clone());
    labels.insert(ORIGIN.to_owned(), origin.label().to_owned());
    if let Some(health) = &desired.health {
        labels.insert(
            extra_labels::HEALTH.to_owned(),
            serde_json::to_string(health).unwrap_or_default(),
        );
    }
    labels.insert(
        extra_labels::PORTS.to_owned(),
        desired
            .ports
            .iter()
            .map(u16::to_string)
            .collect::<Vec<_>>()
            .join(","),
    );
    if !meta.fields.is_empty() {
        labels.insert(
            extra_labels::FIELDS.to_owned(),
            serde_json::to_string(&meta.fields).unwrap_or_default(),
        );
    }
    if !meta.domains.is_empty() {
        labels.insert(extra_labels::DOMAINS.to_owned(), meta.domains.join(","));
    }
    let port_bindings: HashMap<String, Option<Vec<PortBinding>>> = placement
        .map(|p| {
            p.host_ports
                .iter()
                .map(|(port, host_port)| {
                    (
                        format!("{port}/tcp"),
                        Some(vec![PortBinding {
                            host_ip: Some(publish_ip.to_string()),
                            host_port: Some(host_port.to_string()),
                        }]),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    let body = ContainerCreateBody {
        image: Some(desired.image.reference().to_owned()),
        cmd: desired.command.as_ref().map(|c| c.argv()),
        env: Some(
            desired
                .env
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect(),
        ),
        labels: Some(labels),
        exposed_ports: Some(desired.ports.iter().map(|p| format!("{p}/tcp")).collect()),
        hostname: Some(hostname),
        host_config: Some(HostConfig {
            restart_policy: Some(RestartPolicy {
                name: Some(RestartPolicyNameEnum::UNLESS_STOPPED),
                maximum_retry_count: None,
            }),
            memory: (desired.memory > 0).then_some(desired.memory as i64),
            // An init as pid 1, so SIGTERM stops any image promptly.
            init: Some(true),
            network_mode: Some(network.to_owned()),
            port_bindings: Some(port_bindings),
            ..Default::default()
        }),
        networking_config: Some(NetworkingConfig {
            endpoints_config: Some(HashMap::from([(
                network.to_owned(),
                EndpointSettings {
                    aliases: Some(aliases),
                    ..Default::default()
                },
            )])),
        }),
        ..Default::default()
    };
    let options = CreateContainerOptions {
        name: Some(name.clone()),
        ..Default::default()
    };
    let created = engine
        .client()
        .create_container(Some(options), body)
        .await
        .map_err(|e| DockerError::api(format!("creating container {name}"), e))?;
    Ok(created.id)
}

/// Starts a container.
pub async fn start(engine: &Engine, id: &str) -> Result<(), DockerError> {
    engine
        .client()
        .start_container(id, None)
        .await
        .map_err(|e| DockerError::api(format!("starting container {id}"), e))
}

/// Stops (SIGTERM, then SIGKILL after `grace_s`) and removes a container; a container already
/// gone is not an error.
pub async fn stop_and_remove(engine: &Engine, id: &str, grace_s: i32) -> Result<(), DockerError> {
    let stop = StopContainerOptions {
        t: Some(grace_s),
        ..Default::default()
    };
    match engine.client().stop_container(id, Some(stop)).await {
        Ok(()) => {}
        Err(e) if is_not_found(&e) => return Ok(()),
        // 304: already stopped.
        Err(bollard::errors::Error::DockerResponseServerError {
            status_code: 304, ..
        }) => {}
        Err(e) => return Err(DockerError::api(format!("stopping container {id}"), e)),
    }
    remove(engine, id).await
}

/// Removes a container at once (killing it if it runs); a container already gone is not an
/// error.
pub async fn remove(engine: &Engine, id: &str) -> Result<(), DockerError> {
    let options = RemoveContainerOptions {
        force: true,
        ..Default::default()
    };
    match engine.client().remove_container(id, Some(options)).await {
        Ok(()) => Ok(()),
        Err(e) if is_not_found(&e) => Ok(()),
        Err(e) => Err(DockerError::api(format!("removing container {id}"), e)),
    }
}

/// Every host port published by any container on this engine (running or not), so a new
/// placement never picks one of them.
pub async fn published_host_ports(engine: &Engine) -> Result<Vec<u16>, DockerError> {
    let list = list_all(engine, None).await?;
    let mut ports = Vec::new();
    for c in list {
        // Running containers list their ports; stopped ones only in their host config.
        ports.extend(c.ports.iter().flatten().filter_map(|p| p.public_port));
        if c.state.as_ref().map(|s| s.to_string()).as_deref() != Some("running") {
            if let Some(id) = c.id {
                if let Ok(i) = engine.client().inspect_container(&id, None).await {
                    if let Some(b) = i.host_config.and_then(|h| h.port_bindings) {
                        ports.extend(parse_bindings(&b).into_values());
                    }
                }
            }
        }
    }
    ports.sort_unstable();
    ports.dedup();
    Ok(ports)
}

/// How many restarts by the restart policy make a new container count as crash-looping.
const CRASH_RESTARTS: i64 = 2;

/// Why a container is failing (it exited, or its restart policy keeps restarting it), with the
/// last lines of its output; `None` while it runs normally.
pub async fn crash_report(engine: &Engine, id: &str) -> Result<Option<String>, DockerError> {
    let inspect = engine
        .client()
        .inspect_container(id, None)
        .await
        .map_err(|e| DockerError::api(format!("inspecting container {id}"), e))?;
    let restarts = inspect.restart_count.unwrap_or(0);
    let state = inspect.state.unwrap_or_default();
    let running = state.running.unwrap_or(false);
    let restarting = state.restarting.unwrap_or(false);
    let why = if !running && !restarting {
        format!("exited with code {}", state.exit_code.unwrap_or(-1))
    } else if restarts >= CRASH_RESTARTS {
        format!(
            "keeps crashing (restarted {restarts} times, last exit code {})",
            state.exit_code.unwrap_or(-1)
        )
    } else {
        return Ok(None);
    };
    let options = LogsOptions {
        stdout: true,
        stderr: true,
        tail: "5".to_owned(),
        ..Default::default()
    };
    let mut lines = Vec::new();
    let mut logs = engine.client().logs(id, Some(options));
    while let Some(Ok(chunk)) = logs.next().await {
        lines.extend(
            chunk
                .to_string()
                .lines()
                .filter(|l| !l.trim().is_empty())
                .map(str::to_owned),
        );
    }
    if lines.is_empty() {
        Ok(Some(why))
    } else {
        Ok(Some(format!("{why}; last output: {}", lines.join(" | "))))
    }
}
