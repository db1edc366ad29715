//! Joining: a server without a certificate gets one from any member, on the Join lane.
//!
//! ```text
//!   joiner (TLS pinned to the token's CA digest)          member
//!     | JoinRequest { secret, CSR, name, addresses, ports, memory, tags } -->|
//!     |                                   secret == join secret? (constant time)
//!     |                                   authority.admit(member)  (Raft: add as learner)
//!     |                                   sign the CSR with the cluster CA
//!     |<-- Ok(Admitted { certificate, CA cert, gossip key, admin token,      |
//!     |                  members }) -----------------------------------------|
//!     |    or Err(why, in words for the operator)                            |
//! ```
//!
//! The secret is checked before anything else is looked at, and a wrong one learns nothing
//! about the cluster. The joiner's key never leaves it (it sends a CSR). The admission is behind
//! [`JoinAuthority`]: the Raft-backed cluster will implement it by committing the new server
//! as a learner; until then [`FileAuthority`] keeps the member list in a JSON file.
//!
//! Left out here: rotating the join secret, and removing members.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncWrite};

use super::codec;
use super::server::BoxFuture;
use super::{client, Lane, RpcError};
use crate::pki::{self, ClusterCa, JoinToken};

/// A cluster member as the join exchange and the member list describe it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    /// Its unique name (also its certificate's common name).
    pub name: String,
    /// Its cluster address.
    pub address: IpAddr,
    /// Node RPC port.
    pub rpc_port: u16,
    /// Gossip port.
    pub gossip_port: u16,
    /// HTTP API port.
    pub api_port: u16,
    /// Memory offered to the grid, bytes.
    pub memory: u64,
    /// Placement tags.
    pub tags: Vec<String>,
}

impl Member {
    /// Where its RPC listens.
    pub fn rpc_addr(&self) -> SocketAddr {
        SocketAddr::new(self.address, self.rpc_port)
    }
}

/// What a joiner sends.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JoinRequest {
    /// The join token's secret.
    pub secret: [u8; 32],
    /// A CSR for the joiner's own key (PEM).
    pub csr_pem: String,
    /// The joiner as a member.
    pub member: Member,
}

/// What an admitted joiner receives.
#[derive(Clone, Serialize, Deserialize)]
pub struct Admitted {
    /// Its member certificate (PEM), signed by the cluster CA.
    pub cert_pem: String,
    /// The cluster CA certificate (PEM).
    pub ca_pem: String,
    /// The gossip key. Secret.
    pub gossip_key: [u8; 32],
    /// The admin token of the HTTP API (one for the whole cluster, so the CLI can talk to any
    /// server). Secret.
    pub admin_token: String,
    /// The members the admitting server knows, the joiner included.
    pub members: Vec<Member>,
}

impl std::fmt::Debug for Admitted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Admitted")
            .field("members", &self.members)
            .finish_non_exhaustive()
    }
}

/// Decides membership. The Raft-backed cluster implements it by proposing the new server as a
/// learner and answering once that is committed.
pub trait JoinAuthority: Send + Sync + 'static {
    /// Admit `member` (or refuse, with a reason for the joiner's operator); on success, the
    /// member list including it.
    fn admit(&self, member: Member) -> BoxFuture<'_, Result<Vec<Member>, String>>;
    /// The members known now.
    fn members(&self) -> Vec<Member>;
}

/// A member list kept in a JSON file (written whole, atomically): the membership of a cluster
/// before Raft carries it, and what `quarryd run` serves meanwhile.
#[derive(Debug)]
pub struct FileAuthority {
    path: PathBuf,
    members: Mutex<Vec<Member>>,
}

impl FileAuthority {
    /// Open (or start) the list at `path`; `me` is added if absent.
    pub fn open(path: &Path, me: Member) -> std::io::Result<FileAuthority> {
        let mut members: Vec<Member> = match std::fs::read(path) {
            Ok(b) => serde_json::from_slice(&b).map_err(std::io::Error::other)?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(e),
        };
        match members.iter_mut().find(|m| m.name == me.name) {
            Some(m) => *m = me,
            None => members.push(me),
        }
        write_atomic(path, &members)?;
        Ok(FileAuthority {
            path: path.to_owned(),
            members: Mutex::new(members),
        })
    }

    /// Replace the list (a joiner stores what its member sent).
    pub fn store(path: &Path, members: &[Member]) -> std::io::Result<()> {
        write_atomic(path, members)
    }
}

fn write_atomic(path: &Path, members: &[Member]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(
        &tmp,
        serde_json::to_vec_pretty(members).map_err(std::io::Error::other)?,
    )?;
    std::fs::rename(&tmp, path)
}

