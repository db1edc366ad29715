//! Property tests of deploy placement: on random servers, random stacks and random ports
//! already committed, no host port is taken twice on a server, replicas of a node spread when
//! room allows, tags hold, and an unchanged (or only rescaled) stack keeps every placement.

use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;
use quarry_node::build::{self, Inputs as PlanInputs, Plan};
use quarry_node::deploy::{self, DeployError, Inputs, Placed, ServerInfo};
use quarry_node::grid::{Grid, GridOptions};
use quarry_node::spec::{NodeSpec, StackFile};
use quarry_node::types::{ImageSource, Kind, ServerId, StackState};

const MB: u64 = 1 << 20;
const TAGS: [&str; 2] = ["ssd", "gpu"];

fn tags(mask: u8) -> Vec<String> {
    TAGS.iter()
        .enumerate()
        .filter(|(i, _)| mask & (1 << i) != 0)
        .map(|(_, t)| (*t).to_owned())
        .collect()
}

#[derive(Debug, Clone)]
struct Server {
    mib: u64,
    tags: u8,
    /// Ports committed by other stacks, as offsets into the range.
    committed: Vec<u16>,
}

#[derive(Debug, Clone)]
struct Node {
    kind: Kind,
    scale: u32,
    mib: u64,
    ports: usize,
    tags: u8,
}

fn server() -> impl Strategy<Value = Server> {
    (
        prop::sample::select(vec![128u64, 256, 512, 2048]),
        0u8..4,
        prop::collection::vec(0u16..60, 0..20),
    )
        .prop_map(|(mib, tags, committed)| Server {
            mib,
            tags,
            committed,
        })
}

fn node() -> impl Strategy<Value = Node> {
    (
        prop::sample::select(vec![Kind::Service, Kind::Web, Kind::Worker]),
        1u32..=4,
        prop::sample::select(vec![16u64, 32, 64, 128]),
        0usize..=2,
        prop::sample::select(vec![0u8, 0, 1, 2, 3]),
    )
        .prop_map(|(kind, scale, mib, ports, tags)| Node {
            kind,
            scale: if kind == Kind::Service { 1 } else { scale },
            mib,
            // A web node needs a port to be routed.
            ports: if kind == Kind::Web {
                ports.max(1)
            } else {
                ports
            },
            tags,
        })
}

fn stack_file(nodes: &[Node]) -> StackFile {
    StackFile {
        name: "st".to_owned(),
        env: BTreeMap::new(),
        nodes: nodes
            .iter()
            .enumerate()
            .map(|(i, n)| NodeSpec {
                name: format!("n{i}"),
                kind: n.kind,
                image: ImageSource::Image("img:1".to_owned()),
                command: None,
                env: BTreeMap::new(),
                ports: [7000, 8080][..n.ports].to_vec(),
                memory: n.mib * MB,
                scale: n.scale,
                domains: if n.kind == Kind::Web {
                    vec![format!("n{i}.test")]
                } else {
                    Vec::new()
                },
                health: None,
                tags: tags(n.tags),
            })
            .collect(),
    }
}

/// Each server's range is 100 ports wide, so collisions with committed ports are likely.
const WIDTH: u16 = 99;

struct World {
    grid: Grid,
    servers: BTreeMap<ServerId, ServerInfo>,
    committed: BTreeMap<ServerId, BTreeSet<u16>>,
}

fn world(spec: &[Server]) -> World {
    let mut grid = Grid::new(GridOptions {
        max: spec.len(),
        ..GridOptions::default()
    });
    let mut servers = BTreeMap::new();
    let mut committed = BTreeMap::new();
    for (i, s) in spec.iter().enumerate() {
        let id = ServerId(format!("s{i}"));
        grid.add_block(id.clone(), s.mib * MB, &tags(s.tags))
            .expect("block");
        let first = 20000 + 1000 * i as u16;
        servers.insert(
            id.clone(),
            ServerInfo {
                address: format!("10.0.0.{}", i + 1),
                host_ports: (first, first + WIDTH),
            },
        );
        committed.insert(id, s.committed.iter().map(|o| first + o).collect());
    }
    World {
        grid,
        servers,
        committed,
    }
}

fn plan_of(stack: &StackFile, current: &StackState) -> Plan {
    build::plan(&PlanInputs {
        stack,
        current,
        global_env: &BTreeMap::new(),
    })
}

fn place(w: &World, plan: &Plan, stack: &StackFile) -> Result<Placed, DeployError> {
    deploy::place(&Inputs {
        plan,
        stack,
        grid: &w.grid,
        servers: &w.servers,
        committed: &w.committed,
    })
}

