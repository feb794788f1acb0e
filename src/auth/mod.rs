//! Authentication and authorization (issue 10, docs/security.md): verifying
//! the JWT a client presents (HS256 secrets, a PEM public key, a JWKS kept
//! fresh in the background), the [`Identity`] it grants (`sub`, `role`,
//! `sessions`, `exp`) and what that identity may do, and minting HS256
//! tokens for `mcp-hub token`.
//!
//! Layering: above `config` and `protocol`, below `hub` and `server`. The
//! hub asks an [`Identity`] whether a registration is allowed; the server
//! turns a missing or bad token into 401 before any upgrade.

pub mod jwks;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::config::{AuthMode, AuthSettings, ConfigError};
use crate::metrics::Metrics;
use crate::protocol::now_millis;

use jwks::JwksCache;

/// Who may do what (docs/security.md §3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Client,
    Agent,
    Admin,
}

impl Role {
    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "client" => Some(Role::Client),
            "agent" => Some(Role::Agent),
            "admin" => Some(Role::Admin),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Client => "client",
            Role::Agent => "agent",
            Role::Admin => "admin",
        }
    }
}

/// What a token may do, from its `scope` claim (docs/security.md §3):
/// read a session, send on it, use the admin API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, strum::IntoStaticStr, strum::EnumString)]
pub enum Scope {
    #[strum(serialize = "whatsapp.read")]
    Read,
    #[strum(serialize = "whatsapp.send")]
    Send,
    #[strum(serialize = "admin")]
    Admin,
}

impl Scope {
    pub fn as_str(self) -> &'static str {
        self.into()
    }

    /// Every scope a role may hold: a `scope` claim can only narrow it.
    pub fn of_role(role: Role) -> &'static [Scope] {
        match role {
            Role::Client | Role::Agent => &[Scope::Read, Scope::Send],
            Role::Admin => &[Scope::Read, Scope::Send, Scope::Admin],
        }
    }

    /// The role's scopes, narrowed to those a `scope` claim (space
    /// separated) names when there is one; unknown names are ignored.
    pub fn granted(role: Role, claim: Option<&str>) -> Vec<Scope> {
        let allowed = Scope::of_role(role);
        match claim {
            None => allowed.to_vec(),
            Some(claim) => allowed
                .iter()
                .copied()
                .filter(|s| claim.split_ascii_whitespace().any(|c| c == s.as_str()))
                .collect(),
        }
    }
}

/// The verified claims of a token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub sub: String,
    pub role: Role,
    /// Session names; `*` stands for every session.
    pub sessions: Vec<String>,
    /// Expiry, seconds since the epoch.
    pub exp: u64,
    /// What the token may do: its role's scopes, narrowed by `scope`.
    pub scopes: Vec<Scope>,
    /// The token's `aud` (checked by `/mcp`, and everywhere when
    /// AUTH_JWT_AUDIENCE is set).
    pub audiences: Vec<String>,
}

impl Identity {
    pub fn has_scope(&self, scope: Scope) -> bool {
        self.scopes.contains(&scope)
    }

    /// `insufficient_scope` unless the token holds `scope`.
    pub fn require(&self, scope: Scope) -> Result<(), crate::protocol::HubError> {
        if self.has_scope(scope) {
            return Ok(());
        }
        Err(crate::protocol::HubError::new(
            crate::protocol::ErrorCode::InsufficientScope,
            format!("this needs a token with the `{}` scope", scope.as_str()),
        ))
    }

    /// May register into (and use) `session`.
    pub fn may_use_session(&self, session: &str) -> bool {
        self.role == Role::Admin || self.sessions.iter().any(|s| s == "*" || s == session)
    }

    /// May register with `capabilities: ["whatsapp"]` (the agent role).
    pub fn may_be_agent(&self) -> bool {
        matches!(self.role, Role::Agent | Role::Admin)
    }

    /// The admin API: role admin, with the `admin` scope.
    pub fn is_admin(&self) -> bool {
        self.role == Role::Admin && self.has_scope(Scope::Admin)
    }

    /// Time left until `exp` (zero when already past).
    pub fn expires_in(&self) -> Duration {
        Duration::from_millis((self.exp * 1000).saturating_sub(now_millis()))
    }
}

