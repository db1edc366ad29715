//! Sealed gossip: the datagram seal and its replay window.
//!
//! Gossip (chitchat, UDP) has no authentication of its own, only a cluster-id string compare.
//! Every gossip datagram is therefore sealed with an AEAD under a key derived from the
//! cluster's 32-byte gossip key ([`seal`]):
//!
//! ```text
//! datagram  = "QG" | version (1) | nonce (24, random) | XChaCha20-Poly1305(plaintext) | tag (16)
//! aad       = "QG" | version
//! plaintext = sender length (1) | sender | generation (8, LE) | counter (8, LE) | payload
//! ```
//!
//! Invariants:
//! - a datagram that does not open (plaintext, another key, one flipped bit) is dropped and
//!   counted by the caller; its payload is never parsed;
//! - nonces are 192-bit random values, so two senders can never collide on one (the 96-bit
//!   nonce of plain ChaCha20-Poly1305 would need coordination between senders);
//! - replays are dropped by a per-sender [`seal::ReplayWindow`]: a sender's boot generation
//!   only grows (it is bumped on every restart), and within one generation the counter only
//!   grows; a counter already seen, or more than [`seal::WINDOW`] below the highest one, or a
//!   generation below the highest seen, is refused.
//!
//! Left out (for now): the chitchat transport over a UDP socket and the member task built on
//! it; a receiver that restarts forgets its windows, so a replay of a current-generation
//! datagram right after a receiver restart is only bounded by chitchat's own versioning.

pub mod seal;
