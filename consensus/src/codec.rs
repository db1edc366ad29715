//! Every byte format the crate writes, in one place.
//!
//! Two encodings meet here. Raft's own records (entries, hard state, conf state, snapshot
//! metadata, messages) are protobuf, because that is what raft-rs speaks. Our records (the
//! proposal envelope inside an entry, the replicated snapshot, state-machine commands and
//! outputs) are bincode 2 (`config::standard()`, varint), kept behind [`encode`] and
//! [`decode`] so that the day bincode is replaced only this file changes. Every decode is
//! size-limited, because some of these bytes come from the network.
//!
//! Versioning: our records start with a format byte. Format 1 ([`FORMAT_V1`]) is the bytes
//! every build has written; a state machine may mark a record with a higher format (its state
//! version, [`crate::StateMachine::FORMAT`]) when the record holds something only newer
//! decoders know (a command variant, a state shape). The body after the byte is bincode
//! either way. A node that meets a format above the highest it knows refuses it loudly
//! ([`CodecError::Newer`]) instead of guessing; [`decode_upto`] reads every format up to one
//! the caller knows, and [`format_of`] tells which shape the body has, so a machine can migrate
//! an older shape in one place. State-machine command enums are encoded by variant position,
//! so a machine may add variants at the end, never reorder.

use raft::eraftpb::{HardState, Message, SnapshotMetadata};
use serde::{de::DeserializeOwned, Serialize};

/// The first (and so far only) format of our own records.
pub const FORMAT_V1: u8 = 1;

/// The largest record [`decode`] accepts (64 MiB): a snapshot of the cluster state stays far
/// below it; anything bigger is a bug or an attack.
pub const MAX_RECORD: usize = 64 << 20;

type Config = bincode::config::Configuration<
    bincode::config::LittleEndian,
    bincode::config::Varint,
    bincode::config::Limit<MAX_RECORD>,
>;

fn config() -> Config {
    bincode::config::standard().with_limit::<MAX_RECORD>()
}

/// A record that could not be encoded or decoded.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("encode: {0}")]
    Encode(String),
    #[error("decode: {0}")]
    Decode(String),
    #[error("record format {found} is not known to this node (it knows {FORMAT_V1}): upgrade it")]
    UnknownFormat { found: u8 },
    /// A record written by a newer build, marked with a format above the highest this build
    /// knows.
    #[error(
        "this server understands state up to v{known}; the record is v{found}: upgrade quarryd \
         on this server"
    )]
    Newer {
        /// The record's format.
        found: u8,
        /// The highest this build knows.
        known: u8,
    },
    #[error("empty record")]
    Empty,
    #[error("protobuf: {0}")]
    Protobuf(#[from] protobuf::ProtobufError),
}

/// Encodes one of our records: the format byte, then bincode.
pub fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, CodecError> {
    encode_as(FORMAT_V1, value)
}

/// Encodes one of our records marked with `format` (1: the bytes every build reads; higher:
/// a record only builds that know that format may read).
pub fn encode_as<T: Serialize>(format: u8, value: &T) -> Result<Vec<u8>, CodecError> {
    if format == 0 {
        return Err(CodecError::Encode("record format 0 does not exist".into()));
    }
    let mut out = vec![format];
    let body = bincode::serde::encode_to_vec(value, config())
        .map_err(|e| CodecError::Encode(e.to_string()))?;
    out.extend_from_slice(&body);
    Ok(out)
}

/// Decodes one of our records, checking its format byte (1 only) and size.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    let (&format, _) = bytes.split_first().ok_or(CodecError::Empty)?;
    if format != FORMAT_V1 {
        return Err(CodecError::UnknownFormat { found: format });
    }
    decode_upto(FORMAT_V1, bytes)
}

/// The format byte of a record, refusing one above `known` (the highest the caller reads).
pub fn format_of(bytes: &[u8], known: u8) -> Result<u8, CodecError> {
    match bytes.first() {
        None => Err(CodecError::Empty),
        Some(0) => Err(CodecError::UnknownFormat { found: 0 }),
        Some(&found) if found > known => Err(CodecError::Newer { found, known }),
        Some(&found) => Ok(found),
    }
}

/// Decodes one of our records of any format from 1 to `known` into `T` (the caller picks `T`
/// by [`format_of`] when the shapes differ).
pub fn decode_upto<T: DeserializeOwned>(known: u8, bytes: &[u8]) -> Result<T, CodecError> {
    format_of(bytes, known)?;
    let body = &bytes[1..];
    let (value, used) = bincode::serde::decode_from_slice(body, config())
        .map_err(|e| CodecError::Decode(e.to_string()))?;
    if used != body.len() {
        return Err(CodecError::Decode(format!(
            "{} trailing bytes",
            body.len() - used
        )));
    }
    Ok(value)
}

