//! The soft state's core fed scripted messages (reports, leadership, router acks, deploy
//! progress) at scripted times: no network, no Docker, no clock.

use std::time::Duration;

use super::*;
use crate::launch::compile::tests::{cluster, deploy, source, stack, EXAMPLE};
use crate::launch::protocol::{ContainerReport, PsRow};

const S: &str = "guestbook";

/// The example deployed (revision 1), then again with a new web image (revision 2: the old
/// web replicas retiring); h1 is tagged `router`.
fn deploying() -> ClusterState {
    let mut s = cluster();
    s.servers
        .get_mut("h1")
        .expect("h1")
        .member
        .tags
        .push(ROUTER_TAG.to_owned());
    deploy(&mut s, &stack(EXAMPLE, "a"), &source(1));
    deploy(&mut s, &stack(EXAMPLE, "b"), &source(2));
    s
}

/// What `server` reports: every desired container placed on it (retiring ones too) running,
/// with `health`.
fn report(state: &ClusterState, server: &str, health: &str) -> ServerReport {
    let rec = &state.stacks[S];
    let containers = rec
        .desired
        .iter()
        .filter(|d| d.placement.as_ref().is_some_and(|p| p.server.0 == server))
        .map(|d| ContainerReport {
            stack: S.into(),
            node: d.node.clone(),
            kind: d.kind.to_string(),
            replica: d.replica,
            revision: d.revision,
            slice: d.slice.0.clone(),
            id: format!("id-{}", d.slice.0),
            name: d.container_name(),
            state: "running".into(),
            status: "Up".into(),
            health: health.into(),
            address: None,
            image: "i".into(),
        })
        .collect();
    ServerReport {
        server: server.into(),
        engine: None,
        fresh: true,
        containers,
        problems: BTreeMap::new(),
    }
}

fn records(state: &ClusterState) -> Records {
    vec![(S.to_owned(), state.stacks[S].clone())]
}

fn servers() -> Vec<String> {
    ["h1", "h2", "h3"].map(String::from).to_vec()
}

/// A scripted run: `at(secs)` is the time a message is handled at.
struct Script {
    soft: Soft,
    t0: Instant,
}

impl Script {
    fn new() -> Script {
        Script {
            soft: Soft::default(),
            t0: Instant::now(),
        }
    }

    fn at(&mut self, secs: u64, msg: Msg) -> Answer {
        self.soft.handle(self.t0 + Duration::from_secs(secs), msg)
    }

    fn report_all(&mut self, secs: u64, state: &ClusterState, health: &str) {
        for s in servers() {
            let r = report(state, &s, health);
            assert!(matches!(self.at(secs, Msg::ReportArrived(r)), Answer::Done));
        }
    }

    fn round(&mut self, secs: u64, state: &Arc<ClusterState>) -> (RouteTable, bool, bool) {
        match self.at(
            secs,
            Msg::Round {
                state: state.clone(),
            },
        ) {
            Answer::Round {
                table,
                due,
                rolling,
            } => (table, due, rolling),
            other => panic!("{other:?}"),
        }
    }

    fn judge(&mut self, secs: u64, state: &Arc<ClusterState>) -> Option<Command> {
        let live = BTreeSet::from(["h1".to_owned()]);
        match self.at(
            secs,
            Msg::Judge {
                state: state.clone(),
                live,
            },
        ) {
            Answer::Judged(c) => c,
            other => panic!("{other:?}"),
        }
    }

    fn push(&mut self, secs: u64, table: &RouteTable) -> Vec<String> {
        let msg = Msg::PushRoutes {
            routers: vec!["h1".to_owned()],
            table: table.clone(),
        };
        match self.at(secs, msg) {
            Answer::Push(p) => p,
            other => panic!("{other:?}"),
        }
    }

    fn ps(&mut self, secs: u64, state: &ClusterState) -> PsView {
        let msg = Msg::Ps {
            records: records(state),
            servers: servers(),
        };
        match self.at(secs, msg) {
            Answer::Ps(v) => v,
            other => panic!("{other:?}"),
        }
    }

    fn stack_entry(&mut self, secs: u64, state: &ClusterState) -> StackEntry {
        let msg = Msg::Stacks {
            records: records(state),
            servers: servers(),
        };
        match self.at(secs, msg) {
            Answer::Stacks(mut v) => v.remove(0),
            other => panic!("{other:?}"),
        }
    }

    fn accept(&mut self, secs: u64, id: &str) -> Result<(), String> {
        let msg = Msg::DeployAccepted {
            id: id.into(),
            stack: S.into(),
            line: format!("accepted {id}"),
        };
        match self.at(secs, msg) {
            Answer::Begun(r) => r,
            other => panic!("{other:?}"),
        }
    }

    fn progress(&mut self, secs: u64, id: &str, since: usize) -> Option<DeployView> {
        let msg = Msg::Progress {
            id: id.into(),
            since,
        };
        match self.at(secs, msg) {
            Answer::Progress(v) => v,
            other => panic!("{other:?}"),
        }
    }
}

