//! The Redis settings and the one place that turns them into a
//! [`RedisTopology`]: a single server (`REDIS_URL`), a master found
//! through Redis Sentinel (`REDIS_SENTINELS` + `REDIS_SENTINEL_MASTER`) or
//! a Redis Cluster (`REDIS_CLUSTER_URLS`). The three are exclusive; none of
//! them set: standalone. docs/redis.md documents the settings.
//!
//! Secrets (passwords inside URLs, `REDIS_SENTINEL_PASSWORD`) never reach a
//! log line: every `Debug` here redacts them.

use ::redis::{ConnectionAddr, IntoConnectionInfo};
use clap::Args;

use super::{ConfigError, invalid};

#[derive(Clone, Args)]
pub struct RedisArgs {
    /// Redis URL of a single server; set to run as one instance of a
    /// cluster, unset (and no Sentinel or Cluster) for standalone.
    #[arg(long, env = "REDIS_URL", hide_env_values = true)]
    pub redis_url: Option<String>,
    /// Seed nodes of a Redis Cluster (`host:port,...`; `redis://` or
    /// `rediss://` URLs too, e.g. with a password); instead of REDIS_URL.
    #[arg(long, env = "REDIS_CLUSTER_URLS", hide_env_values = true)]
    pub redis_cluster_urls: Option<String>,
    /// Redis Sentinel nodes, comma-separated `host:port` or
    /// `redis[s]://[[user]:password@]host:port[/db]` (scheme, credentials
    /// and db apply to the master they name).
    #[arg(long, env = "REDIS_SENTINELS", hide_env_values = true)]
    pub redis_sentinels: Option<String>,
    /// The master name the Sentinels monitor (`sentinel monitor NAME …`).
    #[arg(long, env = "REDIS_SENTINEL_MASTER")]
    pub redis_sentinel_master: Option<String>,
    /// Password of the Sentinels themselves (their `requirepass`), if any.
    #[arg(long, env = "REDIS_SENTINEL_PASSWORD", hide_env_values = true)]
    pub redis_sentinel_password: Option<String>,
}

impl std::fmt::Debug for RedisArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisArgs")
            .field("redis_url", &self.redis_url.as_deref().map(redact_url))
            .field(
                "redis_cluster_urls",
                &self.redis_cluster_urls.as_deref().map(redact_url_list),
            )
            .field(
                "redis_sentinels",
                &self.redis_sentinels.as_deref().map(redact_url_list),
            )
            .field("redis_sentinel_master", &self.redis_sentinel_master)
            .field(
                "redis_sentinel_password",
                &self.redis_sentinel_password.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}

/// Where the cluster's state lives. Chosen once here; `redis::RedisBackend`
/// builds its pool and dedicated connections from it.
#[derive(Clone, PartialEq, Eq)]
pub enum RedisTopology {
    /// One Redis server (`REDIS_URL`).
    Single { url: String },
    /// The master the Sentinels name, followed across failovers.
    Sentinel(SentinelTopology),
    /// A Redis Cluster (`REDIS_CLUSTER_URLS`), found from these seed nodes
    /// (`redis://` / `rediss://` URLs).
    Cluster { nodes: Vec<String> },
}

/// `REDIS_SENTINELS`, `REDIS_SENTINEL_MASTER`, `REDIS_SENTINEL_PASSWORD`.
#[derive(Clone, PartialEq, Eq)]
pub struct SentinelTopology {
    /// The Sentinel nodes (host, port), asked in this order.
    pub sentinels: Vec<(String, u16)>,
    /// The monitored master's name.
    pub master: String,
    /// TLS to the Sentinels and to the master (`rediss://`).
    pub tls: bool,
    /// Credentials and database of the master (from the URLs).
    pub username: Option<String>,
    pub password: Option<String>,
    pub db: i64,
    /// The Sentinels' own password.
    pub sentinel_password: Option<String>,
}

impl RedisTopology {
    pub fn single(url: impl Into<String>) -> Self {
        RedisTopology::Single { url: url.into() }
    }

