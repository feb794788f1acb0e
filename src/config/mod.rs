//! Command line, environment and `.env` configuration.
//!
//! Precedence: flags, then environment, then `.env` (dotenvy never overrides
//! a variable that is already set, and clap prefers a flag over the
//! environment). Invalid values are reported naming the setting, exit code 2.
//! Config owns every setting; the AI ones live in [`ai`], the authentication
//! ones in [`auth`].

pub mod ai;
pub mod approval;
pub mod auth;
pub mod check;
pub mod limits;
pub mod redis;
pub mod whatsapp;

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, CommandFactory, Parser, Subcommand, ValueEnum};

use self::redis::RedisArgs;
pub use self::redis::{RedisTopology, SentinelTopology};
use ai::AiArgs;
use approval::ApprovalArgs;
pub use approval::{ApprovalRequired, ApprovalSettings};
pub use auth::{AuthArgs, AuthMode, AuthSettings, MIN_SECRET_BYTES, check_jwks_url, check_secret};
use limits::LimitArgs;
pub use limits::{Limits, SessionCreation};
pub use whatsapp::ConnectorKind;
use whatsapp::{WhatsAppArgs, WhatsAppConfig};

use crate::protocol::FieldLimits;

#[derive(Debug, Parser)]
#[command(
    name = "mcp-hub",
    version,
    about = "Real-time hub through which several clients control one WhatsApp account together",
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub serve: ServeArgs,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the hub (the default).
    Serve(Box<ServeArgs>),
    /// Interactive terminal client: typed lines become AI commands.
    Terminal(TerminalArgs),
    /// Print an HS256 token signed with AUTH_JWT_SECRET.
    Token(TokenArgs),
    /// Bridge an MCP client that speaks only stdio to a hub's `/mcp`.
    McpStdio(McpStdioArgs),
    /// Write the store the hub's settings name (DATA_DIR or Redis) to stdout as JSON lines.
    Export(Box<ServeArgs>),
    /// Read JSON lines (from `export`) on stdin into the store the hub's settings name.
    Import(Box<ServeArgs>),
}

// Commands for operators and packagers, beside the hub's own. An enum of
// its own, added to `Cli`'s command line by `command()`, so that `Command`
// (which the test harness matches) keeps its variants. (Not a doc comment:
// clap would make it the whole program's description.)
#[derive(Debug, Subcommand)]
pub enum OpsCommand {
    /// Check the settings (flags, environment, `.env`) as `serve` would, print them with
    /// secrets redacted and warn on unknown ones; exit 0 if valid, 2 naming the setting.
    CheckConfig(Box<CheckConfigArgs>),
    /// Ask a running hub's `/ready` (or `/health` with --live): exit 0 on 200, 1 otherwise.
    Health(HealthArgs),
    /// Print a shell completion script for mcp-hub.
    Completions(CompletionsArgs),
    /// Print mcp-hub's man page (roff) to stdout.
    Man,
}

/// `mcp-hub check-config`: the hub's own settings plus `--strict`.
#[derive(Debug, Args)]
pub struct CheckConfigArgs {
    /// An unknown setting (a hub-like name no setting has, e.g. a typo) is
    /// an error, exit 2, instead of a warning.
    #[arg(long)]
    pub strict: bool,
    #[command(flatten)]
    pub serve: ServeArgs,
}

/// `mcp-hub health`.
#[derive(Debug, Args)]
pub struct HealthArgs {
    /// The hub's base URL (`/ready` or `/health` is appended), or a full URL
    /// with its path. Default: `http://127.0.0.1:PORT` with PORT from
    /// MCP_SERVER_PORT (8002), the host from MCP_SERVER_HOST unless that is
    /// unspecified (0.0.0.0, ::).
    #[arg(long)]
    pub url: Option<String>,
    /// Liveness: ask `/health` instead of `/ready`.
    #[arg(long)]
    pub live: bool,
    /// Give up (exit 1) after this long.
    #[arg(long, default_value_t = 2_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub timeout_ms: u64,
}

