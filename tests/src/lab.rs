//! The lab: n hosts on a private bridge, built, guarded, cut, partitioned and torn down.
//!
//! # Build order (the network rule)
//!
//! 1. Sweep what dead runs left behind; claim a run id (its state directory) and a subnet
//!    `10.77.N.0/24` no live run and no route of the machine uses.
//! 2. Create the bridge `ql<id>br` **down**, give it `10.77.N.254/24`, only then bring it up.
//! 3. **Guard**: `ip route get 10.77.N.i` for every host address must answer `dev ql<id>br`
//!    with no gateway; otherwise the build fails before any host exists, so nothing is sent.
//! 4. Allow bridge-internal forwarding in `DOCKER-USER` (Docker sets `FORWARD` to `DROP`), with
//!    the comment `quarry-lab-<id>` so the sweep can find the rule.
//! 5. One namespace per host, a veth pair into the bridge, `10.77.N.i/24`. Namespaces have no
//!    default route: nothing in them can reach beyond the lab.
//! 6. Per host, as asked: `sshd`, `dockerd`; then wait for all of them.
//!
//! Any failure drops the half-built lab, whose `Drop` tears the run down.
//!
//! # Faults
//!
//! - [`Lab::cut`] sets the host's bridge-side veth down: it reaches no one, no one reaches it.
//! - [`Lab::partition`] adds `DROP` rules for the other group's addresses in a chain
//!   `QUARRY-LAB-PART` of each host's own iptables, jumped to from `INPUT`, `OUTPUT` and
//!   `FORWARD` (so containers behind published ports are cut too). Hosts in neither group keep
//!   talking to both.
//!
//! Every process the lab starts in host i (its engine and sshd too) has hostname `h<i>`.
//!
//! Left out: latency and loss (`tc netem` is not in this kernel), IPv6, a mount namespace per
//! host (hosts share the machine's file system; each has its own directory).

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use crate::error::{io_err, LabError, Result};
use crate::host::Host;
use crate::registry;
use crate::sys;

/// The chain holding partition rules in each host's iptables.
const PART_CHAIN: &str = "QUARRY-LAB-PART";

/// What to build: how many hosts, which get an engine and which an sshd.
#[derive(Debug, Clone)]
pub struct LabBuilder {
    hosts: usize,
    docker: BTreeSet<usize>,
    sshd: BTreeSet<usize>,
}

impl LabBuilder {
    /// Starts `dockerd` on these hosts (1-based).
    pub fn docker(mut self, hosts: impl IntoIterator<Item = usize>) -> Self {
        self.docker.extend(hosts);
        self
    }

    /// Starts `dockerd` on every host.
    pub fn docker_everywhere(self) -> Self {
        let n = self.hosts;
        self.docker(1..=n)
    }

    /// Starts `sshd` on these hosts (1-based).
    pub fn sshd(mut self, hosts: impl IntoIterator<Item = usize>) -> Self {
        self.sshd.extend(hosts);
        self
    }

    /// Starts `sshd` on every host.
    pub fn sshd_everywhere(self) -> Self {
        let n = self.hosts;
        self.sshd(1..=n)
    }

    /// Builds the lab (see the module docs for the order).
    pub fn build(self) -> Result<Lab> {
        if !sys::is_root() {
            return Err(LabError::NotRoot);
        }
        if !(1..=99).contains(&self.hosts) {
            return Err(LabError::Invalid(format!(
                "a lab has 1 to 99 hosts, not {}",
                self.hosts
            )));
        }
        for &i in self.docker.iter().chain(&self.sshd) {
            if !(1..=self.hosts).contains(&i) {
                return Err(LabError::NoHost(i));
            }
        }
        let (_, problems) = crate::sweep::sweep_dead();
        for p in problems {
            eprintln!("quarry-lab: sweeping dead runs: {p}");
        }
        let run = registry::create_run(false)?;
        let dir = registry::run_dir(&run);
        let mut lab = Lab {
            bridge: registry::bridge_name(&run),
            ssh_dir: dir.join("ssh"),
            run,
            dir,
            subnet: 0,
            size: self.hosts,
            hosts: Vec::new(),
            detached: false,
        };
        lab.subnet = registry::claim_subnet(&lab.run)?;
        lab.create_bridge()?;
        lab.guard()?;
        lab.allow_forwarding()?;
        let client_pub = if self.sshd.is_empty() {
            String::new()
        } else {
            lab.client_key()?
        };
        for i in 1..=self.hosts {
            let host = lab.create_host(i, self.docker.contains(&i), self.sshd.contains(&i))?;
            lab.hosts.push(host);
        }
        lab.write_summary()?;
        for h in &lab.hosts {
            if self.sshd.contains(&h.index()) {
                h.start_sshd(&client_pub)?;
            }
            if self.docker.contains(&h.index()) {
                h.start_dockerd()?;
            }
        }
        for h in &lab.hosts {
            if self.sshd.contains(&h.index()) {
                h.wait_sshd()?;
            }
            if self.docker.contains(&h.index()) {
                h.wait_dockerd()?;
            }
        }
        Ok(lab)
    }
}

