//! The Control lane's protocol between servers: writes and admissions forwarded to the
//! leader, and the leader's view of replication.
//!
//! Every request is answered by the server it reached; one that only the leader can serve is
//! answered [`ControlAnswer::NotLeader`] elsewhere, and the caller asks again where that
//! points (with the same idempotency key, so a write applies at most once).

use std::sync::Arc;

use quarry_consensus::{ClientError, IdempotencyKey, Role};
use serde::{Deserialize, Serialize};

use super::node::Cluster;
use super::state::{Command, Outcome, Refusal};
use crate::rpc::codec;
use crate::rpc::join::{Admission, Member};
use crate::rpc::server::{BoxFuture, RequestHandler};

/// A request on the Control lane.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum ControlRequest {
    /// Propose a command (leader only).
    Propose {
        /// The idempotency key the forwarder keeps across retries.
        key: IdempotencyKey,
        /// The command.
        command: Command,
    },
    /// Admit a joiner (leader only).
    Admit {
        /// The joiner.
        member: Member,
    },
    /// The leader's replication progress (leader only).
    Progress,
    /// A request about stacks ([`crate::launch`]'s protocol, encoded), answered by the
    /// server's launch handler on any server: the handler says when it must be the leader.
    Launch(Vec<u8>),
}

/// One peer's replication as the leader sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerHealth {
    /// Its Raft id.
    pub raft_id: u64,
    /// The highest log index known to be on it.
    pub matched: u64,
    /// Whether it answered within the last election timeout.
    pub active: bool,
}

/// The leader's view of replication.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaderView {
    /// The leader's commit index.
    pub commit: u64,
    /// Every member's progress.
    pub peers: Vec<PeerHealth>,
}

/// The leader's view from its own status.
pub(super) fn leader_view_of(status: &quarry_consensus::Status) -> LeaderView {
    LeaderView {
        commit: status.commit,
        peers: status
            .progress
            .iter()
            .map(|(&raft_id, p)| PeerHealth {
                raft_id,
                matched: p.matched,
                active: p.recent_active || raft_id == status.id,
            })
            .collect(),
    }
}

/// The answer to a [`ControlRequest`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum ControlAnswer {
    /// The command applied (or was refused by the state, deterministically).
    Applied(Result<Outcome, Refusal>),
    /// The joiner is admitted.
    Admitted(Admission),
    /// The leader's view.
    Progress(LeaderView),
    /// Not the leader (the one this server believes leads, if any): ask again there.
    NotLeader {
        /// The leader's Raft id, if known.
        leader: Option<u64>,
    },
    /// Failed for good; the words say why.
    Failed(String),
    /// The launch handler's answer (encoded) or its error.
    Launch(Result<Vec<u8>, String>),
}

/// The Control lane's handler on a server.
#[derive(Clone)]
pub struct ControlService {
    cluster: Arc<Cluster>,
    launch: Option<Arc<dyn RequestHandler>>,
}

impl std::fmt::Debug for ControlService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControlService")
            .field("launch", &self.launch.is_some())
            .finish_non_exhaustive()
    }
}

impl ControlService {
    /// Serve requests with `cluster`.
    pub fn new(cluster: Arc<Cluster>) -> ControlService {
        ControlService {
            cluster,
            launch: None,
        }
    }

    /// Answer [`ControlRequest::Launch`] with `handler`.
    pub fn with_launch(mut self, handler: Arc<dyn RequestHandler>) -> ControlService {
        self.launch = Some(handler);
        self
    }

    async fn answer(&self, peer: String, req: ControlRequest) -> ControlAnswer {
        if let ControlRequest::Launch(bytes) = req {
            return match &self.launch {
                Some(h) => ControlAnswer::Launch(h.handle(peer, bytes).await),
                None => ControlAnswer::Failed("this server runs no stacks".to_owned()),
            };
        }
        let c = &self.cluster;
        let status = match c.handle().status().await {
            Ok(s) => s,
            Err(e) => return ControlAnswer::Failed(format!("this server's Raft stopped: {e}")),
        };
        if status.role != Role::Leader {
            return ControlAnswer::NotLeader {
                leader: status.leader,
            };
        }
        match req {
            ControlRequest::Propose { key, command } => {
                // The forwarder checked it too; a peer running other code may not have.
                if let Err(e) = super::node::check_command(&command) {
                    return ControlAnswer::Failed(e.to_string());
                }
                match c.handle().propose_with_key(key, command).await {
                    Ok(out) => ControlAnswer::Applied(out),
                    Err(ClientError::NotLeader { leader }) => ControlAnswer::NotLeader { leader },
                    Err(ClientError::StaleRequest { .. }) => ControlAnswer::Failed(
                        "the write was superseded by a later one from the same server".to_owned(),
                    ),
                    // Timeout, lost leadership, no quorum: the outcome is unknown; the caller
                    // retries with the same key.
                    Err(_) => ControlAnswer::NotLeader { leader: None },
                }
            }
            ControlRequest::Admit { member } => match c.admit_here(member).await {
                Ok(a) => ControlAnswer::Admitted(a),
                Err(AdmitError::NotLeader) => ControlAnswer::NotLeader { leader: None },
                Err(AdmitError::Failed(m)) => ControlAnswer::Failed(m),
            },
            ControlRequest::Progress => ControlAnswer::Progress(leader_view_of(&status)),
            // Answered above, before the leader check.
            ControlRequest::Launch(_) => ControlAnswer::Failed("misrouted request".to_owned()),
        }
    }
}

/// Why an admission on the leader did not happen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AdmitError {
    /// Leadership moved: ask the new leader.
    NotLeader,
    /// Refused or failed; the words say why.
    Failed(String),
}

/// A Control lane request as it arrived. Decoded with the lane's own limit (its frame limit),
/// not the 1 MiB of a hello: a forwarded command may be up to [`super::MAX_COMMAND`].
pub(super) fn decode_request(bytes: &[u8]) -> Result<ControlRequest, codec::CodecError> {
    codec::decode_control(bytes)
}

impl RequestHandler for ControlService {
    fn handle(&self, peer: String, request: Vec<u8>) -> BoxFuture<'_, Result<Vec<u8>, String>> {
        Box::pin(async move {
            let req = decode_request(&request)
                .map_err(|e| format!("undecodable control request from {peer}: {e}"))?;
            let answer = self.answer(peer, req).await;
            codec::encode(&answer).map_err(|e| e.to_string())
        })
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    #[test]
    fn a_forwarded_command_of_2_mib_decodes_on_the_leader() {
        // 2 MiB is under the command cap (4 MiB) but above the 1 MiB a hello may decode to:
        // the leader refused every such forwarded write as undecodable.
        let command = Command::SetEnv {
            stack: Some("shop".to_owned()),
            set: (0..32)
                .map(|i| (format!("K{i}"), "v".repeat(64 << 10)))
                .collect::<BTreeMap<_, _>>(),
            unset: vec![],
        };
        let req = ControlRequest::Propose {
            key: IdempotencyKey { client: 7, seq: 1 },
            command,
        };
        let bytes = codec::encode(&req).expect("encode");
        assert!(bytes.len() > 2 << 20, "{} bytes", bytes.len());
        match decode_request(&bytes).expect("a 2 MiB forwarded command decodes") {
            ControlRequest::Propose {
                key,
                command: Command::SetEnv { set, .. },
            } => {
                assert_eq!((key.client, set.len()), (7, 32));
            }
            other => panic!("decoded as {other:?}"),
        }
    }
}
