//! How large a quarry.yml and an env may be.
//!
//! A quarry.yml reaches the reader from the user's disk (`quarry plan`, `quarry deploy`) and, on
//! the leader, from a pushed source: it is untrusted input. Each limit is checked *before* the
//! work it bounds: the file's size before it is read into memory (and again on the text, for a
//! caller that already holds it), the nesting depth on yaml-rust2's event stream (which does not
//! recurse) before serde_yaml or anything else builds a tree of it. Every refusal is an ordinary
//! positioned fault.
//!
//! | limit | default | checked |
//! | --- | --- | --- |
//! | [`MAX_FILE_BYTES`] | 1 MiB | before reading the file; a fault at 1:1 naming the size. Also the document with its aliases expanded, on the event stream: a fault at the alias that passes it |
//! | [`MAX_DEPTH`] | 64 | on the event stream, before any tree is built; a fault where the 65th level opens |
//! | [`MAX_ENV_VALUE_BYTES`] | 64 KiB | each env value: in quarry.yml (at the value) and in `quarry env set` (naming the key) |
//! | [`MAX_ENV_BYTES`] | 1 MiB | a whole env (keys and values): a stack's or the global one, after a change |

use std::collections::BTreeMap;

use super::positions::TooDeep;
use super::{Diagnostic, Severity};

/// The largest quarry.yml read, in bytes (1 MiB). A real one is a few KB.
pub const MAX_FILE_BYTES: usize = 1 << 20;

/// The deepest nesting of lists and mappings in a quarry.yml (64). The format needs 5
/// (`nodes.web.health.http`); the limit bounds every recursive walk of the document, so a
/// deeply nested file is a fault, never a stack overflow.
pub const MAX_DEPTH: usize = 64;

/// The largest env value, in bytes (64 KiB).
pub const MAX_ENV_VALUE_BYTES: usize = 64 << 10;

/// The largest env in all (every key and value, in bytes; 1 MiB): a stack's, the global one.
pub const MAX_ENV_BYTES: usize = 1 << 20;

/// A byte count as people read it: `1 MiB (1048576 bytes)`.
pub fn bytes(n: usize) -> String {
    let unit = if n >= 1 << 20 && n % (1 << 20) == 0 {
        format!("{} MiB", n >> 20)
    } else if n >= 1 << 10 && n % (1 << 10) == 0 {
        format!("{} KiB", n >> 10)
    } else {
        return format!("{n} bytes");
    };
    format!("{unit} ({n} bytes)")
}

/// The fault of a quarry.yml of `size` bytes, when above [`MAX_FILE_BYTES`]: at 1:1, naming
/// the size and the limit.
pub fn check_text(file: &str, size: usize) -> Result<(), Diagnostic> {
    if size <= MAX_FILE_BYTES {
        return Ok(());
    }
    Err(too_large(file, size))
}

/// The fault of a quarry.yml of `size` bytes, above [`MAX_FILE_BYTES`].
pub fn too_large(file: &str, size: usize) -> Diagnostic {
    Diagnostic {
        severity: Severity::Error,
        file: file.to_owned(),
        line: 1,
        col: 1,
        message: format!(
            "the file is {size} bytes, above the limit of {} for a quarry.yml",
            bytes(MAX_FILE_BYTES)
        ),
        hint: Some(
            "a quarry.yml describes a stack in a few KB: is this the right file? keep data in \
             the build directories"
                .to_owned(),
        ),
    }
}

/// The fault of a document nested deeper than [`MAX_DEPTH`], or larger than
/// [`MAX_FILE_BYTES`] once its aliases are expanded.
pub fn too_deep(file: &str, deep: TooDeep) -> Diagnostic {
    let (message, hint) = match deep.expanded {
        None => (
            format!(
                "lists and mappings are nested more than {MAX_DEPTH} deep here (the limit); the \
                 reader stopped"
            ),
            "a stack nests 5 levels at most (nodes.NAME.health.http): check the indentation \
             and the brackets above this point",
        ),
        Some(size) => (
            format!(
                "with its aliases expanded the document is {size} bytes or more here, above the \
                 limit of {} for a quarry.yml; the reader stopped",
                bytes(MAX_FILE_BYTES)
            ),
            "an alias (*name) copies its anchor's whole value: alias small values, or write \
             them out",
        ),
    };
    Diagnostic {
        severity: Severity::Error,
        file: file.to_owned(),
        line: deep.at.line,
        col: deep.at.col,
        message,
        hint: Some(hint.to_owned()),
    }
}

