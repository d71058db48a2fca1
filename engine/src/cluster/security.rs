//! Who may use a cluster: its processes (the scheduler, the executors and the runs that
//! drive them) take only each other, on every connection, once they share a key or
//! certificates.
//!
//! Ballista 55 lets every client connection it opens be configured (an endpoint override,
//! applied to each gRPC and Flight connection) but lets no header of ours ride on most of
//! them, so membership is proven the way TLS proves identity: with certificates, checked
//! by both ends of every connection. They come from the cluster's key (`key.rs`), or
//! from the operator's own files, or both: servers then present the files' certificates
//! and clients the key's.
//!
//! This module owns the TLS configurations made from them and tells why a peer refused
//! us, or why we refused it. It serves nothing itself (`serve.rs` does).

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use ballista_core::extension::EndpointOverrideFn;
use ballista_core::utils::{create_grpc_client_endpoint, GrpcClientConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::rustls::{self, pki_types};
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint};

use super::key::{ClusterKey, KEY_VARIABLE, MEMBER_NAME};
use crate::error::{Error, Result};

/// How long a peer may take over its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Certificate files of the operator's own (PEM), as the flags name them.
#[derive(Debug, Clone, Default)]
pub struct CertificateFiles {
    /// This process's certificate (chain) and its private key: what a scheduler or an
    /// executor serves with, and what a process presents to the servers it connects to.
    pub certificate: Option<PathBuf>,
    pub private_key: Option<PathBuf>,
    /// The authority that signed the cluster's certificates: servers must hold one it
    /// signed for the host they are reached at, and so must clients, unless the cluster
    /// has a key (which then proves clients).
    pub authority: Option<PathBuf>,
}

/// A certificate (chain) with its private key, as PEM.
#[derive(Clone)]
pub(crate) struct Identity {
    pub(crate) certificate: String,
    pub(crate) private_key: String,
}

/// How this process connects to, and accepts, the other processes of its cluster: in
/// the clear without a key or certificates, else over TLS whose both ends prove
/// membership.
#[derive(Clone, Default)]
pub struct Security {
    tls: Option<Arc<Tls>>,
}

impl fmt::Debug for Security {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mode = match &self.tls {
            None => "open",
            Some(tls) if tls.keyed => "keyed",
            Some(_) => "certificates",
        };
        write!(f, "Security({mode})")
    }
}

