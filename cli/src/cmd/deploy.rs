//! `quarry deploy [DIR]`: send a stack's tree to a server of the cluster, which stores it on
//! two servers and hands it to the leader; then follow the deploy: the plan, the builds, the
//! image transfers, the commit and the containers starting, until it is done.
//!
//! quarry.yml is checked here first (nothing is sent when it is broken); the leader checks it
//! again against the servers (memory, tags) before anything changes.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{anyhow, bail};
use quarry_node::launch::{Accepted, DeployView};
use quarry_node::source;
use quarry_node::spec::{self, DirFacts, LoadError};

use super::client::{NodeArgs, Target};

/// `quarry deploy` arguments.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The stack's directory (the one holding quarry.yml).
    #[arg(default_value = ".")]
    pub dir: PathBuf,
    /// Return once the leader accepted the deploy (print its id) instead of following it.
    #[arg(long)]
    pub detach: bool,
    /// Follow the deploy with this id (from any server) instead of deploying.
    #[arg(long, value_name = "ID", conflicts_with = "detach")]
    pub follow: Option<String>,
    /// Print the answer as JSON (with --detach: the acceptance; else the final progress).
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub node: NodeArgs,
}

/// The stack's default name: its directory's name.
fn default_name(dir: &Path) -> String {
    dir.canonicalize()
        .ok()
        .and_then(|d| {
            d.file_name()
                .map(|n| n.to_string_lossy().to_ascii_lowercase())
        })
        .unwrap_or_else(|| "stack".to_owned())
}

/// Run `quarry deploy`.
pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let target = Target::resolve(&args.node)?;
    if let Some(id) = &args.follow {
        return follow(&target, id, 0, args.json).await;
    }
    let name = default_name(&args.dir);
    let facts = DirFacts {
        root: args.dir.clone(),
        max_memory: None,
    };
    let (stack, warnings) = match spec::load_with(&args.dir, &name, &facts) {
        Ok(ok) => ok,
        Err(LoadError::Invalid(diags)) => {
            eprintln!("{diags}");
            eprintln!("nothing was sent: fix quarry.yml and deploy again");
            return Ok(ExitCode::FAILURE);
        }
        Err(e) => bail!("{e}\nnothing was sent"),
    };
    for w in &warnings {
        eprintln!("{w}");
    }
    let dir = args.dir.clone();
    let tar = tokio::task::spawn_blocking(move || source::pack(&dir)).await??;
    eprintln!(
        "sending {} ({:.1} MB, source {}) to {}",
        stack.name,
        tar.bytes.len() as f64 / 1e6,
        tar.hash.short(),
        target.endpoint
    );
    let path = format!("/v1/deploy?name={name}");
    let accepted: Accepted = target
        .upload(
            &path,
            &tar.bytes,
            "application/x-tar",
            Duration::from_secs(180),
        )
        .await?;
    if args.detach {
        if args.json {
            println!("{}", serde_json::to_string_pretty(&accepted)?);
        } else {
            println!("{}", accepted.id);
        }
        return Ok(ExitCode::SUCCESS);
    }
    eprint!("{}", accepted.plan);
    if !accepted.placements.is_empty() {
        eprintln!("New containers:");
        for p in &accepted.placements {
            eprintln!("  {p}");
        }
    }
    eprintln!(
        "deploy {} of {} (revision {}) accepted; source stored on {}",
        accepted.id,
        accepted.stack,
        accepted.revision,
        accepted.holders.join(", ")
    );
    follow(&target, &accepted.id, 1, args.json).await
}

/// Print a deploy's progress from line `since` until it is done.
pub async fn follow(
    target: &Target,
    id: &str,
    mut since: usize,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let mut failures = 0;
    loop {
        let v: DeployView = match target.get(&format!("/v1/deploys/{id}?since={since}")).await {
            Ok(v) => {
                failures = 0;
                v
            }
            // A leader that knows no such deploy is a definite answer: it was lost with the
            // leader that ran it (what it had not committed is gone).
            Err(e) if e.to_string().starts_with("the leader knows no deploy") => {
                eprintln!("deploy {id} failed: {e}");
                return Ok(ExitCode::FAILURE);
            }
            Err(e) if failures < 30 => {
                failures += 1;
                if failures == 1 {
                    eprintln!("(progress unavailable: {e}; trying again)");
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
            Err(e) => {
                return Err(anyhow!(
                    "{e}\nlost track of deploy {id}: it goes on at the leader if it was \
                     accepted; `quarry stacks` and `quarry ps` show where it is, `quarry deploy \
                     --follow {id}` on another server follows it"
                ))
            }
        };
        for l in &v.lines {
            eprintln!("  {l}");
        }
        since = v.next;
        if v.done {
            if json {
                println!("{}", serde_json::to_string_pretty(&v)?);
            }
            return Ok(match v.failed {
                // The leader could not tell whether its commit happened: not a failure
                // (the words say what to check).
                Some(why) if v.phase == "outcome unknown" => {
                    eprintln!("deploy {id} of {}: {why}", v.stack);
                    ExitCode::FAILURE
                }
                Some(why) => {
                    eprintln!("deploy {id} of {} failed: {why}", v.stack);
                    ExitCode::FAILURE
                }
                None => {
                    if !json {
                        println!(
                            "deployed {} (revision {})",
                            v.stack,
                            v.committed.map(|r| r.to_string()).unwrap_or("?".into())
                        );
                    }
                    ExitCode::SUCCESS
                }
            });
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}
