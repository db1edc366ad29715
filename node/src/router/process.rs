//! The owner of one nginx master in its own prefix directory:
//!
//! ```text
//! PREFIX/conf/nginx.conf   the live config (replaced only after `nginx -t` passed)
//! PREFIX/run/nginx.pid     the master's pid
//! PREFIX/logs/error.log    nginx's log
//! PREFIX/tmp/              nginx's temp files
//! ```
//!
//! nginx daemonizes, so it keeps routing while quarry is not running. Reloads are graceful
//! (`nginx -s reload`): [`Nginx::apply`] returns only after the new workers run and the old
//! ones have finished their requests.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// What went wrong with nginx.
#[derive(Debug, thiserror::Error)]
pub enum RouterError {
    /// nginx is not installed.
    #[error("nginx not found ({binary}): install it (`apt-get install nginx`) or set QUARRY_NGINX to its path")]
    NotInstalled {
        /// The binary tried.
        binary: String,
    },
    /// File work in the prefix failed.
    #[error("router files in {path}: {source}")]
    Io {
        /// The path.
        path: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// `nginx -t` refused the rendered config (a bug in the renderer, or a bad nginx).
    #[error("nginx -t refused the new config (the running router keeps its old one): {0}")]
    Invalid(String),
    /// nginx did not start (often: the listen address is taken).
    #[error("nginx did not start: {0}")]
    Start(String),
    /// A reload or stop was not carried out.
    #[error("nginx: {0}")]
    Signal(String),
}

/// What [`Nginx::apply`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// nginx was not running and was started.
    Started,
    /// The config changed and nginx reloaded it.
    Reloaded,
    /// nginx runs with exactly this config already: nothing was done.
    Unchanged,
}

/// One nginx in one prefix.
#[derive(Debug, Clone)]
pub struct Nginx {
    prefix: PathBuf,
    binary: PathBuf,
}

/// How long a reload may take before quarry gives up on it.
const RELOAD_TIMEOUT: Duration = Duration::from_secs(10);
/// How long old workers get to finish their requests after a reload.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(15);
const POLL: Duration = Duration::from_millis(20);

impl Nginx {
    /// The nginx owning `prefix`, run from `QUARRY_NGINX` or `nginx` on the PATH (or
    /// `/usr/sbin/nginx`).
    pub fn new(prefix: &Path) -> Self {
        let binary = std::env::var_os("QUARRY_NGINX")
            .map(PathBuf::from)
            .unwrap_or_else(find_nginx);
        Nginx {
            prefix: prefix.to_owned(),
            binary,
        }
    }

    /// Fails with [`RouterError::NotInstalled`] unless the nginx binary runs.
    pub fn check_installed(&self) -> Result<(), RouterError> {
        let mut c = Command::new(&self.binary);
        c.arg("-v");
        self.run(c)?.map_err(|_| RouterError::NotInstalled {
            binary: self.binary.display().to_string(),
        })
    }

    /// The prefix directory.
    pub fn prefix(&self) -> &Path {
        &self.prefix
    }

    fn conf(&self) -> PathBuf {
        self.prefix.join("conf/nginx.conf")
    }

