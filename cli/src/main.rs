//! `quarry`: run a stack on the local Docker, or drive a quarry cluster.
//!
//! Parse the command line, validate it into a command, act; exit codes are decided here:
//! 0 done, 1 the command failed (the message says why and what to do), 2 bad usage.

mod cmd;
mod local;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// quarry: git push Docker stacks to a fleet of servers, or run them locally.
#[derive(Debug, Parser)]
#[command(name = "quarry", version, about, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Show what applying a stack's quarry.yml would do (ENSURE, DEPLOY, SCALE, ROUTE, KILL).
    Plan(cmd::plan::Args),
    /// Show the grid (servers as columns, used memory as ###): the cluster's when a server is
    /// configured, else this machine's with a dry run of the stack's plan (`--local` forces it).
    Grid(cmd::grid::Args),
    /// Run a stack on the local Docker behind a local nginx, and print its URLs.
    Start(cmd::start::StartArgs),
    /// Remove every container, network, router and file of a local stack.
    Stop(local::StackArgs),
    /// Every container on the cluster (node, replica, server, revision, state, health,
    /// address), or a local stack's.
    Ps(cmd::ps::Args),
    /// A server's view of the cluster: role, leader, term, commit, voters, learners, health.
    Status(cmd::status::StatusArgs),
    /// The servers of the cluster (role, health); `quarry servers remove NAME`.
    Servers(cmd::servers::ServersArgs),
    /// The cluster's env, global or a stack's (-s); `quarry env set K=V`, `unset K`.
    Env(cmd::env::EnvArgs),
    /// Deploy a stack's directory to the cluster: built, placed, run on the grid.
    Deploy(cmd::deploy::Args),
    /// The cluster's stacks: live, deploying, disabled, failed.
    Stacks(cmd::stacks::StacksArgs),
    /// What the routers serve: domains, the replicas routed, whether each router has it.
    Routes(cmd::routes::RoutesArgs),
    /// Change a node's replica count: `quarry scale -s STACK web=3`.
    Scale(cmd::stacks::ScaleArgs),
    /// Stop a stack's containers on every server (placements and addresses are kept).
    Disable(cmd::stacks::EnableArgs),
    /// Start a disabled stack's containers again.
    Enable(cmd::stacks::EnableArgs),
}

/// Runs an async command on a small runtime.
fn block_on(f: impl std::future::Future<Output = anyhow::Result<()>>) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(f)?;
    Ok(ExitCode::SUCCESS)
}

/// Runs an async command that decides its own exit code.
fn block_on_code(
    f: impl std::future::Future<Output = anyhow::Result<ExitCode>>,
) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(f)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Plan(args) => block_on_code(cmd::plan::run(args)),
        Command::Grid(args) => block_on_code(cmd::grid::run(args)),
        Command::Start(args) => block_on(cmd::start::run(args)),
        Command::Stop(args) => block_on(cmd::stop::run(args)),
        Command::Ps(args) => block_on(cmd::ps::run(args)),
        Command::Status(args) => block_on(cmd::status::run(args)),
        Command::Servers(args) => block_on(cmd::servers::run(args)),
        Command::Env(args) => block_on(cmd::env::run(args)),
        Command::Deploy(args) => block_on_code(cmd::deploy::run(args)),
        Command::Stacks(args) => block_on(cmd::stacks::stacks(args)),
        Command::Routes(args) => block_on(cmd::routes::run(args)),
        Command::Scale(args) => block_on_code(cmd::stacks::scale(args)),
        Command::Disable(args) => block_on(cmd::stacks::set_enabled(args, false)),
        Command::Enable(args) => block_on(cmd::stacks::set_enabled(args, true)),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("quarry: {e:#}");
            ExitCode::FAILURE
        }
    }
}
