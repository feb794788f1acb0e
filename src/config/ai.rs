//! AI settings (flags and environment), validated when the coordinator is
//! built. docs/ai.md has the table of settings.

use std::time::Duration;

use clap::{Args, ValueEnum};

use super::ConfigError;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum AiProviderKind {
    Rules,
    Gemini,
    Openai,
}

pub const DEFAULT_GEMINI_MODEL: &str = "gemini-2.5-flash";
pub const DEFAULT_GEMINI_BASE_URL: &str = "https://generativelanguage.googleapis.com";
pub const DEFAULT_OPENAI_MODEL: &str = "gpt-4o-mini";
pub const DEFAULT_OPENAI_BASE_URL: &str = "https://api.openai.com/v1";

#[derive(Clone, Args)]
pub struct AiArgs {
    /// AI provider interpreting natural-language commands.
    #[arg(long, env = "AI_PROVIDER", value_enum, default_value = "rules")]
    pub ai_provider: AiProviderKind,

    /// Gemini API key (required with AI_PROVIDER=gemini).
    #[arg(
        long,
        env = "GEMINI_API_KEY",
        hide_env_values = true,
        default_value = ""
    )]
    pub gemini_api_key: String,
    /// Gemini model code, e.g. gemini-2.5-flash.
    #[arg(long, env = "GEMINI_MODEL", default_value = DEFAULT_GEMINI_MODEL)]
    pub gemini_model: String,
    /// Base URL of the Generative Language API (tests point it at a fake).
    #[arg(long, env = "GEMINI_BASE_URL", default_value = DEFAULT_GEMINI_BASE_URL)]
    pub gemini_base_url: String,

    /// OpenAI API key; may be empty for a local OpenAI-compatible server.
    #[arg(
        long,
        env = "OPENAI_API_KEY",
        hide_env_values = true,
        default_value = ""
    )]
    pub openai_api_key: String,
    /// Base URL of an OpenAI-compatible API (Ollama: http://localhost:11434/v1).
    #[arg(long, env = "OPENAI_BASE_URL", default_value = DEFAULT_OPENAI_BASE_URL)]
    pub openai_base_url: String,
    #[arg(long, env = "OPENAI_MODEL", default_value = DEFAULT_OPENAI_MODEL)]
    pub openai_model: String,

    /// Timeout of one upstream AI call.
    #[arg(long, env = "AI_TIMEOUT_MS", default_value_t = 15_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub ai_timeout_ms: u64,
    /// Overall bound on one AI request: queueing, retries, backoff and waiting for an identical call.
    #[arg(long, env = "AI_DEADLINE_MS", default_value_t = 25_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub ai_deadline_ms: u64,
    /// Retries after a 429, 5xx, timeout or transport error (never after other 4xx).
    #[arg(long, env = "AI_MAX_RETRIES", default_value_t = 2)]
    pub ai_max_retries: u32,
    /// First retry backoff; doubles per retry, full jitter.
    #[arg(long, env = "AI_RETRY_BASE_MS", default_value_t = 500)]
    pub ai_retry_base_ms: u64,
    /// Cap of the exponential backoff (a provider's retry delay may exceed it).
    #[arg(long, env = "AI_RETRY_MAX_MS", default_value_t = 8_000)]
    pub ai_retry_max_ms: u64,
    /// How long answers are cached; 0 disables the cache.
    #[arg(long, env = "AI_CACHE_TTL_MS", default_value_t = 60_000)]
    pub ai_cache_ttl_ms: u64,
    /// Upstream calls per minute per provider, cluster-wide; 0 = unlimited.
    #[arg(long, env = "AI_RATE_LIMIT_PER_MIN", default_value_t = 60)]
    pub ai_rate_limit_per_min: u32,
    /// Upstream calls in progress at once per provider, cluster-wide; 0 = unlimited.
    #[arg(long, env = "AI_MAX_CONCURRENCY", default_value_t = 4)]
    pub ai_max_concurrency: u32,
    /// How long a call waits for the rate limit or a concurrency slot before `ai_rate_limited`.
    #[arg(long, env = "AI_QUEUE_TIMEOUT_MS", default_value_t = 10_000)]
    pub ai_queue_timeout_ms: u64,
    /// Lease of the single-flight lock and of concurrency slots; renewed every third of it while the call runs.
    #[arg(long, env = "AI_LOCK_TTL_MS", default_value_t = 5_000, value_parser = clap::value_parser!(u64).range(100..))]
    pub ai_lock_ttl_ms: u64,
    /// Consecutive upstream failures that open the circuit breaker; 0 disables it.
    #[arg(long, env = "AI_BREAKER_THRESHOLD", default_value_t = 5)]
    pub ai_breaker_threshold: u32,
    /// How long an open breaker answers `ai_unavailable` before letting one probe through.
    #[arg(long, env = "AI_BREAKER_COOLDOWN_MS", default_value_t = 30_000)]
    pub ai_breaker_cooldown_ms: u64,
}

