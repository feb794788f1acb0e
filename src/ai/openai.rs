//! OpenAI Chat Completions, or any server speaking it (Ollama, llama.cpp,
//! vLLM...): `POST {OPENAI_BASE_URL}/chat/completions` with
//! `Authorization: Bearer {OPENAI_API_KEY}` (omitted when the key is empty,
//! for local servers). Commands are interpreted through tool calling with
//! `tool_choice: "required"`; servers that ignore tools and answer with a
//! JSON object in the message text are understood too.

use async_trait::async_trait;
use serde_json::{Value, json};

use super::http::{self, Reply};
use super::prompt::{self, snippet};
use super::{AiProvider, InterpretRequest, Interpretation, ProviderError, ProviderErrorKind};
use crate::config::ai::OpenAiSettings;

const NAME: &str = "openai";

pub struct OpenAiProvider {
    client: reqwest::Client,
    api_key: String,
    model: String,
    url: String,
}

impl OpenAiProvider {
    pub fn new(settings: OpenAiSettings) -> Self {
        let url = format!(
            "{}/chat/completions",
            settings.base_url.trim_end_matches('/')
        );
        OpenAiProvider {
            client: http::client(),
            api_key: settings.api_key,
            model: settings.model,
            url,
        }
    }

    /// The `chat/completions` body for interpreting a command.
    pub fn interpret_body(model: &str, request: &InterpretRequest) -> Value {
        json!({
            "model": model,
            "messages": [
                { "role": "system", "content": prompt::INTERPRET_SYSTEM },
                { "role": "user", "content": prompt::interpret_user_message(request) },
            ],
            "tools": prompt::openai_tools(),
            "tool_choice": "required",
        })
    }

    /// The `chat/completions` body for a free-form answer.
    pub fn complete_body(model: &str, prompt_text: &str, context: Option<&Value>) -> Value {
        json!({
            "model": model,
            "messages": [
                { "role": "system", "content": prompt::COMPLETE_SYSTEM },
                { "role": "user", "content": prompt::complete_user_message(prompt_text, context) },
            ],
        })
    }

    async fn chat(&self, body: &Value) -> Result<Value, ProviderError> {
        let mut request = self.client.post(&self.url).json(body);
        if !self.api_key.is_empty() {
            request = request.bearer_auth(&self.api_key);
        }
        let reply = http::send("OpenAI API", request).await?;
        if !reply.status.is_success() {
            return Err(error_from(&reply));
        }
        reply.json().ok_or_else(|| {
            ProviderError::bad_output(format!(
                "the OpenAI API sent a response that is not JSON: {}",
                reply.text_snippet()
            ))
        })
    }
}

/// `{"error": {"message", "type", "code"}}` (or a bare string from some
/// local servers), classified; Retry-After / retry-after-ms honoured.
fn error_from(reply: &Reply) -> ProviderError {
    let mut kind = http::status_kind(reply.status);
    let body = reply.json();
    let error = body.as_ref().and_then(|b| b.get("error"));
    let message = match error {
        Some(Value::String(s)) => snippet(s),
        Some(e) => e
            .get("message")
            .and_then(Value::as_str)
            .map(snippet)
            .unwrap_or_default(),
        None => reply.text_snippet(),
    };
    let code = error
        .and_then(|e| e.get("code").or_else(|| e.get("type")))
        .and_then(Value::as_str)
        .unwrap_or("");
    // Out of credit: waiting will not help.
    if kind == ProviderErrorKind::RateLimited && code == "insufficient_quota" {
        kind = ProviderErrorKind::QuotaExhausted;
    }
    let mut text = format!("the OpenAI API answered HTTP {}", reply.status.as_u16());
    if !code.is_empty() {
        text.push(' ');
        text.push_str(&snippet(code));
    }
    if !message.is_empty() {
        text.push_str(": ");
        text.push_str(&message);
    }
    ProviderError {
        kind,
        message: text,
        retry_after: http::retry_after_header(&reply.headers),
    }
}

fn first_choice(response: &Value) -> Result<(&Value, &str), ProviderError> {
    let choice = response
        .get("choices")
        .and_then(Value::as_array)
        .and_then(|c| c.first())
        .ok_or_else(|| ProviderError::bad_output("the OpenAI API returned no choices"))?;
    let finish = choice
        .get("finish_reason")
        .and_then(Value::as_str)
        .unwrap_or("");
    let message = choice.get("message").unwrap_or(&Value::Null);
    if let Some(refusal) = message.get("refusal").and_then(Value::as_str)
        && !refusal.trim().is_empty()
    {
        return Err(ProviderError::bad_output(format!(
            "the model refused: {}",
            snippet(refusal)
        )));
    }
    Ok((message, finish))
}

/// `content` as a string, or the text of an array of content parts.
fn content_text(message: &Value) -> String {
    match message.get("content") {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(parts)) => parts
            .iter()
            .filter_map(|p| p.get("text").and_then(Value::as_str))
            .collect(),
        _ => String::new(),
    }
}

fn no_answer(finish: &str) -> ProviderError {
    ProviderError::bad_output(match finish {
        "" | "stop" | "tool_calls" => "the OpenAI API returned an empty answer".to_string(),
        "length" => "the model's answer was cut off (finish_reason length)".to_string(),
        "content_filter" => "the answer was blocked by the content filter".to_string(),
        other => format!(
            "the model stopped without an answer (finish_reason {})",
            snippet(other)
        ),
    })
}

