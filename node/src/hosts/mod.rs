//! `/etc/hosts` (the notes' `config`): a managed block listing the live members.
//!
//! Each server keeps one block between two marker lines in its hosts file:
//!
//! ```text
//! 127.0.0.1   localhost            <- the operator's lines: never touched
//! # BEGIN quarry managed block (quarryd rewrites it; edits here are lost)
//! 10.77.0.1   h1
//! 10.77.0.2   h2
//! # END quarry managed block
//! ```
//!
//! [`render`] is pure: the file's current text and the live members in, the new text out.
//! Invariants:
//! - every byte outside the block is kept as it was (line endings included);
//! - the output depends only on the input *set* of members: they are sorted and deduplicated,
//!   so rendering twice, or rendering the output again, gives byte-identical text;
//! - a name that is not a plain host name (letters, digits, `-`, `.`) is left out, so a member
//!   record can never inject a line or a second name into the file;
//! - exactly one block comes out: a file holding several (hand-copied) blocks gets the new one
//!   where the first one was, and the others are removed. A `BEGIN` without an `END` (a hand
//!   edit) is taken to run to the end of the file.
//!
//! [`write`] is the thin I/O shell: it replaces the file atomically (a temporary file in the
//! same directory, fsync, rename) and, where the file is a mount point (a bind mount: rename
//! fails with `EBUSY`, or `EXDEV` across file systems — as under `ip netns exec`, which
//! bind-mounts `/etc/netns/NAME/hosts` over `/etc/hosts`), rewrites it in place. The in-place
//! path is not atomic: a reader may briefly see a short file. Left out: locking against another
//! writer of the file (one owner task per server writes it: [`keeper`], which decides who is
//! listed: the committed members gossip sees alive).

pub mod keeper;

use std::io::Write;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

/// The first line of the managed block.
pub const BEGIN: &str = "# BEGIN quarry managed block (quarryd rewrites it; edits here are lost)";
/// The last line of the managed block.
pub const END: &str = "# END quarry managed block";

/// A line that opens a block: compared by prefix, so a reworded marker is still ours.
const BEGIN_PREFIX: &str = "# BEGIN quarry";
/// A line that closes a block.
const END_PREFIX: &str = "# END quarry";

/// One member in the block.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct HostEntry {
    /// The member's host name (its server name).
    pub hostname: String,
    /// The address it is reached on.
    pub address: IpAddr,
}

impl HostEntry {
    /// An entry.
    pub fn new(hostname: impl Into<String>, address: IpAddr) -> Self {
        HostEntry {
            hostname: hostname.into(),
            address,
        }
    }
}

/// Whether `name` can stand in a hosts file as one name (RFC 1123 letters, digits, `-`, `.`).
pub fn is_valid_hostname(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && !name.starts_with(['-', '.'])
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
}

/// The block for these members (marker lines included, each line ending in `\n`).
pub fn render_block(members: &[HostEntry]) -> String {
    let mut entries: Vec<&HostEntry> = members
        .iter()
        .filter(|e| is_valid_hostname(&e.hostname))
        .collect();
    entries.sort_by(|a, b| (&a.hostname, a.address).cmp(&(&b.hostname, b.address)));
    entries.dedup();
    let mut out = String::new();
    out.push_str(BEGIN);
    out.push('\n');
    for e in entries {
        out.push_str(&format!("{}\t{}\n", e.address, e.hostname));
    }
    out.push_str(END);
    out.push('\n');
    out
}

fn is_begin(line: &str) -> bool {
    line.trim_end().starts_with(BEGIN_PREFIX)
}

fn is_end(line: &str) -> bool {
    line.trim_end().starts_with(END_PREFIX)
}

/// The hosts file's new text: `current` with its managed block replaced by one listing
/// `members` (appended at the end when there was none). See the module's invariants.
pub fn render(current: &str, members: &[HostEntry]) -> String {
    let block = render_block(members);
    let mut out = String::with_capacity(current.len() + block.len());
    let mut placed = false;
    let mut in_block = false;
    for line in current.split_inclusive('\n') {
        if in_block {
            if is_end(line) {
                in_block = false;
            }
            continue;
        }
        if is_begin(line) {
            in_block = true;
            if !placed {
                out.push_str(&block);
                placed = true;
            }
            continue;
        }
        out.push_str(line);
    }
    if !placed {
        if !out.is_empty() && !out.ends_with('\n') {
            out.push('\n');
        }
        out.push_str(&block);
    }
    out
}

/// What [`write`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteOutcome {
    /// The file already held this text: nothing written.
    Unchanged,
    /// Replaced atomically (temporary file + rename).
    Replaced,
    /// Rewritten in place (the file is a mount point).
    InPlace,
}

/// Why the hosts file could not be updated.
#[derive(Debug, thiserror::Error)]
pub enum HostsError {
    /// Reading, writing or renaming failed.
    #[error("{path}: {action}: {source}")]
    Io {
        /// The file concerned.
        path: PathBuf,
        /// What was being done.
        action: &'static str,
        /// The cause.
        source: std::io::Error,
    },
}

fn io_err<'a>(
    path: &'a Path,
    action: &'static str,
) -> impl FnOnce(std::io::Error) -> HostsError + 'a {
    move |source| HostsError::Io {
        path: path.to_owned(),
        action,
        source,
    }
}

/// Reads `path`, renders the block for `members` and writes the result if it differs.
pub fn update(path: &Path, members: &[HostEntry]) -> Result<WriteOutcome, HostsError> {
    let current = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(io_err(path, "read")(e)),
    };
    write(path, &render(&current, members))
}

/// Makes `path` hold exactly `text`: atomically where it can, in place on a mount point.
pub fn write(path: &Path, text: &str) -> Result<WriteOutcome, HostsError> {
    if let Ok(current) = std::fs::read(path) {
        if current == text.as_bytes() {
            return Ok(WriteOutcome::Unchanged);
        }
    }
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
        _ => PathBuf::from("."),
    };
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.quarry-{}.tmp", std::process::id()));
    let result = (|| {
        let mut f = std::fs::File::create(&tmp).map_err(io_err(&tmp, "create"))?;
        f.write_all(text.as_bytes())
            .map_err(io_err(&tmp, "write"))?;
        if let Ok(meta) = std::fs::metadata(path) {
            f.set_permissions(meta.permissions())
                .map_err(io_err(&tmp, "chmod"))?;
        }
        f.sync_all().map_err(io_err(&tmp, "fsync"))?;
        Ok::<(), HostsError>(())
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    match std::fs::rename(&tmp, path) {
        Ok(()) => {
            if let Ok(d) = std::fs::File::open(&dir) {
                let _ = d.sync_all();
            }
            Ok(WriteOutcome::Replaced)
        }
        Err(e) if is_mount_point_error(&e) => {
            let _ = std::fs::remove_file(&tmp);
            write_in_place(path, text)?;
            Ok(WriteOutcome::InPlace)
        }
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            Err(io_err(path, "rename over")(e))
        }
    }
}

/// `EBUSY` (renaming over a mount point) or `EXDEV` (across file systems).
fn is_mount_point_error(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc_errno::EBUSY) | Some(libc_errno::EXDEV)
    )
}

/// Linux errno values (std has no names for them).
mod libc_errno {
    pub const EBUSY: i32 = 16;
    pub const EXDEV: i32 = 18;
}

fn write_in_place(path: &Path, text: &str) -> Result<(), HostsError> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(path)
        .map_err(io_err(path, "open in place"))?;
    f.write_all(text.as_bytes())
        .map_err(io_err(path, "write in place"))?;
    f.sync_all().map_err(io_err(path, "fsync"))
}
