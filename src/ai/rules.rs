//! The offline, deterministic provider: a handful of patterns for the
//! common phrasings. Contact names are passed through as typed; `validate`
//! resolves them fuzzily against the session's contacts.

use std::sync::LazyLock;

use async_trait::async_trait;
use regex::Regex;
use serde_json::Value;

use super::{AiProvider, InterpretRequest, Interpretation, ProviderError};

pub struct RulesProvider;

static LIST: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(
        r"(?i)^(?:(?:please\s+)?(?:list|show|get|display|view|see)(?:\s+me)?(?:\s+all)?(?:\s+(?:my|the))?\s+contacts?(?:\s+list)?|contacts?(?:\s+list)?|who\s+are\s+my\s+contacts)[.!?]?$",
    )
    .expect("valid regex")
});

static HISTORY: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(
        r"(?i)^(?:(?:show|read|get|display|view|see|open)(?:\s+me)?(?:\s+(?:the|my|our))?(?:\s+last\s+(?P<n>\d+))?\s+(?:messages?|history|conversation|chat|chats)(?:\s+history)?|history)\s+(?:with|for|from|of|to)?\s*(?P<contact>.+?)[.!?]?$",
    )
    .expect("valid regex")
});

static REPLY: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(
        r"(?i)^(?:reply|respond|answer)(?:\s+to\s+(?:the\s+last\s+(?:contact|person|message|one)|them|him|her|last\s+contact))?(?:\s*(?:saying|with|that|:|,))?\s+(?P<msg>.+)$",
    )
    .expect("valid regex")
});

static SEND_SEPARATED: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(
        r"(?i)^(?:please\s+)?(?:send|tell|message|text|msg|whatsapp|write)\s+(?:(?:a|the)\s+(?:message|text|msg|note)\s+)?(?:to\s+)?(?P<contact>.+?)(?:\s+(?:a|the)\s+(?:message|text|msg|note))?\s*(?:\bsaying\b|\bthat says\b|\bthat\b|\bto say\b|:|,)\s*(?P<msg>.+)$",
    )
    .expect("valid regex")
});

static SEND_TO_SUFFIX: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(
        r"(?i)^(?:please\s+)?(?:send|write)\s+(?P<msg>.+?)\s+to\s+(?P<contact>\S+(?:\s+\S+)?)$",
    )
    .expect("valid regex")
});

static SEND_PLAIN: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(
        r"(?i)^(?:please\s+)?(?:send|tell|message|text|msg|whatsapp)\s+(?:to\s+)?(?P<rest>.+)$",
    )
    .expect("valid regex")
});

fn clean_message(msg: &str) -> String {
    let m = msg.trim();
    let quoted = ['"', '\'', '“', '”', '‘', '’'];
    m.trim_start_matches(quoted)
        .trim_end_matches(quoted)
        .trim()
        .to_string()
}

fn send(contact: &str, message: &str) -> Interpretation {
    Interpretation {
        action: "send".into(),
        contact: Some(contact.trim().to_string()),
        message: Some(clean_message(message)),
        ..Default::default()
    }
}

/// Splits "john smith hello there" into a known contact and the rest,
/// preferring the longest contact name; else the first word is the contact.
fn split_contact<'a>(rest: &'a str, contacts: &[String]) -> Option<(String, &'a str)> {
    let lower = rest.to_lowercase();
    let mut names: Vec<&String> = contacts.iter().collect();
    names.sort_by_key(|n| std::cmp::Reverse(n.len()));
    for name in names {
        let n = name.to_lowercase();
        if lower.starts_with(&n)
            && lower[n.len()..].starts_with(' ')
            && rest.is_char_boundary(n.len())
        {
            return Some((name.clone(), rest[n.len()..].trim_start()));
        }
    }
    let (first, tail) = rest.split_once(char::is_whitespace)?;
    Some((first.to_string(), tail.trim_start()))
}

