//! `quarry plan [DIR]`: compile a stack's quarry.yml against the current state and show the
//! launch instructions, without applying anything.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use quarry_node::build::{self, Inputs};
use quarry_node::spec::{self, DirFacts, LoadError};
use quarry_node::types::StackState;

/// Arguments of `quarry plan`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The stack's directory (the one holding quarry.yml); default: the current directory.
    pub dir: Option<PathBuf>,
    /// The current state to plan against, as JSON (a StackState, e.g. from `quarry ps --json`);
    /// default: nothing running.
    #[arg(long, value_name = "FILE")]
    pub state: Option<PathBuf>,
    /// Print the plan as JSON, for scripts.
    #[arg(long)]
    pub json: bool,
}

/// Run `quarry plan`.
pub fn run(args: &Args) -> anyhow::Result<ExitCode> {
    let dir = super::stack_dir(args.dir.as_deref());
    let facts = DirFacts {
        root: dir.clone(),
        max_memory: super::local_memory(),
    };
    let default_name = dir
        .canonicalize()
        .ok()
        .and_then(|d| {
            d.file_name()
                .map(|n| n.to_string_lossy().to_ascii_lowercase())
        })
        .unwrap_or_else(|| "stack".to_owned());
    let (stack, warnings) = match spec::load_with(&dir, &default_name, &facts) {
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
    let current = match &args.state {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read the state file {}", path.display()))?;
            serde_json::from_str::<StackState>(&text)
                .with_context(|| format!("{} is not a stack state (JSON)", path.display()))?
        }
        None => StackState {
            name: stack.name.clone(),
            nodes: BTreeMap::new(),
        },
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
