//! Image transfer against the machine's real Docker engine: a `docker save` stream recorded
//! as the sender sends it, the image removed, then the stream replayed into an
//! `ImageReceiver` on that engine: whole, it loads the image; tampered, reordered, aborted
//! or abandoned midway, it loads nothing. (The transfer between two engines over the RPC
//! Bulk lane is tests/tests/lab_images.rs.)

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use quarry_node::docker::image::{ensure_image, image_exists};
use quarry_node::docker::Engine;
use quarry_node::images::wire::{self, LoadReport, Message};
use quarry_node::images::{
    self, send_images, Cancel, Carrier, CarrierError, ImageReceiver, Progress, TransferError,
};
use quarry_node::rpc::server::BoxFuture;
use quarry_node::types::ImageSource;

/// A carrier that keeps every request and answers as a receiver that took it would.
#[derive(Default)]
struct Recorder {
    requests: Vec<Vec<u8>>,
}

impl Carrier for Recorder {
    fn call<'a>(&'a mut self, request: &'a [u8]) -> BoxFuture<'a, Result<Vec<u8>, CarrierError>> {
        Box::pin(async move {
            self.requests.push(request.to_vec());
            let answer = match wire::decode(request).map_err(CarrierError::Remote)? {
                Message::End(end) => serde_json::to_vec(&LoadReport {
                    images: Vec::new(),
                    bytes: end.bytes,
                })
                .expect("json"),
                _ => Vec::new(),
            };
            Ok(answer)
        })
    }
}

/// A carrier straight into a receiver in this process.
struct Direct(Arc<ImageReceiver>);

impl Carrier for Direct {
    fn call<'a>(&'a mut self, request: &'a [u8]) -> BoxFuture<'a, Result<Vec<u8>, CarrierError>> {
        Box::pin(async move {
            self.0
                .handle("test", request)
                .await
                .map_err(CarrierError::Remote)
        })
    }
}

/// Removes the test image however the test ends (a failed assertion included).
struct Cleanup(String);

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = std::process::Command::new("docker")
            .args(["rmi", "-f", &self.0])
            .output();
    }
}

/// Builds a small image (static busybox and a stamp, ~2 MB) under a tag of its own.
async fn test_image(engine: &Engine, dir: &std::path::Path) -> String {
    let ctx = dir.join("img");
    std::fs::create_dir_all(&ctx).expect("ctx");
    std::fs::copy("/bin/busybox", ctx.join("busybox"))
        .expect("busybox-static is installed (scripts/setup)");
    let stamp = hex::encode(quarry_node::pki::random_bytes());
    std::fs::write(ctx.join("stamp"), &stamp).expect("stamp");
    std::fs::write(
        ctx.join("Dockerfile"),
        "FROM scratch\nCOPY busybox /bin/busybox\nCOPY stamp /stamp\n",
    )
    .expect("Dockerfile");
    let tag = format!("quarry-test/images-{}:{}", std::process::id(), &stamp[..12]);
    let source = ImageSource::Build {
        dir: "img".to_owned(),
        digest: stamp,
        tag: tag.clone(),
    };
    ensure_image(engine, "images-test", dir, &source, &mut |_| {})
        .await
        .expect("build the test image");
    tag
}

/// Records the transfer of `tag`, then removes the image from the engine.
async fn record_then_remove(engine: &Engine, tag: &str) -> Vec<Vec<u8>> {
    let mut rec = Recorder::default();
    let mut seen: Vec<Progress> = Vec::new();
    let report = send_images(
        engine,
        &[tag.to_owned()],
        &mut rec,
        &mut |p| seen.push(p),
        &Cancel::new(),
    )
    .await
    .expect("send");
    // Progress grows chunk by chunk and ends done with the whole stream.
    assert!(seen.len() >= 3, "{seen:?}");
    assert!(seen.windows(2).all(|w| w[0].sent <= w[1].sent));
    let last = seen.last().expect("progress");
    assert!(last.done && last.sent == report.bytes, "{last:?}");
    assert!(
        seen[0].estimate.is_some_and(|e| e > 1 << 20),
        "{:?}",
        seen[0]
    );
    images::remove(engine, &[tag.to_owned()])
        .await
        .expect("rmi");
    assert!(!image_exists(engine, tag).await.expect("inspect"));
    rec.requests
}

/// Replays requests into a receiver; the answer to the last one.
async fn replay(rx: &ImageReceiver, requests: &[Vec<u8>]) -> Result<Vec<u8>, String> {
    let mut last = Ok(Vec::new());
    for r in requests {
        last = rx.handle("replay", r).await;
        if last.is_err() {
            break;
        }
    }
    last
}

fn chunk_positions(requests: &[Vec<u8>]) -> Vec<usize> {
    requests
        .iter()
        .enumerate()
        .filter(|(_, r)| matches!(wire::decode(r), Ok(Message::Chunk { .. })))
        .map(|(i, _)| i)
        .collect()
}

