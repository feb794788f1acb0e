//! The JWKS (`AUTH_JWKS_URL`): RS256/ES256 keys fetched over HTTP, kept by
//! `kid`, refreshed periodically and on an unknown `kid` (at most once per
//! [`MIN_REFETCH`]); a failed fetch keeps the last good set.

use std::time::{Duration, Instant};

use jsonwebtoken::jwk::{AlgorithmParameters, Jwk, KeyAlgorithm};
use jsonwebtoken::{Algorithm, DecodingKey};
use tokio::sync::{Mutex, RwLock};

/// Unknown `kid`s trigger a fetch at most this often, so a flood of forged
/// tokens cannot turn the hub into a load generator for the IdP.
pub const MIN_REFETCH: Duration = Duration::from_secs(10);

/// Largest JWKS document accepted.
const MAX_BODY: usize = 1024 * 1024;

#[derive(Clone)]
struct JwkEntry {
    kid: Option<String>,
    alg: Algorithm,
    key: DecodingKey,
}

pub struct JwksCache {
    url: String,
    http: reqwest::Client,
    keys: RwLock<Vec<JwkEntry>>,
    /// When the last fetch (successful or not) started; serializes fetches.
    last_fetch: Mutex<Option<Instant>>,
}

impl JwksCache {
    pub fn new(url: String) -> Result<Self, String> {
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            return Err(format!("`{url}` is not an http:// or https:// URL"));
        }
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()
            .map_err(|e| e.to_string())?;
        Ok(JwksCache {
            url,
            http,
            keys: RwLock::new(Vec::new()),
            last_fetch: Mutex::new(None),
        })
    }

    /// Fetches the set now; on failure the current set stays.
    pub async fn refresh(&self) -> Result<usize, String> {
        let mut last = self.last_fetch.lock().await;
        *last = Some(Instant::now());
        let keys = self.fetch().await?;
        let n = keys.len();
        *self.keys.write().await = keys;
        tracing::info!(url = %self.url, keys = n, "JWKS loaded");
        Ok(n)
    }

    async fn fetch(&self) -> Result<Vec<JwkEntry>, String> {
        let resp = self
            .http
            .get(&self.url)
            .send()
            .await
            .map_err(|e| e.to_string())?;
        if !resp.status().is_success() {
            return Err(format!("HTTP {}", resp.status()));
        }
        let body = resp.bytes().await.map_err(|e| e.to_string())?;
        if body.len() > MAX_BODY {
            return Err("JWKS document too large".into());
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
