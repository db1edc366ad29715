//! `quarry servers`: the servers of the cluster (role, replication health, and liveness as the
//! answering server's gossip sees it: alive, suspect or dead, since when), as a table or JSON;
//! `quarry servers remove NAME` takes one out of the cluster, `quarry servers lead NAME` hands
//! it Raft leadership.

use quarry_node::api::{GossipView, ServerEntry, Servers};
use quarry_node::spec::units::human_size;

use super::client::{NodeArgs, Target};

/// `quarry servers` arguments.
#[derive(Debug, clap::Args)]
pub struct ServersArgs {
    #[command(subcommand)]
    pub action: Option<Action>,
    #[command(flatten)]
    pub node: NodeArgs,
    /// Print the result as JSON.
    #[arg(long, global = true)]
    pub json: bool,
}

/// What to do with the servers.
#[derive(Debug, clap::Subcommand)]
pub enum Action {
    /// Remove a server from the cluster: its record goes, Raft takes it out of the
    /// configuration (the voters follow the rule: 1 for 1–2 servers, 3 for 3–4, 5 from 5) and
    /// its grid block goes. Then stop quarryd on it (it takes no part any more).
    Remove {
        /// The server's name.
        name: String,
    },
    /// Hand Raft leadership to a voter (before maintenance on the leader's host, or to keep
    /// a router from leading).
    Lead {
        /// The voter's name.
        name: String,
    },
}

/// Columns as wide as their widest cell, two spaces apart.
pub fn render(rows: &[Vec<String>]) -> String {
    let n = rows.first().map_or(0, Vec::len);
    let widths: Vec<usize> = (0..n)
        .map(|i| rows.iter().map(|r| r[i].len()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for r in rows {
        let line: Vec<String> = r
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}

/// `alive 3m`, `dead 41s` (since when, by the answering server's clock), `-` if not seen.
fn liveness(g: Option<&GossipView>, now_ms: u64) -> String {
    match g {
        None => "-".to_owned(),
        Some(g) => format!(
            "{} {}",
            g.state.name(),
            super::when::age(now_ms.saturating_sub(g.since_unix_ms) / 1000)
        ),
    }
}

/// `0.1.0 1234abcd5678 (v1-v2)`: the build a server's gossip record names and the state
/// versions it supports; `-` if not seen, `older` for a build that did not say.
fn quarryd(e: &ServerEntry) -> String {
    match e.state_versions {
        None => "-".to_owned(),
        Some(_) if e.build.is_empty() => "older".to_owned(),
        Some((low, high)) => {
            let build = e.build.replace(" (commit ", " ").replace(')', "");
            format!("{build} (v{low}-v{high})")
        }
    }
}

/// The table, one line per server; the leader's role is marked `voter*`. LIVENESS says since
/// how long the answering server's gossip has seen the server in that state.
pub fn table(s: &Servers) -> String {
    let mut rows = vec![[
        "NAME", "RAFT", "ROLE", "HEALTH", "LIVENESS", "QUARRYD", "ADDRESS", "RPC", "MEMORY", "TAGS",
    ]
    .map(str::to_owned)
    .to_vec()];
    for e in &s.servers {
        let m = &e.member;
        rows.push(vec![
            m.name.clone(),
            e.raft_id.to_string(),
            if e.leader {
                format!("{}*", e.role)
            } else {
                e.role.clone()
            },
            e.health.clone(),
            liveness(e.liveness.as_ref(), s.now_unix_ms),
            quarryd(e),
            m.address.to_string(),
            m.rpc_port.to_string(),
            human_size(m.memory),
            if m.tags.is_empty() {
                "-".to_owned()
            } else {
                m.tags.join(",")
            },
        ]);
    }
    let mut out = render(&rows);
    let voters = s.servers.iter().filter(|e| e.role == "voter").count();
    let learners = s.servers.iter().filter(|e| e.role == "learner").count();
    out.push_str(&format!(
        "{} servers: {voters} voters, {learners} learners (* leads)\n",
        s.servers.len()
    ));
    for o in &s.others {
        out.push_str(&format!(
            "not a member, seen in gossip: {} ({})\n",
            o.name,
            liveness(Some(&o.gossip), s.now_unix_ms)
        ));
    }
    if let Some(n) = &s.note {
        out.push_str(&format!("note: {n}\n"));
    }
    out
}

/// Run it.
pub async fn run(args: ServersArgs) -> anyhow::Result<()> {
    let target = Target::resolve(&args.node)?;
    match args.action {
        None => {
            let s: Servers = target.get("/v1/servers").await?;
            if args.json {
                println!("{}", serde_json::to_string_pretty(&s)?);
            } else {
                print!("{}", table(&s));
            }
        }
        Some(Action::Remove { name }) => {
            let v: serde_json::Value = target
                .send("DELETE", &format!("/v1/servers/{name}"), None)
                .await?;
            if args.json {
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                println!(
                    "removed {name}: Raft takes it out of the configuration now (`quarry servers` \
                     shows the voters following); then stop quarryd on {name}"
                );
            }
        }
        Some(Action::Lead { name }) => {
            let v: serde_json::Value = target
                .send("POST", &format!("/v1/servers/{name}/lead"), None)
                .await?;
            if args.json {
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                println!("{name} leads");
            }
        }
    }
    Ok(())
}
