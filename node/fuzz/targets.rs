//! The fuzz targets: each decoder that reads bytes from outside, as the server reads them.
//!
//! Shared by the fixed-seed mutation loop (`node/benches/fuzz.rs`, run in CI) and the
//! regression test (`node/tests/fuzz_regressions.rs`, which replays every seed and every input
//! kept under `node/fuzz/regressions/TARGET/`). Each target takes raw bytes, runs them through
//! the same checks and decoders the server does, and says how far they got: stopped by a size
//! or depth limit ([`Outcome::Limited`]) or past the limits into the decoder, which either
//! refused them ([`Outcome::Refused`]) or accepted them ([`Outcome::Accepted`]). A panic is a
//! crash; so would be an abort (a stack overflow), which ends the whole run.
//!
//! | target | what the server does with the bytes |
//! | --- | --- |
//! | `quarry_yml` | the leader's and the CLI's quarry.yml reader (`spec::parse`) |
//! | `rpc_join` | the RPC listener before authentication: a hello frame, then a join request, each at most 64 KiB |
//! | `rpc_control` | the Control lane: a hello, a request frame (a forwarded command, a launch request) |
//! | `rpc_raft` | the Raft lane: a hello, then frames of raft messages (protobuf) |
//! | `rpc_bulk` | the Bulk lane: a hello, then a request dispatched by its magic (source, image) |
//! | `rpc_answer` | a dialer reading the answer to a Control request |
//! | `gossip_datagram` | a gossip datagram: the seal opened, then chitchat's message |
//! | `gossip_message` | chitchat's message decoder on an opened payload (a member gone wrong) |
//! | `gossip_record` | a server's record read from a gossip key |
//! | `source_tar` | a pushed source unpacked into a build directory |
//! | `api_json` | the API's JSON bodies (`quarry env set`, `quarry scale`) |

#![allow(dead_code)]

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use chitchat::{ChitchatMessage, Deserializable, Serializable};
use quarry_node::answers::{EnvChange, ScaleRequest};
use quarry_node::cluster::{Command, ControlAnswer, ControlRequest};
use quarry_node::gossip::record::ServerRecord;
use quarry_node::gossip::seal::{self, SealKey};
use quarry_node::launch::protocol::LaunchRequest;
use quarry_node::rpc::codec::{self, CodecError, MAX_BULK_FRAME, MAX_FRAME, MAX_PREAUTH_FRAME};
use quarry_node::rpc::join::{JoinRequest, Member, ServerSettings};
use quarry_node::rpc::{Hello, Lane, PROTOCOL};

/// How far an input got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Stopped by a size or depth limit, before the decoder saw it.
    Limited,
    /// Past the limits; the decoder refused it.
    Refused,
    /// Past the limits and accepted.
    Accepted,
}

/// One target.
pub struct Target {
    /// Its name (a directory under `node/fuzz/regressions/`).
    pub name: &'static str,
    /// Valid inputs the mutations start from.
    pub seeds: fn() -> Vec<Vec<u8>>,
    /// Run one input.
    pub run: fn(&[u8]) -> Outcome,
}

/// Every target.
pub fn all() -> Vec<Target> {
    vec![
        Target {
            name: "quarry_yml",
            seeds: yml_seeds,
            run: yml,
        },
        Target {
            name: "rpc_join",
            seeds: join_seeds,
            run: rpc_join,
        },
        Target {
            name: "rpc_control",
            seeds: control_seeds,
            run: rpc_control,
        },
        Target {
            name: "rpc_raft",
            seeds: raft_seeds,
            run: rpc_raft,
        },
        Target {
            name: "rpc_bulk",
            seeds: bulk_seeds,
            run: rpc_bulk,
        },
        Target {
            name: "rpc_answer",
            seeds: answer_seeds,
            run: rpc_answer,
        },
        Target {
            name: "gossip_datagram",
            seeds: datagram_seeds,
            run: gossip_datagram,
        },
        Target {
            name: "gossip_message",
            seeds: message_seeds,
            run: gossip_message,
        },
        Target {
            name: "gossip_record",
            seeds: record_seeds,
            run: gossip_record,
        },
        Target {
            name: "source_tar",
            seeds: tar_seeds,
            run: source_tar,
        },
        Target {
            name: "api_json",
            seeds: json_seeds,
            run: api_json,
        },
    ]
}

