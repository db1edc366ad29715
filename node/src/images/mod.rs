//! Images without a registry: `docker save` on one server, streamed over a carrier (the Bulk
//! RPC lane), `docker load` on another; and the pure plan of which transfers and removals a
//! deploy needs.
//!
//! ```text
//!  sender (has the image)                        receiver (ImageReceiver, one task per load)
//!  export_images ──> chunks of ≤ CHUNK ──Begin──> session ─┐
//!      sha256 over the stream          ──Chunk──> sha256, hold back the tail ──> import_image_stream
//!      progress(sent, estimate)  <── ack (taken) ─┘           (docker load, bounded queue)
//!                                      ──End(bytes, sha256)──> check ──ok──> tail, close: load
//!                                                                └─bad──> abort: nothing loaded
//! ```
//!
//! - [`send_images`] saves images from the local engine and sends them through any
//!   [`Carrier`] (a request/response byte link, [`crate::bulk`]; the Bulk lane's
//!   [`crate::rpc::client::Requests`] is one), one chunk per request, reporting [`Progress`] after each, and stopping at
//!   the next chunk when [`Cancel`]led.
//! - [`ImageReceiver`] answers those requests (through [`crate::bulk::BulkHandler`], which
//!   tells them apart by [`wire::is_image_request`]; it is also a
//!   [`RequestHandler`](crate::rpc::server::RequestHandler) on its own) and pipes each
//!   transfer into its local engine's `docker load`.
//! - [`plan`] decides, from which servers run which images and which have them, the
//!   transfers to do and the images to remove after a deploy.
//!
//! # Invariants
//!
//! - **Bounded memory**: a chunk is at most [`CHUNK`] bytes; the sender has at most one chunk
//!   in flight (the answer comes once the receiver queued it for the engine) and the receiver
//!   queues at most [`BODY_QUEUE`] chunks for the engine, so a slow engine slows the sender.
//! - **Nothing partial or damaged is ever loaded**: the receiver hashes every byte it is
//!   given and holds back the stream's last [`HOLD_BACK`]+ bytes (which contain the tar's end)
//!   until End's length and sha256 match; it only ever hands the engine a prefix that ends
//!   inside a 512-byte tar block, so a stream cut short (a mismatch, an abort, a cancel, a
//!   vanished sender after [`IDLE_TIMEOUT`], a chunk out of order) always makes `docker load`
//!   fail before it reads a manifest. Success is reported only after the engine finished the
//!   load and every named image is present.
//! - **Transfers are independent**: each has its own id and its own task; one failing or
//!   hanging never blocks another.
//!
//! # Left out
//!
//! Resuming a broken transfer (it starts over); layer deduplication against what the
//! receiver has (docker save sends every layer); pipelining several chunks per round trip;
//! pulling `image:` references (the engine pulls those itself where a registry is
//! reachable); compression.

mod plan;
mod receive;
mod send;
pub mod wire;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::watch;

pub use plan::{plan, ImageNeeds, ImagePlan, PlanError, Transfer};
pub use receive::ImageReceiver;
pub use send::{send_images, SendReport};
pub use wire::LoadReport;

pub use crate::bulk::{Carrier, CarrierError};
use crate::docker::{image::image_exists, is_not_found, DockerError, Engine};

/// The largest chunk sent in one request (well under the Bulk lane's 64 MiB frame).
pub const CHUNK: usize = 1 << 20;
/// The least the receiver holds back from the engine until the stream's hash is checked
/// (the tar's two end blocks are 1024 bytes).
pub const HOLD_BACK: usize = 64 << 10;
/// Chunks the receiver queues for its engine before it stops answering (back-pressure).
pub const BODY_QUEUE: usize = 4;
/// A transfer whose sender sends nothing for this long is given up (nothing is loaded).
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// The longest one request may take before the sender gives up.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(120);
/// The longest the End request may take: the receiver's engine finishes the load (registers
/// every layer) before it answers.
pub const END_TIMEOUT: Duration = Duration::from_secs(600);

/// A transfer's id: 16 random bytes, hex in JSON.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct TransferId(pub [u8; 16]);

impl TransferId {
    /// A new random id.
    pub fn random() -> TransferId {
        let mut id = [0u8; 16];
        id.copy_from_slice(&crate::pki::random_bytes()[..16]);
        TransferId(id)
    }
}

impl fmt::Display for TransferId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl TryFrom<String> for TransferId {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        let bytes = hex::decode(&s).map_err(|e| format!("transfer id {s:?}: {e}"))?;
        let id: [u8; 16] = bytes
            .try_into()
            .map_err(|_| format!("transfer id {s:?} is not 16 bytes"))?;
        Ok(TransferId(id))
    }
}