/// `mcp-hub completions SHELL`.
#[derive(Debug, Args)]
pub struct CompletionsArgs {
    /// The shell to generate completions for.
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

/// What the command line asks for: the hub's commands or an operator's.
#[derive(Debug)]
pub enum Invocation {
    Hub(Box<Cli>),
    Ops(OpsCommand),
}

/// The whole command line: [`Cli`] with the [`OpsCommand`]s added (what
/// `--help`, completions and the man page describe).
pub fn command() -> clap::Command {
    OpsCommand::augment_subcommands(Cli::command())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// Address to listen on.
    #[arg(long = "host", env = "MCP_SERVER_HOST", default_value = "127.0.0.1")]
    pub host: IpAddr,
    /// Port to listen on; 0 picks a free port (the bound address is logged).
    #[arg(long = "port", env = "MCP_SERVER_PORT", default_value_t = 8002)]
    pub port: u16,
    /// Name of this instance in registration_confirmed, presence and metrics.
    #[arg(long = "instance-id", env = "INSTANCE_ID")]
    pub instance_id: Option<String>,
    #[arg(
        long = "log-format",
        env = "LOG_FORMAT",
        value_enum,
        default_value = "text"
    )]
    pub log_format: LogFormat,
    /// OpenTelemetry traces: the OTLP/HTTP collector's base URL (`http://collector:4318` or `https://...`); spans are sent to `<url>/v1/traces`. Unset: no traces.
    #[arg(
        long = "otel-exporter-otlp-endpoint",
        env = "OTEL_EXPORTER_OTLP_ENDPOINT"
    )]
    pub otel_exporter_otlp_endpoint: Option<String>,
    /// PEM file of the CA(s) that signed an https collector's certificate, trusted besides the built-in web roots.
    #[arg(
        long = "otel-exporter-otlp-certificate",
        env = "OTEL_EXPORTER_OTLP_CERTIFICATE"
    )]
    pub otel_exporter_otlp_certificate: Option<PathBuf>,

    /// Largest accepted WebSocket message in bytes; larger ones close the connection with 1009.
    #[arg(long, env = "MAX_MESSAGE_BYTES", default_value_t = 64 * 1024, value_parser = clap::value_parser!(u32).range(256..))]
    pub max_message_bytes: u32,
    /// Bytes of frames queued per connection before a slow reader is disconnected (1008).
    #[arg(long, env = "OUTBOUND_QUEUE_BYTES", default_value_t = 1024 * 1024, value_parser = clap::value_parser!(u32).range(1024..))]
    pub outbound_queue_bytes: u32,
    /// Secondary cap: frames queued per connection before a slow reader is disconnected.
    #[arg(long, env = "OUTBOUND_QUEUE_LEN", default_value_t = 4096, value_parser = clap::value_parser!(u32).range(1..))]
    pub outbound_queue_len: u32,
    /// Sustained inbound messages per second per connection.
    #[arg(long, env = "RATE_LIMIT_PER_SEC", default_value_t = 20.0)]
    pub rate_limit_per_sec: f64,
    /// Inbound burst allowed above the sustained rate.
    #[arg(long, env = "RATE_LIMIT_BURST", default_value_t = 40, value_parser = clap::value_parser!(u32).range(1..))]
    pub rate_limit_burst: u32,
    /// Requests one connection may have in progress at once.
    #[arg(long, env = "MAX_IN_FLIGHT", default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_in_flight: u32,
    /// WebSocket connections this instance holds at once; one more gets HTTP 503 before the upgrade.
    #[arg(long, env = "MAX_CONNECTIONS", default_value_t = 10_000, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub max_connections: u32,
    /// Clients registered in one session (cluster-wide); one more gets `session_full`.
    #[arg(long, env = "MAX_CLIENTS_PER_SESSION", default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub max_clients_per_session: u32,
    /// Longest message text (send, incoming_message, AI command) in characters.
    #[arg(long, env = "MAX_TEXT_CHARS", default_value_t = 4096, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_text_chars: u32,
    /// Longest `client_name` in characters.
    #[arg(long, env = "MAX_CLIENT_NAME_CHARS", default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_client_name_chars: u32,
    /// Most `capabilities` one registration may list.
    #[arg(long, env = "MAX_CAPABILITIES", default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_capabilities: u32,
    /// Most contacts one session holds (contacts_update, CONTACTS_FILE).
    #[arg(long, env = "MAX_CONTACTS_PER_SESSION", default_value_t = 10_000, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_contacts_per_session: u32,
    /// Largest REST request body in bytes; larger ones get HTTP 413.
    #[arg(long, env = "MAX_REST_BODY_BYTES", default_value_t = 64 * 1024, value_parser = clap::value_parser!(u32).range(256..))]
    pub max_rest_body_bytes: u32,
    /// Comma-separated browser origins (`https://app.example.com`) allowed to open a WebSocket and to call REST with CORS; unset: same host only, no CORS.
    #[arg(long, env = "ALLOWED_ORIGINS")]
    pub allowed_origins: Option<String>,
    /// How long to wait for an agent's execute_result.
    #[arg(long, env = "AGENT_TIMEOUT_MS", default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub agent_timeout_ms: u64,
    /// Bound on graceful shutdown after SIGTERM/SIGINT.
    #[arg(long, env = "SHUTDOWN_TIMEOUT_MS", default_value_t = 5_000)]
    pub shutdown_timeout_ms: u64,
    /// How often the hub sends a WebSocket ping to each connection.
    #[arg(long, env = "PING_INTERVAL_MS", default_value_t = 25_000, value_parser = clap::value_parser!(u64).range(10..))]
    pub ping_interval_ms: u64,
    /// A connection with no inbound traffic (pongs included) for this long is closed with 1001.
    #[arg(long, env = "IDLE_TIMEOUT_MS", default_value_t = 60_000, value_parser = clap::value_parser!(u64).range(20..))]
    pub idle_timeout_ms: u64,

    /// WhatsApp connector used when no agent is registered for a session:
    /// simulated, cloud_api or none (agent only).
    #[arg(
        long,
        env = "WHATSAPP_CONNECTOR",
        value_enum,
        default_value = "simulated"
    )]
    pub connector: ConnectorKind,
    /// JSON file with the simulated account's contacts: [{"name":"John","phone":"+1555..."}, ...].
    #[arg(long, env = "CONTACTS_FILE")]
    pub contacts_file: Option<PathBuf>,
    /// Simulated connector: reply to every sent message with this text ("{message}" and "{contact}" are replaced); empty disables.
    #[arg(long, env = "AUTO_REPLY", default_value = "")]
    pub auto_reply: String,
    #[arg(long, env = "AUTO_REPLY_DELAY_MS", default_value_t = 200)]
    pub auto_reply_delay_ms: u64,
    /// Messages kept per contact conversation.
    #[arg(long, env = "HISTORY_LIMIT", default_value_t = 200, value_parser = clap::value_parser!(u32).range(1..))]
    pub history_limit: u32,
    /// Standalone: where the hub keeps its state (sessions, contacts, history, statuses,
    /// the event log, idempotency records, webhook bookkeeping) across restarts.
    /// Default `data` in the working directory; `:memory:` keeps nothing. Not with Redis.
    #[arg(long, env = "DATA_DIR")]
    pub data_dir: Option<String>,
    /// Events kept per session for resuming clients (`register.since`).
    #[arg(long, env = "SESSION_LOG_LEN", default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub session_log_len: u32,
    /// How long a session's events stay replayable.
    #[arg(long, env = "SESSION_LOG_TTL_MS", default_value_t = 600_000, value_parser = clap::value_parser!(u64).range(1_000..=86_400_000))]
    pub session_log_ttl_ms: u64,

    #[command(flatten)]
    pub redis: RedisArgs,
    /// Prefix of every Redis key and channel.
    #[arg(long, env = "REDIS_KEY_PREFIX", default_value = "mcp-hub")]
    pub redis_key_prefix: String,
    /// How often an instance refreshes its presence.
    #[arg(long, env = "HEARTBEAT_MS", default_value_t = 2_000, value_parser = clap::value_parser!(u64).range(100..))]
    pub heartbeat_ms: u64,
    /// An instance silent for this long is dead: its clients leave presence.
    #[arg(long, env = "PRESENCE_TTL_MS", default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(200..))]
    pub presence_ttl_ms: u64,

    #[command(flatten)]
    pub limits: LimitArgs,
    #[command(flatten)]
    pub approval: ApprovalArgs,

    #[command(flatten)]
    pub ai: AiArgs,
    #[command(flatten)]
    pub whatsapp: WhatsAppArgs,

    #[command(flatten)]
    pub auth: AuthArgs,
}

