//! The reader never panics and never returns a half-read stack: for any text, `parse` gives
//! either a whole stack or at least one error with a position inside the file.

use proptest::prelude::*;
use quarry_node::spec::{self, Facts, Severity};

struct Tree;

impl Facts for Tree {
    fn build_digest(&self, dir: &str) -> Result<String, String> {
        if dir == "web" || dir == "kv" {
            Ok("ab".repeat(32))
        } else {
            Err("does not exist".to_owned())
        }
    }
    fn max_server_memory(&self) -> Option<u64> {
        Some(1 << 30)
    }
}

const EXAMPLE: &str = include_str!("../../examples/guestbook/quarry.yml");

/// Pieces that make YAML of quarry.yml's shape, to splice into the example.
const PIECES: &[&str] = &[
    "\n",
    ": ",
    "- ",
    "  ",
    "    ",
    "[",
    "]",
    "{",
    "}",
    ",",
    "\"",
    "'",
    "${",
    "}",
    "kv.host",
    "kind",
    "web",
    "service",
    "worker",
    "scale",
    "0",
    "-1",
    "99999999999999999999",
    "memory",
    "64Q",
    "ports",
    "domains",
    "health",
    "http",
    "tcp",
    "true",
    "~",
    "&a",
    "*a",
    "<<",
    "#",
    "é",
    "\t",
    "nodes",
    "env",
    "build",
    "image",
    "..",
    "/",
];

fn check(text: &str) {
    match spec::parse("quarry.yml", text, "stack", &Tree) {
        Ok((stack, _warnings)) => {
            assert!(
                !stack.nodes.is_empty(),
                "a stack with no nodes was accepted:\n{text}"
            );
        }
        Err(diags) => {
            assert!(
                diags.errors().count() > 0,
                "refused without an error:\n{text}"
            );
            // YAML breaks lines at \n and at \r; a fault at the end of input is one past.
            let lines = text.matches(['\n', '\r']).count() + 2;
            for d in &diags.0 {
                assert!(
                    d.line >= 1 && d.line <= lines,
                    "line {} outside the file: {d}\n{text}",
                    d.line
                );
                assert!(d.col >= 1, "column 0: {d}");
                assert!(d.severity == Severity::Error || d.severity == Severity::Warning);
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn any_text_is_read_or_refused_with_positions(text in ".{0,200}") {
        check(&text);
    }

    #[test]
    fn any_splice_into_the_example_is_read_or_refused_with_positions(
        edits in proptest::collection::vec((0usize..2000, 0usize..8, 0usize..PIECES.len()), 1..6)
    ) {
        let mut text = EXAMPLE.to_owned();
        for (at, cut, piece) in edits {
            let mut at = at % (text.len() + 1);
            while !text.is_char_boundary(at) { at -= 1; }
            let mut end = (at + cut).min(text.len());
            while !text.is_char_boundary(end) { end -= 1; }
            text.replace_range(at..end.max(at), PIECES[piece]);
        }
        check(&text);
    }
}

#[test]
fn the_example_itself_is_read() {
    let (stack, warnings) =
        spec::parse("quarry.yml", EXAMPLE, "x", &Tree).expect("the example is valid");
    assert_eq!(stack.name, "guestbook");
    assert!(warnings.is_empty(), "{warnings:?}");
    let names: Vec<&str> = stack.nodes.iter().map(|n| n.name.as_str()).collect();
    assert_eq!(names, ["kv", "web", "ticker"]);
}
