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
//! A snapshot is streamed: a start frame (the `MsgSnapshot` without its data, and the data's
//! length), then the data in chunks of at most [`SNAPSHOT_CHUNK`] (1 MiB), each chunk frame
//! built and written on its own. The reader refuses an announced length over
//! [`MAX_SNAPSHOT`], reassembles the chunks (refusing more bytes than announced, or a stream
//! that ends inside a snapshot), and only then hands the node the whole message.
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
//! - A snapshot's outcome is reported as [`Inbound::SnapshotStatus`]: `ok` only once its last
//!   chunk was written and flushed, not ok on any error, so raft-rs resumes or retries
//!   replication. Each chunk has its own [`WRITE_TIMEOUT`]: a big snapshot on a slow link
//!   goes through, a stalled one is cut off.
//! - Streams come from a [`Connector`] and an [`Acceptor`], so any stream (a mutual-TLS one
//!   too) can carry it; the transport itself never looks at addresses beyond asking the
//!   connector. quarryd does not use this transport: it carries Raft messages on its own
//!   node RPC's Raft lane (`quarry_node::cluster::transport`), beside its other lanes.
//!
//! # Left out (for now)
//!
//! - Snapshots larger than memory: raft-rs hands the whole snapshot over in one message, and
//!   the reader reassembles it in memory before the node restores it (up to [`MAX_SNAPSHOT`]).
//! - An acknowledgement from the receiver: `ok` means written to the connection; raft-rs's
//!   probing after a snapshot catches one that was lost after that.
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
/// Snapshot data travels in chunks of at most this many bytes (1 MiB).
pub const SNAPSHOT_CHUNK: usize = 1 << 20;
/// The largest snapshot a reader reassembles (the codec's record limit: a bigger one could not
/// be restored anyway).
pub const MAX_SNAPSHOT: usize = codec::MAX_RECORD;
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
enum Frame {
    /// A raft message (protobuf), whole.
    Message { from: u64, message: Vec<u8> },
    /// The start of a snapshot: the `MsgSnapshot` (protobuf) with its data taken out, and the
    /// length of that data, which follows in [`Frame::SnapshotChunk`]s.
    SnapshotStart {
        from: u64,
        message: Vec<u8>,
        len: u64,
    },
    /// The next piece of the data of the snapshot started last on this connection.
    SnapshotChunk { data: Vec<u8> },
}

