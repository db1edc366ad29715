//! `quarry`: the command line.

mod local;
mod ps;
mod start;
mod stop;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "quarry",
    version,
    about = "Run Docker application stacks, locally or on a quarry cluster"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Run a stack on the local Docker, through a local nginx, and print its URLs.
    Start(start::StartArgs),
    /// Remove every container, network, router and file of a local stack.
    Stop(stop::StopArgs),
    /// List a local stack's containers.
    Ps(ps::PsArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Cmd::Start(a) => start::run(a).await,
            Cmd::Stop(a) => stop::run(a).await,
            Cmd::Ps(a) => ps::run(a).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
