//! What the quarryd lab tests share: the binaries, each host's quarryd flags, and the `quarry`
//! CLI run from the machine against a host's API (over the lab bridge) with JSON answers.

#![allow(dead_code)] // each test binary uses its own part of this module

pub mod burst;
pub mod cluster;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use quarry_tests::{Host, Lab, ProcessSpec};
use serde_json::Value;

/// Build a binary of this workspace into its target directory and return its path (this test
/// crate cannot name another package's binary, so it asks cargo, which is quick when the
/// binary is up to date).
/// Not the variables cargo set for this test (the package's name, manifest dir...): build
/// scripts that watch them (ring's) would rerun, and every build would recompile them.
pub fn without_cargo_env(cmd: &mut Command) {
    for (k, _) in std::env::vars_os() {
        let k = k.to_string_lossy().into_owned();
        if (k.starts_with("CARGO_") && k != "CARGO_HOME") || k == "OUT_DIR" {
            cmd.env_remove(&k);
        }
    }
}

/// The target directory this test binary was built in.
pub fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    exe.parent()
        .and_then(|d| d.parent())
        .and_then(|d| d.parent())
        .expect("target/<profile>/deps")
        .to_path_buf()
}

fn binary(package: &str, bin: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    let profile_dir = exe
        .parent()
        .and_then(|d| d.parent())
        .expect("target/<profile>");
    let target = profile_dir.parent().expect("target dir");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let manifest = concat!(env!("CARGO_MANIFEST_DIR"), "/../Cargo.toml");
    let mut cmd = Command::new(cargo);
    without_cargo_env(&mut cmd);
    cmd.args([
        "build",
        "-q",
        "-p",
        package,
        "--bin",
        bin,
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
        "building {bin} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    profile_dir.join(bin)
}

/// The quarryd binary.
pub fn quarryd() -> PathBuf {
    binary("quarry-node", "quarryd")
}

/// The quarry CLI binary.
pub fn quarry_bin() -> PathBuf {
    binary("quarry-cli", "quarry")
}

/// What every lab server's quarryd.toml holds. The lab's data directories are on the machine's
/// own disk, which a CI machine may have nearly full (292 MB free was seen): the lab asks a
/// deploy for 32 MB free rather than the 1 GB default, so a test checks quarry and not the
/// machine's disk. (The refusal itself is tested in `source::collect`.)
pub const LAB_CONFIG: &str = "min_free_disk = \"32M\"\n";

/// Write host `h`'s quarryd.toml: the lab's settings ([`LAB_CONFIG`]) and then `extra`.
pub fn write_config(h: &Host, extra: &str) {
    let path = h.config_dir().join("quarryd.toml");
    std::fs::write(&path, format!("{LAB_CONFIG}{extra}"))
        .unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}

/// quarryd's flags for host `h`: its address, its own directories, and its quarryd.toml (the
/// lab's settings unless a test wrote one with [`write_config`]).
pub fn flags(h: &Host) -> Vec<String> {
    let d = h.dir();
    if !h.config_dir().join("quarryd.toml").exists() {
        write_config(h, "");
    }
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

/// Run `quarryd ARGS` in host `h`: (success, stdout, stderr).
pub fn quarryd_in(h: &Host, bin: &Path, args: &[&str]) -> (bool, String, String) {
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

/// Start `quarryd run` in host `h` (as process "quarryd") and wait until it serves.
pub fn start(lab: &Lab, h: &Host, bin: &Path) {
    let spec = ProcessSpec::new("quarryd", bin).args(flags(h)).arg("run");
    h.spawn(spec).expect("spawn quarryd run");
    h.wait_for_log("quarryd", "quarryd running", Duration::from_secs(20))
        .unwrap_or_else(|e| panic!("{e}\n{}", lab.logs_tail(30)));
}

/// The join token `quarryd init` printed.
pub fn token_of(init_stdout: &str) -> String {
    init_stdout
        .lines()
        .map(str::trim)
        .find(|l| l.starts_with("QRY1-"))
        .unwrap_or_else(|| panic!("init printed no token: {init_stdout}"))
        .to_owned()
}

/// The admin token, from a host's secrets.
pub fn admin_token(h: &Host) -> String {
    std::fs::read_to_string(h.dir().join("secrets/admin.token"))
        .expect("admin.token")
        .trim()
        .to_owned()
}

/// The `quarry` CLI, run on this machine against hosts' APIs over the lab bridge.
#[derive(Debug, Clone)]
pub struct Cli {
    bin: PathBuf,
    token: String,
}

impl Cli {
    /// The CLI with the cluster's admin token.
    pub fn new(bin: PathBuf, token: String) -> Cli {
        Cli { bin, token }
    }

    /// `quarry ARGS --node http://H:7700` with the token, to spawn (for a run that is timed or
    /// watched while it goes).
    pub fn command(&self, h: &Host, args: &[&str]) -> Command {
        self.command_with(h, args, Some(&self.token))
    }

    fn command_with(&self, h: &Host, args: &[&str], token: Option<&str>) -> Command {
        let mut cmd = Command::new(&self.bin);
        cmd.args(args)
            .arg("--node")
            .arg(format!("http://{}:7700", h.addr()))
            .env_remove("QUARRY_ADDR")
            .env_remove("QUARRY_TOKEN")
            .env("HOME", "/nonexistent-home")
            .env_remove("XDG_CONFIG_HOME");
        if let Some(t) = token {
            cmd.env("QUARRY_TOKEN", t);
        }
        cmd
    }

    /// `quarry ARGS --node http://H:7700` with the token (or `token` = None: without).
    pub fn run_with(&self, h: &Host, args: &[&str], token: Option<&str>) -> Output {
        self.command_with(h, args, token)
            .output()
            .expect("run quarry")
    }

    /// `quarry ARGS` against host `h` with the token.
    pub fn run(&self, h: &Host, args: &[&str]) -> Output {
        self.run_with(h, args, Some(&self.token))
    }

    /// `quarry ARGS --json` against `h`, parsed; `Err` says what went wrong.
    pub fn json(&self, h: &Host, args: &[&str]) -> Result<Value, String> {
        let mut a = args.to_vec();
        a.push("--json");
        let out = self.run(h, &a);
        if !out.status.success() {
            return Err(format!(
                "quarry {} on {}: {}",
                args.join(" "),
                h.name(),
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        serde_json::from_slice(&out.stdout).map_err(|e| format!("{e}"))
    }

    /// `quarry ARGS` against `h`, which must succeed: its stdout.
    pub fn ok(&self, h: &Host, args: &[&str]) -> String {
        let out = self.run(h, args);
        assert!(
            out.status.success(),
            "quarry {} on {}: {}{}",
            args.join(" "),
            h.name(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

/// Names of the servers with this role in a `quarry servers --json` answer.
pub fn with_role(servers: &Value, role: &str) -> Vec<String> {
    servers["servers"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter(|s| s["role"] == role)
                .filter_map(|s| s["name"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// Seconds since `t`, for reports.
pub fn secs(t: Instant) -> f64 {
    (t.elapsed().as_millis() as f64) / 1000.0
}
