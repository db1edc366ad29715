//! The cluster's identity: its CA, each server's certificate, and the join token.
//!
//! `quarryd init` creates a cluster CA (an ECDSA P-256 key and a self-signed certificate). Every
//! member holds a certificate signed by it, and all node-to-node traffic is TLS with a
//! certificate on both sides (mutual TLS): a server that cannot show a certificate from the
//! cluster CA is not a member.
//!
//! Joining is the one exchange that starts without a certificate on the joiner's side, as in
//! Docker Swarm. The join token is `QRY1-<CA digest>-<secret>`:
//!
//! ```text
//!   joiner                                   any member
//!     | TLS hello (no client certificate) ------>|
//!     |<----- chain [member cert, CA cert] ------|
//!     | CA cert's sha256 == token digest?        |   (the joiner trusts nothing else)
//!     | member cert signed by that CA?           |
//!     | -- join request: secret, CSR ----------->|   secret == the cluster's join secret?
//!     |<----- certificate signed by the CA, -----|   (only then)
//!     |       gossip key, members                |
//! ```
//!
//! So the token never carries the gossip key or any key material: it names the CA (so a joiner
//! cannot be fooled by a man in the middle) and proves the joiner may join. The secret can be
//! rotated without touching the CA. The joiner's private key never leaves it: it sends a CSR.
//!
//! The server side accepts a TLS connection without a client certificate (for the join lane
//! only); [`is_member`] tells the protocol layer whether the peer showed a valid cluster
//! certificate, and every other lane refuses a peer that did not.
//!
//! Left out here: certificate rotation and revocation (a removed member's certificate stays
//! valid until it expires; the Raft member list, not the certificate, is what lets a server take
//! part in consensus).

mod token;
mod verify;

use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use sha2::{Digest, Sha256};

pub use token::{CaDigest, JoinToken, TokenError};

/// The DNS name in every member certificate, and the name clients ask for: identity is the
/// cluster CA, not an address, so a server keeps its certificate when its address changes.
pub const SERVER_NAME: &str = "quarry.cluster";

/// What went wrong with keys or certificates.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    /// Generating or signing failed.
    #[error("certificate: {0}")]
    Cert(#[from] rcgen::Error),
    /// rustls refused a key or certificate.
    #[error("TLS: {0}")]
    Tls(#[from] rustls::Error),
    /// A PEM file holds nothing usable.
    #[error("{0}")]
    Pem(String),
}

/// A cluster CA: the certificate (shared with every member) and its private key (kept by the
/// members that may sign joiners' certificates, readable by root only).
#[derive(Clone)]
pub struct ClusterCa {
    cert_pem: String,
    key_pem: String,
}

impl std::fmt::Debug for ClusterCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterCa")
            .field("digest", &self.digest().to_string())
            .finish_non_exhaustive()
    }
}

impl ClusterCa {
    /// A new CA for cluster `cluster`.
    pub fn generate(cluster: &str) -> Result<Self, PkiError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        params.distinguished_name = name(&format!("quarry cluster CA {cluster}"));
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params.not_after = rcgen::date_time_ymd(2100, 1, 1);
        let cert = params.self_signed(&key)?;
        Ok(ClusterCa {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// A CA read back from its PEM files.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Self, PkiError> {
        // Check both parse and belong together by building an issuer.
        let key = KeyPair::from_pem(key_pem)?;
        Issuer::from_ca_cert_pem(cert_pem, key)?;
        Ok(ClusterCa {
            cert_pem: cert_pem.to_owned(),
            key_pem: key_pem.to_owned(),
        })
    }

    /// The CA certificate (PEM).
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The CA private key (PEM). Secret.
    pub fn key_pem(&self) -> &str {
        &self.key_pem
    }

    /// The sha256 of the CA certificate: what a join token names.
    pub fn digest(&self) -> CaDigest {
        digest_of_pem(&self.cert_pem).unwrap_or(CaDigest([0; 32]))
    }

    /// Sign a member certificate for `node` from its CSR. The certificate names
    /// [`SERVER_NAME`] and the node (as common name), and is good for client and server auth.
    pub fn sign_csr(&self, csr_pem: &str, node: &str) -> Result<String, PkiError> {
        let mut csr = CertificateSigningRequestParams::from_pem(csr_pem)?;
        // Whatever the CSR asks for, the CA decides what the certificate says.
        csr.params = member_params(node)?;
        let issuer = Issuer::from_ca_cert_pem(&self.cert_pem, KeyPair::from_pem(&self.key_pem)?)?;
        Ok(csr.signed_by(&issuer)?.pem())
    }

    /// A whole identity for `node`, key generated here (for `quarryd init`, where the first
    /// server signs its own certificate).
    pub fn issue(&self, node: &str) -> Result<NodeIdentity, PkiError> {
        let (csr, key_pem) = new_csr(node)?;
        Ok(NodeIdentity {
            cert_pem: self.sign_csr(&csr, node)?,
            key_pem,
            ca_pem: self.cert_pem.clone(),
        })
    }
}

/// A member's certificate, its private key, and the cluster CA certificate.
#[derive(Clone)]
pub struct NodeIdentity {
    /// The member certificate (PEM).
    pub cert_pem: String,
    /// Its private key (PEM). Secret.
    pub key_pem: String,
    /// The cluster CA certificate (PEM).
    pub ca_pem: String,
}

impl std::fmt::Debug for NodeIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeIdentity").finish_non_exhaustive()
    }
}

