//! Commit latency and throughput of a 3-node quarry-consensus cluster against a 3-member etcd,
//! in the same run, on the same machine.
//!
//! `cargo bench -p quarry-consensus --bench commit` (`QUARRY_BENCH=quick` for a short run).
//!
//! - `fsync_ms`: p50 of a 4 KiB write plus `fdatasync` in the benchmark's data directory
//!   (overwriting allocated blocks), sampled before, between and after the two systems.
//!   `log_commit_ms` is the p50 of a raft-engine write of one 300-byte entry and a hard state
//!   there, synced: what one `Ready` costs at least (the storage's log, see
//!   `quarry_consensus::storage`). `redb_commit_ms` is the p50 of a redb transaction of one
//!   300-byte value, for comparison: the log lived in redb before (several pages, then one
//!   `fdatasync`, about twice `log_commit_ms`).
//!   `log_commit_2of3_ms` is the p50 until two of three such writes started together are
//!   done (the three nodes share this disk). `io_commit_ms` is the p50 of a commit's I/O
//!   alone: three threads, blocking loopback TCP and those writes, no consensus and no
//!   runtime; it is the floor any 3-node commit on this machine stands on, and `p50_ms_1`
//!   minus it is what quarry adds.
//!   `entries_per_fsync_64` is the leader's log entries per fsynced write at 64 proposers.
//! - quarry: 3 nodes over TCP on loopback (the crate's TCP transport), each with its
//!   storage (raft-engine log, redb snapshots) in the data directory (real fsync), 256-byte
//!   values. Proposers are tasks holding a
//!   [`Handle`] on the leader (in process: quarryd's RPC layer sits in front of this in
//!   production and is not measured here).
//! - etcd: 3 members of Debian's `etcd-server` (`/usr/bin/etcd`) on loopback ports, data in
//!   the same directory, each proposer with its own `etcd-client` connection to the leader,
//!   256-byte values. The members are killed at the end, also on panic.
//! - For each: 1 proposer (p50/p99 latency, ops/s) and 64 concurrent proposers (ops/s), after
//!   a warm-up; keys cycle over 1024 so state stays small.
//!
//! Human-readable lines go to stderr; the last line on stdout is one JSON object.

