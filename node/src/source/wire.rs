//! Sources over the Bulk lane: a server stores a copy on another (push) or reads one from it
//! (fetch), every byte checked against the hash on both sides.
//!
//! ```text
//!   Put = "QSR1" 'P' hash[64 hex] tar   -> answer: empty once stored (synced)
//!   Get = "QSR1" 'G' hash[64 hex]       -> answer: the tar
//! ```

use super::{SourceError, SourceHash, SourceStore, SourceTar};
use crate::bulk::{Carrier, CarrierError};

/// The first bytes of every source request.
pub const MAGIC: &[u8; 4] = b"QSR1";

/// Whether a Bulk-lane request is a source request.
pub fn is_source_request(request: &[u8]) -> bool {
    request.starts_with(MAGIC)
}

fn request(kind: u8, hash: &SourceHash, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(4 + 1 + 64 + body.len());
    out.extend_from_slice(MAGIC);
    out.push(kind);
    out.extend_from_slice(hash.as_str().as_bytes());
    out.extend_from_slice(body);
    out
}

/// Answer a source request from the local store (blocking: file I/O and hashing).
pub fn serve(store: &SourceStore, request: &[u8]) -> Result<Vec<u8>, String> {
    let rest = request
        .strip_prefix(MAGIC.as_slice())
        .ok_or("not a source request")?;
    if rest.len() < 65 {
        return Err("a truncated source request".to_owned());
    }
    let hash = std::str::from_utf8(&rest[1..65])
        .map_err(|_| "a source hash that is not text".to_owned())
        .and_then(|h| SourceHash::parse(h).map_err(|e| e.to_string()))?;
    match rest[0] {
        b'P' => store.put(&hash, &rest[65..]).map(|()| Vec::new()),
        b'G' => store.get(&hash),
        other => return Err(format!("an unknown source request kind {other:#04x}")),
    }
    .map_err(|e| e.to_string())
}

fn remote(e: CarrierError) -> SourceError {
    SourceError::Remote(e.to_string())
}

/// Store a copy of `tar` on the server behind `carrier`; returns once it is stored there
/// (written, synced, hash checked).
pub async fn push(carrier: &mut dyn Carrier, tar: &SourceTar) -> Result<(), SourceError> {
    carrier
        .call(&request(b'P', &tar.hash, &tar.bytes))
        .await
        .map(|_| ())
        .map_err(remote)
}

/// Read source `hash` from the server behind `carrier`, checked against its hash.
pub async fn fetch(carrier: &mut dyn Carrier, hash: &SourceHash) -> Result<Vec<u8>, SourceError> {
    let bytes = carrier
        .call(&request(b'G', hash, &[]))
        .await
        .map_err(remote)?;
    let actual = SourceHash::of(&bytes);
    if &actual != hash {
        return Err(SourceError::Mismatch {
            expected: hash.clone(),
            actual,
        });
    }
    Ok(bytes)
}
