//! `quarry env`: the cluster's global env, or a stack's (`-s STACK`); `quarry env set K=V...`
//! and `quarry env unset K...` change it (a write: accepted on any server, applied by the
//! leader). Values can be secrets: they travel inside TLS and the CLI prints them only here.

use std::collections::BTreeMap;

use anyhow::bail;
use quarry_node::api::{EnvChange, EnvView};

use super::client::{NodeArgs, Target};

/// `quarry env` arguments.
#[derive(Debug, clap::Args)]
pub struct EnvArgs {
    #[command(subcommand)]
    pub action: Option<Action>,
    /// The stack whose env this is (default: the global env).
    #[arg(short = 's', long, global = true)]
    pub stack: Option<String>,
    #[command(flatten)]
    pub node: NodeArgs,
    /// Print the result as JSON.
    #[arg(long, global = true)]
    pub json: bool,
}

/// Changes.
#[derive(Debug, clap::Subcommand)]
pub enum Action {
    /// Set variables: KEY=VALUE ...
    Set {
        /// KEY=VALUE pairs.
        #[arg(required = true)]
        pairs: Vec<String>,
    },
    /// Remove variables: KEY ...
    Unset {
        /// Names.
        #[arg(required = true)]
        keys: Vec<String>,
    },
}

fn parse_pairs(pairs: &[String]) -> anyhow::Result<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    for p in pairs {
        let Some((k, v)) = p.split_once('=') else {
            bail!("{p:?} is not KEY=VALUE");
        };
        out.insert(k.to_owned(), v.to_owned());
    }
    Ok(out)
}

/// Run it.
pub async fn run(args: EnvArgs) -> anyhow::Result<()> {
    let target = Target::resolve(&args.node)?;
    let change = match &args.action {
        None => {
            let path = match &args.stack {
                Some(s) => format!("/v1/env?stack={s}"),
                None => "/v1/env".to_owned(),
            };
            let v: EnvView = target.get(&path).await?;
            if args.json {
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                for (k, val) in &v.env {
                    println!("{k}={val}");
                }
            }
            return Ok(());
        }
        Some(Action::Set { pairs }) => EnvChange {
            stack: args.stack.clone(),
            set: parse_pairs(pairs)?,
            unset: Vec::new(),
        },
        Some(Action::Unset { keys }) => EnvChange {
            stack: args.stack.clone(),
            set: BTreeMap::new(),
            unset: keys.clone(),
        },
    };
    let body = serde_json::to_value(&change)?;
    let _: serde_json::Value = target.send("POST", "/v1/env", Some(&body)).await?;
    let what = args
        .stack
        .as_deref()
        .map_or("the global env".to_owned(), |s| format!("the env of {s}"));
    println!("{what} changed");
    Ok(())
}