    /// The setting it came from, for errors.
    pub fn setting(&self) -> &'static str {
        match self {
            RedisTopology::Single { .. } => "REDIS_URL",
            RedisTopology::Sentinel(_) => "REDIS_SENTINELS",
            RedisTopology::Cluster { .. } => "REDIS_CLUSTER_URLS",
        }
    }
}

impl std::fmt::Debug for RedisTopology {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RedisTopology::Single { url } => f
                .debug_struct("Single")
                .field("url", &redact_url(url))
                .finish(),
            RedisTopology::Sentinel(s) => s.fmt(f),
            RedisTopology::Cluster { nodes } => f
                .debug_struct("Cluster")
                .field(
                    "nodes",
                    &nodes.iter().map(|n| redact_url(n)).collect::<Vec<_>>(),
                )
                .finish(),
        }
    }
}

impl std::fmt::Debug for SentinelTopology {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let redacted = |p: &Option<String>| p.as_ref().map(|_| "<redacted>");
        f.debug_struct("Sentinel")
            .field("sentinels", &self.sentinels)
            .field("master", &self.master)
            .field("tls", &self.tls)
            .field("username", &self.username)
            .field("password", &redacted(&self.password))
            .field("db", &self.db)
            .field("sentinel_password", &redacted(&self.sentinel_password))
            .finish()
    }
}

/// A setting given with something in it (blank counts as unset).
fn is_set(value: &Option<String>) -> bool {
    value.as_deref().is_some_and(|s| !s.trim().is_empty())
}

impl RedisArgs {
    /// The settings that mean something only with REDIS_SENTINELS are
    /// unset; `context` ends the error message.
    fn no_sentinel_only_setting(&self, context: &str) -> Result<(), ConfigError> {
        for (name, value) in [
            ("REDIS_SENTINEL_MASTER", &self.redis_sentinel_master),
            ("REDIS_SENTINEL_PASSWORD", &self.redis_sentinel_password),
        ] {
            if is_set(value) {
                return Err(invalid(
                    name,
                    format!("needs REDIS_SENTINELS (the Sentinel nodes to ask){context}"),
                ));
            }
        }
        Ok(())
    }

    /// The topology these settings select; None: standalone. Errors name
    /// the setting at fault.
    pub fn topology(&self) -> Result<Option<RedisTopology>, ConfigError> {
        if is_set(&self.redis_cluster_urls) {
            for (name, value) in [
                ("REDIS_URL", &self.redis_url),
                ("REDIS_SENTINELS", &self.redis_sentinels),
            ] {
                if is_set(value) {
                    return Err(invalid(
                        "REDIS_CLUSTER_URLS",
                        format!(
                            "set one of REDIS_URL (one server), REDIS_SENTINELS (Sentinel) or \
                             REDIS_CLUSTER_URLS (a Redis Cluster), not both {name} and \
                             REDIS_CLUSTER_URLS"
                        ),
                    ));
                }
            }
            self.no_sentinel_only_setting(", not REDIS_CLUSTER_URLS")?;
            let list = self.redis_cluster_urls.as_deref().unwrap_or_default();
            return Ok(Some(RedisTopology::Cluster {
                nodes: parse_cluster_urls(list).map_err(|r| invalid("REDIS_CLUSTER_URLS", r))?,
            }));
        }
        if !is_set(&self.redis_sentinels) {
            self.no_sentinel_only_setting("")?;
            // Empty counts as unset (compose passes `REDIS_URL=` through).
            return match self.redis_url.as_deref().filter(|u| !u.is_empty()) {
                None => Ok(None),
                Some(url) if url.starts_with("redis://") || url.starts_with("rediss://") => {
                    Ok(Some(RedisTopology::single(url)))
                }
                Some(url) => Err(invalid(
                    "REDIS_URL",
                    format!("`{}` is not a redis:// or rediss:// URL", redact_url(url)),
                )),
            };
        }
        if is_set(&self.redis_url) {
            return Err(invalid(
                "REDIS_SENTINELS",
                "set either REDIS_URL (one server) or REDIS_SENTINELS, not both",
            ));
        }
        let master = match self.redis_sentinel_master.as_deref().map(str::trim) {
            Some(m) if !m.is_empty() && !m.contains(char::is_whitespace) => m.to_string(),
            Some(_) => {
                return Err(invalid(
                    "REDIS_SENTINEL_MASTER",
                    "must be a non-empty name without whitespace",
                ));
            }
            None => {
                return Err(invalid(
                    "REDIS_SENTINEL_MASTER",
                    "is required with REDIS_SENTINELS (the master name the Sentinels monitor)",
                ));
            }
        };
        let list = self.redis_sentinels.as_deref().unwrap_or_default();
        let sentinel = parse_sentinels(list).map_err(|r| invalid("REDIS_SENTINELS", r))?;
        Ok(Some(RedisTopology::Sentinel(SentinelTopology {
            master,
            sentinel_password: self
                .redis_sentinel_password
                .clone()
                .filter(|p| !p.is_empty()),
            ..sentinel
        })))
    }
}

