//! Which quarryd this is, and which state versions it can run with.
//!
//! The *state version* is the shape of the replicated state and of the consensus records
//! (log entries, snapshots) that carry it. This build reads and writes versions
//! [`STATE_VERSION_MIN`] to [`STATE_VERSION_MAX`]. The *cluster version* is the state version
//! in force, in the state itself (`ClusterState::cluster_version`): it starts at 1 and the
//! leader moves it up by one committed command (`Command::SetClusterVersion`) once every
//! member advertises (in its gossip record) that it supports the next one
//! ([`next_cluster_version`]). Until then nothing of the newer version is written, so an older
//! server keeps reading every record, and a command that needs it is refused with what to do.
//! As etcd's cluster version: a member may run a build one version ahead of the cluster, never
//! two ([`check_join`]); once switched, the version never goes back.
//!
//! The rule for change (docs/upgrades.md says the same): persisted and transmitted
//! encodings only grow in ways an older decoder can skip or a newer one can default —
//! enum variants appended at the end, never inserted or reordered; new fields optional with
//! defaults where the encoding skips unknown fields (the gossip record is JSON); otherwise a
//! new state version with an explicit migration from N to N+1 in one place
//! (`cluster/versions.rs`); a golden file of each encoding per version is checked in
//! (`node/tests/golden/encodings/v<N>/`) and today's code decodes every one of them.

/// quarryd's version (the crate's).
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
/// The git commit this build is from (`unknown` without git), set by `build.rs`.
pub const COMMIT: &str = env!("QUARRY_COMMIT");
/// The lowest state version this build can run a cluster at.
pub const STATE_VERSION_MIN: u32 = 1;
/// The highest state version this build reads and writes.
pub const STATE_VERSION_MAX: u32 = 2;

/// `0.1.0 (commit 1234abcd5678)`: what `quarryd --version` says and gossip carries.
pub const BUILD: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("QUARRY_COMMIT"),
    ")"
);

/// [`BUILD`], owned.
pub fn build() -> String {
    BUILD.to_owned()
}

/// The state versions a server supports: lowest and highest.
pub type Supported = (u32, u32);

/// What this build supports.
pub const SUPPORTED: Supported = (STATE_VERSION_MIN, STATE_VERSION_MAX);

/// Whether a server supporting `joiner` may join a cluster at version `cluster`: it must read
/// the cluster's version, and be at most one version ahead of it (its lowest at most
/// `cluster + 1`). Why not, in words for its operator, if not. Pure.
pub fn check_join(cluster: u32, joiner: Supported) -> Result<(), String> {
    let (low, high) = joiner;
    if high < cluster {
        return Err(format!(
            "this server understands state up to v{high} but the cluster runs v{cluster}: \
             upgrade quarryd on this server (to a build that supports v{cluster}) and join again"
        ));
    }
    if low > cluster + 1 {
        return Err(format!(
            "this server needs state v{low} or later but the cluster runs v{cluster}: it is \
             more than one version ahead. Upgrade the cluster's servers one at a time first \
             (each release moves the cluster version up by one), or join with an older quarryd"
        ));
    }
    Ok(())
}

/// The cluster version the leader switches on next, if any: `current + 1` once this build
/// and every member (`members`: each server's advertised highest state version, `None` for one
/// whose record has not been seen) support it. Pure.
pub fn next_cluster_version(
    current: u32,
    members: impl IntoIterator<Item = Option<u32>>,
) -> Option<u32> {
    let next = current + 1;
    if next > STATE_VERSION_MAX {
        return None;
    }
    let mut any = false;
    for m in members {
        any = true;
        if m.is_none_or(|high| high < next) {
            return None;
        }
    }
    any.then_some(next)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_server_one_version_ahead_joins_and_two_ahead_is_refused() {
        assert_eq!(check_join(1, (1, 2)), Ok(()));
        assert_eq!(
            check_join(1, (2, 3)),
            Ok(()),
            "its lowest is the cluster's + 1"
        );
        let e = check_join(1, (3, 4)).unwrap_err();
        assert!(e.contains("more than one version ahead"), "{e}");
        assert!(e.contains("cluster runs v1"), "{e}");
        let e = check_join(2, (1, 1)).unwrap_err();
        assert!(e.contains("upgrade quarryd on this server"), "{e}");
        assert_eq!(check_join(2, SUPPORTED), Ok(()));
    }

    #[test]
    fn the_cluster_version_moves_up_only_when_every_member_supports_the_next() {
        assert_eq!(
            next_cluster_version(1, [Some(2), Some(2), Some(2)]),
            Some(2)
        );
        assert_eq!(next_cluster_version(1, [Some(2), Some(1), Some(2)]), None);
        assert_eq!(
            next_cluster_version(1, [Some(2), None]),
            None,
            "not seen yet"
        );
        assert_eq!(next_cluster_version(1, []), None);
        assert_eq!(
            next_cluster_version(STATE_VERSION_MAX, [Some(99)]),
            None,
            "never past what this build knows"
        );
    }

    #[test]
    fn the_build_names_the_version_and_the_commit() {
        assert!(build().starts_with(VERSION), "{}", build());
        assert!(build().contains("commit "), "{}", build());
        assert!(!COMMIT.is_empty());
    }
}
