//! One lab host: a network namespace with an address, a directory, and the processes the lab
//! started in it (its `dockerd` and `sshd` among them).
//!
//! A host's directory (`/run/quarry-lab/runs/<run>/h<i>/`) holds:
//!
//! | path | what |
//! |---|---|
//! | `etc/hosts` | the host's `/etc/hosts` (bind-mounted by `ip netns exec` through `/etc/netns`) |
//! | `config/`, `data/` | free for the software under test (quarryd's config and data dirs) |
//! | `logs/<name>.log` | stdout and stderr of process `<name>`, appended across restarts |
//! | `run/<name>.pid` | the pid of process `<name>` |
//! | `ssh/` | host key, `authorized_keys`, `sshd_config` |
//! | `docker/`, `dx/`, `docker.sock`, `dockerd.pid`, `daemon.json` | the host's engine |
//!
//! Processes run under `ip netns exec` (so they see the host's `/etc/hosts`), in a UTS
//! namespace of their own with hostname `h<i>`, in a process group of their own, with
//! `QUARRY_LAB_RUN=<run>` in their environment so the sweep finds them even when the lab's
//! owner died. `dockerd` runs under `nsenter --net` instead: under `ip netns exec` it fails
//! ("Devices cgroup isn't mounted").

use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::fs::OpenOptions;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use crate::error::{io_err, LabError, Result};
use crate::registry;
use crate::sys;

/// Time a command run inside a host gets by default.
const EXEC_LIMIT: Duration = Duration::from_secs(60);
/// Grace period between TERM and KILL when stopping a process.
const STOP_GRACE: Duration = Duration::from_secs(10);
/// How long an engine or sshd gets to come up.
const START_LIMIT: Duration = Duration::from_secs(30);

/// How a process enters its host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Enter {
    /// `ip netns exec`: network namespace plus the host's `/etc` files.
    NetnsExec,
    /// `nsenter --net`: network namespace only (what `dockerd` needs).
    Nsenter,
}

/// A long-running process to start in a host: name (for its log and pid files), program,
/// arguments and extra environment.
#[derive(Debug, Clone)]
pub struct ProcessSpec {
    name: String,
    program: OsString,
    args: Vec<OsString>,
    env: Vec<(OsString, OsString)>,
    enter: Enter,
}

impl ProcessSpec {
    /// A process called `name` (letters, digits, `.`, `_`, `-`) running `program`.
    pub fn new(name: impl Into<String>, program: impl AsRef<OsStr>) -> Self {
        ProcessSpec {
            name: name.into(),
            program: program.as_ref().to_owned(),
            args: Vec::new(),
            env: Vec::new(),
            enter: Enter::NetnsExec,
        }
    }

    /// Adds one argument.
    pub fn arg(mut self, arg: impl AsRef<OsStr>) -> Self {
        self.args.push(arg.as_ref().to_owned());
        self
    }

    /// Adds arguments.
    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.args
            .extend(args.into_iter().map(|a| a.as_ref().to_owned()));
        self
    }

    /// Sets an environment variable (on top of the caller's environment).
    pub fn env(mut self, key: impl AsRef<OsStr>, value: impl AsRef<OsStr>) -> Self {
        self.env
            .push((key.as_ref().to_owned(), value.as_ref().to_owned()));
        self
    }

    /// The process's name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

#[derive(Debug)]
struct Proc {
    spec: ProcessSpec,
    child: Child,
    starts: u32,
}

/// One host of a [`crate::Lab`].
#[derive(Debug)]
pub struct Host {
    index: usize,
    run: String,
    netns: String,
    addr: Ipv4Addr,
    dir: PathBuf,
    docker: bool,
    sshd: bool,
    client_key: PathBuf,
    known_hosts: PathBuf,
    procs: Mutex<BTreeMap<String, Proc>>,
}

