//! The owner of this server's hosts file: it keeps the managed block listing exactly the live
//! members.
//!
//! A *live member* is a server whose record Raft committed (a removed server is no member,
//! whatever gossip says) and that this server's gossip sees alive or suspect (not dead, and
//! seen at all). Its line carries the committed cluster address, under its server name (and
//! its host name too when that differs). [`live_entries`] is the pure part.
//!
//! [`keep`] is the one task that writes the file: it renders the block on every change of the
//! server list or of liveness, and writes only when the rendered block differs from the last
//! one written (a heartbeat never touches the file); every [`CHECK_EVERY`] it compares the file
//! with what it should hold and rewrites it only if it differs. Right after a start, it waits until
//! gossip has seen every member or [`SETTLE`] has passed, so a restart does not briefly empty
//! the block. A failed write is logged and tried again every [`RETRY`].

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

use super::{is_valid_hostname, render_block, update, HostEntry, WriteOutcome};
use crate::cluster::ServerMap;
use crate::gossip::member::{LiveState, Liveness};
use crate::types::ServerId;

/// How long after a start the block may be written before gossip has seen every member.
pub const SETTLE: Duration = Duration::from_secs(3);
/// How soon a failed write is tried again.
pub const RETRY: Duration = Duration::from_secs(5);
/// How often the file is compared with the block it should hold (an edit by hand is undone).
pub const CHECK_EVERY: Duration = Duration::from_secs(30);

/// The entries of the block: every committed server that gossip sees alive or suspect. Pure.
pub fn live_entries(servers: &ServerMap, liveness: &Liveness) -> Vec<HostEntry> {
    let mut out = Vec::new();
    for (name, s) in servers {
        let live = liveness
            .get(&ServerId(name.clone()))
            .is_some_and(|l| l.state != LiveState::Dead);
        if !live {
            continue;
        }
        out.push(HostEntry::new(name.clone(), s.member.address));
        let host = &s.member.hostname;
        if host != name && is_valid_hostname(host) {
            out.push(HostEntry::new(host.clone(), s.member.address));
        }
    }
    out
}

/// Whether the first write may happen: the server list is known and gossip has seen every
/// member, or the settle time has passed since the start (and gossip has run a round).
fn ready(servers: &ServerMap, liveness: &Liveness, since_start: Duration) -> bool {
    if servers.is_empty() || liveness.is_empty() {
        return false;
    }
    since_start >= SETTLE
        || servers
            .keys()
            .all(|n| liveness.contains_key(&ServerId(n.clone())))
}

/// Keeps the managed block of `path` in step with the live members until both channels close.
pub async fn keep(
    path: PathBuf,
    mut servers: watch::Receiver<Arc<ServerMap>>,
    mut liveness: watch::Receiver<Liveness>,
) {
    let start = Instant::now();
    let mut written: Option<String> = None;
    let mut failed = false;
    let mut last_check = Instant::now();
    loop {
        let s = servers.borrow_and_update().clone();
        let l = liveness.borrow_and_update().clone();
        if written.is_some() || ready(&s, &l, start.elapsed()) {
            let entries = live_entries(&s, &l);
            let block = render_block(&entries);
            // A changed block is written; an unchanged one is only checked against the file
            // now and then (someone may have edited it), and rewritten only if it differs.
            let check = last_check.elapsed() >= CHECK_EVERY;
            if written.as_ref() != Some(&block) || check {
                last_check = Instant::now();
                match update(&path, &entries) {
                    Ok(how) => {
                        if how != WriteOutcome::Unchanged || written.is_none() {
                            let names: Vec<&str> =
                                entries.iter().map(|e| e.hostname.as_str()).collect();
                            tracing::info!(file = %path.display(), ?how, "hosts block lists {names:?}");
                        }
                        written = Some(block);
                        failed = false;
                    }
                    Err(e) => {
                        if !failed {
                            tracing::warn!(
                                "hosts block not written (tried again every {RETRY:?}): {e}"
                            );
                        }
                        failed = true;
                    }
                }
            }
        }
        let wait = match (failed, written.is_some()) {
            (true, _) => RETRY,
            (false, false) => Duration::from_millis(250), // waiting for the settle time
            (false, true) => CHECK_EVERY,
        };
        tokio::select! {
            r = servers.changed() => if r.is_err() { return },
            r = liveness.changed() => if r.is_err() { return },
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::ServerRecord;
    use crate::gossip::member::ServerLiveness;
    use crate::rpc::join::{Member, ServerSettings};

    fn server(name: &str, host: &str, ip: &str) -> (String, ServerRecord) {
        (
            name.to_owned(),
            ServerRecord {
                raft_id: 1,
                member: Member {
                    name: name.to_owned(),
                    address: ip.parse().expect("ip"),
                    rpc_port: 7701,
                    gossip_port: 7702,
                    api_port: 7700,
                    hostname: host.to_owned(),
                    memory: 0,
                    tags: vec![],
                    settings: ServerSettings::default(),
                },
            },
        )
    }

    fn seen(name: &str, state: LiveState) -> (ServerId, ServerLiveness) {
        (
            ServerId(name.to_owned()),
            ServerLiveness {
                state,
                since_unix_ms: 0,
                generation: 1,
                record: None,
                heartbeat: 0,
                max_version: 0,
            },
        )
    }

    #[test]
    fn the_block_lists_committed_servers_alive_or_suspect_and_nothing_else() {
        let servers: ServerMap = [
            server("h1", "h1", "10.0.0.1"),
            server("h2", "box-2", "10.0.0.2"),
            server("h3", "h3", "10.0.0.3"),
            server("h4", "h4", "10.0.0.4"),
        ]
        .into_iter()
        .collect();
        let liveness: Liveness = [
            seen("h1", LiveState::Alive),
            seen("h2", LiveState::Suspect),
            seen("h3", LiveState::Dead),
            // h4 never seen; "gone" is alive in gossip but not a member (removed).
            seen("gone", LiveState::Alive),
        ]
        .into_iter()
        .collect();
        let got = live_entries(&servers, &liveness);
        let want = vec![
            HostEntry::new("h1", "10.0.0.1".parse().expect("ip")),
            HostEntry::new("h2", "10.0.0.2".parse().expect("ip")),
            HostEntry::new("box-2", "10.0.0.2".parse().expect("ip")),
        ];
        assert_eq!(got, want);
    }

    #[test]
    fn the_first_write_waits_for_gossip_to_see_every_member_or_the_settle_time() {
        let servers: ServerMap = [
            server("h1", "h1", "10.0.0.1"),
            server("h2", "h2", "10.0.0.2"),
        ]
        .into_iter()
        .collect();
        let one: Liveness = [seen("h1", LiveState::Alive)].into_iter().collect();
        let both: Liveness = [seen("h1", LiveState::Alive), seen("h2", LiveState::Dead)]
            .into_iter()
            .collect();
        assert!(!ready(&servers, &Liveness::new(), SETTLE * 2));
        assert!(!ready(&ServerMap::new(), &one, SETTLE * 2));
        assert!(!ready(&servers, &one, Duration::ZERO));
        assert!(ready(&servers, &one, SETTLE));
        assert!(ready(&servers, &both, Duration::ZERO));
    }
}
