use super::*;
use crate::cluster::ClusterState;
use crate::launch::compile::tests::{cluster, deploy, source, stack, EXAMPLE};

/// The example deployed (revision 1), then again with a new web image (revision 2: the old
/// web replicas retiring).
fn deploying() -> ClusterState {
    let mut s = cluster();
    deploy(&mut s, &stack(EXAMPLE, "a"), &source(1));
    deploy(&mut s, &stack(EXAMPLE, "b"), &source(2));
    s
}

fn routed(s: &ClusterState, ready: &dyn Fn(&str, &DesiredContainer) -> bool) -> Vec<Upstream> {
    let t = table(&s.routes, &s.stacks, ready);
    assert_eq!(t.nodes.len(), 1, "{t:?}");
    assert_eq!(t.nodes[0].domains, ["guestbook.test"]);
    t.nodes[0].upstreams.clone()
}

fn revisions(u: &[Upstream]) -> BTreeSet<u64> {
    u.iter().map(|u| u.revision).collect()
}

#[test]
fn a_steady_node_routes_its_ready_replicas_and_nothing_when_none_or_disabled() {
    let mut s = cluster();
    deploy(&mut s, &stack(EXAMPLE, "a"), &source(1));
    let all = routed(&s, &|_, _| true);
    assert_eq!(all.len(), 2, "both web replicas");
    let webs: Vec<&DesiredContainer> = s.stacks["guestbook"]
        .desired
        .iter()
        .filter(|d| d.node == "web")
        .collect();
    for d in &webs {
        assert!(all
            .iter()
            .any(|u| Some(&u.address) == main_address(d).as_ref()));
    }
    let first = webs[0].slice.clone();
    let one = routed(&s, &|_, d| d.slice == first);
    assert_eq!(one.len(), 1);
    assert_eq!(one[0].slice, first.0);
    assert!(routed(&s, &|_, _| false).is_empty(), "503");
    s.stacks.get_mut("guestbook").expect("stack").disabled = true;
    assert!(routed(&s, &|_, _| true).is_empty(), "a disabled stack: 503");
}

#[test]
fn during_a_deploy_exactly_one_revision_is_routed_and_the_new_one_only_once_all_are_ready() {
    let s = deploying();
    let rec = &s.stacks["guestbook"];
    let retiring: BTreeSet<String> = rec.retiring.iter().map(|x| x.0.clone()).collect();
    let is_old = |d: &DesiredContainer| retiring.contains(&d.slice.0);
    assert_eq!(revisions(&routed(&s, &|_, _| true)), BTreeSet::from([2]));
    let one_new = rec
        .desired
        .iter()
        .find(|d| d.node == "web" && !is_old(d))
        .expect("a new web replica")
        .slice
        .clone();
    let partly = routed(&s, &|_, d| is_old(d) || d.slice == one_new);
    assert_eq!(
        revisions(&partly),
        BTreeSet::from([1]),
        "old until all new ready"
    );
    assert_eq!(partly.len(), 2);
    let no_old = routed(&s, &|_, d| d.slice == one_new);
    assert_eq!(no_old.len(), 1, "no old replica ready: the ready new one");
    assert_eq!(revisions(&no_old), BTreeSet::from([2]));

    let t_old = table(&s.routes, &s.stacks, &|_, d| is_old(d));
    let t_new = table(&s.routes, &s.stacks, &|_, d| !is_old(d));
    assert!(!switched(&t_old, "guestbook", &retiring));
    assert!(switched(&t_new, "guestbook", &retiring));
    assert!(
        switched(&t_old, "other", &retiring),
        "another stack's table"
    );
}

