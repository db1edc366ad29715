//! The sending side: `docker save` streamed in chunks through a carrier.

use bytes::BytesMut;
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::wire::{self, Abort, Begin, End, LoadReport, Message};
use super::{
    Cancel, Carrier, CarrierError, Progress, TransferError, TransferId, CALL_TIMEOUT, CHUNK,
    END_TIMEOUT,
};
use crate::docker::{is_not_found, DockerError, Engine};

/// What a finished transfer did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SendReport {
    /// The transfer.
    pub id: TransferId,
    /// The images now present on the receiver.
    pub images: Vec<String>,
    /// The stream's length.
    pub bytes: u64,
    /// Its sha256 (hex), which the receiver checked.
    pub sha256: String,
}

/// Send `images` from the local engine to the receiver behind `carrier` (see the module
/// docs). `progress` is called after every chunk the receiver took and once at the end; on
/// [`Cancel::cancel`] the transfer stops before its next chunk and the receiver is told.
pub async fn send_images(
    engine: &Engine,
    images: &[String],
    carrier: &mut dyn Carrier,
    progress: &mut (dyn FnMut(Progress) + Send),
    cancel: &Cancel,
) -> Result<SendReport, TransferError> {
    if images.is_empty() {
        return Err(TransferError::Nothing);
    }
    let mut estimate = Some(0u64);
    for i in images {
        match engine.client().inspect_image(i).await {
            Ok(info) => estimate = estimate.and_then(|e| Some(e + u64::try_from(info.size?).ok()?)),
            Err(e) if is_not_found(&e) => return Err(TransferError::NoSuchImage(i.clone())),
            Err(e) => return Err(DockerError::api(format!("inspecting image {i}"), e).into()),
        }
    }
    let id = TransferId::random();
    let begin = Message::Begin(Begin {
        id,
        images: images.to_vec(),
        estimate,
    });
    call(carrier, &wire::encode(&begin), 0).await?;
    let mut state = Sending {
        id,
        seq: 0,
        sent: 0,
        hash: Sha256::new(),
        estimate,
    };
    match state
        .stream(engine, images, carrier, progress, cancel)
        .await
    {
        Ok(report) => Ok(report),
        Err(e) => {
            // Tell the receiver, so it gives up now rather than at its idle timeout. A link
            // that failed cannot carry this; the receiver's timeout covers that case.
            if !matches!(e, TransferError::Link { .. } | TransferError::Timeout(_)) {
                let abort = Message::Abort(Abort {
                    id,
                    reason: e.to_string(),
                });
                let _ = call(carrier, &wire::encode(&abort), state.sent).await;
            }
            Err(e)
        }
    }
}

struct Sending {
    id: TransferId,
    seq: u64,
    sent: u64,
    hash: Sha256,
    estimate: Option<u64>,
}

impl Sending {
    async fn stream(
        &mut self,
        engine: &Engine,
        images: &[String],
        carrier: &mut dyn Carrier,
        progress: &mut (dyn FnMut(Progress) + Send),
        cancel: &Cancel,
    ) -> Result<SendReport, TransferError> {
        let refs: Vec<&str> = images.iter().map(String::as_str).collect();
        let mut export = engine.client().export_images(&refs);
        let mut buf = BytesMut::new();
        loop {
            let next = tokio::select! {
                biased;
                _ = cancel.cancelled() => return Err(TransferError::Cancelled { sent: self.sent }),
                n = export.next() => n,
            };
            match next {
                Some(Ok(bytes)) => buf.extend_from_slice(&bytes),
                Some(Err(e)) => {
                    return Err(DockerError::api(format!("saving {}", images.join(" ")), e).into())
                }
                None => break,
            }
            while buf.len() >= CHUNK {
                let chunk = buf.split_to(CHUNK);
                self.chunk(carrier, chunk, progress, cancel).await?;
            }
        }
        if !buf.is_empty() {
            self.chunk(carrier, buf, progress, cancel).await?;
        }
        let sha256 = hex::encode(self.hash.clone().finalize());
        let end = Message::End(End {
            id: self.id,
            bytes: self.sent,
            sha256: sha256.clone(),
        });
        let answer = call_within(carrier, &wire::encode(&end), self.sent, END_TIMEOUT).await?;
        let report: LoadReport = serde_json::from_slice(&answer)
            .map_err(|e| TransferError::Remote(format!("an unreadable answer to End: {e}")))?;
        progress(Progress {
            sent: self.sent,
            estimate: Some(self.sent),
            done: true,
        });
        Ok(SendReport {
            id: self.id,
            images: report.images,
            bytes: self.sent,
            sha256,
        })
    }

    async fn chunk(
        &mut self,
        carrier: &mut dyn Carrier,
        data: BytesMut,
        progress: &mut (dyn FnMut(Progress) + Send),
        cancel: &Cancel,
    ) -> Result<(), TransferError> {
        // Checked between chunks only: a request cut off midway would leave the link unusable
        // for the Abort that follows.
        if cancel.is_cancelled() {
            return Err(TransferError::Cancelled { sent: self.sent });
        }
        let data = data.freeze();
        self.hash.update(&data);
        let len = data.len() as u64;
        let msg = Message::Chunk {
            id: self.id,
            seq: self.seq,
            data,
        };
        call(carrier, &wire::encode(&msg), self.sent).await?;
        self.seq += 1;
        self.sent += len;
        progress(Progress {
            sent: self.sent,
            estimate: self.estimate,
            done: false,
        });
        Ok(())
    }
}

async fn call(
    carrier: &mut dyn Carrier,
    request: &[u8],
    sent: u64,
) -> Result<Vec<u8>, TransferError> {
    call_within(carrier, request, sent, CALL_TIMEOUT).await
}

async fn call_within(
    carrier: &mut dyn Carrier,
    request: &[u8],
    sent: u64,
    limit: std::time::Duration,
) -> Result<Vec<u8>, TransferError> {
    match tokio::time::timeout(limit, carrier.call(request)).await {
        Err(_) => Err(TransferError::Timeout(limit)),
        Ok(Ok(answer)) => Ok(answer),
        Ok(Err(CarrierError::Remote(m))) => Err(TransferError::Remote(m)),
        Ok(Err(CarrierError::Link(detail))) => Err(TransferError::Link { sent, detail }),
    }
}