    fn io(&self, path: &Path) -> impl Fn(std::io::Error) -> RouterError + '_ {
        let path = path.display().to_string();
        move |source| RouterError::Io {
            path: path.clone(),
            source,
        }
    }

    fn command(&self, conf: &str) -> Command {
        let mut c = Command::new(&self.binary);
        c.arg("-p")
            .arg(&self.prefix)
            .arg("-c")
            .arg(conf)
            .arg("-e")
            .arg("logs/error.log");
        c
    }

    fn run(&self, mut c: Command) -> Result<Result<(), String>, RouterError> {
        let out = c.output().map_err(|_| RouterError::NotInstalled {
            binary: self.binary.display().to_string(),
        })?;
        if out.status.success() {
            Ok(Ok(()))
        } else {
            let text = String::from_utf8_lossy(&out.stderr);
            let text: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
            Ok(Err(text.join(" / ")))
        }
    }

    /// The master's pid, if nginx runs in this prefix.
    pub fn pid(&self) -> Option<u32> {
        let text = fs::read_to_string(self.prefix.join("run/nginx.pid")).ok()?;
        let pid: u32 = text.trim().parse().ok()?;
        let cmdline = fs::read(format!("/proc/{pid}/cmdline")).ok()?;
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        // The master's title keeps its arguments: it must be ours (this prefix), not a process
        // that took over a stale pid.
        let ours = cmdline.starts_with("nginx: master process")
            && cmdline.contains(&format!("-p {} ", self.prefix.display()));
        (ours && proc_state(pid) != Some('Z')).then_some(pid)
    }

    /// Makes nginx run with `config`: checks it with `nginx -t`, then replaces the live config
    /// and starts or gracefully reloads nginx. Does nothing if nginx already runs this config.
    pub fn apply(&self, config: &str) -> Result<Applied, RouterError> {
        for dir in ["conf", "run", "logs", "tmp"] {
            let d = self.prefix.join(dir);
            fs::create_dir_all(&d).map_err(self.io(&d))?;
        }
        let live = self.conf();
        let running = self.pid();
        if running.is_some() && fs::read_to_string(&live).ok().as_deref() == Some(config) {
            return Ok(Applied::Unchanged);
        }
        let next = self.prefix.join("conf/nginx.conf.next");
        fs::write(&next, config).map_err(self.io(&next))?;
        let mut test = self.command("conf/nginx.conf.next");
        test.arg("-t").arg("-q");
        if let Err(e) = self.run(test)? {
            return Err(RouterError::Invalid(e));
        }
        fs::rename(&next, &live).map_err(self.io(&live))?;
        match running {
            None => {
                if let Err(e) = self.run(self.command("conf/nginx.conf"))? {
                    return Err(RouterError::Start(e));
                }
                let deadline = Instant::now() + RELOAD_TIMEOUT;
                while self.pid().is_none() {
                    if Instant::now() > deadline {
                        return Err(RouterError::Start(format!(
                            "no master process after {} s; see {}",
                            RELOAD_TIMEOUT.as_secs(),
                            self.prefix.join("logs/error.log").display()
                        )));
                    }
                    std::thread::sleep(POLL);
                }
                Ok(Applied::Started)
            }
            Some(master) => {
                self.reload(master)?;
                Ok(Applied::Reloaded)
            }
        }
    }

    /// Reloads and waits until new workers serve and the old ones have drained.
    fn reload(&self, master: u32) -> Result<(), RouterError> {
        let before = workers(master);
        let mut c = self.command("conf/nginx.conf");
        c.arg("-s").arg("reload");
        if let Err(e) = self.run(c)? {
            return Err(RouterError::Signal(format!("reload failed: {e}")));
        }
        let deadline = Instant::now() + RELOAD_TIMEOUT;
        loop {
            let now = workers(master);
            let fresh = now
                .iter()
                .any(|(pid, shutting)| !shutting && !before.iter().any(|(b, _)| b == pid));
            if fresh {
                break;
            }
            if Instant::now() > deadline {
                return Err(RouterError::Signal(format!(
                    "the new config was not taken within {} s; see {}",
                    RELOAD_TIMEOUT.as_secs(),
                    self.prefix.join("logs/error.log").display()
                )));
            }
            std::thread::sleep(POLL);
        }
        // Old workers finish their requests in flight, then exit.
        let deadline = Instant::now() + DRAIN_TIMEOUT;
        while workers(master)
            .iter()
            .any(|(pid, _)| before.iter().any(|(b, _)| b == pid))
            && Instant::now() < deadline
        {
            std::thread::sleep(POLL);
        }
        Ok(())
    }

    /// Stops nginx (fast shutdown) and removes the prefix directory.
    pub fn stop_and_remove(&self) -> Result<(), RouterError> {
        if let Some(pid) = self.pid() {
            let mut c = self.command("conf/nginx.conf");
            c.arg("-s").arg("stop");
            let signalled = self.run(c)?;
            if signalled.is_err() {
                // The config may be unreadable; signal the master directly.
                let _ = Command::new("kill")
                    .arg("-TERM")
                    .arg(pid.to_string())
                    .status();
            }
            let deadline = Instant::now() + Duration::from_secs(10);
            while alive(pid) {
                if Instant::now() > deadline {
                    return Err(RouterError::Signal(format!(
                        "master process {pid} still runs 10 s after stop"
                    )));
                }
                std::thread::sleep(POLL);
            }
        }
        match fs::remove_dir_all(&self.prefix) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(self.io(&self.prefix)(e)),
        }
    }
}