/// Errors of the framing layer.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("io: {0}")]
    Io(#[from] io::Error),
    #[error("frame of {0} bytes is over the limit")]
    TooBig(usize),
    #[error("snapshot of {0} bytes is over the limit of {MAX_SNAPSHOT} bytes")]
    SnapshotTooBig(u64),
    #[error("protocol: {0}")]
    Protocol(&'static str),
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
async fn read_frame<R: AsyncRead + Unpin>(r: &mut R) -> Result<Option<Frame>, FrameError> {
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
    Ok(Some(codec::decode(&buf)?))
}

/// Turns a connection's frames back into raft messages, reassembling snapshots.
#[derive(Default)]
struct Reader {
    /// The snapshot being received: its message, the data so far, the announced length.
    snapshot: Option<(Message, Vec<u8>, usize)>,
}

impl Reader {
    /// Reads frames until a whole message is there; `None` at a clean end of stream.
    async fn next<R: AsyncRead + Unpin>(
        &mut self,
        r: &mut R,
    ) -> Result<Option<Message>, FrameError> {
        loop {
            let Some(frame) = read_frame(r).await? else {
                return match self.snapshot {
                    Some(_) => Err(FrameError::Protocol("stream ended inside a snapshot")),
                    None => Ok(None),
                };
            };
            match frame {
                Frame::Message { message, .. } => {
                    if self.snapshot.is_some() {
                        return Err(FrameError::Protocol("message inside a snapshot"));
                    }
                    return Ok(Some(codec::decode_message(&message)?));
                }
                Frame::SnapshotStart { message, len, .. } => {
                    if self.snapshot.is_some() {
                        return Err(FrameError::Protocol("snapshot inside a snapshot"));
                    }
                    if len > MAX_SNAPSHOT as u64 {
                        return Err(FrameError::SnapshotTooBig(len));
                    }
                    let len = len as usize;
                    let m = codec::decode_message(&message)?;
                    if m.get_msg_type() != MessageType::MsgSnapshot {
                        return Err(FrameError::Protocol("snapshot start without a snapshot"));
                    }
                    self.snapshot = Some((m, Vec::with_capacity(len.min(SNAPSHOT_CHUNK)), len));
                }
                Frame::SnapshotChunk { data } => {
                    let Some((_, buf, len)) = &mut self.snapshot else {
                        return Err(FrameError::Protocol("snapshot chunk outside a snapshot"));
                    };
                    if buf.len() + data.len() > *len {
                        return Err(FrameError::Protocol("snapshot longer than announced"));
                    }
                    buf.extend_from_slice(&data);
                }
            }
            if self
                .snapshot
                .as_ref()
                .is_some_and(|(_, b, len)| b.len() == *len)
            {
                let (mut m, data, _) = self.snapshot.take().expect("checked");
                m.mut_snapshot().data = data.into();
                return Ok(Some(m));
            }
        }
    }
}

/// Writes `msg` as its frames: one for a message; for a snapshot, a start frame and the data
/// in chunks of at most [`SNAPSHOT_CHUNK`] bytes, each written within [`WRITE_TIMEOUT`]
/// (so a big snapshot on a slow link is not cut off, a stalled one is). Flushes a snapshot,
/// and a message when `flush`.
async fn write_message<W: AsyncWrite + Unpin>(
    w: &mut W,
    from: u64,
    msg: &Message,
    flush: bool,
) -> io::Result<()> {
    let timed = |r: Result<io::Result<()>, tokio::time::error::Elapsed>| {
        r.unwrap_or_else(|_| Err(io::Error::new(io::ErrorKind::TimedOut, "write stalled")))
    };
    let bad = |e: codec::CodecError| io::Error::new(io::ErrorKind::InvalidData, e.to_string());
    if msg.get_msg_type() != MessageType::MsgSnapshot {
        let body = codec::encode(&Frame::Message {
            from,
            message: codec::encode_pb(msg).map_err(bad)?,
        })
        .map_err(bad)?;
        return timed(
            tokio::time::timeout(WRITE_TIMEOUT, async {
                write_frame(w, &body).await?;
                if flush {
                    w.flush().await?;
                }
                Ok(())
            })
            .await,
        );
    }
    let data = &msg.get_snapshot().data;
    let mut head = msg.clone();
    head.mut_snapshot().data = Default::default();
    let body = codec::encode(&Frame::SnapshotStart {
        from,
        message: codec::encode_pb(&head).map_err(bad)?,
        len: data.len() as u64,
    })
    .map_err(bad)?;
    timed(tokio::time::timeout(WRITE_TIMEOUT, write_frame(w, &body)).await)?;
    for chunk in data.chunks(SNAPSHOT_CHUNK) {
        let body = codec::encode(&Frame::SnapshotChunk {
            data: chunk.to_vec(),
        })
        .map_err(bad)?;
        timed(tokio::time::timeout(WRITE_TIMEOUT, write_frame(w, &body)).await)?;
    }
    timed(tokio::time::timeout(WRITE_TIMEOUT, w.flush()).await)
}

/// Serves incoming connections: every message read becomes an [`Inbound::Message`] on
/// `inbox` (a message is dropped if the inbox is full; a reassembled snapshot waits for
/// room). Runs until the acceptor fails.
pub async fn serve<A: Acceptor>(mut acceptor: A, inbox: mpsc::Sender<Inbound>) -> io::Result<()> {
    loop {
        let mut stream = acceptor.accept().await?;
        let inbox = inbox.clone();
        tokio::spawn(async move {
            let mut reader = Reader::default();
            loop {
                match reader.next(&mut stream).await {
                    Ok(Some(m)) => {
                        if inbox.is_closed() {
                            return;
                        }
                        if m.get_msg_type() == MessageType::MsgSnapshot {
                            let _ = inbox.send(Inbound::Message(m)).await;
                        } else {
                            let _ = inbox.try_send(Inbound::Message(m));
                        }
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
            let snapshot = msg.get_msg_type() == MessageType::MsgSnapshot;
            // Flush once the queue is empty: a burst goes out in few syscalls.
            let res = write_message(&mut w, from, &msg, queue.is_empty()).await;
            match res {
                Ok(()) => {
                    if snapshot {
                        let _ = inbox.try_send(Inbound::SnapshotStatus { to, ok: true });
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::InvalidData => {
                    tracing::warn!(to, "raft message not encodable, dropped: {e}");
                    report_lost(&inbox, &msg);
                }
                Err(_) => {
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
        let mut buf = Vec::new();
        write_message(&mut buf, 1, &m, true).await.unwrap();
        let mut r: &[u8] = &buf;
        let mut reader = Reader::default();
        assert_eq!(reader.next(&mut r).await.unwrap().unwrap(), m);
        assert!(reader.next(&mut r).await.unwrap().is_none());
    }

    fn snapshot_message(len: usize) -> Message {
        let mut m = Message::default();
        m.set_msg_type(MessageType::MsgSnapshot);
        m.to = 2;
        m.from = 1;
        m.term = 3;
        let snap = m.mut_snapshot();
        snap.mut_metadata().index = 42;
        snap.mut_metadata().term = 3;
        snap.mut_metadata().mut_conf_state().voters = vec![1, 2, 3];
        snap.data = (0..len)
            .map(|i| (i * 31 % 251) as u8)
            .collect::<Vec<u8>>()
            .into();
        m
    }

    #[tokio::test]
    async fn snapshot_travels_in_bounded_chunks_and_is_reassembled() {
        let len = 5 * SNAPSHOT_CHUNK + 12_345;
        let m = snapshot_message(len);
        let mut buf = Vec::new();
        write_message(&mut buf, 1, &m, false).await.unwrap();
        // On the wire: a start frame, then chunks, none bigger than the chunk size.
        let mut r: &[u8] = &buf;
        let mut chunks = Vec::new();
        while let Some(f) = read_frame(&mut r).await.unwrap() {
            match f {
                Frame::SnapshotStart { len: l, .. } => assert_eq!(l as usize, len),
                Frame::SnapshotChunk { data } => chunks.push(data.len()),
                Frame::Message { .. } => panic!("a snapshot went out as one message"),
            }
        }
        assert_eq!(chunks.len(), 6);
        assert!(chunks.iter().all(|&c| c <= SNAPSHOT_CHUNK));
        let mut r: &[u8] = &buf;
        let got = Reader::default().next(&mut r).await.unwrap().unwrap();
        assert_eq!(got, m);
    }

    #[tokio::test]
    async fn snapshot_over_the_limit_or_its_announced_length_is_refused() {
        let head = |len: u64| {
            let mut m = snapshot_message(0);
            m.mut_snapshot().data = Default::default();
            codec::encode(&Frame::SnapshotStart {
                from: 1,
                message: codec::encode_pb(&m).unwrap(),
                len,
            })
            .unwrap()
        };
        let mut buf = Vec::new();
        write_frame(&mut buf, &head(MAX_SNAPSHOT as u64 + 1))
            .await
            .unwrap();
        let mut r: &[u8] = &buf;
        assert!(matches!(
            Reader::default().next(&mut r).await,
            Err(FrameError::SnapshotTooBig(_))
        ));

        let mut buf = Vec::new();
        write_frame(&mut buf, &head(10)).await.unwrap();
        let chunk = codec::encode(&Frame::SnapshotChunk { data: vec![0; 11] }).unwrap();
        write_frame(&mut buf, &chunk).await.unwrap();
        let mut r: &[u8] = &buf;
        assert!(matches!(
            Reader::default().next(&mut r).await,
            Err(FrameError::Protocol(_))
        ));

        // A stream that ends inside a snapshot is an error, not a clean end.
        let mut buf = Vec::new();
        write_frame(&mut buf, &head(10)).await.unwrap();
        let mut r: &[u8] = &buf;
        assert!(matches!(
            Reader::default().next(&mut r).await,
            Err(FrameError::Protocol(_))
        ));
    }
}
