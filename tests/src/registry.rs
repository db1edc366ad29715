//! Runs, their names, their subnets, and the sweep that removes what a run left behind.
//!
//! # Invariants
//!
//! - **Everything belongs to a run.** A run id is six characters `[0-9a-z]`. Every name the lab
//!   gives carries it: namespaces and veths `ql<id>h<i>`, the bridge `ql<id>br`, the
//!   `DOCKER-USER` rule's comment `quarry-lab-<id>`, the engines' cgroup parents
//!   `quarry-lab-<id>-h<i>`, the state directory `/run/quarry-lab/runs/<id>/`, and the
//!   environment variable `QUARRY_LAB_RUN=<id>` of every process the lab starts (and so of
//!   their children: containerd, shims, docker-proxy).
//! - **The state directory is made first and removed last.** It holds `owner`: `pid PID START`
//!   (the owning process, with its start time so a reused pid does not count) or `kept PID`
//!   (a lab brought up by hand with `lab up`, removed only by `lab down`). So anything carrying
//!   a run id whose directory is gone, or whose owner process is gone, is a leftover.
//! - **One subnet per live run.** Run `<id>` owns `10.77.N.0/24` while the file
//!   `/run/quarry-lab/subnets/N` names it. The claim is a hard link of a file already holding
//!   the id, so it is atomic across threads and processes and never seen half-written. A
//!   subnet that overlaps any route already on the machine is skipped.
//!
//! The sweep gathers every run id it can see (directories, namespaces, links, iptables
//! comments, cgroups, `/etc/netns`, subnet claims, process environments), and tears down each
//! one that is not live. Teardown is idempotent and best effort: each step runs even if an
//! earlier one failed, and what could not be removed is reported by [`leftovers`].
//!
//! Left out: other hosts' or users' resources are never touched, even if named alike — a name
//! must parse exactly as a lab name to be considered.

use std::collections::BTreeSet;
use std::hash::{BuildHasher, Hasher};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use crate::error::{io_err, LabError, Result};
use crate::sys;

/// Where the lab keeps its state.
pub const BASE_DIR: &str = "/run/quarry-lab";
/// The environment variable every lab process carries.
pub const RUN_ENV: &str = "QUARRY_LAB_RUN";
/// First third octet of the lab's subnets (10.77.N.0/24).
pub const SUBNET_FIRST: u8 = 100;
/// Last third octet of the lab's subnets.
pub const SUBNET_LAST: u8 = 249;
/// A run directory without an owner file is being created; after this long it is abandoned.
const CREATING_GRACE: Duration = Duration::from_secs(60);
/// How long an engine gets to stop its containers and exit before it is killed.
const DOCKERD_GRACE: Duration = Duration::from_secs(20);

/// The directory of all runs.
pub fn runs_dir() -> PathBuf {
    Path::new(BASE_DIR).join("runs")
}

/// The state directory of a run.
pub fn run_dir(run: &str) -> PathBuf {
    runs_dir().join(run)
}

fn subnets_dir() -> PathBuf {
    Path::new(BASE_DIR).join("subnets")
}

/// The namespace (and host-side veth) name of host `i` of a run.
pub fn host_name(run: &str, i: usize) -> String {
    format!("ql{run}h{i}")
}

/// The bridge of a run.
pub fn bridge_name(run: &str) -> String {
    format!("ql{run}br")
}

/// The comment on the run's iptables rules in the main namespace.
pub fn rule_comment(run: &str) -> String {
    format!("quarry-lab-{run}")
}

/// The cgroup parent of host `i`'s containers.
pub fn cgroup_parent(run: &str, i: usize) -> String {
    format!("quarry-lab-{run}-h{i}")
}

fn is_run_id(s: &str) -> bool {
    s.len() == 6
        && s.bytes()
            .all(|b| b.is_ascii_digit() || b.is_ascii_lowercase())
}

/// The run id in a lab link or namespace name (`ql<id>br`, `ql<id>h<i>`), if it is one.
pub fn run_of_name(name: &str) -> Option<&str> {
    let rest = name.strip_prefix("ql")?;
    let (id, suffix) = (rest.get(..6)?, rest.get(6..)?);
    let host_suffix = suffix
        .strip_prefix('h')
        .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
    (is_run_id(id) && (suffix == "br" || host_suffix)).then_some(id)
}

