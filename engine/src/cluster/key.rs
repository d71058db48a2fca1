//! The cluster's shared key, and the certificates every process derives from it: the
//! same certificate authority in each (its private key is a hash of the key), and a
//! member certificate of each process's own, signed by it. The key is never shown.

use std::fmt;
use std::path::Path;
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, PKCS_ED25519,
};
use sha2::{Digest, Sha256};
use tokio_rustls::rustls::pki_types::PrivatePkcs8KeyDer;

use super::security::{internal, Identity};
use crate::error::{Error, Result};

/// The variable that holds the key itself.
pub const KEY_VARIABLE: &str = "BACKFILL_CLUSTER_KEY";

/// Fewer characters than this make a key that can be guessed.
const MIN_KEY_CHARS: usize = 16;

/// The name every member certificate is issued for, and what members check it against:
/// members are trusted for holding the key, not for their host names.
pub(crate) const MEMBER_NAME: &str = "member.cluster.backfill";

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

/// What a process derives from the key: the authority every member trusts, and its own
/// certificate.
pub(crate) struct Member {
    pub(crate) authority: String,
    pub(crate) identity: Identity,
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
                    let file = file.display().to_string();
                    Error::config(file, format!("cannot read the cluster key: {e}"))
                })?;
                ClusterKey::new(read, file.display().to_string()).map(Some)
            }
            (None, Some(secret)) => ClusterKey::new(secret, KEY_VARIABLE.into()).map(Some),
            (None, None) => Ok(None),
        }
    }

    /// A key as written (surrounding whitespace, a file's last newline, is not part of
    /// it), and where it came from, for errors.
    pub fn new(secret: String, from: String) -> Result<ClusterKey> {
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

    /// The key's authority, and a new certificate it signed for this process.
    pub(crate) fn member(&self) -> Result<Member> {
        let authority_key = self.authority_key()?;
        let mut authority = CertificateParams::default();
        authority.distinguished_name = common_name("backfill cluster authority");
        authority.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        authority.key_usages = vec![KeyUsagePurpose::KeyCertSign];
        let authority_pem = authority
            .self_signed(&authority_key)
            .map_err(internal)?
            .pem();

        let member_key = KeyPair::generate().map_err(internal)?;
        let mut member = CertificateParams::new(vec![MEMBER_NAME.to_string()]).map_err(internal)?;
        member.distinguished_name = common_name("backfill cluster member");
        member.use_authority_key_identifier_extension = true;
        member.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let issuer = Issuer::new(authority, authority_key);
        let certificate = member.signed_by(&member_key, &issuer).map_err(internal)?;
        Ok(Member {
            authority: authority_pem,
            identity: Identity {
                certificate: certificate.pem(),
                private_key: member_key.serialize_pem(),
            },
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
        let der = PrivatePkcs8KeyDer::from(pkcs8);
        KeyPair::from_pkcs8_der_and_sign_algo(&der, &PKCS_ED25519).map_err(internal)
    }
}

fn common_name(name: &str) -> rcgen::DistinguishedName {
    let mut distinguished = rcgen::DistinguishedName::new();
    distinguished.push(DnType::CommonName, name);
    distinguished
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_is_never_shown_and_a_short_one_is_refused() {
        let key = ClusterKey::new("  every-member-holds-this-key\n".into(), "a file".into());
        assert_eq!(format!("{:?}", key.unwrap()), "ClusterKey(from a file)");
        let short = ClusterKey::new("tiny".into(), KEY_VARIABLE.into()).unwrap_err();
        let message = short.to_string();
        assert!(message.contains(KEY_VARIABLE), "{message}");
        assert!(!message.contains("tiny"), "{message}");
    }
}