/// Why an env is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvTooLarge {
    /// One value is above [`MAX_ENV_VALUE_BYTES`].
    #[error(
        "env {key}: the value is {size} bytes, above the limit of {}; keep large data in a file or a volume, not in env",
        bytes(MAX_ENV_VALUE_BYTES)
    )]
    Value {
        /// The variable.
        key: String,
        /// Its value's size in bytes.
        size: usize,
    },
    /// The whole env is above [`MAX_ENV_BYTES`].
    #[error(
        "{what} would be {size} bytes in all (keys and values), above the limit of {}; the largest is {largest} ({largest_size} bytes)",
        bytes(MAX_ENV_BYTES)
    )]
    Total {
        /// Whose env ("the global env", "stack shop's env").
        what: String,
        /// Its size in bytes.
        size: usize,
        /// Its largest variable.
        largest: String,
        /// That variable's size (key and value).
        largest_size: usize,
    },
}

/// Check one value against [`MAX_ENV_VALUE_BYTES`].
pub fn check_env_value(key: &str, value: &str) -> Result<(), EnvTooLarge> {
    if value.len() > MAX_ENV_VALUE_BYTES {
        return Err(EnvTooLarge::Value {
            key: key.to_owned(),
            size: value.len(),
        });
    }
    Ok(())
}

