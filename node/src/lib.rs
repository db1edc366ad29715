//! The node library: everything `quarryd` runs and the `quarry` CLI shares.
//!
//! Pure modules (no I/O crate imported; tested without Docker or a network): [`types`],
//! [`spec`]'s reader, [`build`], [`reconcile::diff`], [`router::render`].
//!
//! I/O shells: [`docker`] (the local engine), [`reconcile`]'s converging shell, [`router`]'s
//! nginx process owner, [`health`] (probes from the host).

pub mod build;
pub mod config;
pub mod docker;
pub mod health;
pub mod pki;
pub mod reconcile;
pub mod router;
pub mod spec;
pub mod types;
