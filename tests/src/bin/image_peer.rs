//! `image-peer`: quarry's image transfer run inside a lab host, for the lab tests (quarryd
//! will do the same over its own RPC listener).
//!
//! ```text
//! image-peer serve ADDR PKI_DIR                  an RPC listener whose Bulk lane loads images
//! image-peer send ADDR PKI_DIR [--cancel-after-first-chunk] IMAGE...
//!                                                send images to a serving peer over the Bulk lane
//! image-peer remove IMAGE...                     remove images (a plan's removals)
//! ```
//!
//! The engine is the one `DOCKER_HOST` names. `PKI_DIR` holds `ca.pem`, `cert.pem` and
//! `key.pem`, a member identity of the test's cluster CA. `send` prints one `progress SENT
//! ESTIMATE` line per chunk and `sent <json report>` at the end; errors go to stderr with exit
//! status 1.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use anyhow::{bail, Context};
use quarry_node::bulk::BulkHandler;
use quarry_node::docker::Engine;
use quarry_node::images::{self, Cancel, ImageReceiver};
use quarry_node::pki::NodeIdentity;
use quarry_node::rpc::{Dialer, Handlers, Lane, RpcServer};

const USAGE: &str = "usage: image-peer serve ADDR PKI_DIR | image-peer send ADDR PKI_DIR \
                     [--cancel-after-first-chunk] IMAGE... | image-peer remove IMAGE...";

fn identity(dir: &Path) -> anyhow::Result<NodeIdentity> {
    let read = |f: &str| {
        std::fs::read_to_string(dir.join(f))
            .with_context(|| format!("reading {}/{f}", dir.display()))
    };
    Ok(NodeIdentity {
        cert_pem: read("cert.pem")?,
        key_pem: read("key.pem")?,
        ca_pem: read("ca.pem")?,
    })
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    // The receiver's log (transfers begun, loaded, failed) goes to stderr: the host's log.
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .init();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let words: Vec<&str> = args.iter().map(String::as_str).collect();
    match words.as_slice() {
        ["serve", addr, pki] => serve(addr.parse().context("ADDR")?, Path::new(pki)).await,
        ["send", addr, pki, rest @ ..] => {
            let cancel_early = rest.first() == Some(&"--cancel-after-first-chunk");
            let images: Vec<String> = rest
                .iter()
                .filter(|a| !a.starts_with("--"))
                .map(|a| (*a).to_owned())
                .collect();
            send(
                addr.parse().context("ADDR")?,
                Path::new(pki),
                &images,
                cancel_early,
            )
            .await
        }
        ["remove", images @ ..] if !images.is_empty() => {
            let engine = Engine::connect().await?;
            let images: Vec<String> = images.iter().map(|i| (*i).to_owned()).collect();
            images::remove(&engine, &images).await?;
            println!("removed {}", images.join(" "));
            Ok(())
        }
        _ => bail!("{USAGE}"),
    }
}

async fn serve(addr: SocketAddr, pki: &Path) -> anyhow::Result<()> {
    let engine = Engine::connect().await?;
    let bulk = BulkHandler {
        images: Some(Arc::new(ImageReceiver::new(engine))),
        sources: None,
        raft: None,
    };
    let handlers = Handlers {
        bulk: Some(Arc::new(bulk)),
        ..Handlers::default()
    };
    let server = RpcServer::bind(addr, &identity(pki)?, handlers).await?;
    println!("listening on {}", server.local_addr());
    std::future::pending::<()>().await;
    Ok(())
}

async fn send(
    addr: SocketAddr,
    pki: &Path,
    images: &[String],
    cancel_early: bool,
) -> anyhow::Result<()> {
    let engine = Engine::connect().await?;
    let mut lane = Dialer::new(&identity(pki)?)?
        .requests(addr, Lane::Bulk)
        .await?;
    let cancel = Cancel::new();
    let c = cancel.clone();
    let report = images::send_images(
        &engine,
        images,
        &mut lane,
        &mut |p| {
            let estimate = p.estimate.map_or("?".to_owned(), |e| e.to_string());
            println!(
                "progress {} {estimate}{}",
                p.sent,
                if p.done { " done" } else { "" }
            );
            if cancel_early {
                c.cancel();
            }
        },
        &cancel,
    )
    .await?;
    println!("sent {}", serde_json::to_string(&report)?);
    Ok(())
}
