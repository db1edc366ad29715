//! Sealed gossip: the datagram seal, its replay window, and the chitchat transport.
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
//! [`transport`] is the chitchat 0.11 `Transport` over a real UDP socket that applies both;
//! [`chitchat_config`] and [`failure_detector`] hold the tuned timings.
//!
//! [`record`] is what a server publishes (capped size) and its persisted boot generation.
//!
//! [`member`] is the owner task: chitchat over the sealing transport, the record published,
//! liveness (alive/suspect/dead, since when) as a snapshot on a watch channel.
//!
//! Left out: a receiver that restarts forgets its windows, so a replay of a current-generation
//! datagram right after a receiver restart is only bounded by chitchat's own versioning.

pub mod member;
pub mod record;
pub mod seal;
pub mod transport;

use std::net::SocketAddr;
use std::time::Duration;

use chitchat::{ChitchatConfig, ChitchatId, FailureDetectorConfig};

/// Gossip round: each member sends a digest to up to 3 peers every 150 ms, so news reaches a
/// 5-member cluster in a few rounds (well under a second) at a few datagrams per second.
pub const GOSSIP_INTERVAL: Duration = Duration::from_millis(150);

/// The failure detector. chitchat 0.11's "phi" is linear: `silence / mean heartbeat interval`,
/// and a peer is dead above `phi_threshold`. The mean interval a member observes is at most
/// one gossip round (150 ms; less with more peers relaying), so a threshold of 12 declares a
/// stopped member dead after at most ~1.8 s of silence, plus one round to notice: well inside
/// the 5 s target. An idle member still heartbeats every round, so a false dead needs 12
/// missed rounds in a row (~1.8 s without one heartbeat reaching us by any path).
/// `initial_interval` is the prior mean (weight 5 samples) while few samples exist: 200 ms,
/// a little above one round; with 500 ms a member seen for 2 s was declared dead only after
/// 3.75 s (measured), as the prior dominated the ~13 real samples. Intervals above 2 s (a partition healing) are not sampled. Dead members are
/// forgotten after 60 s (chitchat's default of 24 h makes every digest carry them).
pub fn failure_detector() -> FailureDetectorConfig {
    FailureDetectorConfig {
        phi_threshold: 12.0,
        sampling_window_size: 1000,
        max_interval: Duration::from_secs(2),
        initial_interval: Duration::from_millis(200),
        dead_node_grace_period: Duration::from_secs(60),
    }
}

/// chitchat's config for one member (it has no `Default`: every field is set here).
pub fn chitchat_config(
    name: &str,
    generation: u64,
    cluster_id: &str,
    listen: SocketAddr,
    seeds: &[SocketAddr],
) -> ChitchatConfig {
    ChitchatConfig {
        chitchat_id: ChitchatId::new(name, generation, listen),
        cluster_id: cluster_id.to_owned(),
        gossip_interval: GOSSIP_INTERVAL,
        listen_addr: listen,
        seed_nodes: seeds.iter().map(|s| s.to_string()).collect(),
        failure_detector_config: failure_detector(),
        marked_for_deletion_grace_period: Duration::from_secs(60),
        catchup_callback: None,
        extra_liveness_predicate: None,
    }
}
