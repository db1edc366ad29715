//! Clusters over real TCP on loopback: each test is named after the rule it checks.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::time::Duration;

use common::{Kv, KvCommand};
use quarry_consensus::tcp::{serve, TcpConnector, TcpTransport};
use quarry_consensus::{start, transport, ClientError, Handle, NodeConfig, NodeTask, Role};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio::time::Instant;

struct Node {
    handle: Handle<Kv>,
    task: NodeTask,
    server: JoinHandle<std::io::Result<()>>,
}

struct TcpCluster {
    dir: tempfile::TempDir,
    ids: Vec<u64>,
    addrs: HashMap<u64, SocketAddr>,
    nodes: BTreeMap<u64, Node>,
    snapshot_every: u64,
}

impl TcpCluster {
    /// Binds `n` listeners on loopback; `start_all` starts the nodes.
    async fn new(n: u64) -> Self {
        let mut addrs = HashMap::new();
        for id in 1..=n {
            let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
            addrs.insert(id, l.local_addr().unwrap());
        }
        TcpCluster {
            dir: tempfile::tempdir().unwrap(),
            ids: (1..=n).collect(),
            addrs,
            nodes: BTreeMap::new(),
            snapshot_every: 10_000,
        }
    }

    async fn start_node(&mut self, id: u64) {
        let mut cfg = NodeConfig::new(id, self.ids.clone(), self.dir.path().join(format!("n{id}")));
        cfg.tick = Duration::from_millis(50);
        cfg.snapshot_every = self.snapshot_every;
        let listener = bind_retry(self.addrs[&id]).await;
        let (tx, rx) = transport::inbox();
        let t = TcpTransport::new(id, TcpConnector::new(self.addrs.clone()), tx.clone());
        let server = tokio::spawn(serve(listener, tx));
        let (handle, task) = start(cfg, Kv::default(), t, rx).expect("node starts");
        self.nodes.insert(
            id,
            Node {
                handle,
                task,
                server,
            },
        );
    }

    async fn kill(&mut self, id: u64) {
        if let Some(n) = self.nodes.remove(&id) {
            n.task.abort();
            n.server.abort();
            let _ = n.task.await;
            let _ = n.server.await;
        }
    }

    fn running(&self) -> Vec<u64> {
        self.nodes.keys().copied().collect()
    }

