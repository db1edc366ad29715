//! The gossip member's liveness data: converge, a stopped member is dead within 5 s on the
//! watch channel, and back alive with a higher generation.

use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use quarry_node::gossip::member::{GossipMember, LiveState, Liveness};
use quarry_node::gossip::record::{next_generation, ServerRecord, StatusSummary};
use quarry_node::gossip::seal::SealKey;
use quarry_node::types::ServerId;

const CLUSTER: &str = "quarry-member";

fn free_addr() -> SocketAddr {
    UdpSocket::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
}

fn record(name: &str, generation: u64, addr: SocketAddr) -> ServerRecord {
    ServerRecord {
        name: ServerId(name.into()),
        address: addr.ip(),
        api_port: 7700,
        rpc_port: 7701,
        gossip_port: addr.port(),
        memory: 1 << 30,
        tags: vec!["ssd".into()],
        raft_id: None,
        generation,
        status: StatusSummary::default(),
        build: quarry_node::version::build(),
        state_versions: quarry_node::version::SUPPORTED,
    }
}

async fn wait_liveness(
    rx: &mut tokio::sync::watch::Receiver<Liveness>,
    what: &str,
    limit: Duration,
    ok: impl Fn(&Liveness) -> bool,
) -> Duration {
    let t0 = Instant::now();
    let reached = matches!(
        tokio::time::timeout(limit, rx.wait_for(|l| ok(l))).await,
        Ok(Ok(_))
    );
    let last = rx.borrow().clone();
    assert!(reached, "{what}: not within {limit:?}; last seen {last:#?}");
    t0.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn member_liveness_shows_dead_within_5s_and_a_restart_with_a_higher_generation() {
    let key = SealKey::derive(&[5; 32], CLUSTER);
    let dir = tempfile::tempdir().expect("tempdir");
    let addrs: Vec<SocketAddr> = (0..3).map(|_| free_addr()).collect();
    let mut members = Vec::new();
    let mut gens = Vec::new();
    for (i, a) in addrs.iter().enumerate() {
        let g = next_generation(&dir.path().join(format!("gen{i}"))).expect("generation");
        gens.push(g);
        let r = record(&format!("g{i}"), g, *a);
        members.push(Some(
            GossipMember::start(r, CLUSTER, key.clone(), *a, &addrs[..1], None)
                .await
                .expect("start"),
        ));
    }
    let mut rx = members[0].as_ref().expect("g0").liveness();
    let took = wait_liveness(
        &mut rx,
        "3 alive with records",
        Duration::from_secs(10),
        |l| {
            l.len() == 3
                && l.values().all(|s| {
                    s.state == LiveState::Alive
                        && s.record.as_ref().is_some_and(|r| r.tags == ["ssd"])
                })
        },
    )
    .await;
    println!("converged in {took:?}");

    members[2].take().expect("g2").shutdown().await;
    let dead = wait_liveness(&mut rx, "g2 dead", Duration::from_secs(5), |l| {
        l.get(&ServerId("g2".into()))
            .is_some_and(|s| s.state == LiveState::Dead)
    })
    .await;
    println!("MEASURED member detect_dead_s = {:.2}", dead.as_secs_f64());

    let g = next_generation(&dir.path().join("gen2")).expect("generation");
    assert!(g > gens[2]);
    members[2] = Some(
        GossipMember::start(
            record("g2", g, addrs[2]),
            CLUSTER,
            key.clone(),
            addrs[2],
            &addrs[..1],
            None,
        )
        .await
        .expect("restart"),
    );
    wait_liveness(
        &mut rx,
        "g2 alive with the new generation",
        Duration::from_secs(10),
        |l| {
            l.get(&ServerId("g2".into()))
                .is_some_and(|s| s.state == LiveState::Alive && s.generation == g)
        },
    )
    .await;
    for m in members.into_iter().flatten() {
        m.shutdown().await;
    }
}
