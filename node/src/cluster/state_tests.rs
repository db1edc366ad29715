use super::*;
use crate::rpc::join::ServerSettings;

/// A member of 1 GiB named `name` at `ip`, on the default ports.
pub(crate) fn member(name: &str, ip: &str) -> Member {
    Member {
        name: name.to_owned(),
        address: ip.parse().expect("ip"),
        rpc_port: 7701,
        gossip_port: 7702,
        api_port: 7700,
        hostname: name.to_owned(),
        memory: 1 << 30,
        tags: vec![],
        settings: ServerSettings::default(),
    }
}

fn founded() -> ClusterState {
    let mut s = ClusterState::default();
    let env = BTreeMap::from([("REGION".to_owned(), "lab".to_owned())]);
    assert_eq!(
        s.apply(
            1,
            Command::Found {
                member: member("h1", "10.0.0.1"),
                env
            }
        ),
        Ok(Outcome::Founded)
    );
    s
}

fn add(s: &mut ClusterState, name: &str, ip: &str) -> Result<Outcome, Refusal> {
    s.apply(
        2,
        Command::AddServer {
            member: member(name, ip),
        },
    )
}

#[test]
fn the_founder_is_raft_id_one_and_joiners_get_the_next_ids() {
    let mut s = founded();
    assert_eq!(s.servers["h1"].raft_id, 1);
    assert_eq!(s.env["REGION"], "lab");
    assert_eq!(
        add(&mut s, "h2", "10.0.0.2"),
        Ok(Outcome::ServerAdded {
            raft_id: 2,
            replaced: None
        })
    );
    assert_eq!(
        add(&mut s, "h3", "10.0.0.3"),
        Ok(Outcome::ServerAdded {
            raft_id: 3,
            replaced: None
        })
    );
    assert_eq!(
        s.apply(
            4,
            Command::Found {
                member: member("h9", "10.0.0.9"),
                env: BTreeMap::new()
            }
        ),
        Err(Refusal::AlreadyFounded)
    );
}

#[test]
fn a_joiner_admitted_before_the_founder_record_does_not_take_id_one() {
    let mut s = ClusterState::default();
    assert_eq!(
        add(&mut s, "h2", "10.0.0.2"),
        Ok(Outcome::ServerAdded {
            raft_id: 2,
            replaced: None
        })
    );
    let f = s.apply(
        3,
        Command::Found {
            member: member("h1", "10.0.0.1"),
            env: BTreeMap::new(),
        },
    );
    assert_eq!(f, Ok(Outcome::Founded));
    assert_eq!(s.servers["h1"].raft_id, 1);
}

#[test]
fn a_name_is_unique_and_joining_again_gets_a_new_raft_id() {
    let mut s = founded();
    add(&mut s, "h2", "10.0.0.2").expect("h2");
    let e = add(&mut s, "h2", "10.0.0.7").expect_err("taken");
    assert!(
        matches!(&e, Refusal::NameTaken { name, .. } if name == "h2"),
        "{e}"
    );
    assert!(e.to_string().contains("quarry servers remove h2"), "{e}");
    // The same server (same address) joining again after a wipe: a new id, never the old one.
    assert_eq!(
        add(&mut s, "h2", "10.0.0.2"),
        Ok(Outcome::ServerAdded {
            raft_id: 3,
            replaced: Some(2)
        })
    );
    assert_eq!(s.servers.len(), 2);
    let e = add(&mut s, "bad name", "10.0.0.8").expect_err("name");
    assert!(e.to_string().contains("letters, digits"), "{e}");
}

