//! The hostile-input limits (issue 19, docs/security.md §12): what one
//! client, token holder or stranger may hold of an instance (sockets,
//! bytes, CPU, stored records) before the hub sheds them. Every limit has a
//! setting with a default that no well-behaved client reaches, and what a
//! limit sheds is counted in `hub_limit_shed_total{limit}`.

use std::net::IpAddr;
use std::time::Duration;

use clap::{Args, ValueEnum};

use super::{ConfigError, invalid};

/// The limit settings, flattened into `ServeArgs`.
#[derive(Debug, Clone, Args)]
pub struct LimitArgs {
    // -- The listener, before and around the upgrade --------------------
    /// A request's header must arrive whole within this time, however
    /// slowly its bytes trickle in; otherwise the connection is closed.
    #[arg(long, env = "HEADER_READ_TIMEOUT_MS", default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(100..=300_000))]
    pub header_read_timeout_ms: u64,
    /// Largest request head (request line and headers) in bytes; larger gets 431 and the connection is closed.
    #[arg(long, env = "MAX_HEADER_BYTES", default_value_t = 32 * 1024, value_parser = clap::value_parser!(u32).range(8192..=1_048_576))]
    pub max_header_bytes: u32,
    /// HTTP connections not (yet) upgraded to WebSocket, held at once; more are closed at accept.
    #[arg(long, env = "MAX_PENDING_CONNECTIONS", default_value_t = 1024, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub max_pending_connections: u32,
    /// A keep-alive HTTP connection idle between requests for this long is closed.
    #[arg(long, env = "KEEPALIVE_TIMEOUT_MS", default_value_t = 20_000, value_parser = clap::value_parser!(u64).range(100..=3_600_000))]
    pub keepalive_timeout_ms: u64,
    /// An upgraded WebSocket must be registered within this time, or it is closed (4408).
    #[arg(long, env = "REGISTER_TIMEOUT_MS", default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(100..=300_000))]
    pub register_timeout_ms: u64,
    /// TCP connections one source address may hold at once (proxies in TRUSTED_PROXIES are exempt).
    #[arg(long, env = "MAX_CONNECTIONS_PER_IP", default_value_t = 512, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub max_connections_per_ip: u32,
    /// WebSocket connections one token `sub` may hold at once on an instance (auth on).
    #[arg(long, env = "MAX_CONNECTIONS_PER_IDENTITY", default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub max_connections_per_identity: u32,
    /// Comma-separated addresses or CIDR networks of reverse proxies (HAProxy):
    /// exempt from MAX_CONNECTIONS_PER_IP, and their `X-Forwarded-For` names the client.
    #[arg(long, env = "TRUSTED_PROXIES")]
    pub trusted_proxies: Option<String>,
    /// Comma-separated `Host` names every route answers to besides IP literals
    /// (`*.example.com` matches subdomains, `*` any host); default: `localhost`.
    #[arg(long, env = "ALLOWED_HOSTS")]
    pub allowed_hosts: Option<String>,

    // -- Responses and stored records ------------------------------------
    /// Largest page of `GET /api/v1/sessions/{session}/events`, in bytes of event JSON.
    #[arg(long, env = "EVENTS_PAGE_MAX_BYTES", default_value_t = 1024 * 1024, value_parser = clap::value_parser!(u32).range(65_536..=67_108_864))]
    pub events_page_max_bytes: u32,
    /// Most events on one page of `GET /api/v1/sessions/{session}/events`.
    #[arg(long, env = "EVENTS_PAGE_MAX_EVENTS", default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub events_page_max_events: u32,
    /// Bytes of missed events a resuming registration replays; more and it gets `recovered: false`.
    /// Default: half of OUTBOUND_QUEUE_BYTES, at most 512 KiB; must be smaller than OUTBOUND_QUEUE_BYTES.
    #[arg(long, env = "REPLAY_MAX_BYTES", value_parser = clap::value_parser!(u32).range(1024..))]
    pub replay_max_bytes: Option<u32>,
    /// Largest result stored whole under an idempotency key; a larger one is stored as its digest.
    #[arg(long, env = "IDEMPOTENCY_MAX_RESULT_BYTES", default_value_t = 4096, value_parser = clap::value_parser!(u32).range(256..=1_048_576))]
    pub idempotency_max_result_bytes: u32,
    /// Idempotency keys one caller may hold within IDEMPOTENCY_TTL_MS; past it the oldest are forgotten.
    #[arg(long, env = "IDEMPOTENCY_KEYS_PER_CALLER", default_value_t = 10_000, value_parser = clap::value_parser!(u32).range(1..=10_000_000))]
    pub idempotency_keys_per_caller: u32,
    /// Bytes of idempotency records one instance's memory store keeps in all; past it the oldest are forgotten.
    #[arg(long, env = "IDEMPOTENCY_MAX_TOTAL_BYTES", default_value_t = 64 * 1024 * 1024, value_parser = clap::value_parser!(u64).range(65_536..))]
    pub idempotency_max_total_bytes: u64,

