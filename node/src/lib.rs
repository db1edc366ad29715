//! The node library: everything `quarryd` runs and the `quarry` CLI shares.
//!
//! Pure modules (no I/O crate imported; tested without Docker or a network): [`types`] (the
//! shared data), [`spec`] (the quarry.yml reader; `spec::load` is its thin file-reading shell),
//! [`build`] (the plan compiler), [`grid`] (the slicegrid scheduler), [`deploy`] (a plan placed
//! on the grid with host ports and service addresses), [`reconcile::diff`] (desired vs running
//! containers), [`router::render`] (nginx.conf), [`images::plan`] (which image builds,
//! transfers and removals a deploy needs). Beside them: [`config`] (quarryd.toml) and [`pki`]
//! (the cluster CA, certificates and join token).
//!
//! I/O shells: [`docker`] (the local engine: images, networks, containers by label),
//! [`reconcile`]'s converging shell, [`router`]'s nginx process owner, [`health`] (probes from
//! the host), [`rpc`] (node-to-node RPC over mutual TLS: Raft, Control, Bulk and Join lanes),
//! [`bulk`] (what the Bulk lane carries and the handler that answers it), [`images`] (docker
//! save -> Bulk lane -> docker load), [`source`] (stack trees stored by content hash), [`api`]
//! (the HTTP API on the local socket and TCP), [`cluster`] (the Raft-replicated cluster state,
//! membership, forwarding and reads), [`launch`] (stacks on the cluster: deploys through the
//! leader, every server's reconciler and reports; its compile step is pure), [`daemon`] (what
//! `quarryd init`, `join` and `run` do),
//! [`gossip`] (chitchat over a sealed UDP transport: liveness), [`hosts`] (the
//! managed /etc/hosts block: a pure renderer and its writer).

pub mod answers;
pub mod api;
pub mod build;
pub mod bulk;
pub mod cluster;
pub mod config;
pub mod daemon;
pub mod deploy;
pub mod docker;
pub mod gossip;
pub mod grid;
pub mod health;
pub mod hosts;
pub mod images;
pub mod launch;
pub mod pki;
pub mod reconcile;
pub mod router;
pub mod rpc;
pub mod source;
pub mod spec;
pub mod types;
pub mod version;