fn outcome<T, E>(r: Result<T, E>) -> Outcome {
    match r {
        Ok(_) => Outcome::Accepted,
        Err(_) => Outcome::Refused,
    }
}

// --- quarry.yml ---------------------------------------------------------------------------

struct NoFacts;

impl quarry_node::spec::Facts for NoFacts {
    fn build_digest(&self, dir: &str) -> Result<String, String> {
        if dir.len() < 64 {
            Ok("0".repeat(64))
        } else {
            Err("does not exist".to_owned())
        }
    }
    fn max_server_memory(&self) -> Option<u64> {
        Some(8 << 30)
    }
}

fn yml_seeds() -> Vec<Vec<u8>> {
    [
        include_str!("../../examples/guestbook/quarry.yml"),
        "name: a\nnodes:\n  web:\n    image: busybox\n    command: [\"httpd\", \"-f\"]\n    ports: [80]\n    domains: [a.test, B.test]\n    scale: 2\n    memory: 64M\n    health:\n      http: /\n      interval: 1s\n",
        "env:\n  A: \"1\"\n  B: ${A}-${web.HOST}\nnodes:\n  web: {image: x, env: {C: \"${A}\"}, tags: [router]}\n  db: {kind: service, build: ./db}\n",
        "nodes:\n  a: [[[[[[[[[]]]]]]]]]\n  b:\n    - - - - - x\n",
        "&a x: *a\n? [a, {b: c}]\n: !!binary aGVsbG8=\n",
    ]
    .iter()
    .map(|s| s.as_bytes().to_vec())
    .collect()
}

fn yml(bytes: &[u8]) -> Outcome {
    let Ok(text) = std::str::from_utf8(bytes) else {
        return Outcome::Refused;
    };
    // The reader's own limits, checked as it checks them (so a case it stops there counts as
    // stopped by a limit): the size, then the depth on the event stream.
    let within = quarry_node::spec::limits::check_text("quarry.yml", text.len()).is_ok()
        && quarry_node::spec::positions::Positions::index(text).is_ok();
    let parsed = outcome(quarry_node::spec::parse(
        "quarry.yml",
        text,
        "fuzz",
        &NoFacts,
    ));
    if within {
        parsed
    } else {
        Outcome::Limited
    }
}

// --- the RPC lanes ------------------------------------------------------------------------

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: std::sync::OnceLock<tokio::runtime::Runtime> = std::sync::OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime")
    })
}

fn frame(payload: &[u8]) -> Vec<u8> {
    let mut out = (payload.len() as u32).to_be_bytes().to_vec();
    out.extend_from_slice(payload);
    out
}

fn hello(lane: Lane) -> Vec<u8> {
    frame(
        &codec::encode(&Hello {
            version: PROTOCOL,
            lane,
        })
        .expect("hello"),
    )
}

/// The frames of a stream as the listener reads them, each at most `limit` bytes: `Err` when a
/// frame announced more (nothing allocated), the frames read so far otherwise (a truncated
/// last frame ends the stream).
fn frames(mut stream: &[u8], limit: u32) -> Result<Vec<Vec<u8>>, CodecError> {
    runtime().block_on(async {
        let mut out = Vec::new();
        loop {
            match codec::read_frame(&mut stream, limit).await {
                Ok(Some(f)) => out.push(f),
                Ok(None) => return Ok(out),
                Err(CodecError::Io(_)) => return Ok(out),
                Err(e) => return Err(e),
            }
        }
    })
}

/// A stream as the listener reads it: the frames after a hello.
enum Stream {
    /// A frame announced more than the lane's limit (nothing was allocated).
    Limited,
    /// No hello, or not a valid one.
    NoHello,
    /// The frames after the hello.
    Frames(Vec<Vec<u8>>),
}

fn lane_frames(stream: &[u8], limit: u32) -> Stream {
    let Ok(mut fs) = frames(stream, limit) else {
        return Stream::Limited;
    };
    if fs.is_empty() || codec::decode::<Hello>(&fs[0]).is_err() {
        return Stream::NoHello;
    }
    fs.remove(0);
    Stream::Frames(fs)
}

fn member() -> Member {
    Member {
        name: "h2".to_owned(),
        address: IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2)),
        rpc_port: 7701,
        gossip_port: 7702,
        api_port: 7700,
        hostname: "h2".to_owned(),
        memory: 2 << 30,
        tags: vec!["router".to_owned()],
        settings: ServerSettings::default(),
    }
}

