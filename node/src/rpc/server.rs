//! The listening side: accept, TLS, hello, then the lane's loop.
//!
//! Anyone can connect to the RPC port, so until a connection has shown a member certificate
//! it gets little: at most [`MAX_UNAUTHENTICATED`] such connections at once (one more is
//! closed as soon as it is accepted), [`HANDSHAKE_TIMEOUT`] for its TLS handshake and hello
//! together, and frames of at most [`codec::MAX_PREAUTH_FRAME`] (the hello; a joiner's
//! request). A failing `accept` (EMFILE, ENFILE, ENOBUFS) pauses the loop, from
//! [`ACCEPT_BACKOFF_MIN`] doubling to [`ACCEPT_BACKOFF_MAX`], instead of spinning on it.
//!
//! Left out: a per-address limit (one stranger can take all the unauthenticated slots; the
//! timeout frees them within seconds, and established member connections are not affected).

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, Semaphore};
use tokio_rustls::TlsAcceptor;

use super::codec::{self, MAX_BULK_FRAME, MAX_FRAME, MAX_PREAUTH_FRAME};
use super::join::JoinService;
use super::{Hello, HelloReply, Lane, RpcError, PROTOCOL};
use crate::pki::{self, NodeIdentity};

/// How long a connection may take for its TLS handshake and its hello together (5 s): a dial
/// on loopback or a LAN takes milliseconds, and the dialer itself gives up after
/// [`super::client::DIAL_TIMEOUT`] (also 5 s).
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// The most connections open at once that have not shown a member certificate (256): those
/// still in their TLS handshake or hello, and joiners. More are closed once accepted. A
/// cluster dials a handful of lanes per peer, and each leaves this count after its handshake.
pub const MAX_UNAUTHENTICATED: usize = 256;
/// The first pause after a failed `accept` (10 ms); it doubles with each failure in a row.
pub const ACCEPT_BACKOFF_MIN: Duration = Duration::from_millis(10);
/// The longest pause after failed `accept`s in a row (1 s).
pub const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);

/// The listener's limits on connections that have not authenticated; [`Default`] is the
/// production values (tests shorten the timeout).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListenerLimits {
    /// The time for the TLS handshake and the hello ([`HANDSHAKE_TIMEOUT`]); on the Join
    /// lane, the joiner's request must come within the same time again.
    pub handshake_timeout: Duration,
    /// [`MAX_UNAUTHENTICATED`].
    pub max_unauthenticated: usize,
}

impl Default for ListenerLimits {
    fn default() -> Self {
        ListenerLimits {
            handshake_timeout: HANDSHAKE_TIMEOUT,
            max_unauthenticated: MAX_UNAUTHENTICATED,
        }
    }
}

/// The pause after failed `accept`s: [`ACCEPT_BACKOFF_MIN`], doubling to
/// [`ACCEPT_BACKOFF_MAX`]; back to the start after a success.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct AcceptBackoff {
    failures: u32,
}

impl AcceptBackoff {
    /// The pause after one more failure.
    pub fn fail(&mut self) -> Duration {
        let d = ACCEPT_BACKOFF_MIN
            .saturating_mul(1u32 << self.failures.min(16))
            .min(ACCEPT_BACKOFF_MAX);
        self.failures = self.failures.saturating_add(1);
        d
    }

    /// An accept succeeded.
    pub fn reset(&mut self) {
        self.failures = 0;
    }
}

/// A boxed future, for handlers behind `dyn`.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A Raft message as it arrived: the sender's member name (from its certificate) and bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RaftInbound {
    /// The sender's member name.
    pub from: String,
    /// The message, opaque here.
    pub bytes: Vec<u8>,
}

/// Answers requests on the Control or Bulk lane.
pub trait RequestHandler: Send + Sync + 'static {
    /// Answer one request from member `peer`; an `Err` goes back to the dialer as text.
    fn handle(&self, peer: String, request: Vec<u8>) -> BoxFuture<'_, Result<Vec<u8>, String>>;
}

/// What the listener does with each lane; a lane with no handler is refused.
#[derive(Clone, Default)]
pub struct Handlers {
    /// Where Raft messages go (the consensus inbox).
    pub raft: Option<mpsc::Sender<RaftInbound>>,
    /// The Control lane.
    pub control: Option<Arc<dyn RequestHandler>>,
    /// The Bulk lane.
    pub bulk: Option<Arc<dyn RequestHandler>>,
    /// The Join lane.
    pub join: Option<Arc<JoinService>>,
}

impl std::fmt::Debug for Handlers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Handlers")
            .field("raft", &self.raft.is_some())
            .field("control", &self.control.is_some())
            .field("bulk", &self.bulk.is_some())
            .field("join", &self.join.is_some())
            .finish()
    }
}

