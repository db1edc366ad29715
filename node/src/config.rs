//! `quarryd.toml`: a server's own settings (addresses, ports, tags, paths).
//!
//! Every path is configurable, so several `quarryd` can share one filesystem (the lab runs
//! one per network namespace). Settings come from the file (default
//! `/etc/quarry/quarryd.toml`), then command-line flags override them; a missing file means
//! all defaults. Unknown keys are refused, so a typo never silently keeps a default.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The default location of the config file.
pub const DEFAULT_CONFIG: &str = "/etc/quarry/quarryd.toml";

/// Default ports (DESIGN.md): HTTP API, node RPC (mutual TLS), gossip (UDP).
pub const API_PORT: u16 = 7700;
/// Node-to-node RPC.
pub const RPC_PORT: u16 = 7701;
/// Gossip.
pub const GOSSIP_PORT: u16 = 7702;

/// The default `min_free_disk`.
pub const DEFAULT_MIN_FREE_DISK: &str = "1G";

/// A server's configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// The server's name (hostname by default); unique in the cluster.
    pub name: Option<String>,
    /// The address other servers reach this one on (its cluster address). Services' published
    /// ports are bound to it.
    pub address: IpAddr,
    /// HTTP API port (TCP; needs the admin token, `/v1/health` aside).
    pub api_port: u16,
    /// The address the TCP API listens on (default: all).
    pub api_listen: IpAddr,
    /// Node-to-node RPC port (mutual TLS).
    pub rpc_port: u16,
    /// Gossip port (UDP, sealed).
    pub gossip_port: u16,
    /// Memory this server offers to the grid, e.g. `"4G"` (default: all of it).
    pub memory: Option<String>,
    /// Tags for placement (`ssd`, `router`, ...).
    pub tags: Vec<String>,
    /// Host ports quarry may publish containers on, inclusive.
    pub host_ports: (u16, u16),
    /// Where the router's nginx listens, on a server tagged `router`.
    pub router_listen: SocketAddr,
    /// Switch the iptables lockdown on.
    pub firewall: bool,
    /// How long a voter must be dead in gossip and unreachable over RPC before the leader
    /// replaces it by a learner (`"120s"`, `"2m"`; whole `ms`, `s` or `m`).
    pub heal_grace: String,
    /// How long gossip remembers a dead server before forgetting it (`"60s"`).
    pub gossip_forget_after: String,
    /// A deploy is refused while the data disk has less free space than this (`"1G"`):
    /// sources, build trees and images never take the room Raft's log needs.
    pub min_free_disk: String,
    /// Where paths live.
    pub paths: Paths,
}

/// Every path quarryd uses.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Paths {
    /// Data: `raft/`, `repos/`, `stacks/`, `state/` (the read-only mirror).
    pub data: PathBuf,
    /// `/etc/quarry`: `env/` and `cloud/`, read once by `quarryd init`.
    pub etc: PathBuf,
    /// Secrets: CA, certificate, keys, tokens (root-only).
    pub secrets: PathBuf,
    /// The local API socket (root-only, no token).
    pub api_socket: PathBuf,
    /// The Docker engine's socket.
    pub docker_socket: PathBuf,
    /// The hosts file whose managed block lists the live members.
    pub hosts_file: PathBuf,
}

impl Default for Paths {
    fn default() -> Self {
        Paths {
            data: "/var/lib/quarry".into(),
            etc: "/etc/quarry".into(),
            secrets: "/etc/quarry/secrets".into(),
            api_socket: "/run/quarry/api.sock".into(),
            docker_socket: "/var/run/docker.sock".into(),
            hosts_file: "/etc/hosts".into(),
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            name: None,
            address: IpAddr::V4(Ipv4Addr::LOCALHOST),
            api_port: API_PORT,
            api_listen: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            rpc_port: RPC_PORT,
            gossip_port: GOSSIP_PORT,
            memory: None,
            tags: Vec::new(),
            host_ports: (20000, 29999),
            router_listen: SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 80),
            firewall: false,
            heal_grace: "120s".to_owned(),
            gossip_forget_after: "60s".to_owned(),
            min_free_disk: DEFAULT_MIN_FREE_DISK.to_owned(),
            paths: Paths::default(),
        }
    }
}

/// Why a config could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The file is not valid.
    #[error("{path}: {message}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong, with the position when known.
        message: String,
    },
}

fn duration(key: &str, text: &str) -> Result<Duration, String> {
    crate::spec::units::parse_duration_ms(text)
        .map(Duration::from_millis)
        .map_err(|e| format!("{key} = {text:?}: {e} (e.g. \"120s\" or \"2m\")"))
}