/// The run id in a cgroup name `quarry-lab-<id>-h<i>`, if it is one.
fn run_of_cgroup(name: &str) -> Option<&str> {
    let rest = name.strip_prefix("quarry-lab-")?;
    let id = rest.get(..6)?;
    (is_run_id(id) && rest.get(6..)?.starts_with("-h")).then_some(id)
}

/// A fresh random run id.
pub(crate) fn new_run_id() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u32(std::process::id());
    h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    h.write_u128(
        SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    let mut v = h.finish();
    let alphabet = b"0123456789abcdefghijklmnopqrstuvwxyz";
    (0..6)
        .map(|_| {
            let c = alphabet[(v % 36) as usize] as char;
            v /= 36;
            c
        })
        .collect()
}

/// Creates a new run's directory (the claim of its id) with its owner written.
pub(crate) fn create_run(kept: bool) -> Result<String> {
    let runs = runs_dir();
    std::fs::create_dir_all(&runs).map_err(io_err(&runs))?;
    loop {
        let run = new_run_id();
        let dir = run_dir(&run);
        match std::fs::create_dir(&dir) {
            Ok(()) => {
                write_owner(&run, kept)?;
                return Ok(run);
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(io_err(dir)(e)),
        }
    }
}

/// Records who owns the run: this process, or nobody (`kept`, for `lab up`).
pub(crate) fn write_owner(run: &str, kept: bool) -> Result<()> {
    let pid = std::process::id();
    let owner = if kept {
        format!("kept {pid}\n")
    } else {
        format!("pid {pid} {}\n", sys::start_time(pid).unwrap_or(0))
    };
    let path = run_dir(run).join("owner");
    let tmp = run_dir(run).join("owner.tmp");
    sys::write_file(&tmp, owner)?;
    std::fs::rename(&tmp, &path).map_err(io_err(path))
}

/// Whether a run is alive, kept by hand, or dead.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunState {
    /// Its owning process is running (or it is being created).
    Live,
    /// Brought up with `lab up`: only `lab down` removes it.
    Kept,
    /// Its owner is gone: everything of it is a leftover.
    Dead,
}

/// The state of a run, from its directory and owner file.
pub fn run_state(run: &str) -> RunState {
    let dir = run_dir(run);
    let Ok(meta) = std::fs::metadata(&dir) else {
        return RunState::Dead;
    };
    let Ok(owner) = std::fs::read_to_string(dir.join("owner")) else {
        let young = meta
            .modified()
            .ok()
            .and_then(|m| m.elapsed().ok())
            .is_some_and(|age| age < CREATING_GRACE);
        return if young {
            RunState::Live
        } else {
            RunState::Dead
        };
    };
    let words: Vec<&str> = owner.split_whitespace().collect();
    match words.as_slice() {
        ["kept", ..] => RunState::Kept,
        ["pid", pid, start] => {
            let (Ok(pid), Ok(start)) = (pid.parse::<u32>(), start.parse::<u64>()) else {
                return RunState::Dead;
            };
            if sys::alive(pid) && sys::start_time(pid) == Some(start) {
                RunState::Live
            } else {
                RunState::Dead
            }
        }
        _ => RunState::Dead,
    }
}

/// Claims a free subnet for `run`, returning its third octet N (10.77.N.0/24).
pub(crate) fn claim_subnet(run: &str) -> Result<u8> {
    let dir = subnets_dir();
    std::fs::create_dir_all(&dir).map_err(io_err(&dir))?;
    let tmp = dir.join(format!(".tmp-{run}"));
    sys::write_file(&tmp, run)?;
    let routes = machine_prefixes();
    let count = u64::from(SUBNET_LAST - SUBNET_FIRST) + 1;
    // Start somewhere random so concurrent runs rarely race for the same file.
    let start = new_run_id().bytes().map(u64::from).sum::<u64>() % count;
    let mut result = Err(LabError::NoSubnet {
        first: SUBNET_FIRST,
        last: SUBNET_LAST,
    });
    for k in 0..count {
        let n = SUBNET_FIRST + ((start + k) % count) as u8;
        let net = u32::from(Ipv4Addr::new(10, 77, n, 0));
        if routes.iter().any(|&(a, len)| overlaps((net, 24), (a, len))) {
            continue;
        }
        match std::fs::hard_link(&tmp, dir.join(n.to_string())) {
            Ok(()) => {
                result = Ok(n);
                break;
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => {
                result = Err(io_err(dir.join(n.to_string()))(e));
                break;
            }
        }
    }
    let _ = std::fs::remove_file(&tmp);
    result
}

/// Whether two IPv4 prefixes share an address.
fn overlaps((a, alen): (u32, u8), (b, blen): (u32, u8)) -> bool {
    let len = alen.min(blen);
    let mask = if len == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(len))
    };
    a & mask == b & mask
}

