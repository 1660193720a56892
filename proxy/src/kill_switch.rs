//! The feature module's kill switch: `GET /admin/modules/features` reads
//! it, `POST /admin/modules/features` with `off`/`on` (or `{"enabled":
//! false}`) flips it at run time, without a config change. Cloudflare's
//! first remediation on 18 Nov 2025 was switching the module off; here it is
//! one call. The initial position is `features_module.enabled` in aegis.yaml.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use crate::admin::AdminState;

/// Reads and sets the switch (in this process, or in every worker).
pub trait FeatureSwitch: Send + Sync + 'static {
    fn enabled(&self) -> bool;
    /// Resolves once every serving process scores (or not) accordingly.
    fn set(&self, enabled: bool) -> Pin<Box<dyn Future<Output = ()> + Send>>;
}

impl FeatureSwitch for std::sync::atomic::AtomicBool {
    fn enabled(&self) -> bool {
        self.load(std::sync::atomic::Ordering::SeqCst)
    }
    fn set(&self, enabled: bool) -> Pin<Box<dyn Future<Output = ()> + Send>> {
        self.store(enabled, std::sync::atomic::Ordering::SeqCst);
        Box::pin(async {})
    }
}

/// `off`, `on`, `false`, `true`, `0`, `1`, or `{"enabled": bool}`.
pub fn parse(body: &[u8]) -> Result<bool, String> {
    let text = String::from_utf8_lossy(body);
    match text.trim().to_ascii_lowercase().as_str() {
        "off" | "false" | "0" => return Ok(false),
        "on" | "true" | "1" => return Ok(true),
        _ => {}
    }
    serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v.get("enabled").and_then(serde_json::Value::as_bool))
        .ok_or_else(|| "send `on`, `off` or {\"enabled\": true|false}".to_string())
}

/// Registers the switch's endpoints on the admin API.
pub fn register(admin: &AdminState, switch: Arc<dyn FeatureSwitch>) {
    metrics::gauge!("aegis_features_module_enabled").set(f64::from(u8::from(switch.enabled())));
    let s = switch.clone();
    admin.register(
        "/admin/modules/features",
        Arc::new(move || serde_json::json!({ "enabled": s.enabled() })),
    );
    admin.register_post(
        "/admin/modules/features",
        Arc::new(move |body| {
            let switch = switch.clone();
            Box::pin(async move {
                let enabled = parse(&body)?;
                switch.set(enabled).await;
                metrics::gauge!("aegis_features_module_enabled").set(f64::from(u8::from(enabled)));
                tracing::warn!(enabled, "feature module switched by the admin API");
                Ok(serde_json::json!({ "enabled": enabled }))
            })
        }),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_forms() {
        assert_eq!(parse(b"off\n"), Ok(false));
        assert_eq!(parse(b"ON"), Ok(true));
        assert_eq!(parse(br#"{"enabled": false}"#), Ok(false));
        assert!(parse(b"maybe").is_err());
        assert!(parse(br#"{"enabled": "no"}"#).is_err());
    }
}
