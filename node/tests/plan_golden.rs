//! Golden plans: each case deploys the example stack, changes one thing, and compares the plan
//! of the change (as `quarry plan` prints it) with `tests/golden/CASE.plan`.
//!
//! Regenerate after an intended change of output:
//!
//! ```text
//! UPDATE_GOLDEN=1 cargo test -p quarry-node --test plan_golden
//! ```
//!
//! and review the diff. Each case also asserts the rule it is about, so a regenerated golden
//! cannot hide a broken rule.

use std::collections::BTreeMap;
use std::path::PathBuf;

use quarry_node::build::{self, Inputs, Instruction, Plan};
use quarry_node::spec::{self, Facts, StackFile};
use quarry_node::types::{Placement, ServerId, StackState};

/// Build directories of the example and their digests, as a push would present them.
#[derive(Clone)]
struct Tree(BTreeMap<&'static str, String>);

impl Facts for Tree {
    fn build_digest(&self, dir: &str) -> Result<String, String> {
        self.0
            .get(dir)
            .cloned()
            .ok_or_else(|| "does not exist".to_owned())
    }
    fn max_server_memory(&self) -> Option<u64> {
        Some(8 << 30)
    }
}

fn example_yml() -> String {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples/guestbook/quarry.yml");
    std::fs::read_to_string(p).expect("the example stack exists")
}

fn tree() -> Tree {
    Tree(BTreeMap::from([
        ("kv", "a1".repeat(32)),
        ("web", "b2".repeat(32)),
    ]))
}

fn parse(yml: &str, tree: &Tree) -> StackFile {
    match spec::parse("quarry.yml", yml, "guestbook", tree) {
        Ok((s, _)) => s,
        Err(d) => panic!("the case's quarry.yml is invalid:\n{d}"),
    }
}

fn plan(stack: &StackFile, current: &StackState, global: &BTreeMap<String, String>) -> Plan {
    build::plan(&Inputs {
        stack,
        current,
        global_env: global,
    })
}

/// Apply a plan as a leader would, placing new replicas round-robin over three servers with
/// host ports counted from 20000.
fn apply(plan: &Plan, stack: &StackFile, prev_ports: u16) -> StackState {
    let mut n = prev_ports;
    build::state_after(plan, stack, &BTreeMap::new(), |c| {
        let server = (n as usize) % 3 + 1;
        let ports = c
            .ports
            .iter()
            .map(|p| {
                n += 1;
                (*p, 20000 + n)
            })
            .collect::<BTreeMap<_, _>>();
        if c.ports.is_empty() {
            n += 1;
        }
        Placement {
            server: ServerId(format!("s{server}")),
            host: format!("10.0.0.{server}"),
            ports: ports.clone(),
            host_ports: ports,
        }
    })
}

fn first_deploy() -> (StackFile, StackState) {
    let stack = parse(&example_yml(), &tree());
    let p = plan(&stack, &StackState::default(), &BTreeMap::new());
    let state = apply(&p, &stack, 0);
    (stack, state)
}

fn check_golden(case: &str, plan: &Plan) {
    // What `quarry plan` prints (env values redacted), then the plan as `--json --show-env`
    // prints it (the values, so a golden still shows where each comes from).
    let mut got = build::render(plan);
    got.push_str("\n--- as JSON (--show-env) ---\n");
    got.push_str(&serde_json::to_string_pretty(&plan.instructions).expect("plans serialize"));
    got.push('\n');
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(format!("{case}.plan"));
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, &got).expect("write golden");
        return;
    }
    let want = std::fs::read_to_string(&path).unwrap_or_else(|_| {
        panic!(
            "no golden file {}: run UPDATE_GOLDEN=1 cargo test -p quarry-node --test plan_golden",
            path.display()
        )
    });
    if got != want {
        let first = got
            .lines()
            .zip(want.lines())
            .position(|(a, b)| a != b)
            .unwrap_or(got.lines().count().min(want.lines().count()));
        panic!(
            "plan for case {case} differs from {} at line {}:\n  got:  {:?}\n  want: {:?}\n\nwhole plan:\n{got}\n(if the change is intended: UPDATE_GOLDEN=1 cargo test -p quarry-node --test plan_golden)",
            path.display(),
            first + 1,
            got.lines().nth(first),
            want.lines().nth(first)
        );
    }
}