/// Every IPv4 destination prefix in any routing table of the main namespace (default routes
/// excepted): a lab subnet must not overlap one of them.
fn machine_prefixes() -> Vec<(u32, u8)> {
    let table = sys::run("ip", ["-4", "route", "show", "table", "all"]).unwrap_or_default();
    let types = [
        "unicast",
        "local",
        "broadcast",
        "multicast",
        "throw",
        "unreachable",
        "prohibit",
        "blackhole",
        "nat",
        "anycast",
    ];
    table
        .lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            let mut dst = words.next()?;
            if types.contains(&dst) {
                dst = words.next()?;
            }
            if dst == "default" {
                return None;
            }
            let (addr, len) = dst.split_once('/').unwrap_or((dst, "32"));
            Some((u32::from(addr.parse::<Ipv4Addr>().ok()?), len.parse().ok()?))
        })
        .collect()
}

/// Lab namespaces in the main namespace (`ip netns list`).
fn lab_netns() -> Vec<String> {
    sys::run("ip", ["netns", "list"])
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| run_of_name(n).is_some())
        .map(str::to_string)
        .collect()
}

/// Lab links in the main namespace (`ip -o link`).
fn lab_links() -> Vec<String> {
    sys::run("ip", ["-o", "link", "show"])
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split(": ").nth(1))
        .map(|n| n.split('@').next().unwrap_or(n))
        .filter(|n| run_of_name(n).is_some())
        .map(str::to_string)
        .collect()
}

/// Lab rules in `DOCKER-USER` of the main namespace, as `iptables -S` prints them.
fn lab_rules() -> Vec<String> {
    sys::run("iptables", ["-w", "-S", "DOCKER-USER"])
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains("quarry-lab-"))
        .map(str::to_string)
        .collect()
}

fn rule_run(rule: &str) -> Option<&str> {
    let i = rule.find("quarry-lab-")? + "quarry-lab-".len();
    rule.get(i..i + 6).filter(|id| is_run_id(id))
}

/// Lab cgroup directories (`/sys/fs/cgroup/<controller>/quarry-lab-<id>-h<i>`).
fn lab_cgroups() -> Vec<PathBuf> {
    let mut found = Vec::new();
    let Ok(controllers) = std::fs::read_dir("/sys/fs/cgroup") else {
        return found;
    };
    for c in controllers.flatten() {
        let Ok(groups) = std::fs::read_dir(c.path()) else {
            continue;
        };
        for g in groups.flatten() {
            if g.file_name().to_str().and_then(run_of_cgroup).is_some() && g.path().is_dir() {
                found.push(g.path());
            }
        }
    }
    found
}

/// `/etc/netns/<name>` directories of lab namespaces.
fn lab_etc_netns() -> Vec<PathBuf> {
    std::fs::read_dir("/etc/netns")
        .map(|d| {
            d.flatten()
                .filter(|e| e.file_name().to_str().and_then(run_of_name).is_some())
                .map(|e| e.path())
                .collect()
        })
        .unwrap_or_default()
}