/// A running RPC listener; [`RpcServer::stop`] stops it and its connections.
#[derive(Debug)]
pub struct RpcServer {
    addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl RpcServer {
    /// Listen on `addr` with this member's identity and the production [`ListenerLimits`].
    pub async fn bind(
        addr: SocketAddr,
        identity: &NodeIdentity,
        handlers: Handlers,
    ) -> Result<RpcServer, RpcError> {
        RpcServer::bind_with(addr, identity, handlers, ListenerLimits::default()).await
    }

    /// [`RpcServer::bind`] with given limits.
    pub async fn bind_with(
        addr: SocketAddr,
        identity: &NodeIdentity,
        handlers: Handlers,
        limits: ListenerLimits,
    ) -> Result<RpcServer, RpcError> {
        let acceptor = TlsAcceptor::from(pki::server_config(identity)?);
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|cause| RpcError::Listen { addr, cause })?;
        let addr = listener
            .local_addr()
            .map_err(|cause| RpcError::Listen { addr, cause })?;
        let handlers = Arc::new(handlers);
        let unauthenticated = Arc::new(Semaphore::new(limits.max_unauthenticated));
        let task = tokio::spawn(async move {
            // Connections live in this set, so stopping the listener closes them too.
            let mut conns = tokio::task::JoinSet::new();
            let mut backoff = AcceptBackoff::default();
            loop {
                while conns.try_join_next().is_some() {}
                let (tcp, peer) = match listener.accept().await {
                    Ok(c) => {
                        backoff.reset();
                        c
                    }
                    Err(e) => {
                        let pause = backoff.fail();
                        tracing::warn!("rpc accept: {e}; accepting again in {pause:?}");
                        tokio::time::sleep(pause).await;
                        continue;
                    }
                };
                let Ok(permit) = unauthenticated.clone().try_acquire_owned() else {
                    tracing::debug!(
                        %peer,
                        "rpc: {} connections are not authenticated yet; closing this one",
                        limits.max_unauthenticated
                    );
                    continue; // dropping `tcp` closes it
                };
                let _ = tcp.set_nodelay(true);
                let acceptor = acceptor.clone();
                let handlers = handlers.clone();
                conns.spawn(async move {
                    let within = limits.handshake_timeout;
                    let opened = tokio::time::timeout(within, async {
                        let mut tls = acceptor
                            .accept(tcp)
                            .await
                            .map_err(|e| format!("TLS handshake refused: {e}"))?;
                        let member = pki::is_member(tls.get_ref().1);
                        let hello: Hello = codec::recv_within(&mut tls, MAX_PREAUTH_FRAME)
                            .await
                            .map_err(|e| format!("no hello: {e}"))?;
                        Ok::<_, String>((tls, member, hello))
                    })
                    .await;
                    let (tls, member, hello) = match opened {
                        Ok(Ok(o)) => o,
                        Ok(Err(e)) => return tracing::info!(%peer, "rpc connection closed: {e}"),
                        Err(_) => {
                            return tracing::info!(
                                %peer,
                                "rpc connection closed: no TLS handshake and hello within {within:?}"
                            )
                        }
                    };
                    // A member's connection stops counting here; a stranger's counts until
                    // it closes.
                    let _permit = member.is_none().then_some(permit);
                    if let Err(e) = serve(tls, member, hello, &handlers, within).await {
                        tracing::debug!(%peer, "rpc connection ended: {e}");
                    }
                });
            }
        });
        Ok(RpcServer { addr, task })
    }

    /// The address it listens on (with the port chosen when bound to port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stop listening and close every connection.
    pub fn stop(self) {
        self.task.abort();
    }
}

async fn serve<S: AsyncRead + AsyncWrite + Unpin>(
    mut s: S,
    member: Option<String>,
    hello: Hello,
    h: &Handlers,
    first_frame_within: Duration,
) -> Result<(), RpcError> {
    let refuse = if hello.version != PROTOCOL {
        Some(format!(
            "protocol version {} is not {PROTOCOL}: upgrade quarryd on both servers to the same release",
            hello.version
        ))
    } else if !hello.lane.is_join() && member.is_none() {
        Some(format!(
            "the {:?} lane needs a certificate from this cluster's CA; a new server must join first \
             (`quarryd join ADDR --token T`)",
            hello.lane
        ))
    } else {
        let missing = match hello.lane {
            Lane::Raft => h.raft.is_none(),
            Lane::Control => h.control.is_none(),
            Lane::Bulk => h.bulk.is_none(),
            Lane::Join | Lane::JoinWithVersions => h.join.is_none(),
        };
        missing.then(|| format!("this server does not serve the {:?} lane yet", hello.lane))
    };
    if let Some(reason) = refuse {
        codec::send(&mut s, &HelloReply::Refused(reason)).await?;
        return Ok(());
    }
    codec::send(&mut s, &HelloReply::Ok).await?;
    let peer = member.unwrap_or_default();
    match hello.lane {
        Lane::Raft => {
            let Some(inbox) = &h.raft else { return Ok(()) };
            while let Some(bytes) = codec::read_frame(&mut s, MAX_FRAME).await? {
                let msg = RaftInbound {
                    from: peer.clone(),
                    bytes,
                };
                if inbox.send(msg).await.is_err() {
                    return Ok(()); // Raft is gone: the node is stopping.
                }
            }
            Ok(())
        }
        Lane::Control | Lane::Bulk => {
            let (handler, limit) = if hello.lane == Lane::Control {
                (h.control.as_ref(), MAX_FRAME)
            } else {
                (h.bulk.as_ref(), MAX_BULK_FRAME)
            };
            let Some(handler) = handler else {
                return Ok(());
            };
            while let Some(req) = codec::read_frame(&mut s, limit).await? {
                let answer = handler.handle(peer.clone(), req).await;
                codec::write_frame(&mut s, &codec::answer_frame(answer)).await?;
            }
            Ok(())
        }
        Lane::Join | Lane::JoinWithVersions => match &h.join {
            Some(j) => {
                j.serve(
                    &mut s,
                    first_frame_within,
                    hello.lane == Lane::JoinWithVersions,
                )
                .await
            }
            None => Ok(()),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_backoff_doubles_from_10_ms_to_1_s_and_resets() {
        let mut b = AcceptBackoff::default();
        let ms: Vec<u128> = (0..10).map(|_| b.fail().as_millis()).collect();
        assert_eq!(ms, [10, 20, 40, 80, 160, 320, 640, 1000, 1000, 1000]);
        for _ in 0..100 {
            assert_eq!(b.fail(), ACCEPT_BACKOFF_MAX, "stays at the cap");
        }
        b.reset();
        assert_eq!(b.fail(), ACCEPT_BACKOFF_MIN);
    }
}
