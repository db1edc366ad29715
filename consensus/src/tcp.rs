//! The network transport: Raft messages over byte streams (TCP today, mutual TLS later).
//!
//! # Shape
//!
//! Each peer gets two lanes, each its own connection and its own writer task:
//!
//! - the **message lane** carries everything except snapshots (heartbeats, appends, votes);
//! - the **snapshot lane** carries `MsgSnapshot` alone, so a big snapshot never delays a
//!   heartbeat queued behind it.
//!
//! A frame is a 4-byte big-endian length, then a `Frame` record encoded by
//! [`crate::codec::encode`] (bincode with a format byte) whose payload is the raft message's
//! protobuf bytes. The reader checks the length against [`MAX_FRAME`] *before* allocating.
//!
//! # Invariants
//!
//! - [`Transport::send`] never blocks and never grows memory without bound: each peer's
//!   message lane is a bounded queue ([`PEER_QUEUE`]); when it is full (the peer is slow, dead
//!   or has stopped reading) the new message is dropped and the node is told the peer is
//!   `Unreachable`. Raft resends what matters.
//! - A writer that cannot make progress for [`WRITE_TIMEOUT`] drops its connection and
//!   reconnects with exponential backoff (capped at [`MAX_BACKOFF`]), reporting the peer
//!   unreachable meanwhile; a peer that stops reading therefore costs one queue, nothing more.
//! - A snapshot's outcome is reported as [`Inbound::SnapshotStatus`]: `ok` once its frame was
//!   written and flushed, not ok on any error, so raft-rs resumes or retries replication.
//! - Streams come from a [`Connector`] and an [`Acceptor`], so quarryd can hand in mutual-TLS
//!   streams; the transport itself never looks at addresses beyond asking the connector.
//!
//! # Left out (for now)
//!
//! - Snapshots are sent as one frame (up to [`MAX_FRAME`]), not streamed in chunks.
//! - The receiver does not check that the sender's claimed id matches the connection's peer
//!   identity; with mutual TLS the acceptor is where that check belongs.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use raft::eraftpb::{Message, MessageType};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufWriter};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

use crate::codec;
use crate::transport::{Inbound, Transport};

/// The largest frame a reader accepts (64 MiB, the codec's record limit).
pub const MAX_FRAME: usize = codec::MAX_RECORD;
/// Messages queued per peer before new ones are dropped.
pub const PEER_QUEUE: usize = 1024;
/// How long one write may stall before the connection is dropped.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(2);
/// The longest wait between reconnect attempts.
pub const MAX_BACKOFF: Duration = Duration::from_secs(1);

/// A boxed future, as the connector and acceptor traits return.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Which connection a frame travels on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Lane {
    Messages,
    Snapshots,
}

/// Opens streams to peers.
pub trait Connector: Send + Sync + 'static {
    type Stream: AsyncRead + AsyncWrite + Unpin + Send + 'static;
    fn connect(&self, peer: u64, lane: Lane) -> BoxFuture<'_, io::Result<Self::Stream>>;
}

/// Accepts streams from peers.
pub trait Acceptor: Send + 'static {
    type Stream: AsyncRead + AsyncWrite + Unpin + Send + 'static;
    fn accept(&mut self) -> BoxFuture<'_, io::Result<Self::Stream>>;
}

/// Plain TCP to a fixed address book (loopback tests, the benchmark).
#[derive(Debug, Clone, Default)]
pub struct TcpConnector {
    addrs: Arc<Mutex<HashMap<u64, SocketAddr>>>,
}

impl TcpConnector {
    pub fn new(addrs: HashMap<u64, SocketAddr>) -> Self {
        TcpConnector {
            addrs: Arc::new(Mutex::new(addrs)),
        }
    }

    /// Sets (or changes) a peer's address; the next connection attempt uses it.
    pub fn set_addr(&self, peer: u64, addr: SocketAddr) {
        self.addrs
            .lock()
            .expect("address book lock")
            .insert(peer, addr);
    }
}

impl Connector for TcpConnector {
    type Stream = TcpStream;
    fn connect(&self, peer: u64, _lane: Lane) -> BoxFuture<'_, io::Result<TcpStream>> {
        let addr = self
            .addrs
            .lock()
            .expect("address book lock")
            .get(&peer)
            .copied();
        Box::pin(async move {
            let addr = addr.ok_or_else(|| {
                io::Error::new(io::ErrorKind::NotFound, format!("no address for {peer}"))
            })?;
            let s = TcpStream::connect(addr).await?;
            s.set_nodelay(true)?;
            Ok(s)
        })
    }
}

