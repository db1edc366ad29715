//! The gossip datagram seal (see the module above for the format) and the replay window.

use std::collections::HashMap;

use chacha20poly1305::aead::{AeadInOut, KeyInit};
use chacha20poly1305::{Key, XChaCha20Poly1305, XNonce};
use sha2::{Digest, Sha256};

/// The first bytes of every sealed datagram.
const MAGIC: &[u8; 2] = b"QG";
/// The seal's format version.
const VERSION: u8 = 1;
/// Bytes before the ciphertext: magic, version, nonce.
const HEADER: usize = 2 + 1 + 24;
/// The Poly1305 tag.
const TAG: usize = 16;
/// The largest UDP payload over IPv4.
pub const MAX_DATAGRAM: usize = 65_507;
/// How far below the highest counter seen a late datagram is still accepted (UDP reorders).
pub const WINDOW: u64 = 128;

/// The bytes the seal adds around a payload from `sender`.
pub fn overhead(sender: &str) -> usize {
    HEADER + TAG + 1 + sender.len() + 16
}

/// Why a datagram was refused or could not be sealed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SealError {
    /// Not a sealed datagram of ours, another key, or altered on the way.
    #[error("datagram does not open (not sealed, wrong key or tampered)")]
    DoesNotOpen,
    /// Opened, but the sealed header is malformed (a member with a broken sealer).
    #[error("sealed header malformed")]
    Malformed,
    /// The sealed datagram would exceed the UDP limit.
    #[error("sealed datagram of {0} bytes exceeds the {MAX_DATAGRAM}-byte UDP limit")]
    Oversized(usize),
    /// The sender name is longer than 255 bytes.
    #[error("sender name longer than 255 bytes")]
    SenderTooLong,
    /// The system random source failed.
    #[error("no randomness for a nonce")]
    Random,
}

/// The sealing key: derived from the cluster's gossip key and cluster id, so one gossip key
/// reused by two clusters still gives two keys.
#[derive(Clone)]
pub struct SealKey {
    cipher: XChaCha20Poly1305,
}

impl std::fmt::Debug for SealKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SealKey(..)")
    }
}

impl SealKey {
    /// `SHA-256("quarry gossip seal v1" 0 cluster_id 0 gossip_key)`: a domain-separated hash of
    /// a uniformly random 32-byte secret is a sound key derivation for one purpose.
    pub fn derive(gossip_key: &[u8; 32], cluster_id: &str) -> Self {
        let mut h = Sha256::new();
        h.update(b"quarry gossip seal v1\0");
        h.update(cluster_id.as_bytes());
        h.update([0u8]);
        h.update(gossip_key);
        let bytes: [u8; 32] = h.finalize().into();
        SealKey {
            cipher: XChaCha20Poly1305::new(&Key::from(bytes)),
        }
    }
}

/// The sealed header: who sent it, in which boot, and its place in that boot's sequence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// The sender's server name.
    pub sender: String,
    /// The sender's boot generation (grows on every restart).
    pub generation: u64,
    /// Grows by one per datagram within a generation.
    pub counter: u64,
}

/// Seals `payload` from `header` into one datagram.
pub fn seal(key: &SealKey, header: &Header, payload: &[u8]) -> Result<Vec<u8>, SealError> {
    let sender = header.sender.as_bytes();
    let sender_len = u8::try_from(sender.len()).map_err(|_| SealError::SenderTooLong)?;
    let total = overhead(&header.sender) + payload.len();
    if total > MAX_DATAGRAM {
        return Err(SealError::Oversized(total));
    }
    let mut nonce = [0u8; 24];
    getrandom::fill(&mut nonce).map_err(|_| SealError::Random)?;
    let mut body = Vec::with_capacity(total);
    body.push(sender_len);
    body.extend_from_slice(sender);
    body.extend_from_slice(&header.generation.to_le_bytes());
    body.extend_from_slice(&header.counter.to_le_bytes());
    body.extend_from_slice(payload);
    let aad = [MAGIC[0], MAGIC[1], VERSION];
    key.cipher
        .encrypt_in_place(&XNonce::from(nonce), &aad, &mut body)
        .map_err(|_| SealError::Oversized(total))?;
    let mut out = Vec::with_capacity(total);
    out.extend_from_slice(&aad);
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&body);
    Ok(out)
}

