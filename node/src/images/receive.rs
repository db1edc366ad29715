//! The receiving side: each transfer is a task that owns one `docker load`.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use sha2::{Digest, Sha256};
use tokio::sync::{mpsc, oneshot};

use super::wire::{self, Begin, LoadReport, Message};
use super::{TransferId, BODY_QUEUE, HOLD_BACK, IDLE_TIMEOUT};
use crate::docker::image::image_exists;
use crate::docker::Engine;
use crate::rpc::server::{BoxFuture, RequestHandler};

/// Transfers a receiver runs at once; more are refused (the sender retries later).
pub const MAX_TRANSFERS: usize = 8;

type Reply = oneshot::Sender<Result<Vec<u8>, String>>;

/// What a transfer's task is told.
#[derive(Debug)]
enum SessionMsg {
    Chunk {
        seq: u64,
        data: Bytes,
        reply: Reply,
    },
    End {
        bytes: u64,
        sha256: String,
        reply: Reply,
    },
    Abort {
        reason: String,
    },
}

/// Answers image transfer requests and loads what they carry into the local engine (see the
/// module docs). Share it (`Arc`) between the Bulk lane's connections.
#[derive(Debug)]
pub struct ImageReceiver {
    engine: Engine,
    idle: Duration,
    /// Open transfers: the inbox of each one's task. Locked only to look up or insert, never
    /// across an await.
    sessions: Mutex<BTreeMap<TransferId, mpsc::Sender<SessionMsg>>>,
}

impl ImageReceiver {
    /// A receiver loading into `engine`.
    pub fn new(engine: Engine) -> ImageReceiver {
        ImageReceiver::with_idle_timeout(engine, IDLE_TIMEOUT)
    }

    /// A receiver whose transfers are given up after `idle` without a message.
    pub fn with_idle_timeout(engine: Engine, idle: Duration) -> ImageReceiver {
        ImageReceiver {
            engine,
            idle,
            sessions: Mutex::new(BTreeMap::new()),
        }
    }

