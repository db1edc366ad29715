use super::*;
use crate::types::ImageSource;

fn desired(node: &str, kind: Kind, revision: u64, replica: u32, port: u16) -> DesiredContainer {
    DesiredContainer {
        stack: "s".into(),
        node: node.into(),
        kind,
        revision,
        definition: format!("def-{node}-{revision}"),
        replica,
        slice: SliceId::for_replica("s", node, revision, replica),
        image: ImageSource::Image("busybox".into()),
        command: None,
        env: BTreeMap::new(),
        ports: vec![80],
        memory: 0,
        health: None,
        placement: Some(Placement {
            server: ServerId::local(),
            host: format!("{node}-{replica}"),
            ports: BTreeMap::from([(80, 80)]),
            host_ports: BTreeMap::from([(80, port)]),
        }),
    }
}

fn observed_of(d: &DesiredContainer, state: RunState) -> ObservedContainer {
    let p = d.placement.as_ref().expect("placed");
    ObservedContainer {
        id: format!("id-{}", d.slice),
        name: d.container_name(),
        node: d.node.clone(),
        kind: d.kind,
        revision: d.revision,
        definition: d.definition.clone(),
        replica: d.replica,
        slice: d.slice.clone(),
        host: p.host.clone(),
        health: None,
        domains: vec![],
        fields: BTreeMap::new(),
        ports: d.ports.clone(),
        state,
        status: "running".into(),
        host_ports: p.host_ports.clone(),
        publish_ip: None,
        image: d.image.reference().to_owned(),
        started_at: None,
        pid: None,
    }
}

#[test]
fn first_deploy_creates_everything_with_services_first() {
    let want = vec![
        desired("web", Kind::Web, 1, 0, 20000),
        desired("web", Kind::Web, 1, 1, 20001),
        desired("kv", Kind::Service, 1, 0, 20002),
        desired("ticker", Kind::Worker, 1, 0, 20003),
    ];
    let d = diff(&want, &[]);
    let order: Vec<_> = d.create.iter().map(|c| c.slice.0.as_str()).collect();
    assert_eq!(
        order,
        ["s.kv.r1.0", "s.ticker.r1.0", "s.web.r1.0", "s.web.r1.1"]
    );
    assert!(d.keep.is_empty() && d.remove.is_empty() && d.start.is_empty());
}

#[test]
fn converged_stack_is_a_noop() {
    let want = vec![
        desired("kv", Kind::Service, 1, 0, 20002),
        desired("web", Kind::Web, 1, 0, 20000),
    ];
    let seen: Vec<_> = want
        .iter()
        .map(|d| observed_of(d, RunState::Running))
        .collect();
    let d = diff(&want, &seen);
    assert!(d.is_noop(), "{d:?}");
    assert_eq!(d.keep.len(), 2);
}

#[test]
fn new_revision_creates_new_replicas_and_removes_old_ones_after() {
    let old = [
        desired("web", Kind::Web, 1, 0, 20000),
        desired("web", Kind::Web, 1, 1, 20001),
    ];
    let seen: Vec<_> = old
        .iter()
        .map(|d| observed_of(d, RunState::Running))
        .collect();
    let want = vec![
        desired("web", Kind::Web, 2, 0, 20004),
        desired("web", Kind::Web, 2, 1, 20005),
    ];
    let d = diff(&want, &seen);
    assert_eq!(d.create.len(), 2);
    assert_eq!(
        d.remove.iter().map(|o| o.revision).collect::<Vec<_>>(),
        [1, 1]
    );
    assert!(d.replace.is_empty());
}

#[test]
fn stopped_desired_container_is_started_not_recreated() {
    let want = vec![desired("web", Kind::Web, 1, 0, 20000)];
    let seen = vec![observed_of(&want[0], RunState::Stopped)];
    let d = diff(&want, &seen);
    assert_eq!(d.start.len(), 1);
    assert!(d.create.is_empty() && d.remove.is_empty());
}

#[test]
fn scale_down_removes_the_extra_replica() {
    let two = [
        desired("web", Kind::Web, 1, 0, 20000),
        desired("web", Kind::Web, 1, 1, 20001),
    ];
    let seen: Vec<_> = two
        .iter()
        .map(|d| observed_of(d, RunState::Running))
        .collect();
    let d = diff(&two[..1], &seen);
    assert_eq!(d.keep.len(), 1);
    assert_eq!(d.remove.len(), 1);
    assert_eq!(d.remove[0].replica, 1);
}

#[test]
fn same_slice_with_other_definition_or_ports_is_replaced() {
    let want = vec![desired("web", Kind::Web, 1, 0, 20000)];
    let mut other_def = observed_of(&want[0], RunState::Running);
    other_def.definition = "something else".into();
    assert_eq!(diff(&want, &[other_def]).replace.len(), 1);
    let mut other_port = observed_of(&want[0], RunState::Running);
    other_port.host_ports = BTreeMap::from([(80, 29999)]);
    assert_eq!(diff(&want, &[other_port]).replace.len(), 1);
}

#[test]
fn empty_desired_set_removes_everything_observed() {
    let old = [desired("web", Kind::Web, 1, 0, 20000)];
    let seen: Vec<_> = old
        .iter()
        .map(|d| observed_of(d, RunState::Running))
        .collect();
    let d = diff(&[], &seen);
    assert_eq!(d.remove.len(), 1);
}

#[test]
fn duplicate_claim_on_a_slice_is_removed() {
    let want = vec![desired("web", Kind::Web, 1, 0, 20000)];
    let a = observed_of(&want[0], RunState::Running);
    let mut b = a.clone();
    b.id = "other".into();
    let d = diff(&want, &[a, b]);
    assert_eq!(d.keep.len(), 1);
    assert_eq!(d.remove.len(), 1);
    assert_eq!(d.remove[0].id, "other");
}

#[test]
fn current_state_reads_highest_revision_with_placements() {
    let old = desired("web", Kind::Web, 1, 0, 20000);
    let new0 = desired("web", Kind::Web, 2, 0, 20004);
    let new1 = desired("web", Kind::Web, 2, 1, 20005);
    let seen: Vec<_> = [&old, &new0, &new1]
        .iter()
        .map(|d| observed_of(d, RunState::Running))
        .collect();
    let state = current_state("s", &ServerId::local(), &seen);
    let web = &state.nodes["web"];
    assert_eq!(web.revision, 2);
    assert_eq!(web.definition, "def-web-2");
    assert_eq!(web.replicas.len(), 2);
    assert_eq!(
        web.replicas[1].placement,
        new1.placement.clone().expect("placed")
    );
}
