//! `lab`: bring the test lab's hosts up by hand, see them, take them down.
//!
//! ```text
//! lab up N [--docker[=1,2]] [--sshd[=1,2]]   build N hosts and leave them running
//! lab status                                 list lab runs on this machine and their hosts
//! lab down [RUN]                             remove kept runs (or one run) and dead leftovers
//! lab probe tcp-serve PORT | udp-serve PORT  echo servers (run inside a host)
//! lab probe tcp|udp ADDR:PORT [MS]           send, expect the echo within MS ms (default 2000)
//! ```

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use quarry_tests::registry::{self, RunState};
use quarry_tests::sweep;
use quarry_tests::Lab;

const USAGE: &str = "usage: lab up N [--docker[=1,2,...]] [--sshd[=1,2,...]] | lab status | \
                     lab down [RUN] | lab probe (tcp-serve|udp-serve) PORT | \
                     lab probe (tcp|udp) ADDR:PORT [MS]";

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let words: Vec<&str> = args.iter().map(String::as_str).collect();
    match words.as_slice() {
        ["up", n, flags @ ..] => up(n, flags),
        ["status"] => status(),
        ["down"] => down(None),
        ["down", run] => down(Some(run)),
        ["probe", "tcp-serve", port] => tcp_serve(port.parse().context("port")?),
        ["probe", "udp-serve", port] => udp_serve(port.parse().context("port")?),
        ["probe", proto @ ("tcp" | "udp"), addr, rest @ ..] => {
            let addr: SocketAddr = addr.parse().context("ADDR:PORT")?;
            let ms = match rest {
                [] => 2000,
                [ms] => ms.parse().context("MS")?,
                _ => bail!("{USAGE}"),
            };
            probe(proto, addr, Duration::from_millis(ms))
        }
        _ => bail!("{USAGE}"),
    }
}

/// Parses `--docker` (every host) or `--docker=1,3` into host indices.
fn hosts_of(flag: &str, n: usize) -> anyhow::Result<Vec<usize>> {
    match flag.split_once('=') {
        None => Ok((1..=n).collect()),
        Some((_, list)) => list
            .split(',')
            .map(|i| i.parse().map_err(|_| anyhow!("bad host number `{i}`")))
            .collect(),
    }
}

fn up(n: &str, flags: &[&str]) -> anyhow::Result<()> {
    let n: usize = n.parse().context("N must be a number of hosts")?;
    let mut builder = Lab::builder(n);
    for flag in flags {
        if flag.starts_with("--docker") {
            builder = builder.docker(hosts_of(flag, n)?);
        } else if flag.starts_with("--sshd") {
            builder = builder.sshd(hosts_of(flag, n)?);
        } else {
            bail!("unknown flag {flag}\n{USAGE}");
        }
    }
    let lab = builder.build()?;
    print!("{}", lab.describe());
    let run = lab.detach()?;
    println!("(kept: `lab down {run}` removes it)");
    Ok(())
}

fn status() -> anyhow::Result<()> {
    let runs = sweep::known_runs();
    if runs.is_empty() {
        println!("no lab runs on this machine");
    }
    for run in runs {
        let state = registry::run_state(&run);
        let summary = std::fs::read_to_string(registry::run_dir(&run).join("hosts.txt"))
            .unwrap_or_else(|_| format!("lab {run} (no summary)\n"));
        println!("[{state:?}] {}", summary.trim_end());
        if state == RunState::Dead {
            for item in sweep::leftovers(&run) {
                println!("    leftover: {item}");
            }
        }
    }
    Ok(())
}

fn down(only: Option<&str>) -> anyhow::Result<()> {
    let mut failed = false;
    for run in sweep::known_runs() {
        let state = registry::run_state(&run);
        let wanted = match only {
            Some(r) => r == run,
            None => state != RunState::Live,
        };
        if !wanted {
            if state == RunState::Live {
                println!("{run}: in use by a running process, left alone");
            }
            continue;
        }
        for p in sweep::teardown(&run) {
            eprintln!("{run}: {p}");
        }
        let left = sweep::leftovers(&run);
        if left.is_empty() {
            println!("{run}: removed");
        } else {
            failed = true;
            println!("{run}: LEFT BEHIND: {}", left.join("; "));
        }
    }
    if failed {
        bail!("some lab runs could not be removed completely");
    }
    Ok(())
}

fn tcp_serve(port: u16) -> anyhow::Result<()> {
    let listener = TcpListener::bind(("0.0.0.0", port)).context("bind")?;
    println!("listening on tcp {port}");
    for conn in listener.incoming() {
        let Ok(mut conn) = conn else { continue };
        let mut buf = Vec::new();
        let _ = conn.read_to_end(&mut buf);
        let _ = conn.write_all(&buf);
    }
    Ok(())
}

fn udp_serve(port: u16) -> anyhow::Result<()> {
    let socket = UdpSocket::bind(("0.0.0.0", port)).context("bind")?;
    println!("listening on udp {port}");
    let mut buf = [0u8; 1500];
    loop {
        let (len, from) = socket.recv_from(&mut buf)?;
        let _ = socket.send_to(&buf[..len], from);
    }
}

/// Sends a message and expects it echoed, retrying until `limit`.
fn probe(proto: &str, addr: SocketAddr, limit: Duration) -> anyhow::Result<()> {
    let msg = format!("probe {} {}", std::process::id(), addr);
    let start = Instant::now();
    let mut last = String::from("no attempt");
    while start.elapsed() < limit {
        let left = limit
            .saturating_sub(start.elapsed())
            .min(Duration::from_millis(300));
        let attempt = match proto {
            "tcp" => tcp_once(addr, &msg, left),
            _ => udp_once(addr, &msg, left),
        };
        match attempt {
            Ok(()) => {
                println!("{proto} {addr}: echoed");
                return Ok(());
            }
            Err(e) => {
                last = e.to_string();
                // A refused connection answers at once: do not spin.
                std::thread::sleep(Duration::from_millis(50).min(left));
            }
        }
    }
    bail!("{proto} {addr}: no echo within {limit:?}; last: {last}")
}

fn tcp_once(addr: SocketAddr, msg: &str, limit: Duration) -> anyhow::Result<()> {
    let mut s = TcpStream::connect_timeout(&addr, limit.max(Duration::from_millis(10)))?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    s.write_all(msg.as_bytes())?;
    s.shutdown(std::net::Shutdown::Write)?;
    let mut back = String::new();
    s.read_to_string(&mut back)?;
    if back == msg {
        Ok(())
    } else {
        bail!("echo was {back:?}")
    }
}

fn udp_once(addr: SocketAddr, msg: &str, limit: Duration) -> anyhow::Result<()> {
    let s = UdpSocket::bind(("0.0.0.0", 0))?;
    s.set_read_timeout(Some(limit.max(Duration::from_millis(10))))?;
    s.send_to(msg.as_bytes(), addr)?;
    let mut buf = [0u8; 1500];
    let (len, from) = s.recv_from(&mut buf)?;
    if from == addr && &buf[..len] == msg.as_bytes() {
        Ok(())
    } else {
        bail!(
            "reply {:?} from {from}",
            String::from_utf8_lossy(&buf[..len])
        )
    }
}