/// Subnet claim files: (file, run named in it).
fn subnet_claims() -> Vec<(PathBuf, String)> {
    std::fs::read_dir(subnets_dir())
        .map(|d| {
            d.flatten()
                .filter_map(|e| {
                    let name = e.file_name().to_str()?.to_string();
                    let run = match name.strip_prefix(".tmp-") {
                        Some(run) => run.to_string(),
                        None => std::fs::read_to_string(e.path()).ok()?.trim().to_string(),
                    };
                    is_run_id(&run).then(|| (e.path(), run))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Processes carrying the run's environment marker, or naming its directory.
fn run_processes(run: &str) -> Vec<u32> {
    let dir = run_dir(run).to_string_lossy().into_owned();
    let me = std::process::id();
    sys::all_pids()
        .into_iter()
        .filter(|&p| p != me && sys::alive(p))
        .filter(|&p| {
            sys::environ_value(p, RUN_ENV).as_deref() == Some(run) || sys::cmdline_has(p, &dir)
        })
        .collect()
}

/// Mount points under the run's directory or of its namespaces, deepest first.
fn run_mounts(run: &str) -> Vec<String> {
    let dir = run_dir(run).to_string_lossy().into_owned();
    let ns = format!("/netns/ql{run}h");
    let mut points: Vec<String> = std::fs::read_to_string("/proc/self/mounts")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_whitespace().nth(1))
        .filter(|p| p.starts_with(&dir) || p.contains(&ns))
        .map(str::to_string)
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.len()));
    points.dedup();
    points
}

/// Every run id visible on the machine, from any of its traces.
pub fn known_runs() -> BTreeSet<String> {
    let mut runs = BTreeSet::new();
    if let Ok(d) = std::fs::read_dir(runs_dir()) {
        runs.extend(
            d.flatten()
                .filter_map(|e| e.file_name().to_str().map(str::to_string))
                .filter(|n| is_run_id(n)),
        );
    }
    for name in lab_netns().iter().chain(&lab_links()) {
        runs.extend(run_of_name(name).map(str::to_string));
    }
    for rule in lab_rules() {
        runs.extend(rule_run(&rule).map(str::to_string));
    }
    for p in lab_cgroups() {
        let name = p.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        runs.extend(run_of_cgroup(name).map(str::to_string));
    }
    for p in lab_etc_netns() {
        let name = p.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        runs.extend(run_of_name(name).map(str::to_string));
    }
    runs.extend(subnet_claims().into_iter().map(|(_, run)| run));
    for pid in sys::all_pids() {
        if let Some(run) = sys::environ_value(pid, RUN_ENV).filter(|r| is_run_id(r)) {
            runs.insert(run);
        }
    }
    runs
}

/// Tears down every run whose owner is gone. Returns the runs swept and what went wrong.
pub fn sweep_dead() -> (Vec<String>, Vec<String>) {
    let mut swept = Vec::new();
    let mut problems = Vec::new();
    for run in known_runs() {
        if run_state(&run) == RunState::Dead {
            problems.extend(teardown(&run));
            swept.push(run);
        }
    }
    (swept, problems)
}

/// Removes everything of `run`, whatever state it is in. Returns what went wrong (empty when
/// all went well); check with [`leftovers`].
pub fn teardown(run: &str) -> Vec<String> {
    let mut problems = Vec::new();
    let dir = run_dir(run);

    // 1. Engines first, gracefully: remove their containers, then TERM, so they unmount
    //    their layers and netns files themselves.
    let mut engines = Vec::new();
    for host in host_dirs(&dir) {
        let pid_file = host.join("dockerd.pid");
        let Some(pid) = std::fs::read_to_string(&pid_file)
            .ok()
            .and_then(|p| p.trim().parse::<u32>().ok())
        else {
            continue;
        };
        if !sys::alive(pid) || !sys::cmdline_has(pid, &dir.to_string_lossy()) {
            continue;
        }
        let sock = format!("unix://{}", host.join("docker.sock").display());
        if let Ok(ids) = sys::run("docker", ["-H", &sock, "ps", "-aq"]) {
            let ids: Vec<&str> = ids.split_whitespace().collect();
            if !ids.is_empty() {
                let mut args = vec!["-H", &sock, "rm", "-f"];
                args.extend(ids);
                if let Err(e) = sys::run_quiet("docker", args) {
                    problems.push(e);
                }
            }
        }
        sys::signal(pid, "TERM");
        engines.push(pid);
    }
    for pid in sys::wait_gone(&engines, DOCKERD_GRACE) {
        problems.push(format!("dockerd {pid} ignored TERM; killing it"));
        sys::signal(pid, "KILL");
    }

    // 2. Every other process of the run: by environment marker, by namespace, by cgroup.
    let mut pids = run_processes(run);
    let netns = lab_netns()
        .into_iter()
        .filter(|n| run_of_name(n) == Some(run))
        .collect::<Vec<_>>();
    for ns in &netns {
        if let Ok(out) = sys::run("ip", ["netns", "pids", ns]) {
            pids.extend(out.split_whitespace().filter_map(|p| p.parse::<u32>().ok()));
        }
    }
    let cgroups: Vec<PathBuf> = lab_cgroups()
        .into_iter()
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .and_then(run_of_cgroup)
                == Some(run)
        })
        .collect();
    for cg in &cgroups {
        pids.extend(cgroup_pids(cg));
    }
    pids.retain(|&p| p != std::process::id());
    pids.sort_unstable();
    pids.dedup();
    for &pid in &pids {
        sys::signal(pid, "KILL");
    }
    for pid in sys::wait_gone(&pids, Duration::from_secs(10)) {
        problems.push(format!("process {pid} survived KILL"));
    }

    // 3. Cgroup directories (deepest first; a cgroup empties a moment after its last process).
    for cg in &cgroups {
        if let Err(e) = remove_cgroup(cg) {
            problems.push(e);
        }
    }

    // 4. Mounts under the run directory (layers, netns files of a killed engine).
    for point in run_mounts(run) {
        if let Err(e) = sys::run_quiet("umount", ["-l", &point]) {
            problems.push(e);
        }
    }

    // 5. Namespaces, links, the DOCKER-USER rule, /etc/netns entries.
    for ns in netns {
        if let Err(e) = sys::run_quiet("ip", ["netns", "delete", &ns]) {
            problems.push(e);
        }
    }
    for link in lab_links()
        .into_iter()
        .filter(|n| run_of_name(n) == Some(run))
    {
        // Deleting a namespace deletes its veth pairs: the link may already be gone.
        if let Err(e) = sys::run_quiet("ip", ["link", "delete", &link]) {
            if lab_links().contains(&link) {
                problems.push(e);
            }
        }
    }
    for rule in lab_rules().into_iter().filter(|r| rule_run(r) == Some(run)) {
        if let Some(spec) = rule.strip_prefix("-A ") {
            let mut args = vec!["-w".to_string(), "-D".to_string()];
            args.extend(shell_words(spec));
            if let Err(e) = sys::run_quiet("iptables", &args) {
                problems.push(e);
            }
        }
    }
    for d in lab_etc_netns()
        .into_iter()
        .filter(|p| p.file_name().and_then(|n| n.to_str()).and_then(run_of_name) == Some(run))
    {
        if let Err(e) = std::fs::remove_dir_all(&d) {
            problems.push(format!("{}: {e}", d.display()));
        }
    }

    // 6. The subnet claim, then the run directory, last.
    for (file, owner) in subnet_claims() {
        if owner == run {
            let _ = std::fs::remove_file(file);
        }
    }
    if dir.exists() {
        if let Err(e) = std::fs::remove_dir_all(&dir) {
            problems.push(format!("{}: {e}", dir.display()));
        }
    }
    problems
}