fn find_nginx() -> PathBuf {
    let on_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join("nginx"))
            .find(|p| p.is_file())
    });
    on_path.unwrap_or_else(|| PathBuf::from("/usr/sbin/nginx"))
}

/// The state letter and parent pid of a process, from /proc/PID/stat.
fn proc_stat(pid: u32) -> Option<(char, u32)> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command sits in parentheses and may contain spaces: read after the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let ppid = fields.next()?.parse().ok()?;
    Some((state, ppid))
}

fn proc_state(pid: u32) -> Option<char> {
    proc_stat(pid).map(|(s, _)| s)
}

fn alive(pid: u32) -> bool {
    matches!(proc_state(pid), Some(s) if s != 'Z')
}

/// The worker processes of a master: (pid, whether it is shutting down).
fn workers(master: u32) -> Vec<(u32, bool)> {
    let Ok(dir) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| matches!(proc_stat(*pid), Some((s, ppid)) if ppid == master && s != 'Z'))
        .filter_map(|pid| {
            let cmdline = fs::read(format!("/proc/{pid}/cmdline")).ok()?;
            let cmdline = String::from_utf8_lossy(&cmdline).into_owned();
            cmdline
                .starts_with("nginx: worker process")
                .then(|| (pid, cmdline.contains("shutting down")))
        })
        .collect()
}

/// Stops an nginx and removes its prefix when dropped, also while unwinding from a panic: for
/// a caller that must leave no nginx behind whatever happens (the tests).
#[derive(Debug)]
pub struct StopOnDrop(pub Nginx);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        let _ = self.0.stop_and_remove();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::router::{render, RouterSpec, Site};
    use std::net::{SocketAddr, TcpListener};

    fn free_port() -> u16 {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    }

    use crate::router::testing::{backend, get};

    #[test]
    fn nginx_in_own_prefix_starts_reloads_in_place_and_stops_clean() {
        if !find_nginx().is_file() && std::env::var_os("QUARRY_NGINX").is_none() {
            panic!("nginx is not installed: .ci/run installs it");
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let prefix = dir.path().join("router");
        let nginx = StopOnDrop(Nginx::new(&prefix));
        let listen: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
        let backend_addr = backend();
        let mut spec = RouterSpec {
            listen,
            sites: vec![Site {
                stack: "t".into(),
                node: "web".into(),
                domains: vec!["t.test".into()],
                upstreams: vec![],
            }],
        };
        let conf = render(&spec).conf;
        assert_eq!(nginx.0.apply(&conf).expect("start"), Applied::Started);
        let pid = nginx.0.pid().expect("running");
        let page = get(listen, "t.test");
        assert!(page.starts_with("HTTP/1.1 503"), "{page}");
        assert!(page.contains("no healthy replica"), "{page}");
        assert!(get(listen, "other.test").starts_with("HTTP/1.1 404"));

        assert_eq!(nginx.0.apply(&conf).expect("same"), Applied::Unchanged);
        spec.sites[0].upstreams = vec![backend_addr];
        let conf = render(&spec).conf;
        assert_eq!(nginx.0.apply(&conf).expect("reload"), Applied::Reloaded);
        assert_eq!(nginx.0.pid(), Some(pid), "a reload keeps the master");
        let page = get(listen, "t.test");
        assert!(page.contains("from-backend"), "{page}");

        assert!(matches!(
            nginx.0.apply("this is not nginx config"),
            Err(RouterError::Invalid(_))
        ));
        assert!(
            get(listen, "t.test").contains("from-backend"),
            "old config kept"
        );

        nginx.0.stop_and_remove().expect("stop");
        assert!(!alive(pid), "master {pid} gone");
        assert!(!prefix.exists(), "prefix removed");
    }
}