/// No port twice on a server (counting what was committed before), every port in range,
/// every container placed on a server with its tags.
fn check_ports_and_tags(w: &World, placed: &Placed, stack: &StackFile) -> Result<(), String> {
    let mut seen: BTreeMap<&ServerId, BTreeSet<u16>> =
        w.committed.iter().map(|(s, p)| (s, p.clone())).collect();
    for d in &placed.desired {
        let p = d
            .placement
            .as_ref()
            .ok_or(format!("{} unplaced", d.slice))?;
        let info = &w.servers[&p.server];
        let keys: Vec<u16> = p.host_ports.keys().copied().collect();
        if keys != d.ports {
            return Err(format!(
                "{}: host ports for {keys:?}, ports {:?}",
                d.slice, d.ports
            ));
        }
        for hp in p.host_ports.values() {
            if !(info.host_ports.0..=info.host_ports.1).contains(hp) {
                return Err(format!("{}: port {hp} outside the range", d.slice));
            }
            if !seen.entry(&p.server).or_default().insert(*hp) {
                return Err(format!(
                    "{}: port {hp} on {} taken twice",
                    d.slice, p.server
                ));
            }
        }
        let block = &placed.grid.blocks()[&p.server];
        let node = stack.node(&d.node).ok_or("unknown node")?;
        if !block.has_tags(&node.tags) {
            return Err(format!(
                "{} on {} lacks tags {:?}",
                d.slice, p.server, node.tags
            ));
        }
        if placed.grid.block_of(&d.slice) != Some(&p.server) {
            return Err(format!("{}: grid and placement disagree", d.slice));
        }
    }
    placed.grid.check()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    #[test]
    fn no_host_port_collides_and_tags_hold(
        servers in prop::collection::vec(server(), 1..5),
        nodes in prop::collection::vec(node(), 1..5),
    ) {
        let w = world(&servers);
        let stack = stack_file(&nodes);
        let plan = plan_of(&stack, &StackState::default());
        match place(&w, &plan, &stack) {
            Ok(placed) => {
                prop_assert_eq!(placed.desired.len(), plan.desired.len());
                check_ports_and_tags(&w, &placed, &stack).map_err(TestCaseError::fail)?;
            }
            Err(DeployError::NoServerWithTags { node, .. }) => {
                let n = stack.node(&node).expect("node");
                prop_assert!(!w.grid.blocks().values().any(|b| b.has_tags(&n.tags)));
            }
            Err(DeployError::TooLarge { node, .. }) => {
                let n = stack.node(&node).expect("node");
                prop_assert!(!w.grid.blocks().values().any(|b| b.has_tags(&n.tags) && b.size >= n.memory));
            }
            Err(DeployError::NoRoom { .. } | DeployError::NoHostPort { .. }) => {}
            Err(e) => prop_assert!(false, "unexpected error: {e}"),
        }
    }

    #[test]
    fn replicas_spread_when_every_eligible_server_has_room_for_the_whole_stack(
        n_servers in 1usize..5,
        masks in prop::collection::vec(0u8..4, 5),
        nodes in prop::collection::vec(node(), 1..4),
    ) {
        let servers: Vec<Server> = (0..n_servers)
            .map(|i| Server { mib: 4096, tags: masks[i], committed: Vec::new() })
            .collect();
        let w = world(&servers);
        let stack = stack_file(&nodes);
        let plan = plan_of(&stack, &StackState::default());
        let Ok(placed) = place(&w, &plan, &stack) else {
            // Only a missing tag can fail here: every server holds the whole stack.
            prop_assert!(nodes.iter().any(|n| !w.grid.blocks().values().any(|b| b.has_tags(&tags(n.tags)))));
            return Ok(());
        };
        for (i, n) in nodes.iter().enumerate() {
            let eligible = w.grid.blocks().values().filter(|b| b.has_tags(&tags(n.tags))).count();
            let on: Vec<&ServerId> = placed
                .desired
                .iter()
                .filter(|d| d.node == format!("n{i}"))
                .map(|d| &d.placement.as_ref().expect("placed").server)
                .collect();
            let distinct: BTreeSet<&&ServerId> = on.iter().collect();
            prop_assert_eq!(
                distinct.len(),
                on.len().min(eligible),
                "node n{} on {:?} with {} eligible servers", i, on, eligible
            );
        }
    }

    #[test]
    fn an_unchanged_or_rescaled_stack_keeps_its_running_placements(
        servers in prop::collection::vec(server(), 1..5),
        nodes in prop::collection::vec(node(), 1..5),
        rescale in prop::collection::vec(1u32..=4, 5),
    ) {
        let w = world(&servers);
        let stack = stack_file(&nodes);
        let plan = plan_of(&stack, &StackState::default());
        let Ok(first) = place(&w, &plan, &stack) else { return Ok(()) };
        let state = first.state_after(&plan, &stack, &BTreeMap::new());
        let mut committed = w.committed.clone();
        for (s, p) in deploy::committed_ports([&state]) {
            committed.entry(s).or_default().extend(p);
        }
        let w2 = World { grid: first.grid.clone(), servers: w.servers.clone(), committed };

        // Unchanged: the very same placements, nothing placed.
        let again = plan_of(&stack, &state);
        let second = place(&w2, &again, &stack).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert!(second.added.is_empty());
        prop_assert_eq!(second.grid.version(), first.grid.version());
        prop_assert_eq!(&second.desired, &first.desired);

        // Rescaled: the replicas that stay keep their placement.
        let mut scaled = stack.clone();
        for (n, s) in scaled.nodes.iter_mut().zip(&rescale) {
            if n.kind != Kind::Service {
                n.scale = *s;
            }
        }
        let plan3 = plan_of(&scaled, &state);
        if let Ok(third) = place(&w2, &plan3, &scaled) {
            for d in &third.desired {
                if let Some(before) = first.desired.iter().find(|b| b.slice == d.slice) {
                    prop_assert_eq!(&d.placement, &before.placement, "{} moved", d.slice);
                }
            }
            check_ports_and_tags(&w, &third, &scaled).map_err(TestCaseError::fail)?;
        }
    }
}
