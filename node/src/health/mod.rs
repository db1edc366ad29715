//! Health probes, run from the host against a replica's published main port (DESIGN.md:
//! images need no HEALTHCHECK of their own).
//!
//! - `http`: a GET of the path over HTTP/1.0; healthy on a 2xx or 3xx status line.
//! - `tcp` (and any replica with ports but no health check): a TCP connect.
//!
//! [`wait_healthy`] is what a DEPLOY waits on: it probes every target until each has answered
//! once, or the deadline passes; it returns which ones made it. A replica counts as healthy
//! after one good probe; `retries` is for a replica that was healthy and starts failing
//! (a long-running checker), which the local runtime leaves to nginx's passive checks.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::types::{Health, Probe, SliceId};

/// Why a probe failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProbeError {
    /// No connection.
    #[error("connect to {addr}: {reason}")]
    Connect {
        /// The address probed.
        addr: SocketAddr,
        /// The error.
        reason: String,
    },
    /// No complete answer in time.
    #[error("no answer from {addr} within {timeout_ms} ms")]
    Timeout {
        /// The address probed.
        addr: SocketAddr,
        /// The timeout.
        timeout_ms: u64,
    },
    /// An answer that is not a 2xx/3xx HTTP status.
    #[error("{addr} answered {status:?}")]
    Status {
        /// The address probed.
        addr: SocketAddr,
        /// The status line (or what came instead).
        status: String,
    },
}

/// Probes `addr` once.
pub async fn probe(addr: SocketAddr, probe: &Probe, timeout: Duration) -> Result<(), ProbeError> {
    let timed_out = || ProbeError::Timeout {
        addr,
        timeout_ms: timeout.as_millis() as u64,
    };
    tokio::time::timeout(timeout, probe_inner(addr, probe))
        .await
        .map_err(|_| timed_out())?
}

