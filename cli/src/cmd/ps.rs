//! `quarry ps [DIR]`: the containers of a local stack (node, replica, revision, state, health
//! probed now from the host, address, uptime) and its router.

use quarry_node::docker::{self, Engine};
use quarry_node::reconcile;
use quarry_node::types::{ServerId, StackState};
use serde::Serialize;

use crate::local;

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
pub async fn run(args: local::StackArgs) -> anyhow::Result<()> {
    let name = local::stack_name(args.stack.as_deref(), &args.dir)?;
    let engine = Engine::connect().await?;
    let observed = docker::observe(&engine, &name).await?;
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
