//! Certificates checked as a client would, at judge time.
//!
//! Compiling a config already checks that a certificate parses, that its key
//! matches and that it covers the names of its `tls` entry. What it does not
//! check is what a browser checks at the handshake: that the certificate is
//! valid *now* (and stays valid for a while), and that its chain leads to
//! something the client trusts. An expired renewal or a chain file without
//! its intermediate compiles fine and fails every handshake once live. This
//! module runs rustls' own client verifier (`WebPkiServerVerifier`) over
//! every certificate of a compiled config.
//!
//! What "trusted" means here:
//! - without a configured trust store, the chain must lead to a certificate
//!   of the chain itself or of the system store. That is the check for a
//!   missing intermediate: a leaf whose issuer is nowhere is refused, a
//!   self-signed certificate (a test or a private setup) is accepted as it
//!   is. A private CA whose root only the clients hold needs the store.
//! - with `gate.policy.tls_trust_store`, the chain must verify to that store
//!   (or the system's), as a client holding those roots would see it.
//!
//! The module reads nothing itself: the caller passes the trust roots and
//! the time, so it stays pure and testable.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::ServerCertVerifier;
use rustls::{CertificateError, RootCertStore};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use sha2::{Digest, Sha256};

use crate::CompiledConfig;

/// Files where distributions keep the system's trust roots (PEM); the first
/// that exists is used. `SSL_CERT_FILE` comes first when set.
pub const SYSTEM_TRUST_FILES: [&str; 4] = [
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/ca-bundle.pem",
    "/etc/ssl/cert.pem",
];

/// What kind of problem a certificate has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Problem {
    Expired,
    NotYetValid,
    /// Valid now, expired at the end of the window.
    Expiring,
    /// The chain does not lead to a trusted root (a missing intermediate).
    Chain,
}

impl Problem {
    /// The reason code, without `regression:`.
    pub fn code(self) -> &'static str {
        match self {
            Problem::Expired => "tls_expired",
            Problem::NotYetValid => "tls_not_yet_valid",
            Problem::Expiring => "tls_expiring",
            Problem::Chain => "tls_chain",
        }
    }
}

/// One certificate's problem.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertProblem {
    pub problem: Problem,
    /// The entry's server names, comma-joined.
    pub names: String,
    pub detail: String,
    /// SHA-256 of the leaf certificate: the same certificate in the active
    /// version is an old problem, not the candidate's.
    pub leaf_sha256: [u8; 32],
}

/// How to check.
#[derive(Debug, Clone)]
pub struct CheckOptions {
    /// Judge time.
    pub now: SystemTime,
    /// A certificate that expires within this window is a problem.
    pub expiry_window: Duration,
    /// Roots of the system store (may be empty).
    pub system_roots: Vec<CertificateDer<'static>>,
    /// Roots of a configured store; when given, the chain must verify to
    /// these or the system's, not to a certificate of its own.
    pub configured_roots: Option<Vec<CertificateDer<'static>>>,
}

#[derive(Debug, thiserror::Error)]
pub enum TrustError {
    #[error("{path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: no PEM certificate in the file")]
    Empty { path: String },
}

/// Parses a PEM bundle of trust roots.
pub fn parse_roots(pem: &[u8]) -> Vec<CertificateDer<'static>> {
    CertificateDer::pem_slice_iter(pem)
        .filter_map(Result::ok)
        .collect()
}

/// Reads a PEM trust store.
pub fn read_roots(path: &std::path::Path) -> Result<Vec<CertificateDer<'static>>, TrustError> {
    let shown = path.display().to_string();
    let bytes = std::fs::read(path).map_err(|source| TrustError::Read {
        path: shown.clone(),
        source,
    })?;
    let roots = parse_roots(&bytes);
    if roots.is_empty() {
        return Err(TrustError::Empty { path: shown });
    }
    Ok(roots)
}

/// The system's trust roots, or none when no store file is found.
pub fn system_roots() -> Vec<CertificateDer<'static>> {
    let env = std::env::var_os("SSL_CERT_FILE").map(std::path::PathBuf::from);
    env.into_iter()
        .chain(SYSTEM_TRUST_FILES.iter().map(std::path::PathBuf::from))
        .find_map(|p| read_roots(&p).ok())
        .unwrap_or_default()
}

