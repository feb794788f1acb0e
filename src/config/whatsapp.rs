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
    /// Several business numbers, each backing its own session:
    /// `PHONE_ID:SESSION[:WABA_ID],...` (docs/whatsapp.md). Adds to
    /// WHATSAPP_PHONE_NUMBER_ID (which backs WHATSAPP_SESSION).
    #[arg(long, env = "WHATSAPP_NUMBERS")]
    pub whatsapp_numbers: Option<String>,
    /// A number's own access token: `PHONE_ID:TOKEN,...`; a number not
    /// named here uses WHATSAPP_ACCESS_TOKEN.
    #[arg(long, env = "WHATSAPP_NUMBER_TOKENS", hide_env_values = true)]
    pub whatsapp_number_tokens: Option<String>,
    /// The WhatsApp Business Account id whose templates `list_templates`
    /// reads (a number's own `:WABA_ID` in WHATSAPP_NUMBERS wins).
    #[arg(long, env = "WHATSAPP_BUSINESS_ACCOUNT_ID")]
    pub whatsapp_business_account_id: Option<String>,
    /// Bytes of downloaded media each instance keeps in memory.
    #[arg(long, env = "MEDIA_CACHE_BYTES", default_value_t = 64 * 1024 * 1024, value_parser = clap::value_parser!(u64).range(0..=(16u64 << 30)))]
    pub media_cache_bytes: u64,
    /// The largest upload `POST …/media` takes (WhatsApp's own limits,
    /// per kind, apply too: 5 MB images, 16 MB audio and video, 100 MB
    /// documents).
    #[arg(long, env = "MEDIA_MAX_UPLOAD_BYTES", default_value_t = 16_000_000, value_parser = clap::value_parser!(u64).range(1..=100_000_000))]
    pub media_max_upload_bytes: u64,
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
            .field("numbers", &self.whatsapp_numbers)
            .field("business_account_id", &self.whatsapp_business_account_id)
            .field("media_cache_bytes", &self.media_cache_bytes)
            .field("media_max_upload_bytes", &self.media_max_upload_bytes)
            .field("idempotency_ttl_ms", &self.idempotency_ttl_ms)
            .field("webhook_max_age_ms", &self.whatsapp_webhook_max_age_ms)
            .finish_non_exhaustive()
    }
}

/// One business phone number and the session it backs.
#[derive(Debug, Clone)]
pub struct NumberSettings {
    pub phone_number_id: String,
    pub session: String,
    pub access_token: Secret,
    /// Whose templates `list_templates` reads.
    pub business_account_id: Option<String>,
}

/// Validated Cloud API settings.
#[derive(Debug, Clone)]
pub struct CloudApiSettings {
    /// At least one; phone number ids and sessions are each unique.
    pub numbers: Vec<NumberSettings>,
    pub api_version: String,
    /// Without a trailing slash.
    pub base_url: String,
}

impl CloudApiSettings {
    /// The number that backs `session`.
    pub fn number_for_session(&self, session: &str) -> Option<&NumberSettings> {
        self.numbers.iter().find(|n| n.session == session)
    }

    pub fn number(&self, phone_number_id: &str) -> Option<&NumberSettings> {
        self.numbers
            .iter()
            .find(|n| n.phone_number_id == phone_number_id)
    }
}

/// Which session a webhook change belongs to, by its
/// `metadata.phone_number_id`.
#[derive(Debug, Clone)]
pub struct NumberRoutes {
    /// (phone number id, session); empty without the Cloud API.
    by_phone: Vec<(String, String)>,
    /// WHATSAPP_SESSION.
    default_session: String,
}

impl NumberRoutes {
    pub fn new(by_phone: Vec<(String, String)>, default_session: String) -> Self {
        NumberRoutes {
            by_phone,
            default_session,
        }
    }

    /// The session of a change: its number's; with no number configured
    /// (webhooks without the Cloud API connector), WHATSAPP_SESSION; a
    /// change without metadata goes to the only number's session. None
    /// (ignored) for a number this hub does not serve, or no metadata
    /// when there are several.
    pub fn session_for(&self, phone_number_id: Option<&str>) -> Option<&str> {
        match (phone_number_id, self.by_phone.as_slice()) {
            (_, []) => Some(&self.default_session),
            (None, [(_, only)]) => Some(only),
            (None, _) => None,
            (Some(id), numbers) => numbers
                .iter()
                .find(|(phone, _)| phone == id)
                .map(|(_, session)| session.as_str()),
        }
    }
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
    /// Webhook routing by phone number id.
    pub routes: NumberRoutes,
    pub media_cache_bytes: u64,
    pub media_max_upload_bytes: usize,
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
        if !valid_session(&session) {
            return Err(invalid(
                "WHATSAPP_SESSION",
                "must be 1 to 128 printable characters",
            ));
        }
        let cloud_api = if connector == ConnectorKind::CloudApi {
            let numbers = parse_numbers(
                &phone,
                &session,
                non_empty(self.whatsapp_numbers).as_deref(),
                non_empty(self.whatsapp_number_tokens).as_deref(),
                token.as_deref(),
                non_empty(self.whatsapp_business_account_id).as_deref(),
            )?;
            if numbers.is_empty() {
                return Err(invalid(
                    "WHATSAPP_PHONE_NUMBER_ID",
                    "required with WHATSAPP_CONNECTOR=cloud_api, unless WHATSAPP_NUMBERS is set (see docs/whatsapp.md)",
                ));
            }
            let required = [
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
            Some(CloudApiSettings {
                numbers,
                api_version: version,
                base_url: base,
            })
        } else {
            None
        };
        let routes = NumberRoutes::new(
            cloud_api
                .iter()
                .flat_map(|c| &c.numbers)
                .map(|n| (n.phone_number_id.clone(), n.session.clone()))
                .collect(),
            session.clone(),
        );
        Ok(WhatsAppConfig {
            connector,
            cloud_api,
            app_secret: secret.map(Secret::new),
            verify_token: verify.map(Secret::new),
            session,
            routes,
            media_cache_bytes: self.media_cache_bytes,
            media_max_upload_bytes: self.media_max_upload_bytes as usize,
            idempotency_ttl: Duration::from_millis(self.idempotency_ttl_ms),
            webhook_max_age: Duration::from_millis(self.whatsapp_webhook_max_age_ms),
        })
    }
}

