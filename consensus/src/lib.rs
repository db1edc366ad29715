//! quarry-consensus: the cluster's memory, a durable Raft on tikv's raft-rs.
//!
//! raft-rs is the protocol without the I/O: a [`raft::RawNode`] takes ticks, messages and
//! proposals, and hands back a `Ready` of things to persist, send and apply. This crate is
//! that I/O: durable storage ([`storage`]: the log and hard state in raft-engine, TiKV's
//! append-only log engine; snapshot data in redb), one owner task per node (`node.rs`), a
//! replicated state machine interface with exactly-once proposals ([`StateMachine`],
//! [`IdempotencyKey`]), a client [`Handle`], a [`transport::Transport`] trait with an
//! in-memory network for tests ([`memnet`]) and a TCP one ([`tcp`]), and every byte format
//! in one place ([`codec`]).
//!
//! # The loop
//!
//! One task owns the `RawNode`, its storage and the state machine; nothing else touches them
//! (no locks). It selects, biased in this order, over: the tick (100 ms), inbound messages
//! (up to 256 per wake-up, so one write covers many), and client requests (up to 256 too:
//! concurrent proposals share one write; the benchmark reports entries per fsync). After
//! each wake-up it handles the `Ready`s, in the order raft-rs documents:
//!
//! 1. send `messages()` — a leader's appends may leave before its own write, since a leader
//!    counts itself only once its entries are durable (Raft thesis §10.2.1). Before its
//!    write the task yields once, so the transport's writers put the appends on the wire
//!    first and the followers' writes overlap the leader's;
//! 2. persist the received snapshot, the new `entries()` and the `hs()` in **one** log
//!    batch, fsynced before it returns — entries and hard state can never be torn apart (a
//!    hard state past the log is the classic "commit out of range" after a crash). A hard
//!    state whose term and vote did not change is not written (only its commit index moved,
//!    which promises nothing and is re-learnt after a crash), so a `Ready` with only a new
//!    commit index costs no fsync and an append writes only entries. Only once that write
//!    returned do `persisted_messages()` leave (votes, append acknowledgements: promises that
//!    something is on disk). On a multi-threaded runtime the write runs on the blocking pool
//!    while the task waits, and the persisted messages are handed to the transport from
//!    there the moment the fsync returns (a follower's acknowledgement is on the commit's
//!    critical path; waiting for the task to be scheduled again cost a thread hop);
//! 3. restore the state machine from the snapshot, then apply `committed_entries()`;
//! 4. `advance()`: record the `LightReady`'s commit index, send its messages, apply its
//!    committed entries, `advance_apply_to(applied)`; compact if the log grew long.
//!
//! Then it publishes the applied index, role, leader and term on the node's watch
//! ([`Handle::watch`], a [`NodeState`]) if one of them changed, so tasks that act on commits
//! or on leadership wake when they change instead of polling [`Handle::status`].
//!
//! Where one commit's time goes (`benches/commit.rs`, 1 proposer, 3 nodes in one process on
//! loopback, 2 shared cores; p50 per stage, timed on every hop): the follower's log write,
//! about 160 µs — one append + `fdatasync`, which alone takes about one 4 KiB fsync
//! (`log_commit_ms` ≈ `fsync_ms` ≈ 0.09 ms) but about twice that with the three nodes syncing
//! at once on one disk; then the task wake-ups around two loopback TCP trips: the leader's
//! writer (16 µs after the yield), the follower's reader (31 µs, with the trip), the hop to
//! the blocking pool (26 µs), the acknowledgement's writer (26 µs), the leader's reader
//! (18 µs), and about 15 µs of raft-rs, apply and reply. Measured end to end (full mode,
//! median of 3 runs, load 4–9): p50 0.37 ms at `fsync_ms` 0.10 (3.7×; with the log in redb
//! it was 0.78 ms, 7.8×), ops/s 2.6× etcd's at 1 proposer and 5.5× at 64.
//!
//! The floor under that: `io_commit_ms`, the same run's p50 of a commit's I/O alone (three
//! threads, blocking loopback TCP, the same raft-engine writes; no consensus, no runtime),
//! is 2.5–2.9 × `fsync_ms` on this machine, and the p50 above is 1.3–1.5 × it. The thread
//! hand-offs cost more than their count suggests here: on this 2-vCPU VM a wake-up that lands
//! on the other, halted vCPU takes 20–60 µs, one on the waker's vCPU (a socket's wake-up
//! usually is) 3–10 µs.
//!
//! # Membership
//!
//! [`Handle::change_membership`] proposes one `ConfChangeV2` (simple for one change, joint
//! consensus with an automatic leave for several; checked first with raft-rs's own changer so
//! an invalid change is refused, not committed), one at a time, and answers once the change —
//! and the leave, if joint — is applied. [`Handle::transfer_leader`] hands leadership to a
//! voter. The leader never removes or demotes itself: transfer first.
//!
//! A new cluster's founding members start from a snapshot at
//! [`storage::BOOTSTRAP_INDEX`] holding their configuration; a *joiner* (started with no
//! voters on a brand-new storage) has an empty configuration, never campaigns, and since the
//! leader has no log below that snapshot, it catches up by snapshot. A snapshot must name its
//! recipient (raft-rs refuses it otherwise), so when the leader's stored snapshot predates a
//! new member the storage answers "temporarily unavailable" and the node takes a fresh one.
//! Each applied conf change's configuration is written durably with its index; a restart
//! starts from it and skips the conf changes at or below it when replaying the log. A removed
//! node is not promotable and so never campaigns; one that missed its removal cannot disturb
//! the others either (pre-vote, and check-quorum leases).
//!
//! Raft is configured with `check_quorum` (a leader that cannot hear a quorum for an
//! election timeout steps down, which is how a minority leader's clients learn "no quorum")
//! and `pre_vote` (a node that was partitioned does not disrupt the cluster by bumping the
//! term when it returns). Heartbeats every tick; election timeout drawn by raft-rs from
//! `[1 s, 2 s)` (10..20 ticks) on each term. ReadIndex reads use `ReadOnlyOption::Safe` (a
//! heartbeat round confirms leadership; no clock assumptions).
//!
//! # Invariants
//!
//! - Nothing is acknowledged (a vote, an append, a client's proposal) before it is durable.
//! - Only committed entries are applied, in log order, each once: an entry at or below the
//!   applied index is skipped (after a snapshot, after a restart's replay).
//! - `apply` is deterministic; the session table that deduplicates retried proposals is
//!   replicated state and part of the snapshot.
//! - A proposal's reply comes from applying *its* entry: the pending proposal remembers the
//!   (index, term) it was appended at, and an entry of another term at that index means it
//!   was lost. Only a success is a definite answer; after any error the client retries with
//!   the same idempotency key (see [`ClientError`]).
//! - A read runs on the state machine only once it has applied the read index the leader
//!   confirmed after the read was asked; read contexts carry a per-incarnation nonce so a late
//!   answer to a previous incarnation's read is never taken for a new one.
//! - On disk, the hard state never points past the log (checked on open, which refuses to
//!   start otherwise); the state machine is rebuilt on start from the latest snapshot plus
//!   the committed log after it.
//! - A storage fault, an entry that cannot be decoded, or a raft error stops the node: the
//!   owner task ends with a [`NodeError`]. A node never runs on after its disk failed it.
//!
//! # Testing
//!
//! `tests/cluster.rs` (election, replication, leader kill, minority partition and heal,
//! restart from disk, snapshot catch-up, idempotency), `tests/linearizability.rs` (50 seeded
//! runs under kills, restarts, partitions and loss, checked by a linearizability checker, with
//! a negative control that serves follower-local reads), `tests/crash_safety.rs` (a crash
//! before and after each write, and a negative control that writes hard state first),
//! `tests/storage.rs`, `tests/membership.rs` (a joiner caught up by snapshot, promoted, a
//! voter removed and quiet; joint changes; leader transfer; changes under write load with no
//! acknowledged write lost; restart after a change), and `tests/tcp_cluster.rs` (3 and 5 nodes over real TCP on loopback,
//! every link through a fault-injecting proxy: leader kill, a minority partition black-holed
//! by the proxies and healed, restart of all nodes from disk, a peer that never reads,
//! snapshot catch-up over the snapshot lane, membership changes under write load with no
//! acknowledged write lost). The in-memory ones run under a paused tokio clock and
//! replay from their seed; the TCP ones run in real time.
//!
//! # Left out (deliberately, for now)
//!
//! - Removing or demoting the leader in one step (raft-rs 0.7 cannot run a leader outside its
//!   own configuration): transfer leadership, then ask the new leader.
//! - Forwarding proposals from a follower to the leader: a follower answers `NotLeader` with
//!   the leader's id, and the caller (quarryd's RPC) forwards.
//! - Lease reads (`LeaseBased`): they trade the heartbeat round for a clock assumption.
//! - Expiry of idle client sessions; snapshots larger than memory (the TCP transport streams
//!   a snapshot in chunks, but it is built, stored and restored as one value).
//! - Batching of proposals across wake-ups beyond the 256-message drain.
//! - Latency tricks that the commit benchmark could not tell from its noise (each tried, none
//!   better than about 10 %, on a 2-core VM whose disk and wake-ups vary from minute to
//!   minute): writing a message to the socket from the sending thread when its peer's writer
//!   is idle (the acknowledgement then leaves from the thread whose fsync returned); the
//!   write with `block_in_place` or inline instead of on the blocking pool; one thread and
//!   current-thread runtime per node (slower in a later check: 0.45–0.51 ms against
//!   0.38–0.40); `skip_bcast_commit`; buffered reads; more or fewer runtime workers; the
//!   write inline with 4 workers (3–8 % in paired runs, though it cut context switches per
//!   commit from 17 to 7). What bounds a commit there is the disk: two of three synced writes
//!   started together take about 1.5 × one (`log_commit_2of3_ms`), and the leader's and a
//!   follower's writes are staggered by the append's trip.

pub mod codec;
mod error;
mod handle;
mod machine;
mod membership;
pub mod memnet;
mod node;
pub mod storage;
pub mod tcp;
pub mod transport;

pub use error::{ClientError, NodeError};
pub use handle::{Handle, MemberChange, NodeState, PeerProgress, Role, Stats, Status};
pub use machine::{IdempotencyKey, MachineError, StateMachine};
pub use node::{start, NodeConfig, NodeTask, ReadMode};
