//! One module per command.

pub mod client;
pub mod deploy;
pub mod env;
pub mod grid;
pub mod plan;
pub mod ps;
pub mod routes;
pub mod servers;
pub mod stacks;
pub mod start;
pub mod status;
pub mod stop;
pub mod table;
pub mod when;

use std::path::{Path, PathBuf};

/// The stack directory a command acts on: the one given, or the current one.
pub fn stack_dir(dir: Option<&Path>) -> PathBuf {
    dir.map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// This machine's memory in bytes (the one server of a local run), from /proc/meminfo.
pub fn local_memory() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}
