//! Node RPC over real mutual TLS on loopback: lanes, member checks, join, frame limits.

use std::sync::Arc;
use std::time::Duration;

use quarry_node::pki::{self, ClusterCa, JoinToken, NodeIdentity};
use std::collections::BTreeMap;
use std::sync::Mutex;

use quarry_node::cluster::{ClusterState, Command, Outcome};
use quarry_node::rpc::join::{
    self, Admission, JoinAuthority, JoinError, JoinService, Member, ServerSettings,
};
use quarry_node::rpc::server::{BoxFuture, RaftInbound, RequestHandler};
use quarry_node::rpc::{client, codec, Dialer, Handlers, Lane, RpcError, RpcServer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

fn member(name: &str) -> Member {
    Member {
        name: name.to_owned(),
        address: "127.0.0.1".parse().expect("ip"),
        rpc_port: 7701,
        gossip_port: 7702,
        api_port: 7700,
        hostname: name.to_owned(),
        memory: 1 << 30,
        tags: vec!["ssd".to_owned()],
        settings: ServerSettings::default(),
    }
}

/// Admits into a cluster state held here (the state's rules, without Raft).
struct StateAuthority(Mutex<ClusterState>);

impl StateAuthority {
    fn new(founder: Member) -> StateAuthority {
        let mut s = ClusterState::default();
        s.apply(
            1,
            Command::Found {
                member: founder,
                env: BTreeMap::new(),
            },
        )
        .expect("found");
        StateAuthority(Mutex::new(s))
    }

    fn members(&self) -> Vec<Member> {
        let s = self.0.lock().expect("state");
        s.servers.values().map(|r| r.member.clone()).collect()
    }
}

impl JoinAuthority for StateAuthority {
    fn admit(&self, member: Member) -> BoxFuture<'_, Result<Admission, String>> {
        Box::pin(async move {
            let mut s = self.0.lock().expect("state");
            match s.apply(2, Command::AddServer { member }) {
                Ok(Outcome::ServerAdded { raft_id, .. }) => Ok(Admission {
                    raft_id,
                    servers: s.servers.values().cloned().collect(),
                }),
                Ok(other) => Err(format!("{other:?}")),
                Err(e) => Err(e.to_string()),
            }
        })
    }
}

/// Answers a request with its bytes reversed, prefixed by the peer's name.
struct Echo;
impl RequestHandler for Echo {
    fn handle(&self, peer: String, mut req: Vec<u8>) -> BoxFuture<'_, Result<Vec<u8>, String>> {
        Box::pin(async move {
            if req == b"fail" {
                return Err("asked to fail".to_owned());
            }
            req.reverse();
            let mut out = peer.into_bytes();
            out.push(b':');
            out.extend(req);
            Ok(out)
        })
    }
}

struct Cluster {
    ca: ClusterCa,
    a: NodeIdentity,
    secret: [u8; 32],
    authority: Arc<StateAuthority>,
    server: RpcServer,
    raft_rx: mpsc::Receiver<RaftInbound>,
    _dir: tempfile::TempDir,
}

async fn cluster() -> Cluster {
    let ca = ClusterCa::generate("test").expect("ca");
    let a = ca.issue("server-a").expect("a");
    let secret = pki::random_bytes();
    let dir = tempfile::tempdir().expect("tmp");
    let authority = Arc::new(StateAuthority::new(member("server-a")));
    let (raft_tx, raft_rx) = mpsc::channel(64);
    let dyn_auth: Arc<dyn JoinAuthority> = authority.clone();
    let handlers = Handlers {
        raft: Some(raft_tx),
        control: Some(Arc::new(Echo)),
        bulk: Some(Arc::new(Echo)),
        join: Some(Arc::new(JoinService::new(
            ca.clone(),
            secret,
            [9; 32],
            "qra_test".to_owned(),
            dyn_auth,
        ))),
    };
    let server = RpcServer::bind("127.0.0.1:0".parse().expect("addr"), &a, handlers)
        .await
        .expect("bind");
    Cluster {
        ca,
        a,
        secret,
        authority,
        server,
        raft_rx,
        _dir: dir,
    }
}

#[tokio::test]
async fn members_exchange_requests_on_control_and_bulk_lanes_named_by_certificate() {
    let c = cluster().await;
    let b = c.ca.issue("server-b").expect("b");
    let dialer = Dialer::new(&b).expect("dialer");
    for lane in [Lane::Control, Lane::Bulk] {
        let mut r = dialer
            .requests(c.server.local_addr(), lane)
            .await
            .expect("lane");
        assert_eq!(r.call(b"abc").await.expect("call"), b"server-b:cba");
        let e = r.call(b"fail").await.expect_err("remote error");
        assert!(
            matches!(&e, RpcError::Remote(m) if m == "asked to fail"),
            "{e}"
        );
        // The connection stays usable after an error answer.
        assert_eq!(r.call(b"x").await.expect("call"), b"server-b:x");
    }
    let _ = &c.a;
}

