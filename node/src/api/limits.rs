//! How large and how deep an API request's JSON body may be.
//!
//! A body reaches the API from anyone holding the admin token or the local socket, and from
//! a careless script: it is untrusted input. Each limit is checked *before* the work it
//! bounds: the announced `Content-Length` before anything is read, the bytes read against the
//! cap as they arrive (a chunked body announces nothing), and the nesting depth by a flat scan
//! of the bytes before serde_json builds anything of them. Every refusal names the limit and
//! what was seen.
//!
//! | limit | default | answer |
//! | --- | --- | --- |
//! | [`MAX_JSON_BODY`] | 1 MiB | 413, naming the size seen and the limit |
//! | [`MAX_JSON_DEPTH`] | 64 | 400, naming the depth and the limit |
//!
//! A source upload (`POST /v1/deploy`) is not JSON and keeps its own cap
//! ([`crate::source::MAX_SOURCE_BYTES`]).

use axum::extract::Request;
use axum::http::{header, StatusCode};
use serde::de::DeserializeOwned;

use crate::spec::limits::bytes;

/// The largest JSON body the API reads (1 MiB). An env change is the largest real one: the
/// whole of a stack's env is at most [`crate::spec::limits::MAX_ENV_BYTES`] (1 MiB) too.
pub const MAX_JSON_BODY: usize = 1 << 20;

/// The deepest nesting of arrays and objects in a JSON body (64). The API's bodies need 2;
/// serde_json recurses once per level, so the depth is bounded before it runs.
pub const MAX_JSON_DEPTH: usize = 64;

/// Why a JSON body was not taken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BodyFault {
    /// Above [`MAX_JSON_BODY`]: `seen` is the announced length, or the bytes read when the
    /// cap was passed (a body without a length).
    #[error(
        "the request body is {} bytes, above the limit of {} for a JSON body (MAX_JSON_BODY)",
        if *.announced { format!("{seen}") } else { format!("more than {seen}") },
        bytes(MAX_JSON_BODY)
    )]
    TooLarge {
        /// The size seen.
        seen: usize,
        /// Whether `seen` is the announced `Content-Length` (else a lower bound).
        announced: bool,
    },
    /// Nested deeper than [`MAX_JSON_DEPTH`].
    #[error(
        "the request body nests arrays or objects {depth} deep at byte {at}, above the limit \
         of {MAX_JSON_DEPTH} (MAX_JSON_DEPTH)"
    )]
    TooDeep {
        /// The depth reached (the first level above the limit).
        depth: usize,
        /// The byte offset where it was reached.
        at: usize,
    },
    /// The body could not be read (the connection failed).
    #[error("the request body could not be read: {0}")]
    Unread(String),
    /// Not JSON of the expected shape.
    #[error("{0}")]
    NotJson(String),
}

impl BodyFault {
    /// The HTTP status of the refusal.
    pub fn status(&self) -> StatusCode {
        match self {
            BodyFault::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            BodyFault::TooDeep { .. } | BodyFault::Unread(_) | BodyFault::NotJson(_) => {
                StatusCode::BAD_REQUEST
            }
        }
    }
}

/// The depth check: where the nesting of `[` and `{` (outside strings) first passes
/// [`MAX_JSON_DEPTH`]. A flat scan: it neither recurses nor allocates.
pub fn check_depth(body: &[u8]) -> Result<(), BodyFault> {
    let (mut depth, mut in_str, mut escaped) = (0usize, false, false);
    for (at, &b) in body.iter().enumerate() {
        if in_str {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_str = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_str = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > MAX_JSON_DEPTH {
                    return Err(BodyFault::TooDeep { depth, at });
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    Ok(())
}

/// Read `req`'s body as JSON of type `T`, within [`MAX_JSON_BODY`] and [`MAX_JSON_DEPTH`].
pub async fn json_body<T: DeserializeOwned>(req: Request) -> Result<T, BodyFault> {
    let announced = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<usize>().ok());
    if let Some(seen) = announced.filter(|&n| n > MAX_JSON_BODY) {
        return Err(BodyFault::TooLarge {
            seen,
            announced: true,
        });
    }
    let body = read_capped(req.into_body()).await?;
    check_depth(&body)?;
    serde_json::from_slice(&body).map_err(|e| BodyFault::NotJson(e.to_string()))
}

/// The body's bytes, refusing it as soon as more than [`MAX_JSON_BODY`] arrived.
async fn read_capped(body: axum::body::Body) -> Result<Vec<u8>, BodyFault> {
    use futures_util::StreamExt;
    let mut chunks = body.into_data_stream();
    let mut out = Vec::new();
    while let Some(data) = chunks.next().await {
        let data = data.map_err(|e| BodyFault::Unread(e.to_string()))?;
        if out.len() + data.len() > MAX_JSON_BODY {
            return Err(BodyFault::TooLarge {
                seen: MAX_JSON_BODY,
                announced: false,
            });
        }
        out.extend_from_slice(&data);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn depth_counts_brackets_outside_strings_only() {
        let ok = format!(
            "{}{}",
            "[".repeat(MAX_JSON_DEPTH),
            "]".repeat(MAX_JSON_DEPTH)
        );
        check_depth(ok.as_bytes()).expect("at the limit");
        let deep = "[".repeat(MAX_JSON_DEPTH + 1);
        assert_eq!(
            check_depth(deep.as_bytes()),
            Err(BodyFault::TooDeep {
                depth: MAX_JSON_DEPTH + 1,
                at: MAX_JSON_DEPTH
            })
        );
        let in_string = format!("{{\"k\": \"{}\\\"\"}}", "[".repeat(1000));
        check_depth(in_string.as_bytes()).expect("brackets in a string do not nest");
    }
}
