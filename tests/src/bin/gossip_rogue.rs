//! `gossip-rogue`: what an attacker on a lab host can do to quarry's gossip, for the lab tests.
//!
//! ```text
//! gossip-rogue plain   CLUSTER_ID NAME LISTEN SECS SEED...  chitchat in plaintext (chitchat's
//!                                                           own UDP transport), right cluster id
//! gossip-rogue badkey  CLUSTER_ID NAME LISTEN SECS SEED...  chitchat sealed with a random key
//! gossip-rogue capture FROM OUT SECS                        sniff (AF_PACKET, as tcpdump does)
//!                                                           the UDP datagrams sent from FROM
//!                                                           (ip:port) for SECS; write them to OUT
//! gossip-rogue replay  IN BIND ROUNDS GAP_MS                send every captured datagram to its
//!                                                           destination again, from BIND, ROUNDS
//!                                                           times GAP_MS apart
//! ```
//!
//! `plain` and `badkey` gossip to the seeds (the members' gossip addresses) every round and
//! print, at the end, the nodes they saw (`saw N: ...`). `capture` runs inside the sending
//! host's namespace and keeps only whole (unfragmented) IPv4 datagrams; it prints `captured N`.
//! `replay` prints `replayed N`. The capture file holds one datagram per line: `DEST HEX`.

use std::io::{ErrorKind, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use chitchat::transport::{Transport, UdpTransport};
use chitchat::{spawn_chitchat, ChitchatHandle};
use quarry_node::gossip::chitchat_config;
use quarry_node::gossip::seal::SealKey;
use quarry_node::gossip::transport::SealedTransport;
use socket2::{Domain, Protocol, Socket, Type};

const USAGE: &str = "usage: gossip-rogue plain|badkey CLUSTER_ID NAME LISTEN SECS SEED... | \
                     gossip-rogue capture FROM OUT SECS | gossip-rogue replay IN BIND ROUNDS GAP_MS";

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let words: Vec<&str> = args.iter().map(String::as_str).collect();
    match words.as_slice() {
        [mode @ ("plain" | "badkey"), cluster_id, name, listen, secs, seeds @ ..] => {
            let listen: SocketAddr = listen.parse().context("LISTEN")?;
            let secs: u64 = secs.parse().context("SECS")?;
            let seeds: Vec<SocketAddr> = seeds
                .iter()
                .map(|s| s.parse().context("SEED"))
                .collect::<anyhow::Result<_>>()?;
            let transport: Box<dyn Transport> = if *mode == "plain" {
                Box::new(UdpTransport)
            } else {
                let key = quarry_node::pki::random_bytes(); // a key no member holds
                Box::new(SealedTransport::new(
                    SealKey::derive(&key, cluster_id),
                    (*name).to_owned(),
                    1,
                ))
            };
            rogue(cluster_id, name, listen, secs, &seeds, transport.as_ref()).await
        }
        ["capture", from, out, secs] => {
            let from: SocketAddrV4 = from.parse().context("FROM (ipv4:port)")?;
            let n = capture(
                from,
                out,
                Duration::from_secs(secs.parse().context("SECS")?),
            )?;
            println!("captured {n}");
            Ok(())
        }
        ["replay", input, bind, rounds, gap] => {
            let n = replay(
                input,
                bind.parse().context("BIND")?,
                rounds.parse().context("ROUNDS")?,
                Duration::from_millis(gap.parse().context("GAP_MS")?),
            )?;
            println!("replayed {n}");
            Ok(())
        }
        _ => bail!("{USAGE}"),
    }
}

async fn rogue(
    cluster_id: &str,
    name: &str,
    listen: SocketAddr,
    secs: u64,
    seeds: &[SocketAddr],
    transport: &dyn Transport,
) -> anyhow::Result<()> {
    let cfg = chitchat_config(name, 1, cluster_id, listen, seeds);
    let handle: ChitchatHandle = spawn_chitchat(
        cfg,
        vec![("server".to_owned(), format!("{{\"name\":\"{name}\"}}"))],
        transport,
    )
    .await?;
    let end = Instant::now() + Duration::from_secs(secs);
    let mut tick = tokio::time::interval(Duration::from_millis(150));
    while Instant::now() < end {
        tick.tick().await;
        for s in seeds {
            let _ = handle.gossip(*s);
        }
    }
    let saw: Vec<String> = handle
        .with_chitchat(|c| {
            c.node_states()
                .keys()
                .map(|id| id.node_id.to_string())
                .filter(|n| n != name)
                .collect()
        })
        .await;
    println!("saw {}: {}", saw.len(), saw.join(" "));
    handle.shutdown().await
}

