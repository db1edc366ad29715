//! `quarry grid [DIR]`: the grid as the notes draw it.
//!
//! With a server configured (`--node`, `QUARRY_ADDR`, the config file, or this server's local
//! socket) it is the cluster's grid: one block per server, read linearizably, with its
//! version. Otherwise (or with `--local`) it is this machine as one block holding the stack's
//! running replicas, and a dry run of the stack's plan on a copy of it: where each new replica
//! would go (the notes' "virtual grid"). Left out until cluster deploys: a dry run of a stack's
//! plan against the cluster's grid.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;

use quarry_node::build::{self, Inputs};
use quarry_node::grid::{Grid, GridOptions};
use quarry_node::spec::LoadError;
use quarry_node::types::ServerId;

use super::client::{NodeArgs, Target};
use crate::local;

/// Arguments of `quarry grid`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The stack's directory (the one holding quarry.yml); default: the current directory.
    pub dir: Option<PathBuf>,
    /// Print the grid and the dry run as JSON.
    #[arg(long)]
    pub json: bool,
    /// This machine's grid and the stack's dry run, even when a server is configured.
    #[arg(long)]
    pub local: bool,
    /// On the cluster: list where this stack's slices sit.
    #[arg(short = 's', long = "stack")]
    pub stack: Option<String>,
    #[command(flatten)]
    pub node: NodeArgs,
}

/// Run `quarry grid`.
pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    if !args.local {
        if let Some(target) = Target::configured(&args.node)? {
            return cluster(&target, &args).await;
        }
    }
    local_grid(args).await
}

async fn cluster(target: &Target, args: &Args) -> anyhow::Result<ExitCode> {
    let view: quarry_node::api::GridView = target.get("/v1/grid").await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&view)?);
        return Ok(ExitCode::SUCCESS);
    }
    let version = view.grid.version;
    let grid = Grid::from_state(view.grid)?;
    println!(
        "Grid of the cluster at {} (version {version}):\n",
        target.endpoint
    );
    println!("{}", grid.picture());
    if let Some(stack) = &args.stack {
        let prefix = format!("{stack}.");
        let mut any = false;
        for (server, block) in grid.blocks() {
            let mine: Vec<String> = block
                .slices
                .iter()
                .filter(|s| s.0.starts_with(&prefix))
                .map(|s| {
                    let size = grid.slices().get(s).map(|x| x.spec.memory).unwrap_or(0);
                    format!("{s} ({})", quarry_node::grid::human_bytes(size))
                })
                .collect();
            if !mine.is_empty() {
                any = true;
                println!("{server}: {}", mine.join(", "));
            }
        }
        if !any {
            println!("stack {stack} has no slice on the grid (`quarry stacks` lists the stacks)");
        }
    }
    if args.dir.is_some() {
        println!(
            "(`quarry plan DIR` shows where a deploy of DIR would place new replicas; `quarry \
             grid --local DIR` shows a dry run on this machine)"
        );
    }
    Ok(ExitCode::SUCCESS)
}

async fn local_grid(args: Args) -> anyhow::Result<ExitCode> {
    let dir = super::stack_dir(args.dir.as_deref());
    let (stack, _) = match local::load(&dir) {
        Ok(ok) => ok,
        Err(LoadError::Invalid(diags)) => {
            eprintln!("{diags}");
            return Ok(ExitCode::FAILURE);
        }
        Err(e) => return Err(e.into()),
    };
    let current = local::current_state_or_nothing(&stack.name).await?;
    let plan = build::plan(&Inputs {
        stack: &stack,
        current: &current,
        global_env: &BTreeMap::new(),
    });
    let memory = super::local_memory().unwrap_or(1 << 30);
    let mut grid = Grid::new(GridOptions {
        min: 1,
        max: 1,
        autosize: false,
        block_size: memory,
        max_block_size: memory,
    });
    grid.add_block(ServerId::local(), memory, &[])?;
    let new_slices: Vec<_> = plan
        .slices_to_place(&stack)
        .into_iter()
        .map(|s| s.id)
        .collect();
    // What runs now and stays: the kept replicas, with their slices.
    for spec in plan
        .desired
        .iter()
        .filter(|c| c.placement.is_some())
        .map(|c| quarry_node::types::SliceSpec {
            id: c.slice.clone(),
            memory: c.memory,
            tags: Vec::new(),
            group: build::replica_group(&c.stack, &c.node, c.revision),
            pinned: c.kind == quarry_node::types::Kind::Service,
        })
    {
        grid.place(spec)?;
    }
    let dry = grid.dry_run(&plan.slices_to_place(&stack));
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "grid": grid.state(),
                "new_slices": new_slices,
                "dry_run": dry.grid.state(),
            }))?
        );
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "Grid of stack {:?} on this machine (running now):\n",
        stack.name
    );
    println!("{}", grid.picture());
    if dry.placements.is_empty() {
        println!("The plan places nothing new.");
    } else {
        println!("Dry run of the plan (where new replicas would go):\n");
        print!("{dry}");
    }
    Ok(ExitCode::SUCCESS)
}
