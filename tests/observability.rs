//! What the HTTP surface tells an operator (issue 24, docs/operations.md):
//! per-route metrics labelled with the matched route template (never the
//! raw path), `x-request-id` on every response (generated, or the caller's
//! when it is short and printable), and OpenTelemetry spans over OTLP/HTTP
//! that continue a caller's W3C `traceparent`, checked against a fake
//! collector that decodes the protobuf the exporter sends: one broadcast
//! through HAProxy is one trace across 3 instances, and a hub process
//! exports to an https collector whose CA it is given (and to none other).

use crate::support;

use std::io::{Read, Write};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use serde_json::json;
use support::*;

/// The value of the sample of `name` whose labels include every pair of
/// `labels` (whatever their order in the exposition); None if absent.
fn sample(exposition: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    exposition
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let rest = l.strip_prefix(name)?.strip_prefix('{')?;
            let (set, value) = rest.rsplit_once("} ")?;
            Some((set, value))
        })
        .find(|(set, _)| {
            labels
                .iter()
                .all(|(k, v)| set.split(',').any(|pair| pair == format!("{k}=\"{v}\"")))
        })
        .and_then(|(_, value)| value.trim().parse().ok())
}

#[tokio::test]
async fn requests_are_counted_and_timed_by_route_template_and_status() {
    let hub = TestHub::start(&[]).await;
    let (status, _) = hub.get("/api/v1/cluster").await;
    assert_eq!(status, 200);
    let (status, _) = hub.get("/api/v1/sessions/no-such-session").await;
    assert_eq!(status, 404, "an unknown session");
    let (status, _) = hub.get("/no/such/path?token=secret").await;
    assert_eq!(status, 404, "no route");

    let (_, metrics) = hub.get("/metrics").await;
    let count = |route: &str, status: &str| {
        sample(
            &metrics,
            "hub_http_requests_total",
            &[("route", route), ("method", "GET"), ("status", status)],
        )
    };
    assert_eq!(count("/api/v1/cluster", "200"), Some(1.0), "{metrics}");
    assert_eq!(
        count("/api/v1/sessions/{session}", "404"),
        Some(1.0),
        "{metrics}"
    );
    assert_eq!(count("unmatched", "404"), Some(1.0), "{metrics}");
    let timed = sample(
        &metrics,
        "hub_http_request_duration_seconds_count",
        &[("route", "/api/v1/sessions/{session}"), ("method", "GET")],
    );
    assert_eq!(timed, Some(1.0), "{metrics}");
    for raw in ["no-such-session", "/no/such/path", "secret"] {
        assert!(
            !metrics.contains(raw),
            "a raw path leaked into a label: {raw}"
        );
    }
}

fn request_id(response: &reqwest::Response) -> String {
    response
        .headers()
        .get("x-request-id")
        .expect("an x-request-id on the response")
        .to_str()
        .expect("printable")
        .to_string()
}

#[tokio::test]
async fn every_response_carries_a_generated_request_id() {
    let hub = TestHub::start(&[]).await;
    let mut ids = std::collections::BTreeSet::new();
    for path in ["/health", "/health", "/no/such/path"] {
        let response = reqwest::get(hub.http_url(path)).await.expect("GET");
        let id = request_id(&response);
        uuid::Uuid::parse_str(&id).unwrap_or_else(|e| panic!("{path}: `{id}` is no UUID: {e}"));
        ids.insert(id);
    }
    assert_eq!(ids.len(), 3, "each request gets its own id: {ids:?}");
}

#[tokio::test]
async fn a_callers_short_printable_request_id_is_echoed() {
    let hub = TestHub::start(&[]).await;
    let response = reqwest::Client::new()
        .get(hub.http_url("/api/v1/sessions/nobody"))
        .header("x-request-id", "caller-42.a:b")
        .send()
        .await
        .expect("GET");
    assert_eq!(response.status(), 404);
    assert_eq!(request_id(&response), "caller-42.a:b");
}

