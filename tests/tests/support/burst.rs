//! A bounded burst of malformed and oversized requests against every server's API (over TCP
//! with the admin token, and through its local socket, where no token is asked, so bodies are
//! parsed rather than refused for want of one) and its RPC port, while the servers are
//! watched: how long `quarry ps` takes on each, each quarryd's resident memory, and whether any
//! log shows a panic.
//!
//! The attacks, each repeated [`ROUNDS`] times per server and endpoint:
//! - API: random bytes; a truncated request; a body that announces 10 GB and stops; a 3 MiB
//!   JSON body; JSON nested 100,000 deep (answered 4xx, checked); and [`SLOW`] slow
//!   connections per endpoint sending a header byte a second, held through the burst.
//! - RPC: random bytes instead of TLS; [`SLOW`] connections that never start TLS; and, on the
//!   Join lane (the one a peer without a certificate may open, so past TLS and the hello):
//!   frames announcing 16 MiB, truncated frames, and frames of random bytes.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use quarry_tests::{rss_kib, Host};
use tokio::io::AsyncWriteExt;

use super::Cli;

/// Repeats of each attack, per server and endpoint.
pub const ROUNDS: usize = 10;
/// Slow connections held per server and endpoint.
pub const SLOW: usize = 30;

/// What the watchers saw.
#[derive(Debug, Default)]
pub struct Watch {
    /// The slowest `quarry ps` per server, and how many ran.
    pub ps_worst: Vec<(String, Duration, usize)>,
    /// Per server: idle RSS before the burst and the largest seen during it (KiB).
    pub rss: Vec<(String, u64, u64)>,
    /// Answers to the API attacks that should have been a 4xx, and were not.
    pub bad_answers: Vec<String>,
    /// Attacks run.
    pub attacks: usize,
    /// How long the burst lasted.
    pub took: Duration,
}

fn xorshift(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

fn random_bytes(seed: u64, n: usize) -> Vec<u8> {
    let mut s = seed | 1;
    (0..n).map(|_| xorshift(&mut s) as u8).collect()
}

/// An API endpoint: TCP with a token, or the local socket.
#[derive(Clone)]
enum Api {
    Tcp(SocketAddr, String),
    Socket(PathBuf),
}

impl Api {
    fn connect(&self) -> std::io::Result<Box<dyn ReadWrite>> {
        match self {
            Api::Tcp(a, _) => {
                let s = TcpStream::connect_timeout(a, Duration::from_secs(2))?;
                s.set_read_timeout(Some(Duration::from_secs(10)))?;
                Ok(Box::new(s))
            }
            Api::Socket(p) => {
                let s = UnixStream::connect(p)?;
                s.set_read_timeout(Some(Duration::from_secs(10)))?;
                Ok(Box::new(s))
            }
        }
    }

    fn auth(&self) -> String {
        match self {
            Api::Tcp(_, t) => format!("Authorization: Bearer {t}\r\n"),
            Api::Socket(_) => String::new(),
        }
    }

    fn name(&self) -> String {
        match self {
            Api::Tcp(a, _) => format!("http://{a}"),
            Api::Socket(p) => p.display().to_string(),
        }
    }
}

trait ReadWrite: Read + Write + Send {}
impl<T: Read + Write + Send> ReadWrite for T {}

/// Send `head` and `body`, then read the status line (`None`: the server closed without one).
fn http(api: &Api, head: &str, body: &[u8]) -> std::io::Result<Option<u16>> {
    let mut s = api.connect()?;
    s.write_all(head.as_bytes())?;
    // The server may answer (and close) before the whole body is sent: that is fine.
    let _ = s.write_all(body);
    let mut answer = Vec::new();
    let _ = s.read_to_end(&mut answer);
    let text = String::from_utf8_lossy(&answer);
    Ok(text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse::<u16>().ok()))
}