    // -- CPU per request -------------------------------------------------
    /// Longest contact name or phone (contacts_update, webhooks, AI context, sends) in characters.
    #[arg(long, env = "MAX_NAME_CHARS", default_value_t = 128, value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub max_name_chars: u32,
    /// Largest AI `context` (whatsapp_ai_command, ai_request) in bytes of JSON.
    #[arg(long, env = "MAX_AI_CONTEXT_BYTES", default_value_t = 32 * 1024, value_parser = clap::value_parser!(u32).range(256..=16_777_216))]
    pub max_ai_context_bytes: u32,

    // -- Sessions ----------------------------------------------------------
    /// Which requests may create a session that does not exist yet:
    /// `register` (a WebSocket registration) or `any_write` (also REST and MCP writes). Reads never do.
    #[arg(long, env = "SESSION_CREATION", value_enum, default_value = "register")]
    pub session_creation: SessionCreation,
    /// A session with no connected member and no activity for this long is removed (contacts, history, events).
    /// Minimum 1000 ms (small values are for tests).
    #[arg(long, env = "SESSION_IDLE_TTL_MS", default_value_t = 7 * 86_400_000, value_parser = clap::value_parser!(u64).range(1_000..))]
    pub session_idle_ttl_ms: u64,
}

/// `SESSION_CREATION`: who may bring a new session into existence.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum)]
#[value(rename_all = "snake_case")]
pub enum SessionCreation {
    /// Only a WebSocket `register`; REST and MCP writes to an unknown session get `session_not_found`.
    #[default]
    Register,
    /// Any write (register, REST commands, MCP tools); reads still never create.
    AnyWrite,
}

/// Validated limits (see [`LimitArgs`] for each one's meaning).
#[derive(Debug, Clone)]
pub struct Limits {
    pub header_read_timeout: Duration,
    pub max_header_bytes: usize,
    pub max_pending_connections: usize,
    pub keepalive_timeout: Duration,
    pub register_timeout: Duration,
    pub max_connections_per_ip: usize,
    pub max_connections_per_identity: usize,
    pub trusted_proxies: Vec<IpNet>,
    pub allowed_hosts: HostAllowList,
    pub events_page_max_bytes: usize,
    pub events_page_max_events: usize,
    pub replay_max_bytes: usize,
    pub idempotency_max_result_bytes: usize,
    pub idempotency_keys_per_caller: usize,
    pub idempotency_max_total_bytes: u64,
    pub max_name_chars: usize,
    pub max_ai_context_bytes: usize,
    pub session_creation: SessionCreation,
    pub session_idle_ttl: Duration,
}

impl Default for Limits {
    /// The documented defaults (what `mcp-hub` runs with when nothing is set).
    fn default() -> Self {
        use clap::Parser;
        #[derive(Parser)]
        struct Defaults {
            #[command(flatten)]
            limits: LimitArgs,
        }
        Defaults::parse_from(["mcp-hub"])
            .limits
            .validate(1024 * 1024)
            .expect("the defaults are valid")
    }
}