#[test]
fn a_rollout_retires_once_the_new_replicas_report_ready_and_the_router_acknowledged() {
    let state = Arc::new(deploying());
    let mut s = Script::new();
    let since = match s.at(0, Msg::LeadershipGained) {
        Answer::Since(at) => at,
        other => panic!("{other:?}"),
    };
    assert!(
        matches!(s.at(2, Msg::LeadershipGained), Answer::Since(at) if at == since),
        "leading on keeps the first instant"
    );
    s.report_all(3, &state, "healthy");
    let (table, due, rolling) = s.round(3, &state);
    assert!(due && rolling, "the router has no table yet; web rolls out");
    assert_eq!(s.push(3, &table), ["h1"]);
    assert!(
        s.push(3, &table).is_empty(),
        "one push per router at a time"
    );
    assert!(
        !s.round(3, &state).1,
        "nothing due while the push is in flight"
    );
    assert_eq!(s.judge(3, &state), None, "the router has not switched yet");
    s.at(
        4,
        Msg::RouterAcked {
            router: "h1".into(),
            table: table.clone(),
        },
    );
    assert!(!s.round(4, &state).1, "acknowledged: not due again");
    match s.judge(4, &state) {
        Some(Command::Retire {
            stack, revision, ..
        }) => assert_eq!((stack.as_str(), revision), (S, 2)),
        other => panic!("expected Retire, got {other:?}"),
    }
    assert!(
        s.round(4 + REFRESH.as_secs(), &state).1,
        "the table is sent again after {REFRESH:?}"
    );
    match s.at(
        5,
        Msg::Routes {
            state: state.clone(),
        },
    ) {
        Answer::Routes(v) => {
            assert_eq!(v.routers.len(), 1);
            assert!(v.routers[0].current);
            assert_eq!(v.routers[0].acked_secs_ago, Some(1));
        }
        other => panic!("{other:?}"),
    }
    // Leadership lost: the routers' acks and the watched rollouts go; the reports stay.
    s.at(6, Msg::LeadershipLost);
    match s.at(
        6,
        Msg::Routes {
            state: state.clone(),
        },
    ) {
        Answer::Routes(v) => assert_eq!(v.routers[0].acked_secs_ago, None),
        other => panic!("{other:?}"),
    }
    assert!(
        matches!(s.at(7, Msg::LeadershipGained), Answer::Since(at) if at > since),
        "a new term of leadership starts anew"
    );
    assert_eq!(
        s.judge(7, &state),
        None,
        "no router acknowledged this leader"
    );
}

#[test]
fn a_rollout_rolls_back_when_a_new_replica_reports_unhealthy_or_its_server_is_silent() {
    let state = Arc::new(deploying());
    let mut s = Script::new();
    s.at(0, Msg::LeadershipGained);
    s.report_all(3, &state, "unhealthy (probe: refused)");
    match s.judge(3, &state) {
        Some(Command::Rollback { reason, .. }) => assert!(reason.contains("unhealthy"), "{reason}"),
        other => panic!("expected Rollback, got {other:?}"),
    }
    let mut s = Script::new();
    s.at(0, Msg::LeadershipGained);
    assert_eq!(s.judge(5, &state), None, "no report yet: waiting");
    let late = SILENT_LIMIT.as_secs() + 1;
    match s.judge(late, &state) {
        Some(Command::Rollback { reason, .. }) => {
            assert!(reason.contains("has not reported"), "{reason}")
        }
        other => panic!("expected Rollback, got {other:?}"),
    }
}

#[test]
fn ps_shows_the_reports_while_fresh_and_names_the_silent_servers() {
    let state = deploying();
    let mut s = Script::new();
    s.report_all(0, &state, "healthy");
    let view = s.ps(1, &state);
    assert!(view.silent.is_empty(), "{:?}", view.silent);
    let new: Vec<&PsRow> = view.rows.iter().filter(|r| r.revision == 2).collect();
    assert!(!new.is_empty());
    assert!(new
        .iter()
        .all(|r| r.state == "running" && r.health == "healthy"));
    assert!(
        view.rows.iter().any(|r| r.state == "retiring"),
        "the replaced replicas run on, retiring"
    );
    let late = FRESH.as_secs() + 1;
    let view = s.ps(late, &state);
    assert!(view.rows.iter().all(|r| r.state == "unknown"), "{view:?}");
    assert_eq!(
        view.silent,
        servers()
            .iter()
            .map(|s| format!("{s}: last report {late}s ago"))
            .collect::<Vec<_>>()
    );
}

