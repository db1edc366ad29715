//! `quarry status`: one server's view of the cluster (name, address, and Raft's leader, term,
//! commit, voters and learners once Raft runs).

use quarry_node::api::Status;

use super::client::{NodeArgs, Target};

/// `quarry status` arguments.
#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pub node: NodeArgs,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Run it.
pub async fn run(args: StatusArgs) -> anyhow::Result<()> {
    let target = Target::resolve(&args.node)?;
    let s: Status = target.get("/v1/status").await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&s)?);
        return Ok(());
    }
    println!("server   {} ({})", s.name, target.endpoint);
    println!(
        "address  {} (rpc {}, api {})",
        s.address, s.rpc_port, s.api_port
    );
    println!("version  {}", s.version);
    match &s.raft {
        None => println!("raft     not running on this server yet"),
        Some(r) => {
            println!(
                "leader   {}",
                r.leader.as_deref().unwrap_or("none (no leader yet)")
            );
            println!("term     {}", r.term);
            println!("commit   {}", r.commit);
            println!("voters   {}", r.voters.join(", "));
            println!(
                "learners {}",
                if r.learners.is_empty() {
                    "-".to_owned()
                } else {
                    r.learners.join(", ")
                }
            );
        }
    }
    Ok(())
}