/// What `Debug` shows of an optional secret: whether it is set.
fn redacted(secret: &Option<String>) -> Option<&'static str> {
    secret.as_ref().map(|_| "<redacted>")
}

/// A URL as logs and `Debug` may show it: `scheme://host[:port]` only,
/// since userinfo, path and query may all carry credentials.
pub fn url_for_log(raw: &str) -> String {
    match reqwest::Url::parse(raw) {
        Ok(url) => match (url.host_str(), url.port()) {
            (Some(host), Some(port)) => format!("{}://{host}:{port}", url.scheme()),
            (Some(host), None) => format!("{}://{host}", url.scheme()),
            (None, _) => format!("{}:<redacted>", url.scheme()),
        },
        Err(_) => "<not a URL>".to_string(),
    }
}

/// `mcp-hub token`: mint an HS256 token. `Debug` redacts the secret.
#[derive(Clone, Args)]
pub struct TokenArgs {
    /// Who the token is for (`sub`).
    #[arg(long)]
    pub sub: String,
    /// A session the token may use (repeat for several; `*` for all).
    #[arg(long = "session")]
    pub sessions: Vec<String>,
    /// client, agent or admin.
    #[arg(long, default_value = "client", value_parser = ["client", "agent", "admin"])]
    pub role: String,
    /// Lifetime: 90s, 15m, 1h, 30d.
    #[arg(long, default_value = "1h")]
    pub ttl: String,
    /// `aud`: the hub's PUBLIC_URL for a token that calls `/mcp`.
    #[arg(long)]
    pub audience: Option<String>,
    /// `scope`, space-separated (whatsapp.read whatsapp.send admin);
    /// unset: every scope of the role.
    #[arg(long)]
    pub scope: Option<String>,
    /// The hubs' HS256 secret.
    #[arg(
        long = "auth-jwt-secret",
        env = "AUTH_JWT_SECRET",
        hide_env_values = true
    )]
    pub secret: Option<String>,
}

