//! The client side of a node: propose, read, membership changes, leader transfer, status,
//! shutdown.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot, watch};

use crate::machine::{IdempotencyKey, StateMachine};
use crate::ClientError;

/// A read, run by the owner task against the applied state (or told why it cannot be).
pub(crate) type ReadFn<S> = Box<dyn FnOnce(Result<&S, ClientError>) + Send>;

pub(crate) enum Request<S: StateMachine> {
    Propose {
        data: Vec<u8>,
        reply: oneshot::Sender<Result<S::Output, ClientError>>,
    },
    Read {
        f: ReadFn<S>,
    },
    Status {
        reply: oneshot::Sender<Status>,
    },
    Stats {
        reply: oneshot::Sender<Stats>,
    },
    ChangeMembership {
        changes: Vec<MemberChange>,
        reply: oneshot::Sender<Result<Membership, ClientError>>,
    },
    TransferLeader {
        to: u64,
        reply: oneshot::Sender<Result<(), ClientError>>,
    },
    Shutdown {
        reply: oneshot::Sender<()>,
    },
}

/// The cluster's membership: (voters, learners), each sorted.
pub(crate) type Membership = (Vec<u64>, Vec<u64>);

/// One change to the cluster's membership.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum MemberChange {
    /// Make the node a voter (a new node, or the promotion of a learner).
    AddVoter(u64),
    /// Make the node a learner: it receives the log but does not vote.
    AddLearner(u64),
    /// Remove the node from the cluster.
    Remove(u64),
}

/// The leader's view of one peer's replication.
#[derive(Clone, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct PeerProgress {
    /// The highest log index known to be on the peer's disk.
    pub matched: u64,
    /// Whether the peer answered within the last election timeout.
    pub recent_active: bool,
}

/// A node's Raft role.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Role {
    Follower,
    PreCandidate,
    Candidate,
    Leader,
}

/// What a node knows about itself and the cluster.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    pub id: u64,
    pub role: Role,
    pub leader: Option<u64>,
    pub term: u64,
    pub commit: u64,
    pub applied: u64,
    pub voters: Vec<u64>,
    pub learners: Vec<u64>,
    /// Replication progress by node id (this node included); only on the leader, empty
    /// elsewhere.
    pub progress: BTreeMap<u64, PeerProgress>,
}

/// What a node publishes on its watch ([`Handle::watch`]) whenever it changes: after an entry
/// is applied, and when the role, the leader or the term changes. A task that needs to act on
/// a commit or on leadership waits on it instead of polling [`Handle::status`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NodeState {
    /// The applied index (every entry, empty and configuration ones included).
    pub applied: u64,
    pub role: Role,
    pub leader: Option<u64>,
    pub term: u64,
}

/// Counters of a node's storage since it started: how well writes are batched.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stats {
    /// Fsynced write transactions.
    pub writes: u64,
    /// Log entries written (by those transactions).
    pub entries: u64,
}

/// A cheap, cloneable handle on a running node.
pub struct Handle<S: StateMachine> {
    id: u64,
    tx: mpsc::Sender<Request<S>>,
    state: watch::Receiver<NodeState>,
    /// A backstop above the node's own request timeout.
    wait: Duration,
}

impl<S: StateMachine> Clone for Handle<S> {
    fn clone(&self) -> Self {
        Handle {
            id: self.id,
            tx: self.tx.clone(),
            state: self.state.clone(),
            wait: self.wait,
        }
    }
}

impl<S: StateMachine> fmt::Debug for Handle<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Handle").field("id", &self.id).finish()
    }
}

impl<S: StateMachine> Handle<S> {
    pub(crate) fn new(
        id: u64,
        tx: mpsc::Sender<Request<S>>,
        state: watch::Receiver<NodeState>,
        wait: Duration,
    ) -> Self {
        Handle {
            id,
            tx,
            state,
            wait,
        }
    }

    /// A receiver of the node's applied index, role, leader and term (see [`NodeState`]): it
    /// sees a change only when one of them changed, never on a bare tick. Once the node has
    /// stopped, `changed()` fails.
    pub fn watch(&self) -> watch::Receiver<NodeState> {
        self.state.clone()
    }

