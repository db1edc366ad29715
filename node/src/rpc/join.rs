//! Joining: a server without a certificate gets one from any member, on the Join lane.
//!
//! ```text
//!   joiner (TLS pinned to the token's CA digest)          member
//!     | JoinRequest { secret, CSR, name, addresses, ports, memory, tags } -->|
//!     |                                   secret == join secret? (constant time)
//!     |                                   sign the CSR with the cluster CA
//!     |                                   authority.admit(member): the Raft leader commits
//!     |                                   the server record and adds it as a learner
//!     |<-- Ok(Admitted { certificate, CA cert and key, join secret, gossip key, |
//!     |                  admin token, Raft id, servers }) ---------------------|
//!     |    or Err(why, in words for the operator)                            |
//! ```
//!
//! The secret is checked before anything else is looked at, and a wrong one learns nothing
//! about the cluster. The joiner's key never leaves it (it sends a CSR). Every member receives
//! the CA key and the join secret, so any member admits new servers and no server is special
//! (as Docker Swarm's managers do); the admission itself is behind [`JoinAuthority`], which
//! quarryd implements with the Raft-backed cluster.
//!
//! Versions: a joiner of a build that knows state versions asks on the
//! [`Lane::JoinWithVersions`] lane, sending [`VersionedJoin`] (the request plus the state
//! versions it supports); the member refuses it unless [`crate::version::check_join`] accepts
//! it at the cluster's version ([`JoinAuthority::cluster_version`]), before anything is signed
//! or committed. A member of an older build does not know that lane (it drops the
//! connection at the hello); the joiner then asks on [`Lane::Join`], as older joiners do.
//!
//! Left out here: rotating the join secret or the CA.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncWrite};

use super::codec;
use super::server::BoxFuture;
use super::{client, Lane, RpcError};
use crate::pki::{self, ClusterCa, JoinToken};

/// A server's settings that the leader needs to place containers on it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerSettings {
    /// Host ports quarry may publish containers on, inclusive.
    pub host_ports: (u16, u16),
}

impl Default for ServerSettings {
    fn default() -> Self {
        ServerSettings {
            host_ports: (20000, 29999),
        }
    }
}

/// A server as it describes itself: in the join exchange and in the cluster's server records.
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
    /// The machine's hostname (may differ from the name).
    pub hostname: String,
    /// Memory offered to the grid, bytes.
    pub memory: u64,
    /// Placement tags.
    pub tags: Vec<String>,
    /// What the leader needs to place containers on it.
    pub settings: ServerSettings,
}

impl Member {
    /// Where its RPC listens.
    pub fn rpc_addr(&self) -> SocketAddr {
        SocketAddr::new(self.address, self.rpc_port)
    }
}

/// A server of the cluster: its Raft id and what it told about itself (the cluster's record
/// of it, committed; the same bytes in the join answer).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerRecord {
    /// Its Raft id (never reused).
    pub raft_id: u64,
    /// Name, addresses, ports, hostname, memory, tags, settings.
    pub member: Member,
}

/// Whether a server name is acceptable (it is also a certificate's common name and a host
/// name): why not, in words, if it is not.
pub fn check_server_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "server name {name:?}: use 1 to 63 letters, digits, '-', '_' or '.'"
        ))
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

/// What a joiner sends on [`Lane::JoinWithVersions`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VersionedJoin {
    /// The request, as on [`Lane::Join`].
    pub request: JoinRequest,
    /// The state versions the joiner supports, lowest and highest.
    pub supported: (u32, u32),
}

/// What an admitted joiner receives.
#[derive(Clone, Serialize, Deserialize)]
pub struct Admitted {
    /// Its member certificate (PEM), signed by the cluster CA.
    pub cert_pem: String,
    /// The cluster CA certificate (PEM).
    pub ca_pem: String,
    /// The cluster CA key (PEM), so this server can admit others. Secret.
    pub ca_key_pem: String,
    /// The join secret, for the same reason. Secret.
    pub join_secret: [u8; 32],
    /// The gossip key. Secret.
    pub gossip_key: [u8; 32],
    /// The admin token of the HTTP API (one for the whole cluster, so the CLI can talk to any
    /// server). Secret.
    pub admin_token: String,
    /// The joiner's Raft id.
    pub raft_id: u64,
    /// The servers of the cluster, the joiner included: where its Raft peers are.
    pub servers: Vec<ServerRecord>,
}

impl std::fmt::Debug for Admitted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Admitted")
            .field("raft_id", &self.raft_id)
            .field("servers", &self.servers)
            .finish_non_exhaustive()
    }
}

/// What an admission gives: the new server's Raft id and the servers it will talk to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Admission {
    /// The joiner's Raft id.
    pub raft_id: u64,
    /// Every server, the joiner included.
    pub servers: Vec<ServerRecord>,
}

