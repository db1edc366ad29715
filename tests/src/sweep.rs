//! The sweep: find every trace of a run on the machine, tear a run down, list what is left.
//!
//! The sweep gathers every run id it can see (state directories, namespaces, links, iptables
//! comments, cgroups, `/etc/netns`, subnet claims, process environments) and tears down each
//! one that is not live ([`crate::registry::run_state`]). Teardown is idempotent and best
//! effort: each step runs even if an earlier one failed, concurrent teardowns of one run (two
//! processes sweeping the same dead run) only duplicate work, and what could not be removed is
//! reported by [`leftovers`].
//!
//! Teardown order: engines first and gracefully (remove containers, `TERM`, so they unmount
//! their own layers and netns files), then `KILL` every other process of the run (by
//! environment marker, by namespace, by cgroup), then cgroups, mounts, namespaces, links, the
//! `DOCKER-USER` rule, `/etc/netns` entries, the subnet claim, and the state directory last.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::registry::{
    is_run_id, run_dir, run_of_cgroup, run_of_name, run_state, runs_dir, subnets_dir, RunState,
    RUN_ENV,
};
use crate::sys;

/// How long an engine gets to stop its containers and exit before it is killed.
const DOCKERD_GRACE: Duration = Duration::from_secs(20);

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
    // Labs built on several threads at once would otherwise sweep the same dead run side by
    // side; harmless, but noisy. (Across processes, teardown's steps tolerate a peer.)
    static SWEEP: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one_at_a_time = SWEEP.lock().unwrap_or_else(|e| e.into_inner());
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
    //    Again until none is left: a process may fork between a listing and its kill (an
    //    nginx master reloading spawns new workers, which outlive a killed master).
    let netns = lab_netns()
        .into_iter()
        .filter(|n| run_of_name(n) == Some(run))
        .collect::<Vec<_>>();
    let cgroups: Vec<PathBuf> = lab_cgroups()
        .into_iter()
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .and_then(run_of_cgroup)
                == Some(run)
        })
        .collect();
    for round in 0..5 {
        let mut pids = run_processes(run);
        for ns in &netns {
            if let Ok(out) = sys::run("ip", ["netns", "pids", ns]) {
                pids.extend(out.split_whitespace().filter_map(|p| p.parse::<u32>().ok()));
            }
        }
        for cg in &cgroups {
            pids.extend(cgroup_pids(cg));
        }
        pids.retain(|&p| p != std::process::id());
        pids.sort_unstable();
        pids.dedup();
        if pids.is_empty() {
            break;
        }
        for &pid in &pids {
            sys::signal(pid, "KILL");
        }
        for pid in sys::wait_gone(&pids, Duration::from_secs(10)) {
            problems.push(format!("process {pid} survived KILL"));
        }
        if round == 4 {
            problems.push("processes of the run kept appearing after 5 rounds of KILL".into());
        }
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
            if d.exists() {
                problems.push(format!("{}: {e}", d.display()));
            }
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
            if dir.exists() {
                problems.push(format!("{}: {e}", dir.display()));
            }
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

/// Every process of host `i`'s engine: dockerd, its containerd and shims (their command lines
/// name the host's engine files), the containers (in the engine's cgroup parent), and their
/// descendants (docker-proxy).
pub(crate) fn engine_pids(run: &str, i: usize, host_dir: &Path) -> Vec<u32> {
    let exec_root = host_dir.join("dx").to_string_lossy().into_owned() + "/";
    let config = host_dir.join("daemon.json").to_string_lossy().into_owned();
    let mut pids: Vec<u32> = sys::all_pids()
        .into_iter()
        .filter(|&p| sys::cmdline_has(p, &exec_root) || sys::cmdline_has(p, &config))
        .collect();
    let parent = crate::registry::cgroup_parent(run, i);
    for cg in lab_cgroups() {
        if cg.file_name().and_then(|n| n.to_str()) == Some(parent.as_str()) {
            pids.extend(cgroup_pids(&cg));
        }
    }
    let roots = pids.clone();
    for root in roots {
        pids.extend(sys::descendants(root));
    }
    pids.sort_unstable();
    pids.dedup();
    pids
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lab_rules_name_their_run() {
        assert_eq!(
            rule_run("-A DOCKER-USER -m comment --comment quarry-lab-q1w2e3 -j ACCEPT"),
            Some("q1w2e3")
        );
        assert_eq!(rule_run("-A DOCKER-USER -j RETURN"), None);
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