use std::collections::{BTreeMap, HashMap};
use std::fs::OpenOptions;
use std::io::{Seek, SeekFrom, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use quarry_consensus::tcp::{serve, TcpConnector, TcpTransport};
use quarry_consensus::{
    codec, start, transport, Handle, MachineError, NodeConfig, Role, StateMachine,
};
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;

const VALUE: usize = 256;
const KEYS: u64 = 1024;

/// A map of 256-byte values.
#[derive(Debug, Default)]
struct Blobs {
    map: HashMap<u64, Vec<u8>>,
}

#[derive(Debug, Serialize, Deserialize)]
enum BlobCommand {
    Put {
        key: u64,
        #[serde(with = "codec::bytes")]
        value: Vec<u8>,
    },
}

impl StateMachine for Blobs {
    type Command = BlobCommand;
    type Output = ();

    fn apply(&mut self, _index: u64, command: BlobCommand) {
        let BlobCommand::Put { key, value } = command;
        self.map.insert(key, value);
    }

    fn snapshot(&self) -> Result<Vec<u8>, MachineError> {
        let sorted: BTreeMap<&u64, &Vec<u8>> = self.map.iter().collect();
        Ok(codec::encode(&sorted)?)
    }

    fn restore(&mut self, snapshot: &[u8]) -> Result<(), MachineError> {
        let m: BTreeMap<u64, Vec<u8>> = codec::decode(snapshot)?;
        self.map = m.into_iter().collect();
        Ok(())
    }
}

struct Plan {
    fsync_samples: usize,
    warmup: Duration,
    one: Duration,
    many: Duration,
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

/// `samples` timings (ms) of a 4 KiB write + fdatasync.
fn fsync_samples(dir: &Path, samples: usize) -> Vec<f64> {
    let path = dir.join("fsync-probe");
    let mut f = OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(&path)
        .expect("fsync probe file");
    // Real blocks, not a sparse file: each sample then overwrites allocated space, as a
    // preallocated log (etcd's WAL) or a database page does.
    let block = vec![0x5au8; 4096];
    for _ in 0..64 {
        f.write_all(&block).expect("preallocate");
    }
    f.sync_all().expect("sync");
    let mut t = Vec::with_capacity(samples);
    for i in 0..samples {
        f.seek(SeekFrom::Start(4096 * (i as u64 % 64))).unwrap();
        let t0 = Instant::now();
        f.write_all(&block).unwrap();
        f.sync_data().unwrap();
        t.push(ms(t0.elapsed()));
    }
    let _ = std::fs::remove_file(path);
    t
}

/// p50 of a redb write transaction of one 300-byte value (what a `Ready` costs at least).
fn redb_commit_ms(dir: &Path, samples: usize) -> f64 {
    const T: redb::TableDefinition<'_, u64, &[u8]> = redb::TableDefinition::new("t");
    let path = dir.join("redb-probe.redb");
    let db = redb::Database::create(&path).expect("redb probe");
    let v = vec![7u8; 300];
    let mut t = Vec::with_capacity(samples);
    for i in 0..samples as u64 {
        let t0 = Instant::now();
        let txn = db.begin_write().unwrap();
        {
            let mut table = txn.open_table(T).unwrap();
            table.insert(i, v.as_slice()).unwrap();
        }
        txn.commit().unwrap();
        t.push(ms(t0.elapsed()));
    }
    drop(db);
    let _ = std::fs::remove_file(path);
    t.sort_by(f64::total_cmp);
    percentile(&t, 0.5)
}

/// The raft-engine probe's entry type.
struct Ents;
impl raft_engine::MessageExt for Ents {
    type Entry = raft::eraftpb::Entry;
    fn index(e: &raft::eraftpb::Entry) -> u64 {
        e.index
    }
}

/// p50 of a raft-engine write of one 300-byte entry and a hard state, synced.
fn log_commit_ms(dir: &Path, samples: usize) -> f64 {
    let path = dir.join("log-probe");
    let engine = probe_engine(&path);
    let mut t = Vec::with_capacity(samples);
    for i in 1..=samples as u64 {
        let t0 = Instant::now();
        engine.write(&mut probe_batch(i), true).unwrap();
        t.push(ms(t0.elapsed()));
    }
    drop(engine);
    let _ = std::fs::remove_dir_all(path);
    t.sort_by(f64::total_cmp);
    percentile(&t, 0.5)
}

/// p50 of the time until two of three raft-engine writes (three engines in the data
/// directory, one 300-byte entry and a hard state each, started together) are synced: what
/// the disk alone needs of a commit (two durable copies of three) when the three nodes share
/// it, as here. Concurrent syncs on one disk do not overlap fully, so this is more than
/// `log_commit_ms`; it bounds what any 3-node commit on this machine can reach.
fn log_commit_2of3_ms(dir: &Path, rounds: usize) -> f64 {
    let barrier = Arc::new(std::sync::Barrier::new(3));
    let threads: Vec<_> = (0..3)
        .map(|k| {
            let barrier = barrier.clone();
            let path = dir.join(format!("log-probe-{k}"));
            std::thread::spawn(move || {
                let engine = probe_engine(&path);
                let mut spans = Vec::with_capacity(rounds);
                for i in 1..=rounds as u64 {
                    let mut b = probe_batch(i);
                    barrier.wait();
                    let t0 = Instant::now();
                    engine.write(&mut b, true).unwrap();
                    spans.push((t0, Instant::now()));
                }
                drop(engine);
                let _ = std::fs::remove_dir_all(path);
                spans
            })
        })
        .collect();
    let spans: Vec<Vec<(Instant, Instant)>> = threads
        .into_iter()
        .map(|t| t.join().expect("probe thread"))
        .collect();
    let mut t: Vec<f64> = (0..rounds)
        .map(|i| {
            let start = spans.iter().map(|s| s[i].0).min().expect("three");
            let mut ends: Vec<Instant> = spans.iter().map(|s| s[i].1).collect();
            ends.sort();
            ms(ends[1] - start)
        })
        .collect();
    t.sort_by(f64::total_cmp);
    percentile(&t, 0.5)
}

/// p50 of a commit's I/O alone, with no consensus and no runtime: three threads on loopback
/// TCP, each with its raft-engine in the data directory. The "leader" sends a 300-byte
/// append to both "followers" (blocking sockets, no delay), then writes its own batch
/// ([`probe_batch`], synced); each follower reads the append, writes its batch, synced, and
/// answers 16 bytes. The time is until the leader's write is done and the first answer is
/// read: two durable copies of three, and the two trips. What quarry adds on top of this
/// (raft-rs, encoding, its runtime's task and thread hand-offs) is `p50_ms_1` minus this.
fn io_commit_ms(dir: &Path, rounds: usize) -> f64 {
    use std::io::Read;
    use std::net::{TcpListener, TcpStream};
    let mut to_followers = Vec::new();
    let mut followers = Vec::new();
    for k in 0..2 {
        let l = TcpListener::bind("127.0.0.1:0").expect("probe listener");
        let addr = l.local_addr().expect("probe address");
        let path = dir.join(format!("io-probe-{k}"));
        followers.push(std::thread::spawn(move || {
            let engine = probe_engine(&path);
            let (mut s, _) = l.accept().expect("probe accept");
            s.set_nodelay(true).expect("nodelay");
            let mut append = [0u8; 300];
            let mut i = 0;
            while s.read_exact(&mut append).is_ok() {
                i += 1;
                engine.write(&mut probe_batch(i), true).unwrap();
                if s.write_all(&append[..16]).is_err() {
                    break;
                }
            }
            drop(engine);
            let _ = std::fs::remove_dir_all(path);
        }));
        let s = TcpStream::connect(addr).expect("probe connect");
        s.set_nodelay(true).expect("nodelay");
        to_followers.push(s);
    }
    // Each follower's answers are read on their own thread, so the first one counts.
    let (acks, first) = std::sync::mpsc::channel::<Instant>();
    let readers: Vec<_> = to_followers
        .iter()
        .map(|s| {
            let mut s = s.try_clone().expect("probe socket");
            let acks = acks.clone();
            std::thread::spawn(move || {
                let mut ack = [0u8; 16];
                while s.read_exact(&mut ack).is_ok() {
                    if acks.send(Instant::now()).is_err() {
                        break;
                    }
                }
            })
        })
        .collect();
    drop(acks);
    let path = dir.join("io-probe-leader");
    let engine = probe_engine(&path);
    let append = [7u8; 300];
    let mut t = Vec::with_capacity(rounds);
    for i in 1..=rounds as u64 {
        let t0 = Instant::now();
        for s in &mut to_followers {
            s.write_all(&append).expect("probe append");
        }
        engine.write(&mut probe_batch(i), true).unwrap();
        let one = first.recv().expect("a follower's answer");
        t.push(ms(Instant::now().max(one) - t0));
        first.recv().expect("the other follower's answer");
    }
    // The readers hold clones of these sockets: shut them down, not just drop them.
    for s in &to_followers {
        let _ = s.shutdown(std::net::Shutdown::Both);
    }
    for th in followers.into_iter().chain(readers) {
        th.join().expect("probe thread");
    }
    drop(engine);
    let _ = std::fs::remove_dir_all(path);
    t.sort_by(f64::total_cmp);
    percentile(&t, 0.5)
}

/// A raft-engine for a probe, in `path`.
fn probe_engine(path: &Path) -> raft_engine::Engine {
    let cfg = raft_engine::Config {
        dir: path.to_str().unwrap().to_owned(),
        batch_compression_threshold: raft_engine::ReadableSize(0),
        ..Default::default()
    };
    raft_engine::Engine::open(cfg).expect("raft-engine probe")
}

/// The probes' write `i`: entry `i` (300 bytes) and a hard state committing it.
fn probe_batch(i: u64) -> raft_engine::LogBatch {
    let e = raft::eraftpb::Entry {
        index: i,
        term: 1,
        data: vec![7u8; 300].into(),
        ..Default::default()
    };
    let hs = raft::eraftpb::HardState {
        term: 1,
        vote: 1,
        commit: i,
        ..Default::default()
    };
    let mut b = raft_engine::LogBatch::default();
    b.add_entries::<Ents>(1, &[e]).unwrap();
    b.put_message(1, b"hs".to_vec(), &hs).unwrap();
    b
}

fn value(seed: u64) -> Vec<u8> {
    (0..VALUE as u64)
        .map(|i| (seed.wrapping_mul(31) + i) as u8)
        .collect()
}

/// What one proposer shape measured.
#[derive(Debug, Default)]
struct Run {
    ops: u64,
    secs: f64,
    lat_ms: Vec<f64>,
}

impl Run {
    fn ops_per_s(&self) -> f64 {
        self.ops as f64 / self.secs
    }
    fn p(&mut self, p: f64) -> f64 {
        self.lat_ms.sort_by(f64::total_cmp);
        percentile(&self.lat_ms, p)
    }
}

/// Runs `proposers` concurrent loops of `op` for `dur` (after `warmup`), counting ops and,
/// with one proposer, recording each latency.
async fn drive<F, Fut>(proposers: usize, warmup: Duration, dur: Duration, op: F) -> Run
where
    F: Fn(usize, u64) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = bool> + Send,
{
    let op = Arc::new(op);
    let start = Instant::now() + warmup;
    let end = start + dur;
    let ops = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for p in 0..proposers {
        let (op, ops) = (op.clone(), ops.clone());
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut n = p as u64;
            loop {
                let t0 = Instant::now();
                if t0 >= end {
                    break;
                }
                n += proposers as u64;
                let ok = op(p, n).await;
                let t1 = Instant::now();
                if t0 >= start && t1 <= end {
                    assert!(ok, "an operation failed during the measurement");
                    ops.fetch_add(1, Ordering::Relaxed);
                    if proposers == 1 {
                        lat.push(ms(t1 - t0));
                    }
                }
            }
            lat
        }));
    }
    let mut lat_ms = Vec::new();
    for t in tasks {
        lat_ms.extend(t.await.expect("proposer"));
    }
    Run {
        ops: ops.load(Ordering::Relaxed),
        secs: dur.as_secs_f64(),
        lat_ms,
    }
}

