//! Turning what the hub sends into readable lines. Pure functions of the
//! event JSON, so every shape (and every malformed one) is unit tested.
//!
//! Every string that came from the wire goes through [`clean`], so another
//! client cannot inject terminal escape sequences or fake extra lines.
//! Media, picked replies and the rest of a message's content are shown by
//! [`super::content`].

use std::collections::HashMap;
use std::fmt::Write as _;

use serde_json::Value;

use super::content;
pub use super::content::clean;

/// Contacts shown by name before the list is cut short.
const MAX_NAMES: usize = 30;

/// The display names of the clients seen so far, so a message sent by
/// `client-3f2a…` shows as sent by `alice`; and the hub's HTTP origin, so
/// a media path shows as a URL that can be opened.
#[derive(Debug, Clone, Default)]
pub struct Names {
    names: HashMap<String, String>,
    origin: Option<String>,
}

impl Names {
    /// Names that make media paths absolute with `origin`
    /// (`http://host:port`, see [`content::http_origin`]).
    pub fn with_origin(origin: Option<String>) -> Names {
        Names {
            names: HashMap::new(),
            origin,
        }
    }

    /// Learns the names an event reveals: the `clients` of a
    /// `registration_confirmed`, a `client_joined`, or the event itself.
    pub fn learn(&mut self, event: &Value) {
        let mut add = |c: &Value| {
            if let (Some(id), Some(name)) = (str_field(c, "client_id"), str_field(c, "client_name"))
            {
                self.names.insert(id.to_string(), name.to_string());
            }
        };
        match str_field(event, "type") {
            Some("registration_confirmed") => {
                add(event);
                for c in event
                    .get("clients")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                {
                    add(c);
                }
            }
            Some("client_joined") => add(event),
            _ => {}
        }
    }

    /// The name of `client_id`, or the id itself when it is unknown.
    pub fn display<'a>(&'a self, client_id: &'a str) -> &'a str {
        self.names.get(client_id).map_or(client_id, String::as_str)
    }
}

/// Formats one text frame. Anything that is not a JSON object with a known
/// `type` is printed raw (cleaned), prefixed with `?`.
pub fn format_frame(text: &str, names: &Names) -> String {
    serde_json::from_str::<Value>(text)
        .ok()
        .and_then(|event| format_known(&event, names))
        .unwrap_or_else(|| raw(text))
}

/// Formats one event. Usually one line; a history adds one indented line
/// per message. `names` turns client ids into names where it can.
pub fn format_event(event: &Value, names: &Names) -> String {
    format_known(event, names).unwrap_or_else(|| raw(&event.to_string()))
}

/// Formats an event of a known type that has the fields it needs.
fn format_known(event: &Value, names: &Names) -> Option<String> {
    match str_field(event, "type") {
        Some("message_event") => message_line(event, names),
        Some("message_status") => status_line(event),
        Some("response") => response(event, names),
        Some("error") => error(event),
        Some("contact_list_broadcast") => contacts_line(event),
        Some("client_joined") => client_joined(event),
        Some("client_left") => client_left(event),
        Some("broadcast") => broadcast(event, names),
        Some("agent_changed") => Some(agent_changed(event)),
        Some("approval_request") => approval_request(event, names),
        Some("approval_resolved") => approval_resolved(event, names),
        Some("pong") => Some(format!("{}pong", rid_tag(event))),
        Some("registration_confirmed") => registered(event),
        Some("execute") => event
            .get("command")
            .map(|c| format!("{}execute {}", rid_tag(event), clean(&c.to_string()))),
        _ => None,
    }
}

/// The banner printed once registered: who we are and who else is here.
pub fn banner(url: &str, confirmed: &Value) -> String {
    let me = str_field(confirmed, "client_id").unwrap_or("?");
    let name = str_field(confirmed, "client_name").unwrap_or(me);
    let who = if name == me {
        clean(me)
    } else {
        format!("{} ({})", clean(name), clean(me))
    };
    let mut out = format!(
        "connected to {} as {who}, session {}, instance {}",
        clean(url),
        clean(str_field(confirmed, "session").unwrap_or("?")),
        clean(str_field(confirmed, "instance").unwrap_or("?")),
    );
    let others: Vec<String> = confirmed
        .get("clients")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter(|c| str_field(c, "client_id") != Some(me))
        .map(describe_client)
        .collect();
    if others.is_empty() {
        out.push_str("\nnobody else is connected");
    } else {
        let _ = write!(out, "\nalso connected: {}", others.join(", "));
    }
    out.push_str("\ntype a command (e.g. \"send john a message saying hello\") or /help");
    out
}