impl Host {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        index: usize,
        run: &str,
        addr: Ipv4Addr,
        dir: PathBuf,
        docker: bool,
        sshd: bool,
        client_key: PathBuf,
        known_hosts: PathBuf,
    ) -> Self {
        Host {
            index,
            run: run.to_string(),
            netns: registry::host_name(run, index),
            addr,
            dir,
            docker,
            sshd,
            client_key,
            known_hosts,
            procs: Mutex::new(BTreeMap::new()),
        }
    }

    /// The host's number, `1..=n`.
    pub fn index(&self) -> usize {
        self.index
    }

    /// The host's short name, `h<i>` (also its name in every host's `/etc/hosts`).
    pub fn name(&self) -> String {
        format!("h{}", self.index)
    }

    /// The network namespace (and host-side veth) name.
    pub fn netns(&self) -> &str {
        &self.netns
    }

    /// The host's address on the lab bridge.
    pub fn addr(&self) -> Ipv4Addr {
        self.addr
    }

    /// The host's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// A directory for the configuration of the software under test.
    pub fn config_dir(&self) -> PathBuf {
        self.dir.join("config")
    }

    /// A directory for the data of the software under test.
    pub fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }

    /// The host's `/etc/hosts` (what processes in the host see at `/etc/hosts`).
    pub fn hosts_file(&self) -> PathBuf {
        self.dir.join("etc").join("hosts")
    }

    /// The log file of process `name`.
    pub fn log_path(&self, name: &str) -> PathBuf {
        self.dir.join("logs").join(format!("{name}.log"))
    }

    /// A command running `program` inside the host (not yet started).
    pub fn command(&self, program: &str) -> Command {
        registry::in_host(&self.run, self.index, OsStr::new(program), false)
    }

    /// Runs `args[0] args[1..]` inside the host and returns its output, whatever its status.
    pub fn exec<S: AsRef<OsStr>>(&self, args: &[S]) -> Result<Output> {
        let Some((program, rest)) = args.split_first() else {
            return Err(LabError::Invalid("exec needs a program".into()));
        };
        let mut cmd = self.command(&program.as_ref().to_string_lossy());
        cmd.args(rest);
        sys::output(&mut cmd, EXEC_LIMIT)
    }

    /// Runs a `sh -c` script inside the host; fails unless it exits 0. Returns stdout.
    pub fn sh(&self, script: &str) -> Result<String> {
        let mut cmd = self.command("sh");
        cmd.args(["-c", script]);
        sys::checked(&mut cmd, EXEC_LIMIT)
    }

    fn procs(&self) -> MutexGuard<'_, BTreeMap<String, Proc>> {
        // A panic while holding the lock leaves the table itself consistent.
        self.procs.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Starts a long-running process in the host. Its stdout and stderr are appended to
    /// [`Host::log_path`]; its pid goes to `run/<name>.pid`. Returns the pid.
    pub fn spawn(&self, spec: ProcessSpec) -> Result<u32> {
        let valid = !spec.name.is_empty()
            && spec
                .name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
        if !valid {
            return Err(LabError::Invalid(format!("process name `{}`", spec.name)));
        }
        let mut procs = self.procs();
        let starts = match procs.get_mut(&spec.name) {
            Some(p) => {
                if matches!(p.child.try_wait(), Ok(None)) {
                    return Err(LabError::Invalid(format!(
                        "process `{}` is already running on h{}",
                        spec.name, self.index
                    )));
                }
                p.starts
            }
            None => 0,
        };
        let (pid, child) = self.start(&spec, starts + 1)?;
        procs.insert(
            spec.name.clone(),
            Proc {
                spec,
                child,
                starts: starts + 1,
            },
        );
        Ok(pid)
    }

    fn start(&self, spec: &ProcessSpec, nth: u32) -> Result<(u32, Child)> {
        if spec.enter == Enter::Nsenter {
            self.remove_stale_engine_pid_files();
        }
        let log_path = self.log_path(&spec.name);
        let logs = self.dir.join("logs");
        std::fs::create_dir_all(&logs).map_err(io_err(&logs))?;
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(io_err(&log_path))?;
        let mut cmd = registry::in_host(
            &self.run,
            self.index,
            &spec.program,
            spec.enter == Enter::Nsenter,
        );
        cmd.args(&spec.args);
        for (k, v) in &spec.env {
            cmd.env(k, v);
        }
        let line = sys::describe(&cmd);
        writeln!(log, "=== lab: start #{nth} of {}: {line}", spec.name)
            .map_err(io_err(&log_path))?;
        let err = log.try_clone().map_err(io_err(&log_path))?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err)
            .process_group(0)
            .spawn()
            .map_err(|source| LabError::Spawn { cmd: line, source })?;
        let pid = child.id();
        sys::write_file(
            &self.dir.join("run").join(format!("{}.pid", spec.name)),
            format!("{pid}\n"),
        )?;
        Ok((pid, child))
    }

    /// Kills process `name` at once, as a crash would: SIGKILL to it and every process it
    /// started (for `dockerd`: its containerd, shims, docker-proxies and containers).
    pub fn kill(&self, name: &str) -> Result<()> {
        let mut procs = self.procs();
        let p = self.proc_mut(&mut procs, name)?;
        let mut tree = running_descendants(&mut p.child);
        let _ = p.child.kill();
        let _ = p.child.wait();
        if p.spec.enter == Enter::Nsenter {
            tree.extend(self.engine_pids());
        }
        self.kill_rest(name, &tree)
    }

    /// Stops process `name` gracefully: TERM, then KILL after a grace period; whatever it
    /// started and left behind is killed too.
    pub fn stop(&self, name: &str) -> Result<()> {
        let mut procs = self.procs();
        let p = self.proc_mut(&mut procs, name)?;
        self.stop_proc(p)
    }

    fn stop_proc(&self, p: &mut Proc) -> Result<()> {
        let mut rest = running_descendants(&mut p.child);
        sys::stop_child(&mut p.child, STOP_GRACE);
        if p.spec.enter == Enter::Nsenter {
            rest.extend(self.engine_pids());
        }
        self.kill_rest(&p.spec.name, &rest)
    }

    fn engine_pids(&self) -> Vec<u32> {
        crate::sweep::engine_pids(&self.run, self.index, &self.dir)
    }

    fn kill_rest(&self, name: &str, pids: &[u32]) -> Result<()> {
        let survivors = sys::kill_all(pids, STOP_GRACE);
        if survivors.is_empty() {
            Ok(())
        } else {
            Err(LabError::Invalid(format!(
                "processes {survivors:?} started by {name} on h{} survived SIGKILL",
                self.index
            )))
        }
    }

    /// Stops process `name` (if running, as [`Host::stop`] does) and starts it again with the
    /// same spec. Returns the new pid.
    pub fn restart(&self, name: &str) -> Result<u32> {
        let mut procs = self.procs();
        let p = self.proc_mut(&mut procs, name)?;
        self.stop_proc(p)?;
        let (pid, child) = self.start(&p.spec, p.starts + 1)?;
        p.child = child;
        p.starts += 1;
        Ok(pid)
    }

    /// Whether process `name` is running.
    pub fn is_running(&self, name: &str) -> Result<bool> {
        let mut procs = self.procs();
        let p = self.proc_mut(&mut procs, name)?;
        Ok(matches!(p.child.try_wait(), Ok(None)))
    }

    /// The pid of process `name` (its latest start).
    pub fn pid(&self, name: &str) -> Result<u32> {
        let mut procs = self.procs();
        Ok(self.proc_mut(&mut procs, name)?.child.id())
    }

    /// The pid of the process whose command is `comm` among process `name` and its
    /// descendants (a spawned wrapper such as `ip netns exec` runs the real program as a
    /// child), or an error naming what was searched.
    pub fn descendant_pid(&self, name: &str, comm: &str) -> Result<u32> {
        let root = self.pid(name)?;
        let mut todo = vec![root];
        while let Some(p) = todo.pop() {
            let c = std::fs::read_to_string(format!("/proc/{p}/comm")).unwrap_or_default();
            if c.trim() == comm {
                return Ok(p);
            }
            let children =
                std::fs::read_to_string(format!("/proc/{p}/task/{p}/children")).unwrap_or_default();
            todo.extend(
                children
                    .split_whitespace()
                    .filter_map(|c| c.parse::<u32>().ok()),
            );
        }
        Err(LabError::Invalid(format!(
            "no {comm} process under pid {root} ({name} on {})",
            self.name()
        )))
    }

    /// The whole log of process `name` (all its starts), for a failure message.
    pub fn log(&self, name: &str) -> String {
        let path = self.log_path(name);
        let mut text = String::new();
        match std::fs::File::open(&path) {
            Ok(mut f) => {
                let _ = f.read_to_string(&mut text);
            }
            Err(e) => text = format!("(no log at {}: {e})", path.display()),
        }
        text
    }

    /// The last `lines` lines of process `name`'s log.
    pub fn log_tail(&self, name: &str, lines: usize) -> String {
        let log = self.log(name);
        let all: Vec<&str> = log.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// Waits until process `name`'s log contains `needle`.
    pub fn wait_for_log(&self, name: &str, needle: &str, limit: Duration) -> Result<()> {
        sys::poll(
            &format!("`{needle}` in the log of {name} on h{}", self.index),
            limit,
            || {
                let log = self.log(name);
                if log.contains(needle) {
                    Ok(())
                } else {
                    Err(format!("log tail:\n{}", self.log_tail(name, 20)))
                }
            },
        )
    }

    /// The names of every process started in this host.
    pub fn processes(&self) -> Vec<String> {
        self.procs().keys().cloned().collect()
    }

    fn proc_mut<'a>(
        &self,
        procs: &'a mut BTreeMap<String, Proc>,
        name: &str,
    ) -> Result<&'a mut Proc> {
        procs.get_mut(name).ok_or_else(|| LabError::NoProcess {
            host: self.index,
            name: name.to_string(),
        })
    }

    /// Reaps every child after the run's teardown killed them.
    pub(crate) fn reap(&self) {
        for p in self.procs().values_mut() {
            let _ = p.child.kill();
            let _ = p.child.wait();
        }
    }

    // ---- the host's Docker engine ----

    /// The host's engine socket, as `DOCKER_HOST` wants it (`unix:///...`).
    pub fn docker_host(&self) -> Result<String> {
        if !self.docker {
            return Err(LabError::NotEnabled {
                host: self.index,
                what: "dockerd",
            });
        }
        Ok(format!("unix://{}", self.docker_socket().display()))
    }

    fn docker_socket(&self) -> PathBuf {
        self.dir.join("docker.sock")
    }

    /// Runs the `docker` client against this host's engine; fails unless it exits 0.
    pub fn docker(&self, args: &[&str]) -> Result<String> {
        let host = self.docker_host()?;
        let mut cmd = Command::new("docker");
        cmd.arg("-H").arg(&host).args(args);
        sys::checked(&mut cmd, EXEC_LIMIT)
    }

    /// Builds an image in this host's engine from a local context directory (the legacy
    /// builder: `FROM scratch` images need no registry).
    pub fn build_image(&self, context: &Path, tag: &str) -> Result<()> {
        let host = self.docker_host()?;
        let mut cmd = Command::new("docker");
        cmd.env("DOCKER_BUILDKIT", "0")
            .args(["-H", &host, "build", "-q", "-t", tag])
            .arg(context);
        sys::checked(&mut cmd, EXEC_LIMIT).map(|_| ())
    }

    /// Loads `image` into this host's engine from another engine (`docker save | docker
    /// load`); `from` is that engine's `DOCKER_HOST`, `None` for the machine's own engine.
    pub fn load_image(&self, image: &str, from: Option<&str>) -> Result<()> {
        let to = self.docker_host()?;
        let mut save = Command::new("docker");
        if let Some(from) = from {
            save.args(["-H", from]);
        }
        save.args(["save", image])
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        let save_line = sys::describe(&save);
        let mut saver = save.spawn().map_err(|source| LabError::Spawn {
            cmd: save_line.clone(),
            source,
        })?;
        let Some(stream) = saver.stdout.take() else {
            return Err(LabError::Invalid("docker save gave no stdout".into()));
        };
        let mut load = Command::new("docker");
        load.args(["-H", &to, "load", "-q"]).stdin(stream);
        let loaded = sys::output_from(&mut load, EXEC_LIMIT).and_then(|out| {
            if out.status.success() {
                Ok(())
            } else {
                Err(sys::failure(&load, &out))
            }
        });
        let status = saver.wait().map_err(|source| LabError::Spawn {
            cmd: save_line.clone(),
            source,
        })?;
        if !status.success() {
            return Err(LabError::Command {
                cmd: save_line,
                status: status.to_string(),
                stderr: format!("(image {image} could not be saved)"),
            });
        }
        loaded
    }

    /// Starts the host's engine (not waiting for it).
    pub(crate) fn start_dockerd(&self) -> Result<()> {
        let daemon_json = self.dir.join("daemon.json");
        // Our own config file, so the machine's /etc/docker/daemon.json (data-root, storage
        // driver) does not apply; containers go to a cgroup the sweep can find.
        sys::write_file(
            &daemon_json,
            format!(
                "{{\"cgroup-parent\": \"{}\"}}\n",
                registry::cgroup_parent(&self.run, self.index)
            ),
        )?;
        let d = &self.dir;
        let spec = ProcessSpec {
            enter: Enter::Nsenter,
            ..ProcessSpec::new("dockerd", "dockerd")
                .arg("--config-file")
                .arg(&daemon_json)
                .arg("--data-root")
                .arg(d.join("docker"))
                .arg("--exec-root")
                .arg(d.join("dx"))
                .arg("--pidfile")
                .arg(d.join("dockerd.pid"))
                .arg("-H")
                .arg(format!("unix://{}", self.docker_socket().display()))
        };
        self.spawn(spec).map(|_| ())
    }

    /// After an engine crash, its pid files name dead processes. This machine's init reaps
    /// orphans lazily, and dockerd takes a zombie for a running daemon ("pid file found") or a
    /// running containerd (and waits for it until it times out): remove such files.
    fn remove_stale_engine_pid_files(&self) {
        for file in [
            self.dir.join("dockerd.pid"),
            self.dir
                .join("dx")
                .join("containerd")
                .join("containerd.pid"),
        ] {
            let pid = std::fs::read_to_string(&file)
                .ok()
                .and_then(|p| p.trim().parse::<u32>().ok());
            if pid.is_some_and(|p| !sys::alive(p)) {
                let _ = std::fs::remove_file(&file);
            }
        }
    }

    /// Waits for the engine to answer `/_ping` on its socket (after a `restart("dockerd")`).
    pub fn wait_dockerd(&self) -> Result<()> {
        let sock = self.docker_socket();
        sys::poll(
            &format!("dockerd of h{} to answer on {}", self.index, sock.display()),
            START_LIMIT,
            || {
                if !self.is_running("dockerd").unwrap_or(false) {
                    return Err(format!(
                        "dockerd exited; log tail:\n{}",
                        self.log_tail("dockerd", 20)
                    ));
                }
                ping(&sock).map_err(|e| format!("{e}; log tail:\n{}", self.log_tail("dockerd", 5)))
            },
        )
    }

    // ---- the host's sshd ----

    /// Writes the host key and config and starts `sshd` (not waiting for it).
    pub(crate) fn start_sshd(&self, client_pub: &str) -> Result<()> {
        let ssh = self.dir.join("ssh");
        std::fs::create_dir_all(&ssh).map_err(io_err(&ssh))?;
        let key = ssh.join("host_ed25519");
        sys::run(
            "ssh-keygen",
            [
                OsStr::new("-q"),
                OsStr::new("-t"),
                OsStr::new("ed25519"),
                OsStr::new("-N"),
                OsStr::new(""),
                OsStr::new("-C"),
                OsStr::new(&self.name()),
                OsStr::new("-f"),
                key.as_os_str(),
            ],
        )?;
        sys::write_file(&ssh.join("authorized_keys"), client_pub)?;
        let config = ssh.join("sshd_config");
        sys::write_file(
            &config,
            format!(
                "Port 22\nListenAddress {addr}\nHostKey {key}\nAuthorizedKeysFile {auth}\n\
                 PidFile none\nPermitRootLogin prohibit-password\nPasswordAuthentication no\n\
                 KbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\nPrintMotd no\n\
                 Subsystem sftp internal-sftp\n",
                addr = self.addr,
                key = key.display(),
                auth = ssh.join("authorized_keys").display(),
            ),
        )?;
        let host_pub = std::fs::read_to_string(key.with_extension("pub"))
            .map_err(io_err(key.with_extension("pub")))?;
        let mut kh = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.known_hosts)
            .map_err(io_err(&self.known_hosts))?;
        writeln!(kh, "{} {}", self.addr, host_pub.trim()).map_err(io_err(&self.known_hosts))?;
        // sshd's privilege separation directory; normally made by the package's service.
        std::fs::create_dir_all("/run/sshd").map_err(io_err("/run/sshd"))?;
        self.spawn(
            ProcessSpec::new("sshd", "/usr/sbin/sshd")
                .args(["-D", "-e", "-f"])
                .arg(&config),
        )
        .map(|_| ())
    }

    /// Waits for sshd to accept TCP connections on port 22 (after a `restart("sshd")`).
    pub fn wait_sshd(&self) -> Result<()> {
        let addr = SocketAddr::from((self.addr, 22));
        sys::poll(
            &format!("sshd of h{} to listen on {addr}", self.index),
            START_LIMIT,
            || {
                if !self.is_running("sshd").unwrap_or(false) {
                    return Err(format!("sshd exited; log:\n{}", self.log_tail("sshd", 20)));
                }
                TcpStream::connect_timeout(&addr, Duration::from_millis(200))
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            },
        )
    }

    /// An `ssh` command to this host as root with the lab's client key, checking the host key
    /// against the lab's `known_hosts`. Not yet started.
    pub fn ssh_command(&self, remote: &str) -> Result<Command> {
        if !self.sshd {
            return Err(LabError::NotEnabled {
                host: self.index,
                what: "sshd",
            });
        }
        let mut cmd = Command::new("ssh");
        cmd.args(["-F", "/dev/null", "-i"])
            .arg(&self.client_key)
            .args(["-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes"])
            .args(["-o", "StrictHostKeyChecking=yes", "-o", "ConnectTimeout=5"])
            .args(["-o", "GlobalKnownHostsFile=/dev/null", "-o"])
            .arg(format!("UserKnownHostsFile={}", self.known_hosts.display()))
            .arg(format!("root@{}", self.addr))
            .arg(remote);
        Ok(cmd)
    }

    /// Runs `remote` on this host over ssh; fails unless it exits 0. Returns stdout.
    pub fn ssh(&self, remote: &str) -> Result<String> {
        sys::checked(&mut self.ssh_command(remote)?, EXEC_LIMIT)
    }

    /// One line telling a person how to reach this host.
    pub fn describe(&self) -> String {
        let mut line = format!(
            "{}  {}  shell: ip netns exec {} sh",
            self.name(),
            self.addr,
            self.netns
        );
        if self.docker {
            line.push_str(&format!(
                "  docker: DOCKER_HOST=unix://{}",
                self.docker_socket().display()
            ));
        }
        if self.sshd {
            line.push_str(&format!(
                "  ssh: ssh -i {} -o UserKnownHostsFile={} root@{}",
                self.client_key.display(),
                self.known_hosts.display(),
                self.addr
            ));
        }
        line
    }
}

/// The descendants of a child that is still running. (Once a child is reaped its pid may be
/// reused by an unrelated process, whose children must not be touched.)
fn running_descendants(child: &mut Child) -> Vec<u32> {
    match child.try_wait() {
        Ok(None) => sys::descendants(child.id()),
        _ => Vec::new(),
    }
}

/// Asks an engine's `/_ping` over its unix socket.
fn ping(sock: &Path) -> std::result::Result<(), String> {
    let mut s = UnixStream::connect(sock).map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(2)))
        .map_err(|e| e.to_string())?;
    s.write_all(b"GET /_ping HTTP/1.0\r\nHost: docker\r\n\r\n")
        .map_err(|e| format!("write: {e}"))?;
    let mut reply = String::new();
    let _ = s.read_to_string(&mut reply);
    if reply.starts_with("HTTP/1.0 200") || reply.starts_with("HTTP/1.1 200") {
        Ok(())
    } else {
        Err(format!("/_ping answered {:?}", reply.lines().next()))
    }
}
