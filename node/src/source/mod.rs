//! A stack's source tree, stored by content hash.
//!
//! ```text
//!   stack dir --pack--> SourceTar { hash, bytes }  (a deterministic tar; hash = its sha256)
//!                          | put (hash checked)
//!                          v
//!               data/sources/<hash>.tar  --get (hash checked)--> bytes --unpack--> build dir
//! ```
//!
//! `quarry deploy` packs the stack's directory, a server stores the tar under its hash and a
//! second server stores a copy before the deploy is committed (DESIGN.md: a crash of the
//! receiving server never loses a committed deploy); whichever server builds unpacks it.
//!
//! [`wire`] carries sources between servers over the Bulk lane ([`crate::bulk`]): `push` a
//! copy to another server, `fetch` one from it.
//!
//! # Invariants
//!
//! - **The tree is the one quarry hashes**: [`pack`] takes exactly the files of
//!   [`crate::spec::list_files`] (symbolic links followed, `.git` skipped, empty directories
//!   dropped) with the same executable-bit rule as [`crate::spec::digest_dir`], so a build
//!   directory unpacked from a source has the digest the stack file named.
//! - **Deterministic**: the same files give the same bytes, whatever their mtimes, owners,
//!   creation order or the packing machine: entries sorted by path, regular files only, mode
//!   0755 or 0644, mtime, uid and gid 0, no user or group names.
//! - **Nothing unverified leaves the store**: [`SourceStore::put`] refuses bytes whose sha256
//!   is not the hash they are stored under; [`SourceStore::get`] checks it again on every read
//!   (a tampered or truncated file is an error, never a build); a file is written to a
//!   temporary name, synced, then renamed, so a crash leaves the old file or the new one.
//! - **Unpacking never escapes**: only regular files (and plain directories) with relative
//!   paths of normal components are accepted, into a directory that is empty or new; no link,
//!   device, absolute path or `..` is ever created or followed.
//!
//! # Left out
//!
//! A `.quarryignore`; trees above [`MAX_SOURCE_BYTES`] (they must fit one Bulk RPC frame);
//! compression. Old sources and build directories are collected by [`collect`].

pub mod collect;
mod store;
pub mod wire;

use std::fmt;
use std::fs;
use std::io::{self, Read};
use std::path::{Component, Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

pub use store::SourceStore;

use crate::spec::{is_executable, list_files};

/// The largest packed tree: it must travel in one Bulk RPC frame (64 MiB) with room to spare.
pub const MAX_SOURCE_BYTES: u64 = 60 << 20;

/// The content hash of a packed source: the hex sha256 of its tar (64 lower-case hex digits,
/// checked on construction, so it is always safe as a file name).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct SourceHash(String);

impl SourceHash {
    /// A hash from its text; anything but 64 lower-case hex digits is refused.
    pub fn parse(text: &str) -> Result<SourceHash, SourceError> {
        let ok = text.len() == 64
            && text
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        if ok {
            Ok(SourceHash(text.to_owned()))
        } else {
            Err(SourceError::BadHash(text.chars().take(80).collect()))
        }
    }

    /// The hash of these bytes.
    pub fn of(bytes: &[u8]) -> SourceHash {
        SourceHash(hex::encode(Sha256::digest(bytes)))
    }

    /// The hex text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The first 12 digits, for messages.
    pub fn short(&self) -> &str {
        &self.0[..12]
    }
}

impl fmt::Display for SourceHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl TryFrom<String> for SourceHash {
    type Error = SourceError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        SourceHash::parse(&s)
    }
}

impl From<SourceHash> for String {
    fn from(h: SourceHash) -> String {
        h.0
    }
}

/// A packed source tree and its hash.
#[derive(Clone, PartialEq, Eq)]
pub struct SourceTar {
    /// The sha256 of `bytes`.
    pub hash: SourceHash,
    /// The tar.
    pub bytes: Vec<u8>,
}

impl fmt::Debug for SourceTar {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SourceTar")
            .field("hash", &self.hash)
            .field("bytes", &self.bytes.len())
            .finish()
    }
}

/// What went wrong packing, storing or unpacking a source.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// The stack directory could not be read.
    #[error("cannot pack {dir}: {source}")]
    Read {
        /// The directory packed.
        dir: PathBuf,
        /// The cause (a dangling link names the link and its target).
        source: io::Error,
    },
    /// The tree is larger than [`MAX_SOURCE_BYTES`].
    #[error(
        "the stack's tree packs to {bytes} bytes, more than the {limit} a deploy carries: move \
         large files out of the stack directory (or into a .git directory, which is skipped)"
    )]
    TooLarge {
        /// The packed size so far.
        bytes: u64,
        /// The limit.
        limit: u64,
    },
    /// Bytes offered under a hash they do not have.
    #[error("source {expected} refused: its bytes hash to {actual} (damaged in transit?); send it again")]
    Mismatch {
        /// The hash they were offered under.
        expected: SourceHash,
        /// Their hash.
        actual: SourceHash,
    },
    /// A stored file no longer has its hash.
    #[error(
        "stored source {path} is damaged (its bytes hash to {actual}): fetch it again from \
         another server"
    )]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// Its bytes' hash now.
        actual: SourceHash,
    },
    /// The store has no such source.
    #[error("no source {0} is stored here")]
    NotFound(SourceHash),
    /// Text that is not a source hash.
    #[error("{0:?} is not a source hash (64 lower-case hex digits)")]
    BadHash(String),
    /// A tar entry that unpacking refuses.
    #[error("refusing to unpack entry {entry:?}: {reason}")]
    Unsafe {
        /// The entry's path as written in the tar.
        entry: String,
        /// Why.
        reason: String,
    },
    /// The unpack destination is not empty.
    #[error("cannot unpack into {0}: it is not empty (unpack into a new directory)")]
    NotEmpty(PathBuf),
    /// Another server refused the source or could not be reached.
    #[error("the other server: {0}")]
    Remote(String),
    /// Some other file system failure.
    #[error("{what}: {source}")]
    Io {
        /// What quarry was doing.
        what: String,
        /// The cause.
        source: io::Error,
    },
}

fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> SourceError {
    let what = what.into();
    move |source| SourceError::Io { what, source }
}

/// Pack the tree under `dir` into a deterministic tar (see the module docs) and hash it.
pub fn pack(dir: &Path) -> Result<SourceTar, SourceError> {
    let read = |source| SourceError::Read {
        dir: dir.to_path_buf(),
        source,
    };
    let mut builder = tar::Builder::new(Vec::new());
    let mut total = 0u64;
    for rel in list_files(dir).map_err(read)? {
        let full = dir.join(&rel);
        let meta = fs::metadata(&full).map_err(read)?;
        // Each entry costs a header block, the content and its padding to 512 bytes.
        total += 512 + meta.len().div_ceil(512) * 512;
        if total > MAX_SOURCE_BYTES {
            return Err(SourceError::TooLarge {
                bytes: total,
                limit: MAX_SOURCE_BYTES,
            });
        }
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(tar::EntryType::Regular);
        header.set_size(meta.len());
        header.set_mode(if is_executable(&meta) { 0o755 } else { 0o644 });
        header.set_mtime(0);
        header.set_uid(0);
        header.set_gid(0);
        let file = fs::File::open(&full).map_err(read)?;
        // Exactly the size recorded: a file that changes while packed fails rather than
        // producing a tar that does not match its header.
        builder
            .append_data(&mut header, &rel, file.take(meta.len()))
            .map_err(read)?;
    }
    let bytes = builder.into_inner().map_err(read)?;
    Ok(SourceTar {
        hash: SourceHash::of(&bytes),
        bytes,
    })
}

/// Unpack a source tar into `dest`, which must not exist or be an empty directory. Only
/// regular files and directories with relative, `..`-free paths are accepted (see the module
/// docs); the caller checks the hash first ([`SourceStore::unpack`] does).
pub fn unpack(bytes: &[u8], dest: &Path) -> Result<(), SourceError> {
    match fs::read_dir(dest) {
        Ok(mut entries) => {
            if entries.next().is_some() {
                return Err(SourceError::NotEmpty(dest.to_path_buf()));
            }
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            fs::create_dir_all(dest).map_err(io_err(format!("creating {}", dest.display())))?
        }
        Err(e) => return Err(io_err(format!("reading {}", dest.display()))(e)),
    }
    let mut archive = tar::Archive::new(bytes);
    let bad_tar = |e: io::Error| SourceError::Unsafe {
        entry: String::new(),
        reason: format!("not a readable tar: {e}"),
    };
    for entry in archive.entries().map_err(bad_tar)? {
        let mut entry = entry.map_err(bad_tar)?;
        let raw = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        let unsafe_entry = |reason: &str| SourceError::Unsafe {
            entry: raw.clone(),
            reason: reason.to_owned(),
        };
        let rel = safe_relative(&entry.path_bytes()).map_err(&unsafe_entry)?;
        let target = dest.join(&rel);
        match entry.header().entry_type() {
            tar::EntryType::Directory => {
                fs::create_dir_all(&target)
                    .map_err(io_err(format!("creating {}", target.display())))?;
            }
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                if let Some(parent) = target.parent() {
                    fs::create_dir_all(parent)
                        .map_err(io_err(format!("creating {}", parent.display())))?;
                }
                let exec = entry.header().mode().map_err(bad_tar)? & 0o111 != 0;
                write_new_file(&target, &mut entry, exec)?;
            }
            other => {
                return Err(unsafe_entry(&format!(
                    "a {other:?} entry: a source holds regular files only"
                )))
            }
        }
    }
    Ok(())
}

/// The path of a tar entry as a relative path of normal components, or why not.
fn safe_relative(raw: &[u8]) -> Result<PathBuf, &'static str> {
    if raw.contains(&0) {
        return Err("a NUL byte in the path");
    }
    let text = std::str::from_utf8(raw).map_err(|_| "a path that is not UTF-8")?;
    let mut out = PathBuf::new();
    for c in Path::new(text).components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::CurDir => {}
            Component::ParentDir => return Err("a `..` in the path"),
            Component::RootDir | Component::Prefix(_) => return Err("an absolute path"),
        }
    }
    if out.as_os_str().is_empty() {
        return Err("an empty path");
    }
    Ok(out)
}

fn write_new_file(target: &Path, content: &mut impl Read, exec: bool) -> Result<(), SourceError> {
    use std::os::unix::fs::OpenOptionsExt;
    let what = || format!("writing {}", target.display());
    // create_new: a path given twice is refused, and an existing name is never opened through.
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(if exec { 0o755 } else { 0o644 })
        .open(target)
        .map_err(io_err(what()))?;
    io::copy(content, &mut file).map_err(io_err(what()))?;
    // The umask may have cleared bits of the mode asked for; the tree's mode is what counts.
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(
        target,
        fs::Permissions::from_mode(if exec { 0o755 } else { 0o644 }),
    )
    .map_err(io_err(what()))?;
    Ok(())
}

#[cfg(test)]
mod tests;
