//! The authentication settings (docs/security.md §2): `AUTH_MODE` and the
//! keys tokens are verified with, validated into [`AuthSettings`] by the
//! mode rules.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, ValueEnum};

use super::{ConfigError, invalid, redacted, url_for_log};

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
    /// The hub's public base URL (https://hub.example.com): `/mcp` tokens
    /// must name it in `aud` (unless AUTH_JWT_AUDIENCE is set) and the
    /// OAuth metadata names it. Unset: http://MCP_SERVER_HOST:MCP_SERVER_PORT.
    #[arg(long = "public-url", env = "PUBLIC_URL")]
    pub public_url: Option<String>,
    /// Comma-separated OAuth authorization servers (issuer URLs) that
    /// issue tokens for `/mcp`, named in its protected resource metadata.
    #[arg(
        long = "auth-authorization-servers",
        env = "AUTH_AUTHORIZATION_SERVERS",
        value_delimiter = ','
    )]
    pub auth_authorization_servers: Vec<String>,
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

/// PUBLIC_URL: an http(s) URL with a host and no query or fragment; its
/// trailing `/` is dropped.
fn check_public_url(raw: &str) -> Result<String, String> {
    let url = reqwest::Url::parse(raw.trim()).map_err(|e| format!("not a URL ({e})"))?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return Err("must be an http:// or https:// URL with a host".into());
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err("must not have a query or a fragment".into());
    }
    Ok(url.as_str().trim_end_matches('/').to_string())
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
    /// PUBLIC_URL without a trailing `/`; None: from the host and port.
    pub public_url: Option<String>,
    pub authorization_servers: Vec<String>,
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
            .field("public_url", &self.public_url)
            .field("authorization_servers", &self.authorization_servers)
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
        let public_url = match nonempty(self.public_url) {
            None => None,
            Some(raw) => Some(check_public_url(&raw).map_err(|r| invalid("PUBLIC_URL", r))?),
        };
        let mut authorization_servers = Vec::new();
        for raw in self.auth_authorization_servers.iter().map(|s| s.trim()) {
            if !raw.is_empty() {
                let url =
                    check_jwks_url(raw).map_err(|r| invalid("AUTH_AUTHORIZATION_SERVERS", r))?;
                authorization_servers.push(url.as_str().trim_end_matches('/').to_string());
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
            public_url,
            authorization_servers,
            open_by_default,
        })
    }
}