/// `#[serde(with = "codec::bytes")]` for a `Vec<u8>`: one bulk copy instead of a sequence of
/// single bytes. The bincode encoding is the same (a varint length, then the bytes).
pub mod bytes {
    use serde::{Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(v)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Vec<u8>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("bytes")
            }
            fn visit_bytes<E>(self, v: &[u8]) -> Result<Vec<u8>, E> {
                Ok(v.to_vec())
            }
            fn visit_byte_buf<E>(self, v: Vec<u8>) -> Result<Vec<u8>, E> {
                Ok(v)
            }
        }
        d.deserialize_byte_buf(V)
    }
}

/// Protobuf bytes of a raft record (entries, hard state, messages...).
pub fn encode_pb<M: protobuf::Message>(m: &M) -> Result<Vec<u8>, CodecError> {
    Ok(m.write_to_bytes()?)
}

fn decode_pb<M: protobuf::Message>(bytes: &[u8]) -> Result<M, CodecError> {
    if bytes.len() > MAX_RECORD {
        return Err(CodecError::Decode(format!(
            "{} bytes is too big",
            bytes.len()
        )));
    }
    Ok(M::parse_from_bytes(bytes)?)
}

/// Decodes a raft message (the transport's payload).
pub fn decode_message(bytes: &[u8]) -> Result<Message, CodecError> {
    decode_pb(bytes)
}

pub(crate) fn decode_hard_state(bytes: &[u8]) -> Result<HardState, CodecError> {
    decode_pb(bytes)
}

pub(crate) fn decode_snapshot_metadata(bytes: &[u8]) -> Result<SnapshotMetadata, CodecError> {
    decode_pb(bytes)
}

pub(crate) fn decode_conf_change(bytes: &[u8]) -> Result<raft::eraftpb::ConfChange, CodecError> {
    decode_pb(bytes)
}

pub(crate) fn decode_conf_change_v2(
    bytes: &[u8],
) -> Result<raft::eraftpb::ConfChangeV2, CodecError> {
    decode_pb(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_unknown_formats_are_refused() {
        let v: (u64, String) = (7, "x".into());
        let bytes = encode(&v).unwrap();
        assert_eq!(decode::<(u64, String)>(&bytes).unwrap(), v);
        let mut bad = bytes.clone();
        bad[0] = 9;
        assert!(matches!(
            decode::<(u64, String)>(&bad),
            Err(CodecError::UnknownFormat { found: 9 })
        ));
        assert!(decode::<(u64, String)>(&bytes[..bytes.len() - 1]).is_err());
    }

    #[test]
    fn a_record_of_a_newer_format_is_refused_with_what_to_do() {
        let v: (u64, String) = (7, "x".into());
        let v2 = encode_as(2, &v).unwrap();
        assert_eq!(v2[1..], encode(&v).unwrap()[1..], "same body, another mark");
        assert_eq!(decode_upto::<(u64, String)>(2, &v2).unwrap(), v);
        assert_eq!(
            decode_upto::<(u64, String)>(2, &encode(&v).unwrap()).unwrap(),
            v
        );
        let e = decode_upto::<(u64, String)>(1, &v2).unwrap_err();
        assert!(matches!(e, CodecError::Newer { found: 2, known: 1 }), "{e}");
        assert_eq!(
            e.to_string(),
            "this server understands state up to v1; the record is v2: upgrade quarryd on \
             this server"
        );
        assert!(matches!(
            decode::<(u64, String)>(&v2),
            Err(CodecError::UnknownFormat { found: 2 })
        ));
        assert!(encode_as(0, &v).is_err());
        assert!(matches!(
            format_of(&[0, 1], 2),
            Err(CodecError::UnknownFormat { found: 0 })
        ));
    }

    #[test]
    fn bulk_bytes_encode_like_a_sequence_of_bytes() {
        #[derive(serde::Serialize, serde::Deserialize, PartialEq, Debug)]
        struct Bulk(#[serde(with = "super::bytes")] Vec<u8>);
        let v: Vec<u8> = (0..1000u32).map(|i| (i % 251) as u8).collect();
        let bulk = encode(&Bulk(v.clone())).unwrap();
        assert_eq!(bulk, encode(&v).unwrap());
        assert_eq!(decode::<Bulk>(&bulk).unwrap(), Bulk(v.clone()));
        assert_eq!(decode::<Vec<u8>>(&bulk).unwrap(), v);
    }

    #[test]
    fn raft_messages_round_trip_as_protobuf() {
        let m = Message {
            from: 1,
            to: 2,
            term: 3,
            ..Default::default()
        };
        let b = encode_pb(&m).unwrap();
        assert_eq!(decode_message(&b).unwrap(), m);
    }
}
