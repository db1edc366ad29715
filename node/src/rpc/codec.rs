//! The one place bytes between servers are encoded and decoded: bincode 2 through serde, in
//! length-prefixed frames.
//!
//! A frame is a big-endian `u32` length followed by that many bytes of payload. The length is
//! checked against the lane's limit *before* any buffer is allocated, so a peer announcing a
//! 4 GB frame costs us four bytes of reading, not 4 GB of memory. Decoding also runs with a
//! byte limit, so a payload cannot claim a huge `Vec` inside a small frame.
//!
//! bincode's development has ceased (CRATES.md); keeping every call behind this module means a
//! later codec swap touches one file.

use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// The largest frame on the control, join and Raft lanes (Raft snapshots go by bulk).
pub const MAX_FRAME: u32 = 16 << 20;
/// The largest frame on the bulk lane (image and source chunks).
pub const MAX_BULK_FRAME: u32 = 64 << 20;
/// The decode limit for a typed message (hello, join): far below a frame.
const MAX_MESSAGE: usize = 1 << 20;
/// The decode limit for a Control lane message ([`decode_control`]): the lane's frame limit,
/// since a forwarded write carries a whole command (up to the cluster's command cap, 4 MiB)
/// and a launch answer may be large; a frame cannot hold more anyway.
pub const MAX_CONTROL_MESSAGE: usize = MAX_FRAME as usize;
/// The largest frame from a peer that has not authenticated (the hello of every connection,
/// and a joiner's request on the Join lane): 64 KiB. A hello is a few bytes and a join
/// request a few KB (a CSR and a server's description), so a stranger announcing 16 MiB is
/// refused from the four bytes of its length prefix.
pub const MAX_PREAUTH_FRAME: u32 = 64 << 10;

/// What went wrong reading or writing a frame.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    /// The connection failed or closed.
    #[error("connection: {0}")]
    Io(std::io::Error),
    /// The peer announced a frame above the limit; nothing was allocated for it.
    #[error("frame of {len} bytes is above the limit of {limit} bytes")]
    TooLarge {
        /// The announced length.
        len: u32,
        /// The limit.
        limit: u32,
    },
    /// The payload is not a valid message.
    #[error("undecodable message: {0}")]
    Decode(String),
    /// A message could not be encoded.
    #[error("unencodable message: {0}")]
    Encode(String),
}

impl From<std::io::Error> for CodecError {
    fn from(e: std::io::Error) -> Self {
        CodecError::Io(e)
    }
}

fn config() -> bincode::config::Configuration {
    bincode::config::standard()
}

/// Encode a typed message.
pub fn encode<T: Serialize>(msg: &T) -> Result<Vec<u8>, CodecError> {
    bincode::serde::encode_to_vec(msg, config()).map_err(|e| CodecError::Encode(e.to_string()))
}

/// Decode a typed message, refusing one that would need more than 1 MB.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    decode_within::<T, MAX_MESSAGE>(bytes)
}

fn decode_within<T: DeserializeOwned, const LIMIT: usize>(bytes: &[u8]) -> Result<T, CodecError> {
    let cfg = config().with_limit::<LIMIT>();
    let (v, used) = bincode::serde::decode_from_slice(bytes, cfg)
        .map_err(|e| CodecError::Decode(e.to_string()))?;
    if used != bytes.len() {
        return Err(CodecError::Decode(format!(
            "{} trailing bytes after the message",
            bytes.len() - used
        )));
    }
    Ok(v)
}

/// Decode a Control lane message (a forwarded command, a launch request or answer), refusing
/// one that would need more than [`MAX_CONTROL_MESSAGE`].
pub fn decode_control<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    decode_within::<T, MAX_CONTROL_MESSAGE>(bytes)
}

/// How many bytes [`encode`] would make of `msg`, counted without making them.
pub fn encoded_len<T: Serialize>(msg: &T) -> Result<usize, CodecError> {
    let mut count = bincode::enc::write::SizeWriter::default();
    bincode::serde::encode_into_writer(msg, &mut count, config())
        .map_err(|e| CodecError::Encode(e.to_string()))?;
    Ok(count.bytes_written)
}

/// Write one frame.
pub async fn write_frame<W: AsyncWrite + Unpin>(
    w: &mut W,
    payload: &[u8],
) -> Result<(), CodecError> {
    let len = u32::try_from(payload.len()).map_err(|_| CodecError::TooLarge {
        len: u32::MAX,
        limit: MAX_BULK_FRAME,
    })?;
    w.write_all(&len.to_be_bytes()).await?;
    w.write_all(payload).await?;
    w.flush().await?;
    Ok(())
}