fn ops(plan: &Plan) -> Vec<String> {
    plan.instructions
        .iter()
        .map(|i| match i {
            Instruction::Ensure { node, .. } => format!("ENSURE {node}"),
            Instruction::Deploy { node, .. } => format!("DEPLOY {node}"),
            Instruction::Scale { node, .. } => format!("SCALE {node}"),
            Instruction::Route { domain, action, .. } => format!("ROUTE {action:?} {domain}"),
            Instruction::Kill { node, .. } => format!("KILL {node}"),
        })
        .collect()
}

#[test]
fn first_deploy_ensures_services_first_then_deploys_and_routes() {
    let stack = parse(&example_yml(), &tree());
    let p = plan(&stack, &StackState::default(), &BTreeMap::new());
    assert_eq!(
        ops(&p),
        [
            "ENSURE kv",
            "DEPLOY web",
            "DEPLOY ticker",
            "ROUTE Add guestbook.test"
        ]
    );
    // Before placement, service addresses are symbolic.
    let web = p
        .desired
        .iter()
        .find(|c| c.node == "web")
        .expect("web desired");
    assert_eq!(web.env["KV_HOST"], "${kv.host}");
    assert_eq!(web.env["KV_PORT_7000_TCP_PORT"], "${kv.port.7000}");
    assert_eq!(p.desired.len(), 4);
    check_golden("first_deploy", &p);
}

#[test]
fn a_second_push_of_the_same_tree_changes_nothing() {
    let (stack, state) = first_deploy();
    let p = plan(&stack, &state, &BTreeMap::new());
    assert!(p.instructions.is_empty(), "{}", build::render(&p));
    assert_eq!(p.unchanged.len(), 3);
    // Kept containers carry their placement, so their service addresses resolve.
    let mut desired = p.desired.clone();
    build::resolve_env(&mut desired).expect("every service is placed");
    let web = desired
        .iter()
        .find(|c| c.node == "web")
        .expect("web desired");
    let kv = state.nodes["kv"].replicas[0].placement.clone();
    assert_eq!(web.env["KV_HOST"], kv.host);
    assert_eq!(web.env["KV_PORT"], kv.ports[&7000].to_string());
}

#[test]
fn redeploy_with_a_changed_web_image_deploys_web_and_the_worker_sharing_it() {
    let (_, state) = first_deploy();
    let mut t = tree();
    t.0.insert("web", "c3".repeat(32));
    let stack = parse(&example_yml(), &t);
    let p = plan(&stack, &state, &BTreeMap::new());
    assert_eq!(ops(&p), ["DEPLOY web", "DEPLOY ticker"]);
    match &p.instructions[0] {
        Instruction::Deploy { from, to, stop, .. } => {
            assert_eq!((*from, *to), (Some(1), 2));
            assert_eq!(
                stop.len(),
                2,
                "both old replicas stop once the new are healthy"
            );
        }
        other => panic!("expected DEPLOY, got {other:?}"),
    }
    check_golden("web_image_changed", &p);
}

#[test]
fn a_scale_change_alone_is_a_scale_not_a_deploy() {
    let (_, state) = first_deploy();
    let yml = example_yml().replace("scale: 2", "scale: 4");
    let stack = parse(&yml, &tree());
    let p = plan(&stack, &state, &BTreeMap::new());
    assert_eq!(ops(&p), ["SCALE web"]);
    match &p.instructions[0] {
        Instruction::Scale {
            from,
            to,
            add,
            remove,
            ..
        } => {
            assert_eq!((*from, *to), (2, 4));
            assert_eq!(add.iter().map(|c| c.replica).collect::<Vec<_>>(), [2, 3]);
            assert!(remove.is_empty());
        }
        other => panic!("expected SCALE, got {other:?}"),
    }
    check_golden("scale_change", &p);
    // And back down: the highest replicas go.
    let state4 = apply(&p, &stack, 100);
    let down = plan(
        &parse(&yml.replace("scale: 4", "scale: 1"), &tree()),
        &state4,
        &BTreeMap::new(),
    );
    match &down.instructions[..] {
        [Instruction::Scale { remove, .. }] => {
            assert_eq!(remove.len(), 3);
            assert!(
                remove.iter().all(|s| !s.0.ends_with(".0")),
                "replica 0 stays: {remove:?}"
            );
        }
        other => panic!("expected one SCALE down, got {other:?}"),
    }
}

