//! A small HTTP/1.1 client for the API (one request per connection), over TCP or the local
//! socket: what the `quarry` CLI and the tests use. Small on purpose: the API answers JSON
//! with a content length, and the CLI needs nothing more.

use std::path::PathBuf;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Where a server's API is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// `http://host:port`.
    Tcp(String),
    /// The local socket.
    Unix(PathBuf),
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Endpoint::Tcp(a) => write!(f, "http://{a}"),
            Endpoint::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}

impl std::str::FromStr for Endpoint {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if let Some(p) = s.strip_prefix("unix:") {
            return Ok(Endpoint::Unix(p.into()));
        }
        let rest = s.strip_prefix("http://").unwrap_or(s).trim_end_matches('/');
        if s.starts_with("https://") || s.starts_with("ssh://") {
            return Err(format!(
                "{s}: only http://HOST:PORT and unix:PATH are supported for now"
            ));
        }
        if rest.is_empty() || rest.contains('/') {
            return Err(format!("{s} is not http://HOST:PORT"));
        }
        let bare = rest.trim_start_matches('[').trim_end_matches(']');
        let with_port = if let Ok(ip) = bare.parse::<std::net::IpAddr>() {
            // An IP alone: an IPv6 one needs its brackets before the port.
            std::net::SocketAddr::new(ip, 7700).to_string()
        } else if rest.contains(':') {
            rest.to_owned()
        } else {
            format!("{rest}:7700")
        };
        Ok(Endpoint::Tcp(with_port))
    }
}

/// An answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// The HTTP status.
    pub status: u16,
    /// The body.
    pub body: Vec<u8>,
}

/// Why a request got no answer.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Nothing listens there, or the connection failed.
    #[error("cannot reach the quarry server at {endpoint}: {cause}")]
    Unreachable {
        /// Where.
        endpoint: Endpoint,
        /// The cause.
        cause: std::io::Error,
    },
    /// Something answered, but not HTTP.
    #[error("{endpoint} did not answer HTTP: {why}")]
    Garbled {
        /// Where.
        endpoint: Endpoint,
        /// What was wrong.
        why: String,
    },
}

/// How long a request may take.
pub const TIMEOUT: Duration = Duration::from_secs(15);

/// `GET path` with an optional bearer token.
pub async fn get(
    endpoint: &Endpoint,
    path: &str,
    token: Option<&str>,
) -> Result<Reply, ClientError> {
    request(endpoint, "GET", path, None, token).await
}

/// `METHOD path` with an optional JSON body and bearer token.
pub async fn request(
    endpoint: &Endpoint,
    method: &str,
    path: &str,
    json: Option<&[u8]>,
    token: Option<&str>,
) -> Result<Reply, ClientError> {
    let body = json.map(|b| (b, "application/json"));
    request_with(endpoint, method, path, body, token, TIMEOUT).await
}

/// `METHOD path` with an optional body of the given content type, a bearer token, and a
/// limit on the whole exchange (a deploy's upload waits for the leader's answer).
pub async fn request_with(
    endpoint: &Endpoint,
    method: &str,
    path: &str,
    body: Option<(&[u8], &str)>,
    token: Option<&str>,
    limit: Duration,
) -> Result<Reply, ClientError> {
    let unreachable = |cause| ClientError::Unreachable {
        endpoint: endpoint.clone(),
        cause,
    };
    let host = match endpoint {
        Endpoint::Tcp(a) => a.clone(),
        Endpoint::Unix(_) => "localhost".to_owned(),
    };
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\nAccept: application/json\r\n"
    );
    if let Some(t) = token {
        req.push_str(&format!("Authorization: Bearer {t}\r\n"));
    }
    if let Some((b, content_type)) = body {
        req.push_str(&format!(
            "Content-Type: {content_type}\r\nContent-Length: {}\r\n",
            b.len()
        ));
    }
    req.push_str("\r\n");
    let mut req = req.into_bytes();
    req.extend_from_slice(body.map(|(b, _)| b).unwrap_or_default());
    let fut = async {
        let raw = match endpoint {
            Endpoint::Tcp(a) => exchange(tokio::net::TcpStream::connect(a).await?, &req).await?,
            Endpoint::Unix(p) => exchange(tokio::net::UnixStream::connect(p).await?, &req).await?,
        };
        Ok::<_, std::io::Error>(raw)
    };
    let raw = tokio::time::timeout(limit, fut)
        .await
        .map_err(|_| {
            unreachable(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("no answer in {} s", limit.as_secs()),
            ))
        })?
        .map_err(unreachable)?;
    parse(&raw).map_err(|why| ClientError::Garbled {
        endpoint: endpoint.clone(),
        why,
    })
}