/// Keys are secrets: never print them (HubConfig is Debug-logged); of the
/// base URLs only scheme and host (a proxy URL may carry credentials).
impl std::fmt::Debug for AiArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let redact = |k: &str| if k.is_empty() { "" } else { "<redacted>" };
        f.debug_struct("AiArgs")
            .field("ai_provider", &self.ai_provider)
            .field("gemini_api_key", &redact(&self.gemini_api_key))
            .field("gemini_model", &self.gemini_model)
            .field(
                "gemini_base_url",
                &super::url_for_log(&self.gemini_base_url),
            )
            .field("openai_api_key", &redact(&self.openai_api_key))
            .field(
                "openai_base_url",
                &super::url_for_log(&self.openai_base_url),
            )
            .field("openai_model", &self.openai_model)
            .field("coordination", &self.coordination())
            .finish()
    }
}

/// How the coordinator treats upstream calls (durations already converted).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CoordinationSettings {
    pub attempt_timeout: Duration,
    pub deadline: Duration,
    pub max_retries: u32,
    pub retry_base: Duration,
    pub retry_max: Duration,
    /// Zero disables the cache.
    pub cache_ttl: Duration,
    /// Zero = unlimited.
    pub rate_limit_per_min: u32,
    /// Zero = unlimited.
    pub max_concurrency: u32,
    pub queue_timeout: Duration,
    pub lock_ttl: Duration,
    /// Zero disables the breaker.
    pub breaker_threshold: u32,
    pub breaker_cooldown: Duration,
}

impl Default for CoordinationSettings {
    /// The same values as the flags' defaults.
    fn default() -> Self {
        CoordinationSettings {
            attempt_timeout: Duration::from_millis(15_000),
            deadline: Duration::from_millis(25_000),
            max_retries: 2,
            retry_base: Duration::from_millis(500),
            retry_max: Duration::from_millis(8_000),
            cache_ttl: Duration::from_millis(60_000),
            rate_limit_per_min: 60,
            max_concurrency: 4,
            queue_timeout: Duration::from_millis(10_000),
            lock_ttl: Duration::from_millis(5_000),
            breaker_threshold: 5,
            breaker_cooldown: Duration::from_millis(30_000),
        }
    }
}

/// What a Gemini provider needs.
#[derive(Clone)]
pub struct GeminiSettings {
    pub api_key: String,
    pub model: String,
    pub base_url: String,
}

/// What an OpenAI-compatible provider needs.
#[derive(Clone)]
pub struct OpenAiSettings {
    pub api_key: String,
    pub model: String,
    pub base_url: String,
}

impl AiArgs {
    pub fn coordination(&self) -> CoordinationSettings {
        let ms = Duration::from_millis;
        CoordinationSettings {
            attempt_timeout: ms(self.ai_timeout_ms),
            deadline: ms(self.ai_deadline_ms),
            max_retries: self.ai_max_retries,
            retry_base: ms(self.ai_retry_base_ms),
            retry_max: ms(self.ai_retry_max_ms),
            cache_ttl: ms(self.ai_cache_ttl_ms),
            rate_limit_per_min: self.ai_rate_limit_per_min,
            max_concurrency: self.ai_max_concurrency,
            queue_timeout: ms(self.ai_queue_timeout_ms),
            lock_ttl: ms(self.ai_lock_ttl_ms),
            breaker_threshold: self.ai_breaker_threshold,
            breaker_cooldown: ms(self.ai_breaker_cooldown_ms),
        }
    }