#[test]
fn a_node_removed_from_the_file_is_killed() {
    let (_, state) = first_deploy();
    let yml = example_yml();
    let cut = yml.find("  ticker:").expect("the example has a ticker");
    let stack = parse(&yml[..cut], &tree());
    let p = plan(&stack, &state, &BTreeMap::new());
    assert_eq!(ops(&p), ["KILL ticker"]);
    check_golden("node_removed", &p);
}

#[test]
fn a_node_added_is_deployed_and_the_others_stay() {
    let (_, state) = first_deploy();
    let yml = format!(
        "{}  admin:\n    kind: web\n    image: admin:1\n    ports: [9000]\n    domains: [admin.guestbook.test]\n",
        example_yml()
    );
    let stack = parse(&yml, &tree());
    let p = plan(&stack, &state, &BTreeMap::new());
    assert_eq!(ops(&p), ["DEPLOY admin", "ROUTE Add admin.guestbook.test"]);
    assert_eq!(p.unchanged.len(), 3);
    check_golden("node_added", &p);
}

#[test]
fn a_push_that_changes_only_web_leaves_the_service_alone() {
    let (_, state) = first_deploy();
    let yml = example_yml().replace("TICK_EVERY: \"5\"", "TICK_EVERY: \"9\"");
    let mut t = tree();
    t.0.insert("web", "d4".repeat(32));
    let stack = parse(&yml, &t);
    let p = plan(&stack, &state, &BTreeMap::new());
    assert!(
        !ops(&p).iter().any(|o| o.contains("kv")),
        "the service must not be touched: {:?}",
        ops(&p)
    );
    assert!(p.unchanged.iter().any(|(n, r)| n == "kv" && *r == 1));
    check_golden("service_unchanged_on_push", &p);
}

#[test]
fn a_changed_service_is_replaced_and_its_consumers_redeploy_for_the_new_address() {
    let (_, state) = first_deploy();
    let yml = example_yml().replace("memory: 32M\n  web:", "memory: 64M\n  web:");
    let stack = parse(&yml, &tree());
    let p = plan(&stack, &state, &BTreeMap::new());
    assert_eq!(ops(&p), ["ENSURE kv", "DEPLOY web", "DEPLOY ticker"]);
    match &p.instructions[1] {
        Instruction::Deploy { reasons, .. } => {
            assert_eq!(reasons, &["the address of kv changes".to_owned()])
        }
        other => panic!("expected DEPLOY, got {other:?}"),
    }
    check_golden("service_changed", &p);
}

#[test]
fn an_env_change_redeploys_web_and_worker_but_not_the_service() {
    let (_, state) = first_deploy();
    let yml = example_yml().replace("GREETING: hello", "GREETING: welcome");
    let stack = parse(&yml, &tree());
    let p = plan(&stack, &state, &BTreeMap::new());
    assert_eq!(ops(&p), ["DEPLOY web", "DEPLOY ticker"]);
    check_golden("env_change", &p);
    // A global env change does the same.
    let (stack, state) = first_deploy();
    let global = BTreeMap::from([("LOG_LEVEL".to_owned(), "debug".to_owned())]);
    let p = plan(&stack, &state, &global);
    assert_eq!(ops(&p), ["DEPLOY web", "DEPLOY ticker"]);
}

#[test]
fn the_node_env_wins_over_injected_addresses_and_stack_env() {
    let yml = example_yml().replace(
        "      TICK_EVERY: \"5\"",
        "      TICK_EVERY: \"5\"\n      KV_HOST: elsewhere\n      GREETING: hi",
    );
    let stack = parse(&yml, &tree());
    let p = plan(
        &stack,
        &StackState::default(),
        &BTreeMap::from([("GREETING".to_owned(), "global".to_owned())]),
    );
    let ticker = p
        .desired
        .iter()
        .find(|c| c.node == "ticker")
        .expect("ticker desired");
    assert_eq!(ticker.env["KV_HOST"], "elsewhere");
    assert_eq!(ticker.env["GREETING"], "hi");
    let web = p
        .desired
        .iter()
        .find(|c| c.node == "web")
        .expect("web desired");
    assert_eq!(web.env["GREETING"], "hello", "stack env beats global env");
    // And the reader warns about the override.
    let (_, warnings) = spec::parse("quarry.yml", &yml, "guestbook", &tree()).expect("valid");
    assert!(
        warnings
            .iter()
            .any(|w| w.message.contains("KV_HOST") && w.message.contains("overrides")),
        "{warnings:?}"
    );
}