async fn wait_closed(rx: &ImageReceiver) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while rx.open_transfers() > 0 {
        assert!(
            Instant::now() < deadline,
            "the receiver still has {} transfer(s) open after 20 s",
            rx.open_transfers()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_whole_stream_loads_and_a_damaged_or_unfinished_one_loads_nothing() {
    let engine = Engine::connect().await.expect("a Docker engine runs here");
    let tmp = tempfile::tempdir().expect("tmp");
    let tag = test_image(&engine, tmp.path()).await;
    let _cleanup = Cleanup(tag.clone());
    let requests = record_then_remove(&engine, &tag).await;
    let chunks = chunk_positions(&requests);
    assert!(chunks.len() >= 2, "the image spans several chunks");
    let rx = ImageReceiver::with_idle_timeout(engine.clone(), Duration::from_secs(1));

    // One byte flipped in the first chunk (already handed to the engine when the end comes).
    let mut tampered = requests.clone();
    let first = tampered[chunks[0]].len() - 1000;
    tampered[chunks[0]][first] ^= 0x01;
    let e = replay(&rx, &tampered).await.expect_err("tampered");
    assert!(e.contains("integrity check failed"), "{e}");
    wait_closed(&rx).await;
    assert!(
        !image_exists(&engine, &tag).await.expect("inspect"),
        "a tampered stream loaded"
    );

    // A chunk left out.
    let mut skipped = requests.clone();
    skipped.remove(chunks[0]);
    let e = replay(&rx, &skipped).await.expect_err("skipped");
    assert!(e.contains("chunk 1 arrived where 0 was due"), "{e}");
    wait_closed(&rx).await;
    assert!(!image_exists(&engine, &tag).await.expect("inspect"));

    // Every byte, then an abort instead of the end.
    let mut aborted = requests[..requests.len() - 1].to_vec();
    let Ok(Message::Begin(begin)) = wire::decode(&requests[0]) else {
        panic!("the first request is Begin")
    };
    aborted.push(wire::encode(&Message::Abort(wire::Abort {
        id: begin.id,
        reason: "test".to_owned(),
    })));
    replay(&rx, &aborted).await.expect("the abort is answered");
    wait_closed(&rx).await;
    assert!(!image_exists(&engine, &tag).await.expect("inspect"));

    // Every byte and no end: the sender vanished; the receiver gives up after its idle time.
    replay(&rx, &requests[..requests.len() - 1])
        .await
        .expect("chunks taken");
    assert_eq!(rx.open_transfers(), 1);
    wait_closed(&rx).await;
    assert!(!image_exists(&engine, &tag).await.expect("inspect"));

    // The whole stream loads, and the answer names the image.
    let answer = replay(&rx, &requests).await.expect("loads");
    let report: LoadReport = serde_json::from_slice(&answer).expect("report");
    assert_eq!(report.images, vec![tag.clone()]);
    assert!(image_exists(&engine, &tag).await.expect("inspect"));
    // The stack label survived save and load: the server "has" it as the stack's image.
    let of_stack = images::stack_images(&engine, "images-test")
        .await
        .expect("list");
    assert!(of_stack.contains(&tag), "{of_stack:?}");
    let other = images::stack_images(&engine, "no-such-stack")
        .await
        .expect("list");
    assert!(other.is_empty(), "{other:?}");
    wait_closed(&rx).await;

    // Replaying the same transfer id after it ended is refused as unknown at its first chunk.
    let e = rx
        .handle("replay", &requests[chunks[0]])
        .await
        .expect_err("ended");
    assert!(e.contains("is not open here"), "{e}");
}

#[tokio::test]
async fn a_cancelled_transfer_stops_and_closes_the_receivers_side() {
    let engine = Engine::connect().await.expect("a Docker engine runs here");
    let tmp = tempfile::tempdir().expect("tmp");
    let tag = test_image(&engine, tmp.path()).await;
    let _cleanup = Cleanup(tag.clone());
    let rx = Arc::new(ImageReceiver::new(engine.clone()));
    let cancel = Cancel::new();
    let progress: Arc<Mutex<Vec<Progress>>> = Arc::default();
    let (c, p) = (cancel.clone(), progress.clone());
    let e = send_images(
        &engine,
        std::slice::from_ref(&tag),
        &mut Direct(rx.clone()),
        &mut |prog| {
            p.lock().expect("lock").push(prog);
            c.cancel(); // after the first chunk
        },
        &cancel,
    )
    .await
    .expect_err("cancelled");
    assert!(
        matches!(e, TransferError::Cancelled { sent } if sent == 1 << 20),
        "{e}"
    );
    assert_eq!(progress.lock().expect("lock").len(), 1);
    wait_closed(&rx).await;

    // Unknown images are refused before anything is sent.
    let e = send_images(
        &engine,
        &["quarry-test/none:0".to_owned()],
        &mut Direct(rx.clone()),
        &mut |_| {},
        &Cancel::new(),
    )
    .await
    .expect_err("no image");
    assert!(matches!(e, TransferError::NoSuchImage(_)), "{e}");
    assert_eq!(rx.open_transfers(), 0);

    // Uncancelled, the same link carries it to the end (the engine already has it: a load of
    // a present image is a no-op that still checks the stream).
    let report = send_images(
        &engine,
        std::slice::from_ref(&tag),
        &mut Direct(rx.clone()),
        &mut |_| {},
        &Cancel::new(),
    )
    .await
    .expect("sent");
    assert_eq!(report.images, vec![tag.clone()]);
}
