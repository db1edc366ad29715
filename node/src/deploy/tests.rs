use std::collections::{BTreeMap, BTreeSet};

use super::*;
use crate::build::{self, Inputs as PlanInputs};
use crate::grid::{Grid, GridOptions};
use crate::spec::{self, Facts, StackFile};
use crate::types::{Kind, StackState};

struct Digests;
impl Facts for Digests {
    fn build_digest(&self, dir: &str) -> Result<String, String> {
        Ok(format!("{:0<64}", dir.len()))
    }
    fn max_server_memory(&self) -> Option<u64> {
        None
    }
}

const EXAMPLE: &str = include_str!("../../../examples/guestbook/quarry.yml");

fn stack(yml: &str) -> StackFile {
    match spec::parse("quarry.yml", yml, "guestbook", &Digests) {
        Ok((s, _)) => s,
        Err(d) => panic!("{d}"),
    }
}

/// A cluster of servers `s1..` with these memories (MiB) and tags, at 10.0.0.N.
struct Cluster {
    grid: Grid,
    servers: BTreeMap<ServerId, ServerInfo>,
}

fn cluster(spec: &[(u64, &[&str])]) -> Cluster {
    let mut grid = Grid::new(GridOptions {
        max: spec.len(),
        ..GridOptions::default()
    });
    let mut servers = BTreeMap::new();
    for (i, (mib, tags)) in spec.iter().enumerate() {
        let id = ServerId(format!("s{}", i + 1));
        let tags: Vec<String> = tags.iter().map(|t| (*t).to_owned()).collect();
        grid.add_block(id.clone(), mib << 20, &tags).expect("block");
        servers.insert(
            id,
            ServerInfo {
                address: format!("10.0.0.{}", i + 1),
                host_ports: DEFAULT_HOST_PORTS,
            },
        );
    }
    Cluster { grid, servers }
}

fn plan_of(stack: &StackFile, current: &StackState) -> Plan {
    build::plan(&PlanInputs {
        stack,
        current,
        global_env: &BTreeMap::new(),
    })
}

fn place_in(
    c: &Cluster,
    plan: &Plan,
    stack: &StackFile,
    committed: &BTreeMap<ServerId, BTreeSet<u16>>,
) -> Result<Placed, DeployError> {
    place(&Inputs {
        plan,
        stack,
        grid: &c.grid,
        servers: &c.servers,
        committed,
    })
}

fn placement(p: &Placed, node: &str, replica: u32) -> Placement {
    p.desired
        .iter()
        .find(|c| c.node == node && c.replica == replica)
        .and_then(|c| c.placement.clone())
        .unwrap_or_else(|| panic!("{node}.{replica} placed"))
}

#[test]
fn the_example_is_placed_with_service_addresses_in_every_other_env() {
    let c = cluster(&[(1024, &[]), (1024, &[]), (1024, &[])]);
    let s = stack(EXAMPLE);
    let plan = plan_of(&s, &StackState::default());
    let placed = place_in(&c, &plan, &s, &BTreeMap::new()).expect("placed");
    assert_eq!(placed.desired.len(), 4);
    assert_eq!(placed.added.len(), 4);
    assert_eq!(placed.base_version, c.grid.version());
    assert_eq!(placed.grid.version(), c.grid.version() + 4);
    let (w0, w1) = (placement(&placed, "web", 0), placement(&placed, "web", 1));
    assert_ne!(w0.server, w1.server, "web replicas spread");
    let kv = placement(&placed, "kv", 0);
    let kv_port = kv.host_ports[&7000];
    assert!((20000..=29999).contains(&kv_port));
    assert_eq!(kv.ports, kv.host_ports, "others dial the published port");
    assert_eq!(kv.host, c.servers[&kv.server].address);
    for d in placed.desired.iter().filter(|d| d.kind != Kind::Service) {
        assert_eq!(d.env["KV_HOST"], kv.host, "{}", d.container_name());
        assert_eq!(d.env["KV_PORT"], kv_port.to_string());
        assert_eq!(d.env["KV_PORT_7000_TCP_ADDR"], kv.host);
        assert_eq!(d.env["KV_PORT_7000_TCP_PORT"], kv_port.to_string());
        assert!(!d.env.values().any(|v| v.contains("${")), "{:?}", d.env);
    }
    // The service's own env gets no addresses.
    let kv_env = &placed
        .desired
        .iter()
        .find(|d| d.node == "kv")
        .expect("kv")
        .env;
    assert!(!kv_env.contains_key("KV_HOST"));
    // Each server's containers.
    let on_kv: Vec<_> = placed
        .for_server(&kv.server)
        .map(|d| d.node.clone())
        .collect();
    assert!(on_kv.contains(&"kv".to_owned()));
    let total: usize = c.servers.keys().map(|s| placed.for_server(s).count()).sum();
    assert_eq!(total, 4);
}

