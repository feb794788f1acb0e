//! The JWKS (`AUTH_JWKS_URL`): RS256/ES256 keys fetched over HTTPS, kept by
//! `kid`, refreshed periodically and on an unknown `kid` (at most once per
//! [`MIN_REFETCH`]); a failed fetch keeps the last good set.
//!
//! The set decides who gets in, and its server is not ours: the URL must be
//! `https` (plain `http` only on loopback, [`check_jwks_url`]), redirects
//! are not followed, the body is read chunk by chunk and dropped past
//! [`MAX_BODY`] (counted as `jwks_too_large`), and logs show only the URL's
//! scheme and host (its userinfo, path or query may carry credentials).

use std::sync::Arc;
use std::time::{Duration, Instant};

use jsonwebtoken::jwk::{AlgorithmParameters, Jwk, KeyAlgorithm};
use jsonwebtoken::{Algorithm, DecodingKey};
use tokio::sync::{Mutex, RwLock};

use crate::config::{check_jwks_url, url_for_log};
use crate::metrics::{Metrics, Shed};

/// Unknown `kid`s trigger a fetch at most this often, so a flood of forged
/// tokens cannot turn the hub into a load generator for the IdP.
pub const MIN_REFETCH: Duration = Duration::from_secs(10);

/// Largest JWKS document accepted. Real sets are a few KiB (a key is about
/// 500 bytes); this leaves room for hundreds of keys.
pub const MAX_BODY: usize = 256 * 1024;

/// Bound on one fetch, body included.
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Clone)]
struct JwkEntry {
    kid: Option<String>,
    alg: Algorithm,
    key: DecodingKey,
}

pub struct JwksCache {
    url: reqwest::Url,
    /// `scheme://host[:port]`: what logs and errors show of the URL.
    shown: String,
    http: reqwest::Client,
    metrics: Arc<Metrics>,
    keys: RwLock<Vec<JwkEntry>>,
    /// When the last fetch (successful or not) started; serializes fetches.
    last_fetch: Mutex<Option<Instant>>,
}

/// Why a fetch failed, never naming the URL.
fn describe(e: reqwest::Error) -> String {
    let e = e.without_url();
    let mut text = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

impl JwksCache {
    pub fn new(url: &str, metrics: Arc<Metrics>) -> Result<Self, String> {
        let parsed = check_jwks_url(url)?;
        let http = reqwest::Client::builder()
            .timeout(FETCH_TIMEOUT)
            // A redirect could lead anywhere, plain http included.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(describe)?;
        Ok(JwksCache {
            shown: url_for_log(url),
            url: parsed,
            http,
            metrics,
            keys: RwLock::new(Vec::new()),
            last_fetch: Mutex::new(None),
        })
    }

    /// `scheme://host[:port]` of the set, for logs.
    pub fn shown(&self) -> &str {
        &self.shown
    }

    /// Fetches the set now; on failure the current set stays.
    pub async fn refresh(&self) -> Result<usize, String> {
        let mut last = self.last_fetch.lock().await;
        *last = Some(Instant::now());
        let keys = self.fetch().await?;
        let n = keys.len();
        *self.keys.write().await = keys;
        tracing::info!(jwks = %self.shown, keys = n, "JWKS loaded");
        Ok(n)
    }

    async fn fetch(&self) -> Result<Vec<JwkEntry>, String> {
        let mut resp = self
            .http
            .get(self.url.clone())
            .send()
            .await
            .map_err(describe)?;
        if !resp.status().is_success() {
            // A 3xx too: redirects are not followed.
            return Err(format!("HTTP {}", resp.status()));
        }
        let too_large = || {
            self.metrics.shed(Shed::JwksTooLarge);
            format!("JWKS document over {MAX_BODY} bytes; not read further")
        };
        if resp.content_length().is_some_and(|n| n > MAX_BODY as u64) {
            return Err(too_large());
        }
        // Chunk by chunk: a huge (or endless) body is dropped at the cap,
        // never buffered.
        let mut body = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(describe)? {
            if body.len() + chunk.len() > MAX_BODY {
                return Err(too_large());
            }
            body.extend_from_slice(&chunk);
        }
        parse_set(&body)
    }

    /// The keys for a token header; an unknown `kid` refetches the set once
    /// if the last fetch is older than [`MIN_REFETCH`].
    pub async fn keys_for(&self, kid: Option<&str>, alg: Algorithm) -> Vec<DecodingKey> {
        let found = self.lookup(kid, alg).await;
        if !found.is_empty() || kid.is_none() {
            return found;
        }
        let due = {
            let last = self.last_fetch.lock().await;
            last.is_none_or(|t| t.elapsed() >= MIN_REFETCH)
        };
        if due {
            if let Err(e) = self.refresh().await {
                tracing::warn!(error = %e, "JWKS refresh for an unknown kid failed");
            }
            return self.lookup(kid, alg).await;
        }
        found
    }

    async fn lookup(&self, kid: Option<&str>, alg: Algorithm) -> Vec<DecodingKey> {
        self.keys
            .read()
            .await
            .iter()
            .filter(|k| k.alg == alg && (kid.is_none() || k.kid.as_deref() == kid))
            .map(|k| k.key.clone())
            .collect()
    }
}

/// The RS256/ES256 keys of a JWKS document; other keys are skipped.
fn parse_set(body: &[u8]) -> Result<Vec<JwkEntry>, String> {
    #[derive(serde::Deserialize)]
    struct RawSet {
        keys: Vec<serde_json::Value>,
    }
    let raw: RawSet = serde_json::from_slice(body).map_err(|e| format!("not a JWKS: {e}"))?;
    Ok(raw
        .keys
        .into_iter()
        .filter_map(|v| serde_json::from_value::<Jwk>(v).ok())
        .filter_map(|jwk| {
            let alg = match (&jwk.algorithm, jwk.common.key_algorithm) {
                (AlgorithmParameters::RSA(_), None | Some(KeyAlgorithm::RS256)) => Algorithm::RS256,
                (AlgorithmParameters::EllipticCurve(_), None | Some(KeyAlgorithm::ES256)) => {
                    Algorithm::ES256
                }
                _ => return None,
            };
            let key = DecodingKey::from_jwk(&jwk).ok()?;
            Some(JwkEntry {
                kid: jwk.common.key_id.clone(),
                alg,
                key,
            })
        })
        .collect())
}
