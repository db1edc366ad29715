//! `quarry start [DIR]`: run a stack on the local Docker, exactly as the cluster will, through
//! a real nginx.
//!
//! load quarry.yml -> read the current state back from the containers' labels -> plan (what
//! `quarry plan` shows) -> place new replicas on the one local server (alias on the stack
//! network; host ports from 20000–29999, kept for the replica's lifetime) -> resolve service
//! addresses -> build images -> converge (services first; new replicas healthy before anything
//! old stops) -> route the healthy replicas -> stop what is no longer wanted -> print URLs.
//!
//! Every check that can fail without side effects (quarry.yml, Docker reachable, the router
//! address free, image builds) runs before the first container changes, so a broken file or
//! build leaves a running revision untouched.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use quarry_node::build::{self, Inputs};
use quarry_node::docker::{self, image, network, Engine};
use quarry_node::reconcile::{self, Converger, NodeMeta};
use quarry_node::router::{render, Applied, RouterSpec, Site};
use quarry_node::spec::LoadError;
use quarry_node::types::{DesiredContainer, Placement, ServerId};
use serde::Serialize;

use crate::local;

/// `quarry start` arguments.
#[derive(Debug, clap::Args)]
pub struct StartArgs {
    /// The stack's directory (the one holding quarry.yml).
    #[arg(default_value = ".")]
    pub dir: PathBuf,
    /// Where the stack's router (nginx) listens; remembered for the next start.
    /// Default: 127.0.0.1:8080.
    #[arg(long, env = "QUARRY_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// Seconds new replicas get to become healthy before the start fails and they are removed.
    #[arg(long, default_value_t = 60)]
    pub health_timeout: u64,
    /// Print the result as JSON (progress still goes to stderr).
    #[arg(long)]
    pub json: bool,
}

/// The first host port quarry hands out, and one past the last (DESIGN.md: 20000–29999).
const HOST_PORTS: std::ops::Range<u16> = 20000..30000;

/// What `quarry start --json` prints.
#[derive(Debug, Serialize)]
struct StartReport {
    stack: String,
    /// The instructions applied (what `quarry plan` shows against the same state).
    plan: Vec<build::Instruction>,
    changed: bool,
    router: RouterReport,
    urls: Vec<UrlReport>,
    containers: Vec<local::PsRow>,
}

#[derive(Debug, Serialize)]
struct RouterReport {
    listen: SocketAddr,
    pid: Option<u32>,
    action: &'static str,
}

#[derive(Debug, Serialize)]
struct UrlReport {
    domain: String,
    node: String,
    url: String,
    curl: String,
    healthy_replicas: usize,
}

fn progress(line: &str) {
    let mut err = std::io::stderr().lock();
    let _ = writeln!(err, "  {line}");
}

