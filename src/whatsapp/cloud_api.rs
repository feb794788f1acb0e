//! The Cloud API connector: sends through Meta's Graph API
//! (`POST {base}/{version}/{phone_number_id}/messages`, bearer token) and
//! maps its error envelope to the hub's codes. Rate limits and transient
//! failures are retried with backoff (honouring `Retry-After`) within the
//! request deadline. The access token is never logged.
//!
//! Inbound messages and statuses arrive by webhook (`whatsapp::webhooks`).

use std::time::{Duration, Instant};

use async_trait::async_trait;
use backon::{BackoffBuilder, ExponentialBuilder};
use serde_json::{Value, json};

use super::{Template, WhatsAppConnector};
use crate::ai::http::retry_after_header;
use crate::config::whatsapp::{CloudApiSettings, NumberSettings};
use crate::protocol::{Contact, ErrorCode, HubError};

/// Graph error codes that mean "too fast, try again later".
const RATE_LIMIT_CODES: [i64; 4] = [4, 80007, 130429, 131056];
/// Graph error codes of a temporary upstream failure.
const TRANSIENT_CODES: [i64; 2] = [131000, 131016];
/// Re-engagement: free-form text outside the 24-hour window.
pub const OUTSIDE_WINDOW_CODE: i64 = 131047;
const RESPONSE_BODY_LIMIT: usize = 1024 * 1024;

pub struct CloudApiConnector {
    settings: CloudApiSettings,
    contacts: Vec<Contact>,
    http: reqwest::Client,
    /// Bound of one send, retries included.
    deadline: Duration,
}

/// What one attempt came to.
enum Attempt {
    Sent(String),
    /// Worth retrying; `retry_after` from the upstream, if it said.
    Retry {
        error: HubError,
        retry_after: Option<Duration>,
    },
    Fatal(HubError),
}

/// The message a client gets for 131047, sync or async.
pub fn outside_window_error(detail: &str) -> HubError {
    HubError::new(
        ErrorCode::OutsideConversationWindow,
        format!(
            "more than 24 hours since this contact last wrote: free-form text is refused outside the customer-service window; use a template (send_template){}",
            if detail.is_empty() {
                String::new()
            } else {
                format!(" ({detail})")
            }
        ),
    )
}

impl CloudApiConnector {
    pub fn new(settings: CloudApiSettings, contacts: Vec<Contact>, deadline: Duration) -> Self {
        CloudApiConnector {
            settings,
            contacts,
            http: crate::ai::http::client(),
            deadline,
        }
    }

    /// The number that backs `session`.
    fn number(&self, session: &str) -> Result<&NumberSettings, HubError> {
        self.settings.number_for_session(session).ok_or_else(|| {
            HubError::new(
                ErrorCode::ConnectorUnavailable,
                format!("no WhatsApp business number backs session `{session}` (WHATSAPP_NUMBERS)"),
            )
        })
    }

    /// `{base}/{version}/{path}`.
    fn url(&self, path: &str) -> String {
        format!(
            "{}/{}/{path}",
            self.settings.base_url, self.settings.api_version
        )
    }