/// The TLS settings of a secured process.
struct Tls {
    /// What its servers present: the files' certificate, else its member certificate.
    served: Option<Identity>,
    /// What it presents to servers: its member certificate, else the files' certificate.
    presented: Option<Identity>,
    /// The authority servers' certificates must come from (PEM), and the name they must
    /// hold: the files' authority and the host connected to, else the key's authority
    /// and the member name.
    servers_by: String,
    servers_named: Option<&'static str>,
    /// The authority clients' certificates must come from: the key's, else the files'.
    clients_by: String,
    /// Whether the key proves clients (else the files' authority does).
    keyed: bool,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl Security {
    /// Every connection in the clear, open to anyone who reaches it.
    pub fn open() -> Security {
        Security::default()
    }

    /// From the key `ClusterKey::load` finds (in `key_file` or `BACKFILL_CLUSTER_KEY`),
    /// and certificate `files`.
    pub fn load(key_file: Option<&Path>, files: &CertificateFiles) -> Result<Security> {
        Security::new(ClusterKey::load(key_file)?.as_ref(), files)
    }

    /// A process of the cluster of `key`, or of certificate `files`, or of both; one in
    /// the clear with neither.
    pub fn new(key: Option<&ClusterKey>, files: &CertificateFiles) -> Result<Security> {
        let member = key.map(ClusterKey::member).transpose()?;
        let (own, authority) = files.read()?;
        let keyed = member.is_some();
        let (member_authority, member_identity) = match member {
            Some(member) => (Some(member.authority), Some(member.identity)),
            None => (None, None),
        };
        let Some(servers_by) = authority.clone().or_else(|| member_authority.clone()) else {
            return Ok(Security::open());
        };
        let tls = Tls {
            served: own.clone().or_else(|| member_identity.clone()),
            presented: member_identity.or(own),
            servers_named: authority.is_none().then_some(MEMBER_NAME),
            servers_by,
            clients_by: member_authority
                .or(authority)
                .expect("one of them, as above"),
            keyed,
            provider: Arc::new(rustls::crypto::ring::default_provider()),
        };
        Ok(Security {
            tls: Some(Arc::new(tls)),
        })
    }

    /// Whether connections are TLS, and so every peer proves membership.
    pub fn uses_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// Refuses to serve on `address` in the clear unless it is loopback: anyone who
    /// reached it could run SQL with this process's storage credentials.
    pub(crate) fn check_bind(&self, flag: &str, address: IpAddr) -> Result<()> {
        if self.uses_tls() || address.is_loopback() {
            return Ok(());
        }
        Err(Error::config(
            flag,
            format!(
                "refusing to listen on {address} without a cluster key: anyone who reaches \
                 it could run SQL on this cluster with its storage credentials. Set \
                 {KEY_VARIABLE} (or --cluster-key-file) on every process of the cluster \
                 (or give them certificates: --tls-ca, --tls-cert, --tls-key), or listen \
                 on 127.0.0.1"
            ),
        ))
    }

    /// How Ballista's clients in this process connect to the others: each endpoint is
    /// made again as `https://` with Ballista's own client settings and this process's
    /// certificate, trusting the servers' authority only.
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

    /// What a server of this process accepts connections with; none in the clear.
    pub(crate) fn acceptor(&self) -> Result<Option<Acceptor>> {
        let Some(tls) = &self.tls else {
            return Ok(None);
        };
        let Some(served) = &tls.served else {
            return Err(Error::config(
                "--tls-cert",
                "a scheduler or an executor serving TLS needs a certificate: give \
                 --tls-cert and --tls-key, or a cluster key",
            ));
        };
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            Arc::new(roots(&tls.clients_by).map_err(internal)?),
            tls.provider.clone(),
        )
        .build()
        .map_err(internal)?;
        let (chain, key) = served.parse().map_err(internal)?;
        let mut config = rustls::ServerConfig::builder_with_provider(tls.provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(internal)?
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain, key)
            .map_err(internal)?;
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(Some(Acceptor {
            inner: tokio_rustls::TlsAcceptor::from(Arc::new(config)),
            tls: tls.clone(),
        }))
    }

    /// Whether the server at `address`, reached as `host` (`who`: "the scheduler at …"),
    /// takes this process: a handshake as Ballista's clients make it, then a read, as a
    /// server that refuses a client's certificate says so only after the handshake (TLS
    /// 1.3). If not, why, in words that say which side holds what.
    pub(crate) async fn check_peer(
        &self,
        host: &str,
        address: SocketAddr,
        who: &str,
    ) -> Result<(), String> {
        let tcp = tokio::time::timeout(HANDSHAKE_TIMEOUT, TcpStream::connect(address))
            .await
            .map_err(|_| format!("{who} did not answer within {HANDSHAKE_TIMEOUT:?}"))?
            .map_err(|e| format!("{who} does not answer: {e}"))?;
        let answer = tokio::time::timeout(HANDSHAKE_TIMEOUT, self.handshake(host, tcp)).await;
        let refusal = match answer {
            Ok(Ok(())) => return Ok(()),
            Ok(Err(refusal)) => refusal,
            Err(_) => Refusal::Silent,
        };
        match &self.tls {
            Some(tls) => tls.refused_by(who, refusal),
            None if matches!(refusal, Refusal::NotTls) => Ok(()),
            None => Err(match refusal {
                Refusal::Untrusted(_) | Refusal::RefusedOurs => format!(
                    "{who} requires the cluster key (it serves TLS to members only), and this \
                     process has none: set {KEY_VARIABLE} or --cluster-key-file to its key, or \
                     give its certificates (--tls-ca, --tls-cert, --tls-key)"
                ),
                other => other.describe(who),
            }),
        }
    }