impl std::fmt::Debug for TokenArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenArgs")
            .field("sub", &self.sub)
            .field("sessions", &self.sessions)
            .field("role", &self.role)
            .field("ttl", &self.ttl)
            .field("audience", &self.audience)
            .field("scope", &self.scope)
            .field("secret", &redacted(&self.secret))
            .finish()
    }
}

/// `mcp-hub mcp-stdio`. `Debug` redacts the token.
#[derive(Clone, Args)]
pub struct McpStdioArgs {
    /// The hub's MCP endpoint.
    #[arg(
        long,
        env = "MCP_HUB_MCP_URL",
        default_value = "http://127.0.0.1:8002/mcp"
    )]
    pub url: String,
    /// JWT sent as `Authorization: Bearer` with every request.
    #[arg(long, env = "MCP_HUB_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Give up on one request after this long (answered with a JSON-RPC error).
    #[arg(long, default_value_t = 120_000)]
    pub timeout_ms: u64,
}

impl std::fmt::Debug for McpStdioArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("McpStdioArgs")
            .field("url", &url_for_log(&self.url))
            .field("token", &redacted(&self.token))
            .field("timeout_ms", &self.timeout_ms)
            .finish()
    }
}

/// `mcp-hub terminal`. `Debug` redacts the token.
#[derive(Clone, Args)]
pub struct TerminalArgs {
    /// Hub WebSocket URL.
    #[arg(long, env = "MCP_HUB_URL", default_value = "ws://127.0.0.1:8002")]
    pub url: String,
    #[arg(long, default_value = "default")]
    pub session: String,
    #[arg(long, default_value = "terminal")]
    pub name: String,
    #[arg(long)]
    pub client_id: Option<String>,
    /// After stdin ends, keep printing events this long before exiting.
    #[arg(long, default_value_t = 1000)]
    pub linger_ms: u64,
    /// Give up on a request's response after this long (also bounds the wait for responses after stdin ends).
    #[arg(long, default_value_t = 30_000)]
    pub wait_ms: u64,
    /// JWT sent as `Authorization: Bearer` on the upgrade.
    #[arg(long, env = "MCP_HUB_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// File holding the JWT, read again on every (re)connect, so a renewed
    /// token is picked up after a 4401 close.
    #[arg(long, env = "MCP_HUB_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
    /// Reconnection attempts (backoff 200 ms doubling to 5 s) after the connection is lost; 0 disables.
    #[arg(long, default_value_t = 30)]
    pub reconnect_attempts: usize,
}

impl std::fmt::Debug for TerminalArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TerminalArgs")
            .field("url", &url_for_log(&self.url))
            .field("session", &self.session)
            .field("name", &self.name)
            .field("client_id", &self.client_id)
            .field("linger_ms", &self.linger_ms)
            .field("wait_ms", &self.wait_ms)
            .field("token", &redacted(&self.token))
            .field("token_file", &self.token_file)
            .field("reconnect_attempts", &self.reconnect_attempts)
            .finish()
    }
}

