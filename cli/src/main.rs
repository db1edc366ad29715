//! `quarry`: run a stack on the local Docker, or drive a quarry cluster.
//!
//! Parse the command line, validate it into a command, act; exit codes are decided here:
//! 0 done, 1 the command failed (the message says why and what to do), 2 bad usage.

mod cmd;

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
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Plan(args) => cmd::plan::run(&args),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("quarry: {e:#}");
            ExitCode::FAILURE
        }
    }
}
