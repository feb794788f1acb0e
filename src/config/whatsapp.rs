//! WhatsApp connector settings: which connector, the Cloud API credentials
//! and webhook secrets, the webhooks' freshness window, and the idempotency
//! window of sends. The secrets never appear in `Debug` output (and so
//! never in logs).

use std::time::Duration;

use clap::{Args, ValueEnum};

use super::ConfigError;

/// Who executes a send when the session has no agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ConnectorKind {
    /// Always succeeds offline; every result says `executed_by: simulated`.
    Simulated,
    /// Meta's WhatsApp Business Cloud API.
    #[value(name = "cloud_api")]
    CloudApi,
    /// Agent only: without one, sends fail with `agent_unavailable`.
    None,
}

impl ConnectorKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ConnectorKind::Simulated => "simulated",
            ConnectorKind::CloudApi => "cloud_api",
            ConnectorKind::None => "none",
        }
    }
}

/// A secret setting: usable, never printed.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Secret(s.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

#[derive(Clone, Args)]
pub struct WhatsAppArgs {
    /// Cloud API: the system-user access token (a bearer token).
    #[arg(long, env = "WHATSAPP_ACCESS_TOKEN", hide_env_values = true)]
    pub whatsapp_access_token: Option<String>,
    /// Cloud API: the business phone number id (not the phone number).
    #[arg(long, env = "WHATSAPP_PHONE_NUMBER_ID")]
    pub whatsapp_phone_number_id: Option<String>,
    /// Cloud API: the app secret that signs webhooks (X-Hub-Signature-256).
    #[arg(long, env = "WHATSAPP_APP_SECRET", hide_env_values = true)]
    pub whatsapp_app_secret: Option<String>,
    /// Cloud API: the verify token of the webhook subscription handshake.
    #[arg(long, env = "WHATSAPP_VERIFY_TOKEN", hide_env_values = true)]
    pub whatsapp_verify_token: Option<String>,
    /// Graph API version of the Cloud API URLs.
    #[arg(long, env = "WHATSAPP_API_VERSION", default_value = "v21.0")]
    pub whatsapp_api_version: String,
    /// Graph API base URL (a loopback fake in tests).
    #[arg(
        long,
        env = "WHATSAPP_BASE_URL",
        default_value = "https://graph.facebook.com"
    )]
    pub whatsapp_base_url: String,
    /// The hub session the Cloud API number backs (inbound webhooks land here).
    #[arg(long, env = "WHATSAPP_SESSION", default_value = "default")]
    pub whatsapp_session: String,
    /// How long an idempotency key's first result is kept (and replayed).
    #[arg(long, env = "IDEMPOTENCY_TTL_MS", default_value_t = 86_400_000, value_parser = clap::value_parser!(u64).range(1_000..))]
    pub idempotency_ttl_ms: u64,
    /// Webhook items (messages, statuses) whose `timestamp` is older than
    /// this are acknowledged but not delivered (Meta retries for up to 7 days).
    #[arg(long, env = "WHATSAPP_WEBHOOK_MAX_AGE_MS", default_value_t = WEBHOOK_MAX_AGE_MS_MAX, value_parser = clap::value_parser!(u64).range(60_000..=WEBHOOK_MAX_AGE_MS_MAX))]
    pub whatsapp_webhook_max_age_ms: u64,
}

/// Meta retries an unacknowledged webhook for up to 7 days: the default
/// and largest freshness window. Seen items are remembered at least this
/// long (`whatsapp::webhooks::DEDUP_TTL`), so a replay inside the window
/// is a duplicate and one outside it is stale.
pub const WEBHOOK_MAX_AGE_MS_MAX: u64 = 7 * 86_400_000;

impl std::fmt::Debug for WhatsAppArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WhatsAppArgs")
            .field("phone_number_id", &self.whatsapp_phone_number_id)
            .field("api_version", &self.whatsapp_api_version)
            .field("base_url", &super::url_for_log(&self.whatsapp_base_url))
            .field("session", &self.whatsapp_session)
            .field("idempotency_ttl_ms", &self.idempotency_ttl_ms)
            .field("webhook_max_age_ms", &self.whatsapp_webhook_max_age_ms)
            .finish_non_exhaustive()
    }
}

