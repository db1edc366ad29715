//! The Docker shell: one connection to the local engine and the few things quarry asks of it
//! (images built from a stack's directories, one network per stack, the stack's containers read
//! back by label).
//!
//! Everything here is I/O and thin: decisions live in the pure modules ([`crate::reconcile`]'s
//! diff, [`crate::router`]'s renderer). The engine here speaks API 1.41 while bollard's stubs are
//! newer, so [`Engine::connect`] always negotiates the version first.
//!
//! Left out: registries (images named by `image:` must already be present locally, or a pull
//! is attempted and its failure reported), BuildKit (the legacy builder streams plain text).

pub mod containers;
pub mod image;
pub mod network;
pub mod origin;

use bollard::Docker;

pub use containers::{observe, ObservedContainer, RunState};
pub use origin::Origin;

/// What went wrong talking to Docker.
#[derive(Debug, thiserror::Error)]
pub enum DockerError {
    /// The engine could not be reached at all.
    #[error(
        "cannot reach the Docker engine ({detail}): start it (`systemctl start docker`, or \
         `dockerd &`) or point DOCKER_HOST at a running one"
    )]
    Unreachable {
        /// The underlying failure.
        detail: String,
    },
    /// A call to the engine failed.
    #[error("docker: {what}: {source}")]
    Api {
        /// What quarry was doing.
        what: String,
        /// The engine's answer.
        #[source]
        source: bollard::errors::Error,
    },
    /// An image build failed.
    #[error("building {tag} from {dir}: {message}")]
    Build {
        /// The image tag.
        tag: String,
        /// The build directory.
        dir: String,
        /// The builder's error, with the last lines of its output.
        message: String,
    },
    /// Reading a build directory failed.
    #[error("reading build directory {dir}: {source}")]
    Context {
        /// The build directory.
        dir: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
}

impl DockerError {
    pub(crate) fn api(what: impl Into<String>, source: bollard::errors::Error) -> Self {
        DockerError::Api {
            what: what.into(),
            source,
        }
    }
}

/// A connection to the local Docker engine.
#[derive(Debug, Clone)]
pub struct Engine {
    docker: Docker,
}

impl Engine {
    /// Connects to the local engine (`DOCKER_HOST` or the default socket), negotiates the API
    /// version and pings it; any failure is [`DockerError::Unreachable`].
    pub async fn connect() -> Result<Engine, DockerError> {
        let unreachable = |e: bollard::errors::Error| DockerError::Unreachable {
            detail: e.to_string(),
        };
        let docker = Docker::connect_with_local_defaults().map_err(unreachable)?;
        let docker = tokio::time::timeout(std::time::Duration::from_secs(10), async {
            let docker = docker.negotiate_version().await.map_err(unreachable)?;
            docker.ping().await.map_err(unreachable)?;
            Ok::<_, DockerError>(docker)
        })
        .await
        .map_err(|_| DockerError::Unreachable {
            detail: "no answer within 10 s".to_owned(),
        })??;
        Ok(Engine { docker })
    }

    /// Connects to the engine on the unix socket `socket` (a server's `paths.docker_socket`),
    /// as [`Engine::connect`] does otherwise. Requests may take up to ten minutes (image
    /// builds and loads).
    pub async fn connect_at(socket: &std::path::Path) -> Result<Engine, DockerError> {
        let unreachable = |e: bollard::errors::Error| DockerError::Unreachable {
            detail: format!("{}: {e}", socket.display()),
        };
        let docker = Docker::connect_with_socket(
            &socket.display().to_string(),
            600,
            bollard::API_DEFAULT_VERSION,
        )
        .map_err(unreachable)?;
        let docker = tokio::time::timeout(std::time::Duration::from_secs(10), async {
            let docker = docker.negotiate_version().await.map_err(unreachable)?;
            docker.ping().await.map_err(unreachable)?;
            Ok::<_, DockerError>(docker)
        })
        .await
        .map_err(|_| DockerError::Unreachable {
            detail: format!("{}: no answer within 10 s", socket.display()),
        })??;
        Ok(Engine { docker })
    }

    /// The bollard client.
    pub fn client(&self) -> &Docker {
        &self.docker
    }
}

/// Whether a bollard error is the engine's 404.
pub(crate) fn is_not_found(e: &bollard::errors::Error) -> bool {
    matches!(
        e,
        bollard::errors::Error::DockerResponseServerError {
            status_code: 404,
            ..
        }
    )
}
