//! The cluster's stacks: `quarry stacks` (live, deploying, disabled, failed), `quarry scale
//! -s STACK NODE=N...`, `quarry disable -s STACK`, `quarry enable -s STACK`.

use std::process::ExitCode;

use anyhow::bail;
use quarry_node::api::{ScaleRequest, StacksView};
use quarry_node::launch::Accepted;

use super::client::{NodeArgs, Target};
use super::table;

/// `quarry stacks` arguments.
#[derive(Debug, clap::Args)]
pub struct StacksArgs {
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub node: NodeArgs,
}

/// Run `quarry stacks`.
pub async fn stacks(args: StacksArgs) -> anyhow::Result<()> {
    let target = Target::resolve(&args.node)?;
    let v: StacksView = target.get("/v1/stacks").await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    if v.stacks.is_empty() {
        println!("no stacks yet: `quarry deploy DIR` deploys one");
        return Ok(());
    }
    let rows: Vec<Vec<String>> = v
        .stacks
        .iter()
        .map(|s| {
            vec![
                s.name.clone(),
                s.status.clone(),
                s.revision.to_string(),
                s.nodes
                    .iter()
                    .map(|(n, c)| format!("{n} {c}"))
                    .collect::<Vec<_>>()
                    .join(", "),
                if s.domains.is_empty() {
                    "-".to_owned()
                } else {
                    s.domains.join(",")
                },
                s.reason.clone().unwrap_or_default(),
            ]
        })
        .collect();
    table::print(
        &[
            "STACK",
            "STATUS",
            "REVISION",
            "NODES (ready/placed)",
            "DOMAINS",
            "WHY",
        ],
        &rows,
    );
    for s in &v.stacks {
        if let Some(f) = &s.last_failure {
            println!("{}: the last deploy failed: {f}", s.name);
        }
    }
    Ok(())
}

/// `quarry scale` arguments.
#[derive(Debug, clap::Args)]
pub struct ScaleArgs {
    /// The stack.
    #[arg(short = 's', long = "stack", required = true)]
    pub stack: String,
    /// NODE=REPLICAS, one or more.
    #[arg(required = true, value_name = "NODE=N")]
    pub scales: Vec<String>,
    /// Return once each scale is accepted.
    #[arg(long)]
    pub detach: bool,
    #[command(flatten)]
    pub node: NodeArgs,
}

/// Run `quarry scale`.
pub async fn scale(args: ScaleArgs) -> anyhow::Result<ExitCode> {
    let target = Target::resolve(&args.node)?;
    let mut wanted = Vec::new();
    for s in &args.scales {
        let Some((node, n)) = s.split_once('=') else {
            bail!("{s:?} is not NODE=REPLICAS (for example web=3)");
        };
        let Ok(n) = n.parse::<u32>() else {
            bail!("{s:?}: {n:?} is not a number of replicas");
        };
        wanted.push((node.to_owned(), n));
    }
    for (node, replicas) in wanted {
        let body = serde_json::to_value(ScaleRequest {
            node: node.clone(),
            replicas,
        })?;
        let a: Accepted = target
            .send(
                "POST",
                &format!("/v1/stacks/{}/scale", args.stack),
                Some(&body),
            )
            .await?;
        eprintln!(
            "scaling {}.{node} to {replicas} (deploy {})",
            args.stack, a.id
        );
        for p in &a.placements {
            eprintln!("  {p}");
        }
        if args.detach {
            println!("{}", a.id);
            continue;
        }
        let code = super::deploy::follow(&target, &a.id, 1, false).await?;
        if code != ExitCode::SUCCESS {
            return Ok(code);
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `quarry disable` / `quarry enable` arguments.
#[derive(Debug, clap::Args)]
pub struct EnableArgs {
    /// The stack.
    #[arg(short = 's', long = "stack", required = true)]
    pub stack: String,
    #[command(flatten)]
    pub node: NodeArgs,
}

/// Run `quarry disable` (`enabled`: false) or `quarry enable`.
pub async fn set_enabled(args: EnableArgs, enabled: bool) -> anyhow::Result<()> {
    let target = Target::resolve(&args.node)?;
    let what = if enabled { "enable" } else { "disable" };
    let _: serde_json::Value = target
        .send("POST", &format!("/v1/stacks/{}/{what}", args.stack), None)
        .await?;
    if enabled {
        println!(
            "stack {} enabled: its servers start its containers again, on the same addresses",
            args.stack
        );
    } else {
        println!(
            "stack {} disabled: its servers stop its containers (placements and addresses are \
             kept; `quarry enable -s {}` starts them again)",
            args.stack, args.stack
        );
    }
    Ok(())
}