    pub fn gemini(&self) -> Result<GeminiSettings, ConfigError> {
        let api_key = self.gemini_api_key.trim().to_string();
        if api_key.is_empty() {
            return Err(ConfigError {
                setting: "GEMINI_API_KEY",
                reason: "is required with AI_PROVIDER=gemini (create one at https://aistudio.google.com/apikey)".into(),
            });
        }
        let model = model_name("GEMINI_MODEL", &self.gemini_model)?;
        let model = model.strip_prefix("models/").unwrap_or(&model).to_string();
        Ok(GeminiSettings {
            api_key,
            model,
            base_url: base_url("GEMINI_BASE_URL", &self.gemini_base_url)?,
        })
    }

    pub fn openai(&self) -> Result<OpenAiSettings, ConfigError> {
        let base_url = base_url("OPENAI_BASE_URL", &self.openai_base_url)?;
        let api_key = self.openai_api_key.trim().to_string();
        let official = reqwest::Url::parse(&base_url)
            .ok()
            .and_then(|u| {
                u.host_str()
                    .map(|h| h.eq_ignore_ascii_case("api.openai.com"))
            })
            .unwrap_or(false);
        if api_key.is_empty() && official {
            return Err(ConfigError {
                setting: "OPENAI_API_KEY",
                reason: format!(
                    "is required with AI_PROVIDER=openai and OPENAI_BASE_URL={base_url} (it may be empty only for a local OpenAI-compatible server)"
                ),
            });
        }
        Ok(OpenAiSettings {
            api_key,
            model: model_name("OPENAI_MODEL", &self.openai_model)?,
            base_url,
        })
    }
}

fn model_name(setting: &'static str, value: &str) -> Result<String, ConfigError> {
    let model = value.trim();
    if model.is_empty() || model.contains(char::is_whitespace) || model.contains(['?', '#']) {
        return Err(ConfigError {
            setting,
            reason: format!("`{value}` is not a model name"),
        });
    }
    Ok(model.to_string())
}

/// An http(s) URL without a trailing slash.
fn base_url(setting: &'static str, value: &str) -> Result<String, ConfigError> {
    let trimmed = value.trim().trim_end_matches('/');
    match reqwest::Url::parse(trimmed) {
        Ok(u) if matches!(u.scheme(), "http" | "https") && u.host_str().is_some() => {
            Ok(trimmed.to_string())
        }
        _ => Err(ConfigError {
            setting,
            reason: format!("`{value}` is not an http:// or https:// URL"),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct T {
        #[command(flatten)]
        ai: AiArgs,
    }

    fn parse(args: &[&str]) -> AiArgs {
        T::try_parse_from(std::iter::once("t").chain(args.iter().copied()))
            .expect("parses")
            .ai
    }

    #[test]
    fn defaults_match_coordination_default() {
        assert_eq!(parse(&[]).coordination(), CoordinationSettings::default());
    }

    #[test]
    fn missing_keys_name_their_setting() {
        // Explicit empty values: the environment of the test run must not matter.
        let err = parse(&["--ai-provider", "gemini", "--gemini-api-key", ""])
            .gemini()
            .err()
            .unwrap();
        assert_eq!(err.setting, "GEMINI_API_KEY");
        let err = parse(&[
            "--openai-api-key",
            " ",
            "--openai-base-url",
            DEFAULT_OPENAI_BASE_URL,
        ])
        .openai()
        .err()
        .unwrap();
        assert_eq!(err.setting, "OPENAI_API_KEY");
        // A local server needs no key.
        let local = parse(&[
            "--openai-api-key",
            "",
            "--openai-base-url",
            "http://127.0.0.1:11434/v1/",
        ])
        .openai()
        .ok()
        .unwrap();
        assert_eq!(local.base_url, "http://127.0.0.1:11434/v1");
        assert!(local.api_key.is_empty());
        let err = parse(&["--gemini-api-key", "k", "--gemini-base-url", "ftp://x"])
            .gemini()
            .err()
            .unwrap();
        assert_eq!(err.setting, "GEMINI_BASE_URL");
        let g = parse(&["--gemini-api-key", "k", "--gemini-model", "models/gemini-x"])
            .gemini()
            .ok()
            .unwrap();
        assert_eq!(g.model, "gemini-x");
    }

    #[test]
    fn debug_redacts_keys() {
        let a = parse(&[
            "--gemini-api-key",
            "secret-gemini",
            "--openai-api-key",
            "sk-x",
        ]);
        let shown = format!("{a:?}");
        assert!(
            !shown.contains("secret-gemini") && !shown.contains("sk-x"),
            "{shown}"
        );
    }
}