#[tokio::test]
async fn an_unfit_request_id_is_replaced() {
    let hub = TestHub::start(&[]).await;
    let long = "x".repeat(65);
    for unfit in [long.as_str(), "has space", ""] {
        let response = reqwest::Client::new()
            .get(hub.http_url("/health"))
            .header("x-request-id", unfit)
            .send()
            .await
            .expect("GET");
        let id = request_id(&response);
        assert!(
            uuid::Uuid::parse_str(&id).is_ok(),
            "`{unfit}` was not replaced: `{id}`"
        );
    }
}

/// One span as the fake collector decoded it.
#[derive(Debug, Clone)]
struct ReceivedSpan {
    trace_id: String,
    span_id: String,
    parent_span_id: String,
    name: String,
    /// The span's string attributes.
    attributes: Vec<(String, String)>,
}

/// A fake OTLP/HTTP collector: `POST /v1/traces` with a protobuf
/// `ExportTraceServiceRequest`, on 127.0.0.1.
struct FakeCollector {
    url: String,
    spans: Arc<Mutex<Vec<ReceivedSpan>>>,
}

/// The spans of one OTLP/HTTP export (a protobuf
/// `ExportTraceServiceRequest`); None if it does not decode.
fn decode_spans(body: &[u8]) -> Option<Vec<ReceivedSpan>> {
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_proto::tonic::common::v1::any_value::Value;
    use prost::Message;
    let request = ExportTraceServiceRequest::decode(body).ok()?;
    let spans = request
        .resource_spans
        .iter()
        .flat_map(|r| &r.scope_spans)
        .flat_map(|s| &s.spans)
        .map(|span| ReceivedSpan {
            trace_id: hex(&span.trace_id),
            span_id: hex(&span.span_id),
            parent_span_id: hex(&span.parent_span_id),
            name: span.name.clone(),
            attributes: span
                .attributes
                .iter()
                .filter_map(|kv| match kv.value.as_ref()?.value.as_ref()? {
                    Value::StringValue(v) => Some((kv.key.clone(), v.clone())),
                    _ => None,
                })
                .collect(),
        })
        .collect();
    Some(spans)
}

