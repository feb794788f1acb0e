//! Google Gemini through the Generative Language REST API (v1beta):
//! `POST {GEMINI_BASE_URL}/v1beta/models/{GEMINI_MODEL}:generateContent`
//! with the key in `x-goog-api-key`. Commands are interpreted through
//! function calling (`functionCallingConfig.mode = ANY`, so the model must
//! call one of the declared functions). See ../shared/reference/gemini-api.md
//! for the wire format this follows.

use async_trait::async_trait;
use serde_json::{Value, json};

use super::http::{self, Reply};
use super::prompt::{self, snippet};
use super::{AiProvider, InterpretRequest, Interpretation, ProviderError, ProviderErrorKind};
use crate::config::ai::GeminiSettings;

const NAME: &str = "gemini";

pub struct GeminiProvider {
    client: reqwest::Client,
    api_key: String,
    model: String,
    url: String,
}

impl GeminiProvider {
    pub fn new(settings: GeminiSettings) -> Self {
        let url = format!(
            "{}/v1beta/models/{}:generateContent",
            settings.base_url.trim_end_matches('/'),
            settings.model
        );
        GeminiProvider {
            client: http::client(),
            api_key: settings.api_key,
            model: settings.model,
            url,
        }
    }

    /// The `generateContent` body for interpreting a command.
    pub fn interpret_body(request: &InterpretRequest) -> Value {
        json!({
            "systemInstruction": { "parts": [ { "text": prompt::INTERPRET_SYSTEM } ] },
            "contents": [
                { "role": "user", "parts": [ { "text": prompt::interpret_user_message(request) } ] }
            ],
            "tools": [ { "functionDeclarations": prompt::gemini_function_declarations() } ],
            "toolConfig": { "functionCallingConfig": { "mode": "ANY" } },
        })
    }

    /// The `generateContent` body for a free-form answer.
    pub fn complete_body(prompt_text: &str, context: Option<&Value>) -> Value {
        json!({
            "systemInstruction": { "parts": [ { "text": prompt::COMPLETE_SYSTEM } ] },
            "contents": [
                { "role": "user", "parts": [ { "text": prompt::complete_user_message(prompt_text, context) } ] }
            ],
        })
    }

    async fn generate(&self, body: &Value) -> Result<Value, ProviderError> {
        let request = self
            .client
            .post(&self.url)
            .header("x-goog-api-key", &self.api_key)
            .json(body);
        let reply = http::send("Gemini", request).await?;
        if !reply.status.is_success() {
            return Err(error_from(&reply));
        }
        reply.json().ok_or_else(|| {
            ProviderError::bad_output(format!(
                "Gemini sent a response that is not JSON: {}",
                reply.text_snippet()
            ))
        })
    }
}

/// A Google RPC error envelope, classified; RetryInfo.retryDelay (or a
/// Retry-After header) becomes `retry_after`.
fn error_from(reply: &Reply) -> ProviderError {
    let mut kind = http::status_kind(reply.status);
    let body = reply.json();
    let error = body.as_ref().and_then(|b| b.get("error"));
    let message = error
        .and_then(|e| e.get("message"))
        .and_then(Value::as_str)
        .map(snippet)
        .unwrap_or_else(|| reply.text_snippet());
    let status = error
        .and_then(|e| e.get("status"))
        .and_then(Value::as_str)
        .unwrap_or("");
    let details: &[Value] = error
        .and_then(|e| e.get("details"))
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or(&[]);
    let type_is = |d: &Value, t: &str| {
        d.get("@type")
            .and_then(Value::as_str)
            .is_some_and(|s| s.ends_with(t))
    };
    let retry_after = details
        .iter()
        .filter(|d| type_is(d, "google.rpc.RetryInfo"))
        .find_map(|d| d.get("retryDelay").and_then(Value::as_str))
        .and_then(http::proto_duration)
        .or_else(|| http::retry_after_header(&reply.headers));
    // A daily quota does not clear in seconds: fail fast instead of retrying.
    let per_day = details
        .iter()
        .filter(|d| type_is(d, "google.rpc.QuotaFailure"))
        .filter_map(|d| d.get("violations").and_then(Value::as_array))
        .flatten()
        .filter_map(|v| v.get("quotaId").and_then(Value::as_str))
        .any(|q| q.contains("PerDay"));
    if kind == ProviderErrorKind::RateLimited && per_day {
        kind = ProviderErrorKind::QuotaExhausted;
    }
    let mut text = format!("Gemini answered HTTP {}", reply.status.as_u16());
    if !status.is_empty() {
        text.push(' ');
        text.push_str(&snippet(status));
    }
    if !message.is_empty() {
        text.push_str(": ");
        text.push_str(&message);
    }
    if per_day {
        text.push_str(" (daily quota)");
    }
    ProviderError {
        kind,
        message: text,
        retry_after,
    }
}

