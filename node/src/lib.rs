//! The node library: everything `quarryd` runs and the `quarry` CLI shares.
//!
//! Pure modules (no I/O crate imported; tested without Docker or a network): [`types`],
//! [`grid`] (the slicegrid scheduler).

pub mod grid;
pub mod types;