fn join_seeds() -> Vec<Vec<u8>> {
    let req = JoinRequest {
        secret: [7; 32],
        csr_pem: "-----BEGIN CERTIFICATE REQUEST-----\nMIIB\n-----END CERTIFICATE REQUEST-----\n"
            .to_owned(),
        member: member(),
    };
    let mut s = hello(Lane::Join);
    s.extend(frame(&codec::encode(&req).expect("join")));
    vec![s, hello(Lane::Raft)]
}

fn rpc_join(bytes: &[u8]) -> Outcome {
    // A peer without a certificate: every frame within the pre-authentication limit.
    match lane_frames(bytes, MAX_PREAUTH_FRAME) {
        Stream::Limited => Outcome::Limited,
        Stream::NoHello => Outcome::Refused,
        Stream::Frames(rest) => match rest.first() {
            Some(f) => outcome(codec::decode::<JoinRequest>(f)),
            None => Outcome::Refused,
        },
    }
}

fn control_seeds() -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let requests = [
        ControlRequest::Progress,
        ControlRequest::Admit { member: member() },
        ControlRequest::Launch(
            codec::encode(&LaunchRequest::HasImages {
                stack: "shop".to_owned(),
            })
            .expect("launch"),
        ),
        ControlRequest::Launch(
            codec::encode(&LaunchRequest::SendImages {
                images: vec!["quarry/shop-web:1".to_owned()],
                to: "h3".to_owned(),
            })
            .expect("launch"),
        ),
    ];
    for r in requests {
        let mut s = hello(Lane::Control);
        s.extend(frame(&codec::encode(&r).expect("control")));
        out.push(s);
    }
    for c in command_seeds() {
        let mut s = hello(Lane::Control);
        let r = ControlRequest::Propose {
            key: quarry_consensus::IdempotencyKey { client: 1, seq: 2 },
            command: c,
        };
        s.extend(frame(&codec::encode(&r).expect("propose")));
        out.push(s);
    }
    out
}

fn command_seeds() -> Vec<Command> {
    let mut env = std::collections::BTreeMap::new();
    env.insert("A".to_owned(), "1".to_owned());
    vec![
        Command::SetEnv {
            stack: Some("shop".to_owned()),
            set: env,
            unset: vec!["B".to_owned()],
        },
        Command::RemoveServer {
            name: "h3".to_owned(),
        },
    ]
}

fn rpc_control(bytes: &[u8]) -> Outcome {
    match lane_frames(bytes, MAX_FRAME) {
        Stream::Limited => Outcome::Limited,
        Stream::NoHello => Outcome::Refused,
        Stream::Frames(rest) => {
            let Some(f) = rest.first() else {
                return Outcome::Refused;
            };
            match codec::decode_control::<ControlRequest>(f) {
                Ok(ControlRequest::Launch(inner)) => {
                    outcome(codec::decode::<LaunchRequest>(&inner))
                }
                r => outcome(r),
            }
        }
    }
}

fn raft_seeds() -> Vec<Vec<u8>> {
    use quarry_consensus::codec::encode_pb;
    let mut m = raft::eraftpb::Message::default();
    m.set_msg_type(raft::eraftpb::MessageType::MsgAppend);
    m.from = 1;
    m.to = 2;
    m.term = 3;
    m.index = 10;
    m.log_term = 3;
    m.commit = 9;
    m.mut_entries().push(raft::eraftpb::Entry {
        term: 3,
        index: 11,
        data: b"\x01\x00\x01entry".to_vec().into(),
        ..Default::default()
    });
    let mut hb = raft::eraftpb::Message::default();
    hb.set_msg_type(raft::eraftpb::MessageType::MsgHeartbeat);
    hb.from = 1;
    hb.to = 3;
    let mut s = hello(Lane::Raft);
    s.extend(frame(&encode_pb(&m).expect("pb")));
    s.extend(frame(&encode_pb(&hb).expect("pb")));
    vec![s]
}

fn rpc_raft(bytes: &[u8]) -> Outcome {
    match lane_frames(bytes, MAX_FRAME) {
        Stream::Limited => Outcome::Limited,
        Stream::NoHello => Outcome::Refused,
        Stream::Frames(rest) => {
            let mut got = Outcome::Refused;
            for f in &rest {
                got = outcome(quarry_consensus::codec::decode_message(f));
            }
            got
        }
    }
}