/// The claims as they travel. Unknown claims are ignored; a wrong type of
/// a known one makes the token invalid.
#[derive(Debug, Serialize, Deserialize)]
pub struct Claims {
    pub sub: String,
    pub exp: u64,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sessions: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iat: Option<u64>,
    /// Space-separated scopes (`whatsapp.read whatsapp.send admin`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aud: Option<Audience>,
}

/// `aud`: one audience or several (RFC 7519 §4.1.3).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Audience {
    One(String),
    Many(Vec<String>),
}

/// Why a token was refused; the message goes into the 401 body (it never
/// echoes the token).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("a token is required: send `Authorization: Bearer <jwt>`")]
    Missing,
    #[error("token expired")]
    Expired,
    #[error("invalid token: {0}")]
    Invalid(String),
}

/// A verification key and the algorithm it is for.
#[derive(Clone)]
struct KeyEntry {
    alg: Algorithm,
    key: DecodingKey,
}

/// Verifies tokens for one hub (or lets everyone in with `AUTH_MODE=none`).
pub struct Authenticator {
    enabled: bool,
    secrets: Vec<DecodingKey>,
    public_key: Option<KeyEntry>,
    jwks: Option<JwksCache>,
    issuer: Option<String>,
    audience: Option<String>,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator")
            .field("enabled", &self.enabled)
            .field("secrets", &self.secrets.len())
            .field("public_key", &self.public_key.as_ref().map(|k| k.alg))
            .field("jwks", &self.jwks.is_some())
            .finish()
    }
}

impl Authenticator {
    /// No authentication: every request is let in.
    pub fn disabled() -> Self {
        Authenticator {
            enabled: false,
            secrets: Vec::new(),
            public_key: None,
            jwks: None,
            issuer: None,
            audience: None,
        }
    }

