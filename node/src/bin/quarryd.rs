//! `quarryd`: the daemon every server runs. `init` creates a cluster, `token` prints its join
//! token, `join` has this server admitted by any member, `run` serves (and restarts from the
//! data directory). Flags override quarryd.toml.

use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use quarry_node::config::{Config, DEFAULT_CONFIG};
use quarry_node::daemon::{self, Secrets};
use quarry_node::pki::JoinToken;

/// quarryd: the quarry cluster daemon.
#[derive(Debug, Parser)]
#[command(name = "quarryd", version = quarry_node::version::BUILD, about)]
struct Cli {
    #[command(flatten)]
    flags: Flags,
    #[command(subcommand)]
    command: Command,
}

/// Settings that override quarryd.toml.
#[derive(Debug, Args)]
struct Flags {
    /// The config file.
    #[arg(long, global = true, default_value = DEFAULT_CONFIG, env = "QUARRYD_CONFIG")]
    config: PathBuf,
    /// The data directory.
    #[arg(long, global = true)]
    data: Option<PathBuf>,
    /// The secrets directory.
    #[arg(long, global = true)]
    secrets: Option<PathBuf>,
    /// The local API socket.
    #[arg(long, global = true)]
    socket: Option<PathBuf>,
    /// This server's cluster address.
    #[arg(long, global = true)]
    address: Option<IpAddr>,
    /// This server's name.
    #[arg(long, global = true)]
    name: Option<String>,
    /// The HTTP API port.
    #[arg(long, global = true)]
    api_port: Option<u16>,
    /// The address the TCP API listens on.
    #[arg(long, global = true)]
    api_listen: Option<IpAddr>,
    /// The node RPC port.
    #[arg(long, global = true)]
    rpc_port: Option<u16>,
    /// The gossip port (UDP).
    #[arg(long, global = true)]
    gossip_port: Option<u16>,
    /// The hosts file whose managed block lists the live members.
    #[arg(long, global = true)]
    hosts_file: Option<PathBuf>,
    /// The Docker engine's socket.
    #[arg(long, global = true)]
    docker_socket: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create a new cluster with this server as its first member.
    Init {
        /// Then run this server (as `quarryd run` does).
        #[arg(long)]
        run: bool,
    },
    /// Print the join token.
    Token,
    /// Join a cluster through any member: ADDR is host[:rpc port].
    Join {
        /// A member's address.
        addr: String,
        /// The join token (`quarryd token` on a member).
        #[arg(long, env = "QUARRY_JOIN_TOKEN", hide_env_values = true)]
        token: Option<String>,
        /// Then run this server (as `quarryd run` does).
        #[arg(long)]
        run: bool,
    },
    /// Run this server.
    Run,
}

fn config(f: &Flags) -> anyhow::Result<Config> {
    let mut c = Config::load(&f.config)?;
    if let Some(v) = &f.data {
        c.paths.data = v.clone();
    }
    if let Some(v) = &f.secrets {
        c.paths.secrets = v.clone();
    }
    if let Some(v) = &f.socket {
        c.paths.api_socket = v.clone();
    }
    if let Some(v) = f.address {
        c.address = v;
    }
    if let Some(v) = &f.name {
        c.name = Some(v.clone());
    }
    if let Some(v) = f.api_port {
        c.api_port = v;
    }
    if let Some(v) = f.api_listen {
        c.api_listen = v;
    }
    if let Some(v) = f.rpc_port {
        c.rpc_port = v;
    }
    if let Some(v) = f.gossip_port {
        c.gossip_port = v;
    }
    if let Some(v) = &f.hosts_file {
        c.paths.hosts_file = v.clone();
    }
    if let Some(v) = &f.docker_socket {
        c.paths.docker_socket = v.clone();
    }
    c.check()
        .map_err(|e| anyhow::anyhow!("{}: {e}", f.config.display()))?;
    Ok(c)
}

fn member_addr(addr: &str, default_port: u16) -> anyhow::Result<SocketAddr> {
    // An IP alone (`fd00::1`, `[fd00::1]`, `10.0.0.1`) takes the default port; an IPv6 one
    // must then be written in brackets, which `format!("{addr}:{port}")` would not do.
    let bare = addr.trim_start_matches('[').trim_end_matches(']');
    if let Ok(ip) = bare.parse::<IpAddr>() {
        return Ok(SocketAddr::new(ip, default_port));
    }
    let with_port = if !addr.contains(':') {
        format!("{addr}:{default_port}")
    } else {
        addr.to_owned()
    };
    with_port
        .to_socket_addrs()
        .with_context(|| format!("{addr} is not an address"))?
        .next()
        .with_context(|| format!("{addr} resolves to no address"))
}

async fn act(cli: Cli) -> anyhow::Result<()> {
    let cfg = config(&cli.flags)?;
    match cli.command {
        Command::Init { run } => {
            let done = daemon::init(&cfg)?;
            println!("initialized cluster; this server is {:?}", done.name);
            println!("join token (give it to new servers, keep it secret):");
            println!("  {}", done.token);
            println!("admin token: {}", done.admin_token_path.display());
            if run {
                return serve(&cfg).await;
            }
            println!("start this server with `quarryd run`");
        }
        Command::Token => println!("{}", Secrets::of(&cfg).join_token()?),
        Command::Join { addr, token, run } => {
            let Some(token) = token else {
                anyhow::bail!(
                    "joining needs the cluster's join token: pass --token QRY1-... (or set \
                     QUARRY_JOIN_TOKEN); `quarryd token` on any member prints it"
                );
            };
            let token: JoinToken = token.parse()?;
            let addr = member_addr(&addr, cfg.rpc_port)?;
            let joined = daemon::join(&cfg, addr, &token).await?;
            println!(
                "joined through {addr} as Raft id {}: certificate and cluster secrets stored in {}",
                joined.raft_id,
                cfg.paths.secrets.display()
            );
            println!(
                "servers: {}",
                joined
                    .servers
                    .iter()
                    .map(|s| s.member.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            if run {
                return serve(&cfg).await;
            }
            println!("start this server with `quarryd run`: it joins Raft as a learner");
        }
        Command::Run => serve(&cfg).await?,
    }
    Ok(())
}

/// Run this server until SIGINT or SIGTERM.
async fn serve(cfg: &Config) -> anyhow::Result<()> {
    let running = daemon::run(cfg).await?;
    tracing::info!(
        rpc = %running.rpc.local_addr(),
        api = %running.api.tcp_addr(),
        socket = %running.api.socket().display(),
        raft_id = running.cluster.raft_id(),
        "quarryd running"
    );
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r?,
        _ = term.recv() => {}
    }
    tracing::info!("stopping");
    running.stop().await;
    Ok(())
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("quarryd: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(act(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("quarryd: {e:#}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_ipv6_member_address_without_a_port_takes_the_default_one() {
        let want: SocketAddr = "[fd00::1]:7701".parse().expect("addr");
        assert_eq!(member_addr("fd00::1", 7701).expect("bare"), want);
        assert_eq!(member_addr("[fd00::1]", 7701).expect("brackets"), want);
        assert_eq!(member_addr("[fd00::1]:7701", 1).expect("with port"), want);
        assert_eq!(
            member_addr("10.0.0.1", 7701).expect("v4"),
            "10.0.0.1:7701".parse::<SocketAddr>().expect("addr")
        );
    }
}