fn bulk_seeds() -> Vec<Vec<u8>> {
    let source = b"a source tar".to_vec();
    let hash = quarry_node::source::SourceHash::of(&source);
    let mut put = b"QSR1P".to_vec();
    put.extend_from_slice(hash.as_str().as_bytes());
    put.extend_from_slice(&source);
    let mut get = b"QSR1G".to_vec();
    get.extend_from_slice(hash.as_str().as_bytes());
    let image = quarry_node::images::wire::encode(&quarry_node::images::wire::Message::Abort(
        quarry_node::images::wire::Abort {
            id: quarry_node::images::TransferId([7; 16]),
            reason: "fuzz".to_owned(),
        },
    ));
    let mut out = Vec::new();
    for r in [put, get, image] {
        let mut s = hello(Lane::Bulk);
        s.extend(frame(&r));
        out.push(s);
    }
    out
}

fn rpc_bulk(bytes: &[u8]) -> Outcome {
    match lane_frames(bytes, MAX_BULK_FRAME) {
        Stream::Limited => Outcome::Limited,
        Stream::NoHello => Outcome::Refused,
        Stream::Frames(rest) => {
            let Some(f) = rest.first() else {
                return Outcome::Refused;
            };
            if quarry_node::source::wire::is_source_request(f) {
                let dir = tempfile::tempdir().expect("tmp");
                let store = quarry_node::source::SourceStore::open(dir.path()).expect("store");
                outcome(quarry_node::source::wire::serve(&store, f))
            } else if quarry_node::images::wire::is_image_request(f) {
                outcome(quarry_node::images::wire::decode(f))
            } else {
                Outcome::Refused
            }
        }
    }
}

fn answer_seeds() -> Vec<Vec<u8>> {
    let ok = codec::encode(&ControlAnswer::Launch(Ok(b"\x01\x02".to_vec()))).expect("answer");
    vec![
        codec::answer_frame(Ok(ok)),
        codec::answer_frame(Err("not the leader".to_owned())),
    ]
}

fn rpc_answer(bytes: &[u8]) -> Outcome {
    match codec::parse_answer(bytes.to_vec()) {
        Ok(Ok(b)) => outcome(codec::decode::<ControlAnswer>(&b)),
        Ok(Err(_)) => Outcome::Accepted,
        Err(_) => Outcome::Refused,
    }
}

// --- gossip -------------------------------------------------------------------------------

fn seal_key() -> SealKey {
    SealKey::derive(&[9; 32], "fuzz-cluster")
}

fn record_text() -> String {
    ServerRecord::of(&member(), 2, 7, Some("router".to_owned()))
        .encode()
        .expect("record")
}

/// Real sealed datagrams: two chitchat members gossiping on loopback through the sealing
/// transport, one of them recorded, until at least 12 datagrams (of each kind chitchat sends)
/// were sent; the key is [`seal_key`]. Made once per process.
fn captured() -> &'static Vec<Vec<u8>> {
    static CAPTURED: std::sync::OnceLock<Vec<Vec<u8>>> = std::sync::OnceLock::new();
    CAPTURED.get_or_init(|| {
        use quarry_node::gossip::transport::{Capture, SealedTransport};
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async {
            let addr = |s: std::net::UdpSocket| s.local_addr().expect("addr");
            let a = addr(std::net::UdpSocket::bind("127.0.0.1:0").expect("bind"));
            let b = addr(std::net::UdpSocket::bind("127.0.0.1:0").expect("bind"));
            let capture = Capture::default();
            let ta = SealedTransport::new(seal_key(), "h1", 1).with_capture(capture.clone());
            let tb = SealedTransport::new(seal_key(), "h2", 7);
            let kv = |name: &str| {
                vec![
                    ("server".to_owned(), record_text()),
                    ("role".to_owned(), name.to_owned()),
                ]
            };
            let cfg = |n: &str, g: u64, at, seeds: &[SocketAddr]| {
                quarry_node::gossip::chitchat_config(n, g, "fuzz-cluster", at, seeds)
            };
            let ha = chitchat::spawn_chitchat(cfg("h1", 1, a, &[b]), kv("h1"), &ta)
                .await
                .expect("chitchat");
            let hb = chitchat::spawn_chitchat(cfg("h2", 7, b, &[a]), kv("h2"), &tb)
                .await
                .expect("chitchat");
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
            while capture.datagrams().len() < 12 {
                assert!(
                    std::time::Instant::now() < deadline,
                    "gossip seeds: fewer than 12 datagrams within 20 s"
                );
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
            let _ = ha.shutdown().await;
            let _ = hb.shutdown().await;
            capture.datagrams().into_iter().map(|(_, d)| d).collect()
        })
    })
}

