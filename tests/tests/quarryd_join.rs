//! `quarryd init` on h1 and `quarryd join` from h2, over the lab bridge: each host its own
//! network namespace, address and files. (Raft membership comes later: this checks the join
//! exchange, the files it leaves and the refusals.)

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use quarry_tests::{Host, Lab, ProcessSpec};

/// The quarryd binary, built into this workspace's target directory (this test crate cannot
/// name another package's binary, so it asks cargo, which is quick when it is up to date).
fn quarryd() -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    let profile_dir = exe
        .parent()
        .and_then(|d| d.parent())
        .expect("target/<profile>");
    let target = profile_dir.parent().expect("target dir");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let manifest = concat!(env!("CARGO_MANIFEST_DIR"), "/../Cargo.toml");
    let mut cmd = Command::new(cargo);
    cmd.args([
        "build",
        "-q",
        "-p",
        "quarry-node",
        "--bin",
        "quarryd",
        "--manifest-path",
        manifest,
    ])
    .arg("--target-dir")
    .arg(target);
    if profile_dir.file_name().is_some_and(|n| n == "release") {
        cmd.arg("--release");
    }
    let out = cmd.output().expect("run cargo");
    assert!(
        out.status.success(),
        "building quarryd failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    profile_dir.join("quarryd")
}

/// quarryd's flags for host `h`: its address, its own directories, no config file.
fn flags(h: &Host) -> Vec<String> {
    let d = h.dir();
    vec![
        "--config".into(),
        h.config_dir().join("quarryd.toml").display().to_string(),
        "--data".into(),
        h.data_dir().display().to_string(),
        "--secrets".into(),
        d.join("secrets").display().to_string(),
        "--socket".into(),
        d.join("api.sock").display().to_string(),
        "--address".into(),
        h.addr().to_string(),
        "--name".into(),
        h.name(),
    ]
}

fn run(h: &Host, bin: &Path, args: &[&str]) -> (bool, String, String) {
    let mut all: Vec<String> = vec![bin.display().to_string()];
    all.extend(flags(h));
    all.extend(args.iter().map(|s| s.to_string()));
    let out = h.exec(&all).expect("exec quarryd");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_server_joins_through_a_member_over_the_lab_bridge() {
    let bin = quarryd();
    let lab = Lab::new(2).expect("lab");
    let (h1, h2) = (lab.host(1), lab.host(2));

    let (ok, out, err) = run(h1, &bin, &["init"]);
    assert!(ok, "init on h1: {out}{err}");
    let token = out
        .lines()
        .map(str::trim)
        .find(|l| l.starts_with("QRY1-"))
        .unwrap_or_else(|| panic!("init printed no token: {out}"))
        .to_owned();

    let mut spec = ProcessSpec::new("quarryd", &bin);
    spec = spec.args(flags(h1)).arg("run");
    h1.spawn(spec).expect("spawn quarryd run on h1");
    h1.wait_for_log("quarryd", "quarryd running", Duration::from_secs(20))
        .unwrap_or_else(|e| panic!("{e}\n{}", lab.logs_tail(30)));

    let member = h1.addr().to_string(); // the default RPC port
    let mut wrong = token.clone();
    let last = if wrong.ends_with('0') { "1" } else { "0" };
    wrong.replace_range(wrong.len() - 1.., last);
    let (ok, out, err) = run(h2, &bin, &["join", &member, "--token", &wrong]);
    assert!(
        !ok && err.contains("wrong join secret"),
        "a wrong secret: {out}{err}"
    );

    let (ok, out, err) = run(h2, &bin, &["join", &member, "--token", &token]);
    assert!(ok, "join from h2: {out}{err}\n{}", lab.logs_tail(30));
    assert!(out.contains("members known: h1, h2"), "{out}");

    // h1 recorded h2, with its lab address.
    let members = std::fs::read_to_string(h1.data_dir().join("members.json")).expect("members");
    // (Read as text: this crate has no JSON parser, and the file is pretty-printed.)
    assert_eq!(members.matches("\"name\":").count(), 2, "{members}");
    let h2_part = members
        .split("\"name\": \"h2\"")
        .nth(1)
        .unwrap_or_else(|| panic!("{members}"));
    assert!(
        h2_part.contains(&format!("\"address\": \"{}\"", h2.addr())),
        "{members}"
    );
    let ca = |h: &Host| std::fs::read_to_string(h.dir().join("secrets/ca.pem")).expect("ca.pem");
    assert_eq!(ca(h1), ca(h2), "h2 holds the cluster CA certificate");
    lab.close().expect("lab cleaned up");
}