/// Splits an `iptables -S` rule into words, honouring double quotes.
fn shell_words(s: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    for c in s.chars() {
        match c {
            '"' => quoted = !quoted,
            ' ' if !quoted => {
                if !cur.is_empty() {
                    words.push(std::mem::take(&mut cur));
                }
            }
            c => cur.push(c),
        }
    }
    if !cur.is_empty() {
        words.push(cur);
    }
    words
}

fn host_dirs(run_dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(run_dir)
        .map(|d| {
            d.flatten()
                .filter(|e| {
                    e.file_name()
                        .to_str()
                        .and_then(|n| n.strip_prefix('h'))
                        .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
                })
                .map(|e| e.path())
                .collect()
        })
        .unwrap_or_default()
}

/// Pids in a cgroup and its descendants.
fn cgroup_pids(cg: &Path) -> Vec<u32> {
    let mut pids: Vec<u32> = std::fs::read_to_string(cg.join("cgroup.procs"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect();
    if let Ok(d) = std::fs::read_dir(cg) {
        for e in d.flatten() {
            if e.path().is_dir() {
                pids.extend(cgroup_pids(&e.path()));
            }
        }
    }
    pids
}

/// Removes a cgroup directory tree, children first, waiting for it to empty.
fn remove_cgroup(cg: &Path) -> std::result::Result<(), String> {
    if let Ok(d) = std::fs::read_dir(cg) {
        for e in d.flatten() {
            if e.path().is_dir() {
                remove_cgroup(&e.path())?;
            }
        }
    }
    sys::poll(
        &format!("cgroup {} to be removable", cg.display()),
        Duration::from_secs(5),
        || match std::fs::remove_dir(cg) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e.to_string()),
        },
    )
    .map_err(|e| e.to_string())
}

