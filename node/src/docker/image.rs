//! Images: a `build:` directory is sent to the engine as a tar context and built with its
//! output streamed line by line to the caller; an image whose tag already exists is not built
//! again (the tag carries the directory's content digest, so an existing tag is the same
//! build, and skipping it keeps a repeated `quarry start` free of Docker events).

use std::collections::HashMap;
use std::path::Path;

use bollard::query_parameters::{BuildImageOptions, CreateImageOptions};
use futures_util::StreamExt;

use super::{is_not_found, DockerError, Engine};
use crate::types::{labels, ImageSource};

/// What [`ensure_image`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageOutcome {
    /// The image was already present.
    Present,
    /// It was built now.
    Built,
    /// It was pulled now.
    Pulled,
}

/// Whether the engine has an image by this reference.
pub async fn image_exists(engine: &Engine, reference: &str) -> Result<bool, DockerError> {
    match engine.client().inspect_image(reference).await {
        Ok(_) => Ok(true),
        Err(e) if is_not_found(&e) => Ok(false),
        Err(e) => Err(DockerError::api(format!("inspecting image {reference}"), e)),
    }
}

/// Makes the image of `source` present: builds a `build:` directory (relative to `stack_dir`)
/// or pulls a named image, unless it is already there. Every line of build output goes to
/// `progress`.
pub async fn ensure_image(
    engine: &Engine,
    stack: &str,
    stack_dir: &Path,
    source: &ImageSource,
    progress: &mut (dyn FnMut(&str) + Send),
) -> Result<ImageOutcome, DockerError> {
    if image_exists(engine, source.reference()).await? {
        return Ok(ImageOutcome::Present);
    }
    match source {
        ImageSource::Build { dir, tag, .. } => {
            build(engine, stack, &stack_dir.join(dir), dir, tag, progress).await?;
            Ok(ImageOutcome::Built)
        }
        ImageSource::Image(name) => {
            pull(engine, name, progress).await?;
            Ok(ImageOutcome::Pulled)
        }
    }
}

/// Packs a directory as a tar build context. Symlinks are followed (a build directory may link
/// a host binary, such as the examples' `busybox -> /bin/busybox`), as `tar -h` does.
fn pack_context(dir: &Path) -> std::io::Result<Vec<u8>> {
    let mut builder = tar::Builder::new(Vec::new());
    builder.follow_symlinks(true);
    builder.append_dir_all(".", dir)?;
    builder.into_inner()
}

async fn build(
    engine: &Engine,
    stack: &str,
    path: &Path,
    dir: &str,
    tag: &str,
    progress: &mut (dyn FnMut(&str) + Send),
) -> Result<(), DockerError> {
    let context_err = |source| DockerError::Context {
        dir: dir.to_owned(),
        source,
    };
    let owned = path.to_owned();
    let context = tokio::task::spawn_blocking(move || pack_context(&owned))
        .await
        .map_err(|e| context_err(std::io::Error::other(e)))?
        .map_err(context_err)?;
    let options = BuildImageOptions {
        dockerfile: "Dockerfile".to_owned(),
        t: Some(tag.to_owned()),
        rm: true,
        forcerm: true,
        labels: Some(HashMap::from([(
            labels::STACK.to_owned(),
            stack.to_owned(),
        )])),
        ..Default::default()
    };
    let mut stream = engine.client().build_image(
        options,
        None,
        Some(bollard::body_full(bytes::Bytes::from(context))),
    );
    // The last lines of output, to explain a failure.
    let mut tail: Vec<String> = Vec::new();
    let fail = |message: String| DockerError::Build {
        tag: tag.to_owned(),
        dir: dir.to_owned(),
        message,
    };
    while let Some(item) = stream.next().await {
        let info = match item {
            Ok(info) => info,
            Err(bollard::errors::Error::DockerStreamError { error }) => {
                return Err(fail(with_tail(&error, &tail)))
            }
            Err(e) => return Err(fail(with_tail(&e.to_string(), &tail))),
        };
        if let Some(text) = info.stream.as_deref() {
            for line in text.lines().filter(|l| !l.trim().is_empty()) {
                progress(line);
                tail.push(line.to_owned());
                if tail.len() > 5 {
                    tail.remove(0);
                }
            }
        }
        if let Some(detail) = info.error_detail {
            let message = detail.message.unwrap_or_else(|| "build failed".to_owned());
            return Err(fail(with_tail(&message, &tail)));
        }
    }
    if !image_exists(engine, tag).await? {
        return Err(fail(with_tail("the build produced no image", &tail)));
    }
    Ok(())
}

fn with_tail(message: &str, tail: &[String]) -> String {
    if tail.is_empty() {
        message.trim().to_owned()
    } else {
        format!("{} (last output: {})", message.trim(), tail.join(" | "))
    }
}

async fn pull(
    engine: &Engine,
    name: &str,
    progress: &mut (dyn FnMut(&str) + Send),
) -> Result<(), DockerError> {
    let options = CreateImageOptions {
        from_image: Some(name.to_owned()),
        ..Default::default()
    };
    let mut stream = engine.client().create_image(Some(options), None, None);
    while let Some(item) = stream.next().await {
        let info = item.map_err(|e| DockerError::api(format!("pulling image {name}"), e))?;
        if let Some(status) = info.status {
            progress(&status);
        }
    }
    Ok(())
}
