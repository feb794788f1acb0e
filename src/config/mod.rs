//! Command line, environment and `.env` configuration.
//!
//! Precedence: flags, then environment, then `.env` (dotenvy never overrides
//! a variable that is already set, and clap prefers a flag over the
//! environment). Invalid values are reported naming the setting, exit code 2.
//! Config owns every setting; the AI ones live in [`ai`].

pub mod ai;
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
    pub ai: AiArgs,
    #[command(flatten)]
    pub whatsapp: WhatsAppArgs,

    #[command(flatten)]
    pub auth: AuthArgs,
}

/// `AUTH_MODE`: verify tokens, or let everyone in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum)]
pub enum AuthMode {
    #[default]
    Jwt,
    None,
}

/// The authentication settings (docs/security.md §2). `Debug` redacts
/// the secrets and shows only the JWKS URL's scheme and host.
#[derive(Clone, Args)]
pub struct AuthArgs {
    /// jwt or none; unset: jwt when a key is given, none only on a loopback host.
    #[arg(long = "auth-mode", env = "AUTH_MODE", value_enum)]
    pub auth_mode: Option<AuthMode>,
    /// HS256 secret (at least 32 bytes) that tokens are signed with.
    #[arg(
        long = "auth-jwt-secret",
        env = "AUTH_JWT_SECRET",
        hide_env_values = true
    )]
    pub auth_jwt_secret: Option<String>,
    /// A second HS256 secret accepted for verification only (key rollover).
    #[arg(
        long = "auth-jwt-previous-secret",
        env = "AUTH_JWT_PREVIOUS_SECRET",
        hide_env_values = true
    )]
    pub auth_jwt_previous_secret: Option<String>,
    /// PEM public key (RSA: RS256, EC P-256: ES256).
    #[arg(long = "auth-jwt-public-key-file", env = "AUTH_JWT_PUBLIC_KEY_FILE")]
    pub auth_jwt_public_key_file: Option<PathBuf>,
    /// JWKS URL with RS256/ES256 keys: https (plain http only on a loopback host).
    #[arg(long = "auth-jwks-url", env = "AUTH_JWKS_URL", hide_env_values = true)]
    pub auth_jwks_url: Option<String>,
    /// How often the JWKS is fetched again.
    #[arg(long = "auth-jwks-refresh-ms", env = "AUTH_JWKS_REFRESH_MS", default_value_t = 300_000, value_parser = clap::value_parser!(u64).range(1000..))]
    pub auth_jwks_refresh_ms: u64,
    /// Required `iss` claim.
    #[arg(long = "auth-jwt-issuer", env = "AUTH_JWT_ISSUER")]
    pub auth_jwt_issuer: Option<String>,
    /// Required `aud` claim.
    #[arg(long = "auth-jwt-audience", env = "AUTH_JWT_AUDIENCE")]
    pub auth_jwt_audience: Option<String>,
}

impl std::fmt::Debug for AuthArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthArgs")
            .field("auth_mode", &self.auth_mode)
            .field("auth_jwt_secret", &redacted(&self.auth_jwt_secret))
            .field(
                "auth_jwt_previous_secret",
                &redacted(&self.auth_jwt_previous_secret),
            )
            .field("auth_jwt_public_key_file", &self.auth_jwt_public_key_file)
            .field(
                "auth_jwks_url",
                &self.auth_jwks_url.as_deref().map(url_for_log),
            )
            .field("auth_jwks_refresh_ms", &self.auth_jwks_refresh_ms)
            .field("auth_jwt_issuer", &self.auth_jwt_issuer)
            .field("auth_jwt_audience", &self.auth_jwt_audience)
            .finish()
    }
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