struct QuarryResult {
    one: Run,
    many: Run,
    entries_per_fsync_64: f64,
}

async fn bench_quarry(dir: &Path, plan: &Plan) -> QuarryResult {
    let mut listeners = Vec::new();
    let mut addrs = HashMap::new();
    for id in 1..=3u64 {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        addrs.insert(id, l.local_addr().unwrap());
        listeners.push((id, l));
    }
    let mut handles = BTreeMap::new();
    let mut tasks = Vec::new();
    for (id, l) in listeners {
        let cfg = NodeConfig::new(id, vec![1, 2, 3], dir.join(format!("quarry{id}")));
        let (tx, rx) = transport::inbox();
        let t = TcpTransport::new(id, TcpConnector::new(addrs.clone()), tx.clone());
        tasks.push(tokio::spawn(serve(l, tx)));
        let (h, task) = start(cfg, Blobs::default(), t, rx).expect("quarry node starts");
        handles.insert(id, h);
        tasks.push(tokio::spawn(async move {
            let _ = task.await;
            Ok(())
        }));
    }
    let leader = wait_quarry_leader(&handles).await;
    eprintln!("quarry: leader is node {leader}");
    let h = handles[&leader].clone();

    let put = move |h: Handle<Blobs>| {
        move |_p: usize, n: u64| {
            let h = h.clone();
            async move {
                h.propose(BlobCommand::Put {
                    key: n % KEYS,
                    value: value(n),
                })
                .await
                .is_ok()
            }
        }
    };
    let one = drive(1, plan.warmup, plan.one, put(h.clone())).await;
    let before = h.stats().await.expect("stats");
    let many = drive(64, plan.warmup, plan.many, put(h.clone())).await;
    let after = h.stats().await.expect("stats");
    let entries_per_fsync_64 =
        (after.entries - before.entries) as f64 / (after.writes - before.writes).max(1) as f64;
    for h in handles.values() {
        let _ = h.shutdown().await;
    }
    for t in tasks {
        t.abort();
    }
    QuarryResult {
        one,
        many,
        entries_per_fsync_64,
    }
}