/// ETH_P_ALL: every protocol, incoming and outgoing.
const ETH_P_ALL: u16 = 0x0003;

/// Sniffs the UDP datagrams sent from `from` for `secs` and writes them to `out`.
fn capture(from: SocketAddrV4, out: &str, secs: Duration) -> anyhow::Result<usize> {
    let sock = Socket::new(
        Domain::PACKET,
        Type::DGRAM,
        Some(Protocol::from(i32::from(ETH_P_ALL.to_be()))),
    )
    .context("AF_PACKET socket (needs root)")?;
    sock.set_read_timeout(Some(Duration::from_millis(100)))?;
    let mut file = std::fs::File::create(out).with_context(|| format!("create {out}"))?;
    let mut buf = vec![0u8; 65_536];
    let end = Instant::now() + secs;
    let mut n = 0;
    let mut seen = std::collections::HashSet::new();
    while Instant::now() < end {
        let len = match (&sock).read(&mut buf) {
            Ok(len) => len,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => continue,
            Err(e) => return Err(e.into()),
        };
        let Some((dest, payload)) = udp_from(&buf[..len], from) else {
            continue;
        };
        // An outgoing packet may be seen on more than one tap: keep one copy.
        if !seen.insert(payload.to_vec()) {
            continue;
        }
        writeln!(file, "{dest} {}", hex(payload))?;
        n += 1;
    }
    file.sync_all()?;
    Ok(n)
}

/// The destination and payload of an unfragmented IPv4 UDP packet sent from `from`.
fn udp_from(ip: &[u8], from: SocketAddrV4) -> Option<(SocketAddrV4, &[u8])> {
    if ip.len() < 20 || ip[0] >> 4 != 4 || ip[9] != 17 {
        return None;
    }
    let ihl = usize::from(ip[0] & 0x0f) * 4;
    let frag = u16::from_be_bytes([ip[6], ip[7]]);
    if frag & 0x3fff != 0 {
        return None; // a fragment (more fragments, or an offset)
    }
    let src = Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]);
    let dst = Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]);
    let udp = ip.get(ihl..)?;
    if udp.len() < 8 {
        return None;
    }
    let sport = u16::from_be_bytes([udp[0], udp[1]]);
    let dport = u16::from_be_bytes([udp[2], udp[3]]);
    let ulen = usize::from(u16::from_be_bytes([udp[4], udp[5]]));
    if SocketAddrV4::new(src, sport) != from || ulen < 8 || ulen > udp.len() {
        return None;
    }
    Some((SocketAddrV4::new(dst, dport), &udp[8..ulen]))
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn unhex(s: &str) -> anyhow::Result<Vec<u8>> {
    if s.len() % 2 != 0 {
        bail!("odd hex length");
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).context("hex"))
        .collect()
}

/// Sends every datagram of `input` to its destination from `bind`, `rounds` times.
fn replay(input: &str, bind: SocketAddr, rounds: usize, gap: Duration) -> anyhow::Result<usize> {
    let text = std::fs::read_to_string(input).with_context(|| format!("read {input}"))?;
    let datagrams: Vec<(SocketAddr, Vec<u8>)> = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let (to, h) = l.split_once(' ').context("DEST HEX")?;
            Ok((to.parse()?, unhex(h.trim())?))
        })
        .collect::<anyhow::Result<_>>()?;
    let sock = UdpSocket::bind(bind).with_context(|| format!("bind {bind}"))?;
    let mut n = 0;
    for round in 0..rounds {
        if round > 0 {
            std::thread::sleep(gap); // pacing between rounds, not a wait for a condition
        }
        for (to, bytes) in &datagrams {
            match sock.send_to(bytes, to) {
                Ok(_) => n += 1,
                Err(e) => eprintln!("replay to {to}: {e}"),
            }
        }
    }
    std::io::stdout().flush()?;
    Ok(n)
}
