//! The background tasks of a server in the cluster.
//!
//! - [`reconcile`] (acts only while this server leads): moves Raft's configuration toward the
//!   rule ([`super::membership::plan`]), replacing voters that are down past the grace period
//!   (`heal.rs`: logged and recorded in the state), and keeps one grid block per server
//!   ([`grid_ops_for`]), each a committed command carrying the grid version it was computed
//!   on. Woken by admissions and by changes of the server list, and every
//!   [`RECONCILE_EVERY`] (a learner catching up is noticed by polling Raft's local status);
//!   the grid is read (ReadIndex) only when the server list changed or a step failed, and
//!   every few seconds.
//!   It also switches the cluster version up ([`crate::version::next_cluster_version`]) once
//!   every server's gossip record says it supports the next one: one committed
//!   `SetClusterVersion`.
//! - [`keep_record`]: makes this server's record say what its config says (the founder's first
//!   record, with the initial global env; later, new addresses, ports, memory or tags).
//! - [`follow_servers`]: keeps the transport's address book and the peers file in step with
//!   the server records ([`address_book`]), and notices when this server has been removed.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use quarry_consensus::{MemberChange, Role, Status};

use super::heal::Heal;
use super::membership::{self, Change, Progress, Step, View};
use super::node::{Cluster, ClusterError};
use super::state::{ClusterState, Command, GridOp, Refusal, ServerRecord, FOUNDER_RAFT_ID};
use super::transport::PeerAddr;
use crate::grid::Grid;
use crate::types::ServerId;

/// How often the leader looks again without being woken.
pub const RECONCILE_EVERY: Duration = Duration::from_millis(250);
/// How often the grid blocks are checked against the servers without a change of the list.
const GRID_EVERY: Duration = Duration::from_secs(5);

/// The grid operations that give every server a block and no block a missing server. Pure.
pub fn grid_ops_for(servers: &BTreeMap<String, ServerRecord>, grid: &Grid) -> Vec<GridOp> {
    let mut ops = Vec::new();
    for (name, s) in servers {
        if s.member.memory > 0 && grid.block(&ServerId(name.clone())).is_none() {
            ops.push(GridOp::AddBlock {
                server: ServerId(name.clone()),
                memory: s.member.memory,
                tags: s.member.tags.clone(),
            });
        }
    }
    for id in grid.blocks().keys() {
        if !servers.contains_key(&id.0) {
            ops.push(GridOp::RemoveBlock { server: id.clone() });
        }
    }
    ops
}

fn view_of(status: &Status, servers: &BTreeMap<String, ServerRecord>, removed: bool) -> View {
    View {
        leader: status.id,
        leader_removed: removed,
        servers: servers.values().map(|s| s.raft_id).collect(),
        voters: status.voters.iter().copied().collect(),
        learners: status.learners.iter().copied().collect(),
        progress: status
            .progress
            .iter()
            .map(|(&id, p)| {
                (
                    id,
                    Progress {
                        matched: p.matched,
                        active: p.recent_active,
                    },
                )
            })
            .collect(),
        commit: status.commit,
        down: BTreeSet::new(),
    }
}

async fn membership_step(c: &Cluster, status: &Status, heal: &mut Heal) {
    let servers = c.servers_now();
    let liveness = c.liveness_now();
    let mut view = view_of(status, &servers, c.is_removed());
    view.down = heal.down(c, status, &view, &liveness);
    let step = membership::plan(&view);
    let replaced = membership::replacements(&view, &step);
    match step {
        Step::Keep => {}
        Step::Change(changes) => {
            let raft: Vec<MemberChange> = changes
                .iter()
                .map(|ch| match *ch {
                    Change::AddVoter(id) => MemberChange::AddVoter(id),
                    Change::AddLearner(id) => MemberChange::AddLearner(id),
                    Change::Remove(id) => MemberChange::Remove(id),
                })
                .collect();
            match c.handle().change_membership(raft).await {
                Ok((voters, learners)) => {
                    tracing::info!(
                        ?changes,
                        voters = ?voters.iter().map(|&v| c.name_of(v)).collect::<Vec<_>>(),
                        learners = ?learners.iter().map(|&v| c.name_of(v)).collect::<Vec<_>>(),
                        "raft membership changed"
                    );
                    for (dead, by) in replaced {
                        record_replacement(c, heal.record(c, &liveness, dead, by)).await;
                    }
                }
                Err(e) => tracing::debug!(?changes, "membership change not made yet: {e}"),
            }
        }
        Step::TransferLeader(to) => {
            tracing::info!(to = %c.name_of(to), "this server is leaving: handing over leadership");
            if let Err(e) = c.handle().transfer_leader(to).await {
                tracing::info!("leadership transfer not done yet: {e}");
            }
        }
    }
}

