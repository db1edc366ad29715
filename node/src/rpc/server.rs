//! The listening side: accept, TLS, hello, then the lane's loop.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;

use super::codec::{self, MAX_BULK_FRAME, MAX_FRAME};
use super::join::JoinService;
use super::{Hello, HelloReply, Lane, RpcError, PROTOCOL};
use crate::pki::{self, NodeIdentity};

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
    /// Listen on `addr` with this member's identity.
    pub async fn bind(
        addr: SocketAddr,
        identity: &NodeIdentity,
        handlers: Handlers,
    ) -> Result<RpcServer, RpcError> {
        let acceptor = TlsAcceptor::from(pki::server_config(identity)?);
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|cause| RpcError::Listen { addr, cause })?;
        let addr = listener
            .local_addr()
            .map_err(|cause| RpcError::Listen { addr, cause })?;
        let handlers = Arc::new(handlers);
        let task = tokio::spawn(async move {
            // Connections live in this set, so stopping the listener closes them too.
            let mut conns = tokio::task::JoinSet::new();
            loop {
                while conns.try_join_next().is_some() {}
                let (tcp, peer) = match listener.accept().await {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::warn!("rpc accept: {e}");
                        continue;
                    }
                };
                let _ = tcp.set_nodelay(true);
                let acceptor = acceptor.clone();
                let handlers = handlers.clone();
                conns.spawn(async move {
                    match acceptor.accept(tcp).await {
                        Ok(tls) => {
                            let member = pki::is_member(tls.get_ref().1);
                            if let Err(e) = serve(tls, member, &handlers).await {
                                tracing::debug!(%peer, "rpc connection ended: {e}");
                            }
                        }
                        Err(e) => tracing::info!(%peer, "rpc TLS handshake refused: {e}"),
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
    h: &Handlers,
) -> Result<(), RpcError> {
    let hello: Hello = codec::recv(&mut s).await?;
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
            Some(j) => j.serve(&mut s, hello.lane == Lane::JoinWithVersions).await,
            None => Ok(()),
        },
    }
}