/// One round of the API attacks on `api`; a refusal that is not a 4xx goes to `bad`.
fn api_round(api: &Api, round: usize, bad: &Mutex<Vec<String>>) -> usize {
    let auth = api.auth();
    let mut n = 0;
    let mut expect_4xx = |what: &str, got: std::io::Result<Option<u16>>| {
        n += 1;
        match got {
            Ok(Some(c)) if (400..500).contains(&c) => {}
            other => bad
                .lock()
                .expect("bad")
                .push(format!("{} {what}: {other:?}", api.name())),
        }
    };
    // Random bytes, then close.
    if let Ok(mut s) = api.connect() {
        let _ = s.write_all(&random_bytes(round as u64 + 1, 4096));
    }
    // A truncated request line.
    if let Ok(mut s) = api.connect() {
        let _ = s.write_all(b"GET /v1/ps HTT");
    }
    // A body announcing 10 GB, 64 KiB of it, then the connection closes.
    if let Ok(mut s) = api.connect() {
        let head = format!(
            "POST /v1/env HTTP/1.1\r\nHost: x\r\n{auth}Content-Type: application/json\r\n\
             Content-Length: 10000000000\r\n\r\n"
        );
        let _ = s.write_all(head.as_bytes());
        let _ = s.write_all(&[b'{'; 65536]);
    }
    // 3 MiB of JSON.
    let mut big = br#"{"set":{"A":""#.to_vec();
    big.extend(std::iter::repeat_n(b'x', 3 << 20));
    big.extend_from_slice(br#""}}"#);
    let head = format!(
        "POST /v1/env HTTP/1.1\r\nHost: x\r\n{auth}Content-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n",
        big.len()
    );
    expect_4xx("3 MiB JSON body", http(api, &head, &big));
    // JSON nested 100,000 deep.
    let deep: Vec<u8> = std::iter::repeat_n(b'[', 100_000).collect();
    let head = format!(
        "POST /v1/env HTTP/1.1\r\nHost: x\r\n{auth}Content-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n",
        deep.len()
    );
    expect_4xx("JSON nested 100,000 deep", http(api, &head, &deep));
    n + 3
}

/// Slow API connections: a header byte a second until `stop`.
async fn api_slow(api: Api, stop: Arc<AtomicBool>) {
    let head =
        b"POST /v1/env HTTP/1.1\r\nHost: x\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    let conn: Result<Box<dyn tokio::io::AsyncWrite + Unpin + Send>, _> = match &api {
        Api::Tcp(a, _) => tokio::net::TcpStream::connect(a)
            .await
            .map(|s| Box::new(s) as Box<_>),
        Api::Socket(p) => tokio::net::UnixStream::connect(p)
            .await
            .map(|s| Box::new(s) as Box<_>),
    };
    let Ok(mut s) = conn else { return };
    for b in head.iter().cycle() {
        if stop.load(Ordering::Relaxed) || s.write_all(&[*b]).await.is_err() {
            return;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// RPC connections that never start TLS, held until `stop` (or until the server drops them).
async fn rpc_silent(addr: SocketAddr, stop: Arc<AtomicBool>) {
    use tokio::io::AsyncReadExt;
    let Ok(mut s) = tokio::net::TcpStream::connect(addr).await else {
        return;
    };
    let mut b = [0u8; 1];
    while !stop.load(Ordering::Relaxed) {
        match tokio::time::timeout(Duration::from_millis(200), s.read(&mut b)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return,
            _ => {}
        }
    }
}

/// One round of the RPC attacks on `addr`; `ca` pins the cluster CA for the Join lane.
async fn rpc_round(addr: SocketAddr, ca: quarry_node::pki::CaDigest, round: usize) -> usize {
    use quarry_node::rpc::{client::dial, Lane};
    // Random bytes instead of a TLS handshake.
    if let Ok(mut s) = tokio::net::TcpStream::connect(addr).await {
        let _ = s.write_all(&random_bytes(round as u64 + 7, 4096)).await;
    }
    let tls = quarry_node::pki::join_client_config(ca).expect("join TLS config");
    let frames: [Vec<u8>; 3] = [
        // A frame announcing 16 MiB, and a little of it.
        {
            let mut f = (16u32 << 20).to_be_bytes().to_vec();
            f.extend_from_slice(&[0x55; 1024]);
            f
        },
        // A truncated frame.
        {
            let mut f = 100u32.to_be_bytes().to_vec();
            f.extend_from_slice(&[1; 10]);
            f
        },
        // A frame of random bytes.
        {
            let mut f = 512u32.to_be_bytes().to_vec();
            f.extend(random_bytes(round as u64 + 11, 512));
            f
        },
    ];
    let mut n = 1;
    for f in frames {
        if let Ok(mut s) = dial(addr, tls.clone(), Lane::Join).await {
            let _ = s.write_all(&f).await;
            let _ = s.flush().await;
            // Held a moment, as a slow peer would, then dropped.
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        n += 1;
    }
    n
}

/// Runs the burst against `hosts` while watching them; `pid_of` finds each quarryd.
pub fn burst(
    hosts: &[&Host],
    cli: &Cli,
    token: &str,
    join_token: &str,
    pid_of: impl Fn(&Host) -> u32,
) -> Watch {
    let t0 = Instant::now();
    let pids: Vec<u32> = hosts.iter().map(|h| pid_of(h)).collect();
    let idle: Vec<u64> = pids.iter().map(|p| rss_kib(*p)).collect();
    let stop = Arc::new(AtomicBool::new(false));
    let ca = quarry_node::pki::JoinToken::from_str(join_token)
        .expect("join token")
        .ca;

    // Watchers: `quarry ps` on each server in turn, and each quarryd's RSS.
    let worst = Arc::new(Mutex::new(vec![(Duration::ZERO, 0usize); hosts.len()]));
    let peak = Arc::new(Mutex::new(idle.clone()));
    let watchers = std::thread::scope(|scope| {
        let (stop_ps, worst_ps) = (stop.clone(), worst.clone());
        scope.spawn(move || {
            while !stop_ps.load(Ordering::Relaxed) {
                for (i, h) in hosts.iter().enumerate() {
                    let t = Instant::now();
                    let out = cli.run(h, &["ps"]);
                    let took = if out.status.success() {
                        t.elapsed()
                    } else {
                        Duration::MAX
                    };
                    let mut w = worst_ps.lock().expect("worst");
                    w[i].0 = w[i].0.max(took);
                    w[i].1 += 1;
                    drop(w);
                    // About ten a second in all: a watcher, not a load of its own.
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        });
        let (stop_rss, peak_rss, pids) = (stop.clone(), peak.clone(), pids.clone());
        scope.spawn(move || {
            while !stop_rss.load(Ordering::Relaxed) {
                let mut p = peak_rss.lock().expect("peak");
                for (i, pid) in pids.iter().enumerate() {
                    p[i] = p[i].max(rss_kib(*pid));
                }
                drop(p);
                std::thread::sleep(Duration::from_millis(100));
            }
        });

        // The attackers.
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        let bad = Mutex::new(Vec::new());
        let mut attacks = 0;
        let apis: Vec<Api> = hosts
            .iter()
            .flat_map(|h| {
                [
                    Api::Tcp(SocketAddr::from((h.addr(), 7700)), token.to_owned()),
                    Api::Socket(h.dir().join("api.sock")),
                ]
            })
            .collect();
        let rpcs: Vec<SocketAddr> = hosts
            .iter()
            .map(|h| SocketAddr::from((h.addr(), 7701)))
            .collect();
        let mut slow = Vec::new();
        for api in &apis {
            for _ in 0..SLOW {
                slow.push(rt.spawn(api_slow(api.clone(), stop.clone())));
            }
        }
        for a in &rpcs {
            for _ in 0..SLOW {
                slow.push(rt.spawn(rpc_silent(*a, stop.clone())));
            }
        }
        attacks += slow.len();
        for round in 0..ROUNDS {
            let rpc_jobs: Vec<_> = rpcs
                .iter()
                .map(|a| rt.spawn(rpc_round(*a, ca, round)))
                .collect();
            std::thread::scope(|s| {
                let handles: Vec<_> = apis
                    .iter()
                    .map(|api| {
                        let bad = &bad;
                        s.spawn(move || api_round(api, round, bad))
                    })
                    .collect();
                for h in handles {
                    attacks += h.join().expect("api attacker");
                }
            });
            for j in rpc_jobs {
                attacks += rt.block_on(j).expect("rpc attacker");
            }
        }
        stop.store(true, Ordering::Relaxed);
        for j in slow {
            let _ = rt.block_on(j);
        }
        (bad.into_inner().expect("bad"), attacks)
    });
    let (bad_answers, attacks) = watchers;
    let worst = worst.lock().expect("worst").clone();
    let peak = peak.lock().expect("peak").clone();
    Watch {
        ps_worst: hosts
            .iter()
            .zip(worst)
            .map(|(h, (d, n))| (h.name(), d, n))
            .collect(),
        rss: hosts
            .iter()
            .zip(idle.iter().zip(peak))
            .map(|(h, (i, p))| (h.name(), *i, p))
            .collect(),
        bad_answers,
        attacks,
        took: t0.elapsed(),
    }
}
