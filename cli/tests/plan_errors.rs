//! Every broken quarry.yml is refused by `quarry plan` with the fault's line, column and
//! message, and a non-zero exit; no plan is printed. Fixtures: `tests/fixtures/broken/*/`.

use std::path::PathBuf;
use std::process::Command;

use serde_json::Value;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/broken")
        .join(name)
}

/// Run `quarry plan --json` on a fixture; returns (exit success, parsed stdout).
fn plan_json(dir: &PathBuf) -> (bool, Value) {
    let out = Command::new(env!("CARGO_BIN_EXE_quarry"))
        .arg("plan")
        .arg(dir)
        .arg("--json")
        .output()
        .expect("run quarry");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let v: Value = serde_json::from_str(&stdout).unwrap_or_else(|e| {
        panic!(
            "quarry plan --json printed no JSON ({e}): {stdout}\nstderr: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out.status.success(), v)
}

/// (line, column, a part of the message) of each expected error.
fn assert_errors(name: &str, want: &[(u64, u64, &str)]) {
    let (ok, v) = plan_json(&fixture(name));
    assert!(!ok, "{name}: quarry plan must exit non-zero");
    assert!(
        v.get("plan").is_none(),
        "{name}: no plan may be printed for a broken file"
    );
    let errors = v["errors"]
        .as_array()
        .unwrap_or_else(|| panic!("{name}: no errors in {v}"));
    let got: Vec<(u64, u64, String)> = errors
        .iter()
        .map(|e| {
            (
                e["line"].as_u64().unwrap_or(0),
                e["col"].as_u64().unwrap_or(0),
                e["message"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect();
    assert_eq!(got.len(), want.len(), "{name}: want {want:?}, got {got:?}");
    for ((gl, gc, gm), (wl, wc, wm)) in got.iter().zip(want) {
        assert_eq!((gl, gc), (wl, wc), "{name}: position of {gm:?}");
        assert!(gm.contains(wm), "{name}: message {gm:?} should say {wm:?}");
    }
    for e in errors {
        assert!(
            e["hint"].as_str().is_some_and(|h| !h.is_empty()),
            "{name}: every error has a hint: {e}"
        );
        assert!(
            e["file"]
                .as_str()
                .is_some_and(|f| f.ends_with("quarry.yml")),
            "{name}: {e}"
        );
    }
}

#[test]
fn an_unknown_key_is_refused_with_a_suggestion() {
    assert_errors(
        "unknown_key",
        &[(8, 5, "unknown key \"sclae\" in node \"web\"")],
    );
}

#[test]
fn a_value_of_the_wrong_type_is_refused() {
    assert_errors(
        "wrong_type",
        &[(8, 12, "scale must be a whole number, not a string")],
    );
}

#[test]
fn a_duplicate_node_is_refused_at_its_second_definition() {
    assert_errors(
        "duplicate_node",
        &[(6, 3, "duplicate node \"web\" (first at line 3, column 3)")],
    );
}

#[test]
fn a_web_node_needs_domains() {
    assert_errors(
        "web_without_domains",
        &[(3, 3, "web node \"web\" has no domains")],
    );
}

#[test]
fn a_web_node_needs_ports() {
    assert_errors(
        "web_without_ports",
        &[(3, 3, "web node \"web\" has no ports")],
    );
}

#[test]
fn a_domain_listed_twice_in_another_case_is_refused_at_the_second() {
    assert_errors(
        "domain_twice",
        &[
            (7, 15, "domain \"Shop.test\" is routed as \"shop.test\""),
            (12, 32, "domain \"shop.TEST\" is routed as \"shop.test\""),
            (
                12,
                32,
                "domain \"shop.test\" is listed twice: node \"web\" has it at line 7, column 15",
            ),
        ],
    );
}

#[test]
fn scale_zero_is_refused() {
    assert_errors("scale_zero", &[(8, 12, "scale must be at least 1")]);
}

#[test]
fn a_bad_memory_unit_is_refused() {
    assert_errors("bad_memory_unit", &[(6, 13, "unknown size unit \"X\"")]);
}

#[test]
fn memory_above_any_server_is_refused() {
    assert_errors(
        "memory_above_any_server",
        &[(7, 13, "memory 4096G is more than any server has")],
    );
}

#[test]
fn a_reference_to_an_unknown_service_is_refused_at_the_reference() {
    assert_errors(
        "unknown_service_reference",
        &[(11, 33, "unknown service \"dbb\" in env DATABASE_URL")],
    );
}

#[test]
fn a_missing_build_directory_is_refused() {
    assert_errors(
        "build_dir_missing",
        &[(5, 12, "build directory \"./app\" does not exist")],
    );
}

#[test]
fn image_and_build_together_are_refused() {
    assert_errors("image_and_build", &[(6, 5, "has both `image` and `build`")]);
}

#[test]
fn invalid_yaml_is_refused_where_the_parser_stopped() {
    assert_errors(
        "invalid_yaml",
        &[(6, 12, "invalid YAML: did not find expected ',' or ']'")],
    );
}

#[test]
fn every_fault_of_a_file_is_reported_in_one_run() {
    assert_errors(
        "three_faults",
        &[
            (7, 3, "web node \"web\" has no domains"),
            (11, 12, "scale must be at least 1"),
            (16, 15, "unknown service \"cahce\" in env CACHE"),
        ],
    );
}

#[test]
fn the_people_output_names_file_line_and_column() {
    let out = Command::new(env!("CARGO_BIN_EXE_quarry"))
        .args(["plan"])
        .arg(fixture("unknown_key"))
        .output()
        .expect("run quarry");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("quarry.yml:8:5: error: unknown key \"sclae\""),
        "{err}"
    );
    assert!(err.contains("hint: did you mean \"scale\"?"), "{err}");
    assert!(out.stdout.is_empty(), "nothing on stdout for a broken file");
}

#[test]
fn the_example_plans_cleanly() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples/guestbook");
    let out = Command::new(env!("CARGO_BIN_EXE_quarry"))
        .arg("plan")
        .arg(&dir)
        .args(["--json", "--fresh"])
        .output()
        .expect("run quarry");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    let ops: Vec<&str> = v["plan"]["instructions"]
        .as_array()
        .expect("instructions")
        .iter()
        .map(|i| i["op"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(ops, ["ENSURE", "DEPLOY", "DEPLOY", "ROUTE"]);
}

#[test]
fn a_directory_without_quarry_yml_says_what_to_do() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = Command::new(env!("CARGO_BIN_EXE_quarry"))
        .arg("plan")
        .arg(dir.path())
        .output()
        .expect("run quarry");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no quarry.yml in"), "{err}");
}

/// `quarry plan` and `quarry deploy` on `text`: (exit code, stderr).
fn plan_and_deploy(text: &str) -> Vec<(Option<i32>, String)> {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("quarry.yml"), text).expect("write");
    let plan = Command::new(env!("CARGO_BIN_EXE_quarry"))
        .arg("plan")
        .arg(dir.path())
        .output()
        .expect("run quarry");
    // A deploy reads the file before it contacts anyone: nothing listens on port 9.
    let deploy = Command::new(env!("CARGO_BIN_EXE_quarry"))
        .args(["deploy", "--node", "http://127.0.0.1:9"])
        .arg(dir.path())
        .env("QUARRY_TOKEN", "unused")
        .output()
        .expect("run quarry");
    [plan, deploy]
        .into_iter()
        .map(|o| {
            (
                o.status.code(),
                String::from_utf8_lossy(&o.stderr).into_owned(),
            )
        })
        .collect()
}

#[test]
fn a_deeply_nested_file_is_a_fault_not_an_abort() {
    // The file: 200 KB of nested block sequences aborted both commands (exit 134).
    for text in [
        format!("{}x\n", "- ".repeat(100_000)),
        format!("{}{}\n", "[".repeat(100_000), "]".repeat(100_000)),
    ] {
        for (code, err) in plan_and_deploy(&text) {
            assert_eq!(code, Some(1), "{err}");
            assert!(err.contains("quarry.yml:1:"), "{err}");
            assert!(err.contains("nested more than 64 deep"), "{err}");
        }
    }
}

#[test]
fn a_file_above_one_mib_is_one_fault_at_1_1() {
    let text = format!("name: big\n# {}\n", "x".repeat(10 << 20));
    for (code, err) in plan_and_deploy(&text) {
        assert_eq!(code, Some(1), "{err}");
        assert!(
            err.contains(&format!(
                "quarry.yml:1:1: error: the file is {} bytes, above the limit of 1 MiB",
                text.len()
            )),
            "{err}"
        );
    }
}
