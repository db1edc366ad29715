//! Runs: their ids, names, owners and subnets.
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
//!   a run id whose directory is gone, or whose owner process is gone, is a leftover (see
//!   [`crate::sweep`]).
//! - **One subnet per live run.** Run `<id>` owns `10.77.N.0/24` while the file
//!   `/run/quarry-lab/subnets/N` names it. The claim is a hard link of a file already holding
//!   the id, so it is atomic across threads and processes and never seen half-written. A
//!   subnet that overlaps any route already on the machine is skipped.
//!
//! Left out: other users' resources are never touched, even if named alike — a name must
//! parse exactly as a lab name to be considered.

use std::ffi::OsStr;
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

/// The directory of all runs.
pub fn runs_dir() -> PathBuf {
    Path::new(BASE_DIR).join("runs")
}

/// The state directory of a run.
pub fn run_dir(run: &str) -> PathBuf {
    runs_dir().join(run)
}

pub(crate) fn subnets_dir() -> PathBuf {
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

pub(crate) fn is_run_id(s: &str) -> bool {
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
pub(crate) fn run_of_cgroup(name: &str) -> Option<&str> {
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

/// Sets the hostname in a fresh UTS namespace, then becomes the program (`sh -c` with the
/// hostname as `$0` and the program and its arguments as `$@`: no quoting involved).
const SET_HOSTNAME: &str = "hostname \"$0\" && exec \"$@\"";

/// A command running `program` in host `i` of `run`: its own UTS namespace with hostname
/// `h<i>`, then the host's network namespace, either through `ip netns exec` (which also
/// bind-mounts the host's `/etc/netns` files) or, with `nsenter_only`, `nsenter --net`. The
/// process keeps the pid of the command (every step execs), and carries the run's marker.
pub(crate) fn in_host(run: &str, i: usize, program: &OsStr, nsenter_only: bool) -> Command {
    let ns = host_name(run, i);
    let mut cmd = Command::new("unshare");
    cmd.arg("--uts");
    if nsenter_only {
        cmd.arg("nsenter").arg(format!("--net=/var/run/netns/{ns}"));
    } else {
        cmd.args(["ip", "netns", "exec", &ns]);
    }
    cmd.args(["sh", "-c", SET_HOSTNAME, &format!("h{i}")])
        .arg(program)
        .env(RUN_ENV, run);
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
}
