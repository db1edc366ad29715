//! A chitchat 0.11 [`Transport`] over a real UDP socket that seals every datagram.
//!
//! Sending: the chitchat message is serialized, sealed under the next counter of this boot, and
//! sent; a datagram that would exceed the UDP limit is logged and dropped (never a panic).
//! Receiving: a datagram that does not open, opens but is a replay, or opens but does not parse
//! as a chitchat message is dropped and counted; only what passes all three reaches chitchat.
//! The trait returns `anyhow::Result` (chitchat's signature), used for fatal socket errors only.
//!
//! The socket is bound by `open`, or handed in already bound ([`SealedTransport::with_socket`]:
//! quarryd binds it first so that port 0 works and a port in use is reported before chitchat
//! starts).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use chitchat::transport::{Socket, Transport};
use chitchat::{ChitchatMessage, Deserializable, Serializable};
use tracing::{debug, warn};

use super::seal::{self, Header, ReplayWindow, SealError, SealKey};

/// What the transport counted (shared by every socket it opened).
#[derive(Debug, Default)]
pub struct SealStats {
    /// Datagrams sealed and sent.
    pub sent: AtomicU64,
    /// Datagrams that opened, passed the window and parsed.
    pub accepted: AtomicU64,
    /// Plaintext, another key or tampered: dropped unparsed.
    pub not_sealed: AtomicU64,
    /// Replays (duplicate, too old, old generation).
    pub replayed: AtomicU64,
    /// Opened but not a chitchat message.
    pub malformed: AtomicU64,
    /// Would have exceeded the UDP limit: not sent.
    pub oversized: AtomicU64,
    /// Send failed (unreachable network and the like).
    pub send_errors: AtomicU64,
}

impl SealStats {
    fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// One recorded datagram: where it went and its sealed bytes.
pub type Datagram = (SocketAddr, Vec<u8>);

/// A record of sealed datagrams as sent (for diagnostics and replay tests), bounded.
#[derive(Debug, Clone, Default)]
pub struct Capture {
    inner: Arc<Mutex<Vec<Datagram>>>,
}

impl Capture {
    /// At most this many datagrams are kept.
    pub const LIMIT: usize = 20_000;

    /// The datagrams recorded so far: destination and sealed bytes.
    pub fn datagrams(&self) -> Vec<Datagram> {
        self.inner.lock().map(|v| v.clone()).unwrap_or_default()
    }

    fn record(&self, to: SocketAddr, bytes: &[u8]) {
        if let Ok(mut v) = self.inner.lock() {
            if v.len() < Self::LIMIT {
                v.push((to, bytes.to_vec()));
            }
        }
    }
}

/// The sealing transport of one server (one boot).
#[derive(Debug, Clone)]
pub struct SealedTransport {
    key: SealKey,
    sender: String,
    generation: u64,
    stats: Arc<SealStats>,
    capture: Option<Capture>,
    bound: Arc<Mutex<Option<std::net::UdpSocket>>>,
}

impl SealedTransport {
    /// A transport sealing as `sender` in boot `generation`.
    pub fn new(key: SealKey, sender: impl Into<String>, generation: u64) -> Self {
        SealedTransport {
            key,
            sender: sender.into(),
            generation,
            stats: Arc::default(),
            capture: None,
            bound: Arc::default(),
        }
    }

    /// Uses this already bound socket (once) instead of binding the listen address.
    pub fn with_socket(self, socket: std::net::UdpSocket) -> Self {
        if let Ok(mut b) = self.bound.lock() {
            *b = Some(socket);
        }
        self
    }

    /// Also records every sealed datagram sent.
    pub fn with_capture(mut self, capture: Capture) -> Self {
        self.capture = Some(capture);
        self
    }

    /// The counters.
    pub fn stats(&self) -> Arc<SealStats> {
        self.stats.clone()
    }
}

#[async_trait]
impl Transport for SealedTransport {
    async fn open(&self, listen_addr: SocketAddr) -> anyhow::Result<Box<dyn Socket>> {
        if self.sender.len() > 255 {
            anyhow::bail!(SealError::SenderTooLong);
        }
        let pre_bound = self.bound.lock().ok().and_then(|mut b| b.take());
        let socket = match pre_bound {
            Some(s) => {
                s.set_nonblocking(true)?;
                tokio::net::UdpSocket::from_std(s)?
            }
            None => tokio::net::UdpSocket::bind(listen_addr).await?,
        };
        Ok(Box::new(SealedSocket {
            socket,
            t: self.clone(),
            counter: 0,
            window: ReplayWindow::default(),
            buf: vec![0u8; 65_536].into_boxed_slice(),
        }))
    }
}

struct SealedSocket {
    socket: tokio::net::UdpSocket,
    t: SealedTransport,
    counter: u64,
    window: ReplayWindow,
    buf: Box<[u8]>,
}

#[async_trait]
impl Socket for SealedSocket {
    async fn send(&mut self, to: SocketAddr, msg: ChitchatMessage) -> anyhow::Result<()> {
        let payload = msg.serialize_to_vec();
        self.counter += 1;
        let header = Header {
            sender: self.t.sender.clone(),
            generation: self.t.generation,
            counter: self.counter,
        };
        let sealed = match seal::seal(&self.t.key, &header, &payload) {
            Ok(d) => d,
            Err(e) => {
                if matches!(e, SealError::Oversized(_)) {
                    SealStats::bump(&self.t.stats.oversized);
                }
                warn!(to = %to, error = %e, "gossip datagram not sent");
                return Ok(());
            }
        };
        if let Some(c) = &self.t.capture {
            c.record(to, &sealed);
        }
        match self.socket.send_to(&sealed, to).await {
            Ok(_) => SealStats::bump(&self.t.stats.sent),
            Err(e) => {
                SealStats::bump(&self.t.stats.send_errors);
                debug!(to = %to, error = %e, "gossip send failed");
            }
        }
        Ok(())
    }

    async fn recv(&mut self) -> anyhow::Result<(SocketAddr, ChitchatMessage)> {
        loop {
            let (len, from) = match self.socket.recv_from(&mut self.buf).await {
                Ok(r) => r,
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::ConnectionRefused
                            | std::io::ErrorKind::ConnectionReset
                            | std::io::ErrorKind::OutOfMemory
                    ) =>
                {
                    continue
                }
                Err(e) => return Err(e.into()),
            };
            let stats = &self.t.stats;
            let (header, payload) = match seal::open(&self.t.key, &self.buf[..len]) {
                Ok(opened) => opened,
                Err(SealError::Malformed) => {
                    SealStats::bump(&stats.malformed);
                    continue;
                }
                Err(_) => {
                    SealStats::bump(&stats.not_sealed);
                    debug!(from = %from, len, "unsealed gossip datagram dropped");
                    continue;
                }
            };
            if let Err(why) = self.window.check(&header) {
                SealStats::bump(&stats.replayed);
                debug!(from = %from, sender = %header.sender, ?why, "replayed gossip datagram dropped");
                continue;
            }
            match ChitchatMessage::deserialize(&mut payload.as_slice()) {
                Ok(msg) => {
                    SealStats::bump(&stats.accepted);
                    return Ok((from, msg));
                }
                Err(e) => {
                    SealStats::bump(&stats.malformed);
                    warn!(from = %from, error = %e, "sealed gossip datagram does not parse");
                }
            }
        }
    }
}