    /// The node's id.
    pub fn id(&self) -> u64 {
        self.id
    }

    async fn ask<R>(
        &self,
        req: Request<S>,
        rx: oneshot::Receiver<Result<R, ClientError>>,
    ) -> Result<R, ClientError> {
        self.tx.send(req).await.map_err(|_| ClientError::Stopped)?;
        match tokio::time::timeout(self.wait, rx).await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => Err(ClientError::Stopped),
            Err(_) => Err(ClientError::Timeout),
        }
    }

    /// Proposes `command`; resolves with its output once applied on this node (the leader).
    pub async fn propose(&self, command: S::Command) -> Result<S::Output, ClientError> {
        self.submit(None, command).await
    }

    /// Like [`Handle::propose`], but a retry with the same key applies at most once.
    pub async fn propose_with_key(
        &self,
        key: IdempotencyKey,
        command: S::Command,
    ) -> Result<S::Output, ClientError> {
        self.submit(Some(key), command).await
    }

    async fn submit(
        &self,
        key: Option<IdempotencyKey>,
        command: S::Command,
    ) -> Result<S::Output, ClientError> {
        let data =
            S::encode_entry(key, &command).map_err(|e| ClientError::Encode(e.to_string()))?;
        let (reply, rx) = oneshot::channel();
        self.ask(Request::Propose { data, reply }, rx).await
    }

    /// A linearizable read: `f` runs on the state once it reflects every write acknowledged
    /// before this call (ReadIndex).
    pub async fn read<R, F>(&self, f: F) -> Result<R, ClientError>
    where
        R: Send + 'static,
        F: FnOnce(&S) -> R + Send + 'static,
    {
        let (tx, rx) = oneshot::channel();
        let f: ReadFn<S> = Box::new(move |state| {
            let _ = tx.send(state.map(f));
        });
        self.ask(Request::Read { f }, rx).await
    }

    /// Proposes one `ConfChangeV2` with all `changes`: a simple change when raft allows it
    /// (one voter changes), joint consensus otherwise, left automatically. Resolves once the
    /// change (and the leave, if joint) is committed and applied on this node, with the
    /// resulting (voters, learners), sorted.
    ///
    /// Only on the leader (else [`ClientError::NotLeader`]). A change while another is in
    /// flight is refused with [`ClientError::MembershipChangeInProgress`]; a change that
    /// cannot apply (no voter left, the leader removed or demoted — transfer leadership away
    /// first) with [`ClientError::InvalidMembership`]. Like a proposal, an error other than
    /// those two leaves the outcome unknown: look at [`Handle::status`].
    pub async fn change_membership(
        &self,
        changes: Vec<MemberChange>,
    ) -> Result<(Vec<u64>, Vec<u64>), ClientError> {
        let (reply, rx) = oneshot::channel();
        self.ask(Request::ChangeMembership { changes, reply }, rx)
            .await
    }

    /// Transfers leadership to voter `to`; resolves once this node sees `to` as leader,
    /// [`ClientError::Timeout`] if that does not happen within the request timeout. Only on
    /// the leader.
    pub async fn transfer_leader(&self, to: u64) -> Result<(), ClientError> {
        let (reply, rx) = oneshot::channel();
        self.ask(Request::TransferLeader { to, reply }, rx).await
    }

    /// The node's status.
    pub async fn status(&self) -> Result<Status, ClientError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Request::Status { reply })
            .await
            .map_err(|_| ClientError::Stopped)?;
        rx.await.map_err(|_| ClientError::Stopped)
    }

    /// The node's storage counters.
    pub async fn stats(&self) -> Result<Stats, ClientError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Request::Stats { reply })
            .await
            .map_err(|_| ClientError::Stopped)?;
        rx.await.map_err(|_| ClientError::Stopped)
    }

    /// Writes what is only in memory and stops the node.
    pub async fn shutdown(&self) -> Result<(), ClientError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Request::Shutdown { reply })
            .await
            .map_err(|_| ClientError::Stopped)?;
        rx.await.map_err(|_| ClientError::Stopped)
    }
}
