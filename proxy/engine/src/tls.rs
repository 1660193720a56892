//! Certificates of a config set: parsed, matched with their keys, and checked
//! against the server names they are meant for, so that a certificate for the
//! wrong name is a config error and not a browser warning in production.

use rustls::crypto::ring;
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};

#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("certificate file has no PEM certificate: {0}")]
    NoCertificate(String),
    #[error("key file has no PEM private key: {0}")]
    NoKey(String),
    #[error("key does not fit the certificate: {0}")]
    KeyMismatch(rustls::Error),
    #[error("certificate cannot be parsed: {0}")]
    BadCertificate(String),
    #[error("certificate does not cover server name `{0}`")]
    NameNotCovered(String),
    #[error("`{0}` is not a valid server name")]
    BadName(String),
}

/// Parses a PEM chain and key and checks that the chain's first certificate
/// covers every name (`*.example.com` is checked with a name under it).
pub fn load_certified_key(
    cert_pem: &[u8],
    key_pem: &[u8],
    names: &[String],
) -> Result<CertifiedKey, CertError> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| CertError::NoCertificate(e.to_string()))?;
    let Some(leaf) = chain.first() else {
        return Err(CertError::NoCertificate("the file is empty".into()));
    };
    let key =
        PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| CertError::NoKey(e.to_string()))?;
    let end_entity = webpki::EndEntityCert::try_from(leaf)
        .map_err(|e| CertError::BadCertificate(format!("{e:?}")))?;
    for name in names {
        let probe = match name.strip_prefix("*.") {
            Some(rest) => format!("aegis-probe.{rest}"),
            None => name.clone(),
        };
        let server_name =
            ServerName::try_from(probe.as_str()).map_err(|_| CertError::BadName(name.clone()))?;
        end_entity
            .verify_is_valid_for_subject_name(&server_name)
            .map_err(|_| CertError::NameNotCovered(name.clone()))?;
    }
    CertifiedKey::from_der(chain, key, &ring::default_provider()).map_err(CertError::KeyMismatch)
}