/// Everything of `run` still on the machine, one description per item (empty: nothing).
pub fn leftovers(run: &str) -> Vec<String> {
    let mut left = Vec::new();
    for ns in lab_netns() {
        if run_of_name(&ns) == Some(run) {
            left.push(format!("namespace {ns}"));
        }
    }
    for link in lab_links() {
        if run_of_name(&link) == Some(run) {
            left.push(format!("link {link}"));
        }
    }
    for rule in lab_rules() {
        if rule_run(&rule) == Some(run) {
            left.push(format!("iptables rule `{rule}`"));
        }
    }
    for point in run_mounts(run) {
        left.push(format!("mount {point}"));
    }
    for cg in lab_cgroups() {
        if cg
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(run_of_cgroup)
            == Some(run)
        {
            left.push(format!("cgroup {}", cg.display()));
        }
    }
    for d in lab_etc_netns() {
        if d.file_name().and_then(|n| n.to_str()).and_then(run_of_name) == Some(run) {
            left.push(format!("directory {}", d.display()));
        }
    }
    for (file, owner) in subnet_claims() {
        if owner == run {
            left.push(format!("subnet claim {}", file.display()));
        }
    }
    for pid in run_processes(run) {
        let cmd = std::fs::read(format!("/proc/{pid}/cmdline"))
            .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
            .unwrap_or_default();
        left.push(format!("process {pid} ({})", cmd.trim()));
    }
    let dir = run_dir(run);
    if dir.exists() {
        left.push(format!("directory {}", dir.display()));
    }
    left
}

/// Runs `cmd` inside host namespace `ns`, marked as belonging to `run`.
pub(crate) fn in_netns(run: &str, ns: &str, program: &str) -> Command {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", ns, program]).env(RUN_ENV, run);
    cmd
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lab_names_parse_back_to_their_run_and_nothing_else_does() {
        assert_eq!(run_of_name(&host_name("ab12cd", 3)), Some("ab12cd"));
        assert_eq!(run_of_name(&bridge_name("ab12cd")), Some("ab12cd"));
        assert!(host_name("ab12cd", 99).len() <= 15);
        for other in [
            "qlab12cd",
            "ql12345",
            "qlAB12CDbr",
            "qlab12cdh",
            "qlab12cdx1",
            "eth0",
        ] {
            assert_eq!(run_of_name(other), None, "{other}");
        }
        assert_eq!(run_of_cgroup(&cgroup_parent("zz0099", 1)), Some("zz0099"));
        assert_eq!(
            rule_run("-A DOCKER-USER -m comment --comment quarry-lab-q1w2e3 -j ACCEPT"),
            Some("q1w2e3")
        );
    }

    #[test]
    fn run_ids_are_six_lowercase_alphanumerics_and_differ() {
        let a = new_run_id();
        let b = new_run_id();
        assert!(is_run_id(&a) && is_run_id(&b));
        assert_ne!(a, b);
    }

    #[test]
    fn prefixes_overlap_only_when_they_share_addresses() {
        let net = |a, b, c, d| u32::from(Ipv4Addr::new(a, b, c, d));
        assert!(overlaps((net(10, 77, 5, 0), 24), (net(10, 0, 0, 0), 8)));
        assert!(overlaps((net(10, 77, 5, 0), 24), (net(10, 77, 5, 9), 32)));
        assert!(!overlaps((net(10, 77, 5, 0), 24), (net(10, 77, 6, 0), 24)));
        assert!(!overlaps((net(10, 77, 5, 0), 24), (net(192, 0, 2, 0), 24)));
    }

    #[test]
    fn iptables_rules_split_into_their_words() {
        assert_eq!(
            shell_words(r#"DOCKER-USER -m comment --comment "a b" -j ACCEPT"#),
            [
                "DOCKER-USER",
                "-m",
                "comment",
                "--comment",
                "a b",
                "-j",
                "ACCEPT"
            ]
        );
    }
}
