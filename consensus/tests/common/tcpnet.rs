//! Test support: a cluster over real TCP on loopback, every directed link through a small
//! fault-injecting proxy that can black-hole it (accept, read and discard, forward nothing:
//! how a partition looks to TCP, writes succeed and nothing arrives) or stall it (accept and
//! never read: a peer that stopped reading).
#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use quarry_consensus::storage::{DiskStorage, StorageOptions};
use quarry_consensus::tcp::{serve, TcpConnector, TcpTransport};
use quarry_consensus::{start, transport, ClientError, Handle, NodeConfig, NodeTask};
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::common::{agreed_leader, Kv, KvCommand};

/// What a link does with a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LinkState {
    Up,
    /// Accepts, reads and discards.
    BlackHole,
    /// Accepts and never reads.
    Stall,
}

/// One direction of one link: `from`'s connections to `to` pass here.
struct Link {
    addr: SocketAddr,
    up: watch::Sender<LinkState>,
    /// Connections being forwarded right now.
    forwarding: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

async fn run_link(
    listener: TcpListener,
    target: SocketAddr,
    up: watch::Receiver<LinkState>,
    forwarding: Arc<AtomicUsize>,
) {
    loop {
        let Ok((conn, _)) = listener.accept().await else {
            return;
        };
        let _ = conn.set_nodelay(true);
        tokio::spawn(carry(conn, target, up.clone(), forwarding.clone()));
    }
}

struct Counted(Arc<AtomicUsize>);

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Forwards one connection while the link is up; black-holes it while down. Any change of
/// the link's state ends the connection (the sender reconnects and meets the new state).
async fn carry(
    mut conn: TcpStream,
    target: SocketAddr,
    mut up: watch::Receiver<LinkState>,
    forwarding: Arc<AtomicUsize>,
) {
    // Counted before the state is read, so a cut never misses a connection about to forward.
    forwarding.fetch_add(1, Ordering::SeqCst);
    let mut counted = Some(Counted(forwarding));
    let state = *up.borrow_and_update();
    if state != LinkState::Up {
        counted = None;
    }
    match state {
        LinkState::Up => {}
        LinkState::BlackHole => {
            let mut sink = vec![0u8; 64 << 10];
            tokio::select! {
                _ = async { while matches!(conn.read(&mut sink).await, Ok(n) if n > 0) {} } => {}
                _ = up.changed() => {}
            }
            return;
        }
        LinkState::Stall => {
            let _ = up.changed().await;
            return;
        }
    }
    let _counted = counted;
    let Ok(mut out) = TcpStream::connect(target).await else {
        return;
    };
    let _ = out.set_nodelay(true);
    tokio::select! {
        _ = tokio::io::copy_bidirectional(&mut conn, &mut out) => {}
        _ = up.changed() => {}
    }
}

struct Node {
    handle: Handle<Kv>,
    task: NodeTask,
    server: JoinHandle<std::io::Result<()>>,
}

/// Nodes `1..=total` over TCP; `1..=founders` found the cluster, the others are joiners.
pub struct TcpCluster {
    pub dir: tempfile::TempDir,
    pub founders: Vec<u64>,
    /// Each node's own listening address.
    pub addrs: HashMap<u64, SocketAddr>,
    links: BTreeMap<(u64, u64), Link>,
    nodes: BTreeMap<u64, Node>,
    pub snapshot_every: u64,
}

impl TcpCluster {
    /// Reserves addresses for `total` nodes and starts the proxies between them.
    pub async fn new(total: u64, founders: u64) -> Self {
        let mut addrs = HashMap::new();
        for id in 1..=total {
            addrs.insert(id, node_addr().await);
        }
        let mut links = BTreeMap::new();
        for from in 1..=total {
            for to in 1..=total {
                if from == to {
                    continue;
                }
                let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
                let addr = l.local_addr().unwrap();
                let (up, rx) = watch::channel(LinkState::Up);
                let forwarding = Arc::new(AtomicUsize::new(0));
                let task = tokio::spawn(run_link(l, addrs[&to], rx, forwarding.clone()));
                links.insert(
                    (from, to),
                    Link {
                        addr,
                        up,
                        forwarding,
                        task,
                    },
                );
            }
        }
        TcpCluster {
            dir: tempfile::tempdir().unwrap(),
            founders: (1..=founders).collect(),
            addrs,
            links,
            nodes: BTreeMap::new(),
            snapshot_every: 10_000,
        }
    }

    pub fn config(&self, id: u64) -> NodeConfig {
        let voters = if self.founders.contains(&id) {
            self.founders.clone()
        } else {
            Vec::new()
        };
        let mut cfg = NodeConfig::new(id, voters, self.dir.path().join(format!("n{id}")));
        cfg.tick = Duration::from_millis(50);
        cfg.snapshot_every = self.snapshot_every;
        cfg
    }

    /// Starts (or restarts from its disk) node `id`.
    pub async fn start_node(&mut self, id: u64) {
        let cfg = self.config(id);
        // A killed node's last commit may still be finishing on the blocking pool, holding
        // its storage for a moment.
        let deadline = Instant::now() + Duration::from_secs(5);
        while cfg.data_dir.exists() {
            match DiskStorage::open(&cfg.data_dir, &cfg.voters, StorageOptions::default()) {
                Err(e) if e.is_already_open() && Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(10)).await
                }
                _ => break,
            }
        }
        let listener = bind_retry(self.addrs[&id]).await;
        let book: HashMap<u64, SocketAddr> = self
            .links
            .iter()
            .filter(|((from, _), _)| *from == id)
            .map(|((_, to), l)| (*to, l.addr))
            .collect();
        let (tx, rx) = transport::inbox();
        let t = TcpTransport::new(id, TcpConnector::new(book), tx.clone());
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