#[test]
fn an_update_needs_the_current_raft_id_and_removal_keeps_the_last_server() {
    let mut s = founded();
    add(&mut s, "h2", "10.0.0.2").expect("h2");
    let mut m = member("h2", "10.0.0.2");
    m.tags = vec!["router".to_owned()];
    assert_eq!(
        s.apply(
            5,
            Command::UpdateServer {
                raft_id: 2,
                member: m.clone()
            }
        ),
        Ok(Outcome::ServerUpdated)
    );
    assert_eq!(s.servers["h2"].member.tags, ["router"]);
    assert!(matches!(
        s.apply(
            6,
            Command::UpdateServer {
                raft_id: 9,
                member: m
            }
        ),
        Err(Refusal::UnknownServer(_))
    ));
    assert_eq!(
        s.apply(
            7,
            Command::RemoveServer {
                name: "h2".to_owned()
            }
        ),
        Ok(Outcome::ServerRemoved { raft_id: 2 })
    );
    assert_eq!(
        s.apply(
            8,
            Command::RemoveServer {
                name: "h1".to_owned()
            }
        ),
        Err(Refusal::LastServer("h1".to_owned()))
    );
    assert!(matches!(
        s.apply(
            9,
            Command::RemoveServer {
                name: "h2".to_owned()
            }
        ),
        Err(Refusal::UnknownServer(_))
    ));
}

fn block(name: &str, memory: u64) -> GridOp {
    GridOp::AddBlock {
        server: ServerId(name.to_owned()),
        memory,
        tags: vec![],
    }
}

fn slice(id: &str, memory: u64) -> SliceSpec {
    SliceSpec {
        id: SliceId(id.to_owned()),
        memory,
        tags: vec![],
        group: "s.web".to_owned(),
        pinned: false,
    }
}