/// The first candidate's parts and finish reason; a blocked prompt or an
/// empty answer is bad output.
fn first_candidate(response: &Value) -> Result<(&[Value], &str), ProviderError> {
    let candidate = response
        .get("candidates")
        .and_then(Value::as_array)
        .and_then(|c| c.first());
    let Some(candidate) = candidate else {
        let reason = response
            .get("promptFeedback")
            .and_then(|f| f.get("blockReason"))
            .and_then(Value::as_str);
        return Err(ProviderError::bad_output(match reason {
            Some(r) => format!("Gemini blocked the prompt ({})", snippet(r)),
            None => "Gemini returned no candidates".to_string(),
        }));
    };
    let parts = candidate
        .get("content")
        .and_then(|c| c.get("parts"))
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or(&[]);
    let finish = candidate
        .get("finishReason")
        .and_then(Value::as_str)
        .unwrap_or("");
    Ok((parts, finish))
}

/// Concatenated text parts, skipping "thought" parts.
fn text_of(parts: &[Value]) -> String {
    parts
        .iter()
        .filter(|p| p.get("thought").and_then(Value::as_bool) != Some(true))
        .filter_map(|p| p.get("text").and_then(Value::as_str))
        .collect::<String>()
}

fn no_answer(finish: &str) -> ProviderError {
    ProviderError::bad_output(match finish {
        "" | "STOP" => "Gemini returned an empty answer".to_string(),
        "MAX_TOKENS" => "Gemini's answer was cut off (MAX_TOKENS)".to_string(),
        other => format!("Gemini stopped without an answer ({})", snippet(other)),
    })
}

/// Reads a `generateContent` response to an interpretation request.
pub fn parse_interpretation(response: &Value) -> Result<Interpretation, ProviderError> {
    let (parts, finish) = first_candidate(response)?;
    if let Some(call) = parts
        .iter()
        .find_map(|p| p.get("functionCall").filter(|c| c.is_object()))
    {
        let name = call.get("name").and_then(Value::as_str).unwrap_or("");
        let args = call.get("args").cloned().unwrap_or(Value::Null);
        return prompt::interpretation_from_call(name, &args);
    }
    let text = text_of(parts);
    if text.trim().is_empty() {
        return Err(no_answer(finish));
    }
    prompt::interpretation_from_text(&text).map_err(|e| {
        if finish == "MAX_TOKENS" {
            no_answer(finish)
        } else {
            e
        }
    })
}

/// Reads a `generateContent` response to a free-form prompt.
pub fn parse_text(response: &Value) -> Result<String, ProviderError> {
    let (parts, finish) = first_candidate(response)?;
    let text = text_of(parts);
    let text = text.trim();
    if text.is_empty() {
        return Err(no_answer(finish));
    }
    Ok(text.to_string())
}