fn message_seeds() -> Vec<Vec<u8>> {
    let key = seal_key();
    let mut out: Vec<Vec<u8>> = captured()
        .iter()
        .map(|d| seal::open(&key, d).expect("a captured datagram opens").1)
        .collect();
    // The largest first: a SynAck or Ack carrying the records, not an empty Syn.
    out.sort_by_key(|m| std::cmp::Reverse(m.len()));
    out.push(
        ChitchatMessage::Syn {
            cluster_id: "fuzz-cluster".to_owned(),
            digest: Default::default(),
        }
        .serialize_to_vec(),
    );
    out.push(ChitchatMessage::BadCluster.serialize_to_vec());
    out
}

fn gossip_message(bytes: &[u8]) -> Outcome {
    outcome(ChitchatMessage::deserialize(&mut &bytes[..]))
}

fn datagram_seeds() -> Vec<Vec<u8>> {
    let mut out = captured().clone();
    out.sort_by_key(|d| std::cmp::Reverse(d.len()));
    out
}

fn gossip_datagram(bytes: &[u8]) -> Outcome {
    static KEY: std::sync::OnceLock<SealKey> = std::sync::OnceLock::new();
    let key = KEY.get_or_init(seal_key);
    match seal::open(key, bytes) {
        Ok((_, payload)) => outcome(ChitchatMessage::deserialize(&mut payload.as_slice())),
        Err(_) => Outcome::Refused,
    }
}

fn record_seeds() -> Vec<Vec<u8>> {
    vec![record_text().into_bytes()]
}

fn gossip_record(bytes: &[u8]) -> Outcome {
    match std::str::from_utf8(bytes) {
        Ok(t) => outcome(ServerRecord::decode(t)),
        Err(_) => Outcome::Refused,
    }
}

// --- sources and the API ------------------------------------------------------------------

fn tar_seeds() -> Vec<Vec<u8>> {
    let mut b = tar::Builder::new(Vec::new());
    for (path, body, mode) in [
        ("quarry.yml", &b"nodes:\n  web: {image: x}\n"[..], 0o644),
        ("web/Dockerfile", b"FROM scratch\n", 0o644),
        ("web/run.sh", b"#!/bin/sh\necho hi\n", 0o755),
    ] {
        let mut h = tar::Header::new_gnu();
        h.set_size(body.len() as u64);
        h.set_mode(mode);
        h.set_cksum();
        b.append_data(&mut h, path, body).expect("tar");
    }
    vec![b.into_inner().expect("tar")]
}

fn source_tar(bytes: &[u8]) -> Outcome {
    let dir = tempfile::tempdir().expect("tmp");
    outcome(quarry_node::source::unpack(
        bytes,
        &dir.path().join("build"),
    ))
}

fn json_seeds() -> Vec<Vec<u8>> {
    vec![
        br#"{"stack":"shop","set":{"A":"1","B":"two"},"unset":["C"]}"#.to_vec(),
        br#"{"set":{"A":"1"},"unset":[]}"#.to_vec(),
        br#"{"stack":"shop","node":"web","scale":3}"#.to_vec(),
    ]
}

fn api_json(bytes: &[u8]) -> Outcome {
    // The API's own checks before serde_json sees a body (`api::limits`): its size, its depth.
    use quarry_node::api::limits::{check_depth, MAX_JSON_BODY};
    match bytes.len() > MAX_JSON_BODY || check_depth(bytes).is_err() {
        true => Outcome::Limited,
        false => {
            let a = serde_json::from_slice::<EnvChange>(bytes);
            let b = serde_json::from_slice::<ScaleRequest>(bytes);
            if a.is_ok() || b.is_ok() {
                Outcome::Accepted
            } else {
                Outcome::Refused
            }
        }
    }
}