#[test]
fn grid_changes_carry_their_version_and_a_stale_one_is_refused() {
    let mut s = founded();
    let v0 = s.grid.version();
    let out = s
        .apply(
            3,
            Command::Grid {
                version: v0,
                ops: vec![block("h1", 1 << 30), block("h2", 1 << 30)],
            },
        )
        .expect("blocks");
    let v1 = s.grid.version();
    assert_eq!(
        out,
        Outcome::Grid {
            version: v1,
            results: vec![GridResult::Done, GridResult::Done]
        }
    );
    // Computed on v0, applied at v1: refused, nothing changes.
    let before = s.clone();
    let e = s
        .apply(
            4,
            Command::Grid {
                version: v0,
                ops: vec![GridOp::Place(slice("a", 1 << 20))],
            },
        )
        .expect_err("stale");
    assert_eq!(
        e,
        Refusal::StaleGrid {
            expected: v0,
            current: v1
        }
    );
    assert!(e.to_string().contains("compute it again"), "{e}");
    assert_eq!(s, before);
    let out = s
        .apply(
            5,
            Command::Grid {
                version: v1,
                ops: vec![
                    GridOp::Place(slice("a", 1 << 20)),
                    GridOp::Place(slice("b", 1 << 20)),
                ],
            },
        )
        .expect("placed");
    let Outcome::Grid { results, .. } = out else {
        panic!("{out:?}")
    };
    // Replicas of one group spread over the two blocks.
    let blocks: Vec<_> = results
        .iter()
        .map(|r| match r {
            GridResult::Placed(PlaceOutcome::Placed { block, .. }) => block.0.clone(),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_ne!(blocks[0], blocks[1]);
}

#[test]
fn a_grid_batch_applies_whole_or_not_at_all() {
    let mut s = founded();
    let v = s.grid.version();
    let before = s.clone();
    let e = s
        .apply(
            3,
            Command::Grid {
                version: v,
                ops: vec![block("h1", 1 << 30), block("h1", 1 << 30)],
            },
        )
        .expect_err("duplicate block");
    assert!(matches!(e, Refusal::Grid { op: 1, .. }), "{e}");
    assert_eq!(s, before, "the first op of the refused batch did not stay");
}

#[test]
fn env_is_global_or_per_stack_and_names_are_checked() {
    let mut s = founded();
    let set = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    };
    s.apply(
        3,
        Command::SetEnv {
            stack: None,
            set: set(&[("A", "1"), ("B", "2")]),
            unset: vec!["REGION".to_owned()],
        },
    )
    .expect("global");
    assert_eq!(s.env, set(&[("A", "1"), ("B", "2")]));
    s.apply(
        4,
        Command::SetEnv {
            stack: Some("shop".to_owned()),
            set: set(&[("A", "stack")]),
            unset: vec![],
        },
    )
    .expect("stack");
    assert_eq!(s.stacks["shop"].env, set(&[("A", "stack")]));
    assert_eq!(s.stacks["shop"].current.name, "shop");
    let e = s
        .apply(
            5,
            Command::SetEnv {
                stack: None,
                set: set(&[("1BAD", "x")]),
                unset: vec![],
            },
        )
        .expect_err("bad key");
    assert!(e.to_string().contains("1BAD"), "{e}");
}

#[test]
fn routes_are_set_and_cleared_by_lower_case_domain() {
    let mut s = founded();
    let target = RouteTarget {
        stack: "shop".to_owned(),
        node: "web".to_owned(),
    };
    s.apply(
        3,
        Command::SetRoute {
            domain: "Shop.Test".to_owned(),
            target: Some(target.clone()),
        },
    )
    .expect("route");
    assert_eq!(s.routes["shop.test"], target);
    s.apply(
        4,
        Command::SetRoute {
            domain: "shop.test".to_owned(),
            target: None,
        },
    )
    .expect("unroute");
    assert!(s.routes.is_empty());
}

#[test]
fn the_same_commands_give_the_same_state_and_it_survives_a_snapshot() {
    let run = || {
        let mut s = founded();
        add(&mut s, "h2", "10.0.0.2").expect("h2");
        let v = s.grid.version();
        s.apply(
            3,
            Command::Grid {
                version: v,
                ops: vec![block("h1", 1 << 30), GridOp::Place(slice("a", 1 << 20))],
            },
        )
        .expect("grid");
        s
    };
    let (a, b) = (run(), run());
    assert_eq!(a, b);
    let bytes = quarry_consensus::codec::encode(&a).expect("encode");
    let back: ClusterState = quarry_consensus::codec::decode(&bytes).expect("decode");
    assert_eq!(back, a);
}

#[test]
fn the_cluster_version_moves_up_one_at_a_time_and_never_down() {
    let mut s = founded();
    assert_eq!(s.cluster_version, 1);
    assert!(matches!(
        s.apply(1, Command::SetClusterVersion(3)),
        Err(Refusal::Invalid(_))
    ));
    assert_eq!(
        s.apply(1, Command::SetClusterVersion(2)),
        Ok(Outcome::ClusterVersionSet { version: 2 })
    );
    assert_eq!(
        s.apply(1, Command::SetClusterVersion(2)),
        Ok(Outcome::ClusterVersionSet { version: 2 }),
        "a repeated switch (a new leader's) changes nothing"
    );
    let e = s.apply(1, Command::SetClusterVersion(1)).unwrap_err();
    assert!(e.to_string().contains("never down"), "{e}");
    assert_eq!(s.cluster_version, 2);
}

#[test]
fn a_v2_command_is_refused_before_the_switch_with_what_to_do() {
    let mut s = founded();
    let compact = Command::CompactStack(Box::new(CompactChange {
        scale: false,
        change: StackChange {
            stack: "web".into(),
            revision: 1,
            grid_version: s.grid.version(),
            place: vec![],
            remove: vec![],
            source: SourceHash::of(b"x"),
            file: StackFile {
                name: "web".into(),
                env: BTreeMap::new(),
                nodes: vec![],
            },
            current: StackState::default(),
            desired: vec![],
            retiring: vec![],
            images: BTreeMap::new(),
            routes: BTreeMap::new(),
        },
        envs: vec![],
        env_of: vec![],
    }));
    assert_eq!((compact.format(), compact.needs_version()), (2, 2));
    assert_eq!(Command::SetClusterVersion(2).format(), 2);
    assert_eq!(Command::RemoveServer { name: "x".into() }.format(), 1);
    let e = s.apply(1, compact).unwrap_err();
    assert_eq!(
        e,
        Refusal::NeedsClusterVersion {
            needed: 2,
            current: 1
        }
    );
    assert!(
        e.to_string().contains("upgrade the remaining servers"),
        "{e}"
    );
}