/// A running lab. Dropping it removes everything it made.
#[derive(Debug)]
pub struct Lab {
    run: String,
    dir: PathBuf,
    bridge: String,
    ssh_dir: PathBuf,
    subnet: u8,
    size: usize,
    hosts: Vec<Host>,
    detached: bool,
}

impl Lab {
    /// `n` hosts without engines or sshd (see [`Lab::builder`] for those).
    pub fn new(n: usize) -> Result<Lab> {
        Lab::builder(n).build()
    }

    /// A builder for `n` hosts.
    pub fn builder(n: usize) -> LabBuilder {
        LabBuilder {
            hosts: n,
            docker: BTreeSet::new(),
            sshd: BTreeSet::new(),
        }
    }

    /// The run id every name of this lab carries.
    pub fn run_id(&self) -> &str {
        &self.run
    }

    /// The lab's state directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The bridge's name.
    pub fn bridge(&self) -> &str {
        &self.bridge
    }

    /// The lab's subnet, `10.77.N.0/24`.
    pub fn subnet(&self) -> String {
        format!("10.77.{}.0/24", self.subnet)
    }

    /// The bridge's own address (the main namespace's address in the lab).
    pub fn bridge_addr(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, 77, self.subnet, 254)
    }

    /// All hosts, in order.
    pub fn hosts(&self) -> &[Host] {
        &self.hosts
    }

    /// Host `i` (1-based).
    ///
    /// # Panics
    ///
    /// If the lab has no host `i` (a mistake in the test, not a runtime condition; see
    /// [`Lab::try_host`]).
    pub fn host(&self, i: usize) -> &Host {
        match self.try_host(i) {
            Ok(h) => h,
            Err(e) => panic!("{e}"),
        }
    }

    /// Host `i` (1-based).
    pub fn try_host(&self, i: usize) -> Result<&Host> {
        i.checked_sub(1)
            .and_then(|k| self.hosts.get(k))
            .ok_or(LabError::NoHost(i))
    }

    fn host_addr(&self, i: usize) -> Ipv4Addr {
        Ipv4Addr::new(10, 77, self.subnet, i as u8)
    }

    fn create_bridge(&self) -> Result<()> {
        sys::run("ip", ["link", "add", &self.bridge, "type", "bridge"])?;
        no_ipv6(&self.bridge);
        let addr = format!("{}/24", self.bridge_addr());
        sys::run("ip", ["addr", "add", &addr, "dev", &self.bridge])?;
        sys::run("ip", ["link", "set", &self.bridge, "up"])?;
        Ok(())
    }

    /// Checks that the route to every host address goes directly through the lab's bridge;
    /// fails loudly otherwise. Run before any host exists, and again by [`Lab::cut`]/`heal`.
    pub fn guard(&self) -> Result<()> {
        for i in 1..=self.size {
            let addr = self.host_addr(i).to_string();
            // No route at all (blackhole, unreachable) fails the guard too.
            let route = match sys::run("ip", ["route", "get", &addr]) {
                Ok(route) => route,
                Err(e) => e.to_string(),
            };
            let first = route.lines().next().unwrap_or_default().trim().to_string();
            let words: Vec<&str> = first.split_whitespace().collect();
            let dev = words
                .iter()
                .position(|w| *w == "dev")
                .and_then(|k| words.get(k + 1));
            if dev != Some(&self.bridge.as_str()) || words.contains(&"via") {
                return Err(LabError::Guard {
                    addr,
                    route: first,
                    bridge: self.bridge.clone(),
                });
            }
        }
        Ok(())
    }

    fn allow_forwarding(&self) -> Result<()> {
        // No DOCKER-USER chain (no Docker): FORWARD is not Docker's DROP, nothing to allow.
        if sys::run("iptables", ["-w", "-S", "DOCKER-USER"]).is_err() {
            return Ok(());
        }
        let comment = registry::rule_comment(&self.run);
        sys::run(
            "iptables",
            [
                "-w",
                "-I",
                "DOCKER-USER",
                "-i",
                &self.bridge,
                "-o",
                &self.bridge,
                "-m",
                "comment",
                "--comment",
                &comment,
                "-j",
                "ACCEPT",
            ],
        )
        .map(|_| ())
    }

    fn client_key(&self) -> Result<String> {
        std::fs::create_dir_all(&self.ssh_dir).map_err(io_err(&self.ssh_dir))?;
        let key = self.ssh_dir.join("client_ed25519");
        sys::run(
            "ssh-keygen",
            [
                "-q",
                "-t",
                "ed25519",
                "-N",
                "",
                "-C",
                &format!("quarry-lab-{}", self.run),
                "-f",
                &key.to_string_lossy(),
            ],
        )?;
        let public = key.with_extension("pub");
        std::fs::read_to_string(&public).map_err(io_err(public))
    }

    fn create_host(&self, i: usize, docker: bool, sshd: bool) -> Result<Host> {
        let name = registry::host_name(&self.run, i);
        let hdir = self.dir.join(format!("h{i}"));
        for sub in ["config", "data", "logs", "run", "etc"] {
            let d = hdir.join(sub);
            std::fs::create_dir_all(&d).map_err(io_err(&d))?;
        }
        // The host's /etc/hosts (filled with every host by `write_summary`); `ip netns exec`
        // bind-mounts it over /etc/hosts through the /etc/netns link.
        let hosts_file = hdir.join("etc").join("hosts");
        sys::write_file(&hosts_file, "127.0.0.1 localhost\n")?;
        let etc = Path::new("/etc/netns").join(&name);
        std::fs::create_dir_all(&etc).map_err(io_err(&etc))?;
        std::os::unix::fs::symlink(&hosts_file, etc.join("hosts")).map_err(io_err(&etc))?;

        sys::run("ip", ["netns", "add", &name])?;
        sys::run(
            "ip",
            [
                "link", "add", &name, "type", "veth", "peer", "name", "eth0", "netns", &name,
            ],
        )?;
        no_ipv6(&name);
        sys::run("ip", ["link", "set", &name, "master", &self.bridge])?;
        let addr = format!("{}/24", self.host_addr(i));
        sys::run("ip", ["-n", &name, "addr", "add", &addr, "dev", "eth0"])?;
        sys::run("ip", ["-n", &name, "link", "set", "lo", "up"])?;
        sys::run("ip", ["-n", &name, "link", "set", "eth0", "up"])?;
        sys::run("ip", ["link", "set", &name, "up"])?;
        Ok(Host::new(
            i,
            &self.run,
            self.host_addr(i),
            hdir,
            docker,
            sshd,
            self.ssh_dir.join("client_ed25519"),
            self.ssh_dir.join("known_hosts"),
        ))
    }

    /// Rewrites every host's `/etc/hosts` with all hosts, and the run's `hosts.txt` with one
    /// line per host telling how to reach it (what `lab status` prints).
    fn write_summary(&self) -> Result<()> {
        let mut hosts = String::from("127.0.0.1 localhost\n");
        for h in &self.hosts {
            hosts.push_str(&format!("{} {}\n", h.addr(), h.name()));
        }
        for h in &self.hosts {
            sys::write_file(&h.hosts_file(), &hosts)?;
        }
        sys::write_file(&self.dir.join("hosts.txt"), self.describe())
    }

    /// One line per host telling a person how to reach it.
    pub fn describe(&self) -> String {
        let mut s = format!(
            "lab {}  subnet {}  bridge {} ({})\n",
            self.run,
            self.subnet(),
            self.bridge,
            self.bridge_addr()
        );
        for h in &self.hosts {
            s.push_str(&h.describe());
            s.push('\n');
        }
        s
    }

    /// The last `lines` lines of every process log of every host, for a failure message.
    pub fn logs_tail(&self, lines: usize) -> String {
        let mut s = String::new();
        for h in &self.hosts {
            for name in h.processes() {
                s.push_str(&format!(
                    "--- {} {name} ---\n{}\n",
                    h.name(),
                    h.log_tail(&name, lines)
                ));
            }
        }
        s
    }

    /// Cuts host `i` off: its link to the bridge goes down.
    pub fn cut(&self, i: usize) -> Result<()> {
        let h = self.try_host(i)?;
        sys::run("ip", ["link", "set", h.netns(), "down"]).map(|_| ())
    }

    /// Brings host `i`'s link back up (after checking the guard again).
    pub fn heal(&self, i: usize) -> Result<()> {
        let h = self.try_host(i)?;
        self.guard()?;
        sys::run("ip", ["link", "set", h.netns(), "up"]).map(|_| ())
    }

    /// Splits hosts `a` from hosts `b`: no packet passes between the groups, in either
    /// direction; traffic inside each group (and to hosts in neither) is untouched.
    pub fn partition(&self, a: &[usize], b: &[usize]) -> Result<()> {
        for x in a {
            if b.contains(x) {
                return Err(LabError::Invalid(format!("h{x} is in both groups")));
            }
        }
        for (side, other) in [(a, b), (b, a)] {
            for &i in side {
                let h = self.try_host(i)?;
                ensure_part_chain(h)?;
                for &j in other {
                    let peer = self.try_host(j)?.addr().to_string();
                    for dir in ["-s", "-d"] {
                        iptables_in(h, &["-A", PART_CHAIN, dir, &peer, "-j", "DROP"])?;
                    }
                }
            }
        }
        Ok(())
    }

    /// Removes every partition.
    pub fn heal_partition(&self) -> Result<()> {
        for h in &self.hosts {
            if iptables_in(h, &["-S", PART_CHAIN]).is_ok() {
                iptables_in(h, &["-F", PART_CHAIN])?;
            }
        }
        Ok(())
    }

    /// Loads `image` from host `from`'s engine (or, with `None`, the machine's engine) into
    /// host `to`'s engine.
    pub fn copy_image(&self, image: &str, from: Option<usize>, to: usize) -> Result<()> {
        let source = match from {
            Some(i) => Some(self.try_host(i)?.docker_host()?),
            None => None,
        };
        self.try_host(to)?.load_image(image, source.as_deref())
    }

    /// Tears the lab down now and checks nothing of it is left.
    pub fn close(mut self) -> Result<()> {
        self.detached = true; // Drop has nothing more to do.
        let problems = self.teardown();
        let left = crate::sweep::leftovers(&self.run);
        if left.is_empty() {
            Ok(())
        } else {
            Err(LabError::Leftovers {
                run: self.run.clone(),
                leftovers: left.into_iter().chain(problems).collect(),
            })
        }
    }

    /// Leaves the lab running after this process exits (for `lab up`); only `lab down`
    /// removes it then. Returns the run id.
    pub fn detach(mut self) -> Result<String> {
        registry::write_owner(&self.run, true)?;
        self.detached = true;
        Ok(self.run.clone())
    }

    fn teardown(&mut self) -> Vec<String> {
        let problems = crate::sweep::teardown(&self.run);
        for h in &self.hosts {
            h.reap();
        }
        problems
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if self.detached {
            return;
        }
        for p in self.teardown() {
            eprintln!("quarry-lab {}: teardown: {p}", self.run);
        }
        let left = crate::sweep::leftovers(&self.run);
        if !left.is_empty() {
            eprintln!(
                "quarry-lab {}: LEFT BEHIND (the next lab's sweep retries): {}",
                self.run,
                left.join("; ")
            );
        }
    }
}

/// Turns IPv6 off on a link before it comes up, so it sends no router solicitations.
fn no_ipv6(link: &str) {
    let _ = std::fs::write(
        format!("/proc/sys/net/ipv6/conf/{link}/disable_ipv6"),
        "1\n",
    );
}

fn iptables_in(h: &Host, args: &[&str]) -> Result<String> {
    let mut cmd = h.command("iptables");
    cmd.arg("-w").args(args);
    sys::checked(&mut cmd, sys::CMD_LIMIT)
}

/// Creates the partition chain in a host and jumps to it first from INPUT, OUTPUT, FORWARD.
fn ensure_part_chain(h: &Host) -> Result<()> {
    if iptables_in(h, &["-S", PART_CHAIN]).is_err() {
        iptables_in(h, &["-N", PART_CHAIN])?;
    }
    for chain in ["INPUT", "OUTPUT", "FORWARD"] {
        if iptables_in(h, &["-C", chain, "-j", PART_CHAIN]).is_err() {
            iptables_in(h, &["-I", chain, "1", "-j", PART_CHAIN])?;
        }
    }
    Ok(())
}