/// The `request_id` of an event as a string (the hub echoes what it got,
/// a string or a number).
pub fn request_id(event: &Value) -> Option<String> {
    match event.get("request_id")? {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

fn raw(text: &str) -> String {
    format!("? {}", clean(text))
}

pub fn str_field<'a>(v: &'a Value, key: &str) -> Option<&'a str> {
    v.get(key).and_then(Value::as_str)
}

fn rid_tag(event: &Value) -> String {
    match request_id(event) {
        Some(id) => format!("[#{}] ", clean(&id)),
        None => String::new(),
    }
}

/// `⏸ #3 mcp-app wants to send John: hello — /approve 3 or /reject 3`.
fn approval_request(event: &Value, names: &Names) -> Option<String> {
    let id = event.get("id")?.as_u64()?;
    let contact = str_field(event, "contact")?;
    let text = str_field(event, "text")?;
    let by = str_field(event, "requested_by").unwrap_or("?");
    let via = match str_field(event, "via") {
        Some("ai") => " (AI)",
        _ => " (MCP)",
    };
    Some(format!(
        "⏸ #{id} {}{via} wants to send {}: {} — /approve {id} or /reject {id}",
        clean(names.display(by)),
        clean(contact),
        clean(text)
    ))
}

/// `✔ #3 approved by t1` / `✘ #3 rejected by t1: reason` / `✘ #3 expired`.
fn approval_resolved(event: &Value, names: &Names) -> Option<String> {
    let id = event.get("id")?.as_u64()?;
    let decision = str_field(event, "decision")?;
    let by = str_field(event, "decided_by").unwrap_or("?");
    let mut line = match decision {
        "approved" => format!("✔ #{id} approved by {}", clean(names.display(by))),
        "expired" => format!("✘ #{id} expired (nobody approved it in time)"),
        _ => format!("✘ #{id} rejected by {}", clean(names.display(by))),
    };
    if let Some(reason) = str_field(event, "reason") {
        let _ = write!(line, ": {}", clean(reason));
    }
    if let Some(result) = event.get("result")
        && result.get("success").and_then(Value::as_bool) == Some(false)
    {
        let why = str_field(result, "error").unwrap_or("unknown error");
        let _ = write!(line, " — the send failed: {}", clean(why));
    }
    Some(line)
}

/// `→ John: hello (by t1)` / `← John: hi`; `None` if it lacks the essentials.
/// Offered options follow on indented lines.
fn message_line(entry: &Value, names: &Names) -> Option<String> {
    let contact = str_field(entry, "contact")?;
    let message = str_field(entry, "message")?;
    let by = str_field(entry, "by").filter(|b| !b.is_empty());
    let shown = content::show(entry, message, names.origin.as_deref());
    let mut line = match str_field(entry, "direction") {
        Some("outgoing") => {
            let mut line = format!("→ {}: {}", clean(contact), shown.body);
            if let Some(by) = by {
                let _ = write!(line, " (by {})", clean(names.display(by)));
            }
            // A history entry carries its latest delivery status.
            if let Some(status) = str_field(entry, "status") {
                let reason = entry
                    .get("status_error")
                    .and_then(|e| str_field(e, "message"));
                let _ = write!(line, " {}", status_mark(status, reason));
            }
            line
        }
        Some("incoming") => {
            let mut line = format!("← {}: {}", clean(contact), shown.body);
            if let Some(by) = by.filter(|b| *b != contact) {
                let _ = write!(line, " (from {})", clean(by));
            }
            line
        }
        _ => return None,
    };
    for below in shown.below {
        let _ = write!(line, "\n    {below}");
    }
    Some(line)
}

/// ✓ sent, ✓✓ delivered, ✓✓ read, ✗ failed: reason.
fn status_mark(status: &str, reason: Option<&str>) -> String {
    match status {
        "sent" => "✓ sent".to_string(),
        "delivered" => "✓✓ delivered".to_string(),
        "read" => "✓✓ read".to_string(),
        "failed" => format!("✗ failed: {}", clean(reason.unwrap_or("unknown reason"))),
        other => clean(other),
    }
}

/// A `message_status` event: which message, and its new status.
fn status_line(event: &Value) -> Option<String> {
    let status = str_field(event, "status")?;
    let id = str_field(event, "message_id")?;
    let reason = event.get("error").and_then(|e| str_field(e, "message"));
    let whose = match str_field(event, "contact") {
        Some(c) => format!("to {}", clean(c)),
        None => clean(id),
    };
    Some(format!(
        "  {} (message {whose})",
        status_mark(status, reason)
    ))
}

fn contact_names(contacts: &[Value]) -> Vec<String> {
    contacts
        .iter()
        .map(|c| match c {
            Value::String(name) => clean(name),
            other => clean(str_field(other, "name").unwrap_or("?")),
        })
        .collect()
}