/// Log a replacement and record it in the state (the Raft change is already made).
async fn record_replacement(c: &Cluster, r: super::state::VoterReplacement) {
    let ago = super::heal::now_ms().saturating_sub(r.dead_since_unix_ms) / 1000;
    tracing::warn!(
        "self-healing quorum: voter {} (raft {}) dead for {ago} s, replaced by {} (raft {}); \
         it stays a member and comes back as a learner",
        r.dead,
        r.dead_raft_id,
        r.by,
        r.by_raft_id
    );
    if let Err(e) = c.write(Command::RecordReplacement(r)).await {
        tracing::warn!("the voter replacement was made but not recorded for status: {e}");
    }
}

/// One look at the grid blocks; whether it is settled (nothing to do, or done).
async fn grid_step(c: &Cluster) -> bool {
    let computed = c
        .read(|s: &ClusterState| (s.grid.version(), grid_ops_for(&s.servers, &s.grid)))
        .await;
    let Ok((version, ops)) = computed else {
        return false;
    };
    if ops.is_empty() {
        return true;
    }
    match c.write(Command::Grid { version, ops }).await {
        Ok(_) => {
            tracing::info!("grid blocks follow the servers (was version {version})");
            true
        }
        Err(ClusterError::Refused(Refusal::StaleGrid { .. })) => false, // look again
        Err(e) => {
            tracing::warn!("grid blocks not updated: {e}");
            false
        }
    }
}

/// Switch the cluster version up once every server supports the next one (as its last gossip
/// record says; this server by its build).
async fn version_step(c: &Cluster) {
    let current = c.cluster_version_now();
    if current >= crate::version::STATE_VERSION_MAX {
        return;
    }
    let servers = c.servers_now();
    let liveness = c.liveness_now();
    let me = c.me().name;
    let members = servers.keys().map(|name| {
        if *name == me {
            return Some(crate::version::STATE_VERSION_MAX);
        }
        let l = liveness.get(&ServerId(name.clone()))?;
        l.record.as_ref().map(|r| r.state_versions.1)
    });
    let Some(next) = crate::version::next_cluster_version(current, members) else {
        return;
    };
    match c.write(Command::SetClusterVersion(next)).await {
        Ok(_) => tracing::info!(
            "cluster version switched from v{current} to v{next}: every server supports it"
        ),
        Err(e) => tracing::info!("cluster version not switched to v{next} yet: {e}"),
    }
}

/// The leader's reconciler: runs until the node stops. A voter down for longer than
/// `heal_grace` is replaced (see `heal.rs`).
pub async fn reconcile(c: Arc<Cluster>, heal_grace: Duration) {
    let mut servers = c.servers_watch();
    let mut heal = Heal::new(heal_grace);
    // The grid blocks follow the server list: checked (a ReadIndex) when it changed, when
    // woken, after a failed step, and every GRID_EVERY, not on every tick.
    let mut grid_due = true;
    let mut grid_checked = tokio::time::Instant::now();
    loop {
        match c.handle().status().await {
            Ok(status) if status.role == Role::Leader => {
                membership_step(&c, &status, &mut heal).await;
                version_step(&c).await;
                if grid_due || grid_checked.elapsed() >= GRID_EVERY {
                    grid_due = !grid_step(&c).await;
                    grid_checked = tokio::time::Instant::now();
                }
            }
            Ok(_) => {
                heal.clear();
                grid_due = true;
            }
            Err(_) => return,
        }
        tokio::select! {
            _ = c.wake.notified() => grid_due = true,
            r = servers.changed() => {
                if r.is_err() {
                    return;
                }
                grid_due = true;
            }
            _ = tokio::time::sleep(RECONCILE_EVERY) => {}
        }
    }
}

/// The initial global env: one file per variable in `dir` (name = variable), if it exists.
pub fn read_env_dir(dir: &Path) -> BTreeMap<String, String> {
    let mut env = BTreeMap::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return env;
    };
    for e in entries.flatten() {
        let Some(name) = e.file_name().to_str().map(str::to_owned) else {
            continue;
        };
        if super::state::check_env_key(&name).is_err() {
            tracing::warn!(file = %e.path().display(), "not an env variable name: skipped");
            continue;
        }
        if let Ok(v) = std::fs::read_to_string(e.path()) {
            env.insert(name, v.trim_end_matches('\n').to_owned());
        }
    }
    env
}

