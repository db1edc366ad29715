//! `quarry status`: one server's view of the cluster: its role, the leader, term, commit and
//! applied indexes, voters, learners and health.

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

/// The text for people.
pub fn text(s: &Status, endpoint: &str) -> String {
    let mut out = format!("server   {} ({endpoint})\n", s.name);
    out.push_str(&format!(
        "address  {} (rpc {}, api {})\n",
        s.address, s.rpc_port, s.api_port
    ));
    out.push_str(&format!("version  {}\n", s.version));
    if let Some(r) = &s.raft {
        let list = |v: &[String]| {
            if v.is_empty() {
                "-".to_owned()
            } else {
                v.join(", ")
            }
        };
        out.push_str(&format!("role     {} (raft id {})\n", r.role, r.id));
        out.push_str(&format!(
            "leader   {}\n",
            r.leader.as_deref().unwrap_or("none (no leader yet)")
        ));
        out.push_str(&format!("term     {}\n", r.term));
        out.push_str(&format!("commit   {} (applied {})\n", r.commit, r.applied));
        out.push_str(&format!("voters   {}\n", list(&r.voters)));
        out.push_str(&format!("learners {}\n", list(&r.learners)));
    }
    out.push_str(&format!("health   {}\n", s.health));
    out
}

/// Run it.
pub async fn run(args: StatusArgs) -> anyhow::Result<()> {
    let target = Target::resolve(&args.node)?;
    let s: Status = target.get("/v1/status").await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&s)?);
    } else {
        print!("{}", text(&s, &target.endpoint.to_string()));
    }
    Ok(())
}