    /// From the validated settings; reads and parses the PEM key file (an
    /// unreadable or invalid one names `AUTH_JWT_PUBLIC_KEY_FILE`). A JWKS
    /// is fetched once here and refreshed by [`Authenticator::spawn_refresh`];
    /// what its fetches shed is counted in `metrics`.
    pub async fn from_settings(
        settings: &AuthSettings,
        metrics: Arc<Metrics>,
    ) -> Result<Self, ConfigError> {
        if settings.mode == AuthMode::None {
            return Ok(Self::disabled());
        }
        let secrets = settings
            .secrets()
            .map(|s| DecodingKey::from_secret(s.as_bytes()))
            .collect();
        let public_key = match &settings.public_key_file {
            None => None,
            Some(path) => Some(load_public_key(path)?),
        };
        let jwks = match &settings.jwks_url {
            None => None,
            Some(url) => {
                let cache = JwksCache::new(url, metrics).map_err(|reason| ConfigError {
                    setting: "AUTH_JWKS_URL",
                    reason,
                })?;
                // A failed first fetch is not fatal: the set is fetched
                // again on the first token and periodically.
                if let Err(e) = cache.refresh().await {
                    tracing::warn!(jwks = %cache.shown(), error = %e, "could not fetch the JWKS; retrying later");
                }
                Some(cache)
            }
        };
        Ok(Authenticator {
            enabled: true,
            secrets,
            public_key,
            jwks,
            issuer: settings.issuer.clone(),
            audience: settings.audience.clone(),
        })
    }

    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// Keeps the JWKS fresh every `every` until `stop` is cancelled.
    pub fn spawn_refresh(
        self: &std::sync::Arc<Self>,
        every: Duration,
        stop: tokio_util::sync::CancellationToken,
    ) {
        if self.jwks.is_none() {
            return;
        }
        let me = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tick.tick() => {}
                }
                if let Some(jwks) = &me.jwks
                    && let Err(e) = jwks.refresh().await
                {
                    tracing::warn!(jwks = %jwks.shown(), error = %e, "JWKS refresh failed; keeping the last good set");
                }
            }
        });
    }

    /// Verifies a token: signature, `exp` and `nbf` when present (no
    /// leeway: a token is valid from `nbf` until `exp`, when a live
    /// connection is closed with 4401), `sub`, and `iss`/`aud` when
    /// configured.
    pub async fn verify(&self, token: &str) -> Result<Identity, AuthError> {
        let header = jsonwebtoken::decode_header(token)
            .map_err(|e| AuthError::Invalid(format!("malformed token ({e})")))?;
        let candidates = self.keys_for(&header).await?;
        let mut validation = Validation::new(header.alg);
        validation.leeway = 0;
        validation.validate_nbf = true;
        validation.set_required_spec_claims(&["exp", "sub"]);
        validation.validate_aud = self.audience.is_some();
        if let Some(aud) = &self.audience {
            validation.set_audience(&[aud]);
            validation.required_spec_claims.insert("aud".into());
        }
        if let Some(iss) = &self.issuer {
            validation.set_issuer(&[iss]);
            validation.required_spec_claims.insert("iss".into());
        }
        let mut last = AuthError::Invalid("no key accepts this token".into());
        for key in &candidates {
            match jsonwebtoken::decode::<Claims>(token, key, &validation) {
                Ok(data) => return identity(data.claims),
                Err(e) => {
                    use jsonwebtoken::errors::ErrorKind;
                    last = match e.kind() {
                        ErrorKind::ExpiredSignature => return Err(AuthError::Expired),
                        ErrorKind::ImmatureSignature => {
                            AuthError::Invalid("token not valid yet (`nbf`)".into())
                        }
                        ErrorKind::InvalidSignature => AuthError::Invalid("bad signature".into()),
                        other => AuthError::Invalid(format!("{other:?}")),
                    };
                }
            }
        }
        Err(last)
    }

    /// The keys that may have signed a token with this header.
    async fn keys_for(&self, header: &Header) -> Result<Vec<DecodingKey>, AuthError> {
        match header.alg {
            Algorithm::HS256 => {
                if self.secrets.is_empty() {
                    return Err(AuthError::Invalid("HS256 tokens are not accepted".into()));
                }
                Ok(self.secrets.clone())
            }
            Algorithm::RS256 | Algorithm::ES256 => {
                let mut keys = Vec::new();
                if let Some(pk) = &self.public_key
                    && pk.alg == header.alg
                {
                    keys.push(pk.key.clone());
                }
                if let Some(jwks) = &self.jwks {
                    keys.extend(jwks.keys_for(header.kid.as_deref(), header.alg).await);
                }
                if keys.is_empty() {
                    return Err(AuthError::Invalid(format!(
                        "no {:?} key for this token",
                        header.alg
                    )));
                }
                Ok(keys)
            }
            other => Err(AuthError::Invalid(format!(
                "algorithm {other:?} is not accepted"
            ))),
        }
    }
}

fn identity(claims: Claims) -> Result<Identity, AuthError> {
    if claims.sub.trim().is_empty() || claims.sub.len() > 128 {
        return Err(AuthError::Invalid(
            "`sub` must be 1 to 128 characters".into(),
        ));
    }
    let role = match claims.role.as_deref() {
        None => Role::Client,
        Some(r) => {
            Role::parse(r).ok_or_else(|| AuthError::Invalid(format!("unknown role `{r}`")))?
        }
    };
    Ok(Identity {
        sub: claims.sub,
        role,
        sessions: claims.sessions,
        exp: claims.exp,
        scopes: Scope::granted(role, claims.scope.as_deref()),
        audiences: match claims.aud {
            None => Vec::new(),
            Some(Audience::One(a)) => vec![a],
            Some(Audience::Many(a)) => a,
        },
    })
}

/// A PEM public key: RSA (RS256) or EC P-256 (ES256), by the key type.
fn load_public_key(path: &std::path::Path) -> Result<KeyEntry, ConfigError> {
    let fail = |reason: String| ConfigError {
        setting: "AUTH_JWT_PUBLIC_KEY_FILE",
        reason: format!("{}: {reason}", path.display()),
    };
    let pem = std::fs::read(path).map_err(|e| fail(e.to_string()))?;
    if let Ok(key) = DecodingKey::from_rsa_pem(&pem) {
        return Ok(KeyEntry {
            alg: Algorithm::RS256,
            key,
        });
    }
    if let Ok(key) = DecodingKey::from_ec_pem(&pem) {
        return Ok(KeyEntry {
            alg: Algorithm::ES256,
            key,
        });
    }
    Err(fail("not a PEM RSA or EC (P-256) public key".into()))
}

