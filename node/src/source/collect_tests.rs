use super::*;

fn h(n: u8) -> SourceHash {
    SourceHash::of(&[n])
}

const OLD: Duration = Duration::from_secs(2 * 3600);
const NEW: Duration = Duration::from_secs(60);

#[test]
fn each_stack_keeps_its_current_and_previous_revision_and_old_unnamed_sources_go() {
    // a went 1 -> 2 -> 3 (this server saw 1 and 2 as current before), b is at 4.
    let i = Inputs {
        named: BTreeMap::from([("a".into(), vec![h(3)]), ("b".into(), vec![h(4)])]),
        history: BTreeMap::from([("a".into(), vec![h(1), h(2)])]),
        sources: (1..=6).map(|n| (h(n), OLD)).collect(),
        ..Default::default()
    };
    let c = plan(&i);
    assert_eq!(c.history["a"], vec![h(2), h(3)], "current and previous");
    assert_eq!(c.history["b"], vec![h(4)]);
    let mut gone = c.sources.clone();
    gone.sort();
    let mut want = vec![h(1), h(5), h(6)];
    want.sort();
    assert_eq!(gone, want);
}

#[test]
fn a_young_source_stays_unnamed_for_a_deploy_in_flight_and_a_rollout_keeps_its_previous() {
    let i = Inputs {
        // b rolls out 5 over 4: the state names both.
        named: BTreeMap::from([("b".into(), vec![h(5), h(4)])]),
        sources: vec![(h(4), OLD), (h(5), OLD), (h(6), NEW), (h(7), OLD)],
        ..Default::default()
    };
    let c = plan(&i);
    assert_eq!(
        c.sources,
        vec![h(7)],
        "6 is young: a deploy not committed yet"
    );
}

#[test]
fn build_dirs_go_by_their_stacks_kept_revisions_and_unpack_trees_from_a_crash_or_when_old() {
    let i = Inputs {
        named: BTreeMap::from([("a".into(), vec![h(2)])]),
        history: BTreeMap::from([("a".into(), vec![h(1)])]),
        build_dirs: vec![
            ("a".into(), h(1).as_str().into(), OLD),
            ("a".into(), h(2).as_str().into(), OLD),
            ("a".into(), h(3).as_str().into(), OLD),
            ("a".into(), h(4).as_str().into(), NEW),
            // b's build of a's source: b does not run it.
            ("b".into(), h(2).as_str().into(), OLD),
        ],
        unpacks: vec![(".unpack-x".into(), NEW), (".unpack-y".into(), OLD)],
        uptime: Duration::from_secs(3 * 3600),
        ..Default::default()
    };
    let c = plan(&i);
    assert_eq!(
        c.build_dirs,
        vec![
            ("a".to_owned(), h(3).as_str().to_owned()),
            ("b".to_owned(), h(2).as_str().to_owned())
        ]
    );
    assert_eq!(c.unpacks, vec![".unpack-y".to_owned()]);
    let just_started = plan(&Inputs {
        uptime: Duration::from_secs(1),
        ..i
    });
    assert_eq!(
        just_started.unpacks,
        vec![".unpack-x", ".unpack-y"],
        "both older than this process: a crash left them"
    );
}

#[test]
fn a_redeploy_of_an_older_source_moves_it_to_current_without_growing_the_history() {
    let i = Inputs {
        named: BTreeMap::from([("a".into(), vec![h(1)])]),
        history: BTreeMap::from([("a".into(), vec![h(1), h(2)])]),
        ..Default::default()
    };
    assert_eq!(plan(&i).history["a"], vec![h(2), h(1)]);
}

/// Set a path's mtime `ago` in the past.
fn age_by(path: &Path, ago: Duration) {
    let t = SystemTime::now() - ago;
    std::fs::File::options()
        .write(path.is_file())
        .read(true)
        .open(path)
        .and_then(|f| f.set_modified(t))
        .expect("set mtime");
}

#[test]
fn collect_removes_old_sources_build_dirs_and_unpack_trees_on_a_real_disk() {
    let data = tempfile::tempdir().expect("tmp");
    let store = SourceStore::open(data.path()).expect("store");
    for n in 1..=4 {
        store.put(&h(n), &[n]).expect("put");
        age_by(&store.path(&h(n)), OLD);
    }
    let stacks = data.path().join("stacks");
    std::fs::create_dir_all(stacks.join(".unpack-abc/web")).expect("mkdir");
    age_by(&stacks.join(".unpack-abc"), NEW);
    // a at 1, then 2: the history keeps both; then 3: 1 goes, 2 stays (the previous).
    let first = collect(
        data.path(),
        &store,
        BTreeMap::from([("a".into(), vec![h(1)])]),
        Duration::ZERO,
    );
    assert_eq!(first.unpacks, 1, "older than the process: a crash's");
    assert!(!stacks.join(".unpack-abc").exists());
    assert_eq!(
        first.sources, 3,
        "2, 3 and 4 are named by nothing: {first:?}"
    );
    // 2 committed long ago; 3 pushed and unpacked just now (its deploy is in flight).
    for n in 2..=4 {
        store.put(&h(n), &[n]).expect("put again");
        if n != 3 {
            age_by(&store.path(&h(n)), OLD);
        }
    }
    for n in 1..=3 {
        let d = stacks.join("a/build").join(h(n).as_str());
        std::fs::create_dir_all(d.join("web")).expect("mkdir");
        std::fs::write(d.join("web/Dockerfile"), "FROM scratch\n").expect("write");
        if n != 3 {
            age_by(&d, OLD);
        }
    }
    let young = stacks.join(".unpack-young");
    std::fs::create_dir_all(&young).expect("mkdir");
    collect(
        data.path(),
        &store,
        BTreeMap::from([("a".into(), vec![h(2)])]),
        Duration::from_secs(600),
    );
    let third = collect(
        data.path(),
        &store,
        BTreeMap::from([("a".into(), vec![h(3)])]),
        Duration::from_secs(600),
    );
    assert_eq!(store.list().expect("list"), {
        let mut v = vec![h(2), h(3)];
        v.sort();
        v
    });
    assert_eq!((third.build_dirs, third.sources), (1, 1), "1's: {third:?}");
    assert!(young.is_dir(), "a young unpack tree is a deploy in flight");
    assert!(!stacks.join("a/build").join(h(1).as_str()).exists());
    assert!(stacks.join("a/build").join(h(2).as_str()).is_dir());
    assert!(stacks.join("a/build").join(h(3).as_str()).is_dir());
    let saved: History =
        serde_json::from_slice(&std::fs::read(stacks.join(".history.json")).expect("history"))
            .expect("json");
    assert_eq!(saved["a"], vec![h(2), h(3)]);
}

#[test]
fn a_deploy_is_refused_below_the_free_space_threshold_saying_why() {
    let p = Path::new("/var/lib/quarry");
    assert!(refuse_below(2 << 30, 1 << 30, p).is_ok());
    let e = refuse_below(100 << 20, 1 << 30, p).expect_err("too little");
    assert!(
        e.contains("100M free, less than the 1G") && e.contains("min_free_disk"),
        "{e}"
    );
    let here = tempfile::tempdir().expect("tmp");
    assert!(free_bytes(here.path()).expect("statvfs") > 0);
    assert!(check_free(here.path(), 1 << 60).is_err());
    assert!(check_free(here.path(), 0).is_ok());
}