/// Opens a datagram: its header and payload, or why not. Nothing of a datagram that does not
/// open is looked at beyond its first bytes.
pub fn open(key: &SealKey, datagram: &[u8]) -> Result<(Header, Vec<u8>), SealError> {
    if datagram.len() < HEADER + TAG || &datagram[..2] != MAGIC || datagram[2] != VERSION {
        return Err(SealError::DoesNotOpen);
    }
    let mut nonce = [0u8; 24];
    nonce.copy_from_slice(&datagram[3..HEADER]);
    let mut body = datagram[HEADER..].to_vec();
    key.cipher
        .decrypt_in_place(&XNonce::from(nonce), &datagram[..3], &mut body)
        .map_err(|_| SealError::DoesNotOpen)?;
    let sender_len = *body.first().ok_or(SealError::Malformed)? as usize;
    let fixed = 1 + sender_len + 16;
    if body.len() < fixed {
        return Err(SealError::Malformed);
    }
    let sender = std::str::from_utf8(&body[1..1 + sender_len])
        .map_err(|_| SealError::Malformed)?
        .to_owned();
    let num = |at: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&body[at..at + 8]);
        u64::from_le_bytes(b)
    };
    let header = Header {
        sender,
        generation: num(1 + sender_len),
        counter: num(1 + sender_len + 8),
    };
    let payload = body[fixed..].to_vec();
    Ok((header, payload))
}

/// Why the window refused a datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Replay {
    /// From a generation older than one already seen from this sender.
    OldGeneration,
    /// More than [`WINDOW`] counters below the highest seen.
    TooOld,
    /// This counter was already accepted.
    Duplicate,
}

/// One sender's window: the highest generation, the highest counter in it, and a bitmap of the
/// [`WINDOW`] counters below (bit i = counter `highest - i` seen), as in IPsec's anti-replay.
#[derive(Debug, Clone, Copy)]
struct SenderWindow {
    generation: u64,
    highest: u64,
    seen: u128,
}

/// Per-sender replay windows. Only datagrams that opened reach it, so only key holders can
/// create entries; it is still capped ([`ReplayWindow::MAX_SENDERS`]).
#[derive(Debug, Default)]
pub struct ReplayWindow {
    senders: HashMap<String, SenderWindow>,
}

impl ReplayWindow {
    /// At most this many senders are remembered; beyond it new senders are refused as
    /// [`Replay::TooOld`] rather than forgetting a known one (forgetting reopens its replays).
    pub const MAX_SENDERS: usize = 4096;

