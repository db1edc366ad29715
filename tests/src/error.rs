//! The lab's one error type: every failure says what was being done and what was seen.

use std::path::PathBuf;
use std::time::Duration;

/// Everything that can go wrong while building, driving or tearing down a lab.
#[derive(Debug, thiserror::Error)]
pub enum LabError {
    /// The lab manipulates namespaces, links and iptables: it needs root.
    #[error("the lab must run as root (it creates network namespaces, links and iptables rules)")]
    NotRoot,
    /// A program could not be started at all (missing binary, bad path).
    #[error("could not start `{cmd}`: {source}")]
    Spawn {
        /// The command line, for the reader.
        cmd: String,
        /// What the OS said.
        source: std::io::Error,
    },
    /// A command ran and exited unsuccessfully.
    #[error("`{cmd}` failed ({status}): {stderr}")]
    Command {
        /// The command line.
        cmd: String,
        /// Its exit status.
        status: String,
        /// Its standard error (and standard output when stderr was empty), trimmed.
        stderr: String,
    },
    /// A command did not finish in time and was killed.
    #[error("`{cmd}` did not finish within {limit:?} and was killed")]
    CommandTimeout {
        /// The command line.
        cmd: String,
        /// The time it was given.
        limit: Duration,
    },
    /// The network guard refused to let traffic flow.
    #[error(
        "network guard: the route to {addr} is `{route}`, not through the lab's bridge {bridge}; \
         refusing to send anything"
    )]
    Guard {
        /// The lab address checked.
        addr: String,
        /// The route the kernel would use.
        route: String,
        /// The bridge it should go through.
        bridge: String,
    },
    /// Every subnet reserved for labs is taken or overlaps a route already on the machine.
    #[error("no free lab subnet among 10.77.{first}.0/24 ..= 10.77.{last}.0/24")]
    NoSubnet {
        /// First third octet tried.
        first: u8,
        /// Last third octet tried.
        last: u8,
    },
    /// A file or directory of the lab could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The path concerned.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// Something awaited did not happen before the deadline.
    #[error("timed out after {waited:?} waiting for {what}; last seen: {last}")]
    Timeout {
        /// What was awaited.
        what: String,
        /// How long it was awaited.
        waited: Duration,
        /// The last observation.
        last: String,
    },
    /// A host index outside `1..=n`.
    #[error("the lab has no host h{0}")]
    NoHost(usize),
    /// A process name the host never spawned.
    #[error("h{host} has no process named `{name}`")]
    NoProcess {
        /// The host index.
        host: usize,
        /// The process name asked for.
        name: String,
    },
    /// A per-host feature (dockerd, sshd) that was not enabled for this host.
    #[error("{what} was not enabled on h{host} (enable it in the LabBuilder)")]
    NotEnabled {
        /// The host index.
        host: usize,
        /// The feature.
        what: &'static str,
    },
    /// Teardown finished but something of the run is still there.
    #[error("lab run {run} left things behind: {}", .leftovers.join("; "))]
    Leftovers {
        /// The run id.
        run: String,
        /// What is left.
        leftovers: Vec<String>,
    },
    /// A bad argument (a host named twice in a partition, a process name with a slash...).
    #[error("invalid argument: {0}")]
    Invalid(String),
}

/// Shorthand for results of lab operations.
pub type Result<T, E = LabError> = std::result::Result<T, E>;

/// Wraps an I/O error with its path.
pub(crate) fn io_err(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> LabError {
    let path = path.into();
    move |source| LabError::Io { path, source }
}
