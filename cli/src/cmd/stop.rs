//! `quarry stop [DIR]`: removes everything of a local stack: its containers, its network, its
//! nginx and its files under QUARRY_HOME. Images are kept (they are the build cache). Only
//! the containers `quarry start` made ([`Origin::Local`]): never a cluster's of the same
//! stack name.

use anyhow::Context;
use quarry_node::docker::{containers, network, Engine, Origin};
use serde::Serialize;

use crate::local;

#[derive(Debug, Serialize)]
struct StopReport {
    stack: String,
    containers_removed: usize,
    router_stopped: Option<u32>,
}

/// Runs `quarry stop`.
pub async fn run(args: local::StackArgs) -> anyhow::Result<()> {
    let name = local::stack_name(args.stack.as_deref(), &args.dir)?;
    let engine = Engine::connect().await?;
    // Only what `quarry start` made: a cluster's containers of a stack of the same name on
    // this engine are the cluster's to manage (docker::origin).
    let ids = containers::stack_container_ids(&engine, &name, &Origin::Local).await?;
    let removals = ids.iter().map(|id| containers::remove(&engine, id));
    for r in futures_util::future::join_all(removals).await {
        r?;
    }
    match network::remove_network(&engine, &name, &Origin::Local).await {
        Ok(()) => {}
        // Still joined by containers quarry start did not make: a cluster's of the build
        // before origins used the same network name. They keep it.
        Err(e) if e.to_string().contains("active endpoints") => eprintln!(
            "note: network quarry-{name} is left: containers that quarry start did not make \
             still use it"
        ),
        Err(e) => return Err(e.into()),
    }
    let nginx = local::router(&name);
    let pid = nginx.pid();
    tokio::task::spawn_blocking(move || nginx.stop_and_remove())
        .await
        .context("router task")??;
    let dir = local::stack_dir(&name);
    match std::fs::remove_dir_all(&dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("removing {}", dir.display())),
    }
    let report = StopReport {
        stack: name,
        containers_removed: ids.len(),
        router_stopped: pid,
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!(
            "stack {}: removed {} container(s), its network{}",
            report.stack,
            report.containers_removed,
            match pid {
                Some(p) => format!(" and its router (nginx pid {p})"),
                None => String::new(),
            }
        );
    }
    Ok(())
}
