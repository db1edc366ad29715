//! The node library: everything `quarryd` runs and the `quarry` CLI shares.
