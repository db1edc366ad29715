//! `quarry status`: one server's view of the cluster: its role, the leader, term, commit and
//! applied indexes, voters, learners and health; its gossip (who it sees alive, and what its
//! seal dropped); and the voters the self-healing quorum replaced.

use quarry_node::api::Status;
use quarry_node::gossip::member::LiveState;

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
    if s.commit.is_empty() {
        out.push_str(&format!("version  {}\n", s.version));
    } else {
        out.push_str(&format!("version  {} (commit {})\n", s.version, s.commit));
    }
    if let Some(v) = s.cluster_version {
        let (low, high) = s.state_versions;
        out.push_str(&format!(
            "cluster  version v{v} (this server supports v{low} to v{high})\n"
        ));
    }
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
    if let Some(g) = &s.gossip {
        out.push_str(&format!(
            "gossip   {} alive, {} suspect, {} dead (listening on {}, generation {})\n",
            g.alive, g.suspect, g.dead, g.listen, g.generation
        ));
        for (name, v) in g.seen.iter().filter(|(_, v)| v.state != LiveState::Alive) {
            out.push_str(&format!(
                "         {name} {} since {}\n",
                v.state.name(),
                super::when::utc(v.since_unix_ms)
            ));
        }
        out.push_str(&format!(
            "seal     {} sent, {} accepted, dropped: {} not sealed with the key, {} replayed, {} \
             malformed\n",
            g.sent, g.accepted, g.not_sealed, g.replayed, g.malformed
        ));
    }
    for r in &s.replacements {
        out.push_str(&format!(
            "healed   voter {} (raft {}) dead since {}, replaced by {} (raft {}) at {}\n",
            r.dead,
            r.dead_raft_id,
            super::when::utc(r.dead_since_unix_ms),
            r.by,
            r.by_raft_id,
            super::when::utc(r.at_unix_ms)
        ));
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use quarry_node::api::{GossipStatus, GossipView};
    use quarry_node::cluster::VoterReplacement;

    #[test]
    fn status_says_who_gossip_sees_down_and_which_voter_was_replaced() {
        let s = Status {
            name: "h1".into(),
            address: "10.0.0.1".parse().expect("ip"),
            rpc_port: 7701,
            api_port: 7700,
            version: "0.1.0".into(),
            commit: "0123456789ab".into(),
            state_versions: (1, 2),
            cluster_version: Some(1),
            raft: None,
            health: "ok".into(),
            gossip: Some(GossipStatus {
                cluster_id: "quarry-0011223344556677".into(),
                listen: "10.0.0.1:7702".parse().expect("addr"),
                generation: 7,
                alive: 3,
                suspect: 0,
                dead: 1,
                sent: 10,
                accepted: 9,
                not_sealed: 4,
                replayed: 2,
                malformed: 0,
                seen: [(
                    "h2".to_owned(),
                    GossipView {
                        state: LiveState::Dead,
                        since_unix_ms: 1_767_225_600_000,
                        generation: 3,
                        heartbeat: 50,
                        max_version: 12,
                    },
                )]
                .into_iter()
                .collect(),
            }),
            replacements: vec![VoterReplacement {
                dead: "h2".into(),
                dead_raft_id: 2,
                dead_since_unix_ms: 1_767_225_600_000,
                by: "h4".into(),
                by_raft_id: 4,
                at_unix_ms: 1_767_225_604_000,
            }],
        };
        let t = text(&s, "http://10.0.0.1:7700");
        assert!(
            t.contains("gossip   3 alive, 0 suspect, 1 dead")
                && t.contains("h2 dead since 2026-01-01 00:00:00Z")
                && t.contains("4 not sealed with the key, 2 replayed")
                && t.contains(
                    "healed   voter h2 (raft 2) dead since 2026-01-01 00:00:00Z, replaced by h4 \
                     (raft 4) at 2026-01-01 00:00:04Z"
                ),
            "{t}"
        );
    }
}
