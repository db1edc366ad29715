//! The secret files of a server, under `config.paths.secrets` (directory 0700, files 0600).

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::PathBuf;

use super::{file_err, DaemonError};
use crate::config::Config;
use crate::pki::{ClusterCa, JoinToken, NodeIdentity};

/// The secret files of a server.
#[derive(Debug, Clone)]
pub struct Secrets {
    dir: PathBuf,
}

impl Secrets {
    /// The files under `config.paths.secrets`.
    pub fn of(cfg: &Config) -> Secrets {
        Secrets {
            dir: cfg.paths.secrets.clone(),
        }
    }

    /// A file in the directory.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    pub(super) fn read(&self, name: &str) -> Result<String, DaemonError> {
        let p = self.path(name);
        std::fs::read_to_string(&p).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                DaemonError::NotInitialized(p.clone())
            } else {
                file_err(&p)(e)
            }
        })
    }

    pub(super) fn read32(&self, name: &str) -> Result<[u8; 32], DaemonError> {
        let text = self.read(name)?;
        hex::decode(text.trim())
            .ok()
            .and_then(|v| v.try_into().ok())
            .ok_or_else(|| {
                DaemonError::Invalid(format!(
                    "{} is not 64 hex digits",
                    self.path(name).display()
                ))
            })
    }

    /// Create the directory (0700) and write a new file (0600); refuses to replace one.
    pub(super) fn create(&self, name: &str, contents: &str) -> Result<(), DaemonError> {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.dir)
            .map_err(file_err(&self.dir))?;
        std::fs::set_permissions(&self.dir, std::fs::Permissions::from_mode(0o700))
            .map_err(file_err(&self.dir))?;
        let p = self.path(name);
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&p)
            .map_err(|e| {
                if e.kind() == std::io::ErrorKind::AlreadyExists {
                    DaemonError::AlreadyInitialized(p.clone())
                } else {
                    file_err(&p)(e)
                }
            })?;
        f.write_all(contents.as_bytes()).map_err(file_err(&p))?;
        f.sync_all().map_err(file_err(&p))
    }

    /// This server's identity.
    pub fn identity(&self) -> Result<NodeIdentity, DaemonError> {
        Ok(NodeIdentity {
            cert_pem: self.read("node.pem")?,
            key_pem: self.read("node.key")?,
            ca_pem: self.read("ca.pem")?,
        })
    }

    /// The cluster CA with its key, when this server holds it.
    pub fn ca(&self) -> Result<Option<ClusterCa>, DaemonError> {
        if !self.path("ca.key").exists() {
            return Ok(None);
        }
        Ok(Some(ClusterCa::from_pem(
            &self.read("ca.pem")?,
            &self.read("ca.key")?,
        )?))
    }

    /// The join token (needs the CA and the join secret).
    pub fn join_token(&self) -> Result<JoinToken, DaemonError> {
        let ca = self.read("ca.pem")?;
        let digest = ClusterCa::from_pem(&ca, &self.read("ca.key")?)?.digest();
        Ok(JoinToken {
            ca: digest,
            secret: self.read32("join.secret")?,
        })
    }

    /// The admin token of the HTTP API.
    pub fn admin_token(&self) -> Result<String, DaemonError> {
        Ok(self.read("admin.token")?.trim().to_owned())
    }

    /// The gossip key.
    pub fn gossip_key(&self) -> Result<[u8; 32], DaemonError> {
        self.read32("gossip.key")
    }
}

impl Secrets {
    /// The join secret.
    pub fn join_secret(&self) -> Result<[u8; 32], DaemonError> {
        self.read32("join.secret")
    }
}
