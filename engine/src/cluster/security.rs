//! Who may use a cluster: its processes (the scheduler, the executors and the drivers of
//! runs) prove to each other that they hold the cluster's shared key, on every connection.
//!
//! Ballista 55 lets every client connection it opens be configured (an endpoint override,
//! applied to each gRPC and Flight connection) but lets no header of ours ride on most of
//! them, so the key is proven the way TLS proves identity: with certificates. Every
//! process derives the same certificate authority from the key (its private key is a hash
//! of the key), signs a certificate of its own with it, and presents that certificate on
//! each connection it opens or accepts; its peers accept only certificates that authority
//! signed. The key never crosses the network, and a process with another key, or none, is
//! refused during the TLS handshake.
//!
//! This module owns the key, the certificates and the TLS configurations made from them,
//! and tells why a peer refused us. It never prints the key, and serves nothing itself
//! (`serve.rs` does).

use std::fmt;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use ballista_core::extension::EndpointOverrideFn;
use ballista_core::utils::{create_grpc_client_endpoint, GrpcClientConfig};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, PKCS_ED25519,
};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_rustls::rustls::{self, pki_types};
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

use crate::error::{Error, Result};

/// The variable that holds the key itself.
pub const KEY_VARIABLE: &str = "BACKFILL_CLUSTER_KEY";

/// Fewer characters than this make a key that can be guessed.
const MIN_KEY_CHARS: usize = 16;

/// The name every member's certificate is issued for, and what clients check it against:
/// members are trusted for holding the key, not for their host names.
const MEMBER_NAME: &str = "member.cluster.backfill";

/// How long a peer may take over its TLS handshake.
pub(crate) const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The cluster's shared key. Its `Debug` says where it came from, never what it is.
#[derive(Clone)]
pub struct ClusterKey {
    secret: Arc<str>,
    /// `BACKFILL_CLUSTER_KEY`, or the file it was read from.
    from: String,
}

impl fmt::Debug for ClusterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ClusterKey(from {})", self.from)
    }
}

impl ClusterKey {
    /// The key in `file`, if one is given, or else in `BACKFILL_CLUSTER_KEY`; none if
    /// neither is set. Both at once is an error, as one would silently win.
    pub fn load(file: Option<&Path>) -> Result<Option<ClusterKey>> {
        let variable = std::env::var(KEY_VARIABLE).ok().filter(|v| !v.is_empty());
        match (file, variable) {
            (Some(file), Some(_)) => Err(Error::config(
                KEY_VARIABLE,
                format!(
                    "the key is set here and in the file {} too: set one of them",
                    file.display()
                ),
            )),
            (Some(file), None) => {
                let read = std::fs::read_to_string(file).map_err(|e| {
                    Error::config(
                        file.display().to_string(),
                        format!("cannot read the cluster key: {e}"),
                    )
                })?;
                ClusterKey::new(read, file.display().to_string()).map(Some)
            }
            (None, Some(secret)) => ClusterKey::new(secret, KEY_VARIABLE.into()).map(Some),
            (None, None) => Ok(None),
        }
    }

    /// A key as written: surrounding whitespace (a file's last newline) is not part of it.
    fn new(secret: String, from: String) -> Result<ClusterKey> {
        let secret = secret.trim();
        let chars = secret.chars().count();
        if chars < MIN_KEY_CHARS {
            return Err(Error::config(
                from,
                format!(
                    "the cluster key has {chars} characters; it needs at least {MIN_KEY_CHARS} \
                     (make one with `openssl rand -base64 32`)"
                ),
            ));
        }
        Ok(ClusterKey {
            secret: secret.into(),
            from,
        })
    }