    /// A TLS handshake with the server on `tcp`, with this process's settings if it has
    /// any, else trusting nothing: then only a server in the clear passes (as
    /// [`Refusal::NotTls`]).
    async fn handshake(&self, host: &str, tcp: TcpStream) -> Result<(), Refusal> {
        let (config, name) = match &self.tls {
            Some(tls) => (tls.client_config(), tls.servers_named.unwrap_or(host)),
            None => (trusting_nothing(), MEMBER_NAME),
        };
        let config = config.map_err(|e| Refusal::Other(e.to_string()))?;
        // An IPv6 host is written in brackets in a URL, and without them in a certificate.
        let name = name.trim_start_matches('[').trim_end_matches(']');
        let name = pki_types::ServerName::try_from(name.to_string())
            .map_err(|e| Refusal::Other(format!("`{name}` is not a host name: {e}")))?;
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

/// The gate of a server of a secured process.
#[derive(Clone)]
pub(crate) struct Acceptor {
    inner: tokio_rustls::TlsAcceptor,
    tls: Arc<Tls>,
}

impl Acceptor {
    /// The connection on `tcp` once its handshake completes, or else why it was refused
    /// (none for a client that closed before it said anything, as probes of a port do).
    pub(crate) async fn accept(
        &self,
        tcp: TcpStream,
    ) -> Result<tokio_rustls::server::TlsStream<TcpStream>, Option<String>> {
        match tokio::time::timeout(HANDSHAKE_TIMEOUT, self.inner.accept(tcp)).await {
            Ok(Ok(member)) => Ok(member),
            Ok(Err(error)) => Err(self.tls.refusal(&error)),
            Err(_) => Err(Some(format!(
                "no TLS handshake within {HANDSHAKE_TIMEOUT:?}"
            ))),
        }
    }
}

/// Why a handshake with a server failed.
enum Refusal {
    /// The server does not speak TLS.
    NotTls,
    /// The server's certificate is not one this process trusts, and why.
    Untrusted(String),
    /// The server refused this process's certificate, or its lack of one.
    RefusedOurs,
    /// The server said nothing in time.
    Silent,
    Other(String),
}

impl Refusal {
    fn describe(self, who: &str) -> String {
        match self {
            Refusal::NotTls => format!("{who} serves without TLS"),
            Refusal::Untrusted(why) => {
                format!("{who} has a certificate this process does not trust: {why}")
            }
            Refusal::RefusedOurs => format!("{who} refused this process"),
            Refusal::Silent => {
                format!("{who} did not finish a handshake within {HANDSHAKE_TIMEOUT:?}")
            }
            Refusal::Other(why) => format!("{who}: {why}"),
        }
    }
}

impl From<std::io::Error> for Refusal {
    fn from(error: std::io::Error) -> Refusal {
        match error
            .get_ref()
            .and_then(|e| e.downcast_ref::<rustls::Error>())
        {
            Some(rustls::Error::InvalidMessage(_)) => Refusal::NotTls,
            Some(rustls::Error::InvalidCertificate(why)) => Refusal::Untrusted(format!("{why:?}")),
            Some(rustls::Error::AlertReceived(_)) => Refusal::RefusedOurs,
            Some(other) => Refusal::Other(other.to_string()),
            // A server in the clear drops a connection that starts with a TLS hello; a
            // server with a key drops one whose certificate it refused.
            None if error.kind() == std::io::ErrorKind::UnexpectedEof => Refusal::NotTls,
            None => Refusal::Other(error.to_string()),
        }
    }
}

impl Tls {
    /// Why the server `who` refused this process, in words that say which side holds what.
    fn refused_by(&self, who: &str, refusal: Refusal) -> Result<(), String> {
        Err(match refusal {
            Refusal::NotTls if self.keyed => format!(
                "{who} has no cluster key (it serves without TLS), but this process has one \
                 ({KEY_VARIABLE}): give both the same key, or neither"
            ),
            Refusal::NotTls => format!(
                "{who} serves without TLS, but this process uses TLS (--tls-ca): give both \
                 the same settings"
            ),
            // Not from the key's authority: another key's, or the server's own files'.
            Refusal::Untrusted(_) if self.servers_named.is_some() => format!(
                "{who} holds another cluster key than this process, or serves a certificate \
                 of its own (--tls-cert) whose authority this process is not given (--tls-ca): \
                 give both the same key and certificate settings"
            ),
            Refusal::Untrusted(why) => {
                format!("{who} has a certificate that --tls-ca did not sign for it: {why}")
            }
            Refusal::RefusedOurs if self.keyed => {
                format!("{who} holds another cluster key than this process: give both the same key")
            }
            Refusal::RefusedOurs if self.presented.is_none() => format!(
                "{who} takes only clients with a certificate its authority signed, and this \
                 process has none: give --tls-cert and --tls-key"
            ),
            Refusal::RefusedOurs => format!(
                "{who} refused this process's certificate (--tls-cert): its authority did \
                 not sign it"
            ),
            other => other.describe(who),
        })
    }

    /// Why this process's server refused the client whose handshake failed with `error`;
    /// none for a client that closed before it said anything.
    fn refusal(&self, error: &std::io::Error) -> Option<String> {
        let missing = if self.keyed {
            "it has no cluster key"
        } else {
            "it is not one of the cluster's processes"
        };
        let reason = match error
            .get_ref()
            .and_then(|e| e.downcast_ref::<rustls::Error>())
        {
            Some(rustls::Error::InvalidMessage(_)) => format!("it does not speak TLS: {missing}"),
            Some(rustls::Error::NoCertificatesPresented) => {
                format!("it presented no certificate: {missing}")
            }
            Some(rustls::Error::InvalidCertificate(_)) if self.keyed => {
                "its certificate is not from this cluster's key: it holds another key".into()
            }
            Some(rustls::Error::InvalidCertificate(why)) => {
                format!("its certificate is not one this cluster's authority signed: {why:?}")
            }
            Some(rustls::Error::AlertReceived(_)) if self.keyed => {
                "it does not trust this server's certificate: it holds another cluster key, \
                 or none"
                    .into()
            }
            Some(rustls::Error::AlertReceived(alert)) => {
                format!("it does not trust this server's certificate ({alert:?})")
            }
            Some(other) => other.to_string(),
            None if error.kind() == std::io::ErrorKind::UnexpectedEof => return None,
            None => error.to_string(),
        };
        Some(reason)
    }

    fn client_tls(&self) -> ClientTlsConfig {
        let mut config =
            ClientTlsConfig::new().ca_certificate(Certificate::from_pem(&self.servers_by));
        if let Some(presented) = &self.presented {
            config = config.identity(tonic::transport::Identity::from_pem(
                &presented.certificate,
                &presented.private_key,
            ));
        }
        match self.servers_named {
            Some(name) => config.domain_name(name),
            None => config,
        }
    }

    fn client_config(&self) -> Result<rustls::ClientConfig> {
        let builder = rustls::ClientConfig::builder_with_provider(self.provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(internal)?
            .with_root_certificates(roots(&self.servers_by).map_err(internal)?);
        let mut config = match &self.presented {
            Some(presented) => {
                let (chain, key) = presented.parse().map_err(internal)?;
                builder
                    .with_client_auth_cert(chain, key)
                    .map_err(internal)?
            }
            None => builder.with_no_client_auth(),
        };
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(config)
    }
}

impl CertificateFiles {
    /// This process's own certificate, and the authority, as the files hold them.
    fn read(&self) -> Result<(Option<Identity>, Option<String>)> {
        let read = |flag: &str, path: &Path| {
            std::fs::read_to_string(path)
                .map_err(|e| Error::config(flag, format!("cannot read {}: {e}", path.display())))
        };
        let own = match (&self.certificate, &self.private_key) {
            (Some(certificate), Some(private_key)) => Some(Identity {
                certificate: read("--tls-cert", certificate)?,
                private_key: read("--tls-key", private_key)?,
            }),
            (None, None) => None,
            (Some(_), None) => {
                return Err(Error::config(
                    "--tls-key",
                    "--tls-cert needs its private key",
                ))
            }
            (None, Some(_)) => {
                return Err(Error::config(
                    "--tls-cert",
                    "--tls-key needs its certificate",
                ))
            }
        };
        let authority = match &self.authority {
            Some(path) => Some(read("--tls-ca", path)?),
            None if own.is_some() => {
                return Err(Error::config(
                    "--tls-ca",
                    "--tls-cert needs the authority that signed the cluster's certificates: \
                     the other processes' certificates are checked against it",
                ))
            }
            None => None,
        };
        // Each file's faults name it, before anything serves with them.
        let wrong = |flag: &str, path: &Option<PathBuf>, why: String| {
            let path = path.as_deref().unwrap_or(Path::new("")).display();
            Error::config(flag, format!("{path}: {why}"))
        };
        if let Some(own) = &own {
            let certificate = certificates(&own.certificate);
            certificate.map_err(|why| wrong("--tls-cert", &self.certificate, why))?;
            own.parse()
                .map_err(|why| wrong("--tls-key", &self.private_key, why))?;
        }
        if let Some(authority) = &authority {
            roots(authority).map_err(|why| wrong("--tls-ca", &self.authority, why))?;
        }
        Ok((own, authority))
    }
}

/// What parsing PEM found wrong, in words for the flag that named the file.
type Parsed<T> = std::result::Result<T, String>;

impl Identity {
    fn parse(
        &self,
    ) -> Parsed<(
        Vec<pki_types::CertificateDer<'static>>,
        pki_types::PrivateKeyDer<'static>,
    )> {
        use pki_types::pem::PemObject;
        let key = pki_types::PrivateKeyDer::from_pem_slice(self.private_key.as_bytes())
            .map_err(|e| format!("no PEM private key in it: {e}"))?;
        Ok((certificates(&self.certificate)?, key))
    }
}

fn certificates(pem: &str) -> Parsed<Vec<pki_types::CertificateDer<'static>>> {
    use pki_types::pem::PemObject;
    let certificates: Vec<_> = pki_types::CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<std::result::Result<_, _>>()
        .map_err(|e| format!("not PEM certificates: {e}"))?;
    if certificates.is_empty() {
        return Err("no PEM certificate in it".into());
    }
    Ok(certificates)
}

fn roots(pem: &str) -> Parsed<rustls::RootCertStore> {
    let mut roots = rustls::RootCertStore::empty();
    for certificate in certificates(pem)? {
        roots
            .add(certificate)
            .map_err(|e| format!("not a certificate authority: {e}"))?;
    }
    Ok(roots)
}

fn trusting_nothing() -> Result<rustls::ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(internal)?
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth())
}