impl Config {
    /// Read `path`; a missing file gives the defaults.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Config::default()),
            Err(source) => {
                return Err(ConfigError::Read {
                    path: path.to_owned(),
                    source,
                })
            }
        };
        Config::parse(path, &text)
    }

    /// Parse the text of a config file and check it.
    pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigError> {
        let cfg: Config = toml::from_str(text).map_err(|e| ConfigError::Invalid {
            path: path.to_owned(),
            message: e.to_string().trim_end().to_owned(),
        })?;
        cfg.check().map_err(|message| ConfigError::Invalid {
            path: path.to_owned(),
            message,
        })?;
        Ok(cfg)
    }

    /// The checks serde cannot express.
    pub fn check(&self) -> Result<(), String> {
        let (lo, hi) = self.host_ports;
        if lo == 0 || lo > hi {
            return Err(format!(
                "host_ports = [{lo}, {hi}] is not a range: give [low, high] with 0 < low <= high"
            ));
        }
        let fixed = [self.api_port, self.rpc_port, self.gossip_port];
        if let Some(p) = fixed.iter().find(|p| (lo..=hi).contains(*p)) {
            return Err(format!(
                "port {p} is both a quarryd port and inside host_ports [{lo}, {hi}]"
            ));
        }
        if self.api_port == self.rpc_port {
            return Err(format!("api_port and rpc_port are both {}", self.api_port));
        }
        if let Some(m) = &self.memory {
            crate::spec::units::parse_size(m).map_err(|e| format!("memory = {m:?}: {e}"))?;
        }
        self.heal_grace()?;
        self.gossip_forget_after()?;
        self.min_free_disk()?;
        Ok(())
    }

    /// `min_free_disk` in bytes.
    pub fn min_free_disk(&self) -> Result<u64, String> {
        let m = &self.min_free_disk;
        crate::spec::units::parse_size(m).map_err(|e| format!("min_free_disk = {m:?}: {e}"))
    }

    /// `heal_grace` as a duration.
    pub fn heal_grace(&self) -> Result<Duration, String> {
        duration("heal_grace", &self.heal_grace)
    }

    /// `gossip_forget_after` as a duration.
    pub fn gossip_forget_after(&self) -> Result<Duration, String> {
        duration("gossip_forget_after", &self.gossip_forget_after)
    }

    /// The RPC address other servers dial.
    pub fn rpc_addr(&self) -> SocketAddr {
        SocketAddr::new(self.address, self.rpc_port)
    }

    /// The gossip address other servers send to.
    pub fn gossip_addr(&self) -> SocketAddr {
        SocketAddr::new(self.address, self.gossip_port)
    }

    /// The TCP API address.
    pub fn api_addr(&self) -> SocketAddr {
        SocketAddr::new(self.api_listen, self.api_port)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_file_means_defaults() {
        let cfg = Config::load(Path::new("/nonexistent/quarryd.toml")).expect("defaults");
        assert_eq!(cfg, Config::default());
        assert_eq!(cfg.rpc_port, 7701);
    }

    #[test]
    fn a_file_sets_what_it_names_and_keeps_the_rest() {
        let cfg = Config::parse(
            Path::new("q.toml"),
            "address = \"10.0.0.5\"\ntags = [\"router\"]\nmemory = \"4G\"\n[paths]\ndata = \"/srv/q\"\n",
        )
        .expect("valid");
        assert_eq!(cfg.address.to_string(), "10.0.0.5");
        assert_eq!(cfg.tags, ["router"]);
        assert_eq!(cfg.paths.data, PathBuf::from("/srv/q"));
        assert_eq!(cfg.paths.etc, PathBuf::from("/etc/quarry"));
        assert_eq!(cfg.rpc_addr().to_string(), "10.0.0.5:7701");
    }

    #[test]
    fn unknown_keys_and_bad_values_are_refused_with_the_place() {
        let e = Config::parse(Path::new("q.toml"), "adress = \"10.0.0.5\"\n").expect_err("typo");
        let msg = e.to_string();
        assert!(
            msg.contains("unknown field `adress`") && msg.contains("line 1"),
            "{msg}"
        );
        let e =
            Config::parse(Path::new("q.toml"), "host_ports = [30000, 20000]\n").expect_err("range");
        assert!(e.to_string().contains("not a range"), "{e}");
        let e =
            Config::parse(Path::new("q.toml"), "host_ports = [7000, 8000]\n").expect_err("clash");
        assert!(e.to_string().contains("port 7700"), "{e}");
        let e = Config::parse(Path::new("q.toml"), "memory = \"4Q\"\n").expect_err("size");
        assert!(e.to_string().contains("memory"), "{e}");
        let e = Config::parse(Path::new("q.toml"), "heal_grace = \"2h\"\n").expect_err("unit");
        assert!(e.to_string().contains("heal_grace"), "{e}");
    }

    #[test]
    fn heal_grace_defaults_to_two_minutes_and_takes_short_values() {
        assert_eq!(Config::default().heal_grace(), Ok(Duration::from_secs(120)));
        let cfg = Config::parse(Path::new("q.toml"), "heal_grace = \"4s\"\n").expect("valid");
        assert_eq!(cfg.heal_grace(), Ok(Duration::from_secs(4)));
        assert_eq!(cfg.gossip_forget_after(), Ok(Duration::from_secs(60)));
    }
}
