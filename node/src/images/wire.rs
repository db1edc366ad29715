//! The image transfer's messages as bytes: one request per message, so they ride any
//! request/response carrier (the Bulk RPC lane).
//!
//! ```text
//!   request  = MAGIC kind body
//!   Begin    = "QIM1" 'B' json { id, images, estimate }      -> answer: empty
//!   Chunk    = "QIM1" 'C' id[16] seq[u64 LE] data            -> answer: empty (once taken)
//!   End      = "QIM1" 'E' json { id, bytes, sha256 }         -> answer: json LoadReport
//!   Abort    = "QIM1" 'A' json { id, reason }                -> answer: empty
//! ```
//!
//! A chunk's data is raw (no serializer walks a megabyte byte by byte). The magic lets a
//! Bulk-lane dispatcher that carries other transfers too (sources, snapshots) tell image
//! requests apart: [`is_image_request`].

use serde::{Deserialize, Serialize};

use super::TransferId;

/// The first bytes of every image request.
pub const MAGIC: &[u8; 4] = b"QIM1";

/// Whether a Bulk-lane request is one of the image transfer's.
pub fn is_image_request(request: &[u8]) -> bool {
    request.starts_with(MAGIC)
}

/// A transfer's opening: which images the stream holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Begin {
    /// The transfer.
    pub id: TransferId,
    /// The image references in the stream (as `docker save` was given them).
    pub images: Vec<String>,
    /// The engine's size of the images, when known (the stream is slightly larger).
    pub estimate: Option<u64>,
}

/// A transfer's end: how many bytes, and their sha256.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct End {
    /// The transfer.
    pub id: TransferId,
    /// The stream's length.
    pub bytes: u64,
    /// The stream's sha256, hex.
    pub sha256: String,
}

/// A transfer given up by the sender.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Abort {
    /// The transfer.
    pub id: TransferId,
    /// Why, for the receiver's log.
    pub reason: String,
}

/// One message of a transfer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// Opens a transfer.
    Begin(Begin),
    /// The next bytes of the stream.
    Chunk {
        /// The transfer.
        id: TransferId,
        /// 0, 1, 2, ... in order.
        seq: u64,
        /// The bytes.
        data: bytes::Bytes,
    },
    /// Closes it: check and load.
    End(End),
    /// Gives it up: nothing is loaded.
    Abort(Abort),
}

/// What the receiver's engine loaded (the answer to End).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoadReport {
    /// The images the transfer named, each now present on the receiver.
    pub images: Vec<String>,
    /// The stream's length.
    pub bytes: u64,
}

/// A message as request bytes.
pub fn encode(msg: &Message) -> Vec<u8> {
    let mut out = MAGIC.to_vec();
    // Serializing plain structs to JSON cannot fail.
    let json = |v: &dyn erased::Json| v.json();
    match msg {
        Message::Begin(b) => {
            out.push(b'B');
            out.extend(json(b));
        }
        Message::Chunk { id, seq, data } => {
            out.reserve(1 + 16 + 8 + data.len());
            out.push(b'C');
            out.extend_from_slice(&id.0);
            out.extend_from_slice(&seq.to_le_bytes());
            out.extend_from_slice(data);
        }
        Message::End(e) => {
            out.push(b'E');
            out.extend(json(e));
        }
        Message::Abort(a) => {
            out.push(b'A');
            out.extend(json(a));
        }
    }
    out
}

/// Request bytes as a message, or why they are not one.
pub fn decode(bytes: &[u8]) -> Result<Message, String> {
    let rest = bytes
        .strip_prefix(MAGIC.as_slice())
        .ok_or("not an image transfer request")?;
    let (&kind, body) = rest.split_first().ok_or("an empty image request")?;
    let bad = |e: serde_json::Error| format!("a malformed image request: {e}");
    match kind {
        b'B' => Ok(Message::Begin(serde_json::from_slice(body).map_err(bad)?)),
        b'E' => Ok(Message::End(serde_json::from_slice(body).map_err(bad)?)),
        b'A' => Ok(Message::Abort(serde_json::from_slice(body).map_err(bad)?)),
        b'C' => {
            if body.len() < 24 {
                return Err("a truncated image chunk".to_owned());
            }
            let mut id = [0u8; 16];
            id.copy_from_slice(&body[..16]);
            let mut seq = [0u8; 8];
            seq.copy_from_slice(&body[16..24]);
            Ok(Message::Chunk {
                id: TransferId(id),
                seq: u64::from_le_bytes(seq),
                data: bytes::Bytes::copy_from_slice(&body[24..]),
            })
        }
        other => Err(format!("an unknown image request kind {other:#04x}")),
    }
}

mod erased {
    pub trait Json {
        fn json(&self) -> Vec<u8>;
    }
    impl<T: serde::Serialize> Json for T {
        fn json(&self) -> Vec<u8> {
            serde_json::to_vec(self).unwrap_or_default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_message_round_trips_and_foreign_bytes_are_refused() {
        let id = TransferId([7; 16]);
        let msgs = [
            Message::Begin(Begin {
                id,
                images: vec!["a:1".into(), "b:2".into()],
                estimate: Some(42),
            }),
            Message::Chunk {
                id,
                seq: 9,
                data: bytes::Bytes::from_static(b"\x00tar bytes\xff"),
            },
            Message::Chunk {
                id,
                seq: 0,
                data: bytes::Bytes::new(),
            },
            Message::End(End {
                id,
                bytes: 5,
                sha256: "ab".repeat(32),
            }),
            Message::Abort(Abort {
                id,
                reason: "cancelled".into(),
            }),
        ];
        for m in msgs {
            let bytes = encode(&m);
            assert!(is_image_request(&bytes));
            assert_eq!(decode(&bytes).expect("decodes"), m);
        }
        assert!(decode(b"snapshot").is_err());
        assert!(decode(b"QIM1").is_err());
        assert!(decode(b"QIM1C\x01\x02").is_err());
        assert!(decode(b"QIM1Z{}").is_err());
        assert!(decode(b"QIM1B{not json").is_err());
    }
}