    /// The private key of the cluster's certificate authority: an Ed25519 key whose seed
    /// is a hash of the key, so every process that holds the key derives the same one.
    fn authority_key(&self) -> Result<KeyPair> {
        let seed = Sha256::new()
            .chain_update(b"backfill cluster authority\n")
            .chain_update(self.secret.as_bytes())
            .finalize();
        // PKCS#8 v1 for an Ed25519 seed (RFC 8410): a fixed prefix, then the 32 bytes.
        let mut pkcs8 = hex::decode("302e020100300506032b657004220420").expect("valid hex");
        pkcs8.extend_from_slice(&seed);
        let der = pki_types::PrivatePkcs8KeyDer::from(pkcs8);
        KeyPair::from_pkcs8_der_and_sign_algo(&der, &PKCS_ED25519).map_err(internal)
    }
}

/// How this process connects to, and accepts, the other processes of its cluster: in
/// the clear without a key, or over mutually authenticated TLS with one.
#[derive(Clone, Default)]
pub struct Security {
    tls: Option<Arc<Tls>>,
}

impl fmt::Debug for Security {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mode = if self.is_keyed() { "keyed" } else { "open" };
        write!(f, "Security({mode})")
    }
}

/// The TLS material derived from a key.
struct Tls {
    /// The certificate authority every member trusts, as PEM.
    authority_pem: String,
    /// This process's certificate, signed by the authority, and its private key, as PEM.
    certificate_pem: String,
    private_key_pem: String,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl Security {
    /// Without a key, every connection is in the clear and open to anyone who reaches it.
    pub fn open() -> Security {
        Security::default()
    }

    /// A member of the cluster of `key`, with a certificate of its own.
    pub fn keyed(key: &ClusterKey) -> Result<Security> {
        let authority_key = key.authority_key()?;
        let mut authority = CertificateParams::default();
        authority.distinguished_name = name("backfill cluster authority");
        authority.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        authority.key_usages = vec![KeyUsagePurpose::KeyCertSign];
        let authority_pem = authority
            .self_signed(&authority_key)
            .map_err(internal)?
            .pem();

        let member_key = KeyPair::generate().map_err(internal)?;
        let mut member = CertificateParams::new(vec![MEMBER_NAME.to_string()]).map_err(internal)?;
        member.distinguished_name = name("backfill cluster member");
        member.use_authority_key_identifier_extension = true;
        member.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let issuer = Issuer::new(authority, authority_key);
        let certificate = member.signed_by(&member_key, &issuer).map_err(internal)?;
        Ok(Security {
            tls: Some(Arc::new(Tls {
                authority_pem,
                certificate_pem: certificate.pem(),
                private_key_pem: member_key.serialize_pem(),
                provider: Arc::new(rustls::crypto::ring::default_provider()),
            })),
        })
    }

    /// From the key `ClusterKey::load` finds, if any.
    pub fn load(key_file: Option<&Path>) -> Result<Security> {
        match ClusterKey::load(key_file)? {
            Some(key) => Security::keyed(&key),
            None => Ok(Security::open()),
        }
    }

    pub fn is_keyed(&self) -> bool {
        self.tls.is_some()
    }

    /// Refuses to serve on `address` in the clear unless it is loopback: anyone who
    /// reached it could run SQL with this process's storage credentials.
    pub(crate) fn check_bind(&self, flag: &str, address: std::net::IpAddr) -> Result<()> {
        if self.is_keyed() || address.is_loopback() {
            return Ok(());
        }
        Err(Error::config(
            flag,
            format!(
                "refusing to listen on {address} without a cluster key: anyone who reaches \
                 it could run SQL on this cluster with its storage credentials. Set \
                 {KEY_VARIABLE} (or --cluster-key-file) on every process of the cluster, \
                 or listen on 127.0.0.1"
            ),
        ))
    }

    /// How Ballista's clients in this process connect to the others: each endpoint is
    /// made again as `https://` with Ballista's own client settings, this process's
    /// certificate, and trust in the key's authority only.
    pub(crate) fn endpoint_override(&self) -> Option<EndpointOverrideFn> {
        let tls = self.tls.clone()?;
        Some(Arc::new(move |endpoint: Endpoint| {
            let uri = endpoint.uri();
            let authority = uri.authority().ok_or("an endpoint without a host")?;
            let https = create_grpc_client_endpoint(
                format!("https://{authority}"),
                Some(&GrpcClientConfig::default()),
            )?;
            Ok(https.tls_config(tls.client_tls())?)
        }))
    }

    /// What a server of this process accepts connections with: members' certificates
    /// only. None without a key.
    pub(crate) fn acceptor(&self) -> Result<Option<tokio_rustls::TlsAcceptor>> {
        let Some(tls) = &self.tls else {
            return Ok(None);
        };
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            Arc::new(tls.roots()?),
            tls.provider.clone(),
        )
        .build()
        .map_err(internal)?;
        let (chain, key) = tls.identity()?;
        let mut config = rustls::ServerConfig::builder_with_provider(tls.provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(internal)?
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain, key)
            .map_err(internal)?;
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(Some(tokio_rustls::TlsAcceptor::from(Arc::new(config))))
    }