impl Acceptor for TcpListener {
    type Stream = TcpStream;
    fn accept(&mut self) -> BoxFuture<'_, io::Result<TcpStream>> {
        Box::pin(async move {
            let (s, _) = TcpListener::accept(self).await?;
            s.set_nodelay(true)?;
            Ok(s)
        })
    }
}

/// One frame's record.
#[derive(Debug, Serialize, Deserialize)]
struct Frame {
    from: u64,
    lane: Lane,
    /// The raft message, protobuf.
    message: Vec<u8>,
}

/// Errors of the framing layer.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("io: {0}")]
    Io(#[from] io::Error),
    #[error("frame of {0} bytes is over the limit")]
    TooBig(usize),
    #[error("codec: {0}")]
    Codec(#[from] codec::CodecError),
}

async fn write_frame<W: AsyncWrite + Unpin>(w: &mut W, body: &[u8]) -> io::Result<()> {
    let len = u32::try_from(body.len())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "frame too big"))?;
    w.write_all(&len.to_be_bytes()).await?;
    w.write_all(body).await
}

/// Reads one frame; `None` at a clean end of stream.
async fn read_frame<R: AsyncRead + Unpin>(r: &mut R) -> Result<Option<Message>, FrameError> {
    let mut len = [0u8; 4];
    match r.read_exact(&mut len).await {
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e.into()),
    }
    let len = u32::from_be_bytes(len) as usize;
    if len > MAX_FRAME {
        return Err(FrameError::TooBig(len));
    }
    let mut buf = vec![0u8; len];
    r.read_exact(&mut buf).await?;
    let frame: Frame = codec::decode(&buf)?;
    Ok(Some(codec::decode_message(&frame.message)?))
}

fn encode_frame(from: u64, lane: Lane, msg: &Message) -> Option<Vec<u8>> {
    let message = codec::encode_pb(msg).ok()?;
    codec::encode(&Frame {
        from,
        lane,
        message,
    })
    .ok()
}

/// Serves incoming connections: every frame read becomes an [`Inbound::Message`] on `inbox`
/// (dropped if the inbox is full). Runs until the acceptor fails.
pub async fn serve<A: Acceptor>(mut acceptor: A, inbox: mpsc::Sender<Inbound>) -> io::Result<()> {
    loop {
        let mut stream = acceptor.accept().await?;
        let inbox = inbox.clone();
        tokio::spawn(async move {
            loop {
                match read_frame(&mut stream).await {
                    Ok(Some(m)) => {
                        if inbox.is_closed() {
                            return;
                        }
                        let _ = inbox.try_send(Inbound::Message(m));
                    }
                    Ok(None) => return,
                    Err(e) => {
                        tracing::debug!("raft connection dropped: {e}");
                        return;
                    }
                }
            }
        });
    }
}

struct Peer {
    messages: mpsc::Sender<Message>,
    snapshots: mpsc::Sender<Message>,
}

/// The sending half over a [`Connector`]. Writer tasks start lazily on a peer's first
/// message and end when the transport is dropped.
pub struct TcpTransport<C: Connector> {
    id: u64,
    connector: Arc<C>,
    inbox: mpsc::Sender<Inbound>,
    peers: Mutex<HashMap<u64, Peer>>,
    runtime: tokio::runtime::Handle,
}

impl<C: Connector> std::fmt::Debug for TcpTransport<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TcpTransport")
            .field("id", &self.id)
            .finish()
    }
}

impl<C: Connector> TcpTransport<C> {
    /// A transport for node `id`; feedback (unreachable peers, snapshot outcomes) goes to
    /// `inbox`, the node's own inbound channel. Must be called inside a tokio runtime.
    pub fn new(id: u64, connector: C, inbox: mpsc::Sender<Inbound>) -> Self {
        TcpTransport {
            id,
            connector: Arc::new(connector),
            inbox,
            peers: Mutex::new(HashMap::new()),
            runtime: tokio::runtime::Handle::current(),
        }
    }