/// `AUTH_JWKS_URL` must be `https://`, so the keys that decide who gets in
/// are not fetched in the clear; plain `http://` is accepted only from a
/// loopback host (`127.0.0.0/8`, `[::1]`, `localhost`: a local IdP, tests).
/// The reason never repeats the URL (it may carry credentials).
pub fn check_jwks_url(raw: &str) -> Result<reqwest::Url, String> {
    let url = reqwest::Url::parse(raw.trim()).map_err(|e| format!("not a URL ({e})"))?;
    let Some(host) = url.host_str() else {
        return Err("has no host".into());
    };
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    let loopback = bare.eq_ignore_ascii_case("localhost")
        || bare.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback());
    match url.scheme() {
        "https" => Ok(url),
        "http" if loopback => Ok(url),
        "http" => Err(format!(
            "must be an https:// URL (plain http:// only on a loopback host), not {}",
            url_for_log(raw)
        )),
        other => Err(format!("must be an https:// URL, not {other}://")),
    }
}

/// Validated authentication settings. Secrets are redacted from `Debug`.
#[derive(Clone, Default)]
pub struct AuthSettings {
    pub mode: AuthMode,
    pub secret: Option<String>,
    pub previous_secret: Option<String>,
    pub public_key_file: Option<PathBuf>,
    pub jwks_url: Option<String>,
    pub jwks_refresh: Duration,
    pub issuer: Option<String>,
    pub audience: Option<String>,
    /// Auth is off only because the host is loopback and nothing was set:
    /// worth one warning at start.
    pub open_by_default: bool,
}

impl std::fmt::Debug for AuthSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthSettings")
            .field("mode", &self.mode)
            .field("secret", &self.secret.as_ref().map(|_| "<redacted>"))
            .field(
                "previous_secret",
                &self.previous_secret.as_ref().map(|_| "<redacted>"),
            )
            .field("public_key_file", &self.public_key_file)
            .field("jwks_url", &self.jwks_url.as_deref().map(url_for_log))
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .finish()
    }
}

impl AuthSettings {
    /// The HS256 secrets accepted for verification, current first.
    pub fn secrets(&self) -> impl Iterator<Item = &String> {
        self.secret.iter().chain(self.previous_secret.iter())
    }
}

/// Shortest accepted HS256 secret, in bytes.
pub const MIN_SECRET_BYTES: usize = 32;

/// An HS256 secret must have at least [`MIN_SECRET_BYTES`] bytes.
pub fn check_secret(secret: &str) -> Result<(), ConfigError> {
    if secret.len() < MIN_SECRET_BYTES {
        return Err(invalid(
            "AUTH_JWT_SECRET",
            format!(
                "must be at least {MIN_SECRET_BYTES} bytes (it has {}); generate one with `openssl rand -hex 32`",
                secret.len()
            ),
        ));
    }
    Ok(())
}