#[test]
fn host_ports_never_collide_with_ports_committed_on_the_server() {
    // One server whose range has exactly 5 free ports left.
    let mut c = cluster(&[(1024, &[])]);
    c.servers
        .get_mut(&ServerId("s1".into()))
        .expect("s1")
        .host_ports = (21000, 21009);
    let committed = BTreeMap::from([(
        ServerId("s1".into()),
        BTreeSet::from([21000, 21002, 21004, 21006, 21008]),
    )]);
    let yml = EXAMPLE.replace("scale: 2", "scale: 4");
    let s = stack(&yml);
    let placed =
        place_in(&c, &plan_of(&s, &StackState::default()), &s, &committed).expect("placed");
    let ports: BTreeSet<u16> = placed
        .desired
        .iter()
        .flat_map(|d| {
            d.placement
                .as_ref()
                .expect("placed")
                .host_ports
                .values()
                .copied()
        })
        .collect();
    assert_eq!(ports, BTreeSet::from([21001, 21003, 21005, 21007, 21009]));

    // One more port wanted than the range has: a clear error.
    let yml = EXAMPLE.replace("scale: 2", "scale: 5");
    let s = stack(&yml);
    let e =
        place_in(&c, &plan_of(&s, &StackState::default()), &s, &committed).expect_err("no port");
    assert!(
        e.to_string()
            .starts_with("server s1 has no free host port left in 21000-21009"),
        "{e}"
    );
}

#[test]
fn an_unchanged_stack_keeps_every_placement_and_touches_no_slice() {
    let c = cluster(&[(1024, &[]), (1024, &[]), (1024, &[])]);
    let s = stack(EXAMPLE);
    let plan = plan_of(&s, &StackState::default());
    let first = place_in(&c, &plan, &s, &BTreeMap::new()).expect("first");
    let state = first.state_after(&plan, &s, &BTreeMap::new());
    let again = plan_of(&s, &state);
    assert!(again.instructions.is_empty(), "{:?}", again.instructions);
    let committed = committed_ports([&state]);
    let c2 = Cluster {
        grid: first.grid.clone(),
        servers: c.servers.clone(),
    };
    let second = place_in(&c2, &again, &s, &committed).expect("second");
    assert!(second.added.is_empty() && second.events.is_empty());
    assert_eq!(second.grid.version(), first.grid.version());
    assert_eq!(second.desired, first.desired);
}

#[test]
fn a_scale_up_keeps_the_running_replicas_where_they_are() {
    let c = cluster(&[(1024, &[]), (1024, &[]), (1024, &[])]);
    let s = stack(EXAMPLE);
    let plan = plan_of(&s, &StackState::default());
    let first = place_in(&c, &plan, &s, &BTreeMap::new()).expect("first");
    let state = first.state_after(&plan, &s, &BTreeMap::new());
    let s3 = stack(&EXAMPLE.replace("scale: 2", "scale: 3"));
    let up = plan_of(&s3, &state);
    let c2 = Cluster {
        grid: first.grid.clone(),
        servers: c.servers.clone(),
    };
    let second = place_in(&c2, &up, &s3, &committed_ports([&state])).expect("second");
    assert_eq!(second.added.len(), 1);
    for r in 0..2 {
        assert_eq!(placement(&second, "web", r), placement(&first, "web", r));
    }
    let servers: BTreeSet<ServerId> = (0..3)
        .map(|r| placement(&second, "web", r).server)
        .collect();
    assert_eq!(servers.len(), 3, "three replicas on three servers");
}