    /// Whether the server at `address` (`who`: "the scheduler at …") takes this process
    /// as a member: a handshake as Ballista's clients would make it, then a read, as a
    /// server that refuses a client's certificate says so only after the handshake (TLS
    /// 1.3). The reason it does not, in words that say which side holds which key.
    pub(crate) async fn check_peer(&self, address: SocketAddr, who: &str) -> Result<(), String> {
        let tcp = tokio::time::timeout(HANDSHAKE_TIMEOUT, tokio::net::TcpStream::connect(address))
            .await
            .map_err(|_| format!("{who} did not answer within {HANDSHAKE_TIMEOUT:?}"))?
            .map_err(|e| format!("{who} does not answer: {e}"))?;
        let answer = tokio::time::timeout(HANDSHAKE_TIMEOUT, self.handshake(tcp)).await;
        let answer = answer.unwrap_or(Err(Refusal::Silent));
        match (answer, self.is_keyed()) {
            (Ok(()), _) | (Err(Refusal::NotTls), false) => Ok(()),
            (Err(Refusal::NotTls), true) => Err(format!(
                "{who} has no cluster key (it serves without TLS), but this process has one \
                 ({KEY_VARIABLE}): give both the same key, or neither"
            )),
            (Err(Refusal::UntrustedCertificate), false) => Err(format!(
                "{who} requires the cluster key (it serves TLS to members only), and this \
                 process has none: set {KEY_VARIABLE} or --cluster-key-file to its key"
            )),
            (Err(Refusal::UntrustedCertificate | Refusal::RefusedOurs), true) => Err(format!(
                "{who} holds another cluster key than this process: give both the same key"
            )),
            (Err(Refusal::RefusedOurs), false) => Err(format!("{who} refused this process")),
            (Err(Refusal::Silent), _) => Err(format!(
                "{who} did not finish a handshake within {HANDSHAKE_TIMEOUT:?}"
            )),
            (Err(Refusal::Other(why)), _) => Err(format!("{who}: {why}")),
        }
    }

    /// A TLS handshake with the server on `tcp`, with this process's certificate and
    /// trust if it has a key, else trusting nothing: then only a server in the clear
    /// passes (as [`Refusal::NotTls`]).
    async fn handshake(&self, tcp: tokio::net::TcpStream) -> Result<(), Refusal> {
        let config = match &self.tls {
            Some(tls) => tls.client_config(),
            None => Tls::trusting_nothing(),
        }
        .map_err(|e| Refusal::Other(e.to_string()))?;
        let name = pki_types::ServerName::try_from(MEMBER_NAME).expect("a valid name");
        let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
        let mut stream = connector.connect(name, tcp).await.map_err(Refusal::from)?;
        // HTTP/2's connection preface: a server that took us answers with its settings.
        stream
            .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0")
            .await
            .map_err(Refusal::from)?;
        let mut answer = [0u8; 9];
        stream
            .read_exact(&mut answer)
            .await
            .map_err(Refusal::from)?;
        Ok(())
    }
}

