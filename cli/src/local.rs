//! What `quarry start`, `stop` and `ps` share: where a local stack keeps its files, its router,
//! and how its containers are shown.
//!
//! ```text
//! $QUARRY_HOME (default $XDG_STATE_HOME/quarry, else ~/.local/state/quarry)
//!   stacks/STACK/listen    the router's listen address, kept across starts
//!   stacks/STACK/router/   nginx's prefix (conf, pid, logs, temp)
//! ```

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use quarry_node::docker::{self, Engine, ObservedContainer, Origin};
use quarry_node::health;
use quarry_node::reconcile;
use quarry_node::reconcile::converge::target_of_observed;
use quarry_node::reconcile::RunState;
use quarry_node::router::Nginx;
use quarry_node::spec::{self, Diagnostic, DirFacts, LoadError, StackFile};
use quarry_node::types::{ServerId, StackState};
use serde::Serialize;

/// The default address of a stack's router.
pub const DEFAULT_LISTEN: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(Ipv4Addr::LOCALHOST), 8080);

/// quarry's local state directory.
pub fn home() -> PathBuf {
    if let Some(h) = std::env::var_os("QUARRY_HOME") {
        return PathBuf::from(h);
    }
    if let Some(x) = std::env::var_os("XDG_STATE_HOME") {
        return PathBuf::from(x).join("quarry");
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/root"));
    home.join(".local/state/quarry")
}

/// A stack's local directory.
pub fn stack_dir(stack: &str) -> PathBuf {
    home().join("stacks").join(stack)
}

/// The nginx of a stack.
pub fn router(stack: &str) -> Nginx {
    Nginx::new(&stack_dir(stack).join("router"))
}

/// The listen address remembered for a stack, if any.
pub fn saved_listen(stack: &str) -> Option<SocketAddr> {
    std::fs::read_to_string(stack_dir(stack).join("listen"))
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// Remembers a stack's listen address.
pub fn save_listen(stack: &str, listen: SocketAddr) -> anyhow::Result<()> {
    let dir = stack_dir(stack);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    std::fs::write(dir.join("listen"), listen.to_string())
        .with_context(|| format!("writing {}", dir.join("listen").display()))
}

/// Reads and checks DIR/quarry.yml the way `quarry plan` does (the same default name and the
/// same facts: build directories, this machine's memory as the one server's).
pub fn load(dir: &Path) -> Result<(StackFile, Vec<Diagnostic>), LoadError> {
    load_for(dir, crate::cmd::local_memory())
}

/// Reads and checks DIR/quarry.yml against servers whose largest has `max_memory` bytes
/// (`None`: not known yet); the stack is named after the directory unless the file says.
pub fn load_for(
    dir: &Path,
    max_memory: Option<u64>,
) -> Result<(StackFile, Vec<Diagnostic>), LoadError> {
    let facts = DirFacts {
        root: dir.to_owned(),
        max_memory,
    };
    let default_name = dir
        .canonicalize()
        .ok()
        .and_then(|d| {
            d.file_name()
                .map(|n| n.to_string_lossy().to_ascii_lowercase())
        })
        .unwrap_or_else(|| "stack".to_owned());
    spec::load_with(dir, &default_name, &facts)
}

/// What the local Docker runs of `stack`, read back from its containers' labels; nothing
/// running (said on stderr) when Docker cannot be reached, for commands that only show.
pub async fn current_state_or_nothing(stack: &str) -> anyhow::Result<StackState> {
    match Engine::connect().await {
        Ok(engine) => {
            let observed = docker::observe(&engine, stack, &Origin::Local).await?;
            Ok(reconcile::current_state(
                stack,
                &ServerId::local(),
                &observed,
            ))
        }
        Err(e) => {
            eprintln!("quarry: {e}\nquarry: going on as if nothing of {stack:?} ran");
            Ok(StackState {
                name: stack.to_owned(),
                nodes: std::collections::BTreeMap::new(),
            })
        }
    }
}

/// The arguments of the commands that act on one local stack (`ps`, `stop`).
#[derive(Debug, clap::Args)]
pub struct StackArgs {
    /// The stack's directory (the one holding quarry.yml).
    #[arg(default_value = ".")]
    pub dir: PathBuf,
    /// The stack's name (instead of reading it from DIR/quarry.yml).
    #[arg(short = 's', long = "stack")]
    pub stack: Option<String>,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}

/// The stack named by `-s NAME`, or by the quarry.yml in `dir`.
pub fn stack_name(name: Option<&str>, dir: &Path) -> anyhow::Result<String> {
    if let Some(n) = name {
        return Ok(n.to_owned());
    }
    match load(dir) {
        Ok((stack, _)) => Ok(stack.name),
        Err(e) => {
            anyhow::bail!("{e}\n(name the stack with -s NAME to act on it without its quarry.yml)")
        }
    }
}

/// A container as `quarry ps` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct PsRow {
    /// The node.
    pub node: String,
    /// Its kind.
    pub kind: String,
    /// The replica index.
    pub replica: u32,
    /// The revision.
    pub revision: u64,
    /// running / stopped.
    pub state: RunState,
    /// Docker's status word.
    pub status: String,
    /// healthy / unhealthy: ... / none (no ports, nothing to probe) / - (not running).
    pub health: String,
    /// Where the host reaches its main port.
    pub address: Option<String>,
    /// Its address on the stack network (what other containers use).
    pub host: String,
    /// Seconds since it last started, while running.
    pub uptime_s: Option<u64>,
    /// The container name.
    pub name: String,
    /// The container id.
    pub id: String,
    /// The pid of its main process on the host.
    pub pid: Option<i64>,
}

/// Probes every running container once and builds its row.
pub async fn ps_rows(observed: &[ObservedContainer]) -> Vec<PsRow> {
    let probes = observed.iter().map(|o| async move {
        if o.state != RunState::Running {
            return "-".to_owned();
        }
        let t = target_of_observed(o);
        match t.effective_probe() {
            None => "none".to_owned(),
            Some((addr, probe, timeout)) => {
                match health::probe(addr, &probe, timeout.min(Duration::from_secs(2))).await {
                    Ok(()) => "healthy".to_owned(),
                    Err(e) => format!("unhealthy: {e}"),
                }
            }
        }
    });
    let health = futures_util::future::join_all(probes).await;
    observed
        .iter()
        .zip(health)
        .map(|(o, health)| PsRow {
            node: o.node.clone(),
            kind: o.kind.to_string(),
            replica: o.replica,
            revision: o.revision,
            state: o.state,
            status: o.status.clone(),
            health,
            address: o
                .ports
                .first()
                .and_then(|p| o.host_ports.get(p))
                .map(|hp| format!("127.0.0.1:{hp}")),
            host: match o.ports.first() {
                Some(p) => format!("{}:{p}", o.host),
                None => o.host.clone(),
            },
            uptime_s: if o.state == RunState::Running {
                o.started_at.as_deref().and_then(uptime_s)
            } else {
                None
            },
            name: o.name.clone(),
            id: o.id.chars().take(12).collect(),
            pid: o.pid,
        })
        .collect()
}

/// Prints rows as a table.
pub fn print_table(rows: &[PsRow]) {
    let header = [
        "NODE", "REPLICA", "REVISION", "STATE", "HEALTH", "ADDRESS", "HOST", "UPTIME",
    ];
    let cells: Vec<[String; 8]> = rows
        .iter()
        .map(|r| {
            [
                format!("{} ({})", r.node, r.kind),
                r.replica.to_string(),
                r.revision.to_string(),
                r.status.clone(),
                r.health.clone(),
                r.address.clone().unwrap_or_else(|| "-".to_owned()),
                r.host.clone(),
                r.uptime_s
                    .map(format_uptime)
                    .unwrap_or_else(|| "-".to_owned()),
            ]
        })
        .collect();
    let mut widths = header.map(str::len);
    for row in &cells {
        for (w, c) in widths.iter_mut().zip(row) {
            *w = (*w).max(c.len());
        }
    }
    let line = |row: &[String]| {
        let parts: Vec<String> = row
            .iter()
            .zip(widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        println!("{}", parts.join("  ").trim_end());
    };
    line(&header.map(str::to_owned));
    for row in &cells {
        line(row);
    }
}

fn format_uptime(s: u64) -> String {
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{}s", s / 60, s % 60),
        3600..86400 => format!("{}h{}m", s / 3600, (s % 3600) / 60),
        _ => format!("{}d{}h", s / 86400, (s % 86400) / 3600),
    }
}

/// Seconds since an RFC 3339 UTC time (as Docker writes `StartedAt`).
fn uptime_s(started: &str) -> Option<u64> {
    let started = epoch_s(started)?;
    let now = SystemTime::now().duration_since(UNIX_EPOCH).ok()?.as_secs() as i64;
    Some(now.saturating_sub(started).max(0) as u64)
}

/// `2026-11-27T00:21:03.123Z` -> seconds since the epoch (UTC only, as Docker writes it).
fn epoch_s(t: &str) -> Option<i64> {
    let (date, time) = t.split_once('T')?;
    let mut d = date.split('-').map(|p| p.parse::<i64>().ok());
    let (y, m, day) = (d.next()??, d.next()??, d.next()??);
    let time = time.trim_end_matches('Z');
    let time = time.split(['.', '+']).next()?;
    let mut h = time.split(':').map(|p| p.parse::<i64>().ok());
    let (hh, mm, ss) = (h.next()??, h.next()??, h.next()??);
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146097 + doe - 719468;
    Some(days * 86400 + hh * 3600 + mm * 60 + ss)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_start_times_parse_to_epoch_seconds() {
        assert_eq!(epoch_s("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(epoch_s("2000-03-01T00:00:01.5Z"), Some(951868801));
        assert_eq!(epoch_s("2026-11-27T00:21:03.123456789Z"), Some(1795738863));
        assert_eq!(epoch_s("garbage"), None);
    }
}
