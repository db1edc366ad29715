//! An in-memory network for tests: seeded, and able to drop, delay, reorder, partition and
//! heal.
//!
//! Every message is delivered by its own task after a delay drawn from the network's seeded
//! random generator, so with a paused tokio clock a run replays exactly from its seed. Random
//! delays reorder messages. A cut between two nodes drops messages at send time and at delivery
//! time (a message in flight when the cut happens is lost too). Snapshot messages report their
//! fate back to the sender, as a real transport would.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use raft::eraftpb::{Message, MessageType};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::sync::mpsc;

use crate::transport::{Inbound, Transport};

#[derive(Debug)]
struct Net {
    rng: StdRng,
    inboxes: BTreeMap<u64, mpsc::Sender<Inbound>>,
    /// Ordered pairs (from, to) that cannot talk.
    cut: BTreeSet<(u64, u64)>,
    drop_rate: f64,
    delay: (Duration, Duration),
    delivered: u64,
}

impl Net {
    fn blocked(&self, from: u64, to: u64) -> bool {
        self.cut.contains(&(from, to))
    }
}

/// The shared network; cheap to clone.
#[derive(Clone, Debug)]
pub struct MemNetwork {
    net: Arc<Mutex<Net>>,
}

impl MemNetwork {
    /// A network whose every random choice comes from `seed`; delays 1–5 ms, nothing dropped.
    pub fn new(seed: u64) -> Self {
        MemNetwork {
            net: Arc::new(Mutex::new(Net {
                rng: StdRng::seed_from_u64(seed),
                inboxes: BTreeMap::new(),
                cut: BTreeSet::new(),
                drop_rate: 0.0,
                delay: (Duration::from_millis(1), Duration::from_millis(5)),
                delivered: 0,
            })),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Net> {
        self.net.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Connects node `id`'s inbox (replacing an earlier one, as after a restart).
    pub fn register(&self, id: u64, inbox: mpsc::Sender<Inbound>) {
        self.lock().inboxes.insert(id, inbox);
    }

    /// The sending half for node `id`.
    pub fn transport(&self, id: u64) -> MemTransport {
        MemTransport {
            id,
            net: self.clone(),
        }
    }

    /// Splits the nodes into groups that cannot talk to each other (nodes not named keep
    /// their links).
    pub fn partition(&self, groups: &[&[u64]]) {
        let mut net = self.lock();
        for (i, a) in groups.iter().enumerate() {
            for (j, b) in groups.iter().enumerate() {
                if i != j {
                    for &x in a.iter() {
                        for &y in b.iter() {
                            net.cut.insert((x, y));
                        }
                    }
                }
            }
        }
    }

    /// Cuts `id` off from every other registered node.
    pub fn isolate(&self, id: u64) {
        let others: Vec<u64> = self
            .lock()
            .inboxes
            .keys()
            .copied()
            .filter(|&x| x != id)
            .collect();
        self.partition(&[&[id], &others]);
    }

    /// Removes every cut.
    pub fn heal(&self) {
        self.lock().cut.clear();
    }

    /// Drops each message with probability `p`.
    pub fn set_drop_rate(&self, p: f64) {
        self.lock().drop_rate = p;
    }

    /// Delays each message by a uniform draw from `[min, max]`.
    pub fn set_delay(&self, min: Duration, max: Duration) {
        self.lock().delay = (min, max.max(min));
    }

    /// A random draw from the network's generator (handy for a test's nemesis).
    pub fn random_below(&self, n: u64) -> u64 {
        self.lock().rng.random_range(0..n.max(1))
    }

    /// Messages delivered so far.
    pub fn delivered(&self) -> u64 {
        self.lock().delivered
    }

    fn report_snapshot(net: &Net, from: u64, to: u64, ok: bool) {
        if let Some(tx) = net.inboxes.get(&from) {
            let _ = tx.try_send(Inbound::SnapshotStatus { to, ok });
        }
    }
}

/// One node's sending half of a [`MemNetwork`].
#[derive(Clone, Debug)]
pub struct MemTransport {
    id: u64,
    net: MemNetwork,
}

impl Transport for MemTransport {
    fn send(&self, msg: Message) {
        let (from, to) = (self.id, msg.to);
        let snapshot = msg.get_msg_type() == MessageType::MsgSnapshot;
        let delay = {
            let mut net = self.net.lock();
            let p = net.drop_rate.clamp(0.0, 1.0);
            let dropped = p > 0.0 && net.rng.random_bool(p);
            if dropped || net.blocked(from, to) {
                if snapshot {
                    MemNetwork::report_snapshot(&net, from, to, false);
                }
                return;
            }
            let (lo, hi) = net.delay;
            let span = (hi - lo).as_micros() as u64;
            lo + Duration::from_micros(net.rng.random_range(0..=span))
        };
        let net = self.net.clone();
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            let mut n = net.lock();
            let ok = !n.blocked(from, to)
                && n.inboxes
                    .get(&to)
                    .is_some_and(|tx| tx.try_send(Inbound::Message(msg)).is_ok());
            if ok {
                n.delivered += 1;
            }
            if snapshot {
                MemNetwork::report_snapshot(&n, from, to, ok);
            }
        });
    }
}
