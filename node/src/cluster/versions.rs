//! The state versions of [`ClusterState`], and the one place one is migrated to the next.
//!
//! The snapshot's record format is the cluster version in force:
//!
//! - **v1** (format byte 1): the state as every build before the cluster version wrote it,
//!   byte for byte ([`StateV1`]); decoded with `cluster_version` 1. While the cluster runs
//!   v1 a newer server still writes this shape, so an older one reads its snapshots.
//! - **v2** (format byte 2): [`ClusterState`] as it is today, `cluster_version` last. Written
//!   once `Command::SetClusterVersion(2)` is applied; an older server refuses it with "this
//!   server understands state up to v1 ...: upgrade quarryd on this server".
//!
//! Log entries carry [`Command::format`]: 1 for every command v1 knows (the same bytes as
//! before), 2 for `SetClusterVersion(2)` and `CompactStack`, which are never proposed before
//! every member supports v2.
//!
//! Adding v3: a `StateV2` mirror of today's shape here, its decoding migrated in
//! [`decode_state`], `STATE_VERSION_MAX` raised, goldens written under `encodings/v3/`.

use std::collections::BTreeMap;

use quarry_consensus::codec::{self, CodecError};
use serde::{Deserialize, Serialize};

use super::state::{ClusterState, RouteTarget, ServerRecord, StackRecord, VoterReplacement};
use crate::grid::Grid;
use crate::version::STATE_VERSION_MAX;

/// [`ClusterState`] as state v1 encodes it (every field but the cluster version, in order).
#[derive(Serialize, Deserialize)]
struct StateV1<S, N, E, T, G, R, P> {
    servers: S,
    next_raft_id: N,
    env: E,
    stacks: T,
    grid: G,
    routes: R,
    replacements: P,
}

type StateV1Owned = StateV1<
    BTreeMap<String, ServerRecord>,
    u64,
    BTreeMap<String, String>,
    BTreeMap<String, StackRecord>,
    Grid,
    BTreeMap<String, RouteTarget>,
    Vec<VoterReplacement>,
>;

/// The snapshot bytes of `state`, in the format of its cluster version.
pub fn encode_state(state: &ClusterState) -> Result<Vec<u8>, CodecError> {
    if state.cluster_version <= 1 {
        let v1 = StateV1 {
            servers: &state.servers,
            next_raft_id: state.next_raft_id,
            env: &state.env,
            stacks: &state.stacks,
            grid: &state.grid,
            routes: &state.routes,
            replacements: &state.replacements,
        };
        return codec::encode_as(1, &v1);
    }
    let format = u8::try_from(state.cluster_version)
        .map_err(|_| CodecError::Encode(format!("state v{}", state.cluster_version)))?;
    codec::encode_as(format, state)
}

/// A snapshot of any state version this build knows, migrated to today's shape.
pub fn decode_state(bytes: &[u8]) -> Result<ClusterState, CodecError> {
    let known = STATE_VERSION_MAX as u8;
    match codec::format_of(bytes, known)? {
        1 => {
            let v1: StateV1Owned = codec::decode_upto(known, bytes)?;
            Ok(ClusterState {
                servers: v1.servers,
                next_raft_id: v1.next_raft_id,
                env: v1.env,
                stacks: v1.stacks,
                grid: v1.grid,
                routes: v1.routes,
                replacements: v1.replacements,
                cluster_version: 1,
            })
        }
        _ => codec::decode_upto(known, bytes),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::Command;

    #[test]
    fn a_v1_state_is_written_as_v1_and_read_back_at_cluster_version_1() {
        let s = ClusterState::default();
        assert_eq!(s.cluster_version, 1);
        let b = encode_state(&s).unwrap();
        assert_eq!(b[0], 1);
        assert_eq!(decode_state(&b).unwrap(), s);
    }

    #[test]
    fn after_the_switch_the_state_is_v2_and_a_v1_build_refuses_it() {
        let mut s = ClusterState::default();
        s.apply(1, Command::SetClusterVersion(2)).expect("switch");
        let b = encode_state(&s).unwrap();
        assert_eq!(b[0], 2);
        assert_eq!(decode_state(&b).unwrap(), s);
        let e = codec::decode_upto::<ClusterState>(1, &b).unwrap_err();
        assert!(
            e.to_string().contains("upgrade quarryd on this server"),
            "{e}"
        );
    }
}