/// Validated Cloud API settings.
#[derive(Debug, Clone)]
pub struct CloudApiSettings {
    pub access_token: Secret,
    pub phone_number_id: String,
    pub api_version: String,
    /// Without a trailing slash.
    pub base_url: String,
}

/// Validated WhatsApp settings of a running hub.
#[derive(Debug, Clone)]
pub struct WhatsAppConfig {
    pub connector: ConnectorKind,
    /// Present with `cloud_api`.
    pub cloud_api: Option<CloudApiSettings>,
    /// Webhooks are served when both are set (always with `cloud_api`).
    pub app_secret: Option<Secret>,
    pub verify_token: Option<Secret>,
    pub session: String,
    pub idempotency_ttl: Duration,
    /// Webhook items older than this are acknowledged, not delivered.
    pub webhook_max_age: Duration,
}

fn invalid(setting: &'static str, reason: impl Into<String>) -> ConfigError {
    ConfigError {
        setting,
        reason: reason.into(),
    }
}

fn non_empty(v: Option<String>) -> Option<String> {
    v.filter(|s| !s.trim().is_empty())
}

impl WhatsAppArgs {
    pub fn validate(self, connector: ConnectorKind) -> Result<WhatsAppConfig, ConfigError> {
        let token = non_empty(self.whatsapp_access_token);
        let phone = non_empty(self.whatsapp_phone_number_id);
        let secret = non_empty(self.whatsapp_app_secret);
        let verify = non_empty(self.whatsapp_verify_token);
        let session = self.whatsapp_session.trim().to_string();
        if session.is_empty() || session.len() > 128 || session.chars().any(char::is_control) {
            return Err(invalid(
                "WHATSAPP_SESSION",
                "must be 1 to 128 printable characters",
            ));
        }
        let cloud_api = if connector == ConnectorKind::CloudApi {
            let required = [
                ("WHATSAPP_ACCESS_TOKEN", &token),
                ("WHATSAPP_PHONE_NUMBER_ID", &phone),
                ("WHATSAPP_APP_SECRET", &secret),
                ("WHATSAPP_VERIFY_TOKEN", &verify),
            ];
            for (name, value) in required {
                if value.is_none() {
                    return Err(invalid(
                        name,
                        "required with WHATSAPP_CONNECTOR=cloud_api (see docs/whatsapp.md)",
                    ));
                }
            }
            let base = self.whatsapp_base_url.trim_end_matches('/').to_string();
            if !(base.starts_with("https://") || base.starts_with("http://")) {
                return Err(invalid(
                    "WHATSAPP_BASE_URL",
                    format!("`{base}` is not an http(s) URL"),
                ));
            }
            let version = self.whatsapp_api_version.trim().to_string();
            if version.is_empty() || version.contains('/') {
                return Err(invalid(
                    "WHATSAPP_API_VERSION",
                    "must look like v21.0 (no slashes)",
                ));
            }
            let phone = phone.unwrap_or_default();
            if !phone.chars().all(|c| c.is_ascii_digit()) {
                return Err(invalid(
                    "WHATSAPP_PHONE_NUMBER_ID",
                    "must be the numeric phone number id from the app dashboard",
                ));
            }
            Some(CloudApiSettings {
                access_token: Secret::new(token.unwrap_or_default()),
                phone_number_id: phone,
                api_version: version,
                base_url: base,
            })
        } else {
            None
        };
        Ok(WhatsAppConfig {
            connector,
            cloud_api,
            app_secret: secret.map(Secret::new),
            verify_token: verify.map(Secret::new),
            session,
            idempotency_ttl: Duration::from_millis(self.idempotency_ttl_ms),
            webhook_max_age: Duration::from_millis(self.whatsapp_webhook_max_age_ms),
        })
    }
}
