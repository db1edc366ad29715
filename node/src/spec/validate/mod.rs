//! From quarry.yml's text to a [`StackFile`], collecting every fault.
//!
//! serde_yaml reads the document (and reports syntax errors with their position); the walk
//! below checks its shape key by key against the format, looking positions up in a
//! [`Positions`] index. Each check that fails adds a diagnostic and the walk goes on, so one run
//! reports all the faults of a file. Checks that span nodes (references, memory against the
//! largest server) run after every node has been read.

use std::collections::BTreeMap;

use serde_yaml::{Mapping, Value};

mod cross;
mod fields;

use super::limits;
use super::positions::{Pos, Positions, Seg};
use super::{Diagnostic, Diagnostics, Facts, NodeSpec, Severity, StackFile, DEFAULT_MEMORY};
use crate::types::{Health, ImageSource, Kind, Probe};

const TOP_KEYS: &[&str] = &["name", "env", "nodes"];
const NODE_KEYS: &[&str] = &[
    "kind", "image", "build", "command", "env", "ports", "memory", "scale", "domains", "health",
    "tags",
];
pub(super) const HEALTH_KEYS: &[&str] = &["http", "tcp", "interval", "timeout", "retries"];

/// Read `text` (the contents of `file`) into a stack. `default_name` names the stack when the
/// file does not (the push target or the directory). On success, the warnings come along.
pub fn parse(
    file: &str,
    text: &str,
    default_name: &str,
    facts: &dyn Facts,
) -> Result<(StackFile, Vec<Diagnostic>), Diagnostics> {
    if let Err(d) = limits::check_text(file, text.len()) {
        return Err(Diagnostics(vec![d]));
    }
    let pos = match Positions::index(text) {
        Ok(p) => p,
        Err(deep) => return Err(Diagnostics(vec![limits::too_deep(file, deep)])),
    };
    let mut w = Walker {
        file,
        lines: text.lines().collect(),
        pos: &pos,
        diags: Vec::new(),
    };
    for d in &pos.duplicates {
        let what = match d.parent.as_slice() {
            [Seg::Key(k)] if k == "nodes" => format!("duplicate node {:?}", d.key),
            _ => format!("duplicate key {:?}", d.key),
        };
        w.error(
            d.at,
            format!(
                "{what} (first at line {}, column {})",
                d.first.line, d.first.col
            ),
            Some("each name may appear once; rename or merge the two".to_owned()),
        );
    }
    // Only a document yaml-rust2 read whole (so no deeper than MAX_DEPTH) becomes a tree:
    // serde_yaml's tree recurses once per level. Of one it could not read, serde_yaml reports
    // the syntax error (its words are the better ones) without building a tree: ignoring a
    // value walks its events in a loop.
    let parsed = match &pos.syntax_error {
        None => serde_yaml::from_str::<Value>(text).map_err(Some),
        Some(_) => match serde_yaml::from_str::<serde::de::IgnoredAny>(text) {
            Err(e) => Err(Some(e)),
            Ok(_) => Err(None),
        },
    };
    let root: Value = match parsed {
        Ok(v) => v,
        // The two parsers disagree: yaml-rust2's error, then.
        Err(None) => {
            if let Some((at, msg)) = pos.syntax_error.clone() {
                w.error(
                    at,
                    format!("invalid YAML: {msg}"),
                    Some(
                        "check the indentation and the brackets and quotes around this point"
                            .to_owned(),
                    ),
                );
            }
            return Err(Diagnostics(w.diags));
        }
        Err(Some(e)) => {
            if w.diags.is_empty() {
                let at = e
                    .location()
                    .map(|l| Pos {
                        line: l.line(),
                        col: l.column(),
                    })
                    .unwrap_or(Pos { line: 1, col: 1 });
                // serde_yaml writes "MSG at line L column C[, while parsing X at line ...]";
                // the position is printed in front, so drop its first copy.
                let msg = e.to_string();
                let msg = match (msg.find(" at line "), at) {
                    (Some(i), _) => {
                        let rest = &msg[i + " at line ".len()..];
                        let after = rest.find(", ").map(|j| &rest[j..]).unwrap_or("");
                        format!("{}{after}", &msg[..i])
                    }
                    (None, _) => msg,
                };
                w.error(
                    at,
                    format!("invalid YAML: {msg}"),
                    Some(
                        "check the indentation and the brackets and quotes around this point"
                            .to_owned(),
                    ),
                );
            }
            return Err(Diagnostics(w.diags));
        }
    };
    let stack = w.stack(&root, default_name, facts);
    w.diags.sort_by_key(|d| (d.line, d.col));
    if w.diags.iter().any(|d| d.severity == Severity::Error) {
        return Err(Diagnostics(w.diags));
    }
    match stack {
        Some(s) => Ok((s, w.diags)),
        None => {
            // Unreachable in practice: every None path adds an error.
            w.error(
                Pos { line: 1, col: 1 },
                "the file is not a stack".into(),
                None,
            );
            Err(Diagnostics(w.diags))
        }
    }
}

