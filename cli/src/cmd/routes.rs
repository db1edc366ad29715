//! `quarry routes`: what the routers serve, as the leader computes it from the committed routes
//! and the servers' reports (domain, stack, node, the routed replicas and their revision), and
//! whether each router (a server tagged `router`) has acknowledged it; and the committed routes
//! left out of the table (a domain two nodes claim, a name nginx cannot take), with why.

use quarry_node::launch::RoutesReport;

use super::client::{NodeArgs, Target};
use super::table;

/// `quarry routes` arguments.
#[derive(Debug, clap::Args)]
pub struct RoutesArgs {
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub node: NodeArgs,
}

/// Run `quarry routes`.
pub async fn run(args: RoutesArgs) -> anyhow::Result<()> {
    let target = Target::resolve(&args.node)?;
    let report: RoutesReport = target.get("/v1/routes").await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    let v = &report.view;
    if v.table.nodes.is_empty() {
        println!("no domains are routed: a web node's `domains` are, once deployed");
    } else {
        let rows: Vec<Vec<String>> = v
            .table
            .nodes
            .iter()
            .map(|n| {
                vec![
                    n.domains.join(","),
                    format!("{}.{}", n.stack, n.node),
                    if n.upstreams.is_empty() {
                        "none (503)".to_owned()
                    } else {
                        n.upstreams
                            .iter()
                            .map(|u| format!("{} (r{})", u.address, u.revision))
                            .collect::<Vec<_>>()
                            .join(" ")
                    },
                ]
            })
            .collect();
        table::print(&["DOMAINS", "NODE", "REPLICAS"], &rows);
    }
    for l in &report.left_out {
        println!(
            "left out: {} of {}.{}: {}",
            l.domain, l.stack, l.node, l.reason
        );
    }
    if v.routers.is_empty() {
        println!(
            "no router: tag a server `router` (tags = [\"router\"] in its quarryd.toml) to serve \
             these domains on its port 80"
        );
    }
    for r in &v.routers {
        let state = match (&r.error, r.current, r.acked_secs_ago) {
            (Some(e), _, _) => format!("not updated: {e}"),
            (None, true, _) => "serves this table".to_owned(),
            (None, false, Some(s)) => format!("updating (last acknowledged {s}s ago)"),
            (None, false, None) => "no table acknowledged yet".to_owned(),
        };
        println!("router {}: {state}", r.server);
    }
    Ok(())
}
