//! The node library: everything `quarryd` runs and the `quarry` CLI shares.
//!
//! Pure modules (no I/O crate imported; tested without Docker or a network): [`types`] (the
//! shared data), [`spec`] (the quarry.yml reader; `spec::load` is its thin file-reading shell),
//! [`build`] (the plan compiler), [`grid`] (the slicegrid scheduler). Beside them: [`config`]
//! (quarryd.toml) and [`pki`] (the cluster CA, certificates and join token).

pub mod build;
pub mod config;
pub mod grid;
pub mod pki;
pub mod spec;
pub mod types;