pub(super) struct Walker<'a> {
    file: &'a str,
    lines: Vec<&'a str>,
    pos: &'a Positions,
    diags: Vec<Diagnostic>,
}

pub(super) fn key(s: &str) -> Seg {
    Seg::Key(s.to_owned())
}

pub(super) fn with(path: &[Seg], seg: Seg) -> Vec<Seg> {
    let mut p = path.to_vec();
    p.push(seg);
    p
}

pub(super) fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "nothing",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Sequence(_) => "a list",
        Value::Mapping(_) => "a mapping",
        Value::Tagged(_) => "a tagged value",
    }
}

/// The closest of `known` to `word`, if close enough to be a likely typo.
pub(super) fn did_you_mean<'k>(word: &str, known: &[&'k str]) -> Option<&'k str> {
    known
        .iter()
        .map(|k| (levenshtein(word, k), *k))
        .filter(|(d, k)| *d <= 2.max(k.len() / 3))
        .min()
        .map(|(_, k)| k)
}

fn levenshtein(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != *cb);
            cur.push(sub.min(prev[j + 1] + 1).min(cur[j] + 1));
        }
        prev = cur;
    }
    prev[b.len()]
}

/// A stack or node name: lower-case letters, digits and `-`, starting with a letter or digit,
/// at most 40 characters (it becomes part of container, network and env names).
fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 40
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

pub(super) fn valid_env_key(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn valid_domain(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        })
}

/// A node as read, before the checks that span nodes.
pub(super) struct Draft {
    pub(super) spec: NodeSpec,
    pub(super) path: Vec<Seg>,
}

