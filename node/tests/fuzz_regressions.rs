//! The fuzz targets' regression cases (issue 18): every seed and every input kept under
//! `node/fuzz/regressions/TARGET/` (crashes the fuzz loop found, and hand-written cases) runs
//! through its target without a panic. The first seed of each target is a valid input and
//! must be accepted, so a target that stopped reaching its decoder fails here.

#[path = "../fuzz/targets.rs"]
mod targets;

use std::path::Path;

use targets::Outcome;

#[test]
fn every_kept_input_runs_without_a_panic_and_each_targets_first_seed_is_accepted() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/regressions");
    let mut failures = Vec::new();
    let mut replayed = 0;
    for t in targets::all() {
        let seeds = (t.seeds)();
        match std::panic::catch_unwind(|| (t.run)(&seeds[0])) {
            Ok(Outcome::Accepted) => {}
            Ok(o) => failures.push(format!("{}: the first seed is {o:?}, not accepted", t.name)),
            Err(_) => failures.push(format!("{}: the first seed panics", t.name)),
        }
        let mut inputs: Vec<(String, Vec<u8>)> = seeds
            .iter()
            .enumerate()
            .map(|(i, s)| (format!("seed {i}"), s.clone()))
            .collect();
        if let Ok(dir) = std::fs::read_dir(root.join(t.name)) {
            for e in dir {
                let p = e.expect("dir entry").path();
                let bytes = std::fs::read(&p).expect("read a kept input");
                inputs.push((p.display().to_string(), bytes));
            }
        }
        for (name, input) in inputs {
            replayed += 1;
            if std::panic::catch_unwind(|| (t.run)(&input)).is_err() {
                failures.push(format!("{}: {name} panics", t.name));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert!(replayed >= 11, "only {replayed} inputs replayed");
}
