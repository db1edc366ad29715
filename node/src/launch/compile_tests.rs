use std::collections::{BTreeMap, BTreeSet};

use super::*;
use crate::cluster::state_tests::member;
use crate::cluster::{Command, GridOp, Outcome, Refusal};
use crate::spec::{self, Facts};
use crate::types::Kind;

struct Digests(&'static str);
impl Facts for Digests {
    fn build_digest(&self, dir: &str) -> Result<String, String> {
        Ok(format!("{}{:0<60}", self.0, dir.len()))
    }
    fn max_server_memory(&self) -> Option<u64> {
        None
    }
}

pub(crate) const EXAMPLE: &str = include_str!("../../../examples/guestbook/quarry.yml");

pub(crate) fn stack(yml: &str, digest: &'static str) -> StackFile {
    match spec::parse("quarry.yml", yml, "guestbook", &Digests(digest)) {
        Ok((s, _)) => s,
        Err(d) => panic!("{d}"),
    }
}

pub(crate) fn source(n: u8) -> SourceHash {
    SourceHash::of(&[n])
}

/// Three servers h1..h3 of 1 GiB, each with its grid block.
pub(crate) fn cluster() -> ClusterState {
    let mut s = ClusterState::default();
    s.apply(
        1,
        Command::Found {
            member: member("h1", "10.0.0.1"),
            env: BTreeMap::new(),
        },
    )
    .expect("found");
    for (n, ip) in [("h2", "10.0.0.2"), ("h3", "10.0.0.3")] {
        s.apply(
            2,
            Command::AddServer {
                member: member(n, ip),
            },
        )
        .expect("add");
    }
    let ops = crate::cluster::grid_ops_for(&s.servers, &s.grid);
    let version = s.grid.version();
    s.apply(3, Command::Grid { version, ops }).expect("blocks");
    s
}

pub(crate) fn deploy(s: &mut ClusterState, file: &StackFile, src: &SourceHash) -> Compiled {
    let c = compile(&PlanInputs::of(s, &file.name), file, src).expect("compiles");
    match s.apply(9, Command::Deploy(Box::new(c.change.clone()))) {
        Ok(Outcome::StackChanged { .. }) => c,
        other => panic!("deploy refused: {other:?}"),
    }
}

fn servers_of(s: &ClusterState, node: &str) -> Vec<String> {
    s.stacks["guestbook"]
        .desired
        .iter()
        .filter(|d| d.node == node)
        .map(|d| d.placement.as_ref().expect("placed").server.0.clone())
        .collect()
}

#[test]
fn a_first_deploy_places_everything_spreads_web_and_commits_with_the_grid() {
    let mut s = cluster();
    let file = stack(EXAMPLE, "a");
    let c = deploy(&mut s, &file, &source(1));
    let rec = &s.stacks["guestbook"];
    assert_eq!(rec.revision, 1);
    assert_eq!(rec.desired.len(), 4, "kv, 2 web, ticker");
    assert!(rec.retiring.is_empty());
    let web = servers_of(&s, "web");
    assert_eq!(web.len(), 2);
    assert_ne!(web[0], web[1], "web replicas on different servers");
    for d in &rec.desired {
        let p = d.placement.as_ref().expect("placed");
        assert_eq!(s.grid.block_of(&d.slice), Some(&p.server));
        assert_eq!(p.host, format!("10.0.0.{}", &p.server.0[1..]));
        if d.kind != Kind::Service {
            let kv = &rec.desired.iter().find(|k| k.node == "kv").expect("kv");
            let kvp = kv.placement.as_ref().expect("kv placed");
            assert_eq!(d.env["KV_HOST"], kvp.host);
            assert_eq!(d.env["KV_PORT"], kvp.host_ports[&7000].to_string());
        }
    }
    assert_eq!(s.routes["guestbook.test"].node, "web");
    assert_eq!(c.new_placements().len(), 4);
    // Compiled again unchanged: nothing to place, free or retire.
    let again = compile(&PlanInputs::of(&s, "guestbook"), &file, &source(1)).expect("again");
    assert!(again.change.place.is_empty() && again.change.remove.is_empty());
    assert!(again.change.retiring.is_empty());
    assert_eq!(again.change.desired, s.stacks["guestbook"].desired);
}

#[test]
fn a_changed_web_node_keeps_the_old_replicas_until_they_are_retired() {
    let mut s = cluster();
    deploy(&mut s, &stack(EXAMPLE, "a"), &source(1));
    let old: BTreeSet<SliceId> = s.stacks["guestbook"]
        .desired
        .iter()
        .filter(|d| d.node == "web")
        .map(|d| d.slice.clone())
        .collect();
    let changed = EXAMPLE.replace("GREETING: hello", "GREETING: bonjour");
    deploy(&mut s, &stack(&changed, "a"), &source(2));
    let rec = s.stacks["guestbook"].clone();
    assert_eq!(rec.revision, 2);
    let retiring: BTreeSet<SliceId> = rec.retiring.iter().cloned().collect();
    assert!(
        old.is_subset(&retiring),
        "old web retires: {retiring:?} {old:?}"
    );
    let webs = rec.desired.iter().filter(|d| d.node == "web").count();
    assert_eq!(webs, 4, "old and new web run side by side");
    // A stale retire is refused; the right one frees the slices.
    let version = s.grid.version();
    let slices: Vec<SliceId> = rec.retiring.clone();
    assert!(matches!(
        s.apply(
            10,
            Command::Retire {
                stack: "guestbook".into(),
                revision: 1,
                grid_version: version,
                slices: slices.clone()
            }
        ),
        Err(Refusal::StaleStack { .. })
    ));
    s.apply(
        11,
        Command::Retire {
            stack: "guestbook".into(),
            revision: 2,
            grid_version: version,
            slices,
        },
    )
    .expect("retire");
    let rec = &s.stacks["guestbook"];
    assert!(rec.retiring.is_empty());
    assert_eq!(rec.desired.iter().filter(|d| d.node == "web").count(), 2);
    for o in &old {
        assert_eq!(s.grid.block_of(o), None, "{o} left the grid");
    }
}

#[test]
fn a_scale_places_or_frees_at_once_and_keeps_the_other_replicas() {
    let mut s = cluster();
    let file = stack(EXAMPLE, "a");
    deploy(&mut s, &file, &source(1));
    let before = s.stacks["guestbook"].desired.clone();
    let three = rescale(&file, "web", 3).expect("scale");
    let c = compile(&PlanInputs::of(&s, "guestbook"), &three, &source(1)).expect("compile");
    assert_eq!(c.change.place.len(), 1);
    s.apply(12, Command::Scale(Box::new(c.change)))
        .expect("scale up");
    let web = servers_of(&s, "web");
    assert_eq!(
        web.iter().collect::<BTreeSet<_>>().len(),
        3,
        "three web replicas on three servers: {web:?}"
    );
    for d in &before {
        assert!(
            s.stacks["guestbook"].desired.contains(d),
            "{} kept as it was",
            d.container_name()
        );
    }
    let one = rescale(&file, "web", 1).expect("scale");
    let c = compile(&PlanInputs::of(&s, "guestbook"), &one, &source(1)).expect("compile");
    assert_eq!(c.change.remove.len(), 2);
    assert!(c.change.retiring.is_empty(), "a scale-down frees at once");
    s.apply(13, Command::Scale(Box::new(c.change)))
        .expect("scale down");
    assert_eq!(servers_of(&s, "web").len(), 1);
    // A scale cannot change the source.
    let c = compile(&PlanInputs::of(&s, "guestbook"), &one, &source(7)).expect("compile");
    assert!(matches!(
        s.apply(14, Command::Scale(Box::new(c.change))),
        Err(Refusal::Invalid(_))
    ));
}

#[test]
fn a_change_computed_on_an_old_stack_or_grid_is_refused_and_changes_nothing() {
    let mut s = cluster();
    let file = stack(EXAMPLE, "a");
    let first = compile(&PlanInputs::of(&s, "guestbook"), &file, &source(1)).expect("compile");
    let racing = first.change.clone();
    s.apply(9, Command::Deploy(Box::new(first.change)))
        .expect("first");
    let before = s.clone();
    assert!(matches!(
        s.apply(10, Command::Deploy(Box::new(racing.clone()))),
        Err(Refusal::StaleStack { .. })
    ));
    // Same stack revision, but the grid moved.
    let mut moved = cluster();
    let change = compile(&PlanInputs::of(&moved, "guestbook"), &file, &source(1))
        .expect("compile")
        .change;
    let version = moved.grid.version();
    moved
        .apply(
            11,
            Command::Grid {
                version,
                ops: vec![GridOp::DrainBlock {
                    server: ServerId("h3".into()),
                }],
            },
        )
        .expect("drain");
    let unchanged = moved.clone();
    assert!(matches!(
        moved.apply(12, Command::Deploy(Box::new(change))),
        Err(Refusal::StaleGrid { .. })
    ));
    assert_eq!(moved, unchanged);
    assert_eq!(s, before);
}

#[test]
fn a_domain_of_another_stack_and_unknown_stacks_are_refused() {
    let mut s = cluster();
    deploy(&mut s, &stack(EXAMPLE, "a"), &source(1));
    let other = stack(&EXAMPLE.replace("name: guestbook", "name: other"), "b");
    let e = compile(&PlanInputs::of(&s, "other"), &other, &source(2)).expect_err("taken");
    assert!(
        e.to_string().contains("already routed to stack guestbook"),
        "{e}"
    );
    assert_eq!(
        s.apply(
            3,
            Command::SetStackEnabled {
                stack: "nope".into(),
                enabled: false
            }
        ),
        Err(Refusal::UnknownStack("nope".into()))
    );
    s.apply(
        4,
        Command::SetStackEnabled {
            stack: "guestbook".into(),
            enabled: false,
        },
    )
    .expect("disable");
    assert!(s.stacks["guestbook"].disabled);
}

#[test]
fn a_domain_of_another_stack_in_another_case_is_refused_naming_both_stacks() {
    let mut s = cluster();
    deploy(&mut s, &stack(EXAMPLE, "a"), &source(1));
    let shouted = EXAMPLE
        .replace("name: guestbook", "name: other")
        .replace("[guestbook.test]", "[GuestBook.Test]");
    let other = stack(&shouted, "b");
    let e = compile(&PlanInputs::of(&s, "other"), &other, &source(2)).expect_err("taken");
    let e = e.to_string();
    assert!(
        e.contains("domain guestbook.test of stack other is already routed to stack guestbook"),
        "{e}"
    );

    // A route an older build committed in the case it was written is compared
    // case-insensitively too.
    let mut old = cluster();
    let mut c = compile(
        &PlanInputs::of(&old, "guestbook"),
        &stack(EXAMPLE, "a"),
        &source(1),
    )
    .expect("compiles");
    c.change.routes = BTreeMap::from([("GuestBook.test".to_owned(), "web".to_owned())]);
    old.apply(9, Command::Deploy(Box::new(c.change)))
        .expect("an older build's change");
    let e = compile(
        &PlanInputs::of(&old, "other"),
        &stack(&EXAMPLE.replace("name: guestbook", "name: other"), "b"),
        &source(2),
    )
    .expect_err("taken");
    assert!(
        e.to_string()
            .contains("of stack other is already routed to stack guestbook (as GuestBook.test)"),
        "{e}"
    );
    // The stack that holds it redeploys: its own route, whatever its case.
    compile(
        &PlanInputs::of(&old, "guestbook"),
        &stack(EXAMPLE, "a"),
        &source(3),
    )
    .expect("its own domain");
}

#[test]
fn rescale_refuses_services_zero_and_unknown_nodes() {
    let file = stack(EXAMPLE, "a");
    assert!(rescale(&file, "kv", 2).unwrap_err().contains("service"));
    assert!(rescale(&file, "web", 0)
        .unwrap_err()
        .contains("quarry disable"));
    assert!(rescale(&file, "nope", 2)
        .unwrap_err()
        .contains("kv, web, ticker"));
    assert_eq!(
        rescale(&file, "web", 5)
            .expect("ok")
            .node("web")
            .expect("web")
            .scale,
        5
    );
}

#[test]
fn a_rolled_back_deploy_leaves_the_stack_as_before_for_the_nodes_it_replaced() {
    let mut s = cluster();
    let file = stack(EXAMPLE, "a");
    deploy(&mut s, &file, &source(1));
    let before = s.stacks["guestbook"].clone();
    let grid_before = s.grid.clone();
    // A new web image (digest "b"), and a node the deploy adds.
    let changed = EXAMPLE.replace("GREETING: hello", "GREETING: bonjour").replace(
        "  ticker:",
        "  extra:\n    kind: worker\n    build: web\n    command: /bin/ticker\n    memory: 16M\n  ticker:",
    );
    deploy(&mut s, &stack(&changed, "b"), &source(2));
    let rec = s.stacks["guestbook"].clone();
    assert!(rec.previous.is_some() && !rec.retiring.is_empty());
    let rollback = |s: &mut ClusterState, revision: u64| {
        let grid_version = s.grid.version();
        s.apply(
            20,
            Command::Rollback {
                stack: "guestbook".into(),
                revision,
                grid_version,
                reason: "web.0 never got healthy".into(),
            },
        )
    };
    assert!(
        matches!(rollback(&mut s, 1), Err(Refusal::StaleStack { .. })),
        "a rollback computed on another revision is refused"
    );
    assert_eq!(rollback(&mut s, 2).map(|_| ()), Ok(()));
    let back = &s.stacks["guestbook"];
    assert_eq!(back.revision, 3, "a rollback is a change of its own");
    assert_eq!(back.failed.as_deref(), Some("web.0 never got healthy"));
    assert!(back.retiring.is_empty() && back.previous.is_none());
    assert_eq!(
        back.desired, before.desired,
        "the replaced replicas run on, alone"
    );
    assert_eq!(back.current, before.current);
    assert_eq!(back.file, before.file);
    assert_eq!(back.source, before.source);
    assert_eq!(s.routes["guestbook.test"].node, "web");
    for d in &rec.desired {
        let kept = before.desired.iter().any(|b| b.slice == d.slice);
        assert_eq!(
            s.grid.block_of(&d.slice).is_some(),
            kept,
            "{} on the grid only if it was before",
            d.container_name()
        );
    }
    assert_eq!(
        s.grid.blocks(),
        grid_before.blocks(),
        "the grid is as before"
    );
    // Nothing left to roll back; compiled again with the old file, nothing changes.
    assert!(matches!(rollback(&mut s, 3), Err(Refusal::Invalid(_))));
    let again = compile(&PlanInputs::of(&s, "guestbook"), &file, &source(1)).expect("again");
    assert!(again.change.place.is_empty() && again.change.retiring.is_empty());
}

#[test]
fn a_deploy_retired_through_cannot_be_rolled_back_and_the_next_deploy_clears_a_failure() {
    let mut s = cluster();
    deploy(&mut s, &stack(EXAMPLE, "a"), &source(1));
    deploy(&mut s, &stack(EXAMPLE, "b"), &source(2));
    let rec = s.stacks["guestbook"].clone();
    let grid_version = s.grid.version();
    s.apply(
        21,
        Command::Retire {
            stack: "guestbook".into(),
            revision: 2,
            grid_version,
            slices: rec.retiring.clone(),
        },
    )
    .expect("retire");
    assert!(s.stacks["guestbook"].previous.is_none());
    let grid_version = s.grid.version();
    assert!(matches!(
        s.apply(
            22,
            Command::Rollback {
                stack: "guestbook".into(),
                revision: 2,
                grid_version,
                reason: "late".into(),
            },
        ),
        Err(Refusal::Invalid(_))
    ));
    deploy(&mut s, &stack(EXAMPLE, "c"), &source(3));
    let grid_version = s.grid.version();
    s.apply(
        23,
        Command::Rollback {
            stack: "guestbook".into(),
            revision: 3,
            grid_version,
            reason: "bad".into(),
        },
    )
    .expect("rollback");
    assert_eq!(s.stacks["guestbook"].failed.as_deref(), Some("bad"));
    deploy(&mut s, &stack(EXAMPLE, "d"), &source(4));
    assert_eq!(s.stacks["guestbook"].failed, None, "a new deploy clears it");
}