/// `contacts: John, Jane (2)` from anything with a `contacts` array.
fn contacts_line(v: &Value) -> Option<String> {
    let contacts = v.get("contacts")?.as_array()?;
    let total = v
        .get("total_count")
        .and_then(Value::as_u64)
        .unwrap_or(contacts.len() as u64);
    let names = contact_names(contacts);
    if names.is_empty() {
        return Some(format!("contacts: none ({total})"));
    }
    let mut line = format!(
        "contacts: {}",
        names
            .iter()
            .take(MAX_NAMES)
            .cloned()
            .collect::<Vec<_>>()
            .join(", ")
    );
    if names.len() > MAX_NAMES {
        line.push_str(", …");
    }
    let _ = write!(line, " ({total})");
    Some(line)
}

/// `alice (a1, instance x, agent)` as in the banner.
fn describe_client(c: &Value) -> String {
    let (name, details) = client_parts(c);
    match details {
        Some(d) => format!("{name} ({d})"),
        None => name,
    }
}

/// A client's display name, and its id (if the name differs), instance and
/// agent role.
fn client_parts(c: &Value) -> (String, Option<String>) {
    let id = str_field(c, "client_id").unwrap_or("?");
    let name = str_field(c, "client_name").unwrap_or(id);
    let mut details = Vec::new();
    if name != id {
        details.push(clean(id));
    }
    if let Some(instance) = str_field(c, "instance") {
        details.push(format!("instance {}", clean(instance)));
    }
    let is_agent = c
        .get("capabilities")
        .and_then(Value::as_array)
        .is_some_and(|caps| caps.iter().any(|x| x.as_str() == Some("whatsapp")));
    if is_agent {
        details.push("agent".to_string());
    }
    let details = (!details.is_empty()).then(|| details.join(", "));
    (clean(name), details)
}

/// `+ alice joined (instance x)`.
fn client_joined(event: &Value) -> Option<String> {
    str_field(event, "client_id")?;
    let (name, details) = client_parts(event);
    Some(match details {
        Some(d) => format!("+ {name} joined ({d})"),
        None => format!("+ {name} joined"),
    })
}

fn client_left(event: &Value) -> Option<String> {
    let id = str_field(event, "client_id")?;
    let name = str_field(event, "client_name").unwrap_or(id);
    Some(format!("- {} left", clean(name)))
}

fn broadcast(event: &Value, names: &Names) -> Option<String> {
    let from = str_field(event, "from")?;
    let payload = event.get("payload")?;
    let text = match payload {
        Value::String(s) => clean(s),
        other => match str_field(other, "text").or_else(|| str_field(other, "message")) {
            Some(t) => clean(t),
            None => clean(&other.to_string()),
        },
    };
    Some(format!(
        "broadcast from {}: {text}",
        clean(names.display(from))
    ))
}

fn agent_changed(event: &Value) -> String {
    match str_field(event, "client_id") {
        Some(id) => match str_field(event, "instance") {
            Some(instance) => format!(
                "agent: {} (instance {}) now executes commands",
                clean(id),
                clean(instance)
            ),
            None => format!("agent: {} now executes commands", clean(id)),
        },
        None => "agent: none; the hub's connector executes commands".to_string(),
    }
}

fn registered(event: &Value) -> Option<String> {
    let id = str_field(event, "client_id")?;
    Some(format!(
        "{}registered as {} in session {}",
        rid_tag(event),
        clean(id),
        clean(str_field(event, "session").unwrap_or("?"))
    ))
}

fn error(event: &Value) -> Option<String> {
    let code = str_field(event, "code").unwrap_or("unknown");
    let message = str_field(event, "message")?;
    Some(format!(
        "{}error [{}]: {}",
        rid_tag(event),
        clean(code),
        clean(message)
    ))
}

fn response(event: &Value, names: &Names) -> Option<String> {
    let response_type = str_field(event, "response_type")?;
    let content = event.get("content")?;
    let body = match response_type {
        "whatsapp_command_result" => command_result(content, names),
        "whatsapp_ai_command_result" => ai_result(content, names),
        "ai_response" => match content.get("text") {
            Some(Value::String(text)) => format!("ai: {}", clean(text)),
            Some(other) => format!("ai: {}", clean(&other.to_string())),
            None => format!("ai: {}", clean(&content.to_string())),
        },
        "broadcast_sent" => "broadcast sent".to_string(),
        "approvals" => match content.get("approvals").and_then(Value::as_array) {
            Some(list) if list.is_empty() => "no sends wait for approval".to_string(),
            Some(list) => {
                let lines: Vec<String> = list
                    .iter()
                    .filter_map(|a| approval_request(a, names))
                    .collect();
                format!("waiting for approval:\n{}", lines.join("\n"))
            }
            None => clean(&content.to_string()),
        },
        // The approval_resolved event says the rest.
        "approval_decided" => match (content.get("id"), str_field(content, "decision")) {
            (Some(id), Some(decision)) => format!("#{id} {}", clean(decision)),
            _ => clean(&content.to_string()),
        },
        other => format!("{}: {}", clean(other), clean(&content.to_string())),
    };
    Some(format!("{}{body}", rid_tag(event)))
}