/// Reads a chat completion answering an interpretation request.
pub fn parse_interpretation(response: &Value) -> Result<Interpretation, ProviderError> {
    let (message, finish) = first_choice(response)?;
    let call = message
        .get("tool_calls")
        .and_then(Value::as_array)
        .and_then(|calls| calls.iter().find_map(|c| c.get("function")))
        // The deprecated single `function_call` form, still sent by some servers.
        .or_else(|| message.get("function_call"))
        .filter(|f| f.is_object());
    if let Some(function) = call {
        if finish == "length" {
            return Err(no_answer(finish));
        }
        let name = function.get("name").and_then(Value::as_str).unwrap_or("");
        let args = function.get("arguments").cloned().unwrap_or(Value::Null);
        return prompt::interpretation_from_call(name, &args);
    }
    let text = content_text(message);
    if text.trim().is_empty() {
        return Err(no_answer(finish));
    }
    prompt::interpretation_from_text(&text).map_err(|e| {
        if finish == "length" {
            no_answer(finish)
        } else {
            e
        }
    })
}

/// Reads a chat completion answering a free-form prompt.
pub fn parse_text(response: &Value) -> Result<String, ProviderError> {
    let (message, finish) = first_choice(response)?;
    if finish == "content_filter" {
        return Err(no_answer(finish));
    }
    let text = content_text(message);
    let text = text.trim();
    if text.is_empty() {
        return Err(no_answer(finish));
    }
    Ok(text.to_string())
}

#[async_trait]
impl AiProvider for OpenAiProvider {
    fn name(&self) -> &'static str {
        NAME
    }

    fn model(&self) -> &str {
        &self.model
    }

    async fn interpret(&self, request: &InterpretRequest) -> Result<Interpretation, ProviderError> {
        let response = self
            .chat(&Self::interpret_body(&self.model, request))
            .await?;
        parse_interpretation(&response)
    }

    async fn complete(
        &self,
        prompt_text: &str,
        context: Option<&Value>,
    ) -> Result<String, ProviderError> {
        let response = self
            .chat(&Self::complete_body(&self.model, prompt_text, context))
            .await?;
        parse_text(&response)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::StatusCode;
    use reqwest::header::{HeaderMap, HeaderValue};

    #[test]
    fn tool_call_with_string_arguments() {
        let r = json!({"choices":[{"index":0,"finish_reason":"tool_calls","message":{
            "role":"assistant","content":null,"tool_calls":[{"id":"call_1","type":"function",
            "function":{"name":"get_history","arguments":"{\"contact\":\"Alice\",\"limit\":3}"}}]}}]});
        let i = parse_interpretation(&r).unwrap();
        assert_eq!(
            (i.action.as_str(), i.contact.as_deref(), i.limit),
            ("get_history", Some("Alice"), Some(3))
        );
    }

    #[test]
    fn content_json_fallback_and_bad_output() {
        let r = json!({"choices":[{"finish_reason":"stop","message":{"content":
            "{\"action\":\"list_contacts\"}"}}]});
        assert_eq!(parse_interpretation(&r).unwrap().action, "list_contacts");
        let cases = [
            json!({"choices":[]}),
            json!({}),
            json!({"choices":[{"finish_reason":"length","message":{"tool_calls":[{"function":
                {"name":"send_message","arguments":"{\"contact\":\"Jo"}}]}}]}),
            json!({"choices":[{"finish_reason":"stop","message":{"refusal":"I can't"}}]}),
            json!({"choices":[{"finish_reason":"content_filter","message":{"content":null}}]}),
            json!({"choices":[{"message":{"tool_calls":[{"function":{"name":"send_message","arguments":"not json"}}]}}]}),
        ];
        for c in cases {
            assert_eq!(
                parse_interpretation(&c).unwrap_err().kind,
                ProviderErrorKind::BadOutput,
                "{c}"
            );
        }
        let text = json!({"choices":[{"message":{"content":[{"type":"text","text":"Hi"}]}}]});
        assert_eq!(parse_text(&text).unwrap(), "Hi");
    }

    #[test]
    fn errors_are_classified() {
        let mut headers = HeaderMap::new();
        headers.insert("retry-after", HeaderValue::from_static("3"));
        let e = error_from(&Reply {
            status: StatusCode::TOO_MANY_REQUESTS,
            headers,
            body: br#"{"error":{"message":"slow down","type":"requests","code":"rate_limit_exceeded"}}"#.to_vec(),
        });
        assert_eq!(e.kind, ProviderErrorKind::RateLimited);
        assert_eq!(e.retry_after, Some(std::time::Duration::from_secs(3)));
        let e = error_from(&Reply {
            status: StatusCode::TOO_MANY_REQUESTS,
            headers: HeaderMap::new(),
            body: br#"{"error":{"message":"out of credit","code":"insufficient_quota"}}"#.to_vec(),
        });
        assert_eq!(e.kind, ProviderErrorKind::QuotaExhausted);
        let e = error_from(&Reply {
            status: StatusCode::UNAUTHORIZED,
            headers: HeaderMap::new(),
            body: br#"{"error":"model not loaded"}"#.to_vec(),
        });
        assert_eq!(e.kind, ProviderErrorKind::Rejected);
        assert!(e.message.contains("model not loaded"));
    }
}
