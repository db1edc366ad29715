//! Who made a container: `quarry start` on this machine, or a cluster's reconciler. Each
//! touches only its own, so a local stack and a cluster stack of the same name share an
//! engine without stopping, replacing or reporting each other's containers.
//!
//! - Every container quarry creates carries [`ORIGIN`]: `local`, or the cluster's id (the
//!   gossip cluster id, `quarry-` and 16 hex digits of its CA's digest).
//! - Names keep the two apart too (Docker names and networks are per engine): a local
//!   container is `quarry-STACK-NODE-rREVISION-REPLICA` on network `quarry-STACK`, as
//!   before; a cluster's is `quarry.STACK-...` on network `quarry.STACK` (a stack name has
//!   no '.', so neither can take the other's name).
//! - **Containers without the label** were made by a build before origins (876314f). Both
//!   sides then wrote a `quarry.host` label: a cluster placement's host is its server's
//!   address, `quarry start`'s the replica's alias (`web-r1-0`), never an address. So an
//!   unlabeled container whose host is an address is a cluster's (the reconciler keeps
//!   managing it through a rolling upgrade: it stays running), any other is local. A
//!   server of the old build with a local stack and a cluster stack of the same name could
//!   not have run both (their names collided), so no container is claimed by both.

use std::collections::HashMap;
use std::net::IpAddr;

use crate::types::DesiredContainer;

/// The label saying who made a container.
pub const ORIGIN: &str = "quarry.origin";
/// Its value on `quarry start`'s containers.
pub const LOCAL: &str = "local";

/// Who made (and so may touch) a container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// `quarry start` on this machine.
    Local,
    /// The reconciler of the cluster with this id.
    Cluster(String),
}

impl Origin {
    /// The value of its [`ORIGIN`] label.
    pub fn label(&self) -> &str {
        match self {
            Origin::Local => LOCAL,
            Origin::Cluster(id) => id,
        }
    }

    /// Whether a container with these labels is this origin's (see the module docs for
    /// containers without [`ORIGIN`]).
    pub fn owns(&self, labels: &HashMap<String, String>) -> bool {
        match labels.get(ORIGIN) {
            Some(o) => o == self.label(),
            None => {
                let by_cluster = labels
                    .get(super::containers::extra_labels::HOST)
                    .is_some_and(|h| h.parse::<IpAddr>().is_ok());
                by_cluster == matches!(self, Origin::Cluster(_))
            }
        }
    }

    /// The prefix of its container and network names.
    fn prefix(&self) -> &'static str {
        match self {
            Origin::Local => "quarry-",
            Origin::Cluster(_) => "quarry.",
        }
    }

    /// The Docker name of a container it makes.
    pub fn container_name(&self, d: &DesiredContainer) -> String {
        format!(
            "{}{}-{}-r{}-{}",
            self.prefix(),
            d.stack,
            d.node,
            d.revision,
            d.replica
        )
    }

    /// The name of its network for `stack`.
    pub fn network_name(&self, stack: &str) -> String {
        format!("{}{stack}", self.prefix())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn each_side_owns_its_labelled_containers_only() {
        let cluster = Origin::Cluster("quarry-0123456789abcdef".into());
        let other = Origin::Cluster("quarry-fedcba9876543210".into());
        let local_made = labels(&[(ORIGIN, "local"), ("quarry.host", "web-r1-0")]);
        let cluster_made = labels(&[
            (ORIGIN, "quarry-0123456789abcdef"),
            ("quarry.host", "10.0.0.1"),
        ]);
        assert!(Origin::Local.owns(&local_made));
        assert!(!cluster.owns(&local_made));
        assert!(cluster.owns(&cluster_made));
        assert!(!Origin::Local.owns(&cluster_made));
        assert!(!other.owns(&cluster_made), "another cluster's");
    }

    #[test]
    fn an_unlabeled_container_of_the_previous_build_goes_by_its_host_label() {
        let cluster = Origin::Cluster("quarry-0123456789abcdef".into());
        for host in ["10.0.0.1", "fd00::1"] {
            let old = labels(&[("quarry.host", host)]);
            assert!(cluster.owns(&old), "{host}: the cluster keeps managing it");
            assert!(!Origin::Local.owns(&old), "{host}");
        }
        let old_local = labels(&[("quarry.host", "web-r1-0")]);
        assert!(Origin::Local.owns(&old_local));
        assert!(!cluster.owns(&old_local));
        let no_host = labels(&[]);
        assert!(Origin::Local.owns(&no_host) && !cluster.owns(&no_host));
    }

    #[test]
    fn names_of_the_two_sides_never_meet() {
        let c = Origin::Cluster("quarry-0123456789abcdef".into());
        assert_eq!(Origin::Local.network_name("shop"), "quarry-shop");
        assert_eq!(c.network_name("shop"), "quarry.shop");
    }
}
