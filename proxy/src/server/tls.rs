//! TLS: a rustls server config whose certificate resolver reads the active
//! config on every handshake, so certificates swap with the config set.
//! Selection: an exact server name, then the longest `*.suffix` wildcard;
//! an unknown or missing SNI gets the default certificate or a failed
//! handshake, per `tls_unknown_sni`.

use std::sync::Arc;

use aegis_engine::config::settings::UnknownSni;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use crate::pipeline::ConfigHandle;

/// Resolves certificates from the active config.
#[derive(Debug)]
pub struct SniResolver {
    config: ConfigHandle,
    unknown: UnknownSni,
}

impl SniResolver {
    pub fn new(config: ConfigHandle, unknown: UnknownSni) -> Self {
        Self { config, unknown }
    }

    /// The certificate for `sni` under the current config.
    pub fn lookup(&self, sni: Option<&str>) -> Option<Arc<CertifiedKey>> {
        let cfg = self.config.load();
        if let Some(name) = sni {
            let name = name.trim_end_matches('.').to_ascii_lowercase();
            let exact = cfg.certificates.iter().find(|c| {
                c.server_names
                    .iter()
                    .any(|n| !n.starts_with("*.") && n.eq_ignore_ascii_case(&name))
            });
            if let Some(c) = exact {
                return Some(c.key.clone());
            }
            let mut best: Option<(usize, &Arc<CertifiedKey>)> = None;
            for c in &cfg.certificates {
                for n in &c.server_names {
                    if let Some(suffix) = n.strip_prefix('*') {
                        // `*.example.com` covers exactly one more label.
                        let covers = name.len() > suffix.len()
                            && name
                                .get(name.len().saturating_sub(suffix.len())..)
                                .is_some_and(|s| s.eq_ignore_ascii_case(suffix))
                            && !name
                                .get(..name.len().saturating_sub(suffix.len()))
                                .unwrap_or(".")
                                .contains('.');
                        if covers && best.is_none_or(|(l, _)| suffix.len() > l) {
                            best = Some((suffix.len(), &c.key));
                        }
                    }
                }
            }
            if let Some((_, k)) = best {
                return Some(k.clone());
            }
        }
        match self.unknown {
            UnknownSni::Reject => None,
            UnknownSni::DefaultCertificate => cfg
                .certificates
                .iter()
                .find(|c| c.default)
                .or_else(|| cfg.certificates.first())
                .map(|c| c.key.clone()),
        }
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.lookup(hello.server_name())
    }
}

/// A rustls server config with ALPN h2 and http/1.1 over the resolver.
pub fn server_config(resolver: Arc<SniResolver>) -> rustls::ServerConfig {
    let mut cfg = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map(|b| b.with_no_client_auth().with_cert_resolver(resolver.clone()))
    .unwrap_or_else(|_| {
        rustls::ServerConfig::builder()
            .with_no_client_auth()
            .with_cert_resolver(resolver)
    });
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    cfg
}