impl JoinAuthority for FileAuthority {
    fn admit(&self, member: Member) -> BoxFuture<'_, Result<Vec<Member>, String>> {
        Box::pin(async move {
            let mut list = self
                .members
                .lock()
                .map_err(|_| "member list poisoned".to_owned())?;
            if let Some(m) = list.iter_mut().find(|m| m.name == member.name) {
                if m.address != member.address {
                    return Err(format!(
                        "the name {:?} is taken by the member at {}: give this server another \
                         name (`name` in quarryd.toml)",
                        member.name, m.address
                    ));
                }
                *m = member; // the same server joining again: keep its latest details
            } else {
                list.push(member);
            }
            write_atomic(&self.path, &list)
                .map_err(|e| format!("the member could not record the new server: {e}"))?;
            Ok(list.clone())
        })
    }

    fn members(&self) -> Vec<Member> {
        self.members.lock().map(|l| l.clone()).unwrap_or_default()
    }
}

/// The member side of the Join lane.
pub struct JoinService {
    ca: ClusterCa,
    secret: [u8; 32],
    gossip_key: [u8; 32],
    admin_token: String,
    authority: Arc<dyn JoinAuthority>,
}

impl std::fmt::Debug for JoinService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JoinService")
            .field("ca", &self.ca)
            .finish_non_exhaustive()
    }
}

/// The answer on the wire.
type JoinAnswer = Result<Admitted, String>;

impl JoinService {
    /// A join service signing with `ca`, accepting `secret`, handing out `gossip_key` and
    /// `admin_token`.
    pub fn new(
        ca: ClusterCa,
        secret: [u8; 32],
        gossip_key: [u8; 32],
        admin_token: String,
        authority: Arc<dyn JoinAuthority>,
    ) -> JoinService {
        JoinService {
            ca,
            secret,
            gossip_key,
            admin_token,
            authority,
        }
    }

    pub(super) async fn serve<S: AsyncRead + AsyncWrite + Unpin>(
        &self,
        s: &mut S,
    ) -> Result<(), RpcError> {
        let req: JoinRequest = codec::recv(s).await?;
        let answer = self.answer(req).await;
        if let Err(why) = &answer {
            tracing::info!("join refused: {why}");
        }
        codec::send(s, &answer).await?;
        Ok(())
    }

    async fn answer(&self, req: JoinRequest) -> JoinAnswer {
        let ours = JoinToken {
            ca: self.ca.digest(),
            secret: self.secret,
        };
        if !ours.secret_matches(&req.secret) {
            return Err(
                "wrong join secret: the token is old or mistyped; get the current one \
                        with `quarryd token` on a member"
                    .to_owned(),
            );
        }
        let name = req.member.name.clone();
        if name.is_empty() || name.len() > 63 {
            return Err("a server name must have 1 to 63 characters".to_owned());
        }
        let cert_pem = self
            .ca
            .sign_csr(&req.csr_pem, &name)
            .map_err(|e| format!("the certificate request could not be signed: {e}"))?;
        let members = self.authority.admit(req.member).await?;
        tracing::info!(server = %name, "admitted a new server");
        Ok(Admitted {
            cert_pem,
            ca_pem: self.ca.cert_pem().to_owned(),
            gossip_key: self.gossip_key,
            admin_token: self.admin_token.clone(),
            members,
        })
    }
}

/// Why joining failed.
#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    /// The member could not be reached, or the TLS check of its CA failed (the error names
    /// the member's address).
    #[error("join: {0}")]
    Rpc(RpcError),
    /// The member refused.
    #[error("{addr} refused the join: {reason}")]
    Refused {
        /// The member dialed.
        addr: SocketAddr,
        /// Its reason.
        reason: String,
    },
    /// The member's answer does not hold together (a CA that is not the token's).
    #[error("{addr} answered with a CA that is not the one the token names")]
    WrongCa {
        /// The member dialed.
        addr: SocketAddr,
    },
}

/// Ask the member at `addr` to admit this server. `key_pem` stays here; `csr_pem` is its CSR.
pub async fn join(
    addr: SocketAddr,
    token: &JoinToken,
    csr_pem: String,
    member: Member,
) -> Result<Admitted, JoinError> {
    let rpc = JoinError::Rpc;
    let tls = pki::join_client_config(token.ca).map_err(|e| rpc(e.into()))?;
    let mut s = client::dial(addr, tls, Lane::Join).await.map_err(rpc)?;
    let presented = pki::presented_ca(s.get_ref().1, token.ca);
    let req = JoinRequest {
        secret: token.secret,
        csr_pem,
        member,
    };
    codec::send(&mut s, &req).await.map_err(|e| rpc(e.into()))?;
    let answer: JoinAnswer = codec::recv(&mut s).await.map_err(|e| rpc(e.into()))?;
    let admitted = answer.map_err(|reason| JoinError::Refused { addr, reason })?;
    let pem_der = |p: &str| pem::parse(p).ok().map(|p| p.into_contents());
    if presented.as_deref().and_then(pem_der) != pem_der(&admitted.ca_pem)
        || pem_der(&admitted.ca_pem).is_none()
    {
        return Err(JoinError::WrongCa { addr });
    }
    Ok(admitted)
}