/// Parses `REDIS_SENTINELS`; every entry must agree on TLS, credentials
/// and db (they describe one master).
fn parse_sentinels(list: &str) -> Result<SentinelTopology, String> {
    let mut topology: Option<SentinelTopology> = None;
    let mut sentinels = Vec::new();
    for raw in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let url = if raw.contains("://") {
            raw.to_string()
        } else {
            format!("redis://{raw}")
        };
        let not_an_address = || {
            format!(
                "`{}` is not host:port or a redis:// / rediss:// URL",
                redact_url(raw)
            )
        };
        if !(url.starts_with("redis://") || url.starts_with("rediss://")) {
            return Err(not_an_address());
        }
        let info = url
            .as_str()
            .into_connection_info()
            .map_err(|_| not_an_address())?;
        let (host, port, tls) = match info.addr() {
            ConnectionAddr::Tcp(host, port) => (host.clone(), *port, false),
            ConnectionAddr::TcpTls { host, port, .. } => (host.clone(), *port, true),
            _ => return Err(not_an_address()),
        };
        // `redis://host` would silently mean port 6379, a data port.
        if !has_port(&url) || host.is_empty() {
            return Err(format!("`{}` has no port", redact_url(raw)));
        }
        let settings = info.redis_settings();
        let this = SentinelTopology {
            sentinels: Vec::new(),
            master: String::new(),
            tls,
            username: settings.username().map(str::to_string),
            password: settings.password().map(str::to_string),
            db: settings.db(),
            sentinel_password: None,
        };
        match &topology {
            Some(first) if first != &this => {
                return Err(
                    "entries disagree on scheme, credentials or db (they name one master)".into(),
                );
            }
            Some(_) => {}
            None => topology = Some(this),
        }
        sentinels.push((host, port));
    }
    let topology = topology.ok_or("lists no Sentinel node")?;
    Ok(SentinelTopology {
        sentinels,
        ..topology
    })
}

/// `REDIS_CLUSTER_URLS`: `host:port` or redis(s) URLs, comma-separated.
fn parse_cluster_urls(list: &str) -> Result<Vec<String>, String> {
    let mut nodes = Vec::new();
    for raw in list.split(',').map(str::trim).filter(|n| !n.is_empty()) {
        let url = if raw.contains("://") {
            raw.to_string()
        } else {
            format!("redis://{raw}")
        };
        let authority = url.split_once("://").map(|(_, r)| r).unwrap_or_default();
        let host_port = authority.rsplit('@').next().unwrap_or_default();
        let port_ok = host_port
            .trim_end_matches('/')
            .rsplit_once(':')
            .is_some_and(|(host, port)| {
                !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0)
            });
        if !(url.starts_with("redis://") || url.starts_with("rediss://")) || !port_ok {
            return Err(format!(
                "`{}` is not host:port or a redis:// / rediss:// URL with a port",
                redact_url(raw)
            ));
        }
        nodes.push(url);
    }
    if nodes.is_empty() {
        return Err("needs at least one seed node (host:port)".into());
    }
    Ok(nodes)
}

/// Whether a URL's authority names a port (`host:port`, `[v6]:port`).
fn has_port(url: &str) -> bool {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = rest.split('/').next().unwrap_or_default();
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    host_port
        .rsplit_once(':')
        .is_some_and(|(_, port)| !port.is_empty() && !port.ends_with(']'))
}