async fn wait_quarry_leader(handles: &BTreeMap<u64, Handle<Blobs>>) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        for h in handles.values() {
            if let Ok(s) = h.status().await {
                if s.role == Role::Leader {
                    return s.id;
                }
            }
        }
        assert!(Instant::now() < deadline, "no quarry leader within 20 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The etcd members; killed (and reaped) when dropped, also while unwinding from a panic.
struct Etcd {
    children: Vec<Child>,
    clients: Vec<String>,
}

impl Drop for Etcd {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a: SocketAddr| a.port())
        .expect("a free loopback port")
}

fn start_etcd(dir: &Path) -> Etcd {
    let bin = PathBuf::from("/usr/bin/etcd");
    assert!(
        bin.exists(),
        "/usr/bin/etcd is missing: install Debian's etcd-server (scripts/setup does)"
    );
    let peers: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let clients: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let initial: Vec<String> = peers
        .iter()
        .enumerate()
        .map(|(i, p)| format!("m{i}=http://127.0.0.1:{p}"))
        .collect();
    let urls: Vec<String> = clients
        .iter()
        .map(|p| format!("http://127.0.0.1:{p}"))
        .collect();
    let mut etcd = Etcd {
        children: Vec::new(),
        clients: urls.clone(),
    };
    for (i, (peer, url)) in peers.iter().zip(&urls).enumerate() {
        let log = std::fs::File::create(dir.join(format!("etcd{i}.log"))).expect("etcd log");
        let child = Command::new(&bin)
            .args([
                "--name",
                &format!("m{i}"),
                "--data-dir",
                dir.join(format!("etcd{i}")).to_str().unwrap(),
                "--listen-peer-urls",
                &format!("http://127.0.0.1:{peer}"),
                "--initial-advertise-peer-urls",
                &format!("http://127.0.0.1:{peer}"),
                "--listen-client-urls",
                url,
                "--advertise-client-urls",
                url,
                "--initial-cluster",
                &initial.join(","),
                "--initial-cluster-state",
                "new",
                "--initial-cluster-token",
                "quarry-bench",
                "--logger",
                "zap",
                "--log-level",
                "warn",
            ])
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("etcd starts");
        etcd.children.push(child);
    }
    etcd
}