#[tokio::test]
async fn the_raft_lane_carries_opaque_messages_and_reconnects_after_a_restart() {
    let mut c = cluster().await;
    let b = c.ca.issue("server-b").expect("b");
    let link = Dialer::new(&b)
        .expect("dialer")
        .raft_link(c.server.local_addr());
    for i in 0..10u8 {
        assert!(link.send(vec![i; 100]));
    }
    for i in 0..10u8 {
        let m = tokio::time::timeout(Duration::from_secs(5), c.raft_rx.recv())
            .await
            .expect("a Raft message within 5 s")
            .expect("inbox open");
        assert_eq!(
            m,
            RaftInbound {
                from: "server-b".to_owned(),
                bytes: vec![i; 100]
            }
        );
    }
    // Restart the listener on the same port: the link reconnects by itself.
    let addr = c.server.local_addr();
    c.server.stop();
    let (tx, mut rx) = mpsc::channel(64);
    let handlers = Handlers {
        raft: Some(tx),
        ..Handlers::default()
    };
    let mut server = None;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while server.is_none() {
        match RpcServer::bind(addr, &c.a, handlers.clone()).await {
            Ok(s) => server = Some(s),
            Err(e) if tokio::time::Instant::now() < deadline => {
                tracing::debug!("rebind: {e}");
                tokio::task::yield_now().await;
            }
            Err(e) => panic!("could not listen on {addr} again within 5 s: {e}"),
        }
    }
    // Keep sending until one arrives (the first may be lost with the old connection).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        link.send(b"after".to_vec());
        match tokio::time::timeout(Duration::from_millis(200), rx.recv()).await {
            Ok(Some(m)) => {
                assert_eq!(m.bytes, b"after");
                break;
            }
            _ if tokio::time::Instant::now() > deadline => {
                panic!("the Raft link did not reconnect within 10 s")
            }
            _ => {}
        }
    }
}

#[tokio::test]
async fn every_lane_but_join_refuses_a_peer_without_a_cluster_certificate() {
    let c = cluster().await;
    let token = JoinToken {
        ca: c.ca.digest(),
        secret: c.secret,
    };
    let no_cert = pki::join_client_config(token.ca).expect("tls");
    for lane in [Lane::Raft, Lane::Control, Lane::Bulk] {
        let e = client::dial(c.server.local_addr(), no_cert.clone(), lane)
            .await
            .expect_err("refused");
        let msg = e.to_string();
        assert!(
            matches!(e, RpcError::Refused { .. })
                && msg.contains("needs a certificate from this cluster's CA"),
            "{lane:?}: {msg}"
        );
    }
    client::dial(c.server.local_addr(), no_cert, Lane::Join)
        .await
        .expect("join lane is open");
}

#[tokio::test]
async fn a_certificate_from_another_cluster_cannot_open_a_lane() {
    let c = cluster().await;
    let other = ClusterCa::generate("other").expect("ca");
    let mut intruder = other.issue("intruder").expect("id");
    intruder.ca_pem = c.ca.cert_pem().to_owned(); // trusts our CA, holds another's cert
    let e = Dialer::new(&intruder)
        .expect("dialer")
        .requests(c.server.local_addr(), Lane::Control)
        .await
        .expect_err("the TLS handshake refuses a certificate of another CA");
    assert!(
        !matches!(e, RpcError::Refused { .. }),
        "refused by TLS, before any hello: {e}"
    );
}

#[tokio::test]
async fn join_with_the_right_token_returns_a_working_certificate_and_the_members() {
    let c = cluster().await;
    let token = JoinToken {
        ca: c.ca.digest(),
        secret: c.secret,
    };
    let (csr, key_pem) = pki::new_csr("server-b").expect("csr");
    let mut me = member("server-b");
    me.address = "127.0.0.2".parse().expect("ip");
    let admitted = join::join(c.server.local_addr(), &token, csr, me.clone())
        .await
        .expect("join");
    assert_eq!(admitted.gossip_key, [9; 32]);
    assert_eq!(admitted.admin_token, "qra_test");
    assert_eq!(admitted.ca_pem, c.ca.cert_pem());
    assert_eq!(
        admitted.ca_key_pem,
        c.ca.key_pem(),
        "every member can admit"
    );
    assert_eq!(admitted.join_secret, c.secret);
    assert_eq!(admitted.raft_id, 2);
    let names: Vec<_> = admitted
        .servers
        .iter()
        .map(|r| r.member.name.as_str())
        .collect();
    assert_eq!(names, ["server-a", "server-b"]);
    assert_eq!(
        c.authority.members()[1],
        me,
        "the member recorded the joiner's details"
    );
    // The new certificate opens member lanes.
    let id = NodeIdentity {
        cert_pem: admitted.cert_pem,
        key_pem,
        ca_pem: admitted.ca_pem,
    };
    let mut r = Dialer::new(&id)
        .expect("dialer")
        .requests(c.server.local_addr(), Lane::Control)
        .await
        .expect("lane");
    assert_eq!(r.call(b"hi").await.expect("call"), b"server-b:ih");
}