/// Runs `quarry start`.
pub async fn run(args: StartArgs) -> anyhow::Result<()> {
    // 1. quarry.yml: nothing happens unless it is valid.
    let (stack, warnings) = match local::load(&args.dir) {
        Ok(loaded) => loaded,
        Err(LoadError::Invalid(diags)) => bail!("{diags}\nnothing was started or changed"),
        Err(e) => bail!("{e}"),
    };
    for w in &warnings {
        eprintln!("{w}");
    }
    let name = stack.name.clone();

    // 2. Docker, and what runs now.
    let engine = Engine::connect().await?;
    let observed = docker::observe(&engine, &name).await?;
    let current = reconcile::current_state(&name, &ServerId::local(), &observed);

    // 3. The plan: exactly what `quarry plan` shows.
    let global_env = BTreeMap::new();
    let plan = build::plan(&Inputs {
        stack: &stack,
        current: &current,
        global_env: &global_env,
    });
    if !args.json || !plan.instructions.is_empty() {
        eprint!("{}", build::render(&plan));
    }

    // 4. Place new replicas on the one local server.
    let mut desired = plan.desired.clone();
    let mut taken: BTreeSet<u16> = docker::containers::published_host_ports(&engine)
        .await?
        .into_iter()
        .collect();
    for d in desired.iter_mut().filter(|d| d.placement.is_none()) {
        d.placement = Some(place(d, &mut taken)?);
    }
    build::resolve_env(&mut desired)?;
    let diff = reconcile::diff(&desired, &observed);

    // 5. The router's address must be ours to take before anything changes.
    let nginx = local::router(&name);
    let listen = args
        .listen
        .or_else(|| local::saved_listen(&name))
        .unwrap_or(local::DEFAULT_LISTEN);
    nginx.check_installed()?;
    let running_listen = nginx.pid().and_then(|_| local::saved_listen(&name));
    if running_listen != Some(listen) {
        if let Err(e) = TcpListener::bind(listen) {
            bail!(
                "the router address {listen} is not free ({e}): pass another with --listen 127.0.0.1:PORT \
                 (or QUARRY_LISTEN); nothing was started or changed"
            );
        }
    }

    // 6. Images, all before the first container changes.
    let mut sources: Vec<_> = diff
        .create
        .iter()
        .chain(diff.replace.iter().map(|(_, d)| d))
        .map(|d| d.image.clone())
        .collect();
    sources.sort_by(|a, b| a.reference().cmp(b.reference()));
    sources.dedup();
    for source in &sources {
        let mut log = |line: &str| progress(&format!("[{}] {line}", source.reference()));
        match image::ensure_image(&engine, &name, &args.dir, source, &mut log).await? {
            image::ImageOutcome::Present => {}
            image::ImageOutcome::Built => eprintln!("built {}", source.reference()),
            image::ImageOutcome::Pulled => eprintln!("pulled {}", source.reference()),
        }
    }

    // 7. Converge: network, services, then web and workers; healthy before anything old stops.
    let net = network::ensure_network(&engine, &name).await?;
    let domains: BTreeMap<String, Vec<String>> =
        plan.routes.iter().fold(BTreeMap::new(), |mut m, r| {
            m.entry(r.node.clone())
                .or_insert_with(Vec::new)
                .push(r.domain.clone());
            m
        });
    let meta: BTreeMap<String, NodeMeta> = stack
        .nodes
        .iter()
        .map(|n| {
            let m = NodeMeta {
                domains: domains.get(&n.name).cloned().unwrap_or_default(),
                fields: build::definition_fields(&stack, n, &global_env),
            };
            (n.name.clone(), m)
        })
        .collect();
    let log = |line: &str| progress(line);
    let converger = Converger::new(
        &engine,
        net,
        meta,
        Duration::from_secs(args.health_timeout),
        &log,
    );
    let up = converger.bring_up(&diff, &desired).await?;
    for (slice, why) in &up.unhealthy_kept {
        eprintln!("warning: {slice} runs but does not answer its health check ({why}); it is left out of the router");
    }

    // 8. Route the healthy replicas, then retire what is no longer wanted.
    let sites: Vec<Site> = domains
        .iter()
        .map(|(node, node_domains)| Site {
            stack: name.clone(),
            node: node.clone(),
            domains: node_domains.clone(),
            upstreams: desired
                .iter()
                .filter(|d| &d.node == node && up.healthy.contains(&d.slice))
                .filter_map(main_host_addr)
                .collect(),
        })
        .collect();
    let rendered = render(&RouterSpec {
        listen,
        sites: sites.clone(),
    });
    for l in &rendered.left_out {
        eprintln!(
            "warning: {} of node {} is left out of the router: {}",
            l.domain, l.node, l.reason
        );
    }
    let conf = rendered.conf;
    let applied = tokio::task::spawn_blocking(move || nginx.apply(&conf))
        .await
        .context("router task")??;
    local::save_listen(&name, listen)?;
    converger.retire(&diff).await?;

    // 9. Report.
    let observed = docker::observe(&engine, &name).await?;
    let rows = local::ps_rows(&observed).await;
    let urls: Vec<UrlReport> = sites
        .iter()
        .flat_map(|s| {
            s.domains.iter().map(move |d| UrlReport {
                domain: d.clone(),
                node: s.node.clone(),
                url: if listen.port() == 80 {
                    format!("http://{d}/")
                } else {
                    format!("http://{d}:{}/", listen.port())
                },
                curl: format!("curl -H 'Host: {d}' http://{listen}/"),
                healthy_replicas: s.upstreams.len(),
            })
        })
        .collect();
    let report = StartReport {
        stack: name.clone(),
        plan: plan.instructions.clone(),
        changed: !diff.is_noop() || applied != Applied::Unchanged,
        router: RouterReport {
            listen,
            pid: local::router(&name).pid(),
            action: match applied {
                Applied::Started => "started",
                Applied::Reloaded => "reloaded",
                Applied::Unchanged => "unchanged",
            },
        },
        urls,
        containers: rows,
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    if !report.changed {
        println!("stack {name} is up to date");
    }
    local::print_table(&report.containers);
    println!(
        "router: nginx on {listen} (pid {})",
        report
            .router
            .pid
            .map(|p| p.to_string())
            .unwrap_or_else(|| "?".into())
    );
    for u in &report.urls {
        println!(
            "{} -> {}   ({} healthy replica(s); try: {})",
            u.url, u.node, u.healthy_replicas, u.curl
        );
    }
    Ok(())
}

/// Where the host reaches a desired container's main port.
fn main_host_addr(d: &DesiredContainer) -> Option<SocketAddr> {
    let main = d.ports.first()?;
    let hp = d.placement.as_ref()?.host_ports.get(main)?;
    Some(SocketAddr::from((Ipv4Addr::LOCALHOST, *hp)))
}

/// A local placement: the container's alias on the stack network (one per revision and
/// replica, so an old and a new revision never share a name), its container ports as they are,
/// and a free host port for each.
fn place(d: &DesiredContainer, taken: &mut BTreeSet<u16>) -> anyhow::Result<Placement> {
    let mut host_ports = BTreeMap::new();
    for port in &d.ports {
        let hp = free_host_port(&d.slice.0, taken).with_context(|| {
            format!(
                "no free host port in {}-{} for {}",
                HOST_PORTS.start,
                HOST_PORTS.end - 1,
                d.slice
            )
        })?;
        taken.insert(hp);
        host_ports.insert(*port, hp);
    }
    Ok(Placement {
        server: ServerId::local(),
        host: format!("{}-r{}-{}", d.node, d.revision, d.replica),
        ports: d.ports.iter().map(|p| (*p, *p)).collect(),
        host_ports,
    })
}

/// A host port not published by any container and free on the host. The scan starts at a
/// point drawn from the slice, the process and the clock, so stacks started side by side
/// rarely reach for the same port.
fn free_host_port(seed: &str, taken: &BTreeSet<u16>) -> Option<u16> {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in seed
        .bytes()
        .chain(std::process::id().to_le_bytes())
        .chain(nanos.to_le_bytes())
    {
        h = (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3);
    }
    let span = u64::from(HOST_PORTS.end - HOST_PORTS.start);
    let start = h % span;
    (0..span)
        .map(|i| HOST_PORTS.start + ((start + i) % span) as u16)
        .find(|p| {
            !taken.contains(p)
                && TcpListener::bind((Ipv4Addr::LOCALHOST, *p)).is_ok()
                && TcpListener::bind((Ipv4Addr::UNSPECIFIED, *p)).is_ok()
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_host_ports_stay_in_range_and_avoid_taken_ones() {
        let mut taken = BTreeSet::new();
        for i in 0..50 {
            let p = free_host_port(&format!("s.web.r1.{i}"), &taken).expect("a free port");
            assert!(HOST_PORTS.contains(&p));
            assert!(taken.insert(p), "port {p} handed out twice");
        }
    }
}