/// The client URL of the etcd leader.
async fn etcd_leader(etcd: &Etcd) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        for url in &etcd.clients {
            if let Ok(mut c) = etcd_client::Client::connect([url.as_str()], None).await {
                if let Ok(s) = c.status().await {
                    let me = s.header().map(|h| h.member_id()).unwrap_or(0);
                    if s.leader() != 0 && s.leader() == me {
                        return url.clone();
                    }
                }
            }
        }
        assert!(Instant::now() < deadline, "no etcd leader within 30 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn bench_etcd(dir: &Path, plan: &Plan) -> (Run, Run) {
    let etcd = start_etcd(dir);
    let leader = etcd_leader(&etcd).await;
    eprintln!("etcd: leader at {leader}");
    let connect = |n: usize| {
        let leader = leader.clone();
        async move {
            let mut out = Vec::new();
            for _ in 0..n {
                let c = etcd_client::Client::connect([leader.as_str()], None)
                    .await
                    .expect("etcd client connects");
                out.push(c.kv_client());
            }
            Arc::new(out)
        }
    };
    let put = |clients: Arc<Vec<etcd_client::KvClient>>| {
        move |p: usize, n: u64| {
            let mut c = clients[p].clone();
            async move {
                c.put(format!("k{}", n % KEYS), value(n), None)
                    .await
                    .is_ok()
            }
        }
    };
    let one = drive(1, plan.warmup, plan.one, put(connect(1).await)).await;
    let many = drive(64, plan.warmup, plan.many, put(connect(64).await)).await;
    drop(etcd);
    (one, many)
}