/// Parses flags and environment. `--help`/`--version` print and exit 0; an
/// invalid value prints one line naming the setting and exits 2.
pub fn parse_invocation() -> Invocation {
    match try_parse_invocation(std::env::args_os()) {
        Ok(invocation) => invocation,
        Err(e) => {
            use clap::error::ErrorKind;
            if matches!(
                e.kind(),
                ErrorKind::DisplayHelp
                    | ErrorKind::DisplayVersion
                    | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
            ) {
                e.exit();
            }
            eprintln!("error: {}", one_line_error(&e));
            std::process::exit(2);
        }
    }
}

/// [`parse_invocation`] on given arguments (the program name first).
pub fn try_parse_invocation<I, T>(args: I) -> Result<Invocation, clap::Error>
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    use clap::FromArgMatches;
    let mut cmd = command();
    let matches = cmd.try_get_matches_from_mut(args)?;
    let ops = matches
        .subcommand_name()
        .is_some_and(OpsCommand::has_subcommand);
    if ops {
        OpsCommand::from_arg_matches(&matches)
            .map(Invocation::Ops)
            .map_err(|e| e.format(&mut cmd))
    } else {
        Cli::from_arg_matches(&matches)
            .map(|cli| Invocation::Hub(Box::new(cli)))
            .map_err(|e| e.format(&mut cmd))
    }
}

/// clap's first line, prefixed with the environment variable behind the
/// flag when there is one (the value may well have come from there).
fn one_line_error(e: &clap::Error) -> String {
    use clap::error::{ContextKind, ContextValue};
    let rendered = e.render().to_string();
    let first = rendered
        .lines()
        .next()
        .unwrap_or("invalid arguments")
        .trim_start_matches("error: ")
        .to_string();
    let flag = match e.get(ContextKind::InvalidArg) {
        Some(ContextValue::String(s)) => s.clone(),
        _ => return first,
    };
    let long = flag
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .trim_start_matches("--")
        .to_string();
    let cmd = command();
    let env = cmd
        .get_arguments()
        .chain(cmd.get_subcommands().flat_map(|s| s.get_arguments()))
        .find(|a| a.get_long() == Some(long.as_str()))
        .and_then(|a| a.get_env())
        .map(|v| v.to_string_lossy().into_owned());
    match env {
        Some(env) => format!("invalid setting {env}: {first}"),
        None => first,
    }
}

/// Validated settings of a running hub.
#[derive(Debug, Clone)]
pub struct HubConfig {
    pub host: IpAddr,
    pub port: u16,
    pub instance_id: String,
    pub log_format: LogFormat,
    /// OTEL_EXPORTER_OTLP_ENDPOINT (None: no traces).
    pub otlp_endpoint: Option<String>,
    /// OTEL_EXPORTER_OTLP_CERTIFICATE: extra CA certificates (PEM) for an
    /// https collector.
    pub otlp_certificate: Option<PathBuf>,
    pub max_message_bytes: usize,
    pub outbound_queue_bytes: usize,
    pub outbound_queue_len: usize,
    pub rate_limit_per_sec: f64,
    pub rate_limit_burst: u32,
    pub max_in_flight: usize,
    pub max_connections: usize,
    pub max_clients_per_session: usize,
    pub max_contacts_per_session: usize,
    pub max_rest_body_bytes: usize,
    /// Limits of single inbound fields, applied by the parser.
    pub field_limits: FieldLimits,
    /// Normalized (`scheme://host[:port]`, lower case); empty: same host only.
    pub allowed_origins: Vec<String>,
    pub agent_timeout: Duration,
    pub shutdown_timeout: Duration,
    pub ping_interval: Duration,
    pub idle_timeout: Duration,
    pub connector: ConnectorKind,
    pub contacts_file: Option<PathBuf>,
    pub auto_reply: Option<String>,
    pub auto_reply_delay: Duration,
    pub history_limit: usize,
    /// Standalone: the data directory (None: memory only, or Redis).
    pub data_dir: Option<PathBuf>,
    pub session_log_len: usize,
    pub session_log_ttl: Duration,
    /// Where the cluster's state lives; None: standalone (in memory).
    pub redis: Option<RedisTopology>,
    pub redis_key_prefix: String,
    pub heartbeat: Duration,
    pub presence_ttl: Duration,
    /// The hostile-input limits (docs/security.md §12).
    pub limits: Limits,
    /// Which sends wait for a person's approval.
    pub approval: ApprovalSettings,
    pub ai: AiArgs,
    pub auth: AuthSettings,
    pub whatsapp: WhatsAppConfig,
}

