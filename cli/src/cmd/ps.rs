//! `quarry ps [DIR] [-s STACK]`: with a server configured, every container of every stack
//! (or of one) on every server of the cluster: node, replica, server, revision, state,
//! health (as its server last probed it), committed address, container id. Otherwise (or
//! with `--local`) the containers of a local stack (health probed now from the host, uptime)
//! and its router.

use std::path::PathBuf;

use quarry_node::docker::{self, Engine, Origin};
use quarry_node::launch::PsView;
use quarry_node::reconcile;
use quarry_node::types::{ServerId, StackState};
use serde::Serialize;

use super::client::{NodeArgs, Target};
use super::table;
use crate::local;

/// `quarry ps` arguments.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The stack's directory (locally: the one holding quarry.yml; default: the current one).
    pub dir: Option<PathBuf>,
    /// The stack's name (on the cluster, default: every stack).
    #[arg(short = 's', long = "stack")]
    pub stack: Option<String>,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
    /// This machine's containers, even when a server is configured.
    #[arg(long)]
    pub local: bool,
    #[command(flatten)]
    pub node: NodeArgs,
}

#[derive(Debug, Serialize)]
struct PsReport {
    stack: String,
    router: Option<Router>,
    containers: Vec<local::PsRow>,
    /// The current state read back from the containers (what `quarry plan --state` reads).
    state: StackState,
}

#[derive(Debug, Serialize)]
struct Router {
    listen: Option<std::net::SocketAddr>,
    pid: u32,
}

/// Runs `quarry ps`.
pub async fn run(args: Args) -> anyhow::Result<()> {
    if !args.local {
        if let Some(target) = Target::configured(&args.node)? {
            return cluster(&target, &args).await;
        }
    }
    local_ps(local::StackArgs {
        dir: args.dir.unwrap_or_else(|| PathBuf::from(".")),
        stack: args.stack,
        json: args.json,
    })
    .await
}

async fn cluster(target: &Target, args: &Args) -> anyhow::Result<()> {
    let stack = match (&args.stack, &args.dir) {
        (Some(s), _) => Some(s.clone()),
        (None, Some(dir)) => Some(local::stack_name(None, dir)?),
        (None, None) => None,
    };
    let path = match &stack {
        Some(s) => format!("/v1/ps?stack={s}"),
        None => "/v1/ps".to_owned(),
    };
    let v: PsView = target.get(&path).await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    if v.rows.is_empty() {
        println!("no containers: `quarry deploy DIR` deploys a stack");
    } else {
        let rows: Vec<Vec<String>> = v
            .rows
            .iter()
            .map(|r| {
                vec![
                    r.stack.clone(),
                    format!("{} ({})", r.node, r.kind),
                    r.replica.to_string(),
                    r.server.clone(),
                    r.revision.to_string(),
                    r.state.clone(),
                    r.health.clone(),
                    r.address.clone().unwrap_or_else(|| "-".to_owned()),
                    r.container
                        .as_deref()
                        .map(|c| c.chars().take(12).collect())
                        .unwrap_or_else(|| "-".to_owned()),
                    r.note.clone().unwrap_or_default(),
                ]
            })
            .collect();
        table::print(
            &[
                "STACK",
                "NODE",
                "REPLICA",
                "SERVER",
                "REVISION",
                "STATE",
                "HEALTH",
                "ADDRESS",
                "CONTAINER",
                "NOTE",
            ],
            &rows,
        );
    }
    for s in &v.silent {
        println!("warning: {s}");
    }
    Ok(())
}

async fn local_ps(args: local::StackArgs) -> anyhow::Result<()> {
    let name = local::stack_name(args.stack.as_deref(), &args.dir)?;
    let engine = Engine::connect().await?;
    let observed = docker::observe(&engine, &name, &Origin::Local).await?;
    let rows = local::ps_rows(&observed).await;
    let router = local::router(&name).pid().map(|pid| Router {
        listen: local::saved_listen(&name),
        pid,
    });
    let state = reconcile::current_state(&name, &ServerId::local(), &observed);
    let report = PsReport {
        stack: name,
        router,
        containers: rows,
        state,
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    if report.containers.is_empty() {
        println!("stack {}: no containers", report.stack);
    } else {
        local::print_table(&report.containers);
    }
    match &report.router {
        Some(r) => println!(
            "router: nginx pid {} on {}",
            r.pid,
            r.listen
                .map(|l| l.to_string())
                .unwrap_or_else(|| "?".into())
        ),
        None => println!("router: not running"),
    }
    Ok(())
}