impl FakeCollector {
    async fn start() -> FakeCollector {
        use axum::body::Bytes;
        let spans: Arc<Mutex<Vec<ReceivedSpan>>> = Arc::default();
        let sink = spans.clone();
        let app = axum::Router::new().route(
            "/v1/traces",
            axum::routing::post(move |body: Bytes| {
                let sink = sink.clone();
                async move {
                    let Some(received) = decode_spans(&body) else {
                        return axum::http::StatusCode::BAD_REQUEST;
                    };
                    sink.lock().unwrap().extend(received);
                    axum::http::StatusCode::OK
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        tokio::spawn(async move { axum::serve(listener, app).await });
        FakeCollector { url, spans }
    }

    fn spans_of(&self, trace_id: &str) -> Vec<ReceivedSpan> {
        let spans = self.spans.lock().unwrap();
        spans
            .iter()
            .filter(|s| s.trace_id == trace_id)
            .cloned()
            .collect()
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The process's trace exporter (a global subscriber, installed once for
/// this binary) and the fake collector it sends to, which runs on its own
/// runtime so it outlives every test's. The other tests' requests are
/// exported too, under other trace ids.
struct Tracing {
    collector: FakeCollector,
    telemetry: mcp_hub::telemetry::Telemetry,
}

fn tracing() -> &'static Tracing {
    static TRACING: OnceLock<Tracing> = OnceLock::new();
    TRACING.get_or_init(|| {
        let (started, collector) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            runtime.block_on(async move {
                let _ = started.send(FakeCollector::start().await);
                std::future::pending::<()>().await
            })
        });
        let collector = collector.recv().expect("the fake collector starts");
        let config = config_from_flags(&["--otel-exporter-otlp-endpoint", &collector.url])
            .expect("valid settings");
        let telemetry = mcp_hub::telemetry::init(&config);
        assert!(telemetry.exporting(), "traces are on with an endpoint");
        Tracing {
            collector,
            telemetry,
        }
    })
}

/// The spans of `trace` once `complete` holds for them, flushing the
/// exporter's batch each round; panics after 20 s.
async fn spans_until(trace: &str, complete: impl Fn(&[ReceivedSpan]) -> bool) -> Vec<ReceivedSpan> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        tokio::task::spawn_blocking(|| tracing().telemetry.flush())
            .await
            .expect("flush");
        let spans = tracing().collector.spans_of(trace);
        if complete(&spans) {
            return spans;
        }
        assert!(
            Instant::now() < deadline,
            "spans of trace {trace} incomplete after 20 s: {spans:#?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// POSTs a test broadcast into `session` as a caller whose span is
/// `caller_span` of trace `trace`.
async fn traced_broadcast(hub: &TestHub, session: &str, trace: &str, caller_span: &str) {
    let response = reqwest::Client::new()
        .post(hub.http_url(&format!("/api/v1/sessions/{session}/broadcast")))
        .header("traceparent", format!("00-{trace}-{caller_span}-01"))
        .json(&json!({"payload": {"n": 1}}))
        .send()
        .await
        .expect("POST");
    assert_eq!(response.status(), 200);
}

const BROADCAST_SPAN: &str = "POST /api/v1/sessions/{session}/broadcast";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rest_broadcast_continues_the_callers_trace() {
    tracing();
    let hub = TestHub::start(&[]).await;
    let (mut member, _) = WsClient::register(&hub.ws_url(), "traced", "member").await;
    const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
    const CALLER_SPAN: &str = "00f067aa0ba902b7";
    traced_broadcast(&hub, "traced", TRACE, CALLER_SPAN).await;
    member.recv_type("broadcast").await;

    let spans = spans_until(TRACE, |spans| {
        ["publish", "deliver", BROADCAST_SPAN]
            .iter()
            .all(|name| spans.iter().any(|s| s.name == *name))
    })
    .await;
    let server = spans
        .iter()
        .find(|s| s.name == BROADCAST_SPAN)
        .expect("the request's span");
    assert_eq!(
        server.parent_span_id, CALLER_SPAN,
        "the request's span is the caller's child"
    );
    let publish = spans.iter().find(|s| s.name == "publish").expect("publish");
    assert_eq!(
        publish.parent_span_id, server.span_id,
        "the publish happens within the request: {spans:#?}"
    );
    let deliver = spans.iter().find(|s| s.name == "deliver").expect("deliver");
    assert_eq!(
        deliver.parent_span_id, publish.span_id,
        "the delivery continues the published event's trace: {spans:#?}"
    );
}

/// Three hubs on Redis behind HAProxy: the event's header carries the
/// publish span's `traceparent`, so one broadcast through the load
/// balancer is one trace: the caller's span → the request's span on the
/// hub that took it → `publish` → a `deliver` on each of the 3 instances.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_broadcast_is_one_trace_across_three_instances() {
    tracing();
    let redis = TestRedis::start();
    const INSTANCES: [&str; 3] = ["trace-a", "trace-b", "trace-c"];
    let hubs = start_cluster(&redis, &INSTANCES, &[]).await;
    let addrs: Vec<_> = hubs.iter().map(|h| h.addr).collect();
    let lb = Haproxy::start(&addrs, 3);
    let mut members = Vec::new();
    for (hub, instance) in hubs.iter().zip(INSTANCES) {
        let (member, _) = WsClient::register(&hub.ws_url(), "relay", instance).await;
        members.push(member);
    }
    const TRACE: &str = "0af7651916cd43dd8448eb211c80319c";
    const CALLER_SPAN: &str = "b7ad6b7169203331";
    let response = reqwest::Client::new()
        .post(format!(
            "http://127.0.0.1:{}/api/v1/sessions/relay/broadcast",
            lb.port
        ))
        .header("traceparent", format!("00-{TRACE}-{CALLER_SPAN}-01"))
        .json(&json!({"payload": {"n": 1}}))
        .send()
        .await
        .expect("POST through HAProxy");
    assert_eq!(response.status(), 200);
    for member in &mut members {
        member.recv_type("broadcast").await;
    }

    let delivered_on = |spans: &[ReceivedSpan], instance: &str| {
        spans
            .iter()
            .find(|s| {
                s.name == "deliver"
                    && s.attributes
                        .iter()
                        .any(|(k, v)| k == "instance" && v == instance)
            })
            .cloned()
    };
    let spans = spans_until(TRACE, |spans| {
        spans.iter().any(|s| s.name == BROADCAST_SPAN)
            && spans.iter().any(|s| s.name == "publish")
            && INSTANCES
                .iter()
                .all(|instance| delivered_on(spans, instance).is_some())
    })
    .await;
    let requests: Vec<_> = spans.iter().filter(|s| s.name == BROADCAST_SPAN).collect();
    assert_eq!(requests.len(), 1, "one request span: {spans:#?}");
    assert_eq!(
        requests[0].parent_span_id, CALLER_SPAN,
        "the request's span is the caller's child"
    );
    let publishes: Vec<_> = spans.iter().filter(|s| s.name == "publish").collect();
    assert_eq!(publishes.len(), 1, "one publish: {spans:#?}");
    assert_eq!(
        publishes[0].parent_span_id, requests[0].span_id,
        "the publish happens within the request: {spans:#?}"
    );
    for instance in INSTANCES {
        let deliver = delivered_on(&spans, instance).expect("a delivery");
        assert_eq!(
            deliver.parent_span_id, publishes[0].span_id,
            "{instance}'s delivery is the publish's child: {spans:#?}"
        );
    }
}

/// The fake collector behind TLS, for a hub in another process: HTTP/1.1
/// read by hand over rustls (a thread per connection), its certificate
/// signed by a throw-away CA. Handshakes a client refused are counted.
struct TlsCollector {
    url: String,
    spans: Arc<Mutex<Vec<ReceivedSpan>>>,
    refused_handshakes: Arc<AtomicUsize>,
    _ca: TestCa,
}

impl TlsCollector {
    fn start() -> TlsCollector {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let ca = TestCa::make();
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(ca.server_cert())
            .expect("server.pem")
            .map(|c| c.expect("a certificate"))
            .collect();
        let key = PrivateKeyDer::from_pem_file(ca.server_key()).expect("server.key");
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("TLS versions")
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .expect("the server certificate");
        let config = Arc::new(config);
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let spans: Arc<Mutex<Vec<ReceivedSpan>>> = Arc::default();
        let refused_handshakes = Arc::new(AtomicUsize::new(0));
        let (sink, refused) = (spans.clone(), refused_handshakes.clone());
        std::thread::spawn(move || {
            for tcp in listener.incoming().flatten() {
                let (config, sink, refused) = (config.clone(), sink.clone(), refused.clone());
                std::thread::spawn(move || {
                    let _ = tcp.set_read_timeout(Some(Duration::from_secs(30)));
                    let Ok(conn) = rustls::ServerConnection::new(config) else {
                        return;
                    };
                    let mut tls = rustls::StreamOwned::new(conn, tcp);
                    while tls.conn.is_handshaking() {
                        if tls.conn.complete_io(&mut tls.sock).is_err() {
                            refused.fetch_add(1, Ordering::SeqCst);
                            return;
                        }
                    }
                    serve_exports(&mut tls, &sink);
                });
            }
        });
        TlsCollector {
            url: format!("https://localhost:{port}"),
            spans,
            refused_handshakes,
            _ca: ca,
        }
    }
}

/// Answers `POST /v1/traces` requests on one connection until it closes,
/// keeping the spans they carry.
fn serve_exports(stream: &mut (impl Read + Write), sink: &Mutex<Vec<ReceivedSpan>>) {
    let mut buffer: Vec<u8> = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    loop {
        let Some(end) = buffer.windows(4).position(|w| w == b"\r\n\r\n") else {
            match stream.read(&mut chunk) {
                Ok(0) | Err(_) => return,
                Ok(n) => buffer.extend_from_slice(&chunk[..n]),
            }
            continue;
        };
        let head = String::from_utf8_lossy(&buffer[..end]).to_ascii_lowercase();
        let length: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        while buffer.len() < end + 4 + length {
            match stream.read(&mut chunk) {
                Ok(0) | Err(_) => return,
                Ok(n) => buffer.extend_from_slice(&chunk[..n]),
            }
        }
        let status = match decode_spans(&buffer[end + 4..end + 4 + length]) {
            Some(spans) if head.starts_with("post /v1/traces ") => {
                sink.lock().unwrap().extend(spans);
                "200 OK"
            }
            _ => "400 Bad Request",
        };
        buffer.drain(..end + 4 + length);
        let answer = format!("HTTP/1.1 {status}\r\ncontent-length: 0\r\n\r\n");
        if stream
            .write_all(answer.as_bytes())
            .and_then(|_| stream.flush())
            .is_err()
        {
            return;
        }
    }
}

/// A hub process exporting spans with the OTEL_* settings `envs` (a 100 ms
/// batch delay), and the trace id of a request made to it.
async fn traced_request(envs: &[(&str, &str)]) -> (HubProcess, String) {
    let mut settings = vec![("OTEL_BSP_SCHEDULE_DELAY", "100")];
    settings.extend_from_slice(envs);
    let hub = HubProcess::start(&[], &settings).await;
    let trace = uuid::Uuid::new_v4().simple().to_string();
    let response = reqwest::Client::new()
        .get(hub.http_url("/health"))
        .header("traceparent", format!("00-{trace}-00f067aa0ba902b7-01"))
        .send()
        .await
        .expect("GET /health");
    assert_eq!(response.status(), 200);
    (hub, trace)
}

/// OTEL_EXPORTER_OTLP_ENDPOINT may be https: the collector's certificate is
/// verified against OTEL_EXPORTER_OTLP_CERTIFICATE's CA, and spans arrive.
#[tokio::test]
async fn spans_reach_an_https_collector_whose_ca_is_given() {
    let collector = TlsCollector::start();
    let ca = collector._ca.ca().display().to_string();
    let (_hub, trace) = traced_request(&[
        ("OTEL_EXPORTER_OTLP_ENDPOINT", &collector.url),
        ("OTEL_EXPORTER_OTLP_CERTIFICATE", &ca),
    ])
    .await;
    let arrived = || {
        let spans = collector.spans.lock().unwrap();
        let found = spans.iter().any(|s| s.trace_id == trace);
        async move { found }
    };
    wait_until_async(
        "the request's span at the https collector",
        Duration::from_secs(20),
        arrived,
    )
    .await;
    assert_eq!(collector.refused_handshakes.load(Ordering::SeqCst), 0);
}

/// Verification is never off: without the CA the exporter refuses the
/// collector's certificate, and no span is sent.
#[tokio::test]
async fn an_https_collector_with_an_unknown_ca_gets_no_spans() {
    let collector = TlsCollector::start();
    let (_hub, _trace) = traced_request(&[("OTEL_EXPORTER_OTLP_ENDPOINT", &collector.url)]).await;
    let refused = || {
        let n = collector.refused_handshakes.load(Ordering::SeqCst);
        async move { n > 0 }
    };
    wait_until_async(
        "the exporter to refuse the collector's certificate",
        Duration::from_secs(20),
        refused,
    )
    .await;
    assert!(collector.spans.lock().unwrap().is_empty());
}