impl HubConfig {
    /// The hub's public base URL: PUBLIC_URL, else where it listens.
    pub fn public_url(&self) -> String {
        match &self.auth.public_url {
            Some(url) => url.clone(),
            None => format!("http://{}", std::net::SocketAddr::new(self.host, self.port)),
        }
    }
}

/// A setting that parsed but makes no sense; printed as one line, exit 2.
#[derive(Debug, thiserror::Error)]
#[error("invalid setting {setting}: {reason}")]
pub struct ConfigError {
    pub setting: &'static str,
    pub reason: String,
}

fn invalid(setting: &'static str, reason: impl Into<String>) -> ConfigError {
    ConfigError {
        setting,
        reason: reason.into(),
    }
}

impl ServeArgs {
    pub fn validate(self) -> Result<HubConfig, ConfigError> {
        if !(self.rate_limit_per_sec.is_finite() && self.rate_limit_per_sec > 0.0) {
            return Err(invalid("RATE_LIMIT_PER_SEC", "must be a positive number"));
        }
        if self.presence_ttl_ms <= self.heartbeat_ms {
            return Err(invalid(
                "PRESENCE_TTL_MS",
                format!(
                    "must be larger than HEARTBEAT_MS ({} ms), or live instances would expire",
                    self.heartbeat_ms
                ),
            ));
        }
        if self.idle_timeout_ms <= self.ping_interval_ms {
            return Err(invalid(
                "IDLE_TIMEOUT_MS",
                format!(
                    "must be larger than PING_INTERVAL_MS ({} ms), or answering pings would not keep a connection open",
                    self.ping_interval_ms
                ),
            ));
        }
        let redis = self.redis.topology()?;
        // Braces would form a Redis Cluster hash tag before the key's own.
        if self.redis_key_prefix.is_empty()
            || self
                .redis_key_prefix
                .contains(|c: char| c.is_whitespace() || c == '{' || c == '}')
        {
            return Err(invalid(
                "REDIS_KEY_PREFIX",
                "must be non-empty and contain no whitespace, `{` or `}`",
            ));
        }
        let allowed_origins = match &self.allowed_origins {
            Some(list) => parse_origins(list).map_err(|r| invalid("ALLOWED_ORIGINS", r))?,
            None => Vec::new(),
        };
        let auth = self.auth.validate(self.host)?;
        let instance_id = match self.instance_id {
            Some(id) if id.trim().is_empty() => {
                return Err(invalid("INSTANCE_ID", "must not be empty"));
            }
            Some(id) => id,
            None => default_instance_id(),
        };
        let data_dir = data_dir(self.data_dir.as_deref(), redis.is_some())?;
        let whatsapp = self.whatsapp.validate(self.connector)?;
        let limits = self.limits.validate(self.outbound_queue_bytes as usize)?;
        let otlp_endpoint = match self.otel_exporter_otlp_endpoint {
            Some(url) if url.trim().is_empty() => None,
            Some(url) if !url.starts_with("http://") && !url.starts_with("https://") => {
                return Err(invalid(
                    "OTEL_EXPORTER_OTLP_ENDPOINT",
                    "must be an http:// or https:// URL (OTLP over HTTP)",
                ));
            }
            other => other.map(|url| url.trim_end_matches('/').to_string()),
        };
        Ok(HubConfig {
            host: self.host,
            port: self.port,
            instance_id,
            log_format: self.log_format,
            otlp_endpoint,
            otlp_certificate: self.otel_exporter_otlp_certificate,
            max_message_bytes: self.max_message_bytes as usize,
            outbound_queue_bytes: self.outbound_queue_bytes as usize,
            outbound_queue_len: self.outbound_queue_len as usize,
            rate_limit_per_sec: self.rate_limit_per_sec,
            rate_limit_burst: self.rate_limit_burst,
            max_in_flight: self.max_in_flight as usize,
            max_connections: self.max_connections as usize,
            max_clients_per_session: self.max_clients_per_session as usize,
            max_contacts_per_session: self.max_contacts_per_session as usize,
            max_rest_body_bytes: self.max_rest_body_bytes as usize,
            field_limits: FieldLimits {
                max_text_chars: self.max_text_chars as usize,
                max_client_name_chars: self.max_client_name_chars as usize,
                max_capabilities: self.max_capabilities as usize,
                max_name_chars: limits.max_name_chars,
                max_ai_context_bytes: limits.max_ai_context_bytes,
                max_contacts: self.max_contacts_per_session as usize,
            },
            allowed_origins,
            agent_timeout: Duration::from_millis(self.agent_timeout_ms),
            shutdown_timeout: Duration::from_millis(self.shutdown_timeout_ms),
            ping_interval: Duration::from_millis(self.ping_interval_ms),
            idle_timeout: Duration::from_millis(self.idle_timeout_ms),
            connector: self.connector,
            contacts_file: self.contacts_file,
            auto_reply: Some(self.auto_reply).filter(|s| !s.is_empty()),
            auto_reply_delay: Duration::from_millis(self.auto_reply_delay_ms),
            history_limit: self.history_limit as usize,
            data_dir,
            session_log_len: self.session_log_len as usize,
            session_log_ttl: Duration::from_millis(self.session_log_ttl_ms),
            redis,
            redis_key_prefix: self.redis_key_prefix,
            heartbeat: Duration::from_millis(self.heartbeat_ms),
            presence_ttl: Duration::from_millis(self.presence_ttl_ms),
            limits,
            approval: self.approval.validate(),
            ai: self.ai,
            auth,
            whatsapp,
        })
    }
}

