//! The I/O shell around [`parse`](super::parse): read a stack directory's quarry.yml and learn
//! the facts the pure reader asks for (build directories and their content digests).

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::{limits, parse, Diagnostic, Diagnostics, Facts, StackFile, FILE_NAME};

/// Why a stack directory could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// There is no quarry.yml.
    #[error("no {FILE_NAME} in {0}: give the directory of a stack (one with a {FILE_NAME}), or create one (see docs/quarry-yml.md)")]
    NoFile(PathBuf),
    /// It could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// It is not a valid stack.
    #[error("{0}")]
    Invalid(Diagnostics),
}

/// [`Facts`] read from a directory on disk.
#[derive(Debug, Clone)]
pub struct DirFacts {
    /// The directory holding quarry.yml.
    pub root: PathBuf,
    /// The largest server's memory, when known.
    pub max_memory: Option<u64>,
}

impl Facts for DirFacts {
    fn build_digest(&self, dir: &str) -> Result<String, String> {
        let path = self.root.join(dir);
        match fs::metadata(&path) {
            Err(_) => return Err("does not exist".to_owned()),
            Ok(m) if !m.is_dir() => return Err("is not a directory".to_owned()),
            Ok(_) => {}
        }
        if !path.join("Dockerfile").is_file() {
            return Err("has no Dockerfile".to_owned());
        }
        digest_dir(&path).map_err(|e| format!("cannot be read: {e}"))
    }

    fn max_server_memory(&self) -> Option<u64> {
        self.max_memory
    }
}

/// Load the stack in `dir`, naming it after the directory unless quarry.yml names it.
pub fn load(dir: &Path) -> Result<(StackFile, Vec<Diagnostic>), LoadError> {
    let facts = DirFacts {
        root: dir.to_path_buf(),
        max_memory: None,
    };
    load_with(dir, &default_name(dir), &facts)
}

/// Load the stack in `dir` with the given default name and facts.
pub fn load_with(
    dir: &Path,
    default_name: &str,
    facts: &dyn Facts,
) -> Result<(StackFile, Vec<Diagnostic>), LoadError> {
    let path = dir.join(FILE_NAME);
    let file = path.display().to_string();
    let text = match read_bounded(&path) {
        Ok(Ok(t)) => t,
        Ok(Err(size)) => {
            let fault = limits::too_large(&file, size);
            return Err(LoadError::Invalid(Diagnostics(vec![fault])));
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(LoadError::NoFile(dir.to_path_buf()))
        }
        Err(source) => return Err(LoadError::Io { path, source }),
    };
    parse(&file, &text, default_name, facts).map_err(LoadError::Invalid)
}

/// Read a quarry.yml of at most [`limits::MAX_FILE_BYTES`]; a larger one is `Ok(Err(size))`,
/// told from its metadata before anything is read (and, for a file that grows meanwhile or a
/// pipe, from reading one byte past the limit, never more).
fn read_bounded(path: &Path) -> io::Result<Result<String, usize>> {
    use std::io::Read;
    let f = fs::File::open(path)?;
    let size = f.metadata()?.len();
    if size > limits::MAX_FILE_BYTES as u64 {
        return Ok(Err(usize::try_from(size).unwrap_or(usize::MAX)));
    }
    let mut buf = Vec::with_capacity(size as usize);
    f.take(limits::MAX_FILE_BYTES as u64 + 1)
        .read_to_end(&mut buf)?;
    if buf.len() > limits::MAX_FILE_BYTES {
        return Ok(Err(buf.len()));
    }
    String::from_utf8(buf)
        .map(Ok)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

/// The directory's name, lower-cased, as a stack name.
fn default_name(dir: &Path) -> String {
    let abs = dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf());
    abs.file_name()
        .map(|n| {
            n.to_string_lossy()
                .to_ascii_lowercase()
                .replace(['_', ' ', '.'], "-")
        })
        .unwrap_or_else(|| "stack".to_owned())
}

/// The content digest of a directory (hex sha256): every file of [`list_files`], in that order,
/// with its relative path, executable bit and content. Symbolic links are followed, as quarry's
/// build context follows them (so `busybox -> /bin/busybox` sends, and hashes, the binary
/// itself).
pub fn digest_dir(dir: &Path) -> io::Result<String> {
    let mut h = Sha256::new();
    for rel in list_files(dir)? {
        let full = dir.join(&rel);
        let meta = fs::metadata(&full)?;
        h.update(rel.to_string_lossy().as_bytes());
        h.update([0]);
        h.update(if is_executable(&meta) { b"x" } else { b"f" });
        h.update(meta.len().to_le_bytes());
        h.update(fs::read(&full)?);
        h.update([0]);
    }
    Ok(hex::encode(h.finalize()))
}

/// The files of a stack or build directory, as quarry sends and hashes them: every regular
/// file under `dir` (relative paths, sorted), symbolic links followed (a dangling one is an
/// error naming it), `.git` skipped, directories only as the paths leading to files (an empty
/// directory is not part of the tree).
pub fn list_files(dir: &Path) -> io::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    walk(dir, Path::new(""), 0, &mut files)?;
    files.sort();
    Ok(files)
}

/// Whether a file counts as executable: any of its execute bits is set. Only this bit of the
/// mode is part of a tree (in its digest and in a packed source).
pub fn is_executable(meta: &fs::Metadata) -> bool {
    use std::os::unix::fs::PermissionsExt;
    meta.permissions().mode() & 0o111 != 0
}

fn walk(root: &Path, rel: &Path, depth: usize, out: &mut Vec<PathBuf>) -> io::Result<()> {
    for entry in fs::read_dir(root.join(rel))? {
        let entry = entry?;
        let name = entry.file_name();
        if name == ".git" {
            continue;
        }
        let r = rel.join(&name);
        // Follow links; a dangling one is an error the user should see.
        let meta = match fs::metadata(entry.path()) {
            Ok(m) => m,
            Err(e) => {
                let target = fs::read_link(entry.path()).ok();
                return Err(match target {
                    Some(t) => io::Error::new(
                        e.kind(),
                        format!("{} links to {}, which is missing", r.display(), t.display()),
                    ),
                    None => e,
                });
            }
        };
        if meta.is_dir() {
            if depth > 32 {
                return Err(io::Error::other(format!(
                    "{} nests too deep (a link loop?)",
                    r.display()
                )));
            }
            walk(root, &r, depth + 1, out)?;
        } else if meta.is_file() {
            out.push(r);
        }
    }
    Ok(())
}