impl AuthArgs {
    /// The mode rules of docs/security.md §2.
    pub fn validate(self, host: IpAddr) -> Result<AuthSettings, ConfigError> {
        let nonempty = |v: Option<String>| v.filter(|s| !s.is_empty());
        let secret = nonempty(self.auth_jwt_secret);
        let previous_secret = nonempty(self.auth_jwt_previous_secret);
        let jwks_url = nonempty(self.auth_jwks_url);
        if let Some(url) = &jwks_url {
            check_jwks_url(url).map_err(|reason| invalid("AUTH_JWKS_URL", reason))?;
        }
        if let Some(s) = &secret {
            check_secret(s)?;
        }
        if let Some(s) = &previous_secret {
            check_secret(s).map_err(|e| invalid("AUTH_JWT_PREVIOUS_SECRET", e.reason))?;
            if secret.is_none() {
                return Err(invalid(
                    "AUTH_JWT_PREVIOUS_SECRET",
                    "is only accepted together with AUTH_JWT_SECRET (the current secret)",
                ));
            }
        }
        let has_key =
            secret.is_some() || self.auth_jwt_public_key_file.is_some() || jwks_url.is_some();
        let (mode, open_by_default) = match self.auth_mode {
            Some(AuthMode::None) => (AuthMode::None, false),
            Some(AuthMode::Jwt) if !has_key => {
                return Err(invalid(
                    "AUTH_JWT_SECRET",
                    "AUTH_MODE=jwt needs a key: set AUTH_JWT_SECRET (or AUTH_JWT_PUBLIC_KEY_FILE / AUTH_JWKS_URL)",
                ));
            }
            Some(AuthMode::Jwt) => (AuthMode::Jwt, false),
            None if has_key => (AuthMode::Jwt, false),
            None if host.is_loopback() => (AuthMode::None, true),
            None => {
                return Err(invalid(
                    "AUTH_JWT_SECRET",
                    format!(
                        "listening on {host} (not loopback) without authentication: set AUTH_JWT_SECRET (or AUTH_JWT_PUBLIC_KEY_FILE / AUTH_JWKS_URL), or AUTH_MODE=none to run open on purpose"
                    ),
                ));
            }
        };
        Ok(AuthSettings {
            mode,
            secret,
            previous_secret,
            public_key_file: self.auth_jwt_public_key_file,
            jwks_url,
            jwks_refresh: Duration::from_millis(self.auth_jwks_refresh_ms),
            issuer: nonempty(self.auth_jwt_issuer),
            audience: nonempty(self.auth_jwt_audience),
            open_by_default,
        })
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
            .field("secret", &redacted(&self.secret))
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
pub fn parse_cli() -> Cli {
    match Cli::try_parse() {
        Ok(cli) => cli,
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
    let cmd = Cli::command();
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
    pub session_log_len: usize,
    pub session_log_ttl: Duration,
    /// Where the cluster's state lives; None: standalone (in memory).
    pub redis: Option<RedisTopology>,
    pub redis_key_prefix: String,
    pub heartbeat: Duration,
    pub presence_ttl: Duration,
    /// The hostile-input limits (docs/security.md §12).
    pub limits: Limits,
    pub ai: AiArgs,
    pub auth: AuthSettings,
    pub whatsapp: WhatsAppConfig,
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
        let whatsapp = self.whatsapp.validate(self.connector)?;
        let limits = self.limits.validate(self.outbound_queue_bytes as usize)?;
        Ok(HubConfig {
            host: self.host,
            port: self.port,
            instance_id,
            log_format: self.log_format,
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
            session_log_len: self.session_log_len as usize,
            session_log_ttl: Duration::from_millis(self.session_log_ttl_ms),
            redis,
            redis_key_prefix: self.redis_key_prefix,
            heartbeat: Duration::from_millis(self.heartbeat_ms),
            presence_ttl: Duration::from_millis(self.presence_ttl_ms),
            limits,
            ai: self.ai,
            auth,
            whatsapp,
        })
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
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<HubConfig, String> {
        let cli = Cli::try_parse_from(std::iter::once("mcp-hub").chain(args.iter().copied()))
            .map_err(|e| e.to_string())?;
        let serve = match cli.command {
            Some(Command::Serve(s)) => *s,
            _ => cli.serve,
        };
        serve.validate().map_err(|e| e.to_string())
    }

    #[test]
    fn defaults_are_standalone_on_8002() {
        let cfg = parse(&[]).unwrap();
        assert_eq!(cfg.port, 8002);
        assert!(cfg.redis.is_none());
        assert_eq!(cfg.max_message_bytes, 65536);
        assert_eq!(cfg.max_connections, 10_000);
        assert_eq!(cfg.max_clients_per_session, 100);
        assert_eq!(cfg.max_contacts_per_session, 10_000);
        assert_eq!(cfg.max_rest_body_bytes, 64 * 1024);
        assert_eq!(cfg.field_limits, FieldLimits::default());
        assert!(cfg.allowed_origins.is_empty());
    }

    #[test]
    fn allowed_origins_are_normalized() {
        let cfg = parse(&[
            "--allowed-origins",
            " https://App.Example.com/ ,http://localhost:3000",
        ])
        .unwrap();
        assert_eq!(
            cfg.allowed_origins,
            ["https://app.example.com", "http://localhost:3000"]
        );
    }

    #[test]
    fn serve_subcommand_and_flags() {
        let cfg = parse(&["serve", "--port", "0", "--instance-id", "a"]).unwrap();
        assert_eq!(cfg.port, 0);
        assert_eq!(cfg.instance_id, "a");
    }

    #[test]
    fn bad_settings_name_themselves() {
        let err = parse(&["--redis-url", "http://x"]).unwrap_err();
        assert!(err.contains("REDIS_URL"), "{err}");
        let err = parse(&["--heartbeat-ms", "5000", "--presence-ttl-ms", "1000"]).unwrap_err();
        assert!(err.contains("PRESENCE_TTL_MS"), "{err}");
        let err = parse(&["--allowed-origins", "https://a.example/path"]).unwrap_err();
        assert!(err.contains("ALLOWED_ORIGINS"), "{err}");
        let err = parse(&["--allowed-origins", "*"]).unwrap_err();
        assert!(err.contains("ALLOWED_ORIGINS"), "{err}");
        let err = parse(&["--ping-interval-ms", "5000", "--idle-timeout-ms", "5000"]).unwrap_err();
        assert!(err.contains("IDLE_TIMEOUT_MS"), "{err}");
        let err = parse(&["--port", "notaport"]).unwrap_err();
        assert!(err.contains("--port"), "{err}");
    }

    #[test]
    fn redis_topology_is_one_of_the_exclusive_settings() {
        let cfg = parse(&["--redis-url", "redis://127.0.0.1:6379"]).unwrap();
        assert_eq!(
            cfg.redis,
            Some(RedisTopology::Single {
                url: "redis://127.0.0.1:6379".into()
            })
        );
        let cfg = parse(&[
            "--redis-cluster-urls",
            "127.0.0.1:7001, rediss://:pw@10.0.0.2:7002/",
        ])
        .unwrap();
        assert_eq!(
            cfg.redis,
            Some(RedisTopology::Cluster {
                nodes: vec![
                    "redis://127.0.0.1:7001".into(),
                    "rediss://:pw@10.0.0.2:7002/".into()
                ]
            })
        );
        for bad in [
            &["--redis-cluster-urls", "127.0.0.1"][..],
            &["--redis-cluster-urls", "http://h:1"],
            &["--redis-cluster-urls", " , "],
            &["--redis-cluster-urls", "h:1", "--redis-url", "redis://h:2"],
            &[
                "--redis-cluster-urls",
                "h:1",
                "--redis-sentinels",
                "h:26379",
                "--redis-sentinel-master",
                "m",
            ],
        ] {
            let err = parse(bad).unwrap_err();
            assert!(err.contains("REDIS_CLUSTER_URLS"), "{bad:?}: {err}");
        }
        let err = parse(&["--redis-key-prefix", "a{b}"]).unwrap_err();
        assert!(err.contains("REDIS_KEY_PREFIX"), "{err}");
    }

    #[test]
    fn auth_mode_rules() {
        let cfg = parse(&[]).unwrap();
        assert_eq!(cfg.auth.mode, AuthMode::None);
        assert!(cfg.auth.open_by_default);
        let err = parse(&["--host", "0.0.0.0"]).unwrap_err();
        assert!(
            err.contains("AUTH_JWT_SECRET") && err.contains("AUTH_MODE=none"),
            "{err}"
        );
        let cfg = parse(&["--host", "0.0.0.0", "--auth-mode", "none"]).unwrap();
        assert_eq!(cfg.auth.mode, AuthMode::None);
        assert!(!cfg.auth.open_by_default);
        let err = parse(&["--auth-mode", "jwt"]).unwrap_err();
        assert!(err.contains("AUTH_JWT_SECRET"), "{err}");
        let err = parse(&["--auth-jwt-secret", "short"]).unwrap_err();
        assert!(err.contains("AUTH_JWT_SECRET"), "{err}");
        let secret = "x".repeat(32);
        let cfg = parse(&["--host", "0.0.0.0", "--auth-jwt-secret", &secret]).unwrap();
        assert_eq!(cfg.auth.mode, AuthMode::Jwt);
        assert!(
            !format!("{cfg:?}").contains(&secret),
            "secrets are redacted"
        );
    }

    #[test]
    fn debug_output_shows_no_secret() {
        let secrets = [
            "auth-secret-0123456789abcdef0123456789",
            "prev-secret-0123456789abcdef0123456789",
            "jwkspass",
            "jwkstoken",
            "wa-access-token-x",
            "wa-app-secret-x",
            "wa-verify-token-x",
            "gemini-key-x",
            "openai-key-x",
            "aipass",
            "redispass",
            "clusterpass",
            "sentinelpass",
            "sentinel-own-pass",
        ];
        let serve = [
            "mcp-hub",
            "--auth-jwt-secret",
            secrets[0],
            "--auth-jwt-previous-secret",
            secrets[1],
            "--auth-jwks-url",
            "https://jwksuser:jwkspass@idp.example/jwks.json?access_token=jwkstoken",
            "--whatsapp-access-token",
            secrets[4],
            "--whatsapp-app-secret",
            secrets[5],
            "--whatsapp-verify-token",
            secrets[6],
            "--gemini-api-key",
            secrets[7],
            "--openai-api-key",
            secrets[8],
            "--openai-base-url",
            "https://aiuser:aipass@proxy.example/v1",
            "--redis-url",
            "redis://:redispass@10.0.0.1:6379",
            "--redis-cluster-urls",
            "redis://:clusterpass@10.0.0.2:7001",
            "--redis-sentinels",
            "redis://:sentinelpass@10.0.0.3:26379",
            "--redis-sentinel-password",
            secrets[13],
        ];
        let terminal = [
            "mcp-hub",
            "terminal",
            "--token",
            secrets[0],
            "--url",
            "ws://127.0.0.1:8002/?token=jwkstoken",
        ];
        let token = [
            "mcp-hub",
            "token",
            "--sub",
            "a",
            "--auth-jwt-secret",
            secrets[0],
        ];
        let mut shown = Vec::new();
        for argv in [&serve[..], &terminal, &token] {
            shown.push(format!("{:?}", Cli::try_parse_from(argv).unwrap()));
        }
        // Validated (REDIS_URL alone: the topologies are exclusive).
        shown.push(format!("{:?}", parse(&serve[1..21]).unwrap()));
        for text in &shown {
            for secret in secrets {
                assert!(!text.contains(secret), "{secret} in {text}");
            }
        }
        assert!(shown[0].contains("idp.example") && shown[3].contains("<redacted>"));
    }

    #[test]
    fn jwks_url_is_https_or_loopback_http() {
        for ok in [
            "https://idp.example/jwks.json",
            "http://127.0.0.1:9000/jwks",
            "http://localhost/jwks",
            "http://[::1]:8080/jwks",
        ] {
            assert!(check_jwks_url(ok).is_ok(), "{ok}");
        }
        for bad in [
            "http://idp.example/jwks.json",
            "http://10.0.0.1/jwks",
            "ftp://idp.example/jwks",
            "idp.example/jwks",
        ] {
            assert!(check_jwks_url(bad).is_err(), "{bad}");
        }
        let err = parse(&["--auth-jwks-url", "http://u:pw@idp.example/jwks?t=tok"]).unwrap_err();
        assert!(
            err.contains("AUTH_JWKS_URL") && err.contains("https"),
            "{err}"
        );
        assert!(!err.contains("pw") && !err.contains("tok"), "{err}");
    }

    #[test]
    fn cloud_api_needs_its_settings_and_hides_the_token() {
        let err = parse(&["--connector", "cloud_api"]).unwrap_err();
        assert!(err.contains("WHATSAPP_ACCESS_TOKEN"), "{err}");
        let err = parse(&[
            "--connector",
            "cloud_api",
            "--whatsapp-access-token",
            "tok-secret",
            "--whatsapp-phone-number-id",
            "123",
            "--whatsapp-app-secret",
            "s",
        ])
        .unwrap_err();
        assert!(err.contains("WHATSAPP_VERIFY_TOKEN"), "{err}");
        let cfg = parse(&[
            "--connector",
            "cloud_api",
            "--whatsapp-access-token",
            "tok-secret",
            "--whatsapp-phone-number-id",
            "123",
            "--whatsapp-app-secret",
            "s",
            "--whatsapp-verify-token",
            "v",
        ])
        .unwrap();
        assert_eq!(cfg.connector, ConnectorKind::CloudApi);
        assert!(!format!("{cfg:?}").contains("tok-secret"));
        assert_eq!(
            parse(&["--connector", "none"]).unwrap().connector,
            ConnectorKind::None
        );
    }
}
