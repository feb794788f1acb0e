//! Command line, environment and `.env` configuration.
//!
//! Precedence: flags, then environment, then `.env` (dotenvy never overrides
//! a variable that is already set, and clap prefers a flag over the
//! environment). Invalid values are reported naming the setting, exit code 2.
//! Config owns every setting; the AI ones live in [`ai`].

pub mod ai;
pub mod whatsapp;

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, CommandFactory, Parser, Subcommand, ValueEnum};

use ai::AiArgs;
pub use whatsapp::ConnectorKind;
use whatsapp::{WhatsAppArgs, WhatsAppConfig};

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
    /// Frames queued per connection before a slow reader is disconnected.
    #[arg(long, env = "OUTBOUND_QUEUE_LEN", default_value_t = 256, value_parser = clap::value_parser!(u32).range(1..))]
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
    /// How long to wait for an agent's execute_result.
    #[arg(long, env = "AGENT_TIMEOUT_MS", default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub agent_timeout_ms: u64,
    /// Bound on graceful shutdown after SIGTERM/SIGINT.
    #[arg(long, env = "SHUTDOWN_TIMEOUT_MS", default_value_t = 5_000)]
    pub shutdown_timeout_ms: u64,

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

    /// Redis URL; set to run as one instance of a cluster, unset for standalone.
    #[arg(long, env = "REDIS_URL")]
    pub redis_url: Option<String>,
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
    pub ai: AiArgs,
    #[command(flatten)]
    pub whatsapp: WhatsAppArgs,
}

#[derive(Debug, Clone, Args)]
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
    pub outbound_queue_len: usize,
    pub rate_limit_per_sec: f64,
    pub rate_limit_burst: u32,
    pub max_in_flight: usize,
    pub agent_timeout: Duration,
    pub shutdown_timeout: Duration,
    pub connector: ConnectorKind,
    pub contacts_file: Option<PathBuf>,
    pub auto_reply: Option<String>,
    pub auto_reply_delay: Duration,
    pub history_limit: usize,
    pub redis_url: Option<String>,
    pub redis_key_prefix: String,
    pub heartbeat: Duration,
    pub presence_ttl: Duration,
    pub ai: AiArgs,
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
        if let Some(url) = &self.redis_url
            && !(url.starts_with("redis://") || url.starts_with("rediss://"))
        {
            return Err(invalid(
                "REDIS_URL",
                format!("`{url}` is not a redis:// or rediss:// URL"),
            ));
        }
        if self.redis_key_prefix.is_empty() || self.redis_key_prefix.contains(char::is_whitespace) {
            return Err(invalid(
                "REDIS_KEY_PREFIX",
                "must be non-empty and contain no whitespace",
            ));
        }
        let instance_id = match self.instance_id {
            Some(id) if id.trim().is_empty() => {
                return Err(invalid("INSTANCE_ID", "must not be empty"));
            }
            Some(id) => id,
            None => default_instance_id(),
        };
        let whatsapp = self.whatsapp.validate(self.connector)?;
        Ok(HubConfig {
            host: self.host,
            port: self.port,
            instance_id,
            log_format: self.log_format,
            max_message_bytes: self.max_message_bytes as usize,
            outbound_queue_len: self.outbound_queue_len as usize,
            rate_limit_per_sec: self.rate_limit_per_sec,
            rate_limit_burst: self.rate_limit_burst,
            max_in_flight: self.max_in_flight as usize,
            agent_timeout: Duration::from_millis(self.agent_timeout_ms),
            shutdown_timeout: Duration::from_millis(self.shutdown_timeout_ms),
            connector: self.connector,
            contacts_file: self.contacts_file,
            auto_reply: Some(self.auto_reply).filter(|s| !s.is_empty()),
            auto_reply_delay: Duration::from_millis(self.auto_reply_delay_ms),
            history_limit: self.history_limit as usize,
            redis_url: self.redis_url,
            redis_key_prefix: self.redis_key_prefix,
            heartbeat: Duration::from_millis(self.heartbeat_ms),
            presence_ttl: Duration::from_millis(self.presence_ttl_ms),
            ai: self.ai,
            whatsapp,
        })
    }
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
        assert!(cfg.redis_url.is_none());
        assert_eq!(cfg.max_message_bytes, 65536);
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
        let err = parse(&["--port", "notaport"]).unwrap_err();
        assert!(err.contains("--port"), "{err}");
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