fn name(cn: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    dn
}

fn member_params(node: &str) -> Result<CertificateParams, PkiError> {
    let mut params = CertificateParams::new(vec![SERVER_NAME.to_owned()])?;
    params.distinguished_name = name(node);
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.not_after = rcgen::date_time_ymd(2100, 1, 1);
    Ok(params)
}

/// A new private key and a CSR for `node` (the joiner's side). Returns (CSR PEM, key PEM).
pub fn new_csr(node: &str) -> Result<(String, String), PkiError> {
    let key = KeyPair::generate()?;
    let csr = member_params(node)?.serialize_request(&key)?;
    Ok((csr.pem()?, key.serialize_pem()))
}

fn certs(pem: &str) -> Result<Vec<CertificateDer<'static>>, PkiError> {
    let v: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|e| PkiError::Pem(format!("bad certificate PEM: {e}")))?;
    if v.is_empty() {
        return Err(PkiError::Pem("no certificate in PEM".to_owned()));
    }
    Ok(v)
}

fn key(pem: &str) -> Result<PrivateKeyDer<'static>, PkiError> {
    PrivateKeyDer::from_pem_slice(pem.as_bytes())
        .map_err(|e| PkiError::Pem(format!("bad private key PEM: {e}")))
}

fn digest_of_pem(pem: &str) -> Result<CaDigest, PkiError> {
    let der = certs(pem)?.remove(0);
    Ok(CaDigest(Sha256::digest(der.as_ref()).into()))
}

fn roots(ca_pem: &str) -> Result<Arc<RootCertStore>, PkiError> {
    let mut roots = RootCertStore::empty();
    for c in certs(ca_pem)? {
        roots.add(c)?;
    }
    Ok(Arc::new(roots))
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The TLS server side of a member: presents [member cert, CA cert] (so a joiner can check the
/// CA against its token), verifies a client certificate against the cluster CA when one is
/// shown, and lets a client without one through for the join lane only (see [`is_member`]).
pub fn server_config(id: &NodeIdentity) -> Result<Arc<ServerConfig>, PkiError> {
    let verifier =
        rustls::server::WebPkiClientVerifier::builder_with_provider(roots(&id.ca_pem)?, provider())
            .allow_unauthenticated()
            .build()
            .map_err(|e| PkiError::Pem(format!("client verifier: {e}")))?;
    let mut chain = certs(&id.cert_pem)?;
    chain.extend(certs(&id.ca_pem)?);
    let cfg = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key(&id.key_pem)?)?;
    Ok(Arc::new(cfg))
}

/// The TLS client side of a member: trusts only the cluster CA and shows its own certificate.
pub fn client_config(id: &NodeIdentity) -> Result<Arc<ClientConfig>, PkiError> {
    let cfg = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots(&id.ca_pem)?)
        .with_client_auth_cert(certs(&id.cert_pem)?, key(&id.key_pem)?)?;
    Ok(Arc::new(cfg))
}

/// The TLS client side of a joiner: no certificate of its own; trusts a server only if the CA
/// certificate it presents hashes to `ca` and the server's certificate is signed by it.
pub fn join_client_config(ca: CaDigest) -> Result<Arc<ClientConfig>, PkiError> {
    let cfg = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verify::PinnedCa::new(ca, provider())))
        .with_no_client_auth();
    Ok(Arc::new(cfg))
}

/// The CA certificate a joiner saw in the server's chain (after the handshake succeeded, it is
/// the one matching the token): the joiner stores it as its cluster CA.
pub fn presented_ca(conn: &rustls::ClientConnection, ca: CaDigest) -> Option<String> {
    conn.peer_certificates()?
        .iter()
        .find(|c| CaDigest(Sha256::digest(c.as_ref()).into()) == ca)
        .map(|c| pem_of(c.as_ref()))
}

fn pem_of(der: &[u8]) -> String {
    pem::encode(&pem::Pem::new("CERTIFICATE", der.to_vec()))
}

/// Did the peer of this server-side connection show a valid cluster certificate? (rustls has
/// verified any certificate shown against the CA; a peer without one is a joiner.) Returns
/// the node name (the certificate's common name) when it did.
pub fn is_member(conn: &rustls::ServerConnection) -> Option<String> {
    let cert = conn.peer_certificates()?.first()?;
    common_name(cert.as_ref())
}

/// The common name of a DER certificate.
pub fn common_name(der: &[u8]) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let cn = cert.subject().iter_common_name().next()?;
    cn.as_str().ok().map(str::to_owned)
}

/// 32 random bytes from the OS.
pub fn random_bytes() -> [u8; 32] {
    let mut b = [0u8; 32];
    // The OS random source failing is not something a server can go on without.
    getrandom::fill(&mut b).expect("the OS random source works");
    b
}

/// A new admin token for the HTTP API: `qra_` and 32 random bytes in hex.
pub fn new_admin_token() -> String {
    format!("qra_{}", hex::encode(random_bytes()))
}