/// `scheme://user:secret@host` → `scheme://user:<redacted>@host`.
pub fn redact_url(url: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("", url));
    let Some((userinfo, host)) = rest.rsplit_once('@') else {
        return url.to_string();
    };
    let user = userinfo.split_once(':').map_or("", |(u, _)| u);
    let prefix = if scheme.is_empty() {
        String::new()
    } else {
        format!("{scheme}://")
    };
    format!("{prefix}{user}:<redacted>@{host}")
}

fn redact_url_list(list: &str) -> String {
    list.split(',')
        .map(redact_url)
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(url: Option<&str>, sentinels: Option<&str>, master: Option<&str>) -> RedisArgs {
        RedisArgs {
            redis_url: url.map(str::to_string),
            redis_cluster_urls: None,
            redis_sentinels: sentinels.map(str::to_string),
            redis_sentinel_master: master.map(str::to_string),
            redis_sentinel_password: None,
        }
    }

    fn setting_of(a: &RedisArgs) -> &'static str {
        a.topology().unwrap_err().setting
    }

    #[test]
    fn sentinel_settings_select_the_sentinel_topology() {
        let mut a = args(
            None,
            Some("127.0.0.1:26379, redis://:s3cret@10.0.0.2:26380/2"),
            Some("mymaster"),
        );
        // Plain entries take the URL entries' credentials only when they
        // agree: here they do not.
        assert_eq!(setting_of(&a), "REDIS_SENTINELS");
        a.redis_sentinels = Some("redis://:s3cret@h1:26379/2,redis://:s3cret@h2:26380/2".into());
        a.redis_sentinel_password = Some("sentinel-pw".into());
        let Some(RedisTopology::Sentinel(s)) = a.topology().unwrap() else {
            panic!("a sentinel topology");
        };
        assert_eq!(
            s.sentinels,
            [("h1".to_string(), 26379), ("h2".to_string(), 26380)]
        );
        assert_eq!(s.master, "mymaster");
        assert_eq!(s.password.as_deref(), Some("s3cret"));
        assert_eq!(s.db, 2);
        assert!(!s.tls);
        assert_eq!(s.sentinel_password.as_deref(), Some("sentinel-pw"));
        let debug = format!("{a:?} {s:?}");
        assert!(
            !debug.contains("s3cret") && !debug.contains("sentinel-pw"),
            "{debug}"
        );
    }

    #[test]
    fn inconsistent_sentinel_settings_name_the_setting() {
        assert_eq!(
            setting_of(&args(None, Some("h:26379"), None)),
            "REDIS_SENTINEL_MASTER"
        );
        assert_eq!(
            setting_of(&args(None, Some("h:26379"), Some(" "))),
            "REDIS_SENTINEL_MASTER"
        );
        assert_eq!(
            setting_of(&args(None, None, Some("mymaster"))),
            "REDIS_SENTINEL_MASTER"
        );
        assert_eq!(
            setting_of(&args(Some("redis://h"), Some("h:26379"), Some("m"))),
            "REDIS_SENTINELS"
        );
        for bad in ["h", "http://h:1", "h:notaport", ",", "redis://h"] {
            assert_eq!(
                setting_of(&args(None, Some(bad), Some("m"))),
                "REDIS_SENTINELS",
                "{bad}"
            );
        }
        let mut pw_only = args(None, None, None);
        pw_only.redis_sentinel_password = Some("x".into());
        assert_eq!(setting_of(&pw_only), "REDIS_SENTINEL_PASSWORD");
    }

    #[test]
    fn single_url_and_standalone_stay_as_they_were() {
        assert_eq!(args(None, None, None).topology().unwrap(), None);
        assert_eq!(
            args(Some("redis://127.0.0.1:6379"), None, None)
                .topology()
                .unwrap(),
            Some(RedisTopology::single("redis://127.0.0.1:6379"))
        );
        let err = args(Some("http://:pw@x"), None, None)
            .topology()
            .unwrap_err();
        assert_eq!(err.setting, "REDIS_URL");
        assert!(!err.reason.contains("pw"), "{err}");
        assert_eq!(
            format!("{:?}", RedisTopology::single("redis://u:pw@h:1")),
            r#"Single { url: "redis://u:<redacted>@h:1" }"#
        );
    }
}