/// `failed [code]: message (candidates: A, B)`.
pub(super) fn failure(content: &Value) -> String {
    let mut line = String::from("failed");
    if let Some(code) = str_field(content, "code") {
        let _ = write!(line, " [{}]", clean(code));
    }
    let message = str_field(content, "error")
        .or_else(|| str_field(content, "message"))
        .unwrap_or("no reason given");
    let _ = write!(line, ": {}", clean(message));
    if let Some(candidates) = content.get("candidates").and_then(Value::as_array) {
        let names = contact_names(candidates);
        if !names.is_empty() {
            let _ = write!(line, " (candidates: {})", names.join(", "));
        }
    }
    line
}

/// Summarizes a `whatsapp_command_result` content (also the `result` of an
/// AI command).
fn command_result(content: &Value, names: &Names) -> String {
    if content.get("success").and_then(Value::as_bool) != Some(true) {
        return failure(content);
    }
    if let Some(messages) = content.get("messages").and_then(Value::as_array) {
        let contact = clean(str_field(content, "contact").unwrap_or("?"));
        if messages.is_empty() {
            return format!("ok: no messages with {contact}");
        }
        let mut out = format!("ok: history with {contact} ({}):", messages.len());
        for m in messages {
            let line = message_line(m, names).unwrap_or_else(|| raw(&m.to_string()));
            // An entry's own option lines go one level deeper.
            let _ = write!(out, "\n    {}", line.replace('\n', "\n    "));
        }
        return out;
    }
    if let Some(templates) = content.get("templates").and_then(Value::as_array) {
        return templates_table(templates);
    }
    if let Some(line) = contacts_line(content) {
        return format!("ok: {line}");
    }
    if let (Some(contact), Some(message)) =
        (str_field(content, "contact"), str_field(content, "message"))
    {
        return format!("ok: sent to {}: {}", clean(contact), clean(message));
    }
    format!("ok: {}", clean(&content.to_string()))
}

/// `list_templates`: one row per template, columns aligned.
fn templates_table(templates: &[Value]) -> String {
    if templates.is_empty() {
        return "ok: no templates".to_string();
    }
    let cell = |t: &Value, key: &str| match t.get(key) {
        Some(Value::String(s)) => clean(s),
        Some(Value::Null) | None => "-".to_string(),
        Some(other) => clean(&other.to_string()),
    };
    const COLUMNS: [&str; 5] = ["name", "language", "status", "category", "parameters"];
    let mut rows = vec![COLUMNS.map(str::to_string).to_vec()];
    rows.extend(
        templates
            .iter()
            .map(|t| COLUMNS.iter().map(|c| cell(t, c)).collect::<Vec<_>>()),
    );
    let widths: Vec<usize> = (0..COLUMNS.len())
        .map(|i| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0))
        .collect();
    let noun = if templates.len() == 1 {
        "template"
    } else {
        "templates"
    };
    let mut out = format!("ok: {} {noun}:", templates.len());
    for row in rows {
        let mut line = String::new();
        for (i, (text, width)) in row.iter().zip(&widths).enumerate() {
            if i + 1 == COLUMNS.len() {
                line.push_str(text);
            } else {
                let pad = width - text.chars().count();
                let _ = write!(line, "{text}{}  ", " ".repeat(pad));
            }
        }
        let _ = write!(out, "\n    {}", line.trim_end());
    }
    out
}

/// Summarizes a `whatsapp_ai_command_result` content: what the AI
/// understood and how executing it went. Without a `result` the
/// interpretation was unusable and only the failure is shown.
fn ai_result(content: &Value, names: &Names) -> String {
    let mut line = String::from("ai");
    if let Some(provider) = str_field(content, "provider") {
        let _ = write!(line, " ({})", clean(provider));
    }
    let Some(result) = content.get("result") else {
        return format!("{line}: {}", failure(content));
    };
    if let Some(understood) = content.get("interpretation").and_then(interpretation) {
        let _ = write!(line, " understood {understood}");
    }
    format!("{line}: {}", command_result(result, names))
}

/// `send to John "hi"`, `list_contacts`, `get_history of John`.
fn interpretation(i: &Value) -> Option<String> {
    let action = str_field(i, "action")?;
    let mut out = clean(action);
    if let Some(contact) = str_field(i, "contact") {
        let _ = write!(out, " {}", clean(contact));
    }
    if let Some(message) = str_field(i, "message") {
        let _ = write!(out, " \"{}\"", clean(message));
    }
    Some(out)
}

#[cfg(test)]
#[path = "format_tests.rs"]
mod tests;
