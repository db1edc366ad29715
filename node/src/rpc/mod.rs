//! Node-to-node RPC: one TCP port, mutual TLS, one connection per lane.
//!
//! ```text
//!   dialer                                        listener (config.rpc_port)
//!     | TLS handshake (member cert, or none) ------->|  pki::server_config
//!     | frame: Hello { version, lane } ------------->|
//!     |<--------- frame: HelloReply (Ok | Refused) --|  lane != Join and no cluster cert
//!     | ... frames of that lane ...                  |    -> Refused, connection closed
//! ```
//!
//! Lanes: **Raft** (one-way opaque byte messages, the consensus transport sits on it),
//! **Control** and **Bulk** (request/response with opaque bytes: forwarded writes and
//! admissions on Control; Raft snapshots, later images and sources, on Bulk),
//! **Join** (the one lane a peer without a certificate may open; see [`join`]). Each lane is
//! its own connection, so a 60 MB image chunk on Bulk never sits in front of a heartbeat on
//! Raft. Every frame is length-prefixed and size-checked before allocation ([`codec`]).
//!
//! Invariants: no frame ever travels outside TLS; every lane but Join refuses a peer whose
//! certificate was not signed by the cluster CA ([`crate::pki::is_member`]); the peer's member
//! name handed to a lane's handler comes from its certificate, never from what it says.
//!
//! Left out here: request multiplexing on one Control connection (a dialer opens one
//! connection per outstanding request stream; requests on a connection are sequential), and
//! any Raft semantics (the Raft lane moves bytes; message loss is Raft's to repair).

pub mod client;
pub mod codec;
pub mod join;
pub mod server;

use serde::{Deserialize, Serialize};

pub use client::{Dialer, RaftLink};
pub use server::{Handlers, RpcServer};

/// The protocol version a hello names; a listener refuses another.
pub const PROTOCOL: u32 = 1;

/// The lanes of the RPC port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Lane {
    /// Raft messages, one way, opaque bytes.
    Raft,
    /// Requests and answers: forwarded writes, status reports.
    Control,
    /// Large transfers: images, sources, snapshots.
    Bulk,
    /// A new server asking to join (no certificate yet).
    Join,
    /// A new server asking to join and saying which state versions it supports
    /// ([`join::VersionedJoin`]), so a member refuses one that cannot run at the cluster's
    /// version. Appended (older members do not know it: the joiner falls back to [`Lane::Join`]).
    JoinWithVersions,
}

impl Lane {
    /// Whether it is a join lane (the only lanes open to a peer without a certificate).
    pub fn is_join(self) -> bool {
        matches!(self, Lane::Join | Lane::JoinWithVersions)
    }
}

/// The first frame of every connection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// [`PROTOCOL`].
    pub version: u32,
    /// The lane this connection carries.
    pub lane: Lane,
}

/// The listener's answer to a hello.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum HelloReply {
    /// Go on.
    Ok,
    /// Refused, and why (shown to the dialer's operator).
    Refused(String),
}

/// What went wrong on an RPC connection.
#[derive(Debug, thiserror::Error)]
pub enum RpcError {
    /// Reading, writing or decoding a frame failed.
    #[error(transparent)]
    Codec(#[from] codec::CodecError),
    /// TCP failed or timed out.
    #[error("cannot reach {addr}: {cause}")]
    Connect {
        /// The peer.
        addr: std::net::SocketAddr,
        /// The cause.
        cause: std::io::Error,
    },
    /// The TLS handshake failed (a certificate not from the cluster CA, a CA that does not
    /// match the join token).
    #[error("TLS with {addr} failed: {reason}")]
    Tls {
        /// The peer.
        addr: std::net::SocketAddr,
        /// Why.
        reason: String,
    },
    /// The listener could not bind.
    #[error("cannot listen on {addr}: {cause}")]
    Listen {
        /// The address.
        addr: std::net::SocketAddr,
        /// The cause.
        cause: std::io::Error,
    },
    /// The listener refused the lane.
    #[error("{addr} refused the {lane:?} lane: {reason}")]
    Refused {
        /// The peer.
        addr: std::net::SocketAddr,
        /// The lane asked for.
        lane: Lane,
        /// The listener's reason.
        reason: String,
    },
    /// Keys or certificates could not be used.
    #[error(transparent)]
    Pki(#[from] crate::pki::PkiError),
    /// The other side answered with an error.
    #[error("the peer answered: {0}")]
    Remote(String),
}