/// The data directory when nothing says otherwise (standalone): beside
/// where the hub runs, so `cargo run --release` keeps its state without
/// setup, in plain sight.
pub const DEFAULT_DATA_DIR: &str = "data";
/// `DATA_DIR` that keeps nothing across restarts.
pub const MEMORY_ONLY: &str = ":memory:";

/// `DATA_DIR`: the directory, None for `:memory:` and with Redis (which
/// holds the state then; naming a directory too is a mistake worth saying).
fn data_dir(setting: Option<&str>, with_redis: bool) -> Result<Option<PathBuf>, ConfigError> {
    match (setting.map(str::trim), with_redis) {
        (Some(""), _) => Err(invalid(
            "DATA_DIR",
            format!("must not be empty (`{MEMORY_ONLY}` keeps the state in memory only)"),
        )),
        (Some(MEMORY_ONLY), _) | (None, true) => Ok(None),
        (Some(_), true) => Err(invalid(
            "DATA_DIR",
            "is for a standalone hub; with Redis the state lives in Redis (unset DATA_DIR)",
        )),
        (Some(dir), false) => Ok(Some(PathBuf::from(dir))),
        (None, false) => Ok(Some(PathBuf::from(DEFAULT_DATA_DIR))),
    }
}

/// `ALLOWED_ORIGINS`: comma-separated `http(s)://host[:port]`, compared
/// with a browser's `Origin` header after the same normalization.
fn parse_origins(list: &str) -> Result<Vec<String>, String> {
    let mut origins = Vec::new();
    for raw in list.split(',').map(str::trim).filter(|o| !o.is_empty()) {
        let origin = normalize_origin(raw);
        let rest = origin
            .strip_prefix("https://")
            .or_else(|| origin.strip_prefix("http://"))
            .ok_or_else(|| format!("`{raw}` is not an http:// or https:// origin"))?;
        if rest.is_empty()
            || rest.contains(['/', '?', '#', '*', '@'])
            || rest.contains(char::is_whitespace)
        {
            return Err(format!(
                "`{raw}` is not an origin (scheme://host[:port], no path, no wildcard)"
            ));
        }
        origins.push(origin);
    }
    if origins.is_empty() {
        return Err("lists no origin (unset it to allow only same-host pages)".into());
    }
    Ok(origins)
}

/// The form origins are compared in: lower case, no trailing slash.
pub fn normalize_origin(origin: &str) -> String {
    origin.trim().trim_end_matches('/').to_ascii_lowercase()
}

/// Hostname plus a short random suffix, so two hubs on one host differ.
fn default_instance_id() -> String {
    let host = hostname::get()
        .ok()
        .and_then(|h| h.into_string().ok())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "hub".to_string());
    let suffix = &uuid::Uuid::new_v4().simple().to_string()[..6];
    format!("{host}-{suffix}")
}

#[cfg(test)]
mod tests;
