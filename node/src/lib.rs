//! The node library: everything `quarryd` runs and the `quarry` CLI shares.
//!
//! Pure modules (no I/O crate imported; tested without Docker or a network): [`types`].

pub mod build;
pub mod config;
pub mod gossip;
pub mod hosts;
pub mod pki;
pub mod spec;
pub mod types;