#[tokio::test]
async fn join_with_a_wrong_secret_is_refused_and_records_nothing() {
    let c = cluster().await;
    let mut secret = c.secret;
    secret[0] ^= 1;
    let token = JoinToken {
        ca: c.ca.digest(),
        secret,
    };
    let (csr, _) = pki::new_csr("server-b").expect("csr");
    let e = join::join(c.server.local_addr(), &token, csr, member("server-b"))
        .await
        .expect_err("refused");
    assert!(
        matches!(&e, JoinError::Refused { reason, .. } if reason.contains("wrong join secret") && reason.contains("quarryd token")),
        "{e}"
    );
    assert_eq!(c.authority.members().len(), 1);
}

#[tokio::test]
async fn join_with_a_token_naming_another_ca_is_refused_by_the_joiner() {
    let c = cluster().await;
    let other = ClusterCa::generate("other").expect("ca");
    let token = JoinToken {
        ca: other.digest(),
        secret: c.secret,
    };
    let (csr, _) = pki::new_csr("server-b").expect("csr");
    let e = join::join(c.server.local_addr(), &token, csr, member("server-b"))
        .await
        .expect_err("refused");
    let msg = e.to_string();
    assert!(msg.contains("does not match the join token"), "{msg}");
    assert_eq!(c.authority.members().len(), 1);
}

#[tokio::test]
async fn a_name_taken_by_another_address_is_refused() {
    let c = cluster().await;
    let token = JoinToken {
        ca: c.ca.digest(),
        secret: c.secret,
    };
    let (csr, _) = pki::new_csr("server-a").expect("csr");
    let mut me = member("server-a");
    me.address = "127.0.0.9".parse().expect("ip");
    let e = join::join(c.server.local_addr(), &token, csr, me)
        .await
        .expect_err("refused");
    assert!(e.to_string().contains("is taken"), "{e}");
}

#[tokio::test]
async fn an_oversized_frame_is_refused_without_reading_it() {
    let c = cluster().await;
    let b = c.ca.issue("server-b").expect("b");
    let mut s = client::dial(
        c.server.local_addr(),
        pki::client_config(&b).expect("tls"),
        Lane::Control,
    )
    .await
    .expect("lane");
    // Announce 4 GB and send nothing more: the server must close the connection at once
    // instead of waiting for (or allocating) the body.
    s.write_all(&u32::MAX.to_be_bytes()).await.expect("write");
    s.flush().await.expect("flush");
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
        .await
        .expect("the server closed the connection within 5 s");
    assert!(
        matches!(n, Ok(0) | Err(_)),
        "expected a closed connection, got {n:?}"
    );
    let _ = codec::MAX_FRAME;
}

#[tokio::test]
async fn a_joiner_one_state_version_ahead_joins_and_one_two_ahead_is_refused() {
    let c = cluster().await; // the authority's cluster runs state v1
    let token = JoinToken {
        ca: c.ca.digest(),
        secret: c.secret,
    };
    let (csr, _) = pki::new_csr("server-c").expect("csr");
    let e = join::join_as(
        c.server.local_addr(),
        &token,
        csr,
        member("server-c"),
        (3, 4),
    )
    .await
    .expect_err("two versions ahead");
    assert!(
        matches!(&e, JoinError::Refused { reason, .. }
            if reason.contains("more than one version ahead") && reason.contains("cluster runs v1")),
        "{e}"
    );
    assert_eq!(c.authority.members().len(), 1, "nothing recorded");

    let (csr, _) = pki::new_csr("server-b").expect("csr");
    let mut me = member("server-b");
    me.address = "127.0.0.2".parse().expect("ip");
    let admitted = join::join_as(c.server.local_addr(), &token, csr, me, (2, 3))
        .await
        .expect("one version ahead joins");
    assert_eq!(admitted.raft_id, 2);
}
