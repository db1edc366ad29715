//! The dialing side: open a lane on a peer, and a Raft link that keeps one open.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use super::codec::{self, MAX_BULK_FRAME, MAX_FRAME};
use super::{Hello, HelloReply, Lane, RpcError, PROTOCOL};
use crate::pki::{self, NodeIdentity};

/// How long a dial (TCP + TLS + hello) may take.
pub const DIAL_TIMEOUT: Duration = Duration::from_secs(5);
/// Reconnect backoff of a [`RaftLink`]: starts here, doubles, caps at [`BACKOFF_MAX`]. Short,
/// because a Raft peer that comes back should hear heartbeats within an election timeout.
pub const BACKOFF_MIN: Duration = Duration::from_millis(50);
/// The backoff cap.
pub const BACKOFF_MAX: Duration = Duration::from_secs(2);
/// Messages a [`RaftLink`] holds while its connection is down; more are dropped (Raft resends).
pub const RAFT_QUEUE: usize = 1024;
/// How long one write on a [`RaftLink`] may stall before the connection is dropped and
/// redialed: a peer that stopped reading (or vanished without a reset) costs one queue.
pub const LINK_WRITE_TIMEOUT: Duration = Duration::from_secs(2);

/// Open a connection on `lane` at `addr` with a TLS client config (a member's, or a joiner's
/// pinned one), and pass the hello.
pub async fn dial(
    addr: SocketAddr,
    tls: Arc<rustls::ClientConfig>,
    lane: Lane,
) -> Result<TlsStream<TcpStream>, RpcError> {
    let fut = async {
        let tcp = TcpStream::connect(addr)
            .await
            .map_err(|cause| RpcError::Connect { addr, cause })?;
        let _ = tcp.set_nodelay(true);
        let name = ServerName::try_from(pki::SERVER_NAME).map_err(|e| RpcError::Tls {
            addr,
            reason: e.to_string(),
        })?;
        let mut s = TlsConnector::from(tls)
            .connect(name, tcp)
            .await
            .map_err(|e| RpcError::Tls {
                addr,
                reason: tls_reason(e),
            })?;
        codec::send(
            &mut s,
            &Hello {
                version: PROTOCOL,
                lane,
            },
        )
        .await?;
        match codec::recv::<_, HelloReply>(&mut s).await? {
            HelloReply::Ok => Ok(s),
            HelloReply::Refused(reason) => Err(RpcError::Refused { addr, lane, reason }),
        }
    };
    tokio::time::timeout(DIAL_TIMEOUT, fut)
        .await
        .unwrap_or_else(|_| {
            Err(RpcError::Connect {
                addr,
                cause: std::io::Error::new(std::io::ErrorKind::TimedOut, "no answer in 5 s"),
            })
        })
}

/// The words of a TLS failure without rustls's "unexpected error: " wrapping.
fn tls_reason(e: std::io::Error) -> String {
    match e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
        Some(rustls::Error::General(m)) => m.clone(),
        Some(other) => other.to_string(),
        None => e.to_string(),
    }
}

/// A member's dialer: its TLS client config, made once.
#[derive(Clone)]
pub struct Dialer {
    tls: Arc<rustls::ClientConfig>,
}

impl std::fmt::Debug for Dialer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dialer").finish_non_exhaustive()
    }
}

impl Dialer {
    /// A dialer showing `identity`'s certificate.
    pub fn new(identity: &NodeIdentity) -> Result<Dialer, RpcError> {
        Ok(Dialer {
            tls: pki::client_config(identity)?,
        })
    }

    /// A dialer with a given TLS config (tests use it to dial without a certificate).
    pub fn with_tls(tls: Arc<rustls::ClientConfig>) -> Dialer {
        Dialer { tls }
    }

    /// Open a request lane (Control or Bulk).
    pub async fn requests(&self, addr: SocketAddr, lane: Lane) -> Result<Requests, RpcError> {
        Ok(Requests {
            stream: dial(addr, self.tls.clone(), lane).await?,
            limit: if lane == Lane::Bulk {
                MAX_BULK_FRAME
            } else {
                MAX_FRAME
            },
        })
    }