/// Check a whole env: each value, then the total against [`MAX_ENV_BYTES`]. `what` names it in
/// the refusal.
pub fn check_env(what: &str, env: &BTreeMap<String, String>) -> Result<(), EnvTooLarge> {
    for (k, v) in env {
        check_env_value(k, v)?;
    }
    let size: usize = env.iter().map(|(k, v)| k.len() + v.len()).sum();
    if size > MAX_ENV_BYTES {
        let (largest, largest_size) = env
            .iter()
            .map(|(k, v)| (k.clone(), k.len() + v.len()))
            .max_by_key(|(_, n)| *n)
            .unwrap_or_default();
        return Err(EnvTooLarge::Total {
            what: what.to_owned(),
            size,
            largest,
            largest_size,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::{parse, Diagnostics, Facts};

    struct NoFacts;
    impl Facts for NoFacts {
        fn build_digest(&self, _dir: &str) -> Result<String, String> {
            Err("does not exist".to_owned())
        }
        fn max_server_memory(&self) -> Option<u64> {
            None
        }
    }

    /// Run `f` on a thread with a 256 KiB stack (a stack overflow aborts the whole test binary,
    /// so "never aborts" is this test finishing).
    fn on_small_stack<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
        on_stack(256 << 10, f)
    }

    fn on_stack<T: Send + 'static>(size: usize, f: impl FnOnce() -> T + Send + 'static) -> T {
        std::thread::Builder::new()
            .stack_size(size)
            .spawn(f)
            .expect("spawn")
            .join()
            .expect("the reader panicked")
    }

    fn faults(text: String) -> Diagnostics {
        faults_on(256 << 10, text)
    }

    fn faults_on(stack: usize, text: String) -> Diagnostics {
        on_stack(stack, move || parse("quarry.yml", &text, "deep", &NoFacts)).expect_err("refused")
    }

    fn nested(style: &str, depth: usize) -> String {
        match style {
            // Nested block sequences, compact: `- - - x` (the 200 KB file).
            "block" => format!("{}x\n", "- ".repeat(depth)),
            // Nested block mappings, one space of indentation a level (100,000 levels would be
            // 5 GB: that one is the flow style's).
            "block-map" => (0..depth)
                .map(|i| format!("{}a:\n", " ".repeat(i)))
                .collect(),
            "flow" => format!("{}x{}\n", "[".repeat(depth), "]".repeat(depth)),
            "flow-map" => format!("{}x{}\n", "{a: ".repeat(depth), "}".repeat(depth)),
            _ => unreachable!("no style {style}"),
        }
    }

    #[test]
    fn deep_nesting_is_a_positioned_fault_never_an_abort_on_a_256_kib_stack() {
        for style in ["block", "block-map", "flow", "flow-map"] {
            for depth in [10, 1_000, 100_000] {
                if style == "block-map" && depth == 100_000 {
                    continue;
                }
                let d = faults(nested(style, depth));
                let first = &d.0[0];
                assert!(first.line >= 1 && first.col >= 1, "{style} {depth}: {d}");
                if depth > MAX_DEPTH {
                    assert_eq!(d.0.len(), 1, "{style} {depth}: {d}");
                    assert!(
                        first.message.contains("nested more than 64 deep"),
                        "{style} {depth}: {d}"
                    );
                    // Where the 65th level opens.
                    let line = if style == "block-map" {
                        MAX_DEPTH + 1
                    } else {
                        1
                    };
                    assert_eq!(first.line, line, "{style} {depth}: {d}");
                } else {
                    // Shallow: read whole, refused for its shape (not a stack), positioned.
                    assert!(!first.message.contains("nested"), "{style} {depth}: {d}");
                }
            }
        }
    }

    #[test]
    fn nesting_at_the_limit_is_read_and_one_more_is_refused() {
        // The deepest document allowed goes through serde_yaml, which recurses once per level:
        // 64 nested mappings need about 300 KiB of stack in a debug build (far less in
        // release); every caller reads on a thread of 2 MiB or more.
        for style in ["block", "flow", "flow-map"] {
            let d = faults_on(1 << 20, nested(style, MAX_DEPTH));
            assert!(!d.to_string().contains("nested more than"), "{style}: {d}");
            let d = faults(nested(style, MAX_DEPTH + 1));
            assert!(
                d.to_string().contains("nested more than 64 deep"),
                "{style}: {d}"
            );
        }
        // Where the 65th level opens: column 2 * 64 + 1 of `- - - ...`.
        let d = faults(nested("block", MAX_DEPTH + 1));
        assert_eq!((d.0[0].line, d.0[0].col), (1, 2 * MAX_DEPTH + 1), "{d}");
    }

    #[test]
    fn an_alias_counts_as_deep_as_what_it_names() {
        // 40 levels anchored, then used 40 levels down: 80 levels once serde_yaml expands it.
        let text = format!(
            "a: &deep {}x{}\nb: {}*deep{}\n",
            "[".repeat(40),
            "]".repeat(40),
            "[".repeat(40),
            "]".repeat(40)
        );
        let d = faults(text);
        assert!(d.to_string().contains("nested more than 64 deep"), "{d}");
        assert_eq!((d.0[0].line, d.0[0].col), (2, 44), "{d}");
        // Used near the top, it is within the limit.
        let text = format!(
            "a: &deep {}x{}\nb: [*deep]\n",
            "[".repeat(40),
            "]".repeat(40)
        );
        assert!(!faults(text).to_string().contains("nested"));
    }

    #[test]
    fn aliases_that_expand_past_the_file_limit_are_one_fault_at_the_alias() {
        // 87 KB of text: one 60 KB value and 2,000 aliases of it, 120 MB once expanded (an env
        // of 120 MB, and a leader holding it, before this limit). The 18th alias passes 1 MiB.
        let mut text = format!("name: al\nenv:\n  A0: &big \"{}\"\n", "x".repeat(60_000));
        for i in 1..2000 {
            text.push_str(&format!("  A{i}: *big\n"));
        }
        text.push_str("nodes:\n  web: {kind: web, image: x}\n");
        let d = faults(text);
        assert_eq!(d.0.len(), 1, "{d}");
        let f = &d.0[0];
        assert!(
            f.message.contains("aliases expanded") && f.message.contains("1 MiB"),
            "{d}"
        );
        assert_eq!((f.line, f.col), (3 + 17, 8), "{d}");
        // An anchored collection counts whole at each alias too.
        let mut text = format!(
            "x: &m {{a: \"{}\", b: \"{}\"}}\ny: [",
            "y".repeat(30_000),
            "z".repeat(30_000)
        );
        text.push_str(&vec!["*m"; 40].join(", "));
        text.push_str("]\n");
        assert!(faults(text).to_string().contains("aliases expanded"));
        // A few aliases of small values are read as before.
        let text = "env:\n  A: &a \"1\"\n  B: *a\n  C: *a\nnodes: {}\n".to_owned();
        assert!(!faults(text).to_string().contains("aliases"));
    }

    #[test]
    fn a_ten_mb_file_is_one_fault_at_1_1_naming_the_size_and_the_limit() {
        let text = format!("name: big\nenv:\n  BLOB: {}\n", "x".repeat(10 << 20));
        let size = text.len();
        let d = faults(text.clone());
        assert_eq!(d.0.len(), 1, "{d}");
        assert_eq!((d.0[0].line, d.0[0].col), (1, 1), "{d}");
        assert!(d.0[0].message.contains(&size.to_string()), "{d}");
        assert!(d.0[0].message.contains("1 MiB (1048576 bytes)"), "{d}");
        // From disk, refused from the file's size before reading it.
        let dir = tempfile::tempdir().expect("tmp");
        std::fs::write(dir.path().join("quarry.yml"), &text).expect("write");
        let path = dir.path().to_owned();
        let e = on_small_stack(move || crate::spec::load(&path)).expect_err("refused");
        let crate::spec::LoadError::Invalid(d) = e else {
            panic!("not a fault: {e}")
        };
        assert_eq!(d.0.len(), 1, "{d}");
        assert_eq!((d.0[0].line, d.0[0].col), (1, 1), "{d}");
        assert!(d.0[0].message.contains(&size.to_string()), "{d}");
    }

    #[test]
    fn an_env_value_above_the_limit_in_quarry_yml_is_a_fault_at_the_value() {
        let text = format!(
            "name: s\nnodes:\n  web:\n    image: nginx\n    env:\n      BLOB: {}\n",
            "x".repeat(MAX_ENV_VALUE_BYTES + 1)
        );
        let d = faults(text);
        let f =
            d.0.iter()
                .find(|f| f.message.contains("BLOB"))
                .expect("BLOB fault");
        assert_eq!((f.line, f.col), (6, 13), "{d}");
        assert!(f.message.contains("64 KiB"), "{d}");
    }

    #[test]
    fn an_env_value_above_the_limit_is_refused_naming_the_key_and_size() {
        let big = "x".repeat(MAX_ENV_VALUE_BYTES + 1);
        let e = check_env_value("BLOB", &big).expect_err("refused");
        let text = e.to_string();
        assert!(text.contains("BLOB"), "{text}");
        assert!(
            text.contains(&(MAX_ENV_VALUE_BYTES + 1).to_string()),
            "{text}"
        );
        assert!(text.contains("64 KiB"), "{text}");
        assert!(check_env_value("OK", &"x".repeat(MAX_ENV_VALUE_BYTES)).is_ok());
    }

    #[test]
    fn an_env_above_the_total_limit_is_refused_naming_its_largest_variable() {
        let env: BTreeMap<String, String> = (0..17)
            .map(|i| (format!("K{i:02}"), "v".repeat(MAX_ENV_VALUE_BYTES - 3)))
            .collect();
        let e = check_env("stack shop's env", &env).expect_err("refused");
        let text = e.to_string();
        assert!(text.contains("stack shop's env"), "{text}");
        assert!(text.contains("1 MiB"), "{text}");
        let (ok, _) = env
            .iter()
            .partition::<BTreeMap<_, _>, _>(|(k, _)| k.as_str() < "K15");
        let ok: BTreeMap<String, String> = ok
            .into_iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        assert!(check_env("ok", &ok).is_ok());
    }

    #[test]
    fn sizes_are_written_for_people() {
        assert_eq!(bytes(1 << 20), "1 MiB (1048576 bytes)");
        assert_eq!(bytes(64 << 10), "64 KiB (65536 bytes)");
        assert_eq!(bytes(100), "100 bytes");
    }
}