    /// Transfers in progress.
    pub fn open_transfers(&self) -> usize {
        let mut s = self.lock();
        s.retain(|_, tx| !tx.is_closed());
        s.len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<TransferId, mpsc::Sender<SessionMsg>>> {
        // A panic while holding this lock leaves a map that is still consistent.
        self.sessions
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Answer one request (from member `peer`, for the log): the answer bytes, or an error
    /// text for the sender.
    pub async fn handle(&self, peer: &str, request: &[u8]) -> Result<Vec<u8>, String> {
        match wire::decode(request)? {
            Message::Begin(begin) => self.begin(peer, begin),
            Message::Chunk { id, seq, data } => {
                let (reply, answer) = oneshot::channel();
                self.to_session(id, SessionMsg::Chunk { seq, data, reply })
                    .await?;
                answer.await.map_err(|_| gone(id))?
            }
            Message::End(end) => {
                let (reply, answer) = oneshot::channel();
                let msg = SessionMsg::End {
                    bytes: end.bytes,
                    sha256: end.sha256,
                    reply,
                };
                self.to_session(end.id, msg).await?;
                answer.await.map_err(|_| gone(end.id))?
            }
            Message::Abort(abort) => {
                tracing::info!(%peer, id = %abort.id, "image transfer aborted: {}", abort.reason);
                let msg = SessionMsg::Abort {
                    reason: abort.reason,
                };
                // An abort of a transfer that already ended is not an error.
                let _ = self.to_session(abort.id, msg).await;
                Ok(Vec::new())
            }
        }
    }

    fn begin(&self, peer: &str, begin: Begin) -> Result<Vec<u8>, String> {
        let mut sessions = self.lock();
        sessions.retain(|_, tx| !tx.is_closed());
        if sessions.contains_key(&begin.id) {
            return Err(format!("transfer {} is already open", begin.id));
        }
        if sessions.len() >= MAX_TRANSFERS {
            return Err(format!(
                "{MAX_TRANSFERS} image transfers are running here already; try again when one ends"
            ));
        }
        if begin.images.is_empty() {
            return Err("a transfer must name its images".to_owned());
        }
        tracing::info!(%peer, id = %begin.id, images = ?begin.images, estimate = ?begin.estimate, "image transfer begins");
        let (tx, rx) = mpsc::channel(1);
        sessions.insert(begin.id, tx);
        let session = Session {
            id: begin.id,
            images: begin.images,
            engine: self.engine.clone(),
            idle: self.idle,
        };
        tokio::spawn(session.run(rx));
        Ok(Vec::new())
    }

    async fn to_session(&self, id: TransferId, msg: SessionMsg) -> Result<(), String> {
        let tx = self.lock().get(&id).cloned().ok_or_else(|| gone(id))?;
        tx.send(msg).await.map_err(|_| gone(id))
    }
}

fn gone(id: TransferId) -> String {
    format!("transfer {id} is not open here (it ended, failed or timed out); send it again")
}

impl RequestHandler for ImageReceiver {
    fn handle(&self, peer: String, request: Vec<u8>) -> BoxFuture<'_, Result<Vec<u8>, String>> {
        Box::pin(async move { ImageReceiver::handle(self, &peer, &request).await })
    }
}

/// One transfer: owns its `docker load`, the stream's hash and the held-back tail.
struct Session {
    id: TransferId,
    images: Vec<String>,
    engine: Engine,
    idle: Duration,
}

/// Why a session stops feeding the engine: the body ends with an error and the load fails.
fn cut(reason: &str) -> std::io::Error {
    std::io::Error::other(reason.to_owned())
}

impl Session {
    async fn run(self, mut inbox: mpsc::Receiver<SessionMsg>) {
        let (body_tx, mut body_rx) = mpsc::channel::<Result<Bytes, std::io::Error>>(BODY_QUEUE);
        let body = futures_util::stream::poll_fn(move |cx| body_rx.poll_recv(cx));
        let engine = self.engine.clone();
        let mut load = tokio::spawn(async move {
            let options = bollard::query_parameters::ImportImageOptions {
                quiet: false,
                ..Default::default()
            };
            let mut out = engine.client().import_image_stream(options, body, None);
            let mut lines = Vec::new();
            while let Some(item) = out.next().await {
                match item {
                    Ok(info) => {
                        if let Some(s) = info.stream {
                            lines.push(s.trim().to_owned());
                        }
                        if let Some(e) = info.error_detail.and_then(|d| d.message) {
                            return Err(e);
                        }
                    }
                    Err(e) => return Err(e.to_string()),
                }
            }
            Ok(lines)
        });
        let mut hash = Sha256::new();
        let mut received = 0u64;
        let mut forwarded = 0u64;
        let mut next_seq = 0u64;
        let mut tail = BytesMut::new();
        let outcome: Result<(), String> = loop {
            let msg = tokio::select! {
                m = tokio::time::timeout(self.idle, inbox.recv()) => m,
                // The engine gave up on its own (it refused the stream): stop taking chunks.
                r = &mut load => {
                    let why = match r {
                        Ok(Err(e)) => e,
                        _ => "the engine ended the load early".to_owned(),
                    };
                    break Err(format!("docker load failed: {why}"));
                }
            };
            match msg {
                Err(_) => {
                    let _ = body_tx.send(Err(cut("sender went silent"))).await;
                    break Err(format!("no message for {:?}: given up", self.idle));
                }
                Ok(None) => {
                    let _ = body_tx.send(Err(cut("receiver stopping"))).await;
                    break Err("the receiver is stopping".to_owned());
                }
                Ok(Some(SessionMsg::Abort { reason })) => {
                    let _ = body_tx.send(Err(cut("aborted"))).await;
                    break Err(format!("aborted by the sender: {reason}"));
                }
                Ok(Some(SessionMsg::Chunk { seq, data, reply })) => {
                    if seq != next_seq {
                        let e = format!(
                            "chunk {seq} arrived where {next_seq} was due: nothing was loaded"
                        );
                        let _ = body_tx.send(Err(cut("out of order"))).await;
                        let _ = reply.send(Err(e.clone()));
                        break Err(e);
                    }
                    next_seq += 1;
                    hash.update(&data);
                    received += data.len() as u64;
                    tail.extend_from_slice(&data);
                    // Hand the engine all but the last HOLD_BACK bytes, cut so that what it has
                    // always ends 1 byte into a 512-byte block: a stream stopped there is never
                    // a valid tar.
                    if tail.len() > HOLD_BACK + 512 {
                        let mut n = tail.len() - HOLD_BACK;
                        let end = forwarded + n as u64;
                        n -= ((end + 511) % 512) as usize;
                        let out = tail.split_to(n).freeze();
                        forwarded += n as u64;
                        if body_tx.send(Ok(out)).await.is_err() {
                            let e = load_error(&mut load).await;
                            let _ = reply.send(Err(e.clone()));
                            break Err(e);
                        }
                    }
                    let _ = reply.send(Ok(Vec::new()));
                }
                Ok(Some(SessionMsg::End {
                    bytes,
                    sha256,
                    reply,
                })) => {
                    let actual = hex::encode(hash.clone().finalize());
                    if bytes != received || sha256 != actual {
                        let _ = body_tx.send(Err(cut("integrity check failed"))).await;
                        let e = format!(
                            "integrity check failed: the sender sent {bytes} bytes with sha256 {sha256}, \
                             {received} bytes with sha256 {actual} arrived; nothing was loaded, send again"
                        );
                        let _ = reply.send(Err(e.clone()));
                        break Err(e);
                    }
                    let result = self
                        .finish(body_tx, tail.freeze(), &mut load, received)
                        .await;
                    let ok = result.is_ok();
                    let _ = reply.send(result.map(|r| serde_json::to_vec(&r).unwrap_or_default()));
                    break if ok {
                        Ok(())
                    } else {
                        Err("the load failed".to_owned())
                    };
                }
            }
        };
        if let Err(e) = &outcome {
            tracing::warn!(id = %self.id, "image transfer failed: {e}");
            // The engine sees its body end mid-block and fails; wait for it so nothing of this
            // transfer outlives the session.
            if !load.is_finished() {
                let _ = tokio::time::timeout(Duration::from_secs(30), load).await;
            }
        }
    }