impl LimitArgs {
    /// `outbound_queue_bytes`: a replay must fit a connection's queue.
    pub fn validate(self, outbound_queue_bytes: usize) -> Result<Limits, ConfigError> {
        let replay_max_bytes = self
            .replay_max_bytes
            .map_or((outbound_queue_bytes / 2).min(512 * 1024), |b| b as usize);
        if replay_max_bytes >= outbound_queue_bytes {
            return Err(invalid(
                "REPLAY_MAX_BYTES",
                format!(
                    "must be smaller than OUTBOUND_QUEUE_BYTES ({outbound_queue_bytes}), or a replay would overflow the queue it is written to"
                ),
            ));
        }
        let trusted_proxies = match &self.trusted_proxies {
            Some(list) => parse_networks(list).map_err(|r| invalid("TRUSTED_PROXIES", r))?,
            None => Vec::new(),
        };
        let allowed_hosts = match &self.allowed_hosts {
            Some(list) => HostAllowList::parse(list).map_err(|r| invalid("ALLOWED_HOSTS", r))?,
            None => HostAllowList::default(),
        };
        Ok(Limits {
            header_read_timeout: Duration::from_millis(self.header_read_timeout_ms),
            max_header_bytes: self.max_header_bytes as usize,
            max_pending_connections: self.max_pending_connections as usize,
            keepalive_timeout: Duration::from_millis(self.keepalive_timeout_ms),
            register_timeout: Duration::from_millis(self.register_timeout_ms),
            max_connections_per_ip: self.max_connections_per_ip as usize,
            max_connections_per_identity: self.max_connections_per_identity as usize,
            trusted_proxies,
            allowed_hosts,
            events_page_max_bytes: self.events_page_max_bytes as usize,
            events_page_max_events: self.events_page_max_events as usize,
            replay_max_bytes,
            idempotency_max_result_bytes: self.idempotency_max_result_bytes as usize,
            idempotency_keys_per_caller: self.idempotency_keys_per_caller as usize,
            idempotency_max_total_bytes: self.idempotency_max_total_bytes,
            max_name_chars: self.max_name_chars as usize,
            max_ai_context_bytes: self.max_ai_context_bytes as usize,
            session_creation: self.session_creation,
            session_idle_ttl: Duration::from_millis(self.session_idle_ttl_ms),
        })
    }
}

impl Limits {
    /// Whether `ip` is one of the `TRUSTED_PROXIES`.
    pub fn is_trusted_proxy(&self, ip: IpAddr) -> bool {
        self.trusted_proxies.iter().any(|net| net.contains(ip))
    }
}

/// An address with a prefix length (`10.0.0.0/8`, `::1/128`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpNet {
    addr: IpAddr,
    prefix: u8,
}

impl IpNet {
    pub fn contains(&self, ip: IpAddr) -> bool {
        // An IPv4 peer may arrive as an IPv4-mapped IPv6 address.
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
            v4 => v4,
        };
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

impl std::str::FromStr for IpNet {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = addr
            .parse()
            .map_err(|_| format!("`{s}` is not an IP address or CIDR network"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("`{s}` has an invalid prefix length"))?,
        };
        Ok(IpNet { addr, prefix })
    }
}

fn parse_networks(list: &str) -> Result<Vec<IpNet>, String> {
    let nets = list
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::parse)
        .collect::<Result<Vec<IpNet>, String>>()?;
    if nets.is_empty() {
        return Err("lists no address (unset it to trust no proxy)".into());
    }
    Ok(nets)
}

/// `ALLOWED_HOSTS`: the `Host` names a request may carry. An IP literal is
/// always allowed: DNS rebinding needs a name the attacker controls.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostAllowList {
    any: bool,
    /// Lower case; a leading `*.` matches any subdomain.
    names: Vec<String>,
}

impl Default for HostAllowList {
    fn default() -> Self {
        HostAllowList {
            any: false,
            names: vec!["localhost".into(), "*.localhost".into()],
        }
    }
}

