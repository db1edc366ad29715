//! The Bulk lane's traffic: the byte carrier the transfers speak through, and the one handler
//! that answers the lane by dispatching each request to its transfer.
//!
//! ```text
//!   sender: images::send_images / source::push / source::fetch
//!             | Carrier::call(request bytes) -> answer bytes
//!             v
//!   rpc Bulk lane (Requests::call)  ==TLS==>  RpcServer (Handlers.bulk = BulkHandler)
//!                                                | "QIM1..." -> ImageReceiver (docker load)
//!                                                | "QSR1..." -> SourceStore (put / get)
//!                                                | 0x00 ...  -> Raft snapshots (the transport's)
//!                                                | anything else -> refused, by name
//! ```
//!
//! Every request carries a 4-byte magic naming its transfer (a Raft snapshot, the byte
//! [`BULK_RAFT_SNAPSHOT`](crate::cluster::transport::BULK_RAFT_SNAPSHOT), which no magic
//! starts with), so one lane (one connection per dialer) carries them all and a request of
//! one kind can never be taken for another.
//!
//! Left out: request multiplexing (the lane answers in order).

use std::sync::Arc;

use crate::images::{wire as image_wire, ImageReceiver};
use crate::rpc::server::{BoxFuture, RequestHandler};
use crate::source::{wire as source_wire, SourceStore};

/// Why a carrier call failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CarrierError {
    /// The other side answered with an error.
    #[error("{0}")]
    Remote(String),
    /// The link failed (connection, TLS, framing).
    #[error("{0}")]
    Link(String),
}

/// A request/response byte link to another server: one request, one answer, in order. The
/// Bulk RPC lane ([`crate::rpc::client::Requests`]) is one; a test may record or replay.
pub trait Carrier: Send {
    /// Send one request and wait for its answer.
    fn call<'a>(&'a mut self, request: &'a [u8]) -> BoxFuture<'a, Result<Vec<u8>, CarrierError>>;
}

impl Carrier for crate::rpc::client::Requests {
    fn call<'a>(&'a mut self, request: &'a [u8]) -> BoxFuture<'a, Result<Vec<u8>, CarrierError>> {
        Box::pin(async move {
            crate::rpc::client::Requests::call(self, request)
                .await
                .map_err(|e| match e {
                    crate::rpc::RpcError::Remote(m) => CarrierError::Remote(m),
                    other => CarrierError::Link(other.to_string()),
                })
        })
    }
}

/// Answers the Bulk lane: image transfers into the local engine, sources into the local
/// store. A part left `None` refuses its requests with a message saying so.
#[derive(Clone, Default)]
pub struct BulkHandler {
    /// Where image transfers load.
    pub images: Option<Arc<ImageReceiver>>,
    /// Where sources are stored and read.
    pub sources: Option<SourceStore>,
    /// Where Raft snapshot messages go.
    pub raft: Option<Arc<dyn RequestHandler>>,
}

impl std::fmt::Debug for BulkHandler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BulkHandler")
            .field("images", &self.images.is_some())
            .field("sources", &self.sources)
            .field("raft", &self.raft.is_some())
            .finish()
    }
}

impl BulkHandler {
    /// Answer one request from member `peer`.
    pub async fn handle(&self, peer: &str, request: Vec<u8>) -> Result<Vec<u8>, String> {
        if image_wire::is_image_request(&request) {
            let images = self
                .images
                .as_ref()
                .ok_or("this server takes no images (it has no Docker engine)")?;
            images.handle(peer, &request).await
        } else if request.first() == Some(&crate::cluster::transport::BULK_RAFT_SNAPSHOT) {
            let raft = self
                .raft
                .as_ref()
                .ok_or("this server takes no Raft snapshots here")?;
            raft.handle(peer.to_owned(), request).await
        } else if source_wire::is_source_request(&request) {
            let store = self
                .sources
                .clone()
                .ok_or("this server stores no sources")?;
            // File I/O and hashing of up to 60 MiB: off the async threads.
            tokio::task::spawn_blocking(move || source_wire::serve(&store, &request))
                .await
                .map_err(|e| format!("the source store task failed: {e}"))?
        } else {
            let head = String::from_utf8_lossy(&request[..request.len().min(4)]).into_owned();
            Err(format!(
                "an unknown bulk request (it starts {head:?}): upgrade quarryd on both servers to the same release"
            ))
        }
    }
}

impl RequestHandler for BulkHandler {
    fn handle(&self, peer: String, request: Vec<u8>) -> BoxFuture<'_, Result<Vec<u8>, String>> {
        Box::pin(async move { BulkHandler::handle(self, &peer, request).await })
    }
}