/// SHA-256 of a DER certificate.
pub fn fingerprint(der: &[u8]) -> [u8; 32] {
    Sha256::digest(der).into()
}

/// True when a certificate name covers `host` (lowercase, no port):
/// `*.example.com` covers one label under it, as clients match.
pub fn name_covers(name: &str, host: &str) -> bool {
    let name = name.to_ascii_lowercase();
    match name.strip_prefix("*.") {
        Some(rest) => host
            .strip_suffix(rest)
            .and_then(|l| l.strip_suffix('.'))
            .is_some_and(|l| !l.is_empty() && !l.contains('.')),
        None => name == host,
    }
}

/// True when some certificate of `config` is for `host`.
pub fn covers(config: &CompiledConfig, host: &str) -> bool {
    config
        .certificates
        .iter()
        .any(|c| c.server_names.iter().any(|n| name_covers(n, host)))
}

fn unix(t: SystemTime) -> UnixTime {
    UnixTime::since_unix_epoch(t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default())
}

/// `2026-12-01` from seconds since the epoch (civil-from-days, Hinnant).
fn date(t: UnixTime) -> String {
    let days = i64::try_from(t.as_secs() / 86_400).unwrap_or(0);
    let (y, m, d) = crate::civil::civil_from_days(days);
    format!("{y:04}-{m:02}-{d:02}")
}

/// A name the certificate must be valid for, in the form the verifier takes.
fn probe_name(names: &[String]) -> Option<ServerName<'static>> {
    let n = names.first()?;
    let probe = match n.strip_prefix("*.") {
        Some(rest) => format!("aegis-probe.{rest}"),
        None => n.clone(),
    };
    ServerName::try_from(probe).ok()
}

