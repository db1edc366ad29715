//! `quarry servers`: the members a server knows, as a table or JSON.

use quarry_node::api::Servers;
use quarry_node::spec::units::human_size;

use super::client::{NodeArgs, Target};

/// `quarry servers` arguments.
#[derive(Debug, clap::Args)]
pub struct ServersArgs {
    #[command(flatten)]
    pub node: NodeArgs,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}

/// The table, one line per server.
pub fn table(s: &Servers) -> String {
    let mut rows = vec![["NAME", "ADDRESS", "RPC", "MEMORY", "TAGS", "ROLE"].map(str::to_owned)];
    for e in &s.servers {
        let m = &e.member;
        rows.push([
            m.name.clone(),
            m.address.to_string(),
            m.rpc_port.to_string(),
            human_size(m.memory),
            if m.tags.is_empty() {
                "-".to_owned()
            } else {
                m.tags.join(",")
            },
            e.role.clone().unwrap_or_else(|| "-".to_owned()),
        ]);
    }
    let widths: Vec<usize> = (0..6)
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

/// Run it.
pub async fn run(args: ServersArgs) -> anyhow::Result<()> {
    let target = Target::resolve(&args.node)?;
    let s: Servers = target.get("/v1/servers").await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&s)?);
    } else {
        print!("{}", table(&s));
    }
    Ok(())
}