    /// Open a Raft lane to `addr`, kept open by a task (see [`RaftLink`]).
    pub fn raft_link(&self, addr: SocketAddr) -> RaftLink {
        RaftLink::spawn(addr, self.tls.clone(), None)
    }

    /// Like [`Dialer::raft_link`], calling `on_down` each time a dial or a write fails (a
    /// message was lost): Raft wants to hear that a peer is unreachable.
    pub fn raft_link_reporting(&self, addr: SocketAddr, on_down: OnDown) -> RaftLink {
        RaftLink::spawn(addr, self.tls.clone(), Some(on_down))
    }
}

/// Called by a [`RaftLink`] when a message was lost to a failed dial or write.
pub type OnDown = Arc<dyn Fn() + Send + Sync>;

/// An open Control or Bulk lane: requests go one at a time.
#[derive(Debug)]
pub struct Requests {
    stream: TlsStream<TcpStream>,
    limit: u32,
}

impl Requests {
    /// Send a request and wait for its answer.
    pub async fn call(&mut self, request: &[u8]) -> Result<Vec<u8>, RpcError> {
        codec::write_frame(&mut self.stream, request).await?;
        let frame = codec::read_frame(&mut self.stream, self.limit)
            .await?
            .ok_or_else(|| {
                codec::CodecError::Io(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "the peer closed the connection before answering",
                ))
            })?;
        codec::parse_answer(frame)?.map_err(RpcError::Remote)
    }
}

/// A one-way Raft lane to one peer. [`RaftLink::send`] never waits: it queues, and a task
/// writes, reconnecting with backoff when the connection drops. Messages that find the queue
/// full are dropped, as is the one being written when the connection fails: Raft retransmits.
#[derive(Debug, Clone)]
pub struct RaftLink {
    tx: mpsc::Sender<Vec<u8>>,
}

impl RaftLink {
    fn spawn(
        addr: SocketAddr,
        tls: Arc<rustls::ClientConfig>,
        on_down: Option<OnDown>,
    ) -> RaftLink {
        let down = move || {
            if let Some(f) = &on_down {
                f();
            }
        };
        let (tx, mut rx) = mpsc::channel::<Vec<u8>>(RAFT_QUEUE);
        tokio::spawn(async move {
            let mut backoff = BACKOFF_MIN;
            // Wait for a first message before dialing: an idle link costs no connection.
            let Some(mut pending) = rx.recv().await else {
                return;
            };
            loop {
                let mut s = match dial(addr, tls.clone(), Lane::Raft).await {
                    Ok(s) => {
                        backoff = BACKOFF_MIN;
                        s
                    }
                    Err(e) => {
                        tracing::debug!(%addr, "raft link: {e}; retrying in {backoff:?}");
                        down();
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(BACKOFF_MAX);
                        // Keep only the newest message while down.
                        while let Ok(m) = rx.try_recv() {
                            pending = m;
                        }
                        if rx.is_closed() && rx.is_empty() {
                            return;
                        }
                        continue;
                    }
                };
                loop {
                    let wrote = tokio::time::timeout(
                        LINK_WRITE_TIMEOUT,
                        codec::write_frame(&mut s, &pending),
                    )
                    .await;
                    if !matches!(wrote, Ok(Ok(()))) {
                        down();
                        break; // reconnect; `pending` is lost (Raft resends)
                    }
                    match rx.recv().await {
                        Some(m) => pending = m,
                        None => return, // every handle dropped
                    }
                }
                match rx.recv().await {
                    Some(m) => pending = m,
                    None => return,
                }
            }
        });
        RaftLink { tx }
    }

    /// Queue a message; `false` if it was dropped (queue full or link stopped).
    pub fn send(&self, bytes: Vec<u8>) -> bool {
        self.tx.try_send(bytes).is_ok()
    }
}