/// Why a handshake with a server failed, as far as keys go.
enum Refusal {
    /// The server does not speak TLS: it has no key.
    NotTls,
    /// The server's certificate is not signed by an authority this process trusts.
    UntrustedCertificate,
    /// The server refused this process's certificate.
    RefusedOurs,
    /// The server said nothing in time.
    Silent,
    Other(String),
}

impl From<std::io::Error> for Refusal {
    fn from(error: std::io::Error) -> Refusal {
        match error
            .get_ref()
            .and_then(|e| e.downcast_ref::<rustls::Error>())
        {
            Some(rustls::Error::InvalidMessage(_)) => Refusal::NotTls,
            Some(rustls::Error::InvalidCertificate(_)) => Refusal::UntrustedCertificate,
            Some(rustls::Error::AlertReceived(_)) => Refusal::RefusedOurs,
            Some(other) => Refusal::Other(other.to_string()),
            // A server in the clear drops a connection that starts with a TLS hello; a
            // server with a key drops one whose certificate it refused.
            None if error.kind() == std::io::ErrorKind::UnexpectedEof => Refusal::NotTls,
            None => Refusal::Other(error.to_string()),
        }
    }
}

/// Why a server refused the client whose handshake failed with `error`, for its log;
/// none for a client that closed before it said anything, as probes of the port do.
pub(crate) fn refusal_reason(error: &std::io::Error) -> Option<String> {
    let reason = match error
        .get_ref()
        .and_then(|e| e.downcast_ref::<rustls::Error>())
    {
        Some(rustls::Error::InvalidMessage(_)) => {
            "it does not speak TLS: it has no cluster key".into()
        }
        Some(rustls::Error::NoCertificatesPresented) => {
            "it presented no certificate: it has no cluster key".into()
        }
        Some(rustls::Error::InvalidCertificate(_)) => {
            "its certificate is not from this cluster's key: it holds another key".into()
        }
        Some(rustls::Error::AlertReceived(_)) => {
            "it does not trust this server's certificate: it holds another cluster key, or none"
                .into()
        }
        Some(other) => other.to_string(),
        None if error.kind() == std::io::ErrorKind::UnexpectedEof => return None,
        None => error.to_string(),
    };
    Some(reason)
}

impl Tls {
    fn client_tls(&self) -> ClientTlsConfig {
        ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&self.authority_pem))
            .identity(Identity::from_pem(
                &self.certificate_pem,
                &self.private_key_pem,
            ))
            .domain_name(MEMBER_NAME)
    }

    fn roots(&self) -> Result<rustls::RootCertStore> {
        let mut roots = rustls::RootCertStore::empty();
        for certificate in pem_certificates(&self.authority_pem)? {
            roots.add(certificate).map_err(internal)?;
        }
        Ok(roots)
    }

    fn identity(
        &self,
    ) -> Result<(
        Vec<pki_types::CertificateDer<'static>>,
        pki_types::PrivateKeyDer<'static>,
    )> {
        use pki_types::pem::PemObject;
        let key = pki_types::PrivateKeyDer::from_pem_slice(self.private_key_pem.as_bytes())
            .map_err(internal)?;
        Ok((pem_certificates(&self.certificate_pem)?, key))
    }

    fn client_config(&self) -> Result<rustls::ClientConfig> {
        let (chain, key) = self.identity()?;
        let mut config = rustls::ClientConfig::builder_with_provider(self.provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(internal)?
            .with_root_certificates(self.roots()?)
            .with_client_auth_cert(chain, key)
            .map_err(internal)?;
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(config)
    }

    fn trusting_nothing() -> Result<rustls::ClientConfig> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        Ok(rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(internal)?
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth())
    }
}

fn pem_certificates(pem: &str) -> Result<Vec<pki_types::CertificateDer<'static>>> {
    use pki_types::pem::PemObject;
    pki_types::CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(internal)
}