    /// The stream checked out: give the engine its end, wait for the load, check the images.
    async fn finish(
        &self,
        body_tx: mpsc::Sender<Result<Bytes, std::io::Error>>,
        tail: Bytes,
        load: &mut tokio::task::JoinHandle<Result<Vec<String>, String>>,
        bytes: u64,
    ) -> Result<LoadReport, String> {
        if !tail.is_empty() && body_tx.send(Ok(tail)).await.is_err() {
            return Err(load_error(load).await);
        }
        drop(body_tx);
        let lines = match load.await {
            Ok(Ok(lines)) => lines,
            Ok(Err(e)) => return Err(format!("docker load failed: {e}")),
            Err(e) => return Err(format!("docker load failed: {e}")),
        };
        for image in &self.images {
            match image_exists(&self.engine, image).await {
                Ok(true) => {}
                Ok(false) => {
                    return Err(format!(
                        "docker load finished ({}) but image {image} is not here",
                        lines.join("; ")
                    ))
                }
                Err(e) => return Err(e.to_string()),
            }
        }
        tracing::info!(id = %self.id, images = ?self.images, bytes, "image transfer loaded");
        Ok(LoadReport {
            images: self.images.clone(),
            bytes,
        })
    }
}

/// The load task's error, once it stopped taking the body.
async fn load_error(load: &mut tokio::task::JoinHandle<Result<Vec<String>, String>>) -> String {
    match tokio::time::timeout(Duration::from_secs(30), load).await {
        Ok(Ok(Err(e))) => format!("docker load failed: {e}"),
        Ok(Ok(Ok(_))) => "docker load ended before the stream did".to_owned(),
        Ok(Err(e)) => format!("docker load failed: {e}"),
        Err(_) => "docker load stopped taking data".to_owned(),
    }
}
