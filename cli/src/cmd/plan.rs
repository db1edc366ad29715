//! `quarry plan [DIR]`: compile a stack's quarry.yml against the current state and show the
//! launch instructions, without applying anything.
//!
//! The current state is, in order: the `--state` file if given; otherwise what the local
//! Docker runs of the stack (read back from the containers' labels, exactly as `quarry start`
//! reads it, so the plan shown is the plan `quarry start` applies); nothing running if Docker
//! cannot be reached (said on stderr).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use quarry_node::build::{self, Inputs};
use quarry_node::spec::LoadError;
use quarry_node::types::StackState;

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
}

/// Run `quarry plan`.
pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let dir = super::stack_dir(args.dir.as_deref());
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
        print!("{}", build::render(&plan));
    }
    Ok(ExitCode::SUCCESS)
}