/// Read one frame of at most `limit` bytes. `Ok(None)` is a clean end of stream before a frame.
pub async fn read_frame<R: AsyncRead + Unpin>(
    r: &mut R,
    limit: u32,
) -> Result<Option<Vec<u8>>, CodecError> {
    let mut len = [0u8; 4];
    match r.read_exact(&mut len).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e.into()),
    }
    let len = u32::from_be_bytes(len);
    if len > limit {
        return Err(CodecError::TooLarge { len, limit });
    }
    let mut buf = vec![0u8; len as usize];
    r.read_exact(&mut buf).await?;
    Ok(Some(buf))
}

/// Write a typed message as one frame.
pub async fn send<W: AsyncWrite + Unpin, T: Serialize>(
    w: &mut W,
    msg: &T,
) -> Result<(), CodecError> {
    write_frame(w, &encode(msg)?).await
}

/// Read a typed message from one frame; the end of the stream is an error here.
pub async fn recv<R: AsyncRead + Unpin, T: DeserializeOwned>(r: &mut R) -> Result<T, CodecError> {
    recv_within(r, MAX_FRAME).await
}

/// [`recv`] with a frame of at most `limit` bytes (a peer that has not authenticated gets
/// [`MAX_PREAUTH_FRAME`]).
pub async fn recv_within<R: AsyncRead + Unpin, T: DeserializeOwned>(
    r: &mut R,
    limit: u32,
) -> Result<T, CodecError> {
    match read_frame(r, limit).await? {
        Some(b) => decode(&b),
        None => Err(CodecError::Io(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "the peer closed the connection",
        ))),
    }
}

/// A request's answer as a frame payload: `0` and the bytes, or `1` and the error text. (Not
/// through bincode: answers can be large, and this costs no copy or decode limit.)
pub fn answer_frame(answer: Result<Vec<u8>, String>) -> Vec<u8> {
    match answer {
        Ok(mut b) => {
            b.insert(0, 0);
            b
        }
        Err(e) => {
            let mut b = vec![1];
            b.extend_from_slice(e.as_bytes());
            b
        }
    }
}

/// The inverse of [`answer_frame`].
pub fn parse_answer(mut frame: Vec<u8>) -> Result<Result<Vec<u8>, String>, CodecError> {
    match frame.first() {
        Some(0) => {
            frame.remove(0);
            Ok(Ok(frame))
        }
        Some(1) => Ok(Err(String::from_utf8_lossy(&frame[1..]).into_owned())),
        _ => Err(CodecError::Decode(
            "an answer frame starts with 0 or 1".to_owned(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_oversized_frame_is_refused_from_its_header() {
        // Only the 4-byte header exists: were the reader to allocate and read, it would fail
        // with an EOF instead of TooLarge.
        let mut input: &[u8] = &u32::MAX.to_be_bytes();
        let e = read_frame(&mut input, MAX_FRAME)
            .await
            .expect_err("refused");
        assert!(
            matches!(e, CodecError::TooLarge { len: u32::MAX, .. }),
            "{e}"
        );
    }

    #[tokio::test]
    async fn frames_round_trip_and_a_clean_end_is_none() {
        let mut buf = Vec::new();
        send(&mut buf, &("hello".to_owned(), 7u32))
            .await
            .expect("send");
        let mut r: &[u8] = &buf;
        let v: (String, u32) = recv(&mut r).await.expect("recv");
        assert_eq!(v, ("hello".to_owned(), 7));
        assert!(read_frame(&mut r, MAX_FRAME).await.expect("eof").is_none());
    }

    #[test]
    fn a_control_message_of_2_mib_decodes_and_encoded_len_counts_it() {
        // A forwarded command is up to 4 MiB: the general 1 MiB decode limit refused it.
        let big = vec![7u8; 2 << 20];
        let bytes = encode(&big).expect("encode");
        assert_eq!(encoded_len(&big).expect("len"), bytes.len());
        assert!(
            decode::<Vec<u8>>(&bytes).is_err(),
            "above the general limit"
        );
        assert_eq!(decode_control::<Vec<u8>>(&bytes).expect("decodes"), big);
    }

    #[test]
    fn a_message_claiming_a_huge_vec_is_refused_by_the_decode_limit() {
        // A varint length of 2^40 elements for a Vec<u8>, in a 6-byte payload.
        let bytes = encode(&(1u64 << 40)).expect("encode");
        assert!(decode::<Vec<u8>>(&bytes).is_err());
    }
}