#[test]
fn a_deploy_marks_its_stack_busy_keeps_its_progress_and_its_failure_until_one_succeeds() {
    let state = deploying();
    let mut s = Script::new();
    assert_eq!(s.accept(0, "a"), Ok(()));
    let busy = s
        .accept(0, "b")
        .expect_err("a second deploy of the stack is refused");
    assert!(
        busy.contains("a deploy of guestbook is running (a)"),
        "{busy}"
    );
    assert!(
        s.progress(0, "b", 0).is_none(),
        "a refused deploy keeps no progress"
    );
    s.at(
        1,
        Msg::DeployPhase {
            id: "a".into(),
            phase: "committing".into(),
        },
    );
    s.at(
        1,
        Msg::DeploySaid {
            id: "a".into(),
            line: "committed".into(),
        },
    );
    s.at(
        1,
        Msg::DeployCommitted {
            id: "a".into(),
            revision: 2,
        },
    );
    let p = s.progress(1, "a", 1).expect("known");
    assert_eq!(
        (p.phase.as_str(), p.lines, p.next, p.committed, p.done),
        (
            "committing",
            vec!["committed".to_owned()],
            2,
            Some(2),
            false
        )
    );
    s.report_all(1, &state, "healthy");
    let e = s.stack_entry(1, &state);
    assert_eq!(
        (e.status.as_str(), e.reason.as_deref()),
        ("deploying", Some("deploy a running"))
    );
    s.at(
        2,
        Msg::DeployFinished {
            id: "a".into(),
            stack: S.into(),
            failed: Some("boom".into()),
        },
    );
    let p = s.progress(2, "a", 0).expect("known");
    assert_eq!((p.phase.as_str(), p.done), ("failed", true));
    assert_eq!(
        s.stack_entry(2, &state).last_failure.as_deref(),
        Some("boom")
    );
    assert_eq!(s.accept(3, "c"), Ok(()), "the stack is free again");
    s.at(
        4,
        Msg::DeployFinished {
            id: "c".into(),
            stack: S.into(),
            failed: None,
        },
    );
    assert_eq!(s.stack_entry(4, &state).last_failure, None);
    assert_eq!(s.progress(4, "c", 0).expect("known").phase, "done");
}

fn row(slice: &str, state: &str, health: &str) -> ContainerReport {
    ContainerReport {
        stack: "s".into(),
        node: "web".into(),
        kind: "web".into(),
        replica: 0,
        revision: 1,
        slice: slice.into(),
        id: "id".into(),
        name: "n".into(),
        state: state.into(),
        status: state.into(),
        health: health.into(),
        address: None,
        image: "i".into(),
    }
}

#[test]
fn a_container_is_ready_when_its_fresh_report_says_running_and_healthy_or_unprobed() {
    let now = Instant::now();
    let reports = BTreeMap::from([(
        "h1".to_owned(),
        (
            now,
            ServerReport {
                server: "h1".into(),
                engine: None,
                fresh: true,
                containers: vec![
                    row("s.web.r1.0", "running", "healthy"),
                    row("s.ticker.r1.0", "running", "none"),
                    row("s.web.r1.2", "running", "starting (last probe: refused)"),
                    row("s.web.r1.3", "stopped", "-"),
                ],
                problems: BTreeMap::from([(
                    "s.web.r1.1".to_owned(),
                    "waiting for image x".to_owned(),
                )]),
            },
        ),
    )]);
    let ready =
        |slice: &str| match container_state(&reports, now, "h1", "s", &SliceId(slice.into())) {
            Ready::Yes => Ok(()),
            Ready::No(why) => Err(why),
        };
    assert_eq!(ready("s.web.r1.0"), Ok(()));
    assert_eq!(ready("s.ticker.r1.0"), Ok(()));
    assert!(ready("s.web.r1.2").unwrap_err().contains("starting"));
    assert!(ready("s.web.r1.3").is_err());
    assert_eq!(
        ready("s.web.r1.1"),
        Err("waiting for image x".to_owned()),
        "the server's problem is the reason"
    );
    assert!(matches!(
        container_state(&BTreeMap::new(), now, "h1", "s", &SliceId("x".into())),
        Ready::No(_)
    ));
    let stale = now + FRESH + Duration::from_secs(1);
    assert!(matches!(
        container_state(&reports, stale, "h1", "s", &SliceId("s.web.r1.0".into())),
        Ready::No(why) if why == "no report for 6s"
    ));
}

#[test]
fn the_leaders_loop_is_woken_by_a_report_that_says_something_new_or_an_ack_not_by_repeats() {
    let state = deploying();
    let mut s = Script::new();
    s.report_all(0, &state, "healthy");
    assert!(s.soft.take_changed(), "first reports");
    s.report_all(1, &state, "healthy");
    assert!(!s.soft.take_changed(), "the same again");
    s.at(2, Msg::ReportArrived(report(&state, "h2", "unhealthy")));
    assert!(s.soft.take_changed(), "h2's containers changed");
    let late = 2 + FRESH.as_secs() + 1;
    s.at(late, Msg::ReportArrived(report(&state, "h2", "unhealthy")));
    assert!(s.soft.take_changed(), "h2 was silent: its report is news");
    s.at(
        late,
        Msg::RouterFailed {
            router: "h1".into(),
            error: "refused".into(),
        },
    );
    assert!(
        !s.soft.take_changed(),
        "a failed push waits for the safety tick"
    );
    s.at(
        late,
        Msg::RouterAcked {
            router: "h1".into(),
            table: RouteTable::default(),
        },
    );
    assert!(s.soft.take_changed(), "an acknowledgement");
}
