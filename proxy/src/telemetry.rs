//! Metrics and logs set-up. The request path records through the `metrics`
//! facade only; which recorder receives the figures is decided here (the
//! process-wide Prometheus recorder in a worker, a local one in the sandbox).

use metrics_exporter_prometheus::{BuildError, Matcher, PrometheusBuilder, PrometheusHandle};

/// Buckets of `aegis_request_duration_seconds`.
pub const DURATION_BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// A Prometheus recorder with our histogram buckets, not installed.
pub fn prometheus_builder() -> Result<PrometheusBuilder, BuildError> {
    PrometheusBuilder::new().set_buckets_for_metric(
        Matcher::Full("aegis_request_duration_seconds".to_string()),
        &DURATION_BUCKETS,
    )
}

/// Installs the process-wide recorder and returns the handle the admin
/// listener renders. Once per process.
pub fn install_prometheus() -> Result<PrometheusHandle, BuildError> {
    let handle = prometheus_builder()?.install_recorder()?;
    describe();
    Ok(handle)
}

fn describe() {
    metrics::describe_counter!(
        "aegis_requests_total",
        "Requests served, by route and status"
    );
    metrics::describe_histogram!(
        "aegis_request_duration_seconds",
        metrics::Unit::Seconds,
        "Time from request head to the end of the response body"
    );
    metrics::describe_gauge!(
        "aegis_upstream_endpoint_healthy",
        "1 when the endpoint passes its health checks"
    );
    metrics::describe_gauge!("aegis_config_info", "1 for the active config version");
    metrics::describe_counter!(
        "aegis_feature_errors_total",
        "Requests whose feature scoring failed at run time"
    );
    metrics::describe_counter!(
        "aegis_upstream_errors_total",
        "Requests answered 502/503/504, by route and status"
    );
}

/// Logs to stderr, filtered by `RUST_LOG` (default `info`).
pub fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}
