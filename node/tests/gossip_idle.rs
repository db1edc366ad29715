//! An idle cluster never shows a false dead: 5 members on loopback for 30 s (the 10-minute
//! idle run belongs to the benchmark). Its own test binary, so nothing else competes for CPU.

use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use chitchat::spawn_chitchat;
use quarry_node::gossip::chitchat_config;
use quarry_node::gossip::seal::SealKey;
use quarry_node::gossip::transport::SealedTransport;

const CLUSTER: &str = "quarry-idle";

fn free_addr() -> SocketAddr {
    let s = UdpSocket::bind("127.0.0.1:0").expect("bind");
    s.local_addr().expect("addr")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_cluster_of_five_marks_no_member_dead_for_30s() {
    let key = SealKey::derive(&[3; 32], CLUSTER);
    let addrs: Vec<SocketAddr> = (0..5).map(|_| free_addr()).collect();
    let mut handles = Vec::new();
    for (i, a) in addrs.iter().enumerate() {
        let t = SealedTransport::new(key.clone(), format!("i{i}"), 1);
        let cfg = chitchat_config(&format!("i{i}"), 1, CLUSTER, *a, &addrs[..1]);
        handles.push(spawn_chitchat(cfg, vec![], &t).await.expect("spawn"));
    }
    let t0 = Instant::now();
    loop {
        let mut all = true;
        for h in &handles {
            all &= h.with_chitchat(|c| c.live_nodes().count()).await == 5;
        }
        if all {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "5 members did not converge in 10 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    println!("converged in {:?}", t0.elapsed());
    let run = Instant::now();
    let mut checks = 0u64;
    while run.elapsed() < Duration::from_secs(30) {
        for (i, h) in handles.iter().enumerate() {
            let (live, dead): (usize, Vec<String>) = h
                .with_chitchat(|c| {
                    (
                        c.live_nodes().count(),
                        c.dead_nodes().map(|id| format!("{id:?}")).collect(),
                    )
                })
                .await;
            assert!(
                dead.is_empty() && live == 5,
                "false alarm after {:?}: i{i} sees {live} live, dead {dead:?}",
                run.elapsed()
            );
        }
        checks += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!("MEASURED false_dead = 0 over {checks} checks of 5 members in 30 s");
    for h in handles {
        h.shutdown().await.expect("shutdown");
    }
}