async fn probe_inner(addr: SocketAddr, probe: &Probe) -> Result<(), ProbeError> {
    let mut stream = TcpStream::connect(addr)
        .await
        .map_err(|e| ProbeError::Connect {
            addr,
            reason: e.to_string(),
        })?;
    let path = match probe {
        Probe::Tcp => return tcp_holds(addr, &mut stream).await,
        Probe::Http(path) => path,
    };
    let request =
        format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\nUser-Agent: quarry-health\r\n\r\n");
    let io_err = |e: std::io::Error| ProbeError::Connect {
        addr,
        reason: e.to_string(),
    };
    stream.write_all(request.as_bytes()).await.map_err(io_err)?;
    let mut buf = Vec::with_capacity(256);
    let mut chunk = [0u8; 256];
    // Read until the status line is complete (or the peer closes).
    while !buf.contains(&b'\n') && buf.len() < 4096 {
        let n = stream.read(&mut chunk).await.map_err(io_err)?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let line = String::from_utf8_lossy(&buf);
    let line = line.lines().next().unwrap_or("").trim().to_owned();
    match status_code(&line) {
        Some(code) if (200..400).contains(&code) => Ok(()),
        _ => Err(ProbeError::Status { addr, status: line }),
    }
}

/// How long a TCP probe watches a fresh connection for an immediate close.
const TCP_SETTLE: Duration = Duration::from_millis(100);

/// A published port answers a connect even while nothing listens in the container (Docker's
/// userland proxy accepts, fails to reach the container, and closes). So a TCP probe counts
/// as healthy only if the connection is not closed at once: data arrives, or it stays open.
async fn tcp_holds(addr: SocketAddr, stream: &mut TcpStream) -> Result<(), ProbeError> {
    let mut byte = [0u8; 1];
    match tokio::time::timeout(TCP_SETTLE, stream.read(&mut byte)).await {
        Err(_) | Ok(Ok(1..)) => Ok(()),
        Ok(Ok(0)) => Err(ProbeError::Connect {
            addr,
            reason: "closed at once (nothing listening behind the published port)".to_owned(),
        }),
        Ok(Err(e)) => Err(ProbeError::Connect {
            addr,
            reason: e.to_string(),
        }),
    }
}

/// The status code of an HTTP status line (`HTTP/1.1 200 OK` -> 200).
fn status_code(line: &str) -> Option<u16> {
    let mut parts = line.split_whitespace();
    let proto = parts.next()?;
    if !proto.starts_with("HTTP/") {
        return None;
    }
    parts.next()?.parse().ok()
}

/// One replica to wait for.
#[derive(Debug, Clone)]
pub struct Target {
    /// The replica's slice.
    pub slice: SliceId,
    /// Its published main port on the host, if it has ports.
    pub addr: Option<SocketAddr>,
    /// Its health check (`None`: a TCP connect when it has ports).
    pub health: Option<Health>,
}

impl Target {
    /// The probe this target gets, if any (a replica without ports has none).
    pub fn effective_probe(&self) -> Option<(SocketAddr, Probe, Duration)> {
        let addr = self.addr?;
        Some(match &self.health {
            Some(h) => (
                addr,
                h.probe.clone(),
                Duration::from_millis(h.timeout_ms.max(1)),
            ),
            None => (addr, Probe::Tcp, Duration::from_secs(1)),
        })
    }
}

/// The outcome for one target of [`wait_healthy`].
#[derive(Debug, Clone)]
pub struct Outcome {
    /// The replica.
    pub slice: SliceId,
    /// `Ok` once a probe passed; else the last failure.
    pub result: Result<(), String>,
}

/// How often a replica that is not healthy yet is probed again while waiting.
const WAIT_POLL: Duration = Duration::from_millis(50);

/// Probes all targets concurrently until each passes once or `deadline` passes.
pub async fn wait_healthy(targets: &[Target], deadline: Instant) -> Vec<Outcome> {
    let waits = targets.iter().map(|t| async move {
        let Some((addr, probe_kind, timeout)) = t.effective_probe() else {
            return Outcome {
                slice: t.slice.clone(),
                result: Ok(()),
            };
        };
        loop {
            let err = match probe(addr, &probe_kind, timeout).await {
                Ok(()) => {
                    return Outcome {
                        slice: t.slice.clone(),
                        result: Ok(()),
                    }
                }
                Err(e) => e.to_string(),
            };
            if Instant::now() + WAIT_POLL >= deadline {
                return Outcome {
                    slice: t.slice.clone(),
                    result: Err(err),
                };
            }
            tokio::time::sleep(WAIT_POLL).await;
        }
    });
    futures_util::future::join_all(waits).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    #[test]
    fn status_line_parsing_accepts_only_http_lines() {
        assert_eq!(status_code("HTTP/1.1 200 OK"), Some(200));
        assert_eq!(status_code("HTTP/1.0 302 Found"), Some(302));
        assert_eq!(status_code("SSH-2.0-OpenSSH"), None);
        assert_eq!(status_code(""), None);
    }

    async fn serve_once(answer: &'static str) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                let mut buf = [0u8; 512];
                let _ = s.read(&mut buf).await;
                let _ = s.write_all(answer.as_bytes()).await;
            }
        });
        addr
    }

    #[tokio::test]
    async fn http_probe_is_healthy_on_2xx_and_3xx_only() {
        let t = Duration::from_secs(2);
        let ok = serve_once("HTTP/1.0 200 OK\r\n\r\nhi").await;
        let redirect = serve_once("HTTP/1.1 301 Moved\r\n\r\n").await;
        let broken = serve_once("HTTP/1.1 500 Oops\r\n\r\n").await;
        assert_eq!(probe(ok, &Probe::Http("/".into()), t).await, Ok(()));
        assert_eq!(probe(redirect, &Probe::Http("/".into()), t).await, Ok(()));
        assert!(matches!(
            probe(broken, &Probe::Http("/".into()), t).await,
            Err(ProbeError::Status { .. })
        ));
    }

    #[tokio::test]
    async fn tcp_probe_fails_on_a_closed_port() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        drop(listener);
        let r = probe(addr, &Probe::Tcp, Duration::from_secs(1)).await;
        assert!(matches!(r, Err(ProbeError::Connect { .. })), "{r:?}");
    }

    #[tokio::test]
    async fn tcp_probe_fails_when_the_connection_is_closed_at_once() {
        // What Docker's proxy does on a published port with nothing listening behind it.
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            while let Ok((s, _)) = listener.accept().await {
                drop(s);
            }
        });
        let r = probe(addr, &Probe::Tcp, Duration::from_secs(1)).await;
        assert!(matches!(r, Err(ProbeError::Connect { .. })), "{r:?}");
        let open = serve_once("").await;
        assert_eq!(
            probe(open, &Probe::Tcp, Duration::from_secs(1)).await,
            Ok(())
        );
    }

    #[tokio::test]
    async fn wait_healthy_reports_the_replica_that_never_answers() {
        let good = serve_once("HTTP/1.0 200 OK\r\n\r\n").await;
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let dead = listener.local_addr().expect("addr");
        drop(listener);
        let targets = [
            Target {
                slice: SliceId("a".into()),
                addr: Some(good),
                health: None,
            },
            Target {
                slice: SliceId("b".into()),
                addr: Some(dead),
                health: None,
            },
        ];
        let out = wait_healthy(&targets, Instant::now() + Duration::from_millis(300)).await;
        assert!(out[0].result.is_ok());
        assert!(out[1].result.is_err());
    }
}