fn main() {
    let quick = std::env::var("QUARRY_BENCH").is_ok_and(|v| v == "quick");
    let plan = if quick {
        Plan {
            fsync_samples: 150,
            warmup: Duration::from_millis(500),
            one: Duration::from_secs(3),
            many: Duration::from_secs(3),
        }
    } else {
        Plan {
            fsync_samples: 600,
            warmup: Duration::from_secs(1),
            one: Duration::from_secs(10),
            many: Duration::from_secs(10),
        }
    };
    let dir = tempfile::Builder::new()
        .prefix("quarry-bench-commit")
        .tempdir()
        .expect("temp dir");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");

    // The disk is shared with whatever else runs on the machine: sample it before, between
    // and after the two systems, and take the p50 of all samples.
    let mut fs = fsync_samples(dir.path(), plan.fsync_samples / 3);
    let redb_ms = redb_commit_ms(dir.path(), plan.fsync_samples);
    eprintln!("redb commit (one 300-byte value) p50: {redb_ms:.2} ms");
    let log_ms = log_commit_ms(dir.path(), plan.fsync_samples);
    eprintln!("raft-engine write (one 300-byte entry + hard state) p50: {log_ms:.2} ms");
    let floor_ms = log_commit_2of3_ms(dir.path(), plan.fsync_samples / 3);
    eprintln!(
        "two of three such writes at once (the disk's share of a commit) p50: {floor_ms:.2} ms"
    );
    let io_ms = io_commit_ms(dir.path(), plan.fsync_samples);
    eprintln!(
        "a commit's I/O alone (loopback TCP and those writes, no consensus) p50: {io_ms:.2} ms"
    );
    let mut q = rt.block_on(bench_quarry(dir.path(), &plan));
    fs.extend(fsync_samples(dir.path(), plan.fsync_samples / 3));
    let (mut e1, e64) = rt.block_on(bench_etcd(dir.path(), &plan));
    fs.extend(fsync_samples(dir.path(), plan.fsync_samples / 3));
    fs.sort_by(f64::total_cmp);
    let fsync = percentile(&fs, 0.5);
    eprintln!(
        "fsync (4 KiB + fdatasync) p50: {fsync:.2} ms ({} samples in {})",
        fs.len(),
        dir.path().display()
    );

    let (qp50, qp99) = (q.one.p(0.5), q.one.p(0.99));
    let (ep50, ep99) = (e1.p(0.5), e1.p(0.99));
    eprintln!(
        "quarry 1 proposer: p50 {qp50:.2} ms, p99 {qp99:.2} ms, {:.0} ops/s ({:.2} x fsync, {:.2} x two of three writes, {:.2} x the I/O alone)",
        q.one.ops_per_s(),
        qp50 / fsync,
        qp50 / floor_ms,
        qp50 / io_ms
    );
    eprintln!(
        "quarry 64 proposers: {:.0} ops/s, {:.1} entries per fsync on the leader",
        q.many.ops_per_s(),
        q.entries_per_fsync_64
    );
    eprintln!(
        "etcd 1 proposer: p50 {ep50:.2} ms, p99 {ep99:.2} ms, {:.0} ops/s",
        e1.ops_per_s()
    );
    eprintln!("etcd 64 proposers: {:.0} ops/s", e64.ops_per_s());
    eprintln!(
        "quarry/etcd ops/s: {:.2} (1), {:.2} (64)",
        q.one.ops_per_s() / e1.ops_per_s(),
        q.many.ops_per_s() / e64.ops_per_s()
    );
    println!(
        "{{\"fsync_ms\":{},\"p50_ms_1\":{},\"p99_ms_1\":{},\"ops_per_s_1\":{},\"ops_per_s_64\":{},\"entries_per_fsync_64\":{},\"redb_commit_ms\":{},\"log_commit_ms\":{},\"log_commit_2of3_ms\":{},\"io_commit_ms\":{},\"etcd_p50_ms_1\":{},\"etcd_p99_ms_1\":{},\"etcd_ops_per_s_1\":{},\"etcd_ops_per_s_64\":{},\"quick\":{}}}",
        round2(fsync),
        round2(qp50),
        round2(qp99),
        q.one.ops_per_s().round(),
        q.many.ops_per_s().round(),
        round2(q.entries_per_fsync_64),
        round2(redb_ms),
        round2(log_ms),
        round2(floor_ms),
        round2(io_ms),
        round2(ep50),
        round2(ep99),
        e1.ops_per_s().round(),
        e64.ops_per_s().round(),
        quick
    );
}
