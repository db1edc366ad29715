//! The Bulk lane over real mutual TLS on loopback, answered by `BulkHandler`: a source pushed
//! to another server is stored there and fetched back checked; bytes under a wrong hash are
//! refused; image requests reach the image receiver; anything else is refused by name.

use std::sync::Arc;

use quarry_node::bulk::{BulkHandler, Carrier};
use quarry_node::docker::Engine;
use quarry_node::images::wire::{self as image_wire, Begin, Message};
use quarry_node::images::{ImageReceiver, TransferId};
use quarry_node::pki::ClusterCa;
use quarry_node::rpc::{Dialer, Handlers, Lane, RpcServer};
use quarry_node::source::{self, wire, SourceError, SourceHash, SourceStore};

#[tokio::test]
async fn sources_and_images_share_the_bulk_lane_and_every_byte_is_checked() {
    let ca = ClusterCa::generate("bulk").expect("ca");
    let (a, b) = (ca.issue("a").expect("a"), ca.issue("b").expect("b"));
    let tmp = tempfile::tempdir().expect("tmp");
    let store_b = SourceStore::open(&tmp.path().join("b")).expect("store b");
    let engine = Engine::connect().await.expect("a Docker engine runs here");
    let handler = BulkHandler {
        images: Some(Arc::new(ImageReceiver::new(engine))),
        sources: Some(store_b.clone()),
        raft: None,
    };
    let server = RpcServer::bind(
        "127.0.0.1:0".parse().expect("addr"),
        &b,
        Handlers {
            bulk: Some(Arc::new(handler)),
            ..Handlers::default()
        },
    )
    .await
    .expect("bind");
    let mut lane = Dialer::new(&a)
        .expect("dialer")
        .requests(server.local_addr(), Lane::Bulk)
        .await
        .expect("bulk lane");

    // A stack tree pushed from a to b is stored on b, and comes back checked.
    let tree = tmp.path().join("stack");
    std::fs::create_dir_all(tree.join("web")).expect("tree");
    std::fs::write(tree.join("quarry.yml"), "name: x\n").expect("yml");
    std::fs::write(tree.join("web/Dockerfile"), "FROM scratch\n").expect("Dockerfile");
    let tar = source::pack(&tree).expect("pack");
    wire::push(&mut lane, &tar).await.expect("push");
    assert_eq!(store_b.get(&tar.hash).expect("stored on b"), tar.bytes);
    assert_eq!(
        wire::fetch(&mut lane, &tar.hash).await.expect("fetch"),
        tar.bytes
    );

    // Bytes under another hash are refused, and nothing is stored under it.
    let other = SourceHash::of(b"something else");
    let mut lying = b"QSR1P".to_vec();
    lying.extend_from_slice(other.as_str().as_bytes());
    lying.extend_from_slice(&tar.bytes);
    let e = Carrier::call(&mut lane, &lying).await.expect_err("refused");
    assert!(e.to_string().contains("refused: its bytes hash to"), "{e}");
    assert!(!store_b.has(&other));

    // A source b does not have.
    let e = wire::fetch(&mut lane, &other).await.expect_err("unknown");
    assert!(
        matches!(&e, SourceError::Remote(m) if m.contains("no source")),
        "{e}"
    );

    // Image requests reach the image receiver (which wants a transfer to name its images).
    let begin = image_wire::encode(&Message::Begin(Begin {
        id: TransferId::random(),
        images: Vec::new(),
        estimate: None,
    }));
    let e = Carrier::call(&mut lane, &begin).await.expect_err("refused");
    assert!(e.to_string().contains("must name its images"), "{e}");

    // Anything else is refused by name, and the lane stays usable.
    let e = Carrier::call(&mut lane, b"SNAP0000")
        .await
        .expect_err("unknown");
    assert!(e.to_string().contains("unknown bulk request"), "{e}");
    assert_eq!(
        wire::fetch(&mut lane, &tar.hash).await.expect("fetch"),
        tar.bytes
    );
    server.stop();
}
