//! `quarry plan [DIR]`: compile a stack's quarry.yml against the current state and show the
//! launch instructions, without applying anything.
//!
//! With a server configured (and neither `--local`, `--state` nor `--fresh`), the state is
//! the cluster's: the CLI reads what compiling the stack reads (`GET
//! /v1/stacks/NAME/inputs`: the stack's record, the env, the grid, the servers, the host
//! ports taken) and runs the leader's own compile on it ([`quarry_node::launch::compile`]),
//! so it shows the instructions and the placements `quarry deploy` would commit now.
//!
//! Env values are shown as `redacted` (names kept: they may be secrets, resolved from the
//! cluster's env) unless `--show-env`.
//!
//! Otherwise the current state is, in order: the `--state` file if given; otherwise what the
//! local Docker runs of the stack (read back from the containers' labels, exactly as `quarry
//! start` reads it, so the plan shown is the plan `quarry start` applies); nothing running if
//! Docker cannot be reached (said on stderr).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use quarry_node::build::{self, Inputs};
use quarry_node::spec::LoadError;
use quarry_node::types::StackState;

use super::client::{NodeArgs, Target};
use crate::local;

/// Arguments of `quarry plan`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The stack's directory (the one holding quarry.yml); default: the current directory.
    pub dir: Option<PathBuf>,
    /// The current state to plan against, as JSON (a StackState, e.g. the `state` of
    /// `quarry ps --json`); default: what the local Docker runs of the stack.
    #[arg(long, value_name = "FILE")]
    pub state: Option<PathBuf>,
    /// Plan against nothing running, as for a first deploy.
    #[arg(long, conflicts_with = "state")]
    pub fresh: bool,
    /// Print the plan as JSON, for scripts.
    #[arg(long)]
    pub json: bool,
    /// Plan against this machine's Docker even when a server is configured.
    #[arg(long)]
    pub local: bool,
    /// Show env values (they may be secrets); by default each is shown as `redacted`.
    #[arg(long)]
    pub show_env: bool,
    #[command(flatten)]
    pub node: NodeArgs,
}

/// Run `quarry plan`.
pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let dir = super::stack_dir(args.dir.as_deref());
    if !args.local && args.state.is_none() && !args.fresh {
        if let Some(target) = Target::configured(&args.node)? {
            return cluster(&target, &dir, args.json, args.show_env).await;
        }
    }
    let (stack, warnings) = match local::load(&dir) {
        Ok(ok) => ok,
        Err(LoadError::Invalid(diags)) => {
            if args.json {
                println!("{}", serde_json::json!({ "errors": diags.0 }));
            } else {
                eprintln!("{diags}");
            }
            return Ok(ExitCode::FAILURE);
        }
        Err(e) => return Err(e.into()),
    };
    let nothing = || StackState {
        name: stack.name.clone(),
        nodes: BTreeMap::new(),
    };
    let current = match (&args.state, args.fresh) {
        (Some(path), _) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read the state file {}", path.display()))?;
            serde_json::from_str::<StackState>(&text)
                .with_context(|| format!("{} is not a stack state (JSON)", path.display()))?
        }
        (None, true) => nothing(),
        (None, false) => local::current_state_or_nothing(&stack.name).await?,
    };
    let plan = build::plan(&Inputs {
        stack: &stack,
        current: &current,
        global_env: &BTreeMap::new(),
    });
    if args.json {
        let plan = if args.show_env { plan } else { plan.redacted() };
        println!(
            "{}",
            serde_json::to_string_pretty(
                &serde_json::json!({ "plan": plan, "warnings": warnings })
            )?
        );
    } else {
        for w in &warnings {
            eprintln!("{w}");
        }
        print!("{}", build::render_with(&plan, env_values(args.show_env)));
    }
    Ok(ExitCode::SUCCESS)
}

/// The plan against the cluster (see the module docs).
/// What the plan shows of env values.
fn env_values(show: bool) -> build::EnvValues {
    if show {
        build::EnvValues::Shown
    } else {
        build::EnvValues::Redacted
    }
}

async fn cluster(
    target: &Target,
    dir: &std::path::Path,
    json: bool,
    show_env: bool,
) -> anyhow::Result<ExitCode> {
    let load = |max_memory| local::load_for(dir, max_memory);
    let report = |diags: &quarry_node::spec::Diagnostics| {
        if json {
            println!("{}", serde_json::json!({ "errors": diags.0 }));
        } else {
            eprintln!("{diags}");
        }
    };
    let (stack, _) = match load(None) {
        Ok(ok) => ok,
        Err(LoadError::Invalid(diags)) => {
            report(&diags);
            return Ok(ExitCode::FAILURE);
        }
        Err(e) => return Err(e.into()),
    };
    let inputs: quarry_node::launch::PlanInputs = target
        .get(&format!("/v1/stacks/{}/inputs", stack.name))
        .await?;
    // Again, now that the servers' memory is known.
    let (stack, warnings) = match load(inputs.max_memory()) {
        Ok(ok) => ok,
        Err(LoadError::Invalid(diags)) => {
            report(&diags);
            return Ok(ExitCode::FAILURE);
        }
        Err(e) => return Err(e.into()),
    };
    let owned = dir.to_owned();
    let tar = tokio::task::spawn_blocking(move || quarry_node::source::pack(&owned)).await??;
    let compiled = match quarry_node::launch::compile(&inputs, &stack, &tar.hash) {
        Ok(c) => c,
        Err(e) => {
            if json {
                println!("{}", serde_json::json!({ "errors": [e.to_string()] }));
            } else {
                eprintln!("{e}");
            }
            return Ok(ExitCode::FAILURE);
        }
    };
    let placements: Vec<String> = compiled
        .new_placements()
        .into_iter()
        .map(|(c, s, a)| match a {
            Some(a) => format!("{c} -> {s} at {a}"),
            None => format!("{c} -> {s}"),
        })
        .collect();
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "plan": if show_env { compiled.plan.clone() } else { compiled.plan.redacted() },
                "placements": placements,
                "revision": compiled.change.revision,
                "grid_version": compiled.change.grid_version,
                "retiring": compiled.change.retiring,
                "remove": compiled.change.remove,
                "warnings": warnings,
            }))?
        );
        return Ok(ExitCode::SUCCESS);
    }
    for w in &warnings {
        eprintln!("{w}");
    }
    println!(
        "Plan of {} against the cluster at {} (stack revision {} -> {}, grid version {}):",
        stack.name,
        target.endpoint,
        inputs.record.revision,
        compiled.change.revision,
        compiled.change.grid_version
    );
    print!(
        "{}",
        build::render_with(&compiled.plan, env_values(show_env))
    );
    if !placements.is_empty() {
        println!("New containers would go:");
        for p in &placements {
            println!("  {p}");
        }
    }
    Ok(ExitCode::SUCCESS)
}