    /// Kills node `id` like a crashed process.
    pub async fn kill(&mut self, id: u64) {
        if let Some(n) = self.nodes.remove(&id) {
            n.task.abort();
            n.server.abort();
            let _ = n.task.await;
            let _ = n.server.await;
        }
    }

    pub fn running(&self) -> Vec<u64> {
        self.nodes.keys().copied().collect()
    }

    pub fn handle(&self, id: u64) -> Handle<Kv> {
        self.nodes[&id].handle.clone()
    }

    pub fn handles(&self) -> BTreeMap<u64, Handle<Kv>> {
        self.nodes
            .iter()
            .map(|(&id, n)| (id, n.handle.clone()))
            .collect()
    }

    /// Cuts every link between the groups, both ways (black holes); returns once no
    /// connection across the cut is still being forwarded, so nothing sent afterwards crosses.
    pub async fn partition(&self, a: &[u64], b: &[u64]) {
        let cut: Vec<&Link> = self
            .links
            .iter()
            .filter(|((from, to), _)| {
                (a.contains(from) && b.contains(to)) || (b.contains(from) && a.contains(to))
            })
            .map(|(_, l)| l)
            .collect();
        for l in &cut {
            l.up.send_replace(LinkState::BlackHole);
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        // A connection accepted just before the cut may not have read the state yet: it is
        // counted from its start, so waiting for zero covers it.
        while cut.iter().any(|l| l.forwarding.load(Ordering::SeqCst) > 0) {
            assert!(
                Instant::now() < deadline,
                "the proxies did not drop their connections"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Sets the state of every link into `to`.
    pub fn set_links_to(&self, to: u64, state: LinkState) {
        for (&(_, t), l) in &self.links {
            if t == to {
                l.up.send_replace(state);
            }
        }
    }

    /// Restores every link.
    pub fn heal(&self) {
        for l in self.links.values() {
            l.up.send_replace(LinkState::Up);
        }
    }

    /// Waits until one node among `among` leads and every other one of them follows it.
    pub async fn wait_for_leader_among(&self, among: &[u64], within: Duration) -> u64 {
        let deadline = Instant::now() + within;
        loop {
            let mut st = Vec::new();
            for id in among {
                if let Some(n) = self.nodes.get(id) {
                    if let Ok(s) = n.handle.status().await {
                        st.push(s);
                    }
                }
            }
            if st.len() == among.len() {
                if let Some(l) = agreed_leader(&st.iter().collect::<Vec<_>>()) {
                    return l;
                }
            }
            assert!(
                Instant::now() < deadline,
                "no agreed leader among {among:?} within {within:?}: {st:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub async fn wait_for_leader(&self, within: Duration) -> u64 {
        self.wait_for_leader_among(&self.running(), within).await
    }

    /// Puts through whichever node leads, following hints.
    pub async fn put(&self, key: u64, value: u64, within: Duration) -> Result<(), ClientError> {
        put_via(&self.handles(), key, value, within).await
    }

    /// Waits until node `id` has applied `want` (a linearizable read on it).
    pub async fn wait_has(&self, id: u64, want: &BTreeMap<u64, u64>, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            let w = want.clone();
            let missing = self.nodes[&id]
                .handle
                .read(move |kv: &Kv| w.iter().filter(|(k, v)| kv.map.get(k) != Some(v)).count())
                .await;
            if missing == Ok(0) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "node {id} did not apply {} acknowledged writes within {within:?} ({missing:?} missing)",
                want.len()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The map of node `id` (a linearizable read).
    pub async fn map(&self, id: u64) -> BTreeMap<u64, u64> {
        self.nodes[&id]
            .handle
            .read(|kv: &Kv| kv.map.clone())
            .await
            .expect("read")
    }
}

impl Drop for TcpCluster {
    fn drop(&mut self) {
        for n in self.nodes.values() {
            n.task.abort();
            n.server.abort();
        }
        for l in self.links.values() {
            l.task.abort();
        }
    }
}

/// Puts `key = value` through whichever of `handles` leads, following hints, until `within`.
pub async fn put_via(
    handles: &BTreeMap<u64, Handle<Kv>>,
    key: u64,
    value: u64,
    within: Duration,
) -> Result<(), ClientError> {
    let deadline = Instant::now() + within;
    let ids: Vec<u64> = handles.keys().copied().collect();
    let mut target = ids[0];
    let mut last = ClientError::NoQuorum;
    while Instant::now() < deadline {
        match handles[&target]
            .propose(KvCommand::Put { key, value })
            .await
        {
            Ok(_) => return Ok(()),
            Err(ClientError::NotLeader { leader: Some(l) })
                if l != target && handles.contains_key(&l) =>
            {
                target = l
            }
            Err(e) => {
                last = e;
                target = ids[(ids.iter().position(|&x| x == target).unwrap_or(0) + 1) % ids.len()];
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
    Err(last)
}

/// A loopback address for a node: a port below the kernel's ephemeral range (so no outgoing
/// connection takes it while the node is down) that no other test of this process uses.
async fn node_addr() -> SocketAddr {
    use rand::Rng;
    static USED: std::sync::Mutex<std::collections::BTreeSet<u16>> =
        std::sync::Mutex::new(std::collections::BTreeSet::new());
    loop {
        let port = rand::rng().random_range(10_000..32_000u16);
        if !USED.lock().unwrap().insert(port) {
            continue;
        }
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        if TcpListener::bind(addr).await.is_ok() {
            return addr;
        }
    }
}

pub async fn bind_retry(addr: SocketAddr) -> TcpListener {
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