#[async_trait]
impl AiProvider for GeminiProvider {
    fn name(&self) -> &'static str {
        NAME
    }

    fn model(&self) -> &str {
        &self.model
    }

    async fn interpret(&self, request: &InterpretRequest) -> Result<Interpretation, ProviderError> {
        let response = self.generate(&Self::interpret_body(request)).await?;
        parse_interpretation(&response)
    }

    async fn complete(
        &self,
        prompt_text: &str,
        context: Option<&Value>,
    ) -> Result<String, ProviderError> {
        let response = self
            .generate(&Self::complete_body(prompt_text, context))
            .await?;
        parse_text(&response)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::StatusCode;
    use reqwest::header::HeaderMap;

    fn reply(status: u16, body: Value) -> Reply {
        Reply {
            status: StatusCode::from_u16(status).unwrap(),
            headers: HeaderMap::new(),
            body: body.to_string().into_bytes(),
        }
    }

    #[test]
    fn function_call_answers() {
        let r = json!({"candidates":[{"content":{"role":"model","parts":[
            {"functionCall":{"name":"send_message","args":{"contact":"John","message":"hello"}}}
        ]},"finishReason":"STOP"}]});
        let i = parse_interpretation(&r).unwrap();
        assert_eq!(
            (
                i.action.as_str(),
                i.contact.as_deref(),
                i.message.as_deref()
            ),
            ("send", Some("John"), Some("hello"))
        );
    }

    #[test]
    fn unusable_answers_are_bad_output() {
        let cases = [
            json!({"promptFeedback":{"blockReason":"SAFETY"}}),
            json!({"candidates":[]}),
            json!({"candidates":[{"finishReason":"SAFETY"}]}),
            json!({"candidates":[{"content":{"parts":[]},"finishReason":"MALFORMED_FUNCTION_CALL"}]}),
            json!({"candidates":[{"content":{"parts":[{"text":"{\"action\":\"send\",\"cont"}]},"finishReason":"MAX_TOKENS"}]}),
            json!({"candidates":"nonsense"}),
            json!([1, 2, 3]),
        ];
        for c in cases {
            let e = parse_interpretation(&c).unwrap_err();
            assert_eq!(e.kind, ProviderErrorKind::BadOutput, "{c}");
        }
        let e =
            parse_interpretation(&json!({"promptFeedback":{"blockReason":"SAFETY"}})).unwrap_err();
        assert!(e.message.contains("blocked"), "{}", e.message);
        assert!(
            parse_text(&json!({"candidates":[{"content":{"parts":[{"text":"  "}]}}]})).is_err()
        );
    }

    #[test]
    fn text_skips_thoughts_and_keeps_truncated_text() {
        let r = json!({"candidates":[{"content":{"parts":[
            {"text":"thinking...","thought":true},{"text":"Hello "},{"text":"there"}
        ]},"finishReason":"MAX_TOKENS"}]});
        assert_eq!(parse_text(&r).unwrap(), "Hello there");
    }

    #[test]
    fn errors_are_classified() {
        let e = error_from(&reply(
            429,
            json!({"error":{"code":429,"message":"quota","status":"RESOURCE_EXHAUSTED","details":[
                {"@type":"type.googleapis.com/google.rpc.RetryInfo","retryDelay":"1s"}]}}),
        ));
        assert_eq!(e.kind, ProviderErrorKind::RateLimited);
        assert_eq!(e.retry_after, Some(std::time::Duration::from_secs(1)));
        let e = error_from(&reply(
            429,
            json!({"error":{"code":429,"status":"RESOURCE_EXHAUSTED","details":[
                {"@type":"type.googleapis.com/google.rpc.QuotaFailure","violations":[
                    {"quotaId":"GenerateRequestsPerDayPerProjectPerModel-FreeTier"}]}]}}),
        ));
        assert_eq!(e.kind, ProviderErrorKind::QuotaExhausted);
        let e = error_from(&reply(
            400,
            json!({"error":{"code":400,"message":"API key not valid.","status":"INVALID_ARGUMENT"}}),
        ));
        assert_eq!(e.kind, ProviderErrorKind::Rejected);
        assert!(e.message.contains("API key not valid"), "{}", e.message);
        let e = error_from(&Reply {
            status: StatusCode::BAD_GATEWAY,
            headers: HeaderMap::new(),
            body: b"<html>bad gateway</html>".to_vec(),
        });
        assert_eq!(e.kind, ProviderErrorKind::Unavailable);
        assert!(e.message.contains("bad gateway"));
    }
}
