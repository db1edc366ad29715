//! Test support: a KV state machine and an in-process cluster over the in-memory network.
#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use quarry_consensus::memnet::MemNetwork;
use quarry_consensus::{
    start, transport, ClientError, Handle, IdempotencyKey, MachineError, NodeConfig, NodeError,
    Role, StateMachine, Status,
};
use serde::{Deserialize, Serialize};
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// A map from u64 keys to u64 values.
#[derive(Debug, Default, Clone)]
pub struct Kv {
    pub map: BTreeMap<u64, u64>,
    /// Bulk bytes that only make the snapshot big.
    pub pad: Vec<u8>,
}

/// The deterministic bytes of a `Pad` of `len`.
pub fn pad_bytes(len: u64) -> Vec<u8> {
    (0..len).map(|i| (i * 31 % 251) as u8).collect()
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum KvCommand {
    /// Sets `key`; returns the previous value.
    Put { key: u64, value: u64 },
    /// Adds one to `key`; returns the new value.
    Incr { key: u64 },
    /// Sets the pad to `pad_bytes(len)`; returns `len`.
    Pad { len: u64 },
}

impl StateMachine for Kv {
    type Command = KvCommand;
    type Output = Option<u64>;

    fn apply(&mut self, _index: u64, command: KvCommand) -> Option<u64> {
        match command {
            KvCommand::Put { key, value } => self.map.insert(key, value),
            KvCommand::Incr { key } => {
                let v = self.map.entry(key).or_insert(0);
                *v += 1;
                Some(*v)
            }
            KvCommand::Pad { len } => {
                self.pad = pad_bytes(len);
                Some(len)
            }
        }
    }

    fn snapshot(&self) -> Result<Vec<u8>, MachineError> {
        Ok(quarry_consensus::codec::encode(&(&self.map, &self.pad))?)
    }

    fn restore(&mut self, snapshot: &[u8]) -> Result<(), MachineError> {
        (self.map, self.pad) = quarry_consensus::codec::decode(snapshot)?;
        Ok(())
    }
}

pub type Tweak = Arc<dyn Fn(&mut NodeConfig) + Send + Sync>;

struct Running {
    handle: Handle<Kv>,
    task: JoinHandle<Result<(), NodeError>>,
}

/// N nodes on one in-memory network, each with its own storage directory.
pub struct Cluster {
    pub net: MemNetwork,
    pub dir: tempfile::TempDir,
    pub ids: Vec<u64>,
    pub seed: u64,
    nodes: BTreeMap<u64, Running>,
    tweak: Tweak,
    incarnations: u64,
    /// Nodes started with no voters: they join an existing cluster.
    joiners: BTreeSet<u64>,
}

impl Cluster {
    /// Starts `n` nodes (ids 1..=n) with the default configuration.
    pub fn new(n: u64, seed: u64) -> Self {
        Self::with_config(n, seed, Arc::new(|_| {}))
    }

    pub fn with_config(n: u64, seed: u64, tweak: Tweak) -> Self {
        let mut c = Cluster {
            net: MemNetwork::new(seed),
            dir: tempfile::tempdir().expect("temp dir"),
            ids: (1..=n).collect(),
            seed,
            nodes: BTreeMap::new(),
            tweak,
            incarnations: 0,
            joiners: BTreeSet::new(),
        };
        for id in 1..=n {
            c.start_node(id);
        }
        c
    }

    pub fn config(&self, id: u64) -> NodeConfig {
        let voters = if self.joiners.contains(&id) {
            Vec::new()
        } else {
            self.ids.clone()
        };
        let mut cfg = NodeConfig::new(id, voters, self.dir.path().join(format!("n{id}")));
        cfg.election_seed = Some(self.seed.wrapping_mul(1_000_003) + self.incarnations);
        (self.tweak)(&mut cfg);
        cfg
    }

    /// Starts (or restarts from its disk) node `id`.
    pub fn start_node(&mut self, id: u64) {
        self.try_start_node(id).expect("node starts");
    }

    pub fn try_start_node(&mut self, id: u64) -> Result<(), NodeError> {
        assert!(
            !self.nodes.contains_key(&id),
            "node {id} is already running"
        );
        self.incarnations += 1;
        let cfg = self.config(id);
        let (tx, rx) = transport::inbox();
        let (handle, task) = start(cfg, Kv::default(), self.net.transport(id), rx)?;
        self.net.register(id, tx);
        self.nodes.insert(id, Running { handle, task });
        Ok(())
    }

    /// Starts node `id` on a brand-new storage with no voters: it waits to be added.
    pub fn start_joiner(&mut self, id: u64) {
        self.joiners.insert(id);
        self.start_node(id);
    }

    /// Kills node `id` like a crashed process: nothing more is written.
    pub async fn kill(&mut self, id: u64) {
        if let Some(r) = self.nodes.remove(&id) {
            r.task.abort();
            let _ = r.task.await;
        }
    }

    /// Stops node `id` cleanly.
    pub async fn stop(&mut self, id: u64) {
        if let Some(r) = self.nodes.remove(&id) {
            let _ = r.handle.shutdown().await;
            let _ = r.task.await;
        }
    }

    /// Whether node `id`'s task is still running; if it ended, removes it and returns how.
    pub async fn reap(&mut self, id: u64) -> Option<Result<(), NodeError>> {
        let done = self.nodes.get(&id).is_some_and(|r| r.task.is_finished());
        if !done {
            return None;
        }
        let r = self.nodes.remove(&id)?;
        Some(r.task.await.expect("node task panicked"))
    }

    pub fn running(&self) -> Vec<u64> {
        self.nodes.keys().copied().collect()
    }

    pub fn is_running(&self, id: u64) -> bool {
        self.nodes.contains_key(&id)
    }

    pub fn handle(&self, id: u64) -> Handle<Kv> {
        self.nodes.get(&id).expect("node running").handle.clone()
    }

    pub fn try_handle(&self, id: u64) -> Option<Handle<Kv>> {
        self.nodes.get(&id).map(|r| r.handle.clone())
    }

    pub async fn statuses(&self) -> BTreeMap<u64, Status> {
        let mut out = BTreeMap::new();
        for (&id, r) in &self.nodes {
            if let Ok(s) = r.handle.status().await {
                out.insert(id, s);
            }
        }
        out
    }

    /// Waits until a running node among `among` is leader and the others there agree.
    pub async fn wait_for_leader_among(&self, among: &[u64], within: Duration) -> u64 {
        let deadline = Instant::now() + within;
        loop {
            let st = self.statuses().await;
            let group: Vec<&Status> = st.values().filter(|s| among.contains(&s.id)).collect();
            if let Some(l) = agreed_leader(&group) {
                return l;
            }
            assert!(
                Instant::now() < deadline,
                "no agreed leader among {among:?} within {within:?}: {st:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub async fn wait_for_leader(&self, within: Duration) -> u64 {
        let running = self.running();
        self.wait_for_leader_among(&running, within).await
    }

    /// Proposes through whichever node leads, following hints, until `within` passes.
    pub async fn propose_key(
        &self,
        key: Option<IdempotencyKey>,
        cmd: KvCommand,
        within: Duration,
    ) -> Result<Option<u64>, ClientError> {
        let deadline = Instant::now() + within;
        let mut target = self.running().first().copied().unwrap_or(1);
        let mut last = ClientError::NoQuorum;
        while Instant::now() < deadline {
            let Some(h) = self.try_handle(target) else {
                target = self.next_running(target);
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            };
            let r = match key {
                Some(k) => h.propose_with_key(k, cmd.clone()).await,
                None => h.propose(cmd.clone()).await,
            };
            match r {
                Ok(v) => return Ok(v),
                Err(ClientError::NotLeader { leader: Some(l) }) => target = l,
                Err(e) => {
                    last = e;
                    target = self.next_running(target);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
        Err(last)
    }

    fn next_running(&self, after: u64) -> u64 {
        let r = self.running();
        r.iter()
            .find(|&&x| x > after)
            .or(r.first())
            .copied()
            .unwrap_or(1)
    }

    /// Puts with an idempotency key (retried until `within`).
    pub async fn put(
        &self,
        client: u64,
        seq: u64,
        key: u64,
        value: u64,
    ) -> Result<Option<u64>, ClientError> {
        self.propose_key(
            Some(IdempotencyKey { client, seq }),
            KvCommand::Put { key, value },
            Duration::from_secs(20),
        )
        .await
    }

    /// The map of node `id` once it has applied at least `index`.
    pub async fn local_map(&self, id: u64) -> BTreeMap<u64, u64> {
        // A read through ReadIndex: the node's state once it reflects every acknowledged write.
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            match self.handle(id).read(|kv: &Kv| kv.map.clone()).await {
                Ok(m) => return m,
                Err(e) => assert!(Instant::now() < deadline, "node {id} could not read: {e}"),
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until each node of `ids` has applied at least `index`.
    pub async fn wait_applied_among(&self, ids: &[u64], index: u64, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            let st = self.statuses().await;
            if ids
                .iter()
                .all(|id| st.get(id).is_some_and(|s| s.applied >= index))
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "not every node of {ids:?} applied {index} within {within:?}: {st:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until every running node has applied at least `index`.
    pub async fn wait_applied(&self, index: u64, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            let st = self.statuses().await;
            if st.values().all(|s| s.applied >= index) && st.len() == self.nodes.len() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "not every node applied {index} within {within:?}: {st:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// The leader every status in `group` names, in one term, if one of them leads.
pub fn agreed_leader(group: &[&Status]) -> Option<u64> {
    let l = group.iter().find(|s| s.role == Role::Leader)?;
    group
        .iter()
        .all(|s| s.leader == Some(l.id) && s.term == l.term)
        .then_some(l.id)
}
