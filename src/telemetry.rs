//! Logging setup (`RUST_LOG` filters, `LOG_FORMAT` picks text or JSON),
//! OpenTelemetry traces over OTLP/HTTP (`OTEL_EXPORTER_OTLP_ENDPOINT`; off
//! when unset; http or https, a private CA trusted through
//! `OTEL_EXPORTER_OTLP_CERTIFICATE`) with the W3C trace-context helpers the
//! HTTP layer and the event bus use, and [`LogThrottle`], for the lines a
//! stranger can cause at will.

use std::collections::HashMap;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use opentelemetry::propagation::{Extractor, TextMapPropagator};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer, Registry};

use crate::config::{HubConfig, LogFormat};

/// Whether spans are exported (set once, by [`init`] with an endpoint):
/// while false the trace-context helpers cost nothing.
static TRACING: AtomicBool = AtomicBool::new(false);

/// What [`init`] set up: the span exporter, flushed and stopped on drop
/// (every span ended before is sent).
#[must_use = "dropping it stops the span exporter"]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Whether spans are exported (OTEL_EXPORTER_OTLP_ENDPOINT is set).
    pub fn exporting(&self) -> bool {
        self.provider.is_some()
    }

    /// Sends every span ended so far now (blocking; for tests and exit).
    pub fn flush(&self) {
        if let Some(provider) = &self.provider
            && let Err(e) = provider.force_flush()
        {
            tracing::debug!(error = %e, "flushing spans failed");
        }
    }
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        if let Some(provider) = self.provider.take() {
            let _ = provider.shutdown();
        }
    }
}

/// Installs the process's log (and, with `OTEL_EXPORTER_OTLP_ENDPOINT`,
/// trace) subscriber. A second call installs nothing (the first one stays).
pub fn init(config: &HubConfig) -> Telemetry {
    // rmcp logs every stateless /mcp request at info (three lines each).
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,rmcp=warn"));
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        // A failed write to stderr (its reader went away: `mcp-hub | head`,
        // a dead log shipper) is otherwise reported with eprintln!, which
        // panics and kills whatever task was logging - a connection's
        // reader, or the shutdown signal handler. Lose the line instead.
        .log_internal_errors(false);
    let mut layers: Vec<Box<dyn Layer<Registry> + Send + Sync>> = vec![match config.log_format {
        LogFormat::Text => fmt.boxed(),
        LogFormat::Json => fmt.json().boxed(),
    }];
    let provider = match config.otlp_endpoint.as_deref() {
        None => None,
        Some(endpoint) => match tracer_provider(
            endpoint,
            config.otlp_certificate.as_deref(),
            &config.instance_id,
        ) {
            Ok(provider) => Some(provider),
            Err(e) => {
                eprintln!("warning: traces are off: OTEL_EXPORTER_OTLP_ENDPOINT {endpoint}: {e}");
                None
            }
        },
    };
    if let Some(provider) = &provider {
        layers.push(
            tracing_opentelemetry::layer()
                .with_tracer(provider.tracer("mcp-hub"))
                .boxed(),
        );
    }
    let installed = tracing_subscriber::registry()
        .with(layers)
        .with(filter)
        .try_init()
        .is_ok();
    if installed && provider.is_some() {
        opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
        TRACING.store(true, Ordering::Release);
    }
    Telemetry { provider }
}

/// Spans batched to `<endpoint>/v1/traces` (protobuf over HTTP or HTTPS),
/// as service `mcp-hub`, instance INSTANCE_ID. The batch's schedule and
/// size follow the standard `OTEL_BSP_*` variables.
fn tracer_provider(
    endpoint: &str,
    certificate: Option<&std::path::Path>,
    instance: &str,
) -> Result<SdkTracerProvider, String> {
    use opentelemetry_otlp::{Protocol, WithExportConfig, WithHttpConfig};
    let client = export_client::OtlpHttpClient::new(certificate)?;
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_http_client(client)
        .with_protocol(Protocol::HttpBinary)
        .with_endpoint(format!("{}/v1/traces", endpoint.trim_end_matches('/')))
        .build()
        .map_err(|e| e.to_string())?;
    let resource = opentelemetry_sdk::Resource::builder()
        .with_service_name("mcp-hub")
        .with_attribute(opentelemetry::KeyValue::new(
            "service.instance.id",
            instance.to_string(),
        ))
        .with_attribute(opentelemetry::KeyValue::new(
            "service.version",
            env!("CARGO_PKG_VERSION"),
        ))
        .build();
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource)
        .build())
}

/// The exporter's HTTP client: the crate's own reqwest (rustls with ring
/// and the web roots, as every other outbound call), blocking because the
/// batch exporter sends from its own thread, outside any runtime.
mod export_client {
    use std::io::Read;
    use std::path::Path;
    use std::time::Duration;

    use bytes::Bytes;
    use opentelemetry_http::{HttpClient, HttpError, Request, Response};

    /// A collector's answer is a small protobuf; more is not read.
    const MAX_RESPONSE_BYTES: u64 = 64 * 1024;
    /// One export's deadline (the SDK's default, OTEL_EXPORTER_OTLP_TIMEOUT).
    const TIMEOUT: Duration = Duration::from_secs(10);

    #[derive(Debug)]
    pub struct OtlpHttpClient(reqwest::blocking::Client);

