//! Mutual TLS between members, and the join handshake pinned by the token's CA digest, over
//! real TCP on loopback.

use std::sync::Arc;

use quarry_node::pki::{self, CaDigest, ClusterCa, NodeIdentity, SERVER_NAME};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{TlsAcceptor, TlsConnector};

/// A one-connection server: completes the handshake, answers with the peer's member name (or
/// "joiner"), and returns the handshake result.
async fn serve_once(
    id: &NodeIdentity,
) -> (
    std::net::SocketAddr,
    tokio::task::JoinHandle<Result<String, String>>,
) {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind loopback");
    let addr = listener.local_addr().expect("addr");
    let acceptor = TlsAcceptor::from(pki::server_config(id).expect("server config"));
    let task = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.map_err(|e| e.to_string())?;
        let mut tls = acceptor.accept(tcp).await.map_err(|e| e.to_string())?;
        let who = pki::is_member(tls.get_ref().1).unwrap_or_else(|| "joiner".to_owned());
        tls.write_all(who.as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        tls.shutdown().await.map_err(|e| e.to_string())?;
        Ok(who)
    });
    (addr, task)
}

async fn connect(
    addr: std::net::SocketAddr,
    cfg: Arc<rustls::ClientConfig>,
) -> Result<String, String> {
    let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let name = ServerName::try_from(SERVER_NAME).map_err(|e| e.to_string())?;
    let mut tls = TlsConnector::from(cfg)
        .connect(name, tcp)
        .await
        .map_err(|e| e.to_string())?;
    let mut buf = String::new();
    tls.read_to_string(&mut buf)
        .await
        .map_err(|e| e.to_string())?;
    Ok(buf)
}

#[tokio::test]
async fn members_talk_over_mutual_tls_and_see_each_others_names() {
    let ca = ClusterCa::generate("test").expect("ca");
    let a = ca.issue("server-a").expect("a");
    let b = ca.issue("server-b").expect("b");
    let (addr, server) = serve_once(&a).await;
    let answer = connect(addr, pki::client_config(&b).expect("client"))
        .await
        .expect("handshake");
    assert_eq!(
        answer, "server-b",
        "the server sees the client's certificate name"
    );
    assert_eq!(server.await.expect("join"), Ok("server-b".to_owned()));
}

#[tokio::test]
async fn a_certificate_from_another_cluster_is_refused() {
    let ours = ClusterCa::generate("ours").expect("ca");
    let theirs = ClusterCa::generate("theirs").expect("ca");
    let server_id = ours.issue("server-a").expect("a");
    let intruder = theirs.issue("intruder").expect("x");
    // The intruder trusts our CA (say it copied the CA certificate) but its own certificate is
    // signed by another CA.
    let mixed = NodeIdentity {
        ca_pem: ours.cert_pem().to_owned(),
        ..intruder
    };
    let (addr, server) = serve_once(&server_id).await;
    let client = connect(addr, pki::client_config(&mixed).expect("client")).await;
    let served = server.await.expect("join");
    assert!(
        served.is_err(),
        "the server must refuse a foreign certificate, got {served:?}"
    );
    assert!(
        client.is_err() || client.as_ref().is_ok_and(|a| a.is_empty()),
        "{client:?}"
    );
}

#[tokio::test]
async fn a_joiner_with_the_right_ca_digest_gets_through_as_a_joiner() {
    let ca = ClusterCa::generate("test").expect("ca");
    let a = ca.issue("server-a").expect("a");
    let (addr, server) = serve_once(&a).await;
    let cfg = pki::join_client_config(ca.digest()).expect("join config");
    let answer = connect(addr, cfg)
        .await
        .expect("handshake with the pinned CA");
    assert_eq!(
        answer, "joiner",
        "no certificate shown: the server must not take it for a member"
    );
    assert_eq!(server.await.expect("join"), Ok("joiner".to_owned()));
}

#[tokio::test]
async fn a_joiner_whose_token_names_another_ca_refuses_the_server() {
    let ca = ClusterCa::generate("test").expect("ca");
    let a = ca.issue("server-a").expect("a");
    let (addr, _server) = serve_once(&a).await;
    let other = ClusterCa::generate("other").expect("ca");
    let err = connect(addr, pki::join_client_config(other.digest()).expect("cfg"))
        .await
        .expect_err("a wrong CA digest must fail the handshake");
    assert!(err.contains("does not match the join token"), "{err}");
    let err = connect_wrong_digest(addr).await;
    assert!(err.is_err());
}

async fn connect_wrong_digest(addr: std::net::SocketAddr) -> Result<String, String> {
    connect(
        addr,
        pki::join_client_config(CaDigest([9; 32])).expect("cfg"),
    )
    .await
}

#[test]
fn a_signed_csr_carries_the_node_name_and_verifies_against_the_ca() {
    let ca = ClusterCa::generate("test").expect("ca");
    let (csr, key) = pki::new_csr("joiner-7").expect("csr");
    let cert = ca.sign_csr(&csr, "joiner-7").expect("sign");
    let id = NodeIdentity {
        cert_pem: cert.clone(),
        key_pem: key,
        ca_pem: ca.cert_pem().to_owned(),
    };
    // rustls accepts it as a client identity under this CA.
    pki::client_config(&id).expect("a usable identity");
    let der = pem::parse(&cert).expect("pem").into_contents();
    assert_eq!(pki::common_name(&der).as_deref(), Some("joiner-7"));
    // A CA read back from its PEM files keeps its digest.
    let again = ClusterCa::from_pem(ca.cert_pem(), ca.key_pem()).expect("reload");
    assert_eq!(again.digest(), ca.digest());
}
