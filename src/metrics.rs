//! Prometheus metrics of one hub instance, exposed at `GET /metrics`.
//!
//! Every metric lives in the hub's own [`Registry`] (not the global one) so
//! several hubs can run in one test process. Labels are bounded sets
//! (message types, error codes, reasons) and never client or session ids.

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

/// The `channel` label of `hub_pubsub_messages_received_total`: a
/// session's events, this instance's inbox, the dashboard's monitor
/// channel.
pub const PUBSUB_CHANNELS: [&str; 3] = ["session", "inbox", "monitor"];

pub struct Metrics {
    registry: Registry,
    pub connections: IntGauge,
    pub connections_opened: IntCounter,
    pub connections_closed: IntCounterVec,
    pub messages_received: IntCounterVec,
    pub messages_sent: IntCounterVec,
    pub errors: IntCounterVec,
    pub broadcast_latency: Histogram,
    pub slow_consumer_disconnects: IntCounter,
    pub redis_command_duration: HistogramVec,
    pub redis_errors: IntCounterVec,
    pub pubsub_received: IntCounterVec,
    pub ai_requests: IntCounterVec,
    pub ai_upstream_duration: HistogramVec,
    pub ai_cache_hits: IntCounter,
    pub ai_singleflight_joins: IntCounter,
    pub ai_lock_waits: IntCounter,
    pub ai_rate_limited: IntCounter,
    pub agent_calls: IntCounterVec,
    /// `/mcp` tool calls, by tool and outcome (`ok`, `error`: a tool
    /// error; an unknown tool is counted as tool `unknown`).
    pub mcp_tool_calls: IntCounterVec,
    pub approvals: IntCounterVec,
    pub media: IntCounterVec,
    /// Agent calls an instance holds, by table (`pending`: awaiting an
    /// answer here; `forwarded`: sent to a local agent; `late`: timed out,
    /// kept for a late answer).
    pub agent_calls_held: IntGaugeVec,
    pub store_up: IntGauge,
    /// Departures the store did not take yet (`hub::departures`).
    pub departures_pending: IntGauge,
    pub token_verifications: IntCounterVec,
    /// What a hostile-input limit shed, by [`Shed`] (docs/security.md §12).
    pub limit_shed: IntCounterVec,
    /// HTTP requests answered, by route (the matched route template, e.g.
    /// `/api/v1/sessions/{session}`, or [`UNMATCHED_ROUTE`]), method (or
    /// `other`) and status; WebSocket upgrades included (status 101).
    pub http_requests: IntCounterVec,
    /// Time from a request's arrival to its response head, by route and
    /// method: a stream or an upgraded WebSocket is timed to its head,
    /// never for its life.
    pub http_request_duration: HistogramVec,
    /// `messages_sent` series of the known message types, resolved on first
    /// use instead of a label lookup per written frame.
    sent_by_kind: [std::sync::OnceLock<IntCounter>; EVENT_KINDS.len() + 1],
}

/// Message types the hub sends (`Outbound::kind`, and what
/// `hub::static_kind` maps a logged event's kind to): every
/// [`ServerEvent`](crate::protocol::ServerEvent) kind, then [`OTHER_KIND`].
const EVENT_KINDS: &[&str] =
    <crate::protocol::ServerEvent<'static> as strum::VariantNames>::VARIANTS;
/// The `messages_sent` label of a frame that is no `ServerEvent`.
const OTHER_KIND: &str = "other";

fn sent_kinds() -> impl Iterator<Item = &'static str> {
    EVENT_KINDS.iter().copied().chain([OTHER_KIND])
}

