//! Sealed gossip on loopback: members converge, a stopped one is seen dead within 5 s and comes
//! back with a higher generation; rogue senders and replayed datagrams never get in.

use std::collections::BTreeSet;
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use chitchat::transport::UdpTransport;
use chitchat::{spawn_chitchat, ChitchatHandle};
use quarry_node::gossip::chitchat_config;
use quarry_node::gossip::seal::SealKey;
use quarry_node::gossip::transport::{Capture, SealedTransport};

const CLUSTER: &str = "quarry-test";
const KEY: [u8; 32] = [7; 32];

fn free_addr() -> SocketAddr {
    let s = UdpSocket::bind("127.0.0.1:0").expect("bind");
    s.local_addr().expect("addr")
}

async fn start(
    name: &str,
    gen: u64,
    addr: SocketAddr,
    seeds: &[SocketAddr],
    t: &SealedTransport,
) -> ChitchatHandle {
    let cfg = chitchat_config(name, gen, CLUSTER, addr, seeds);
    spawn_chitchat(cfg, vec![("role".into(), name.into())], t)
        .await
        .expect("spawn chitchat")
}

async fn live_names(h: &ChitchatHandle) -> BTreeSet<String> {
    h.with_chitchat(|c| c.live_nodes().map(|id| id.node_id.to_string()).collect())
        .await
}

async fn known_names(h: &ChitchatHandle) -> BTreeSet<String> {
    h.with_chitchat(|c| {
        c.node_states()
            .keys()
            .map(|id| id.node_id.to_string())
            .collect()
    })
    .await
}

