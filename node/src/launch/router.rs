//! The router on a server tagged `router`: one nginx, daemonized in `DATA/router`, serving
//! the table the leader sends ([`LaunchRequest::Route`](super::LaunchRequest::Route)).
//!
//! - A table is rendered by the same [`crate::router::render`] as `quarry start` (an entry
//!   it cannot route is left out and logged, the rest is served), checked with `nginx -t`,
//!   and reloaded gracefully; the answer goes back only once the new workers serve and the
//!   old ones have finished their requests, so the leader may stop the replicas the new
//!   table left.
//! - A table from an older leader term than one already applied is refused (a deposed
//!   leader's late push never undoes its successor's).
//! - **Static stability**: without a table (a leader change, a partition, quarryd restarted)
//!   nginx keeps its last config; nginx is its own daemon, so it serves while quarryd is
//!   away. At start quarryd only makes sure nginx runs: with its last config if there is one,
//!   else with an empty table (every domain 404).

use std::net::SocketAddr;
use std::path::Path;

use super::routing::RouteTable;
use crate::router::{render, Nginx};

/// The router's state (one owner: the mutex serializes applies).
#[derive(Debug)]
pub(super) struct Router {
    nginx: Nginx,
    listen: SocketAddr,
    state: tokio::sync::Mutex<Applied>,
}

#[derive(Debug, Default)]
struct Applied {
    /// The highest leader term whose table was applied.
    term: u64,
}

impl Router {
    /// The router of a server with data under `data`, nginx listening on `listen`; nginx is
    /// started (with its last config, or an empty table) if it does not run.
    pub(super) async fn start(data: &Path, listen: SocketAddr) -> Result<Router, String> {
        let nginx = Nginx::new(&data.join("router"));
        let live = nginx.prefix().join("conf/nginx.conf");
        let conf = match std::fs::read_to_string(&live) {
            Ok(c) => c,
            Err(_) => render(&RouteTable::default().spec(listen)).conf,
        };
        let n = nginx.clone();
        let applied = tokio::task::spawn_blocking(move || {
            n.check_installed()?;
            n.apply(&conf)
        })
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?;
        tracing::info!(?applied, %listen, prefix = %nginx.prefix().display(), "router nginx");
        Ok(Router {
            nginx,
            listen,
            state: tokio::sync::Mutex::new(Applied::default()),
        })
    }

    /// Serve `table`, sent by the leader of `term`: once this returns `Ok`, nginx serves it
    /// and no worker serves an older one.
    pub(super) async fn apply(&self, term: u64, table: &RouteTable) -> Result<(), String> {
        let mut state = self.state.lock().await;
        if term < state.term {
            return Err(format!(
                "a table of leader term {term}, older than the one applied ({})",
                state.term
            ));
        }
        // A bad entry (from a leader of an older build) is left out, never the whole table.
        let rendered = render(&table.spec(self.listen));
        for l in &rendered.left_out {
            tracing::warn!(domain = %l.domain, stack = %l.stack, node = %l.node, "left out of the router: {}", l.reason);
        }
        let conf = rendered.conf;
        let nginx = self.nginx.clone();
        let applied = tokio::task::spawn_blocking(move || nginx.apply(&conf))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())?;
        if applied != crate::router::Applied::Unchanged {
            tracing::info!(?applied, term, "router table applied");
        }
        state.term = term;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::net::TcpListener;

    use super::*;
    use crate::launch::routing::{RoutedNode, Upstream};

    use crate::router::testing::{backend, get};
    use crate::router::StopOnDrop;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_router_serves_the_leaders_table_refuses_an_older_term_and_keeps_its_config() {
        let dir = tempfile::tempdir().expect("tempdir");
        let _guard = StopOnDrop(Nginx::new(&dir.path().join("router")));
        let listen: SocketAddr = {
            let l = TcpListener::bind("127.0.0.1:0").expect("bind");
            l.local_addr().expect("addr")
        };
        let backend_addr = backend();
        let router = Router::start(dir.path(), listen).await.expect("start");
        assert!(
            get(listen, "a.test").starts_with("HTTP/1.1 404"),
            "no table yet: every domain 404"
        );
        let table = RouteTable {
            nodes: vec![RoutedNode {
                stack: "s".into(),
                node: "web".into(),
                domains: vec!["a.test".into()],
                upstreams: vec![Upstream {
                    address: backend_addr.to_string(),
                    slice: "s.web.r1.0".into(),
                    revision: 1,
                }],
            }],
        };
        router.apply(2, &table).await.expect("apply");
        assert!(get(listen, "a.test").ends_with("from-backend"));
        let stale = router.apply(1, &RouteTable::default()).await;
        assert!(
            stale.is_err_and(|e| e.contains("older")),
            "a deposed leader's table"
        );
        assert!(get(listen, "a.test").ends_with("from-backend"));
        // quarryd restarted: the router starts with nginx's last config, not an empty one.
        drop(router);
        let again = Router::start(dir.path(), listen).await.expect("restart");
        assert!(get(listen, "a.test").ends_with("from-backend"));
        let mut empty = table.clone();
        empty.nodes[0].upstreams.clear();
        again
            .apply(1, &empty)
            .await
            .expect("a new process takes any term");
        let page = get(listen, "a.test");
        assert!(page.starts_with("HTTP/1.1 503"), "{page}");
    }
}