    fn spawn_peer(&self, to: u64) -> Peer {
        let (mtx, mrx) = mpsc::channel(PEER_QUEUE);
        let (stx, srx) = mpsc::channel(1);
        self.runtime.spawn(writer(
            self.id,
            to,
            Lane::Messages,
            self.connector.clone(),
            mrx,
            self.inbox.clone(),
        ));
        self.runtime.spawn(writer(
            self.id,
            to,
            Lane::Snapshots,
            self.connector.clone(),
            srx,
            self.inbox.clone(),
        ));
        Peer {
            messages: mtx,
            snapshots: stx,
        }
    }
}

impl<C: Connector> Transport for TcpTransport<C> {
    fn send(&self, msg: Message) {
        let to = msg.to;
        let snapshot = msg.get_msg_type() == MessageType::MsgSnapshot;
        let mut peers = self.peers.lock().expect("peers lock");
        let peer = peers.entry(to).or_insert_with(|| self.spawn_peer(to));
        let lane = if snapshot {
            &peer.snapshots
        } else {
            &peer.messages
        };
        if lane.try_send(msg).is_err() {
            let report = if snapshot {
                Inbound::SnapshotStatus { to, ok: false }
            } else {
                Inbound::Unreachable(to)
            };
            let _ = self.inbox.try_send(report);
        }
    }
}

async fn writer<C: Connector>(
    from: u64,
    to: u64,
    lane: Lane,
    connector: Arc<C>,
    mut queue: mpsc::Receiver<Message>,
    inbox: mpsc::Sender<Inbound>,
) {
    let mut backoff = Duration::from_millis(20);
    // A message taken from the queue but not yet written when the connection failed.
    let mut held: Option<Message> = None;
    loop {
        let stream = match tokio::time::timeout(WRITE_TIMEOUT, connector.connect(to, lane)).await {
            Ok(Ok(s)) => s,
            _ => {
                let _ = inbox.try_send(Inbound::Unreachable(to));
                if let Some(m) = held.take() {
                    report_lost(&inbox, &m);
                }
                // Drop what queued up while the peer was away: it is stale by now.
                while let Ok(m) = queue.try_recv() {
                    report_lost(&inbox, &m);
                }
                if queue.is_closed() && queue.is_empty() {
                    return;
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
                continue;
            }
        };
        backoff = Duration::from_millis(20);
        let mut w = BufWriter::with_capacity(64 << 10, stream);
        loop {
            let msg = match held.take() {
                Some(m) => m,
                None => match queue.recv().await {
                    Some(m) => m,
                    None => return,
                },
            };
            let Some(body) = encode_frame(from, lane, &msg) else {
                report_lost(&inbox, &msg);
                continue;
            };
            let snapshot = msg.get_msg_type() == MessageType::MsgSnapshot;
            let res = tokio::time::timeout(WRITE_TIMEOUT, async {
                write_frame(&mut w, &body).await?;
                // Flush once the queue is empty: a burst goes out in few syscalls.
                if snapshot || queue.is_empty() {
                    w.flush().await?;
                }
                io::Result::Ok(())
            })
            .await;
            match res {
                Ok(Ok(())) => {
                    if snapshot {
                        let _ = inbox.try_send(Inbound::SnapshotStatus { to, ok: true });
                    }
                }
                _ => {
                    if snapshot {
                        report_lost(&inbox, &msg);
                    } else {
                        held = Some(msg);
                    }
                    let _ = inbox.try_send(Inbound::Unreachable(to));
                    break;
                }
            }
        }
    }
}

fn report_lost(inbox: &mpsc::Sender<Inbound>, m: &Message) {
    if m.get_msg_type() == MessageType::MsgSnapshot {
        let _ = inbox.try_send(Inbound::SnapshotStatus {
            to: m.to,
            ok: false,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn oversized_frame_is_refused_before_allocating() {
        let mut bytes: &[u8] = &[0xff, 0xff, 0xff, 0xff];
        match read_frame(&mut bytes).await {
            Err(FrameError::TooBig(n)) => assert_eq!(n, u32::MAX as usize),
            other => panic!("expected TooBig, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn frame_round_trips_a_raft_message() {
        let mut m = Message::default();
        m.set_msg_type(MessageType::MsgAppend);
        m.to = 2;
        m.from = 1;
        m.term = 7;
        let body = encode_frame(1, Lane::Messages, &m).unwrap();
        let mut buf = Vec::new();
        write_frame(&mut buf, &body).await.unwrap();
        let mut r: &[u8] = &buf;
        let got = read_frame(&mut r).await.unwrap().unwrap();
        assert_eq!(got, m);
        assert!(read_frame(&mut r).await.unwrap().is_none());
    }
}