/// The `limit` label of `hub_limit_shed_total`: which hostile-input limit
/// shed something. docs/security.md §12 maps each to its attack and setting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, strum::IntoStaticStr, strum::EnumIter)]
#[strum(serialize_all = "snake_case")]
pub enum Shed {
    /// A request head not complete within HEADER_READ_TIMEOUT_MS.
    HeaderTimeout,
    /// A request body not complete within HEADER_READ_TIMEOUT_MS of its head.
    BodyTimeout,
    /// A response that made no progress for KEEPALIVE_TIMEOUT_MS (the
    /// client stopped reading).
    ResponseStalled,
    /// A request head over MAX_HEADER_BYTES.
    HeaderTooLarge,
    /// A connection accepted over MAX_PENDING_CONNECTIONS.
    PendingConnections,
    /// A keep-alive connection idle past KEEPALIVE_TIMEOUT_MS.
    KeepaliveIdle,
    /// A WebSocket not registered within REGISTER_TIMEOUT_MS.
    RegisterTimeout,
    /// A connection over MAX_CONNECTIONS_PER_IP.
    ConnectionsPerIp,
    /// A WebSocket over MAX_CONNECTIONS_PER_IDENTITY.
    ConnectionsPerIdentity,
    /// An accept that failed for want of file descriptors (backed off).
    AcceptExhausted,
    /// A request whose `Host` is not in ALLOWED_HOSTS.
    HostNotAllowed,
    /// An events page cut at EVENTS_PAGE_MAX_BYTES / EVENTS_PAGE_MAX_EVENTS.
    EventsPage,
    /// A resume whose backlog passed REPLAY_MAX_BYTES (`recovered: false`).
    ReplayBudget,
    /// An idempotency result over IDEMPOTENCY_MAX_RESULT_BYTES, kept as a digest.
    IdempotencyDigest,
    /// An idempotency record forgotten early (per-caller or total cap).
    IdempotencyEvicted,
    /// A fuzzy contact match cut short by its budget.
    FuzzyBudget,
    /// A contact dropped at MAX_CONTACTS_PER_SESSION from a webhook.
    WebhookContactCap,
    /// A webhook message older than the accepted window.
    WebhookStale,
    /// A timed-out agent call forgotten before the agent answered: its
    /// grace ended, or MAX_LATE_AGENT_CALLS were held.
    AgentCallPruned,
    /// A session removed after SESSION_IDLE_TTL_MS without activity.
    SessionIdleExpired,
    /// A JWKS response over its size cap.
    JwksTooLarge,
}

impl Shed {
    /// The `limit` label value.
    pub fn label(self) -> &'static str {
        self.into()
    }
}

/// `hub_ws_messages_received_total`'s `type` for a frame that is not a
/// valid client message.
pub const RECEIVED_INVALID: &str = "invalid";

const LATENCY_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];
/// `route` of a request that matched no route (a 404 of the router).
pub const UNMATCHED_ROUTE: &str = "unmatched";

const HTTP_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];
const UPSTREAM_BUCKETS: &[f64] = &[0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 15.0, 30.0, 60.0];