pub fn interpret(request: &InterpretRequest) -> Interpretation {
    let text = request.command.trim();
    if LIST.is_match(text) {
        return Interpretation {
            action: "list_contacts".into(),
            ..Default::default()
        };
    }
    if let Some(c) = HISTORY.captures(text) {
        return Interpretation {
            action: "get_history".into(),
            contact: Some(c["contact"].trim().to_string()),
            limit: c.name("n").and_then(|n| n.as_str().parse().ok()),
            ..Default::default()
        };
    }
    if let Some(c) = REPLY.captures(text) {
        return match &request.last_contact {
            Some(last) => send(last, &c["msg"]),
            None => Interpretation {
                action: "unknown".into(),
                reason: Some("there is no last contact to reply to".into()),
                ..Default::default()
            },
        };
    }
    if let Some(c) = SEND_SEPARATED.captures(text) {
        return send(&c["contact"], &c["msg"]);
    }
    if let Some(c) = SEND_TO_SUFFIX.captures(text) {
        return send(&c["contact"], &c["msg"]);
    }
    if let Some(c) = SEND_PLAIN.captures(text)
        && let Some((contact, msg)) = split_contact(&c["rest"], &request.contacts)
        && !msg.is_empty()
    {
        return send(&contact, msg);
    }
    Interpretation {
        action: "unknown".into(),
        reason: Some(format!(
            "could not understand `{text}`; try \"send John a message saying hello\", \"reply ok\", \"show history with John\" or \"list contacts\""
        )),
        ..Default::default()
    }
}

#[async_trait]
impl AiProvider for RulesProvider {
    fn name(&self) -> &'static str {
        "rules"
    }

    fn is_remote(&self) -> bool {
        false
    }

    async fn interpret(&self, request: &InterpretRequest) -> Result<Interpretation, ProviderError> {
        Ok(interpret(request))
    }

    async fn complete(
        &self,
        prompt: &str,
        _context: Option<&Value>,
    ) -> Result<String, ProviderError> {
        let request = InterpretRequest {
            command: prompt.to_string(),
            contacts: Vec::new(),
            last_contact: None,
        };
        let i = interpret(&request);
        Ok(match i.action.as_str() {
            "send" => format!(
                "That reads as: send {} the message \"{}\".",
                i.contact.unwrap_or_default(),
                i.message.unwrap_or_default()
            ),
            "list_contacts" => "That reads as: list the contacts.".to_string(),
            "get_history" => format!(
                "That reads as: show the conversation with {}.",
                i.contact.unwrap_or_default()
            ),
            _ => "I am the offline rules engine. I understand: \"send <contact> a message saying <text>\", \"tell <contact> that <text>\", \"reply <text>\", \"show history with <contact>\" and \"list contacts\". Configure AI_PROVIDER=gemini or openai for free-form answers.".to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(cmd: &str) -> Interpretation {
        interpret(&InterpretRequest {
            command: cmd.into(),
            contacts: vec!["John".into(), "Mary Ann".into(), "Bob".into()],
            last_contact: Some("Bob".into()),
        })
    }

    fn assert_send(cmd: &str, contact: &str, message: &str) {
        let i = run(cmd);
        assert_eq!(i.action, "send", "{cmd}: {i:?}");
        assert_eq!(i.contact.as_deref(), Some(contact), "{cmd}");
        assert_eq!(i.message.as_deref(), Some(message), "{cmd}");
    }

    #[test]
    fn send_phrasings() {
        assert_send("send john a message saying hello", "john", "hello");
        assert_send(
            "Send a message to John saying Hello there!",
            "John",
            "Hello there!",
        );
        assert_send(
            "tell john that I'm running late",
            "john",
            "I'm running late",
        );
        assert_send("message bob: see you at 5", "bob", "see you at 5");
        assert_send("text John \"call me\"", "John", "call me");
        assert_send("send hello to john", "john", "hello");
        assert_send("tell mary ann hi there", "Mary Ann", "hi there");
        assert_send("TELL JOHN HELLO", "John", "HELLO");
    }

    #[test]
    fn reply_list_history() {
        assert_send("reply sounds good", "Bob", "sounds good");
        assert_send("reply to the last contact saying ok", "Bob", "ok");
        assert_eq!(run("list contacts").action, "list_contacts");
        assert_eq!(run("Show me my contacts").action, "list_contacts");
        let h = run("show history with John");
        assert_eq!(
            (h.action.as_str(), h.contact.as_deref()),
            ("get_history", Some("John"))
        );
        let h = run("read the last 5 messages from bob");
        assert_eq!(h.limit, Some(5));
        assert_eq!(h.contact.as_deref(), Some("bob"));
    }

    #[test]
    fn nonsense_is_unknown() {
        let i = run("what's the weather like");
        assert_eq!(i.action, "unknown");
        assert!(i.reason.is_some());
    }
}
