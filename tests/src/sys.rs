//! Small system helpers: run a command with a deadline, poll for a condition, look at
//! processes through `/proc`. No `unsafe`: signals go through the `kill` program.

use std::ffi::OsStr;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use crate::error::{LabError, Result};

/// How often [`poll`] looks again.
const POLL_EVERY: Duration = Duration::from_millis(50);

/// Default limit for one administrative command (`ip`, `iptables`, `docker ps`).
pub(crate) const CMD_LIMIT: Duration = Duration::from_secs(30);

/// Calls `check` until it returns `Ok`, or fails after `limit` with the last `Err` it gave.
///
/// This is how the lab (and tests using it) wait: never a fixed sleep, always a condition with
/// a deadline and a message saying what did not happen.
pub fn poll<T>(
    what: &str,
    limit: Duration,
    mut check: impl FnMut() -> std::result::Result<T, String>,
) -> Result<T> {
    let start = Instant::now();
    loop {
        match check() {
            Ok(v) => return Ok(v),
            Err(last) if start.elapsed() >= limit => {
                return Err(LabError::Timeout {
                    what: what.to_string(),
                    waited: start.elapsed(),
                    last,
                })
            }
            Err(_) => thread::sleep(POLL_EVERY),
        }
    }
}

/// The command line of `cmd`, for messages.
pub(crate) fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

/// Runs `cmd` to completion (killing it after `limit`), returning its output whatever the
/// exit status.
pub(crate) fn output(cmd: &mut Command, limit: Duration) -> Result<Output> {
    output_from(cmd.stdin(Stdio::null()), limit)
}

/// Like [`output`], with whatever stdin the caller set up (a pipe from another process).
pub(crate) fn output_from(cmd: &mut Command, limit: Duration) -> Result<Output> {
    let line = describe(cmd);
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| LabError::Spawn {
            cmd: line.clone(),
            source,
        })?;
    // Drain the pipes on threads so a chatty command cannot block on a full pipe.
    let out = drain(child.stdout.take());
    let err = drain(child.stderr.take());
    let start = Instant::now();
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if start.elapsed() >= limit => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(LabError::CommandTimeout { cmd: line, limit });
            }
            Ok(None) => thread::sleep(Duration::from_millis(5)),
            Err(source) => return Err(LabError::Spawn { cmd: line, source }),
        }
    };
    Ok(Output {
        status,
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
    })
}

fn drain<R: std::io::Read + Send + 'static>(r: Option<R>) -> thread::JoinHandle<Vec<u8>> {
    thread::spawn(move || {
        let mut buf = Vec::new();
        if let Some(mut r) = r {
            let _ = r.read_to_end(&mut buf);
        }
        buf
    })
}

/// Runs `cmd` and returns its stdout; a non-zero exit is an error carrying stderr.
pub(crate) fn checked(cmd: &mut Command, limit: Duration) -> Result<String> {
    let out = output(cmd, limit)?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(failure(cmd, &out))
    }
}

/// The error for a command that exited unsuccessfully.
pub(crate) fn failure(cmd: &Command, out: &Output) -> LabError {
    let mut stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
    if stderr.is_empty() {
        stderr = String::from_utf8_lossy(&out.stdout).trim().to_string();
    }
    LabError::Command {
        cmd: describe(cmd),
        status: out.status.to_string(),
        stderr,
    }
}

/// Runs `program args...` and returns stdout, failing on a non-zero exit.
pub(crate) fn run<I, S>(program: &str, args: I) -> Result<String>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    checked(Command::new(program).args(args), CMD_LIMIT)
}

/// Runs `program args...` for cleanup: failures are returned as a message, never raised.
pub(crate) fn run_quiet<I, S>(program: &str, args: I) -> std::result::Result<String, String>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    run(program, args).map_err(|e| e.to_string())
}

/// Whether a process with this pid exists and is not a zombie.
pub(crate) fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !matches!(stat_fields(&stat).first(), Some(&"Z") | Some(&"X")),
        Err(_) => false,
    }
}

