//! `quarry.yml`: the model of a stack, and the reader that turns the file into it.
//!
//! Reading is pure: [`parse`] takes the file's text and the few facts it needs from outside
//! (does a build directory exist and what is its content digest, how large is the largest
//! server) through [`Facts`], and returns either a whole [`StackFile`] or every fault found, each
//! with file, line, column and a hint. Never a panic, never a partial result. [`load`] is the
//! thin I/O shell that reads a directory.
//!
//! The reader is bounded ([`limits`]): a file above 1 MiB ([`limits::MAX_FILE_BYTES`]) is one
//! fault at 1:1 naming its size and the limit, found before the file is read; a document nested
//! more than 64 deep ([`limits::MAX_DEPTH`]) is a fault where the 65th level opens, found on
//! the event stream before anything recurses; an env value above 64 KiB
//! ([`limits::MAX_ENV_VALUE_BYTES`]) is a fault at the value.
//!
//! The format is documented in `docs/quarry-yml.md`.

pub mod limits;
mod load;
pub mod positions;
pub mod units;
mod validate;

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

pub use load::{digest_dir, is_executable, list_files, load, load_with, DirFacts, LoadError};
pub use validate::parse;

use crate::types::{Command, Health, ImageSource, Kind};

/// The name of the file a stack is described in.
pub const FILE_NAME: &str = "quarry.yml";

/// Memory of a node that does not say.
pub const DEFAULT_MEMORY: u64 = 128 << 20;

/// A whole, valid quarry.yml.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StackFile {
    /// The stack's name.
    pub name: String,
    /// The stack's env (top-level `env:`), below service addresses and each node's own env.
    pub env: BTreeMap<String, String>,
    /// The nodes, in file order.
    pub nodes: Vec<NodeSpec>,
}

impl StackFile {
    /// The node called `name`.
    pub fn node(&self, name: &str) -> Option<&NodeSpec> {
        self.nodes.iter().find(|n| n.name == name)
    }
}

/// One node of a stack.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeSpec {
    /// Its name (the key under `nodes:`).
    pub name: String,
    /// service, web or worker.
    pub kind: Kind,
    /// `image:` or `build:` (with the build directory's digest).
    pub image: ImageSource,
    /// `command:`; `None` keeps the image's.
    pub command: Option<Command>,
    /// The node's own env, `${svc.host}` references unresolved.
    pub env: BTreeMap<String, String>,
    /// Container ports; the first is the main one.
    pub ports: Vec<u16>,
    /// Slice size in bytes.
    pub memory: u64,
    /// Replicas (always 1 for a service).
    pub scale: u32,
    /// Domains routed to the main port (web only).
    pub domains: Vec<String>,
    /// The health check: as written, or a TCP connect to the main port when the node has ports.
    pub health: Option<Health>,
    /// Placement: only on servers with all these tags.
    pub tags: Vec<String>,
}

/// What the reader needs to know from outside the file.
pub trait Facts {
    /// The content digest of the build directory `dir` (relative to quarry.yml), or why it
    /// cannot be built from (missing, not a directory, no Dockerfile).
    fn build_digest(&self, dir: &str) -> Result<String, String>;
    /// The memory of the largest server a node could run on, when known.
    fn max_server_memory(&self) -> Option<u64>;
}

/// How bad a diagnostic is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// The file is refused.
    Error,
    /// The file is accepted; the user should look.
    Warning,
}

/// A fault in quarry.yml, where it is and what to do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Diagnostic {
    /// Error or warning.
    pub severity: Severity,
    /// The file, as given to the reader.
    pub file: String,
    /// 1-based line.
    pub line: usize,
    /// 1-based column.
    pub col: usize,
    /// What is wrong.
    pub message: String,
    /// What to do about it.
    pub hint: Option<String>,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sev = match self.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        write!(
            f,
            "{}:{}:{}: {sev}: {}",
            self.file, self.line, self.col, self.message
        )?;
        if let Some(h) = &self.hint {
            write!(f, "\n  hint: {h}")?;
        }
        Ok(())
    }
}

/// Every error found in a file (never empty), and the warnings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Diagnostics(pub Vec<Diagnostic>);

impl Diagnostics {
    /// The errors only.
    pub fn errors(&self) -> impl Iterator<Item = &Diagnostic> {
        self.0.iter().filter(|d| d.severity == Severity::Error)
    }
}

impl fmt::Display for Diagnostics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, d) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{d}")?;
        }
        let n = self.errors().count();
        write!(
            f,
            "\n{n} error{} in {}",
            if n == 1 { "" } else { "s" },
            self.0.first().map(|d| d.file.as_str()).unwrap_or(FILE_NAME)
        )
    }
}

impl std::error::Error for Diagnostics {}

/// A `${service.attr}` reference inside an env value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reference {
    /// Byte offset of `${` in the value.
    pub offset: usize,
    /// Length in bytes of the whole `${...}`.
    pub len: usize,
    /// The service named.
    pub service: String,
    /// What of it.
    pub attr: Attr,
}

/// What a reference asks of a service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attr {
    /// `${S.host}`.
    Host,
    /// `${S.port}`: the main port.
    Port,
    /// `${S.port.P}`: the port others reach container port P on.
    PortOf(u16),
}

/// Find the `${...}` references in an env value. An unterminated or malformed one is an error
/// with its byte offset.
pub fn references(value: &str) -> Result<Vec<Reference>, (usize, String)> {
    let mut out = Vec::new();
    let mut from = 0;
    while let Some(i) = value[from..].find("${") {
        let start = from + i;
        let Some(j) = value[start..].find('}') else {
            return Err((start, "a `${` without its closing `}`".to_owned()));
        };
        let inner = &value[start + 2..start + j];
        let mut parts = inner.split('.');
        let service = parts.next().unwrap_or_default().trim().to_owned();
        let attr = match (parts.next(), parts.next(), parts.next()) {
            (Some("host"), None, None) => Attr::Host,
            (Some("port"), None, None) => Attr::Port,
            (Some("port"), Some(p), None) => match p.parse::<u16>() {
                Ok(p) => Attr::PortOf(p),
                Err(_) => return Err((start, format!("`${{{inner}}}`: {p:?} is not a port"))),
            },
            _ => {
                return Err((
                    start,
                    format!("`${{{inner}}}` is not a reference: use ${{SERVICE.host}}, ${{SERVICE.port}} or ${{SERVICE.port.PORT}}"),
                ))
            }
        };
        if service.is_empty() {
            return Err((start, format!("`${{{inner}}}` names no service")));
        }
        out.push(Reference {
            offset: start,
            len: j + 1,
            service,
            attr,
        });
        from = start + j + 1;
    }
    Ok(out)
}

/// The env-variable prefix of a service: upper-cased, `-` to `_` (`my-db` -> `MY_DB`).
pub fn env_prefix(service: &str) -> String {
    service.to_ascii_uppercase().replace('-', "_")
}
