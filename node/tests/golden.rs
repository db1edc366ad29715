//! Golden encodings: the bytes a server of each state version persisted or sent, checked in
//! under `tests/golden/encodings/v<N>/`, decoded by today's code.
//!
//! For every golden file: today's decoder reads it into exactly the expected value, and
//! today's encoder writes that value back to the same bytes (for the versions today's code
//! still writes). The expected values are built here by the real code paths (commands applied
//! to a state, a deploy compiled from the example), so a field added to a persisted type, a
//! variant inserted before the last one of an enum, or a changed encoding fails this test:
//! every variant's golden holds its position (the file name says it).
//!
//! The files of a version are written once, by the build that introduced the version, and
//! never again: `QUARRY_GOLDEN=write cargo test -p quarry-node --test golden` writes the files
//! that are missing and refuses to change one that exists.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use quarry_consensus::{IdempotencyKey, StateMachine};
use quarry_node::cluster::{
    default_grid_options, ClusterMachine, ClusterState, Command, ControlAnswer, ControlRequest,
    GridOp, LeaderView, Outcome, PeerHealth, Refusal, RouteTarget, ServerRecord, VoterReplacement,
};
use quarry_node::launch::{compile, PlanInputs};
use quarry_node::rpc::join::{Admission, JoinRequest, Member, ServerSettings};
use quarry_node::rpc::{Hello, HelloReply, Lane};
use quarry_node::source::SourceHash;
use quarry_node::spec::{self, Facts, StackFile};
use quarry_node::types::{ServerId, SliceId, SliceSpec};

const EXAMPLE: &str = include_str!("../../examples/guestbook/quarry.yml");

fn dir(version: u32) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("tests/golden/encodings/v{version}"))
}