impl From<TransferId> for String {
    fn from(id: TransferId) -> String {
        id.to_string()
    }
}

/// How far a transfer is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Progress {
    /// Bytes the receiver has taken.
    pub sent: u64,
    /// The engine's size of the images, when it says (the stream is slightly larger, so
    /// `sent` may pass it); exact once `done`.
    pub estimate: Option<u64>,
    /// The receiver loaded everything: `sent` is the whole stream.
    pub done: bool,
}

/// Cancels a transfer from another task: [`send_images`] stops before its next chunk, tells
/// the receiver, and nothing is loaded. Clones cancel the same transfer.
#[derive(Debug, Clone)]
pub struct Cancel(Arc<watch::Sender<bool>>);

impl Default for Cancel {
    fn default() -> Self {
        Cancel(Arc::new(watch::Sender::new(false)))
    }
}

impl Cancel {
    /// A transfer not cancelled yet.
    pub fn new() -> Cancel {
        Cancel::default()
    }

    /// Cancel it.
    pub fn cancel(&self) {
        self.0.send_replace(true);
    }

    /// Whether it was cancelled.
    pub fn is_cancelled(&self) -> bool {
        *self.0.borrow()
    }

    /// Resolves once it is cancelled.
    pub async fn cancelled(&self) {
        let mut rx = self.0.subscribe();
        // The sender lives in self, so wait_for only ends when the value turns true.
        let _ = rx.wait_for(|c| *c).await;
    }
}

/// What went wrong with a transfer; nothing was loaded unless it says so.
#[derive(Debug, thiserror::Error)]
pub enum TransferError {
    /// An image to send is not on the sending server.
    #[error("image {0} is not on this server: build it here first, or send it from a server that has it")]
    NoSuchImage(String),
    /// No image was named.
    #[error("no image to send")]
    Nothing,
    /// The local engine failed.
    #[error(transparent)]
    Docker(#[from] DockerError),
    /// The link to the receiver failed; nothing was loaded there.
    #[error("the link to the receiving server failed after {sent} bytes: {detail}; nothing was loaded there, send again")]
    Link {
        /// Bytes the receiver had taken.
        sent: u64,
        /// The carrier's error.
        detail: String,
    },
    /// The receiver refused or failed the transfer.
    #[error("the receiving server: {0}")]
    Remote(String),
    /// A request got no answer in [`CALL_TIMEOUT`] ([`END_TIMEOUT`] for the last).
    #[error("the receiving server did not answer within {0:?}; nothing was loaded there")]
    Timeout(Duration),
    /// [`Cancel::cancel`] was called; nothing was loaded.
    #[error("the transfer was cancelled after {sent} bytes; nothing was loaded")]
    Cancelled {
        /// Bytes the receiver had taken.
        sent: u64,
    },
}

/// Which of `images` the engine has.
pub async fn present(engine: &Engine, images: &[String]) -> Result<Vec<String>, DockerError> {
    let mut out = Vec::new();
    for i in images {
        if image_exists(engine, i).await? {
            out.push(i.clone());
        }
    }
    Ok(out)
}

/// The tags of the engine's images built for `stack` (labelled `quarry.stack=STACK` by
/// [`crate::docker::image`]'s builds; `docker save`/`load` keeps the label): what a server
/// "has" in [`ImageNeeds`].
pub async fn stack_images(
    engine: &Engine,
    stack: &str,
) -> Result<std::collections::BTreeSet<String>, DockerError> {
    let options = bollard::query_parameters::ListImagesOptions {
        filters: Some(std::collections::HashMap::from([(
            "label".to_owned(),
            vec![format!("{}={stack}", crate::types::labels::STACK)],
        )])),
        ..Default::default()
    };
    let list = engine
        .client()
        .list_images(Some(options))
        .await
        .map_err(|e| DockerError::api(format!("listing the images of stack {stack}"), e))?;
    Ok(list
        .into_iter()
        .flat_map(|i| i.repo_tags)
        .filter(|t| t != "<none>:<none>")
        .collect())
}

/// Remove images from the engine (a plan's removals). An image already gone is fine; one a
/// container still uses is an error naming it (the engine refuses, nothing is forced).
pub async fn remove(engine: &Engine, images: &[String]) -> Result<(), DockerError> {
    for i in images {
        match engine
            .client()
            .remove_image(
                i,
                None::<bollard::query_parameters::RemoveImageOptions>,
                None,
            )
            .await
        {
            Ok(_) => {}
            Err(e) if is_not_found(&e) => {}
            Err(e) => return Err(DockerError::api(format!("removing image {i}"), e)),
        }
    }
    Ok(())
}