/// Decides membership. quarryd's cluster implements it by committing the new server's record
/// through the Raft leader and adding it as a learner.
pub trait JoinAuthority: Send + Sync + 'static {
    /// Admit `member` (or refuse, with a reason for the joiner's operator).
    fn admit(&self, member: Member) -> BoxFuture<'_, Result<Admission, String>>;

    /// The cluster version in force, which a joiner must be able to run at.
    fn cluster_version(&self) -> u32 {
        1
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

    /// Answer one joiner, whose request must come within `within` and fit in
    /// [`codec::MAX_PREAUTH_FRAME`] (the joiner has no certificate yet).
    pub(super) async fn serve<S: AsyncRead + AsyncWrite + Unpin>(
        &self,
        s: &mut S,
        within: std::time::Duration,
        versioned: bool,
    ) -> Result<(), RpcError> {
        let timed_out = |_| {
            codec::CodecError::Io(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("no join request within {within:?}"),
            ))
        };
        let (req, supported) = if versioned {
            let v: VersionedJoin =
                tokio::time::timeout(within, codec::recv_within(s, codec::MAX_PREAUTH_FRAME))
                    .await
                    .map_err(timed_out)??;
            (v.request, v.supported)
        } else {
            // A joiner that does not say supports state v1 only.
            let r: JoinRequest =
                tokio::time::timeout(within, codec::recv_within(s, codec::MAX_PREAUTH_FRAME))
                    .await
                    .map_err(timed_out)??;
            (r, (1, 1))
        };
        let answer = self.answer(req, supported).await;
        if let Err(why) = &answer {
            tracing::info!("join refused: {why}");
        }
        codec::send(s, &answer).await?;
        Ok(())
    }

    async fn answer(&self, req: JoinRequest, supported: (u32, u32)) -> JoinAnswer {
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
        check_server_name(&name)?;
        crate::version::check_join(self.authority.cluster_version(), supported)?;
        let cert_pem = self
            .ca
            .sign_csr(&req.csr_pem, &name)
            .map_err(|e| format!("the certificate request could not be signed: {e}"))?;
        let admission = self.authority.admit(req.member).await?;
        tracing::info!(server = %name, raft_id = admission.raft_id, "admitted a new server");
        Ok(Admitted {
            cert_pem,
            ca_pem: self.ca.cert_pem().to_owned(),
            ca_key_pem: self.ca.key_pem().to_owned(),
            join_secret: self.secret,
            gossip_key: self.gossip_key,
            admin_token: self.admin_token.clone(),
            raft_id: admission.raft_id,
            servers: admission.servers,
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

/// How long a joiner waits for the member's answer (the member forwards the admission to the
/// leader, which commits it and adds the joiner as a learner).
pub const JOIN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// Ask the member at `addr` to admit this server. `key_pem` stays here; `csr_pem` is its CSR.
pub async fn join(
    addr: SocketAddr,
    token: &JoinToken,
    csr_pem: String,
    member: Member,
) -> Result<Admitted, JoinError> {
    join_as(addr, token, csr_pem, member, crate::version::SUPPORTED).await
}

/// [`join`], saying that this server supports the state versions `supported` (tests play a
/// joiner of a build that does not exist yet with it).
pub async fn join_as(
    addr: SocketAddr,
    token: &JoinToken,
    csr_pem: String,
    member: Member,
    supported: (u32, u32),
) -> Result<Admitted, JoinError> {
    let rpc = JoinError::Rpc;
    let tls = pki::join_client_config(token.ca).map_err(|e| rpc(e.into()))?;
    let req = JoinRequest {
        secret: token.secret,
        csr_pem,
        member,
    };
    // Ask on the versioned lane; a member too old to know it drops the connection at the
    // hello, and is asked again on the plain one.
    let (mut s, versioned) = match client::dial(addr, tls.clone(), Lane::JoinWithVersions).await {
        Ok(s) => (s, true),
        Err(e) => {
            tracing::debug!("{addr} does not take versioned joins ({e}): asking the old way");
            let s = client::dial(addr, tls, Lane::Join).await.map_err(rpc)?;
            (s, false)
        }
    };
    let presented = pki::presented_ca(s.get_ref().1, token.ca);
    let sent = if versioned {
        let v = VersionedJoin {
            request: req,
            supported,
        };
        codec::send(&mut s, &v).await
    } else {
        codec::send(&mut s, &req).await
    };
    sent.map_err(|e| rpc(e.into()))?;
    let answer: JoinAnswer = tokio::time::timeout(JOIN_TIMEOUT, codec::recv(&mut s))
        .await
        .map_err(|_| JoinError::Refused {
            addr,
            reason: format!(
                "no answer within {JOIN_TIMEOUT:?}: the cluster may have no leader; retry when \
                 `quarry status` on a member shows one"
            ),
        })?
        .map_err(|e| rpc(e.into()))?;
    let admitted = answer.map_err(|reason| JoinError::Refused { addr, reason })?;
    let pem_der = |p: &str| pem::parse(p).ok().map(|p| p.into_contents());
    if presented.as_deref().and_then(pem_der) != pem_der(&admitted.ca_pem)
        || pem_der(&admitted.ca_pem).is_none()
    {
        return Err(JoinError::WrongCa { addr });
    }
    Ok(admitted)
}
