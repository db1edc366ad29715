//! The store of packed sources under a data directory: `sources/<hash>.tar`.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use super::{io_err, unpack, SourceError, SourceHash};

/// Packed sources by hash, in `<data>/sources/`. Every byte in or out is checked against its
/// hash (see the module docs). Cheap to clone; several stores may share a directory (writes
/// go through unique temporary names and an atomic rename).
#[derive(Debug, Clone)]
pub struct SourceStore {
    dir: PathBuf,
}

impl SourceStore {
    /// The store under `data_dir` (its `sources/` directory is created if missing). Temporary
    /// files a crash left behind are removed.
    pub fn open(data_dir: &Path) -> Result<SourceStore, SourceError> {
        let dir = data_dir.join("sources");
        fs::create_dir_all(&dir).map_err(io_err(format!("creating {}", dir.display())))?;
        let listing = fs::read_dir(&dir).map_err(io_err(format!("reading {}", dir.display())))?;
        for entry in listing.flatten() {
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if name.starts_with('.') && name.ends_with(".tmp") {
                let _ = fs::remove_file(entry.path());
            }
        }
        Ok(SourceStore { dir })
    }

    /// The directory the tars live in.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The file a source is (or would be) stored in.
    pub fn path(&self, hash: &SourceHash) -> PathBuf {
        self.dir.join(format!("{hash}.tar"))
    }

    /// Whether a file for this source exists (its content is checked by [`get`](Self::get)).
    pub fn has(&self, hash: &SourceHash) -> bool {
        self.path(hash).is_file()
    }

    /// Store `bytes` under `hash`, refusing them unless they hash to it. Written to a
    /// temporary file, synced and renamed into place (replacing a damaged copy, if any).
    pub fn put(&self, hash: &SourceHash, bytes: &[u8]) -> Result<(), SourceError> {
        let actual = SourceHash::of(bytes);
        if &actual != hash {
            return Err(SourceError::Mismatch {
                expected: hash.clone(),
                actual,
            });
        }
        let target = self.path(hash);
        let tmp = self.dir.join(format!(
            ".{hash}.{}.{}.tmp",
            std::process::id(),
            hex::encode(&crate::pki::random_bytes()[..8])
        ));
        let write = || -> io::Result<()> {
            let mut f = fs::File::create(&tmp)?;
            f.write_all(bytes)?;
            f.sync_all()?;
            fs::rename(&tmp, &target)?;
            // The rename itself must reach the disk before the store says "stored".
            fs::File::open(&self.dir)?.sync_all()
        };
        write().map_err(|e| {
            let _ = fs::remove_file(&tmp);
            io_err(format!("storing source {}", target.display()))(e)
        })
    }

    /// The bytes of a source, checked against its hash.
    pub fn get(&self, hash: &SourceHash) -> Result<Vec<u8>, SourceError> {
        let path = self.path(hash);
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(SourceError::NotFound(hash.clone()))
            }
            Err(e) => return Err(io_err(format!("reading {}", path.display()))(e)),
        };
        let actual = SourceHash::of(&bytes);
        if &actual != hash {
            return Err(SourceError::Corrupt { path, actual });
        }
        Ok(bytes)
    }

    /// Unpack a stored source into `dest` (new or empty), after checking its hash.
    pub fn unpack(&self, hash: &SourceHash, dest: &Path) -> Result<(), SourceError> {
        let bytes = self.get(hash)?;
        unpack(&bytes, dest)
    }

    /// The sources stored, sorted (files with other names are ignored).
    pub fn list(&self) -> Result<Vec<SourceHash>, SourceError> {
        let listing =
            fs::read_dir(&self.dir).map_err(io_err(format!("reading {}", self.dir.display())))?;
        let mut out: Vec<SourceHash> = listing
            .flatten()
            .filter_map(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                SourceHash::parse(name.strip_suffix(".tar")?).ok()
            })
            .collect();
        out.sort();
        Ok(out)
    }

    /// Remove a source; removing one that is not there is not an error.
    pub fn remove(&self, hash: &SourceHash) -> Result<(), SourceError> {
        let path = self.path(hash);
        match fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_err(format!("removing {}", path.display()))(e)),
        }
    }
}
