//! Which quarry server the CLI talks to, with which token, and the request that turns HTTP
//! answers into errors saying what to do.
//!
//! The server comes from `--node`, else `QUARRY_ADDR`, else `node` in
//! `~/.config/quarry/config.toml`, else the local API socket when it exists (on a server,
//! as root). The token comes from `--token`/`QUARRY_TOKEN`, else `token` in the config file.

use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context};
use quarry_node::api::client::{self, ClientError, Endpoint};
use serde::de::DeserializeOwned;
use serde::Deserialize;

/// The default local API socket (a server's, root-only).
pub const LOCAL_SOCKET: &str = "/run/quarry/api.sock";

/// Flags every cluster command takes.
#[derive(Debug, Clone, clap::Args)]
pub struct NodeArgs {
    /// The server to talk to: http://HOST:PORT or unix:/path/to/api.sock.
    #[arg(long, env = "QUARRY_ADDR", global = true)]
    pub node: Option<String>,
    /// The admin token (in the server's secrets directory, admin.token).
    #[arg(long, env = "QUARRY_TOKEN", hide_env_values = true, global = true)]
    pub token: Option<String>,
    /// The CLI config file.
    #[arg(long, env = "QUARRY_CONFIG", global = true)]
    pub config: Option<PathBuf>,
}

/// `~/.config/quarry/config.toml`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// The server.
    pub node: Option<String>,
    /// The admin token.
    pub token: Option<String>,
}

fn default_config_path() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))?;
    Some(base.join("quarry").join("config.toml"))
}

fn read_config(path: &Path, explicit: bool) -> anyhow::Result<FileConfig> {
    match std::fs::read_to_string(path) {
        Ok(t) => toml::from_str(&t).with_context(|| format!("{}", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !explicit => {
            Ok(FileConfig::default())
        }
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
}

/// A server and the token to show it.
#[derive(Debug, Clone)]
pub struct Target {
    /// Where.
    pub endpoint: Endpoint,
    /// The token (none needed on the local socket).
    pub token: Option<String>,
}

impl Target {
    /// Resolve the flags, the environment and the config file.
    pub fn resolve(args: &NodeArgs) -> anyhow::Result<Target> {
        Target::configured(args)?.ok_or_else(|| {
            anyhow!(
                "no quarry server configured: pass --node http://ADDR:7700, set QUARRY_ADDR, or \
                 put `node = \"http://ADDR:7700\"` in ~/.config/quarry/config.toml"
            )
        })
    }

    /// The server configured by the flags, the environment or the config file, else the local
    /// socket when it exists; `None` when there is none (commands that also work locally
    /// then act locally).
    pub fn configured(args: &NodeArgs) -> anyhow::Result<Option<Target>> {
        let file = match &args.config {
            Some(p) => read_config(p, true)?,
            None => match default_config_path() {
                Some(p) => read_config(&p, false)?,
                None => FileConfig::default(),
            },
        };
        let node = args.node.clone().or(file.node);
        let endpoint = match node {
            Some(n) => n.parse::<Endpoint>().map_err(|e| anyhow!(e))?,
            None if Path::new(LOCAL_SOCKET).exists() => Endpoint::Unix(LOCAL_SOCKET.into()),
            None => return Ok(None),
        };
        Ok(Some(Target {
            endpoint,
            token: args.token.clone().or(file.token),
        }))
    }

    /// `GET path`, decoded; an HTTP error becomes a message saying what to do.
    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> anyhow::Result<T> {
        self.send("GET", path, None).await
    }

    /// `METHOD path` with an optional JSON body, the answer decoded; an HTTP error becomes a
    /// message saying what to do.
    pub async fn send<T: DeserializeOwned>(
        &self,
        method: &str,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> anyhow::Result<T> {
        let body = body.map(serde_json::to_vec).transpose()?;
        let body = body.as_deref().map(|b| (b, "application/json"));
        self.exchange(method, path, body, client::TIMEOUT).await
    }

    /// `METHOD path` with a body of `content_type`, waiting up to `limit`; the answer decoded.
    pub async fn upload<T: DeserializeOwned>(
        &self,
        path: &str,
        body: &[u8],
        content_type: &str,
        limit: std::time::Duration,
    ) -> anyhow::Result<T> {
        self.exchange("POST", path, Some((body, content_type)), limit)
            .await
    }

    async fn exchange<T: DeserializeOwned>(
        &self,
        method: &str,
        path: &str,
        body: Option<(&[u8], &str)>,
        limit: std::time::Duration,
    ) -> anyhow::Result<T> {
        let reply = client::request_with(
            &self.endpoint,
            method,
            path,
            body,
            self.token.as_deref(),
            limit,
        )
        .await
        .map_err(|e| match e {
            ClientError::Unreachable { .. } => {
                anyhow!("{e}\nis quarryd running there (`quarryd run`)? check --node / QUARRY_ADDR")
            }
            other => anyhow!(other),
        })?;
        let server_says = || {
            serde_json::from_slice::<serde_json::Value>(&reply.body)
                .ok()
                .and_then(|v| v["error"].as_str().map(str::to_owned))
                .unwrap_or_else(|| String::from_utf8_lossy(&reply.body).into_owned())
        };
        match reply.status {
            200 => serde_json::from_slice(&reply.body)
                .with_context(|| format!("{} answered {path} with unexpected JSON", self.endpoint)),
            401 if self.token.is_none() => bail!(
                "{} needs the admin token: set QUARRY_TOKEN (or `token` in \
                 ~/.config/quarry/config.toml) to the contents of admin.token in the server's \
                 secrets directory",
                self.endpoint
            ),
            401 => bail!("{} refused the token: {}", self.endpoint, server_says()),
            503 => bail!("{}: {}", self.endpoint, server_says()),
            400 | 404 | 409 | 413 => bail!("{}", server_says()),
            code => bail!(
                "{} answered {path} with HTTP {code}: {}",
                self.endpoint,
                server_says()
            ),
        }
    }
}