    impl OtlpHttpClient {
        /// Trusting the web roots plus every certificate of the PEM file
        /// `certificate` (OTEL_EXPORTER_OTLP_CERTIFICATE), never fewer.
        pub fn new(certificate: Option<&Path>) -> Result<Self, String> {
            let mut builder = reqwest::blocking::Client::builder().timeout(TIMEOUT);
            if let Some(path) = certificate {
                let pem = std::fs::read(path).map_err(|e| {
                    format!("OTEL_EXPORTER_OTLP_CERTIFICATE {}: {e}", path.display())
                })?;
                let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| {
                    format!("OTEL_EXPORTER_OTLP_CERTIFICATE {}: {e}", path.display())
                })?;
                if certs.is_empty() {
                    return Err(format!(
                        "OTEL_EXPORTER_OTLP_CERTIFICATE {}: no PEM certificate in it",
                        path.display()
                    ));
                }
                for cert in certs {
                    builder = builder.add_root_certificate(cert);
                }
            }
            // The blocking client runs a runtime of its own, which must not
            // be built (or dropped) on a runtime's thread: build it apart.
            std::thread::spawn(move || builder.build())
                .join()
                .map_err(|_| "building the OTLP HTTP client panicked".to_string())?
                .map(OtlpHttpClient)
                .map_err(|e| e.to_string())
        }
    }

    #[async_trait::async_trait]
    impl HttpClient for OtlpHttpClient {
        async fn send_bytes(&self, request: Request<Bytes>) -> Result<Response<Bytes>, HttpError> {
            let (parts, body) = request.into_parts();
            let mut response = self
                .0
                .request(parts.method, parts.uri.to_string())
                .headers(parts.headers)
                .body(body.to_vec())
                .send()?;
            let status = response.status();
            let headers = std::mem::take(response.headers_mut());
            let mut body = Vec::new();
            response.take(MAX_RESPONSE_BYTES).read_to_end(&mut body)?;
            let mut answer = Response::builder().status(status).body(Bytes::from(body))?;
            *answer.headers_mut() = headers;
            Ok(answer)
        }
    }
}

/// Whether spans are exported (see [`init`]).
pub fn tracing_enabled() -> bool {
    TRACING.load(Ordering::Acquire)
}

/// HTTP request headers as a trace-context carrier.
pub struct HeaderCarrier<'a>(pub &'a axum::http::HeaderMap);

impl Extractor for HeaderCarrier<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

/// Makes `span` the child of the remote span that `carrier` names (its
/// W3C `traceparent`, e.g. an HTTP caller's); nothing while traces are off
/// or the carrier names none.
pub fn set_remote_parent(span: &tracing::Span, carrier: &dyn Extractor) {
    if !tracing_enabled() || carrier.get("traceparent").is_none() {
        return;
    }
    let parent = TraceContextPropagator::new().extract(carrier);
    let _ = span.set_parent(parent);
}

/// [`set_remote_parent`] from a `traceparent` value (an event's header).
pub fn set_traceparent(span: &tracing::Span, traceparent: &str) {
    let carrier = HashMap::from([("traceparent".to_string(), traceparent.to_string())]);
    set_remote_parent(span, &carrier);
}

/// The W3C `traceparent` of the current span, to carry it on (an event
/// published to the cluster); None while traces are off.
pub fn current_traceparent() -> Option<String> {
    if !tracing_enabled() {
        return None;
    }
    let context = tracing::Span::current().context();
    let mut carrier: HashMap<String, String> = HashMap::new();
    TraceContextPropagator::new().inject_context(&context, &mut carrier);
    carrier.remove("traceparent")
}

/// At most one line per period for one kind of event a caller can repeat
/// at will (a bad webhook signature), so a flood costs one line per period
/// instead of one per request; the next admitted line carries how many
/// were suppressed in between. One `static` per call site, used as
/// `if let Some(suppressed) = BAD_SIGNATURE.admit() { warn!(suppressed, ..) }`.
pub struct LogThrottle {
    period_ms: u64,
    /// Milliseconds since [`epoch`] before which lines are suppressed.
    next_ms: AtomicU64,
    suppressed: AtomicU64,
}

/// The monotonic clock's origin (first use).
fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

/// Milliseconds on the process's monotonic clock, from 1 (so 0 can mean
/// "never"): the throttles' and the listener's deadlines' clock.
pub fn monotonic_ms() -> u64 {
    epoch().elapsed().as_millis() as u64 + 1
}

impl LogThrottle {
    pub const fn new(period: Duration) -> Self {
        LogThrottle {
            period_ms: period.as_millis() as u64,
            next_ms: AtomicU64::new(0),
            suppressed: AtomicU64::new(0),
        }
    }

    /// Some(events suppressed since the last admitted one) when this one
    /// may be logged; None (and counted) when it is to be suppressed.
    pub fn admit(&self) -> Option<u64> {
        self.admit_at(monotonic_ms())
    }

    fn admit_at(&self, now_ms: u64) -> Option<u64> {
        let next = self.next_ms.load(Ordering::Relaxed);
        if now_ms >= next
            && self
                .next_ms
                .compare_exchange(
                    next,
                    now_ms + self.period_ms,
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                )
                .is_ok()
        {
            return Some(self.suppressed.swap(0, Ordering::Relaxed));
        }
        self.suppressed.fetch_add(1, Ordering::Relaxed);
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_period_then_the_suppressed_count() {
        let t = LogThrottle::new(Duration::from_secs(10));
        assert_eq!(t.admit_at(0), Some(0));
        for ms in [1, 500, 9_999] {
            assert_eq!(t.admit_at(ms), None);
        }
        assert_eq!(t.admit_at(10_000), Some(3));
        assert_eq!(t.admit_at(10_001), None);
        assert_eq!(t.admit_at(30_000), Some(1));
    }
}