fn name(common_name: &str) -> rcgen::DistinguishedName {
    let mut name = rcgen::DistinguishedName::new();
    name.push(DnType::CommonName, common_name);
    name
}

fn internal(error: impl fmt::Display) -> Error {
    Error::Internal(format!("cluster TLS: {error}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keyed(secret: &str) -> Security {
        let key = ClusterKey::new(secret.into(), "a test".into()).unwrap();
        Security::keyed(&key).unwrap()
    }

    /// A server of `security` on loopback that answers each member with 9 bytes (as an
    /// HTTP/2 server's first frame header); how each of `clients` handshakes ended.
    async fn server(
        security: &Security,
        clients: usize,
    ) -> (SocketAddr, tokio::task::JoinHandle<Vec<Option<String>>>) {
        let acceptor = security.acceptor().unwrap().unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let outcomes = tokio::spawn(async move {
            let mut outcomes = vec![];
            for _ in 0..clients {
                let (tcp, _) = listener.accept().await.unwrap();
                match acceptor.accept(tcp).await {
                    Ok(mut member) => {
                        member.write_all(&[0; 9]).await.unwrap();
                        member.flush().await.unwrap();
                        outcomes.push(None);
                    }
                    Err(error) => outcomes.push(refusal_reason(&error)),
                }
            }
            outcomes
        });
        (address, outcomes)
    }

    #[tokio::test]
    async fn a_server_refuses_a_client_whose_certificate_another_key_signed() {
        let ours = keyed("every-member-holds-this-key");
        let theirs = keyed("a-key-of-some-other-cluster");
        let (address, outcomes) = server(&ours, 2).await;
        // A client that trusts our authority, as ours do, but proves another key.
        let (tls, impostor) = (ours.tls.as_ref().unwrap(), theirs.tls.as_ref().unwrap());
        let (chain, key) = impostor.identity().unwrap();
        let config = rustls::ClientConfig::builder_with_provider(tls.provider.clone())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(tls.roots().unwrap())
            .with_client_auth_cert(chain, key)
            .unwrap();
        let tcp = tokio::net::TcpStream::connect(address).await.unwrap();
        let name = pki_types::ServerName::try_from(MEMBER_NAME).unwrap();
        let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
        let refused = match connector.connect(name, tcp).await {
            Ok(mut stream) => stream.read_exact(&mut [0; 9]).await.err(),
            Err(error) => Some(error),
        };
        assert!(refused.is_some(), "the impostor was served");
        // A member of the same key is taken.
        assert_eq!(ours.check_peer(address, "the server").await, Ok(()));
        let outcomes = outcomes.await.unwrap();
        let expected = "its certificate is not from this cluster's key: it holds another key";
        assert_eq!(outcomes, [Some(expected.to_string()), None]);
    }

    #[tokio::test]
    async fn a_member_tells_a_server_of_another_key_from_one_without_a_key() {
        let ours = keyed("every-member-holds-this-key");
        let (address, _) = server(&keyed("a-key-of-some-other-cluster"), 1).await;
        let refused = ours.check_peer(address, "the server").await.unwrap_err();
        assert!(refused.contains("holds another cluster key"), "{refused}");
        let (address, _) = server(&ours, 1).await;
        let refused = Security::open().check_peer(address, "the server").await;
        assert!(refused.unwrap_err().contains("requires the cluster key"));
    }

    #[test]
    fn a_key_is_never_shown_and_a_short_one_is_refused() {
        let key = ClusterKey::new("  every-member-holds-this-key\n".into(), "a file".into());
        assert_eq!(format!("{:?}", key.unwrap()), "ClusterKey(from a file)");
        let short = ClusterKey::new("tiny".into(), "BACKFILL_CLUSTER_KEY".into()).unwrap_err();
        let message = short.to_string();
        assert!(message.contains("BACKFILL_CLUSTER_KEY"), "{message}");
        assert!(!message.contains("tiny"), "{message}");
    }
}
