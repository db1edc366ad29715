//! One Docker network per stack and origin (`quarry-STACK` for `quarry start`, `quarry.STACK`
//! for a cluster: [`Origin::network_name`]): containers of a stack reach each other by their
//! alias on it, and nothing else is on it.

use std::collections::HashMap;

use bollard::models::NetworkCreateRequest;

use super::origin::{Origin, ORIGIN};
use super::{is_not_found, DockerError, Engine};
use crate::types::labels;

/// Creates the stack's network unless it exists; returns its name. Creates nothing (and so
/// emits no Docker event) when it is already there.
pub async fn ensure_network(
    engine: &Engine,
    stack: &str,
    origin: &Origin,
) -> Result<String, DockerError> {
    let name = origin.network_name(stack);
    match engine.client().inspect_network(&name, None).await {
        Ok(_) => return Ok(name),
        Err(e) if is_not_found(&e) => {}
        Err(e) => return Err(DockerError::api(format!("inspecting network {name}"), e)),
    }
    let request = NetworkCreateRequest {
        name: name.clone(),
        driver: Some("bridge".to_owned()),
        labels: Some(HashMap::from([
            (labels::STACK.to_owned(), stack.to_owned()),
            (ORIGIN.to_owned(), origin.label().to_owned()),
        ])),
        ..Default::default()
    };
    engine
        .client()
        .create_network(request)
        .await
        .map_err(|e| DockerError::api(format!("creating network {name}"), e))?;
    Ok(name)
}

/// Removes `origin`'s network of the stack; a missing network is not an error.
pub async fn remove_network(
    engine: &Engine,
    stack: &str,
    origin: &Origin,
) -> Result<(), DockerError> {
    let name = origin.network_name(stack);
    match engine.client().remove_network(&name).await {
        Ok(()) => Ok(()),
        Err(e) if is_not_found(&e) => Ok(()),
        Err(e) => Err(DockerError::api(format!("removing network {name}"), e)),
    }
}

/// Whether `origin`'s network of the stack exists.
pub async fn network_exists(
    engine: &Engine,
    stack: &str,
    origin: &Origin,
) -> Result<bool, DockerError> {
    let name = origin.network_name(stack);
    match engine.client().inspect_network(&name, None).await {
        Ok(_) => Ok(true),
        Err(e) if is_not_found(&e) => Ok(false),
        Err(e) => Err(DockerError::api(format!("inspecting network {name}"), e)),
    }
}