async fn wait_for<F, Fut>(what: &str, limit: Duration, mut f: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let t0 = Instant::now();
    while !f().await {
        assert!(t0.elapsed() < limit, "{what}: not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    t0.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_converge_detect_a_stopped_one_within_5s_and_see_it_back_with_a_higher_generation()
{
    let key = SealKey::derive(&KEY, CLUSTER);
    let addrs: Vec<SocketAddr> = (0..4).map(|_| free_addr()).collect();
    let mut handles = Vec::new();
    for (i, a) in addrs.iter().enumerate() {
        let t = SealedTransport::new(key.clone(), format!("s{i}"), 1);
        handles.push(Some(start(&format!("s{i}"), 1, *a, &addrs[..1], &t).await));
    }
    let all: BTreeSet<String> = (0..4).map(|i| format!("s{i}")).collect();
    let took = wait_for("4 members converge", Duration::from_secs(10), || {
        let hs: Vec<_> = handles.iter().flatten().map(|h| h.chitchat()).collect();
        let all = all.clone();
        async move {
            for c in hs {
                let names: BTreeSet<String> = c
                    .lock()
                    .await
                    .live_nodes()
                    .map(|id| id.node_id.to_string())
                    .collect();
                if names != all {
                    return false;
                }
            }
            true
        }
    })
    .await;
    println!("converged in {took:?}");

    let stopped = handles[3].take().expect("s3");
    stopped.shutdown().await.expect("shutdown");
    let detect = wait_for("s3 seen dead by the others", Duration::from_secs(5), || {
        let hs: Vec<_> = handles.iter().flatten().map(|h| h.chitchat()).collect();
        async move {
            for c in hs {
                let c = c.lock().await;
                if c.live_nodes().any(|id| &*id.node_id == "s3")
                    || !c.dead_nodes().any(|id| &*id.node_id == "s3")
                {
                    return false;
                }
            }
            true
        }
    })
    .await;
    println!("MEASURED detect_dead_s = {:.2}", detect.as_secs_f64());

    let t = SealedTransport::new(key.clone(), "s3", 2);
    handles[3] = Some(start("s3", 2, addrs[3], &addrs[..1], &t).await);
    wait_for(
        "s3 live again with generation 2",
        Duration::from_secs(10),
        || {
            let c = handles[0].as_ref().expect("s0").chitchat();
            async move {
                c.lock()
                    .await
                    .live_nodes()
                    .any(|id| &*id.node_id == "s3" && id.generation_id == 2)
            }
        },
    )
    .await;
    for h in handles.into_iter().flatten() {
        h.shutdown().await.expect("shutdown");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plaintext_and_wrong_key_rogues_never_appear_and_replays_never_revive_a_member() {
    let key = SealKey::derive(&KEY, CLUSTER);
    let addrs: Vec<SocketAddr> = (0..3).map(|_| free_addr()).collect();
    let mut transports = Vec::new();
    let mut handles = Vec::new();
    let capture = Capture::default();
    for (i, a) in addrs.iter().enumerate() {
        let mut t = SealedTransport::new(key.clone(), format!("m{i}"), 1);
        if i == 2 {
            t = t.with_capture(capture.clone());
        }
        handles.push(start(&format!("m{i}"), 1, *a, &addrs[..1], &t).await);
        transports.push(t);
    }
    let victim = handles.pop().expect("m2");
    wait_for("m0 and m1 see m2 live", Duration::from_secs(10), || {
        let cs: Vec<_> = handles.iter().map(|h| h.chitchat()).collect();
        async move {
            for c in cs {
                if !c.lock().await.live_nodes().any(|id| &*id.node_id == "m2") {
                    return false;
                }
            }
            true
        }
    })
    .await;

    // Rogues: plaintext chitchat with the right cluster id, and sealed with another key.
    let rogue_plain = spawn_chitchat(
        chitchat_config("rogue-plain", 1, CLUSTER, free_addr(), &addrs[..2]),
        vec![],
        &UdpTransport,
    )
    .await
    .expect("rogue");
    let wrong = SealedTransport::new(SealKey::derive(&[9; 32], CLUSTER), "rogue-key", 1);
    let rogue_key = start("rogue-key", 1, free_addr(), &addrs[..2], &wrong).await;
    let s0 = transports[0].stats();
    wait_for(
        "rogue datagrams reach m0 and are dropped",
        Duration::from_secs(5),
        || {
            let n = s0.not_sealed.load(Ordering::Relaxed);
            async move { n >= 10 }
        },
    )
    .await;
    for h in &handles {
        let names = known_names(h).await;
        assert!(
            !names.contains("rogue-plain") && !names.contains("rogue-key"),
            "a rogue got in: {names:?}"
        );
    }
    assert!(
        live_names(&rogue_plain).await.len() == 1 && live_names(&rogue_key).await.len() == 1,
        "rogues learned nothing"
    );
    rogue_plain.shutdown().await.expect("shutdown");
    rogue_key.shutdown().await.expect("shutdown");

    // Replay: m2 stops, is seen dead; every datagram it ever sent is replayed to m0 and m1.
    victim.shutdown().await.expect("shutdown");
    wait_for("m2 seen dead", Duration::from_secs(5), || {
        let cs: Vec<_> = handles.iter().map(|h| h.chitchat()).collect();
        async move {
            for c in cs {
                if c.lock().await.live_nodes().any(|id| &*id.node_id == "m2") {
                    return false;
                }
            }
            true
        }
    })
    .await;
    let versions_before = max_versions(&handles).await;
    let datagrams = capture.datagrams();
    assert!(
        datagrams.len() > 10,
        "captured {} datagrams",
        datagrams.len()
    );
    let raw = UdpSocket::bind(addrs[2]).expect("take m2's address for the replay");
    let replayed_before = transports[0].stats().replayed.load(Ordering::Relaxed)
        + transports[1].stats().replayed.load(Ordering::Relaxed);
    for _round in 0..3 {
        for (to, bytes) in &datagrams {
            if *to == addrs[0] || *to == addrs[1] {
                raw.send_to(bytes, to).expect("replay");
            }
        }
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_millis(500) {
            for h in &handles {
                assert!(
                    !live_names(h).await.contains("m2"),
                    "a replay made m2 live again"
                );
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
    let replayed = transports[0].stats().replayed.load(Ordering::Relaxed)
        + transports[1].stats().replayed.load(Ordering::Relaxed)
        - replayed_before;
    assert!(
        replayed as usize >= datagrams.len() / 2,
        "only {replayed} of {} replays counted",
        datagrams.len()
    );
    let versions_after = max_versions(&handles).await;
    for (k, v) in &versions_before {
        let after = versions_after.get(k).copied().unwrap_or(*v);
        assert!(after >= *v, "{k}: version went backwards {v} -> {after}");
    }
    for h in handles {
        h.shutdown().await.expect("shutdown");
    }
}

async fn max_versions(hs: &[ChitchatHandle]) -> std::collections::BTreeMap<String, u64> {
    let mut out = std::collections::BTreeMap::new();
    for (i, h) in hs.iter().enumerate() {
        let vs: Vec<(String, u64)> = h
            .with_chitchat(|c| {
                c.node_states()
                    .iter()
                    .map(|(id, s)| (format!("{i}:{:?}", id), s.max_version()))
                    .collect()
            })
            .await;
        out.extend(vs);
    }
    out
}