    /// Posts `body`, retrying rate limits and transient failures until the
    /// deadline; the returned wamid is the message id.
    async fn post(&self, number: &NumberSettings, body: Value) -> Result<String, HubError> {
        let started = Instant::now();
        let mut backoff = ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(200))
            .with_max_delay(Duration::from_secs(5))
            .with_jitter()
            .without_max_times()
            .build();
        loop {
            let remaining = self.deadline.saturating_sub(started.elapsed());
            let (error, retry_after) = match self.attempt(number, &body, remaining).await {
                Attempt::Sent(id) => return Ok(id),
                Attempt::Fatal(e) => return Err(e),
                Attempt::Retry { error, retry_after } => (error, retry_after),
            };
            let pause = backoff.next().unwrap_or(Duration::from_secs(5));
            // The upstream said when: wait exactly that (never less).
            let pause = retry_after.unwrap_or(pause);
            let remaining = self.deadline.saturating_sub(started.elapsed());
            if pause >= remaining {
                tracing::warn!(code = %error.code, "cloud api: giving up, deadline reached");
                return Err(error);
            }
            tracing::info!(code = %error.code, pause_ms = pause.as_millis() as u64, "cloud api: retrying");
            tokio::time::sleep(pause).await;
        }
    }

    async fn attempt(&self, number: &NumberSettings, body: &Value, remaining: Duration) -> Attempt {
        if remaining.is_zero() {
            return Attempt::Fatal(HubError::new(
                ErrorCode::ConnectorUnavailable,
                "the Cloud API did not answer within the request deadline",
            ));
        }
        let sent = self
            .http
            .post(self.url(&format!("{}/messages", number.phone_number_id)))
            .bearer_auth(number.access_token.expose())
            .json(body)
            .timeout(remaining)
            .send()
            .await;
        let response = match sent {
            Ok(r) => r,
            Err(e) => {
                // reqwest errors carry the URL, never the headers.
                return Attempt::Retry {
                    error: HubError::new(
                        ErrorCode::ConnectorUnavailable,
                        format!("the Cloud API is unreachable: {e}"),
                    ),
                    retry_after: None,
                };
            }
        };
        let status = response.status();
        let retry_after = retry_after_header(response.headers());
        let bytes = match response.bytes().await {
            Ok(b) if b.len() <= RESPONSE_BODY_LIMIT => b,
            Ok(_) => {
                return Attempt::Fatal(HubError::new(
                    ErrorCode::ConnectorFailed,
                    "the Cloud API answered with an oversized body",
                ));
            }
            Err(e) => {
                return Attempt::Retry {
                    error: HubError::new(
                        ErrorCode::ConnectorUnavailable,
                        format!("the Cloud API connection broke: {e}"),
                    ),
                    retry_after: None,
                };
            }
        };
        let json: Option<Value> = serde_json::from_slice(&bytes).ok();
        if status.is_success() {
            let id = json
                .as_ref()
                .and_then(|v| v.pointer("/messages/0/id"))
                .and_then(Value::as_str)
                .filter(|id| !id.is_empty());
            return match id {
                Some(id) => Attempt::Sent(id.to_string()),
                None => Attempt::Fatal(HubError::new(
                    ErrorCode::ConnectorFailed,
                    "the Cloud API accepted the message but returned no message id",
                )),
            };
        }
        classify(status.as_u16(), json.as_ref(), retry_after)
    }
}

/// Maps a non-2xx answer to retry or a final error (Meta: branch on
/// `error.code`, then on the HTTP status).
fn classify(status: u16, body: Option<&Value>, retry_after: Option<Duration>) -> Attempt {
    let error = body.and_then(|b| b.get("error"));
    let code = error.and_then(|e| e.get("code")).and_then(Value::as_i64);
    let message = error
        .and_then(|e| e.get("message"))
        .and_then(Value::as_str)
        .unwrap_or("")
        .chars()
        .take(300)
        .collect::<String>();
    let detail = error
        .and_then(|e| e.pointer("/error_data/details"))
        .and_then(Value::as_str)
        .unwrap_or(message.as_str())
        .chars()
        .take(300)
        .collect::<String>();
    let described = match code {
        Some(c) => format!("Cloud API error {c}: {message}"),
        None => format!("Cloud API HTTP {status}"),
    };
    match code {
        Some(OUTSIDE_WINDOW_CODE) => Attempt::Fatal(outside_window_error(&detail)),
        Some(190) => Attempt::Fatal(HubError::new(ErrorCode::ConnectorAuthFailed, described)),
        Some(c) if RATE_LIMIT_CODES.contains(&c) => Attempt::Retry {
            error: HubError::new(ErrorCode::ConnectorRateLimited, described),
            retry_after,
        },
        Some(c) if TRANSIENT_CODES.contains(&c) => Attempt::Retry {
            error: HubError::new(ErrorCode::ConnectorUnavailable, described),
            retry_after,
        },
        _ if status == 401 => {
            Attempt::Fatal(HubError::new(ErrorCode::ConnectorAuthFailed, described))
        }
        _ if status == 429 => Attempt::Retry {
            error: HubError::new(ErrorCode::ConnectorRateLimited, described),
            retry_after,
        },
        _ if status >= 500 || status == 408 => Attempt::Retry {
            error: HubError::new(ErrorCode::ConnectorUnavailable, described),
            retry_after,
        },
        _ => Attempt::Fatal(HubError::new(ErrorCode::ConnectorFailed, described)),
    }
}