    /// Accepts `header` (and records it) or says why it is a replay.
    pub fn check(&mut self, header: &Header) -> Result<(), Replay> {
        let Some(w) = self.senders.get_mut(&header.sender) else {
            if self.senders.len() >= Self::MAX_SENDERS {
                return Err(Replay::TooOld);
            }
            self.senders.insert(
                header.sender.clone(),
                SenderWindow {
                    generation: header.generation,
                    highest: header.counter,
                    seen: 1,
                },
            );
            return Ok(());
        };
        if header.generation < w.generation {
            return Err(Replay::OldGeneration);
        }
        if header.generation > w.generation {
            *w = SenderWindow {
                generation: header.generation,
                highest: header.counter,
                seen: 1,
            };
            return Ok(());
        }
        if header.counter > w.highest {
            let shift = header.counter - w.highest;
            w.seen = if shift >= WINDOW { 0 } else { w.seen << shift };
            w.seen |= 1;
            w.highest = header.counter;
            return Ok(());
        }
        let back = w.highest - header.counter;
        if back >= WINDOW {
            return Err(Replay::TooOld);
        }
        let bit = 1u128 << back;
        if w.seen & bit != 0 {
            return Err(Replay::Duplicate);
        }
        w.seen |= bit;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(b: u8) -> SealKey {
        SealKey::derive(&[b; 32], "c1")
    }

    fn hdr(generation: u64, counter: u64) -> Header {
        Header {
            sender: "h1".into(),
            generation,
            counter,
        }
    }

    #[test]
    fn sealed_datagram_opens_with_the_same_key_only() {
        let d = seal(&key(1), &hdr(7, 3), b"payload").expect("seal");
        assert_eq!(d.len(), overhead("h1") + 7);
        let (h, p) = open(&key(1), &d).expect("open");
        assert_eq!((h, p.as_slice()), (hdr(7, 3), &b"payload"[..]));
        assert_eq!(open(&key(2), &d), Err(SealError::DoesNotOpen));
        assert_eq!(
            open(&SealKey::derive(&[1; 32], "c2"), &d),
            Err(SealError::DoesNotOpen)
        );
    }

    #[test]
    fn any_flipped_bit_or_plaintext_does_not_open() {
        let d = seal(&key(1), &hdr(1, 1), b"abc").expect("seal");
        for i in 0..d.len() {
            let mut t = d.clone();
            t[i] ^= 0x10;
            assert_eq!(open(&key(1), &t), Err(SealError::DoesNotOpen), "byte {i}");
        }
        assert_eq!(
            open(&key(1), b"\xb3\xb0\x00\x00plain chitchat"),
            Err(SealError::DoesNotOpen)
        );
        assert_eq!(
            open(&key(1), &d[..d.len() - 1]),
            Err(SealError::DoesNotOpen)
        );
    }

    #[test]
    fn two_seals_of_one_payload_differ() {
        let a = seal(&key(1), &hdr(1, 1), b"same").expect("seal");
        let b = seal(&key(1), &hdr(1, 1), b"same").expect("seal");
        assert_ne!(a, b, "a fresh nonce per datagram");
    }

    #[test]
    fn oversized_payload_is_refused_not_sealed() {
        let big = vec![0u8; MAX_DATAGRAM];
        assert!(matches!(
            seal(&key(1), &hdr(1, 1), &big),
            Err(SealError::Oversized(_))
        ));
        let fits = vec![0u8; MAX_DATAGRAM - overhead("h1")];
        assert_eq!(
            seal(&key(1), &hdr(1, 1), &fits).expect("fits").len(),
            MAX_DATAGRAM
        );
    }

    #[test]
    fn window_refuses_duplicates_old_counters_and_old_generations() {
        let mut w = ReplayWindow::default();
        assert_eq!(w.check(&hdr(5, 10)), Ok(()));
        assert_eq!(w.check(&hdr(5, 10)), Err(Replay::Duplicate));
        assert_eq!(w.check(&hdr(5, 12)), Ok(()));
        assert_eq!(
            w.check(&hdr(5, 11)),
            Ok(()),
            "reordered but inside the window"
        );
        assert_eq!(w.check(&hdr(5, 11)), Err(Replay::Duplicate));
        assert_eq!(w.check(&hdr(5, 12 + WINDOW)), Ok(()));
        assert_eq!(w.check(&hdr(5, 12)), Err(Replay::TooOld));
        assert_eq!(w.check(&hdr(5, 13)), Ok(()), "just inside the window");
        assert_eq!(
            w.check(&hdr(6, 0)),
            Ok(()),
            "a restart starts a fresh window"
        );
        assert_eq!(w.check(&hdr(5, 1000)), Err(Replay::OldGeneration));
        let other = Header {
            sender: "h2".into(),
            generation: 1,
            counter: 0,
        };
        assert_eq!(w.check(&other), Ok(()), "windows are per sender");
    }
}