/// Why `mcp-hub token` could not mint.
#[derive(Debug, thiserror::Error)]
pub enum MintError {
    #[error("invalid setting AUTH_JWT_SECRET: {0}")]
    Secret(String),
    #[error("invalid setting --{0}")]
    Arg(String),
}

/// Mints an HS256 token (`mcp-hub token`).
pub fn mint(
    secret: &str,
    sub: &str,
    sessions: &[String],
    role: Role,
    ttl: Duration,
) -> Result<String, MintError> {
    mint_with(secret, sub, sessions, role, ttl, &Grant::default())
}

/// What a token is for beyond its role: `aud` and `scope`.
#[derive(Debug, Clone, Default)]
pub struct Grant {
    /// `aud`: `/mcp` requires the hub's public URL (or AUTH_JWT_AUDIENCE).
    pub audience: Option<String>,
    /// `scope`, space-separated; None: every scope of the role.
    pub scope: Option<String>,
}

/// [`mint`] with an audience and scopes.
pub fn mint_with(
    secret: &str,
    sub: &str,
    sessions: &[String],
    role: Role,
    ttl: Duration,
    grant: &Grant,
) -> Result<String, MintError> {
    crate::config::check_secret(secret).map_err(|e| MintError::Secret(e.reason))?;
    if sub.trim().is_empty() {
        return Err(MintError::Arg("sub: must not be empty".into()));
    }
    let now = now_millis() / 1000;
    let claims = Claims {
        sub: sub.to_string(),
        exp: now + ttl.as_secs().max(1),
        sessions: dedup(sessions),
        role: Some(role.as_str().to_string()),
        iat: Some(now),
        scope: grant.scope.clone(),
        aud: grant.audience.clone().map(Audience::One),
    };
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .map_err(|e| MintError::Secret(e.to_string()))
}

fn dedup(sessions: &[String]) -> Vec<String> {
    let mut seen = HashSet::new();
    sessions
        .iter()
        .filter(|s| seen.insert(s.as_str()))
        .cloned()
        .collect()
}