/// Graph wants digits only (`+1 555-0100` → `15550100`).
fn recipient(contact: &Contact) -> Result<String, HubError> {
    let digits: String = contact
        .phone
        .as_deref()
        .unwrap_or("")
        .chars()
        .filter(char::is_ascii_digit)
        .collect();
    if digits.is_empty() {
        return Err(HubError::new(
            ErrorCode::ConnectorFailed,
            format!("contact `{}` has no phone number to send to", contact.name),
        ));
    }
    Ok(digits)
}

#[async_trait]
impl WhatsAppConnector for CloudApiConnector {
    fn name(&self) -> &'static str {
        "cloud_api"
    }

    fn initial_contacts(&self) -> Vec<Contact> {
        self.contacts.clone()
    }

    async fn send(
        &self,
        session: &str,
        contact: &Contact,
        message: &str,
    ) -> Result<String, HubError> {
        let number = self.number(session)?;
        let body = json!({
            "messaging_product": "whatsapp",
            "recipient_type": "individual",
            "to": recipient(contact)?,
            "type": "text",
            "text": { "preview_url": false, "body": message },
        });
        self.post(number, body).await
    }

    async fn send_template(
        &self,
        session: &str,
        contact: &Contact,
        template: &Template,
    ) -> Result<String, HubError> {
        let number = self.number(session)?;
        let mut tpl = json!({
            "name": template.name,
            "language": { "code": template.language },
        });
        if let Some(components) = &template.components {
            tpl["components"] = components.clone();
        }
        let body = json!({
            "messaging_product": "whatsapp",
            "recipient_type": "individual",
            "to": recipient(contact)?,
            "type": "template",
            "template": tpl,
        });
        self.post(number, body).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code(a: Attempt) -> (ErrorCode, bool) {
        match a {
            Attempt::Sent(_) => panic!("sent"),
            Attempt::Retry { error, .. } => (error.code, true),
            Attempt::Fatal(error) => (error.code, false),
        }
    }

    #[test]
    fn error_table() {
        let env = |c: i64| json!({"error": {"code": c, "message": "m"}});
        assert_eq!(
            code(classify(400, Some(&env(131047)), None)),
            (ErrorCode::OutsideConversationWindow, false)
        );
        assert_eq!(
            code(classify(401, Some(&env(190)), None)),
            (ErrorCode::ConnectorAuthFailed, false)
        );
        assert_eq!(
            code(classify(401, None, None)),
            (ErrorCode::ConnectorAuthFailed, false)
        );
        for c in [130429, 131056] {
            assert_eq!(
                code(classify(400, Some(&env(c)), None)),
                (ErrorCode::ConnectorRateLimited, true)
            );
        }
        assert_eq!(
            code(classify(429, None, None)),
            (ErrorCode::ConnectorRateLimited, true)
        );
        assert_eq!(
            code(classify(503, None, None)),
            (ErrorCode::ConnectorUnavailable, true)
        );
        assert_eq!(
            code(classify(400, Some(&env(100)), None)),
            (ErrorCode::ConnectorFailed, false)
        );
    }

    #[test]
    fn recipients_are_digits() {
        let c = Contact {
            name: "A".into(),
            phone: Some("+1 555-0100".into()),
        };
        assert_eq!(recipient(&c).unwrap(), "15550100");
        let c = Contact {
            name: "A".into(),
            phone: None,
        };
        assert_eq!(recipient(&c).unwrap_err().code, ErrorCode::ConnectorFailed);
    }
}
