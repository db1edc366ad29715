//! The layering of quarryd's modules, checked over the source files: the cluster (Raft state,
//! membership) knows nothing of the HTTP API or of stacks, and the RPC layer nothing of the
//! cluster. A path to a forbidden module anywhere in a file's code (a `use`, a qualified
//! path, a `super::super::...` climb) fails the test with the file and line; comments and
//! doc comments may name anything.

use std::path::{Path, PathBuf};

const SRC: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/src");

/// Every `.rs` file under `dir`, sorted.
fn sources(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_owned()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).unwrap_or_else(|e| panic!("{}: {e}", d.display())) {
            let p = e.expect("dir entry").path();
            if p.is_dir() {
                todo.push(p);
            } else if p.extension().is_some_and(|x| x == "rs") {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

/// The code of one line: without its `//` comment (outside string literals), empty for a
/// line inside a block comment (`in_block` carries that across lines).
fn code_of(line: &str, in_block: &mut bool) -> String {
    let mut out = String::new();
    let b = line.as_bytes();
    let (mut i, mut in_str) = (0, false);
    while i < b.len() {
        if *in_block {
            if b[i..].starts_with(b"*/") {
                *in_block = false;
                i += 2;
            } else {
                i += 1;
            }
            continue;
        }
        if in_str {
            if b[i] == b'\\' {
                i += 2;
                continue;
            }
            if b[i] == b'"' {
                in_str = false;
            }
            i += 1;
            continue;
        }
        if b[i..].starts_with(b"//") {
            break;
        }
        if b[i..].starts_with(b"/*") {
            *in_block = true;
            i += 2;
            continue;
        }
        if b[i] == b'"' {
            in_str = true;
        } else {
            out.push(b[i] as char);
        }
        i += 1;
    }
    out
}

/// The lines (1-based, with their code) of `text` that name one of `forbidden` (top-level
/// modules of the crate) by a `crate::` path or by climbing out of `depth` levels of
/// `super::`.
fn violations(text: &str, depth: usize, forbidden: &[&str]) -> Vec<(usize, String)> {
    let mut in_block = false;
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let code: String = code_of(line, &mut in_block)
            .chars()
            .filter(|c| !c.is_whitespace())
            .collect();
        let climb = "super::".repeat(depth + 1);
        let hit = forbidden.iter().any(|m| {
            let names = |prefix: &str| {
                code.match_indices(prefix).any(|(i, _)| {
                    let rest = &code[i + prefix.len()..];
                    // `crate::api::x`, `crate::api;`, `crate::{api, ...}` and `crate::api}`
                    rest.strip_prefix(m).is_some_and(|r| {
                        r.is_empty() || !r.starts_with(|c: char| c.is_alphanumeric() || c == '_')
                    }) || (rest.starts_with('{') && group_names(rest, m))
                })
            };
            names("crate::") || names(&climb)
        });
        if hit {
            out.push((n + 1, line.trim().to_owned()));
        }
    }
    out
}

/// Whether a `{a, b::c, ...}` group (at the start of `rest`) names module `m` at its top.
fn group_names(rest: &str, m: &str) -> bool {
    let inner = rest[1..].split('}').next().unwrap_or("");
    inner
        .split(',')
        .any(|p| p == m || p.starts_with(&format!("{m}::")) || p.starts_with(&format!("{m}{{")))
}

/// Every violation under `node/src/DIR` of the modules `forbidden`, as `file:line: code`.
fn check(dir: &str, forbidden: &[&str]) -> Vec<String> {
    let root = Path::new(SRC).join(dir);
    let files = sources(&root);
    assert!(!files.is_empty(), "no sources under {}", root.display());
    let mut out = Vec::new();
    for f in files {
        let text = std::fs::read_to_string(&f).expect("read source");
        // A file `dir/x.rs` is a module two levels down (`super::super::` is the crate
        // root); `dir/mod.rs` one.
        let rel = f.strip_prefix(SRC).expect("under src");
        let depth = rel.components().count()
            - 1
            - usize::from(f.file_name().is_some_and(|n| n == "mod.rs"));
        for (n, line) in violations(&text, depth, forbidden) {
            out.push(format!("{}:{n}: {line}", rel.display()));
        }
    }
    out
}

#[test]
fn the_cluster_imports_neither_the_api_nor_launch_and_rpc_does_not_import_the_cluster() {
    let cluster = check("cluster", &["api", "launch"]);
    assert!(
        cluster.is_empty(),
        "node/src/cluster/ must not import from api/ or launch/:\n{}",
        cluster.join("\n")
    );
    let rpc = check("rpc", &["cluster"]);
    assert!(
        rpc.is_empty(),
        "node/src/rpc/ must not import from cluster/:\n{}",
        rpc.join("\n")
    );
}

#[test]
fn the_check_sees_uses_paths_groups_and_climbs_but_not_comments_or_strings() {
    let bad = [
        "use crate::api::Status;",
        "use crate::api;",
        "use crate::{api::Status, types};",
        "use crate::{types, launch};",
        "    let x = crate::launch::compile(a);",
        "use super::super::api::Status;",
        "fn f() -> crate :: api :: Status { todo!() }",
    ];
    for line in bad {
        assert_eq!(
            violations(line, 1, &["api", "launch"]).len(),
            1,
            "{line:?} is a violation"
        );
    }
    let fine = [
        "//! computed by [`crate::launch`] and only checked here",
        "/// see [`crate::api::Status`]",
        "let s = \"crate::api::x\";",
        "use crate::apiary::Bees;",
        "use crate::launcher;",
        "use super::api::Status;",
        "/* crate::api::Status */ use crate::types;",
    ];
    for line in fine {
        assert!(
            violations(line, 1, &["api", "launch"]).is_empty(),
            "{line:?} is fine"
        );
    }
    assert_eq!(
        violations(
            "/*\nuse crate::api::X;\n*/\nuse crate::launch::Y;",
            1,
            &["api", "launch"]
        )
        .iter()
        .map(|(n, _)| *n)
        .collect::<Vec<_>>(),
        vec![4],
        "a block comment hides its lines, not the next"
    );
}