#[test]
fn a_deploy_on_two_servers_spreads_the_new_replicas_beside_the_old_ones() {
    let c = cluster(&[(1024, &[]), (1024, &[])]);
    let s = stack(EXAMPLE);
    let plan = plan_of(&s, &StackState::default());
    let first = place_in(&c, &plan, &s, &BTreeMap::new()).expect("first");
    let state = first.state_after(&plan, &s, &BTreeMap::new());
    // A new web image: web is DEPLOYed as revision 2 while revision 1 still runs.
    let changed = EXAMPLE.replace("build: web\n    command: [", "build: web2\n    command: [");
    let s2 = stack(&changed);
    let deploy = plan_of(&s2, &state);
    let c2 = Cluster {
        grid: first.grid.clone(),
        servers: c.servers.clone(),
    };
    let second = place_in(&c2, &deploy, &s2, &committed_ports([&state])).expect("second");
    let new: Vec<&DesiredContainer> = second.desired.iter().filter(|d| d.node == "web").collect();
    assert!(new.iter().all(|d| d.revision == 2));
    let servers: BTreeSet<&ServerId> = new
        .iter()
        .map(|d| &d.placement.as_ref().expect("placed").server)
        .collect();
    assert_eq!(servers.len(), 2, "new replicas on both servers");
    // Their ports differ from the old replicas' (which keep running until the switch).
    let old: BTreeSet<u16> = committed_ports([&state]).into_values().flatten().collect();
    for d in &new {
        let hp = d.placement.as_ref().expect("placed").host_ports[&8080];
        assert!(!old.contains(&hp), "{hp} is still bound by revision 1");
    }
    assert_eq!(
        retired_slices(&deploy),
        vec![
            SliceId("guestbook.web.r1.0".into()),
            SliceId("guestbook.web.r1.1".into())
        ]
    );
}

#[test]
fn a_tag_no_server_has_is_refused_naming_the_servers_and_their_tags() {
    let c = cluster(&[(1024, &["router"]), (1024, &["ssd"])]);
    let yml = EXAMPLE.replace("    scale: 2\n", "    scale: 2\n    tags: [gpu]\n");
    let s = stack(&yml);
    let e = place_in(
        &c,
        &plan_of(&s, &StackState::default()),
        &s,
        &BTreeMap::new(),
    )
    .expect_err("no gpu");
    assert_eq!(
        e.to_string(),
        "node web runs only on servers tagged [gpu], and no server carries it: give a server \
         those tags (tags in its quarryd.toml) or change `tags:` in quarry.yml (servers: s1 \
         [router], s2 [ssd])"
    );
    // With a server that carries it, the web replicas go there only.
    let c = cluster(&[(1024, &["router"]), (1024, &["gpu", "ssd"])]);
    let placed = place_in(
        &c,
        &plan_of(&s, &StackState::default()),
        &s,
        &BTreeMap::new(),
    )
    .expect("placed");
    for r in 0..2 {
        assert_eq!(placement(&placed, "web", r).server, ServerId("s2".into()));
    }
}

#[test]
fn memory_larger_than_any_server_is_refused_before_anything_is_placed() {
    let c = cluster(&[(512, &[]), (1024, &[])]);
    let yml = EXAMPLE.replace("    memory: 16M\n", "    memory: 2G\n");
    let s = stack(&yml);
    let e = place_in(
        &c,
        &plan_of(&s, &StackState::default()),
        &s,
        &BTreeMap::new(),
    )
    .expect_err("too large");
    assert_eq!(
        e.to_string(),
        "node ticker asks for 2G per replica, more than any server has (largest: s2 with 1G): \
         lower `memory:` in quarry.yml or add a larger server"
    );
    assert_eq!(c.grid.slices().len(), 0);
}

#[test]
fn a_full_grid_is_no_room_with_each_servers_free_memory() {
    let c = cluster(&[(64, &[]), (64, &[])]);
    let s = stack(&EXAMPLE.replace("scale: 2", "scale: 4"));
    let e = place_in(
        &c,
        &plan_of(&s, &StackState::default()),
        &s,
        &BTreeMap::new(),
    )
    .expect_err("full");
    assert!(
        matches!(&e, DeployError::NoRoom { node, .. } if node == "web"),
        "{e}"
    );
    assert!(e.to_string().contains("s1 0B, s2 0B"), "{e}");
}

#[test]
fn a_server_without_an_address_is_an_error_not_a_placement() {
    let mut c = cluster(&[(1024, &[])]);
    c.servers.clear();
    let s = stack(EXAMPLE);
    let e = place_in(
        &c,
        &plan_of(&s, &StackState::default()),
        &s,
        &BTreeMap::new(),
    )
    .expect_err("unknown");
    assert_eq!(e, DeployError::UnknownServer(ServerId("s1".into())));
}