/// `90`, `90s`, `15m`, `1h`, `30d`: a token lifetime.
pub fn parse_ttl(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => s.split_at(i),
        None => (s, "s"),
    };
    let n: u64 = num
        .parse()
        .map_err(|_| format!("`{s}` is not a duration like 90s, 15m, 1h or 30d"))?;
    let secs = match unit {
        "s" => Some(n),
        "m" => n.checked_mul(60),
        "h" => n.checked_mul(3600),
        "d" => n.checked_mul(86_400),
        _ => None,
    };
    match secs {
        Some(secs) if secs > 0 => Ok(Duration::from_secs(secs)),
        _ => Err(format!(
            "`{s}` is not a positive duration like 90s, 15m, 1h or 30d"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::AuthSettings;

    const SECRET: &str = "0123456789abcdef0123456789abcdef";

    fn metrics() -> Arc<Metrics> {
        Arc::new(Metrics::new("t"))
    }

    fn settings() -> AuthSettings {
        AuthSettings {
            mode: AuthMode::Jwt,
            secret: Some(SECRET.into()),
            ..AuthSettings::default()
        }
    }

    #[tokio::test]
    async fn minted_tokens_verify_with_their_claims() {
        let auth = Authenticator::from_settings(&settings(), metrics())
            .await
            .unwrap();
        let token = mint(
            SECRET,
            "alice",
            &["default".into(), "ops".into(), "default".into()],
            Role::Agent,
            Duration::from_secs(60),
        )
        .unwrap();
        let id = auth.verify(&token).await.unwrap();
        assert_eq!(id.sub, "alice");
        assert_eq!(id.role, Role::Agent);
        assert_eq!(id.sessions, vec!["default", "ops"]);
        assert!(id.may_use_session("ops") && !id.may_use_session("other"));
        assert!(id.may_be_agent() && !id.is_admin());
    }

    #[tokio::test]
    async fn wrong_secret_and_garbage_are_invalid() {
        let auth = Authenticator::from_settings(&settings(), metrics())
            .await
            .unwrap();
        let other = mint(
            "ffffffffffffffffffffffffffffffffff",
            "a",
            &[],
            Role::Client,
            Duration::from_secs(60),
        )
        .unwrap();
        assert!(matches!(
            auth.verify(&other).await,
            Err(AuthError::Invalid(_))
        ));
        assert!(matches!(
            auth.verify("not.a.jwt").await,
            Err(AuthError::Invalid(_))
        ));
        assert!(matches!(auth.verify("").await, Err(AuthError::Invalid(_))));
    }

    #[tokio::test]
    async fn the_previous_secret_verifies_during_a_rollover() {
        let previous = "abcdefabcdefabcdefabcdefabcdefab";
        let mut s = settings();
        s.previous_secret = Some(previous.into());
        let auth = Authenticator::from_settings(&s, metrics()).await.unwrap();
        let old = mint(previous, "a", &[], Role::Client, Duration::from_secs(60)).unwrap();
        assert_eq!(auth.verify(&old).await.unwrap().sub, "a");
    }

    #[tokio::test]
    async fn a_token_is_refused_before_its_nbf() {
        let auth = Authenticator::from_settings(&settings(), metrics())
            .await
            .unwrap();
        let now = now_millis() / 1000;
        let with_nbf = |nbf: u64| {
            let claims = serde_json::json!({"sub": "a", "exp": now + 600, "nbf": nbf});
            jsonwebtoken::encode(
                &Header::new(Algorithm::HS256),
                &claims,
                &EncodingKey::from_secret(SECRET.as_bytes()),
            )
            .unwrap()
        };
        match auth.verify(&with_nbf(now + 300)).await {
            Err(AuthError::Invalid(m)) => assert!(m.contains("nbf"), "{m}"),
            other => panic!("{other:?}"),
        }
        assert_eq!(auth.verify(&with_nbf(now - 1)).await.unwrap().sub, "a");
    }

    #[test]
    fn admin_may_everything_client_only_its_sessions() {
        let admin = Identity {
            sub: "root".into(),
            role: Role::Admin,
            sessions: vec![],
            exp: 0,
            scopes: Scope::of_role(Role::Admin).to_vec(),
            audiences: vec![],
        };
        assert!(admin.may_use_session("x") && admin.may_be_agent() && admin.is_admin());
        let star = Identity {
            role: Role::Client,
            sessions: vec!["*".into()],
            ..admin
        };
        assert!(star.may_use_session("x") && !star.may_be_agent());
    }

    #[tokio::test]
    async fn a_scope_claim_narrows_the_role_and_never_widens_it() {
        let auth = Authenticator::from_settings(&settings(), metrics())
            .await
            .unwrap();
        let verify = |role, scope: Option<&str>| {
            let grant = Grant {
                audience: Some("https://hub.example".into()),
                scope: scope.map(str::to_string),
            };
            let token = mint_with(SECRET, "a", &[], role, Duration::from_secs(60), &grant).unwrap();
            let auth = &auth;
            async move { auth.verify(&token).await.unwrap() }
        };
        let all = verify(Role::Admin, None).await;
        assert_eq!(all.scopes, [Scope::Read, Scope::Send, Scope::Admin]);
        assert_eq!(all.audiences, ["https://hub.example"]);
        assert!(all.is_admin());
        let reader = verify(Role::Admin, Some("whatsapp.read unknown")).await;
        assert_eq!(reader.scopes, [Scope::Read]);
        assert!(!reader.is_admin(), "role admin without the admin scope");
        let client = verify(Role::Client, Some("admin whatsapp.send")).await;
        assert_eq!(client.scopes, [Scope::Send], "a client cannot claim admin");
    }

    #[test]
    fn ttls() {
        assert_eq!(parse_ttl("90").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_ttl("15m").unwrap(), Duration::from_secs(900));
        assert_eq!(parse_ttl("1h").unwrap(), Duration::from_secs(3600));
        assert_eq!(parse_ttl("2d").unwrap(), Duration::from_secs(172_800));
        assert!(parse_ttl("0s").is_err() && parse_ttl("1y").is_err() && parse_ttl("h").is_err());
        assert!(parse_ttl("99999999999999999999d").is_err());
    }
}