/// Checks every certificate of `config`; one problem at most per
/// certificate (the first of expired / not yet valid / chain / expiring).
pub fn check(config: &CompiledConfig, opts: &CheckOptions) -> Vec<CertProblem> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let now = unix(opts.now);
    let later = unix(opts.now.checked_add(opts.expiry_window).unwrap_or(opts.now));
    let mut out = Vec::new();
    for cert in &config.certificates {
        let chain = &cert.key.cert;
        let Some(leaf) = chain.first() else { continue };
        let intermediates = chain.get(1..).unwrap_or(&[]);
        let names = cert.server_names.join(",");
        let leaf_sha256 = fingerprint(leaf);
        let problem = |problem: Problem, detail: String| CertProblem {
            problem,
            names: names.clone(),
            detail,
            leaf_sha256,
        };
        let Some(server_name) = probe_name(&cert.server_names) else {
            continue;
        };
        let own_chain = opts.configured_roots.is_none();
        if own_chain && let Some(dates) = self_signed_ca(leaf) {
            // `openssl req -x509` makes CA:TRUE certificates by default, and
            // dev and private setups serve them as their own leaf. webpki
            // refuses any CA as an end entity, so such a certificate gets
            // only its dates checked here, as the self-signed certificate it
            // is (clients that pinned it accept it).
            let (not_before, not_after) = dates;
            let (now_s, later_s) = (now.as_secs(), later.as_secs());
            if now_s < not_before {
                out.push(problem(
                    Problem::NotYetValid,
                    format!(
                        "not valid before {} (notBefore)",
                        date(UnixTime::since_unix_epoch(Duration::from_secs(not_before)))
                    ),
                ));
            } else if now_s > not_after {
                out.push(problem(
                    Problem::Expired,
                    format!(
                        "expired on {} (notAfter)",
                        date(UnixTime::since_unix_epoch(Duration::from_secs(not_after)))
                    ),
                ));
            } else if later_s > not_after {
                let days = not_after.saturating_sub(now_s) / 86_400;
                out.push(problem(
                    Problem::Expiring,
                    format!(
                        "expires on {} (in {days} day(s), within the {}-day window of gate.policy.tls_expiry_window)",
                        date(UnixTime::since_unix_epoch(Duration::from_secs(not_after))),
                        opts.expiry_window.as_secs() / 86_400
                    ),
                ));
            }
            continue;
        }
        let mut roots = RootCertStore::empty();
        let anchors = opts
            .configured_roots
            .iter()
            .flatten()
            .chain(&opts.system_roots)
            .chain(chain.iter().filter(|_| own_chain));
        for a in anchors {
            // A root that does not parse is skipped, as clients do.
            let _ = roots.add(a.clone());
        }
        if roots.is_empty() {
            out.push(problem(
                Problem::Chain,
                "no trust root to verify the chain against".to_string(),
            ));
            continue;
        }
        let verifier =
            match WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                .build()
            {
                Ok(v) => v,
                Err(e) => {
                    out.push(problem(Problem::Chain, format!("cannot verify: {e}")));
                    continue;
                }
            };
        let verify =
            |t: UnixTime| verifier.verify_server_cert(leaf, intermediates, &server_name, &[], t);
        let err = match verify(now) {
            Ok(_) => None,
            Err(rustls::Error::InvalidCertificate(e)) => Some(e),
            Err(e) => {
                out.push(problem(Problem::Chain, e.to_string()));
                continue;
            }
        };
        match err {
            None => {}
            Some(CertificateError::ExpiredContext { not_after, .. }) => {
                out.push(problem(
                    Problem::Expired,
                    format!("expired on {} (notAfter)", date(not_after)),
                ));
                continue;
            }
            Some(CertificateError::Expired) => {
                out.push(problem(Problem::Expired, "expired".to_string()));
                continue;
            }
            Some(CertificateError::NotValidYetContext { not_before, .. }) => {
                out.push(problem(
                    Problem::NotYetValid,
                    format!("not valid before {} (notBefore)", date(not_before)),
                ));
                continue;
            }
            Some(CertificateError::NotValidYet) => {
                out.push(problem(Problem::NotYetValid, "not yet valid".to_string()));
                continue;
            }
            Some(CertificateError::UnknownIssuer) => {
                let to = if own_chain {
                    "its issuer is neither in the chain file nor in the system trust store (a missing intermediate?)"
                } else {
                    "the chain does not verify to the configured trust store (gate.policy.tls_trust_store)"
                };
                out.push(problem(Problem::Chain, to.to_string()));
                continue;
            }
            Some(e) => {
                out.push(problem(Problem::Chain, format!("{e:?}")));
                continue;
            }
        }
        let window_days = opts.expiry_window.as_secs() / 86_400;
        match verify(later) {
            Err(rustls::Error::InvalidCertificate(CertificateError::ExpiredContext {
                not_after,
                ..
            })) => {
                let days = not_after.as_secs().saturating_sub(now.as_secs()) / 86_400;
                out.push(problem(
                    Problem::Expiring,
                    format!(
                        "expires on {} (in {days} day(s), within the {window_days}-day window of gate.policy.tls_expiry_window)",
                        date(not_after)
                    ),
                ));
            }
            Err(rustls::Error::InvalidCertificate(CertificateError::Expired)) => {
                out.push(problem(
                    Problem::Expiring,
                    format!("expires within the {window_days}-day window of gate.policy.tls_expiry_window"),
                ));
            }
            _ => {}
        }
    }
    out
}

/// The validity (unix seconds) of a self-issued certificate that is a CA,
/// `None` for anything else (or what does not parse).
fn self_signed_ca(der: &[u8]) -> Option<(u64, u64)> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let ca = cert
        .basic_constraints()
        .ok()
        .flatten()
        .is_some_and(|b| b.value.ca);
    if !ca || cert.subject() != cert.issuer() {
        return None;
    }
    let v = cert.validity();
    let secs = |t: i64| u64::try_from(t).unwrap_or(0);
    Some((
        secs(v.not_before.timestamp()),
        secs(v.not_after.timestamp()),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards_cover_one_label() {
        assert!(name_covers("*.example.com", "a.example.com"));
        assert!(!name_covers("*.example.com", "a.b.example.com"));
        assert!(!name_covers("*.example.com", "example.com"));
        assert!(name_covers("Shop.example.com", "shop.example.com"));
    }

    #[test]
    fn dates() {
        assert_eq!(
            date(UnixTime::since_unix_epoch(Duration::ZERO)),
            "1970-01-01"
        );
        assert_eq!(
            date(UnixTime::since_unix_epoch(Duration::from_secs(
                1_798_761_600
            ))),
            "2027-01-01"
        );
    }
}