impl Walker<'_> {
    pub(super) fn error(&mut self, at: Pos, message: String, hint: Option<String>) {
        self.push(Severity::Error, at, message, hint);
    }

    pub(super) fn warn(&mut self, at: Pos, message: String, hint: Option<String>) {
        self.push(Severity::Warning, at, message, hint);
    }

    fn push(&mut self, severity: Severity, at: Pos, message: String, hint: Option<String>) {
        self.diags.push(Diagnostic {
            severity,
            file: self.file.to_owned(),
            line: at.line,
            col: at.col,
            message,
            hint,
        });
    }

    pub(super) fn wrong_type(
        &mut self,
        path: &[Seg],
        what: &str,
        expected: &str,
        found: &Value,
        hint: &str,
    ) {
        self.error(
            self.pos.value(path),
            format!("{what} must be {expected}, not {}", type_name(found)),
            Some(hint.to_owned()),
        );
    }

    /// The keys of a mapping as strings, each checked against `known`.
    pub(super) fn keys<'v>(
        &mut self,
        map: &'v Mapping,
        path: &[Seg],
        known: &[&str],
        context: &str,
    ) -> Vec<(&'v str, &'v Value)> {
        let mut out = Vec::new();
        for (k, v) in map {
            let Some(k) = k.as_str() else {
                self.error(
                    self.pos.value(path),
                    format!("{context} has a key that is {}, not a name", type_name(k)),
                    None,
                );
                continue;
            };
            if !known.is_empty() && !known.contains(&k) {
                let hint = match did_you_mean(k, known) {
                    Some(m) => format!(
                        "did you mean {m:?}? ({context} takes: {})",
                        known.join(", ")
                    ),
                    None => format!("{context} takes: {}", known.join(", ")),
                };
                self.error(
                    self.pos.key(&with(path, key(k))),
                    format!("unknown key {k:?} in {context}"),
                    Some(hint),
                );
                continue;
            }
            out.push((k, v));
        }
        out
    }

    fn stack(&mut self, root: &Value, default_name: &str, facts: &dyn Facts) -> Option<StackFile> {
        let Value::Mapping(top) = root else {
            self.wrong_type(
                &[],
                "quarry.yml",
                "a mapping with `nodes:`",
                root,
                "start from the example in docs/quarry-yml.md",
            );
            return None;
        };
        let mut name = None;
        let mut env = BTreeMap::new();
        let mut drafts = Vec::new();
        let mut saw_nodes = false;
        for (k, v) in self.keys(top, &[], TOP_KEYS, "the top level") {
            let path = vec![key(k)];
            match k {
                "name" => name = self.name(v, &path, "the stack name"),
                "env" => env = self.env(v, &path, "the stack's env"),
                "nodes" => {
                    saw_nodes = true;
                    drafts = self.nodes(v, &path, facts);
                }
                _ => {}
            }
        }
        if !saw_nodes {
            self.error(
                Pos { line: 1, col: 1 },
                "quarry.yml has no `nodes:`".to_owned(),
                Some("a stack needs at least one node under `nodes:`".to_owned()),
            );
        }
        self.cross_checks(&drafts, facts);
        let name = match name {
            Some(n) => n,
            None if valid_name(default_name) => default_name.to_owned(),
            None => {
                self.error(
                    Pos { line: 1, col: 1 },
                    format!("the stack has no `name:` and {default_name:?} is not a valid name"),
                    Some("add `name: my-app` (lower-case letters, digits and -)".to_owned()),
                );
                return None;
            }
        };
        let mut nodes: Vec<NodeSpec> = drafts.into_iter().map(|d| d.spec).collect();
        for n in &mut nodes {
            if let ImageSource::Build { dir, digest, tag } = &mut n.image {
                *tag = build_tag(&name, dir, digest);
            }
        }
        Some(StackFile { name, env, nodes })
    }

    fn name(&mut self, v: &Value, path: &[Seg], what: &str) -> Option<String> {
        match v.as_str() {
            Some(s) if valid_name(s) => Some(s.to_owned()),
            Some(s) => {
                self.error(
                    self.pos.value(path),
                    format!("{what} {s:?} is not a valid name"),
                    Some("use lower-case letters, digits and -, at most 40 characters".to_owned()),
                );
                None
            }
            None => {
                self.wrong_type(path, what, "a string", v, "for example `name: guestbook`");
                None
            }
        }
    }

    fn string(&mut self, v: &Value, path: &[Seg], what: &str, hint: &str) -> Option<String> {
        match v {
            Value::String(s) if !s.trim().is_empty() => Some(s.clone()),
            Value::String(_) => {
                self.error(
                    self.pos.value(path),
                    format!("{what} is empty"),
                    Some(hint.to_owned()),
                );
                None
            }
            _ => {
                self.wrong_type(path, what, "a string", v, hint);
                None
            }
        }
    }

    fn nodes(&mut self, v: &Value, path: &[Seg], facts: &dyn Facts) -> Vec<Draft> {
        let Value::Mapping(m) = v else {
            self.wrong_type(
                path,
                "`nodes`",
                "a mapping of node names",
                v,
                "for example `nodes: { web: { kind: web, ... } }`",
            );
            return Vec::new();
        };
        if m.is_empty() {
            self.error(
                self.pos.value(path),
                "`nodes` is empty".to_owned(),
                Some("a stack needs at least one node".to_owned()),
            );
        }
        let mut out = Vec::new();
        for (name, body) in self.keys(m, path, &[], "`nodes`") {
            let p = with(path, key(name));
            if !valid_name(name) {
                self.error(
                    self.pos.key(&p),
                    format!("node name {name:?} is not a valid name"),
                    Some("use lower-case letters, digits and -, at most 40 characters".to_owned()),
                );
                continue;
            }
            if let Some(spec) = self.node(name, body, &p, facts) {
                out.push(Draft { spec, path: p });
            }
        }
        out
    }

    fn node(&mut self, name: &str, v: &Value, path: &[Seg], facts: &dyn Facts) -> Option<NodeSpec> {
        let ctx = format!("node {name:?}");
        let Value::Mapping(m) = v else {
            self.wrong_type(
                path,
                &ctx,
                "a mapping",
                v,
                "give it at least `kind:` and `image:` or `build:`",
            );
            return None;
        };
        let errors_before = self.diags.len();
        let mut kind = None;
        let mut image = None;
        let mut build = None;
        let mut command = None;
        let mut env = BTreeMap::new();
        let mut ports: Vec<u16> = Vec::new();
        let mut memory = DEFAULT_MEMORY;
        let mut scale: Option<(u32, Vec<Seg>)> = None;
        let mut domains: Option<Vec<String>> = None;
        let mut health = None;
        let mut tags = Vec::new();
        for (k, val) in self.keys(m, path, NODE_KEYS, &ctx) {
            let p = with(path, key(k));
            match k {
                "kind" => {
                    kind = match val.as_str() {
                        Some("service") => Some(Kind::Service),
                        Some("web") => Some(Kind::Web),
                        Some("worker") => Some(Kind::Worker),
                        _ => {
                            let found = val
                                .as_str()
                                .map(|s| format!("{s:?}"))
                                .unwrap_or_else(|| type_name(val).to_owned());
                            self.error(
                                self.pos.value(&p),
                                format!("kind must be service, web or worker, not {found}"),
                                Some("service: a backing container; web: routed by domains; worker: not routed".to_owned()),
                            );
                            None
                        }
                    }
                }
                "image" => image = self.string(val, &p, "image", "an image name such as `redis:7`"),
                "build" => {
                    build = self.string(
                        val,
                        &p,
                        "build",
                        "a directory with a Dockerfile, relative to quarry.yml",
                    )
                }
                "command" => command = self.command(val, &p),
                "env" => env = self.env(val, &p, &format!("the env of {ctx}")),
                "ports" => ports = self.ports(val, &p),
                "memory" => {
                    if let Some(b) = self.size(val, &p) {
                        memory = b;
                    }
                }
                "scale" => match val.as_u64() {
                    Some(0) => self.error(
                        self.pos.value(&p),
                        "scale must be at least 1".to_owned(),
                        Some(format!(
                            "remove node {name:?} from quarry.yml to stop it, or disable the stack"
                        )),
                    ),
                    Some(n) if n <= 1000 => scale = Some((n as u32, p.clone())),
                    Some(n) => self.error(
                        self.pos.value(&p),
                        format!("scale {n} is more than 1000"),
                        None,
                    ),
                    None => self.wrong_type(
                        &p,
                        "scale",
                        "a whole number",
                        val,
                        "for example `scale: 2`",
                    ),
                },
                "domains" => {
                    domains = Some(self.string_list(
                        val,
                        &p,
                        "domains",
                        "for example `domains: [app.example.com]`",
                    ))
                }
                "health" => health = self.health(val, &p),
                "tags" => tags = self.string_list(val, &p, "tags", "for example `tags: [ssd]`"),
                _ => {}
            }
        }
        let here = self.pos.key(path);
        let Some(kind) = kind else {
            if !m.contains_key("kind") {
                self.error(
                    here,
                    format!("{ctx} has no kind"),
                    Some("add `kind: service`, `kind: web` or `kind: worker`".to_owned()),
                );
            }
            return None;
        };
        let image = match (image, build) {
            (Some(_), Some(_)) => {
                self.error(
                    self.pos.key(&with(path, key("build"))),
                    format!("{ctx} has both `image` and `build`"),
                    Some(
                        "keep one: `image:` runs a named image, `build:` builds a directory"
                            .to_owned(),
                    ),
                );
                None
            }
            (Some(i), None) => Some(ImageSource::Image(i)),
            (None, Some(dir)) => self.build_dir(&dir, &with(path, key("build")), facts),
            (None, None) => {
                if !m.contains_key("image") && !m.contains_key("build") {
                    self.error(
                        here,
                        format!("{ctx} has neither `image` nor `build`"),
                        Some(
                            "add `build: DIR` (a directory with a Dockerfile) or `image: NAME`"
                                .to_owned(),
                        ),
                    );
                }
                None
            }
        };
        if kind == Kind::Web {
            if ports.is_empty() && !m.contains_key("ports") {
                self.error(
                    here,
                    format!("web node {name:?} has no ports"),
                    Some(
                        "add `ports: [8080]`: the router sends its domains to the first".to_owned(),
                    ),
                );
            }
            if domains.as_ref().is_none_or(|d| d.is_empty())
                && !(m.contains_key("domains") && domains.is_none())
            {
                let at = if m.contains_key("domains") {
                    self.pos.value(&with(path, key("domains")))
                } else {
                    here
                };
                self.error(at, format!("web node {name:?} has no domains"), Some("add `domains: [app.example.com]`, or make it `kind: worker` if it is not routed".to_owned()));
            }
        } else if let Some(d) = &domains {
            if !d.is_empty() {
                self.error(
                    self.pos.key(&with(path, key("domains"))),
                    format!("{} node {name:?} has domains", kind.as_str()),
                    Some(
                        "only web nodes are routed: make it `kind: web` or remove `domains`"
                            .to_owned(),
                    ),
                );
            }
        }
        if let Some(d) = &domains {
            for (i, dom) in d.iter().enumerate() {
                let at = self
                    .pos
                    .value(&with(&with(path, key("domains")), Seg::Index(i)));
                if !valid_domain(dom) {
                    self.error(
                        at,
                        format!("{dom:?} is not a domain name"),
                        Some("for example `app.example.com`".to_owned()),
                    );
                } else if dom.bytes().any(|b| b.is_ascii_uppercase()) {
                    self.warn(
                        at,
                        format!(
                            "domain {dom:?} is routed as {:?}: domain names are case-insensitive",
                            dom.to_ascii_lowercase()
                        ),
                        Some("write it in lower case".to_owned()),
                    );
                }
            }
        }
        let scale = match (kind, scale) {
            (Kind::Service, Some((n, p))) if n != 1 => {
                self.error(
                    self.pos.value(&p),
                    format!("service {name:?} has scale {n}"),
                    Some(
                        "a service runs exactly one replica, pinned to its server; remove `scale`"
                            .to_owned(),
                    ),
                );
                1
            }
            (_, Some((n, _))) => n,
            (_, None) => 1,
        };
        let health = match health {
            Some(h) if ports.is_empty() => {
                self.error(
                    self.pos.key(&with(path, key("health"))),
                    format!("{ctx} has a health check but no ports"),
                    Some("health is checked on the main port: add `ports:`".to_owned()),
                );
                Some(h)
            }
            Some(h) => Some(h),
            None if !ports.is_empty() => Some(Health {
                probe: Probe::Tcp,
                interval_ms: 1000,
                timeout_ms: 1000,
                retries: 3,
            }),
            None => None,
        };
        if self.diags[errors_before..]
            .iter()
            .any(|d| d.severity == Severity::Error)
        {
            return None;
        }
        Some(NodeSpec {
            name: name.to_owned(),
            kind,
            image: image?,
            command,
            env,
            ports,
            memory,
            scale,
            // Lower case: DNS names are case-insensitive, and one spelling of each lets
            // every later comparison (the cluster's routes, the router) be a plain one.
            domains: domains
                .unwrap_or_default()
                .iter()
                .map(|d| d.to_ascii_lowercase())
                .collect(),
            health,
            tags,
        })
    }
}

/// The tag quarry gives the image built from `dir` of stack `stack`:
/// `quarry/STACK-DIR:DIGEST12` (DIR `.` is `root`; `/` becomes `-`).
pub(crate) fn build_tag(stack: &str, dir: &str, digest: &str) -> String {
    let dir = if dir == "." {
        "root".to_owned()
    } else {
        dir.to_ascii_lowercase()
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                    c
                } else {
                    '-'
                }
            })
            .collect()
    };
    format!("quarry/{stack}-{dir}:{}", &digest[..digest.len().min(12)])
}