    async fn wait_for_leader(&self, within: Duration) -> u64 {
        let deadline = Instant::now() + within;
        loop {
            let mut leaders = Vec::new();
            for n in self.nodes.values() {
                if let Ok(s) = n.handle.status().await {
                    if s.role == Role::Leader {
                        leaders.push(s.id);
                    }
                }
            }
            if leaders.len() == 1 {
                return leaders[0];
            }
            assert!(
                Instant::now() < deadline,
                "no single leader within {within:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Puts through whichever node leads, following hints.
    async fn put(&self, key: u64, value: u64, within: Duration) -> Result<(), ClientError> {
        let deadline = Instant::now() + within;
        let mut target = *self.nodes.keys().next().unwrap();
        let mut last = ClientError::NoQuorum;
        while Instant::now() < deadline {
            let Some(n) = self.nodes.get(&target) else {
                target = self.running()[0];
                continue;
            };
            match n.handle.propose(KvCommand::Put { key, value }).await {
                Ok(_) => return Ok(()),
                Err(ClientError::NotLeader { leader: Some(l) }) if l != target => target = l,
                Err(e) => {
                    last = e;
                    let r = self.running();
                    target = r[(r.iter().position(|&x| x == target).unwrap_or(0) + 1) % r.len()];
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }
        Err(last)
    }

    async fn wait_has(&self, id: u64, keys: std::ops::Range<u64>, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            let h = &self.nodes[&id].handle;
            let ks = keys.clone();
            let ok = h
                .read(move |kv: &Kv| ks.clone().all(|k| kv.map.get(&k) == Some(&k)))
                .await
                .unwrap_or(false);
            if ok {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "node {id} did not apply keys {keys:?} within {within:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

async fn bind_retry(addr: SocketAddr) -> TcpListener {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match TcpListener::bind(addr).await {
            Ok(l) => return l,
            Err(e) => {
                assert!(Instant::now() < deadline, "cannot rebind {addr}: {e}");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
}

const SECS: fn(u64) -> Duration = Duration::from_secs;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_killed_leader_is_replaced_and_restarted_node_catches_up_without_loss() {
    let mut c = TcpCluster::new(3).await;
    for id in 1..=3 {
        c.start_node(id).await;
    }
    let old = c.wait_for_leader(SECS(10)).await;
    for i in 0..20 {
        c.put(i, i, SECS(10)).await.expect("write acknowledged");
    }
    c.kill(old).await;
    let new = c.wait_for_leader(SECS(10)).await;
    assert_ne!(new, old);
    for i in 20..40 {
        c.put(i, i, SECS(10))
            .await
            .expect("write acknowledged after failover");
    }
    c.start_node(old).await;
    for id in 1..=3 {
        c.wait_has(id, 0..40, SECS(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_five_nodes_commit_while_a_peer_accepts_but_never_reads() {
    let mut c = TcpCluster::new(5).await;
    // Node 5's address is a black hole: it accepts connections and never reads a byte.
    let hole = TcpListener::bind("127.0.0.1:0").await.unwrap();
    c.addrs.insert(5, hole.local_addr().unwrap());
    let held = tokio::spawn(async move {
        let mut keep = Vec::new();
        loop {
            let (s, _) = hole.accept().await.unwrap();
            keep.push(s);
        }
    });
    for id in 1..=4 {
        c.start_node(id).await;
    }
    c.wait_for_leader(SECS(10)).await;
    let started = Instant::now();
    for i in 0..300 {
        c.put(i, i, SECS(10)).await.expect("write acknowledged");
    }
    assert!(
        started.elapsed() < SECS(60),
        "300 writes took {:?} with a stalled peer",
        started.elapsed()
    );
    for id in 1..=4 {
        c.wait_has(id, 0..300, SECS(20)).await;
    }
    held.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_minority_side_never_commits_and_heals() {
    let mut c = TcpCluster::new(3).await;
    for id in 1..=3 {
        c.start_node(id).await;
    }
    let leader = c.wait_for_leader(SECS(10)).await;
    c.put(0, 0, SECS(10)).await.unwrap();
    // Cut the leader off: the others are stopped, so it is a minority of one.
    let others: Vec<u64> = c.running().into_iter().filter(|&x| x != leader).collect();
    for &o in &others {
        c.kill(o).await;
    }
    let h = c.nodes[&leader].handle.clone();
    let r = h.propose(KvCommand::Put { key: 1, value: 1 }).await;
    assert!(r.is_err(), "a minority committed: {r:?}");
    for &o in &others {
        c.start_node(o).await;
    }
    c.wait_for_leader(SECS(10)).await;
    for i in 2..10 {
        c.put(i, i, SECS(10))
            .await
            .expect("write acknowledged after heal");
    }
    for id in 1..=3 {
        c.wait_has(id, 2..10, SECS(20)).await;
    }
}

/// The log is compacted while a follower is down, so it can only catch up through the
/// snapshot lane.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_follower_behind_a_compacted_log_catches_up_by_snapshot() {
    let mut c = TcpCluster::new(3).await;
    c.snapshot_every = 10;
    for id in 1..=3 {
        c.start_node(id).await;
    }
    let leader = c.wait_for_leader(SECS(10)).await;
    let behind = if leader == 1 { 2 } else { 1 };
    c.kill(behind).await;
    for i in 0..60 {
        c.put(i, i, SECS(10)).await.expect("write acknowledged");
    }
    c.start_node(behind).await;
    c.wait_has(behind, 0..60, SECS(20)).await;
    let st = c.nodes[&behind].handle.status().await.unwrap();
    assert!(st.applied >= 60, "{st:?}");
}