fn valid_session(session: &str) -> bool {
    !session.is_empty() && session.len() <= 128 && !session.chars().any(char::is_control)
}

/// The numbers of WHATSAPP_PHONE_NUMBER_ID (backing `session`) and
/// WHATSAPP_NUMBERS, each with its token (WHATSAPP_NUMBER_TOKENS, else
/// WHATSAPP_ACCESS_TOKEN). Empty when neither names a number.
fn parse_numbers(
    single: &Option<String>,
    session: &str,
    list: Option<&str>,
    tokens: Option<&str>,
    shared_token: Option<&str>,
    business_account_id: Option<&str>,
) -> Result<Vec<NumberSettings>, ConfigError> {
    let numeric = |s: &str| !s.is_empty() && s.len() <= 32 && s.chars().all(|c| c.is_ascii_digit());
    let mut own_tokens: Vec<(&str, &str)> = Vec::new();
    for pair in tokens
        .unwrap_or("")
        .split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
    {
        match pair.split_once(':') {
            Some((phone, token)) if numeric(phone.trim()) && !token.trim().is_empty() => {
                own_tokens.push((phone.trim(), token.trim()))
            }
            // Never echo the value: it holds secrets.
            _ => {
                return Err(invalid(
                    "WHATSAPP_NUMBER_TOKENS",
                    "must be PHONE_ID:TOKEN pairs separated by commas",
                ));
            }
        }
    }
    let mut wanted: Vec<(String, String, Option<String>)> = Vec::new();
    if let Some(phone) = single {
        let phone = phone.trim();
        if !numeric(phone) {
            return Err(invalid(
                "WHATSAPP_PHONE_NUMBER_ID",
                "must be the numeric phone number id from the app dashboard",
            ));
        }
        wanted.push((phone.to_string(), session.to_string(), None));
    }
    for item in list
        .unwrap_or("")
        .split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
    {
        let mut parts = item.splitn(3, ':').map(str::trim);
        let (Some(phone), Some(sess)) = (parts.next(), parts.next()) else {
            return Err(invalid(
                "WHATSAPP_NUMBERS",
                format!("`{item}` is not PHONE_ID:SESSION[:WABA_ID]"),
            ));
        };
        let waba = parts.next().filter(|w| !w.is_empty());
        if !numeric(phone) || !valid_session(sess) || waba.is_some_and(|w| !numeric(w)) {
            return Err(invalid(
                "WHATSAPP_NUMBERS",
                format!(
                    "`{item}` is not PHONE_ID:SESSION[:WABA_ID] (numeric ids, a 1 to 128 character session)"
                ),
            ));
        }
        match wanted.iter_mut().find(|(p, _, _)| p == phone) {
            // The single number listed again: the same session only.
            Some(existing) if existing.1 == sess => existing.2 = waba.map(str::to_string),
            Some(_) => {
                return Err(invalid(
                    "WHATSAPP_NUMBERS",
                    format!("phone number id {phone} is given twice with different sessions"),
                ));
            }
            None => wanted.push((
                phone.to_string(),
                sess.to_string(),
                waba.map(str::to_string),
            )),
        }
    }
    let mut numbers: Vec<NumberSettings> = Vec::new();
    for (phone, sess, waba) in wanted {
        if numbers.iter().any(|n| n.session == sess) {
            return Err(invalid(
                "WHATSAPP_NUMBERS",
                format!(
                    "session `{sess}` is backed by two numbers; each number needs its own session"
                ),
            ));
        }
        let token = own_tokens
            .iter()
            .find(|(p, _)| *p == phone)
            .map(|(_, t)| *t)
            .or(shared_token);
        let Some(token) = token else {
            return Err(invalid(
                "WHATSAPP_ACCESS_TOKEN",
                format!(
                    "number {phone} has no token: set WHATSAPP_ACCESS_TOKEN or give it one in WHATSAPP_NUMBER_TOKENS"
                ),
            ));
        };
        numbers.push(NumberSettings {
            phone_number_id: phone,
            session: sess,
            access_token: Secret::new(token),
            business_account_id: waba.or_else(|| business_account_id.map(str::to_string)),
        });
    }
    if let Some((phone, _)) = own_tokens
        .iter()
        .find(|(p, _)| !numbers.iter().any(|n| n.phone_number_id == *p))
    {
        return Err(invalid(
            "WHATSAPP_NUMBER_TOKENS",
            format!("names phone number id {phone}, which no number setting configures"),
        ));
    }
    if business_account_id.is_some_and(|w| !numeric(w)) {
        return Err(invalid(
            "WHATSAPP_BUSINESS_ACCOUNT_ID",
            "must be the numeric WhatsApp Business Account id",
        ));
    }
    Ok(numbers)
}