/// The fields of `/proc/PID/stat` after the command name (field 3 onwards).
fn stat_fields(stat: &str) -> Vec<&str> {
    match stat.rfind(')') {
        Some(i) => stat[i + 1..].split_whitespace().collect(),
        None => Vec::new(),
    }
}

/// The start time of a process (clock ticks since boot): with the pid, it names a process
/// uniquely even when pids are reused.
pub(crate) fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // starttime is field 22; the vector starts at field 3.
    stat_fields(&stat).get(19)?.parse().ok()
}

/// Every pid currently in `/proc`.
pub(crate) fn all_pids() -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect()
}

/// The parent pid of `pid`.
fn parent(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // ppid is field 4; the vector starts at field 3.
    stat_fields(&stat).get(1)?.parse().ok()
}

/// Every descendant of `pid` (children, their children...), as the process table is now.
pub(crate) fn descendants(pid: u32) -> Vec<u32> {
    let table: Vec<(u32, u32)> = all_pids()
        .into_iter()
        .filter_map(|p| Some((p, parent(p)?)))
        .collect();
    let mut found = Vec::new();
    let mut frontier = vec![pid];
    while let Some(p) = frontier.pop() {
        for &(child, _) in table.iter().filter(|(_, pp)| *pp == p) {
            found.push(child);
            frontier.push(child);
        }
    }
    found
}

/// Kills every pid in `pids` (SIGKILL) and waits for them to be gone; returns survivors.
pub(crate) fn kill_all(pids: &[u32], limit: Duration) -> Vec<u32> {
    for &p in pids {
        signal(p, "KILL");
    }
    wait_gone(pids, limit)
}

/// Whether the command line of `pid` mentions `needle`.
pub(crate) fn cmdline_has(pid: u32, needle: &str) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|c| {
            String::from_utf8_lossy(&c)
                .replace('\0', " ")
                .contains(needle)
        })
        .unwrap_or(false)
}

/// Sends `signal` (`TERM`, `KILL`) to `pid`; a process already gone is not an error.
pub(crate) fn signal(pid: u32, signal: &str) {
    let _ = output(
        Command::new("kill").args(["-s", signal, &pid.to_string()]),
        CMD_LIMIT,
    );
}

/// Waits for every pid to be gone (or a zombie); returns those still alive at the deadline.
pub(crate) fn wait_gone(pids: &[u32], limit: Duration) -> Vec<u32> {
    let start = Instant::now();
    loop {
        let left: Vec<u32> = pids.iter().copied().filter(|p| alive(*p)).collect();
        if left.is_empty() || start.elapsed() >= limit {
            return left;
        }
        thread::sleep(POLL_EVERY);
    }
}

/// Stops a child: `TERM`, then `KILL` after `grace`; always reaps it.
pub(crate) fn stop_child(child: &mut Child, grace: Duration) {
    if let Ok(None) = child.try_wait() {
        signal(child.id(), "TERM");
        let start = Instant::now();
        while let Ok(None) = child.try_wait() {
            if start.elapsed() >= grace {
                let _ = child.kill();
                break;
            }
            thread::sleep(Duration::from_millis(10));
        }
    }
    let _ = child.wait();
}

/// Whether we run as root (effective uid 0).
pub(crate) fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|e| e == "0"))
        })
        .unwrap_or(false)
}

/// Writes a file, creating its parent directory.
pub(crate) fn write_file(path: &Path, contents: impl AsRef<[u8]>) -> Result<()> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(crate::error::io_err(parent))?;
    }
    std::fs::write(path, contents).map_err(crate::error::io_err(path))
}

/// The value of `key` in the environment of `pid`, if set.
pub(crate) fn environ_value(pid: u32, key: &str) -> Option<String> {
    let env = std::fs::read(format!("/proc/{pid}/environ")).ok()?;
    let prefix = format!("{key}=");
    env.split(|b| *b == 0).find_map(|e| {
        e.strip_prefix(prefix.as_bytes())
            .map(|v| String::from_utf8_lossy(v).into_owned())
    })
}

/// The resident memory of process `pid` in KiB (`VmRSS` of `/proc/PID/status`), or 0 when it
/// is gone.
pub fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}