impl Metrics {
    pub fn new(instance: &str) -> Self {
        let registry = Registry::new();
        let m = Metrics {
            connections: IntGauge::new("hub_ws_connections", "Open WebSocket connections")
                .expect("valid metric"),
            connections_opened: IntCounter::new(
                "hub_ws_connections_opened_total",
                "WebSocket connections accepted",
            )
            .expect("valid metric"),
            connections_closed: IntCounterVec::new(
                Opts::new(
                    "hub_ws_connections_closed_total",
                    "WebSocket connections closed, by reason",
                ),
                &["reason"],
            )
            .expect("valid metric"),
            messages_received: IntCounterVec::new(
                Opts::new(
                    "hub_ws_messages_received_total",
                    "Client messages received, by message type",
                ),
                &["type"],
            )
            .expect("valid metric"),
            messages_sent: IntCounterVec::new(
                Opts::new(
                    "hub_ws_messages_sent_total",
                    "Messages written to clients, by message type",
                ),
                &["type"],
            )
            .expect("valid metric"),
            errors: IntCounterVec::new(
                Opts::new("hub_errors_total", "Errors reported to clients, by code"),
                &["code"],
            )
            .expect("valid metric"),
            broadcast_latency: Histogram::with_opts(
                HistogramOpts::new(
                    "hub_broadcast_latency_seconds",
                    "Time from an event's production to its write to one recipient",
                )
                .buckets(LATENCY_BUCKETS.to_vec()),
            )
            .expect("valid metric"),
            slow_consumer_disconnects: IntCounter::new(
                "hub_slow_consumer_disconnects_total",
                "Clients disconnected because their outbound queue was full",
            )
            .expect("valid metric"),
            redis_command_duration: HistogramVec::new(
                HistogramOpts::new(
                    "hub_redis_command_duration_seconds",
                    "Latency of Redis commands, by operation",
                )
                .buckets(LATENCY_BUCKETS.to_vec()),
                &["op"],
            )
            .expect("valid metric"),
            redis_errors: IntCounterVec::new(
                Opts::new(
                    "hub_redis_errors_total",
                    "Failed Redis commands, by operation",
                ),
                &["op"],
            )
            .expect("valid metric"),
            // `channel`: session (a session's events), inbox (messages
            // to this instance), monitor (the dashboard's channel, which
            // carries every instance's stats every 2 s).
            pubsub_received: IntCounterVec::new(
                Opts::new(
                    "hub_pubsub_messages_received_total",
                    "Messages received from Redis pub/sub, by channel (session, inbox, monitor)",
                ),
                &["channel"],
            )
            .expect("valid metric"),
            ai_requests: IntCounterVec::new(
                Opts::new(
                    "hub_ai_requests_total",
                    "AI requests, by provider and outcome",
                ),
                &["provider", "outcome"],
            )
            .expect("valid metric"),
            ai_upstream_duration: HistogramVec::new(
                HistogramOpts::new(
                    "hub_ai_upstream_duration_seconds",
                    "Latency of upstream AI calls, by provider",
                )
                .buckets(UPSTREAM_BUCKETS.to_vec()),
                &["provider"],
            )
            .expect("valid metric"),
            ai_cache_hits: IntCounter::new(
                "hub_ai_cache_hits_total",
                "AI answers served from the cache",
            )
            .expect("valid metric"),
            ai_singleflight_joins: IntCounter::new(
                "hub_ai_singleflight_joins_total",
                "AI requests that waited for an identical call already in flight",
            )
            .expect("valid metric"),
            ai_lock_waits: IntCounter::new(
                "hub_ai_lock_waits_total",
                "Times an AI request waited for the cluster lock held by another caller",
            )
            .expect("valid metric"),
            ai_rate_limited: IntCounter::new(
                "hub_ai_rate_limited_total",
                "AI requests rejected by the cluster-wide quota",
            )
            .expect("valid metric"),
            agent_calls: IntCounterVec::new(
                Opts::new(
                    "hub_agent_calls_total",
                    "Commands forwarded to agents, by outcome",
                ),
                &["outcome"],
            )
            .expect("valid metric"),
            mcp_tool_calls: IntCounterVec::new(
                Opts::new(
                    "hub_mcp_tool_calls_total",
                    "MCP tool calls, by tool and outcome (ok, error)",
                ),
                &["tool", "outcome"],
            )
            .expect("valid metric"),
            approvals: IntCounterVec::new(
                Opts::new(
                    "hub_approvals_total",
                    "Sends held for a person's approval (held, refused) and how they ended (approved, rejected, expired)",
                ),
                &["outcome"],
            )
            .expect("valid metric"),
            media: IntCounterVec::new(
                Opts::new(
                    "hub_media_total",
                    "Media handled by this instance: uploads, served from the cache (cache_hit), fetched from the connector (download, download_failed)",
                ),
                &["event"],
            )
            .expect("valid metric"),
            agent_calls_held: IntGaugeVec::new(
                Opts::new(
                    "hub_agent_calls_held",
                    "Agent calls this instance holds, by table (pending, forwarded, late)",
                ),
                &["table"],
            )
            .expect("valid metric"),
            store_up: IntGauge::new(
                "hub_store_up",
                "1 when the session store (Redis in cluster mode) is reachable",
            )
            .expect("valid metric"),
            departures_pending: IntGauge::new(
                "hub_departures_pending",
                "Departures from this instance (a presence entry, an agent role) the store has not taken yet; retried every second",
            )
            .expect("valid metric"),
            token_verifications: IntCounterVec::new(
                Opts::new(
                    "hub_token_verifications_total",
                    "Bearer tokens verified (signature and claims), by result",
                ),
                &["result"],
            )
            .expect("valid metric"),
            limit_shed: IntCounterVec::new(
                Opts::new(
                    "hub_limit_shed_total",
                    "Connections, requests and records shed by a hostile-input limit, by limit",
                ),
                &["limit"],
            )
            .expect("valid metric"),
            http_requests: IntCounterVec::new(
                Opts::new(
                    "hub_http_requests_total",
                    "HTTP requests answered, by route template, method and status",
                ),
                &["route", "method", "status"],
            )
            .expect("valid metric"),
            http_request_duration: HistogramVec::new(
                HistogramOpts::new(
                    "hub_http_request_duration_seconds",
                    "Time to an HTTP response's head, by route template and method",
                )
                .buckets(HTTP_BUCKETS.to_vec()),
                &["route", "method"],
            )
            .expect("valid metric"),
            registry,
            sent_by_kind: Default::default(),
        };
        let build_info = IntGaugeVec::new(
            Opts::new("hub_build_info", "Build information; value is always 1"),
            &["version", "instance"],
        )
        .expect("valid metric");
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION"), instance])
            .set(1);
        let collectors: Vec<Box<dyn prometheus::core::Collector>> = vec![
            Box::new(m.connections.clone()),
            Box::new(m.connections_opened.clone()),
            Box::new(m.connections_closed.clone()),
            Box::new(m.messages_received.clone()),
            Box::new(m.messages_sent.clone()),
            Box::new(m.errors.clone()),
            Box::new(m.broadcast_latency.clone()),
            Box::new(m.slow_consumer_disconnects.clone()),
            Box::new(m.redis_command_duration.clone()),
            Box::new(m.redis_errors.clone()),
            Box::new(m.pubsub_received.clone()),
            Box::new(m.ai_requests.clone()),
            Box::new(m.ai_upstream_duration.clone()),
            Box::new(m.ai_cache_hits.clone()),
            Box::new(m.ai_singleflight_joins.clone()),
            Box::new(m.ai_lock_waits.clone()),
            Box::new(m.ai_rate_limited.clone()),
            Box::new(m.agent_calls.clone()),
            Box::new(m.agent_calls_held.clone()),
            Box::new(m.mcp_tool_calls.clone()),
            Box::new(m.approvals.clone()),
            Box::new(m.media.clone()),
            Box::new(m.store_up.clone()),
            Box::new(m.departures_pending.clone()),
            Box::new(m.token_verifications.clone()),
            Box::new(m.limit_shed.clone()),
            Box::new(m.http_requests.clone()),
            Box::new(m.http_request_duration.clone()),
            Box::new(build_info),
            Box::new(prometheus::process_collector::ProcessCollector::for_self()),
        ];
        for c in collectors {
            // Names are distinct constants above; a clash is a programming error.
            m.registry.register(c).expect("metric registered once");
        }
        // Series whose label values are known up front exist from the
        // start at 0, so dashboards and rate() see them before the first
        // occurrence.
        for code in crate::protocol::ErrorCode::all() {
            m.errors.with_label_values(&[code.as_str()]);
        }
        for kind in crate::protocol::ClientMessage::KINDS
            .iter()
            .chain(&[RECEIVED_INVALID])
        {
            m.messages_received.with_label_values(&[kind]);
        }
        for outcome in ["held", "refused", "approved", "rejected", "expired"] {
            m.approvals.with_label_values(&[outcome]);
        }
        for event in ["upload", "cache_hit", "download", "download_failed"] {
            m.media.with_label_values(&[event]);
        }
        for table in ["pending", "forwarded", "late"] {
            m.agent_calls_held.with_label_values(&[table]);
        }
        for result in ["accepted", "expired", "invalid"] {
            m.token_verifications.with_label_values(&[result]);
        }
        for channel in PUBSUB_CHANNELS {
            m.pubsub_received.with_label_values(&[channel]);
        }
        for limit in <Shed as strum::IntoEnumIterator>::iter() {
            m.limit_shed.with_label_values(&[limit.label()]);
        }
        for (i, kind) in sent_kinds().enumerate() {
            m.sent_by_kind[i].get_or_init(|| m.messages_sent.with_label_values(&[kind]));
        }
        m
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        let encoder = TextEncoder::new();
        if let Err(e) = encoder.encode(&self.registry.gather(), &mut buf) {
            tracing::warn!(error = %e, "encoding metrics failed");
        }
        String::from_utf8(buf).unwrap_or_default()
    }

    /// Counts one frame of type `kind` written to a client.
    pub fn message_sent(&self, kind: &str) {
        match sent_kinds().position(|k| k == kind) {
            Some(i) => self.sent_by_kind[i]
                .get_or_init(|| self.messages_sent.with_label_values(&[kind]))
                .inc(),
            None => self.messages_sent.with_label_values(&[kind]).inc(),
        }
    }

    /// Counts one HTTP request answered with `status` after `seconds`.
    pub fn http_request(&self, route: &str, method: &str, status: u16, seconds: f64) {
        let status = status.to_string();
        self.http_requests
            .with_label_values(&[route, method, status.as_str()])
            .inc();
        self.http_request_duration
            .with_label_values(&[route, method])
            .observe(seconds);
    }

    /// Counts one connection, request or record shed by `limit`.
    pub fn shed(&self, limit: Shed) {
        self.limit_shed.with_label_values(&[limit.label()]).inc();
    }

    pub fn error(&self, code: crate::protocol::ErrorCode) {
        self.errors.with_label_values(&[code.as_str()]).inc();
    }
}