#[test]
fn a_rollout_waits_retires_once_ready_and_switched_and_rolls_back_on_failure_or_time() {
    let s = deploying();
    let rec = &s.stacks["guestbook"];
    let ready = |_: &DesiredContainer| Health::Ready;
    let t = Duration::from_secs(1);
    assert_eq!(verdict(rec, &ready, true, t), Verdict::Retire);
    assert!(matches!(verdict(rec, &ready, false, t), Verdict::Wait(w) if w[0].contains("routers")));
    assert!(
        matches!(verdict(rec, &ready, false, ROLLOUT_LIMIT), Verdict::RollBack(r) if r.contains("routers did not switch")),
        "a router that never switches does not hold the deploy forever"
    );
    // Every web replica in `health`, the rest ready.
    let web_in = |health: Health| {
        move |d: &DesiredContainer| {
            if d.node == "web" {
                health.clone()
            } else {
                Health::Ready
            }
        }
    };
    let starting = web_in(Health::Waiting("starting".into()));
    assert!(matches!(verdict(rec, &starting, true, t), Verdict::Wait(w) if w.len() == 2));
    assert!(
        matches!(verdict(rec, &starting, true, ROLLOUT_LIMIT), Verdict::RollBack(r) if r.contains("not ready after 30s")),
        "out of time"
    );
    let failed = web_in(Health::Failed("unhealthy: 404".into()));
    assert!(
        matches!(verdict(rec, &failed, true, t), Verdict::RollBack(r) if r.contains("unhealthy: 404"))
    );
    let mut steady = cluster();
    deploy(&mut steady, &stack(EXAMPLE, "a"), &source(1));
    assert_eq!(
        verdict(&steady.stacks["guestbook"], &failed, false, ROLLOUT_LIMIT),
        Verdict::Idle,
        "nothing to roll back to: not a rollout"
    );
}

/// `stack` (the example renamed) committed as an older build would: its web node's routes
/// as given, in the case they were written.
fn deploy_routes(s: &mut ClusterState, name: &str, domains: &[&str]) {
    let yml = EXAMPLE
        .replace("name: guestbook", &format!("name: {name}"))
        .replace("[guestbook.test]", "[placeholder.test]");
    let file = stack(&yml, "a");
    let mut c = crate::launch::compile::compile(
        &crate::launch::compile::PlanInputs::of(s, name),
        &file,
        &source(7),
    )
    .expect("compiles");
    c.change.routes = domains
        .iter()
        .map(|d| ((*d).to_owned(), "web".to_owned()))
        .collect();
    s.apply(20, crate::cluster::Command::Deploy(Box::new(c.change)))
        .expect("an older build's change");
}

#[test]
fn a_domain_two_stacks_hold_in_different_case_is_left_out_and_the_other_routes_are_served() {
    let mut s = cluster();
    deploy(&mut s, &stack(EXAMPLE, "a"), &source(1));
    deploy_routes(&mut s, "shop", &["GuestBook.test", "Shop.test"]);
    let t = table(&s.routes, &s.stacks, &|_, _| true);
    let served: Vec<(&str, Vec<String>)> = t
        .nodes
        .iter()
        .map(|n| (n.stack.as_str(), n.domains.clone()))
        .collect();
    assert_eq!(
        served,
        vec![("shop", vec!["shop.test".to_owned()])],
        "guestbook.test goes to neither; shop.test is served, in lower case"
    );
    assert!(
        t.nodes[0].upstreams.len() == 2,
        "shop's replicas: {:?}",
        t.nodes[0]
    );
    let out = left_out(&s.routes);
    let who: Vec<(&str, &str)> = out
        .iter()
        .map(|l| (l.domain.as_str(), l.stack.as_str()))
        .collect();
    assert_eq!(
        who,
        vec![("GuestBook.test", "shop"), ("guestbook.test", "guestbook")]
    );
    assert!(
        out[0]
            .reason
            .contains("also claimed by node web of stack guestbook"),
        "{out:?}"
    );
}

#[test]
fn a_route_committed_in_mixed_case_alone_is_served_in_lower_case() {
    let mut s = cluster();
    deploy_routes(&mut s, "shop", &["Shop.Test"]);
    let t = table(&s.routes, &s.stacks, &|_, _| true);
    assert_eq!(t.nodes.len(), 1, "{t:?}");
    assert_eq!(t.nodes[0].domains, ["shop.test"]);
    assert!(left_out(&s.routes).is_empty());
}

#[test]
fn an_ipv6_cluster_address_reaches_the_router_table() {
    // An IPv6 address written `fd00::1:20001` did not parse: every upstream was left out.
    let mut s = cluster();
    for (i, r) in s.servers.values_mut().enumerate() {
        r.member.address = format!("fd00::{}", i + 1).parse().expect("ip");
    }
    deploy(&mut s, &stack(EXAMPLE, "a"), &source(1));
    let t = table(&s.routes, &s.stacks, &|_, _| true);
    let spec = t.spec("[::]:80".parse().expect("listen"));
    assert_eq!(spec.sites.len(), 1, "{t:?}");
    assert_eq!(spec.sites[0].upstreams.len(), 2, "both web replicas: {t:?}");
    assert!(
        spec.sites[0].upstreams.iter().all(|a| a.is_ipv6()),
        "{:?}",
        spec.sites[0].upstreams
    );
}