/// Make this server's record say what it says about itself now (ports actually bound,
/// memory, tags...); the founder's first run records it, with the initial global env from
/// `env_dir`. Returns once done, or when this server turns out to have been removed.
///
/// It writes without reading first: a server that has just joined cannot read before the
/// leader reaches it, and the leader reaches it at the address in its record, which may be
/// the one to fix. An update that changes nothing costs one log entry per start.
pub async fn keep_record(c: Arc<Cluster>, env_dir: PathBuf) {
    loop {
        let me = c.me();
        let update = Command::UpdateServer {
            raft_id: c.raft_id(),
            member: me.clone(),
        };
        let r = match c.write(update).await {
            Err(ClusterError::Refused(Refusal::UnknownServer(_)))
                if c.raft_id() == FOUNDER_RAFT_ID =>
            {
                c.write(Command::Found {
                    member: me,
                    env: read_env_dir(&env_dir),
                })
                .await
            }
            r => r,
        };
        match r {
            Ok(_) => {
                tracing::info!("this server's record is up to date");
                return;
            }
            Err(ClusterError::Refused(e)) => {
                tracing::warn!("this server's record is not in the cluster: {e}");
                return; // removed: follow_servers stops the server when it sees it
            }
            Err(ClusterError::Stopped) => return,
            Err(e) => {
                tracing::info!("this server's record not updated yet: {e}");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
}

/// Write the peers file (atomically).
pub fn write_peers(path: &Path, book: &BTreeMap<u64, PeerAddr>) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(
        &tmp,
        serde_json::to_vec_pretty(book).map_err(std::io::Error::other)?,
    )?;
    std::fs::rename(&tmp, path)
}

/// Read the peers file; a missing one is empty.
pub fn read_peers(path: &Path) -> std::io::Result<BTreeMap<u64, PeerAddr>> {
    match std::fs::read(path) {
        Ok(b) => serde_json::from_slice(&b).map_err(std::io::Error::other),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(BTreeMap::new()),
        Err(e) => Err(e),
    }
}

/// The Raft address book: every server record; beside them, entries of the previous book
/// whose Raft id is still in Raft's configuration (`conf`: a removed server keeps talking
/// to the others until Raft has taken it out — the change needs its vote when it is one of two
/// voters); and, until this server has seen its own record (`seeds`: `Some`), the servers its
/// admission named: a new server must reach the current leader before the log has told it
/// where that is. Pure.
pub fn address_book(
    servers: &BTreeMap<String, ServerRecord>,
    previous: &BTreeMap<u64, PeerAddr>,
    conf: &BTreeSet<u64>,
    seeds: Option<&BTreeMap<u64, PeerAddr>>,
) -> BTreeMap<u64, PeerAddr> {
    let mut book: BTreeMap<u64, PeerAddr> = servers
        .values()
        .map(|s| {
            (
                s.raft_id,
                PeerAddr {
                    name: s.member.name.clone(),
                    addr: s.member.rpc_addr(),
                },
            )
        })
        .collect();
    for (id, p) in previous {
        if conf.contains(id) {
            book.entry(*id).or_insert_with(|| p.clone());
        }
    }
    for (id, p) in seeds.into_iter().flatten() {
        if !servers.contains_key(&p.name) {
            book.entry(*id).or_insert_with(|| p.clone());
        }
    }
    book
}

/// How often the address book is looked at again without a change of the records (a removed
/// server leaves it once Raft has taken it out of the configuration).
const BOOK_EVERY: Duration = Duration::from_secs(1);

/// Keep the address book and the peers file in step with the server records
/// ([`address_book`]), and mark this server removed when its record, once seen, is gone (or
/// belongs to a newer incarnation). A removed server keeps running (Raft may still need it
/// to take it out); its status says to stop it.
pub async fn follow_servers(c: Arc<Cluster>, peers_file: PathBuf) {
    let mut rx = c.servers_watch();
    let seeds = c.peers().all();
    let mut seen_self = false;
    let mut written: Option<BTreeMap<u64, PeerAddr>> = None;
    loop {
        let servers = rx.borrow_and_update().clone();
        let me = c.me().name;
        let mine = servers.get(&me).map(|r| r.raft_id);
        if mine == Some(c.raft_id()) {
            seen_self = true;
        } else if seen_self && !c.is_removed() {
            tracing::error!(
                "this server was removed from the cluster (`quarry servers remove {me}`): stop \
                 quarryd here. To join again, clear its data and secrets directories and run \
                 `quarryd join`"
            );
            c.set_removed();
        }
        if !servers.is_empty() {
            let conf = match c.configuration().await {
                Some((v, l)) => v.union(&l).copied().collect(),
                None => return, // Raft stopped
            };
            let book = address_book(
                &servers,
                &c.peers().all(),
                &conf,
                (!seen_self).then_some(&seeds),
            );
            if book != c.peers().all() {
                c.peers().set(book.clone());
            }
            if seen_self && written.as_ref() != Some(&book) {
                if let Err(e) = write_peers(&peers_file, &book) {
                    tracing::warn!(file = %peers_file.display(), "peers file not written: {e}");
                }
                written = Some(book);
            }
        }
        tokio::select! {
            r = rx.changed() => if r.is_err() { return },
            _ = tokio::time::sleep(BOOK_EVERY) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rpc::join::{Member, ServerSettings};

    fn rec(name: &str, raft_id: u64, memory: u64) -> (String, ServerRecord) {
        (
            name.to_owned(),
            ServerRecord {
                raft_id,
                member: Member {
                    name: name.to_owned(),
                    address: "10.0.0.1".parse().expect("ip"),
                    rpc_port: 7701,
                    gossip_port: 7702,
                    api_port: 7700,
                    hostname: name.to_owned(),
                    memory,
                    tags: vec!["ssd".to_owned()],
                    settings: ServerSettings::default(),
                },
            },
        )
    }

    #[test]
    fn every_server_with_memory_gets_a_block_and_blocks_of_gone_servers_leave() {
        let mut grid = Grid::new(super::super::state::default_grid_options());
        grid.add_block(ServerId("gone".to_owned()), 1 << 30, &[])
            .expect("block");
        grid.add_block(ServerId("h1".to_owned()), 1 << 30, &[])
            .expect("block");
        let servers: BTreeMap<_, _> = [
            rec("h1", 1, 1 << 30),
            rec("h2", 2, 2 << 30),
            rec("h3", 3, 0),
        ]
        .into_iter()
        .collect();
        assert_eq!(
            grid_ops_for(&servers, &grid),
            vec![
                GridOp::AddBlock {
                    server: ServerId("h2".to_owned()),
                    memory: 2 << 30,
                    tags: vec!["ssd".to_owned()]
                },
                GridOp::RemoveBlock {
                    server: ServerId("gone".to_owned())
                },
            ]
        );
    }

    fn peer(name: &str, port: u16) -> PeerAddr {
        PeerAddr {
            name: name.to_owned(),
            addr: format!("10.0.0.9:{port}").parse().expect("addr"),
        }
    }

    #[test]
    fn the_address_book_keeps_a_removed_server_while_raft_still_counts_it() {
        let servers: BTreeMap<_, _> = [rec("h1", 1, 1)].into_iter().collect();
        let previous = BTreeMap::from([(1, peer("h1", 1)), (2, peer("h2", 2)), (3, peer("h3", 3))]);
        // h2's record is gone but Raft still has it; h3 is out of both.
        let book = address_book(&servers, &previous, &BTreeSet::from([1, 2]), None);
        assert_eq!(book.keys().copied().collect::<Vec<_>>(), [1, 2]);
        assert_eq!(
            book[&1].addr,
            servers["h1"].member.rpc_addr(),
            "records win"
        );
        let book = address_book(&servers, &previous, &BTreeSet::from([1]), None);
        assert_eq!(book.keys().copied().collect::<Vec<_>>(), [1]);
    }

    #[test]
    fn a_new_server_keeps_its_admission_peers_until_it_sees_its_own_record() {
        let servers: BTreeMap<_, _> = [rec("h1", 1, 1)].into_iter().collect();
        let seeds = BTreeMap::from([(1, peer("h1", 1)), (3, peer("h3", 3)), (4, peer("h4", 4))]);
        let book = address_book(&servers, &BTreeMap::new(), &BTreeSet::new(), Some(&seeds));
        assert_eq!(book.keys().copied().collect::<Vec<_>>(), [1, 3, 4]);
        assert_eq!(
            book[&1].addr,
            servers["h1"].member.rpc_addr(),
            "records win"
        );
        let book = address_book(&servers, &BTreeMap::new(), &BTreeSet::new(), None);
        assert_eq!(book.keys().copied().collect::<Vec<_>>(), [1]);
    }

    #[test]
    fn the_env_dir_gives_one_variable_per_file_and_skips_bad_names() {
        let dir = tempfile::tempdir().expect("tmp");
        std::fs::write(dir.path().join("REGION"), "lab\n").expect("write");
        std::fs::write(dir.path().join("bad-name"), "x").expect("write");
        let env = read_env_dir(dir.path());
        assert_eq!(
            env,
            BTreeMap::from([("REGION".to_owned(), "lab".to_owned())])
        );
        assert!(read_env_dir(&dir.path().join("missing")).is_empty());
    }
}