async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(s: S, req: &[u8]) -> std::io::Result<Vec<u8>> {
    // Written while the answer is read: a server refusing a body from its announced length
    // (413) answers and closes before reading it, and the rest of the write then fails.
    let (r, mut w) = tokio::io::split(s);
    let mut r = r.take(16 << 20);
    let mut buf = Vec::new();
    let (wrote, read) = tokio::join!(
        async {
            w.write_all(req).await?;
            w.flush().await
        },
        r.read_to_end(&mut buf)
    );
    match (wrote, read) {
        (_, Ok(_)) if !buf.is_empty() => Ok(buf),
        (Err(e), _) | (Ok(()), Err(e)) => Err(e),
        (Ok(()), Ok(_)) => Ok(buf),
    }
}

fn parse(raw: &[u8]) -> Result<Reply, String> {
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or("no end of headers")?;
    let head = std::str::from_utf8(&raw[..end]).map_err(|_| "headers are not text")?;
    let mut lines = head.split("\r\n");
    let status: u16 = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .ok_or("no status line")?;
    let mut body = raw[end + 4..].to_vec();
    let chunked = lines.any(|l| {
        let l = l.to_ascii_lowercase();
        l.starts_with("transfer-encoding:") && l.contains("chunked")
    });
    if chunked {
        body = dechunk(&body)?;
    }
    Ok(Reply { status, body })
}

fn dechunk(mut b: &[u8]) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    loop {
        let nl = b.windows(2).position(|w| w == b"\r\n").ok_or("bad chunk")?;
        let size = std::str::from_utf8(&b[..nl])
            .ok()
            .and_then(|s| usize::from_str_radix(s.split(';').next()?.trim(), 16).ok())
            .ok_or("bad chunk size")?;
        b = &b[nl + 2..];
        if size == 0 {
            return Ok(out);
        }
        if b.len() < size + 2 {
            return Err("short chunk".to_owned());
        }
        out.extend_from_slice(&b[..size]);
        b = &b[size + 2..];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_parse_with_the_default_port() {
        assert_eq!(
            "http://10.0.0.1".parse(),
            Ok(Endpoint::Tcp("10.0.0.1:7700".to_owned()))
        );
        assert_eq!(
            "10.0.0.1:8000".parse(),
            Ok(Endpoint::Tcp("10.0.0.1:8000".to_owned()))
        );
        assert_eq!(
            "unix:/run/q.sock".parse(),
            Ok(Endpoint::Unix("/run/q.sock".into()))
        );
        assert!("ssh://quarry@h".parse::<Endpoint>().is_err());
    }

    #[test]
    fn an_ipv6_endpoint_gets_its_brackets_and_the_default_port() {
        for s in ["http://[fd00::1]", "fd00::1", "[fd00::1]"] {
            assert_eq!(
                s.parse(),
                Ok(Endpoint::Tcp("[fd00::1]:7700".to_owned())),
                "{s}"
            );
        }
        assert_eq!(
            "http://[fd00::1]:8000/".parse(),
            Ok(Endpoint::Tcp("[fd00::1]:8000".to_owned()))
        );
    }

    #[test]
    fn replies_parse_plain_and_chunked() {
        let r = parse(b"HTTP/1.1 401 Unauthorized\r\ncontent-length: 2\r\n\r\n{}").expect("plain");
        assert_eq!((r.status, r.body.as_slice()), (401, &b"{}"[..]));
        let r = parse(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n1\r\nd\r\n0\r\n\r\n",
        )
        .expect("chunked");
        assert_eq!(r.body, b"abcd");
    }
}