impl HostAllowList {
    fn parse(list: &str) -> Result<Self, String> {
        let mut allow = HostAllowList {
            any: false,
            names: Vec::new(),
        };
        for raw in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            if raw == "*" {
                allow.any = true;
                continue;
            }
            let name = raw.to_ascii_lowercase();
            let bare = name.strip_prefix("*.").unwrap_or(&name);
            if bare.is_empty()
                || bare.contains(['*', '/', ':', '@', '?', '#'])
                || bare.contains(char::is_whitespace)
            {
                return Err(format!(
                    "`{raw}` is not a host name (no scheme, port or path; `*.` only as a prefix)"
                ));
            }
            allow.names.push(name);
        }
        if !allow.any && allow.names.is_empty() {
            return Err("lists no host (unset it for localhost only, `*` for any)".into());
        }
        Ok(allow)
    }

    /// Whether a request with this `Host` header value (`name[:port]`,
    /// `[v6]:port`) is served. A missing Host (HTTP/1.0) is allowed.
    pub fn allows(&self, host: Option<&str>) -> bool {
        let Some(host) = host else { return true };
        if self.any {
            return true;
        }
        let name = host_name(host).to_ascii_lowercase();
        let name = name.trim_end_matches('.');
        if name.parse::<IpAddr>().is_ok() {
            return true;
        }
        self.names
            .iter()
            .any(|allowed| match allowed.strip_prefix("*.") {
                Some(parent) => name
                    .strip_suffix(parent)
                    .is_some_and(|sub| sub.len() > 1 && sub.ends_with('.')),
                None => name == allowed,
            })
    }
}

/// The name part of a `Host` header: without the port, and without the
/// brackets of an IPv6 literal.
fn host_name(host: &str) -> &str {
    if let Some(rest) = host.strip_prefix('[') {
        return rest.split(']').next().unwrap_or_default();
    }
    host.rsplit_once(':')
        .filter(|(_, port)| port.chars().all(|c| c.is_ascii_digit()))
        .map_or(host, |(name, _)| name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn networks_match_by_prefix() {
        let net: IpNet = "10.0.0.0/8".parse().unwrap();
        assert!(net.contains("10.1.2.3".parse().unwrap()));
        assert!(!net.contains("11.0.0.1".parse().unwrap()));
        assert!(net.contains("::ffff:10.0.0.1".parse().unwrap()));
        let one: IpNet = "127.0.0.1".parse().unwrap();
        assert!(one.contains("127.0.0.1".parse().unwrap()));
        assert!(!one.contains("127.0.0.2".parse().unwrap()));
        let all: IpNet = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains("8.8.8.8".parse().unwrap()));
        assert!("10.0.0.0/33".parse::<IpNet>().is_err());
        assert!("ten".parse::<IpNet>().is_err());
    }

    #[test]
    fn hosts_are_names_or_ip_literals() {
        let default = HostAllowList::default();
        for ok in [
            "localhost",
            "localhost:8002",
            "LOCALHOST.",
            "app.localhost",
            "127.0.0.1:8002",
            "[::1]:8002",
            "10.0.0.7",
        ] {
            assert!(default.allows(Some(ok)), "{ok}");
        }
        for bad in [
            "attacker.example",
            "attacker.example:8002",
            "localhost.attacker.example",
            "evillocalhost",
        ] {
            assert!(!default.allows(Some(bad)), "{bad}");
        }
        let list = HostAllowList::parse("chat.example.com, *.corp.example").unwrap();
        assert!(list.allows(Some("chat.example.com:443")));
        assert!(list.allows(Some("a.corp.example")));
        assert!(!list.allows(Some("corp.example")));
        assert!(!list.allows(Some("localhost")));
        assert!(HostAllowList::parse("*").unwrap().allows(Some("x.example")));
        assert!(HostAllowList::parse("http://x").is_err());
        assert!(HostAllowList::parse(" , ").is_err());
    }

    #[test]
    fn replay_budget_must_fit_the_queue() {
        let limits = Limits::default();
        assert!(limits.replay_max_bytes < 1024 * 1024);
        assert_eq!(limits.events_page_max_bytes, 1024 * 1024);
        assert!(limits.header_read_timeout <= Duration::from_secs(30));
        assert!(limits.register_timeout <= Duration::from_secs(30));
    }
}