pub(crate) fn internal(error: impl fmt::Display) -> Error {
    Error::Internal(format!("cluster TLS: {error}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keyed(secret: &str) -> Security {
        let key = ClusterKey::new(secret.into(), "a test".into()).unwrap();
        Security::new(Some(&key), &CertificateFiles::default()).unwrap()
    }

    /// A server of `security` on loopback that answers each member with 9 bytes (as an
    /// HTTP/2 server's first frame header); why it refused each of `clients`, if it did.
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
                    Err(why) => outcomes.push(why),
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
        let (chain, key) = impostor.presented.as_ref().unwrap().parse().unwrap();
        let config = rustls::ClientConfig::builder_with_provider(tls.provider.clone())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots(&tls.servers_by).unwrap())
            .with_client_auth_cert(chain, key)
            .unwrap();
        let tcp = TcpStream::connect(address).await.unwrap();
        let name = pki_types::ServerName::try_from(MEMBER_NAME).unwrap();
        let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
        let refused = match connector.connect(name, tcp).await {
            Ok(mut stream) => stream.read_exact(&mut [0; 9]).await.err(),
            Err(error) => Some(error),
        };
        assert!(refused.is_some(), "the impostor was served");
        // A member of the same key is taken.
        let taken = ours.check_peer("localhost", address, "the server").await;
        assert_eq!(taken, Ok(()));
        let outcomes = outcomes.await.unwrap();
        let expected = "its certificate is not from this cluster's key: it holds another key";
        assert_eq!(outcomes, [Some(expected.to_string()), None]);
    }

    #[tokio::test]
    async fn a_member_tells_a_server_of_another_key_from_one_without_a_key() {
        let ours = keyed("every-member-holds-this-key");
        let (address, _) = server(&keyed("a-key-of-some-other-cluster"), 1).await;
        let refused = ours.check_peer("localhost", address, "the server").await;
        assert!(refused.unwrap_err().contains("holds another cluster key"));
        let (address, _) = server(&ours, 1).await;
        let refused = Security::open()
            .check_peer("localhost", address, "the server")
            .await;
        assert!(refused.unwrap_err().contains("requires the cluster key"));
    }
}
