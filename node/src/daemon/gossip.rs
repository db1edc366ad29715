//! quarryd's gossip: the member started on the cluster address, its record kept current, and
//! its seeds following the committed server list.
//!
//! - The socket is bound before chitchat starts (UDP `gossip_port` on the cluster address; 0
//!   picks a free port, which then goes into this server's record), so a port in use stops
//!   `run` with a message saying which.
//! - The key is the cluster's gossip key (`gossip.key` in the secrets directory); the gossip
//!   cluster id is derived from the CA's digest (not secret: the join token names it too).
//! - The boot generation is bumped and persisted (`data/gossip.generation`) on every start.
//! - [`follow`] publishes the record again when what it says changes (Raft id and role, memory,
//!   tags, ports), and gives the member the other servers' gossip addresses as seeds whenever
//!   the server list changes.
//!
//! Left out: the status summary's container count and reserved memory stay 0 until the
//! container reconciler reports them.

use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::time::Duration;

use super::{DaemonError, Secrets};
use crate::cluster::{Cluster, GossipLink};
use crate::config::Config;
use crate::gossip::member::{GossipControl, GossipMember, MemberOptions};
use crate::gossip::record::{next_generation, ServerRecord};
use crate::gossip::seal::SealKey;
use crate::gossip::transport::SealedTransport;
use crate::rpc::join::Member;

/// How often [`follow`] looks at the Raft role without a change of the server list.
const FOLLOW_EVERY: Duration = Duration::from_secs(1);

/// The gossip cluster id of the cluster whose CA has this digest.
pub fn cluster_id(ca_digest: &crate::pki::CaDigest) -> String {
    format!("quarry-{}", &ca_digest.to_string()[..16])
}

/// Start the member for `me` (whose `gossip_port` is set to the port actually bound).
pub(super) async fn start(
    cfg: &Config,
    secrets: &Secrets,
    me: &mut Member,
    raft_id: u64,
) -> Result<(GossipMember, GossipLink), DaemonError> {
    let ca = secrets.ca()?.ok_or_else(|| {
        DaemonError::Invalid(format!(
            "{} is missing: every member holds the cluster CA; join again",
            secrets.path("ca.key").display()
        ))
    })?;
    let cluster_id = cluster_id(&ca.digest());
    let key = SealKey::derive(&secrets.gossip_key()?, &cluster_id);
    let gen_path = cfg.paths.data.join("gossip.generation");
    let generation = next_generation(&gen_path).map_err(|e| DaemonError::Invalid(e.to_string()))?;
    let want = cfg.gossip_addr();
    let socket = UdpSocket::bind(want).map_err(|e| {
        DaemonError::Invalid(format!(
            "gossip cannot listen on {want} (UDP): {e}: free the port or set another \
             `gossip_port` in quarryd.toml"
        ))
    })?;
    let listen = socket
        .local_addr()
        .map_err(|e| DaemonError::Invalid(format!("gossip socket on {want}: {e}")))?;
    me.gossip_port = listen.port();
    let transport =
        SealedTransport::new(key.clone(), me.name.clone(), generation).with_socket(socket);
    let stats = transport.stats();
    let forget_after = cfg.gossip_forget_after().map_err(DaemonError::Invalid)?;
    let member = GossipMember::start_with(
        ServerRecord::of(me, raft_id, generation, None),
        &cluster_id,
        key,
        listen,
        &[],
        Some(transport),
        MemberOptions { forget_after },
    )
    .await
    .map_err(|e| DaemonError::Invalid(e.to_string()))?;
    let link = GossipLink {
        liveness: member.liveness(),
        stats,
        cluster_id,
        listen,
        generation,
    };
    tracing::info!(%listen, generation, "gossip running");
    Ok((member, link))
}

/// The other servers' gossip addresses. Pure.
fn seeds_of(servers: &crate::cluster::ServerMap, me: &str) -> Vec<SocketAddr> {
    servers
        .values()
        .filter(|s| s.member.name != me)
        .map(|s| SocketAddr::new(s.member.address, s.member.gossip_port))
        .collect()
}

/// Keep the member's seeds and record in step with the cluster (runs until Raft stops).
pub(super) async fn follow(c: Arc<Cluster>, control: GossipControl, generation: u64) {
    let mut servers = c.servers_watch();
    let mut seeds: Vec<SocketAddr> = Vec::new();
    let mut published: Option<ServerRecord> = None;
    loop {
        let now = seeds_of(&servers.borrow_and_update(), &c.me().name);
        if now != seeds {
            control.set_seeds(now.clone());
            seeds = now;
        }
        let Ok(status) = c.handle().status().await else {
            return;
        };
        let role = if status.learners.contains(&status.id) {
            "learner".to_owned()
        } else {
            format!("{:?}", status.role).to_lowercase()
        };
        let record = ServerRecord::of(&c.me(), c.raft_id(), generation, Some(role));
        if published.as_ref() != Some(&record) {
            match control.set_record(&record) {
                Ok(()) => published = Some(record),
                Err(e) => tracing::warn!("gossip record not published: {e}"),
            }
        }
        tokio::select! {
            r = servers.changed() => if r.is_err() { return },
            _ = tokio::time::sleep(FOLLOW_EVERY) => {}
        }
    }
}