/// Checks `bytes` against the golden file `name` of `version` (or writes it, if asked to and
/// it is missing). Returns the golden bytes.
fn golden(version: u32, name: &str, bytes: &[u8]) -> Vec<u8> {
    let path = dir(version).join(name);
    if !path.exists() && std::env::var("QUARRY_GOLDEN").as_deref() == Ok("write") {
        std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir golden");
        std::fs::write(&path, bytes).expect("write golden");
        eprintln!("wrote {}", path.display());
    }
    let want = std::fs::read(&path).unwrap_or_else(|e| {
        panic!(
            "golden {}: {e} (a new version's files are written once with QUARRY_GOLDEN=write)",
            path.display()
        )
    });
    assert_eq!(
        hex(&want),
        hex(bytes),
        "{}: today's encoding of the expected value differs from the golden bytes",
        path.display()
    );
    want
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

struct Digests;
impl Facts for Digests {
    fn build_digest(&self, dir: &str) -> Result<String, String> {
        Ok(format!("{:0<64}", dir.len()))
    }
    fn max_server_memory(&self) -> Option<u64> {
        None
    }
}

fn member(name: &str, ip: &str) -> Member {
    Member {
        name: name.to_owned(),
        address: ip.parse().expect("ip"),
        rpc_port: 7701,
        gossip_port: 7702,
        api_port: 7700,
        hostname: name.to_owned(),
        memory: 1 << 30,
        tags: vec!["router".to_owned()],
        settings: ServerSettings::default(),
    }
}

fn stack_file() -> StackFile {
    match spec::parse("quarry.yml", EXAMPLE, "guestbook", &Digests) {
        Ok((s, _)) => s,
        Err(d) => panic!("{d}"),
    }
}

fn apply(s: &mut ClusterState, c: Command) -> Outcome {
    s.apply(1, c.clone())
        .unwrap_or_else(|r| panic!("{c:?} refused: {r}"))
}

/// Every command of v1, in variant order, applied in this order (with a few more) to an empty
/// state, and the state they give. Deploy and Scale are compiled from the example on the
/// state as it is then.
fn commands_v1() -> (Vec<(&'static str, Command)>, ClusterState) {
    let mut s = ClusterState::default();
    let mut out = Vec::new();
    let push = |s: &mut ClusterState, name: &'static str, c: Command| {
        apply(s, c.clone());
        (name, c)
    };
    out.push(push(
        &mut s,
        "found",
        Command::Found {
            member: member("h1", "10.0.0.1"),
            env: BTreeMap::from([("REGION".to_owned(), "lab".to_owned())]),
        },
    ));
    out.push(push(
        &mut s,
        "add_server",
        Command::AddServer {
            member: member("h2", "10.0.0.2"),
        },
    ));
    let mut h2 = member("h2", "10.0.0.2");
    h2.memory = 2 << 30;
    out.push(push(
        &mut s,
        "update_server",
        Command::UpdateServer {
            raft_id: 2,
            member: h2,
        },
    ));
    apply(
        &mut s,
        Command::AddServer {
            member: member("h4", "10.0.0.4"),
        },
    );
    out.push(push(
        &mut s,
        "remove_server",
        Command::RemoveServer {
            name: "h4".to_owned(),
        },
    ));
    apply(
        &mut s,
        Command::AddServer {
            member: member("h3", "10.0.0.3"),
        },
    );
    let spec = SliceSpec {
        id: SliceId("spare".to_owned()),
        memory: 1 << 20,
        tags: vec![],
        group: "spare.x.r1".to_owned(),
        pinned: false,
    };
    let version = s.grid.version();
    out.push(push(
        &mut s,
        "grid",
        Command::Grid {
            version,
            ops: vec![
                GridOp::AddBlock {
                    server: ServerId("h1".into()),
                    memory: 1 << 30,
                    tags: vec!["router".into()],
                },
                GridOp::AddBlock {
                    server: ServerId("h2".into()),
                    memory: 2 << 30,
                    tags: vec!["router".into()],
                },
                GridOp::AddBlock {
                    server: ServerId("h3".into()),
                    memory: 1 << 30,
                    tags: vec!["router".into()],
                },
                GridOp::DrainBlock {
                    server: ServerId("h3".into()),
                },
                GridOp::ActivateBlock {
                    server: ServerId("h3".into()),
                },
                GridOp::SetOptions(default_grid_options()),
                GridOp::Place(spec.clone()),
                GridOp::RemoveSlice(spec.id.clone()),
                GridOp::AddBlock {
                    server: ServerId("h9".into()),
                    memory: 1 << 30,
                    tags: vec![],
                },
                GridOp::RemoveBlock {
                    server: ServerId("h9".into()),
                },
            ],
        },
    ));
    out.push(push(
        &mut s,
        "set_env",
        Command::SetEnv {
            stack: Some("guestbook".to_owned()),
            set: BTreeMap::from([("GREETING".to_owned(), "hello".to_owned())]),
            unset: vec!["NONE".to_owned()],
        },
    ));
    out.push(push(
        &mut s,
        "set_route",
        Command::SetRoute {
            domain: "other.test".to_owned(),
            target: Some(RouteTarget {
                stack: "other".to_owned(),
                node: "web".to_owned(),
            }),
        },
    ));
    out.push(push(
        &mut s,
        "record_replacement",
        Command::RecordReplacement(VoterReplacement {
            dead: "h2".to_owned(),
            dead_raft_id: 2,
            dead_since_unix_ms: 1_700_000_000_000,
            by: "h3".to_owned(),
            by_raft_id: 5,
            at_unix_ms: 1_700_000_030_000,
        }),
    ));
    let file = stack_file();
    let source = SourceHash::of(b"guestbook source");
    let deploy = compile(&PlanInputs::of(&s, &file.name), &file, &source).expect("compiles");
    out.push(push(
        &mut s,
        "deploy",
        Command::Deploy(Box::new(deploy.change)),
    ));
    let scaled = quarry_node::launch::compile::rescale(&file, "web", 3).expect("rescale");
    let scale = compile(&PlanInputs::of(&s, &file.name), &scaled, &source).expect("compiles");
    out.push(push(
        &mut s,
        "scale",
        Command::Scale(Box::new(scale.change)),
    ));
    let rec = &s.stacks["guestbook"];
    let retire = Command::Retire {
        stack: "guestbook".to_owned(),
        revision: rec.revision,
        grid_version: s.grid.version(),
        slices: rec.retiring.clone(),
    };
    out.push(push(&mut s, "retire", retire));
    let rollback = Command::Rollback {
        stack: "guestbook".to_owned(),
        revision: s.stacks["guestbook"].revision,
        grid_version: s.grid.version(),
        reason: "web never got healthy".to_owned(),
    };
    // A rollback needs a deploy still replacing replicas: refused here, still a command.
    let _ = s.apply(1, rollback.clone());
    out.push(("rollback", rollback));
    out.push(push(
        &mut s,
        "set_stack_enabled",
        Command::SetStackEnabled {
            stack: "guestbook".to_owned(),
            enabled: false,
        },
    ));
    (out, s)
}

/// The state the v1 commands give.
fn state_v1() -> ClusterState {
    commands_v1().1
}

/// The golden file name of a command: its variant's position and name. The match is
/// exhaustive, so a new variant does not compile until it has its golden.
fn command_file(index: usize, name: &str, c: &Command) -> String {
    let position = match c {
        Command::Found { .. } => 0,
        Command::AddServer { .. } => 1,
        Command::UpdateServer { .. } => 2,
        Command::RemoveServer { .. } => 3,
        Command::Grid { .. } => 4,
        Command::SetEnv { .. } => 5,
        Command::SetRoute { .. } => 6,
        Command::RecordReplacement(_) => 7,
        Command::Deploy(_) => 8,
        Command::Scale(_) => 9,
        Command::Retire { .. } => 10,
        Command::Rollback { .. } => 11,
        Command::SetStackEnabled { .. } => 12,
        // State v2.
        Command::SetClusterVersion(_) => 13,
        Command::CompactStack(_) => 14,
    };
    assert_eq!(
        position, index,
        "{name}: the commands are listed in variant order"
    );
    format!("commands/{position:02}-{name}.bin")
}

/// A log entry's bytes as today's machine writes them: the command's format byte, then the
/// proposal envelope (idempotency key, command).
fn entry(key: Option<IdempotencyKey>, c: &Command) -> Vec<u8> {
    ClusterMachine::encode_entry(key, c).expect("encode entry")
}

fn decode_entry(bytes: &[u8]) -> (Option<IdempotencyKey>, Command) {
    ClusterMachine::decode_entry(bytes).expect("decode entry")
}

#[test]
fn every_v1_command_decodes_as_it_was_written() {
    let key = Some(IdempotencyKey { client: 7, seq: 42 });
    let (commands, _) = commands_v1();
    assert_eq!(commands.len(), 13, "every v1 command has its golden");
    for (i, (name, c)) in commands.iter().enumerate() {
        let file = command_file(i, name, c);
        let bytes = golden(1, &file, &entry(key, c));
        let (k, back) = decode_entry(&bytes);
        assert_eq!((k, &back), (key, c), "{file}");
        assert_eq!(bytes[0], 1, "{file}: a v1 command is written as format 1");
        // A v1 build read these entries with the plain format-1 decoder.
        let old: (Option<IdempotencyKey>, Command) =
            quarry_consensus::codec::decode(&bytes).expect("v1 decoder");
        assert_eq!(&old.1, c, "{file}");
    }
}

/// The commands of v2, applied after the v1 ones: the switch, then a redeploy committed
/// compact. Their positions follow v1's.
fn commands_v2() -> (Vec<(&'static str, Command)>, ClusterState) {
    let (_, mut s) = commands_v1();
    apply(
        &mut s,
        Command::SetStackEnabled {
            stack: "guestbook".to_owned(),
            enabled: true,
        },
    );
    let switch = Command::SetClusterVersion(2);
    apply(&mut s, switch.clone());
    let file = stack_file();
    let source = SourceHash::of(b"guestbook source v2");
    let deploy = compile(&PlanInputs::of(&s, &file.name), &file, &source).expect("compiles");
    let compact = Command::stack_change(deploy.change, false, s.cluster_version);
    assert!(matches!(compact, Command::CompactStack(_)), "{compact:?}");
    apply(&mut s, compact.clone());
    (
        vec![("set_cluster_version", switch), ("compact_stack", compact)],
        s,
    )
}

#[test]
fn every_v2_command_decodes_as_it_was_written_and_a_v1_build_refuses_it() {
    let key = Some(IdempotencyKey { client: 7, seq: 43 });
    let (commands, _) = commands_v2();
    for (i, (name, c)) in commands.iter().enumerate() {
        let file = command_file(13 + i, name, c);
        let bytes = golden(2, &file, &entry(key, c));
        assert_eq!(bytes[0], 2, "{file}: a v2 command is marked format 2");
        let (k, back) = decode_entry(&bytes);
        assert_eq!((k, &back), (key, c), "{file}");
        let e =
            quarry_consensus::codec::decode_upto::<(Option<IdempotencyKey>, Command)>(1, &bytes)
                .expect_err("a v1 build refuses a v2 entry");
        assert!(e.to_string().contains("upgrade quarryd"), "{file}: {e}");
    }
}

#[test]
fn a_compact_stack_stores_each_env_once_and_applies_as_the_deploy() {
    let (_, s) = commands_v2();
    let (_, c) = &commands_v2().0[1];
    let Command::CompactStack(cc) = c else {
        panic!("{c:?}")
    };
    assert!(
        cc.envs.len() < cc.change.desired.len(),
        "{} envs for {} containers",
        cc.envs.len(),
        cc.change.desired.len()
    );
    let (change, _) = (**cc).clone().expand().expect("expands");
    let full = Command::Deploy(Box::new(change.clone()));
    assert!(entry(None, c).len() < entry(None, &full).len());
    assert_eq!(s.stacks["guestbook"].desired, change.desired);
}

#[test]
fn a_v2_state_snapshot_restores_as_it_was_written() {
    let state = commands_v2().1;
    assert_eq!(state.cluster_version, 2);
    let bytes = golden(2, "state.bin", &snapshot_of(&state));
    assert_eq!(bytes[0], 2);
    assert_eq!(restore(&bytes), state);
    // A v1 snapshot restores at cluster version 1.
    let v1 = std::fs::read(dir(1).join("state.bin")).expect("v1 golden");
    assert_eq!(restore(&v1).cluster_version, 1);
}

#[test]
fn v2_outcomes_and_refusals_decode_as_they_were_written() {
    let all: Vec<Result<Outcome, Refusal>> = vec![
        Ok(Outcome::ClusterVersionSet { version: 2 }),
        Err(Refusal::NeedsClusterVersion {
            needed: 2,
            current: 1,
        }),
    ];
    let bytes = golden(
        2,
        "outcomes.bin",
        &quarry_consensus::codec::encode(&all).expect("encode"),
    );
    let back: Vec<Result<Outcome, Refusal>> =
        quarry_consensus::codec::decode(&bytes).expect("decode");
    assert_eq!(back, all);
}

fn snapshot_of(state: &ClusterState) -> Vec<u8> {
    let (mut m, _rx) = ClusterMachine::new();
    m.state = state.clone();
    m.snapshot().expect("snapshot")
}

fn restore(bytes: &[u8]) -> ClusterState {
    let (mut m, _rx) = ClusterMachine::new();
    m.restore(bytes).expect("restore");
    m.state
}

#[test]
fn a_v1_state_snapshot_restores_as_it_was_written() {
    let state = state_v1();
    assert_eq!(state.servers.len(), 3, "{state:?}");
    assert!(state.stacks["guestbook"].revision >= 2, "{state:?}");
    let bytes = golden(1, "state.bin", &snapshot_of(&state));
    assert_eq!(restore(&bytes), state);
}

fn outcomes_v1() -> Vec<Result<Outcome, Refusal>> {
    vec![
        Ok(Outcome::Founded),
        Ok(Outcome::ServerAdded {
            raft_id: 3,
            replaced: Some(2),
        }),
        Ok(Outcome::ServerUpdated),
        Ok(Outcome::ServerRemoved { raft_id: 4 }),
        Ok(Outcome::Grid {
            version: 9,
            results: vec![quarry_node::cluster::GridResult::Done],
        }),
        Ok(Outcome::EnvSet),
        Ok(Outcome::RouteSet),
        Ok(Outcome::ReplacementRecorded),
        Ok(Outcome::StackChanged {
            revision: 2,
            grid_version: 10,
        }),
        Ok(Outcome::Retired { grid_version: 11 }),
        Ok(Outcome::StackEnabled),
        Ok(Outcome::RolledBack {
            revision: 3,
            grid_version: 12,
        }),
        Err(Refusal::StaleGrid {
            expected: 1,
            current: 2,
        }),
        Err(Refusal::AlreadyFounded),
        Err(Refusal::NameTaken {
            name: "h1".into(),
            address: "10.0.0.1".parse().expect("ip"),
        }),
        Err(Refusal::UnknownServer("h9".into())),
        Err(Refusal::LastServer("h1".into())),
        Err(Refusal::Grid {
            op: 1,
            message: "no room".into(),
        }),
        Err(Refusal::Invalid("bad".into())),
        Err(Refusal::UnknownStack("nope".into())),
        Err(Refusal::StaleStack {
            stack: "guestbook".into(),
            expected: 1,
            current: 2,
        }),
    ]
}

#[test]
fn v1_outcomes_and_refusals_decode_as_they_were_written() {
    // Kept in the snapshot's session table and sent back to forwarders.
    let all = outcomes_v1();
    let bytes = golden(
        1,
        "outcomes.bin",
        &quarry_consensus::codec::encode(&all).expect("encode"),
    );
    let back: Vec<Result<Outcome, Refusal>> =
        quarry_consensus::codec::decode(&bytes).expect("decode");
    assert_eq!(back, all);
}

fn rpc_bytes<T: serde::Serialize>(v: &T) -> Vec<u8> {
    quarry_node::rpc::codec::encode(v).expect("encode")
}

fn rpc_back<T: serde::de::DeserializeOwned>(b: &[u8]) -> T {
    quarry_node::rpc::codec::decode(b).expect("decode")
}

#[test]
fn v1_hellos_and_control_messages_decode_as_they_were_written() {
    let hellos: Vec<Hello> = [Lane::Raft, Lane::Control, Lane::Bulk, Lane::Join]
        .into_iter()
        .map(|lane| Hello {
            version: quarry_node::rpc::PROTOCOL,
            lane,
        })
        .collect();
    let b = golden(1, "rpc/hello.bin", &rpc_bytes(&hellos));
    assert_eq!(rpc_back::<Vec<Hello>>(&b), hellos);

    let replies = vec![HelloReply::Ok, HelloReply::Refused("no certificate".into())];
    let b = golden(1, "rpc/hello_reply.bin", &rpc_bytes(&replies));
    assert_eq!(rpc_back::<Vec<HelloReply>>(&b), replies);

    let join = JoinRequest {
        secret: [7; 32],
        csr_pem: "-----BEGIN CERTIFICATE REQUEST-----".into(),
        member: member("h4", "10.0.0.4"),
    };
    let b = golden(1, "rpc/join_request.bin", &rpc_bytes(&join));
    assert_eq!(
        format!("{:?}", rpc_back::<JoinRequest>(&b)),
        format!("{join:?}")
    );

    let requests = vec![
        ControlRequest::Propose {
            key: IdempotencyKey { client: 1, seq: 2 },
            command: Command::SetEnv {
                stack: None,
                set: BTreeMap::from([("A".to_owned(), "b".to_owned())]),
                unset: vec![],
            },
        },
        ControlRequest::Admit {
            member: member("h4", "10.0.0.4"),
        },
        ControlRequest::Progress,
        ControlRequest::Launch(vec![1, 2, 3]),
    ];
    let b = golden(1, "rpc/control_request.bin", &rpc_bytes(&requests));
    assert_eq!(
        format!("{:?}", rpc_back::<Vec<ControlRequest>>(&b)),
        format!("{requests:?}")
    );

    let h1 = ServerRecord {
        raft_id: 1,
        member: member("h1", "10.0.0.1"),
    };
    let answers = vec![
        ControlAnswer::Applied(Ok(Outcome::EnvSet)),
        ControlAnswer::Applied(Err(Refusal::AlreadyFounded)),
        ControlAnswer::Admitted(Admission {
            raft_id: 4,
            servers: vec![h1],
        }),
        ControlAnswer::Progress(LeaderView {
            commit: 99,
            peers: vec![PeerHealth {
                raft_id: 2,
                matched: 98,
                active: true,
            }],
        }),
        ControlAnswer::NotLeader { leader: Some(2) },
        ControlAnswer::Failed("no".into()),
        ControlAnswer::Launch(Ok(vec![4, 5])),
        ControlAnswer::Launch(Err("launch failed".into())),
    ];
    let b = golden(1, "rpc/control_answer.bin", &rpc_bytes(&answers));
    assert_eq!(
        format!("{:?}", rpc_back::<Vec<ControlAnswer>>(&b)),
        format!("{answers:?}")
    );
}
