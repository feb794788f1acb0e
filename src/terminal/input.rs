//! Turning one typed line into what the terminal does with it: a request to
//! the hub, a local action, or a local error. Pure, so it is unit tested.

use std::path::PathBuf;

use serde_json::{Value, json};

pub const HELP: &str = "\
commands:
  <text>                      natural-language command, e.g. \"send john a message saying hello\"
  /send <contact> <message>   send a message (quote a contact with spaces: /send \"John Smith\" hi)
  /send-file <contact> <path> [caption]
                              upload a file and send it: up to 100 MB of .jpg .png, .webp (sticker),
                              .aac .amr .mp3 .m4a .ogg, .mp4 .3gp, .txt .pdf .doc(x) .xls(x) .ppt(x)
                              (quote a path with spaces)
  /buttons <contact> <text> | <option> | <option> | <option>
                              send a text with up to 3 reply buttons
  /read <contact>             mark the contact's latest message read
  /templates                  list the account's message templates
  /contacts                   list the account's contacts
  /history <contact> [N]      show the last N messages with a contact (default 20)
  /broadcast <text>           send a text to every other client in the session
  /approvals                  list the sends waiting for approval (APPROVAL_REQUIRED)
  /approve N                  approve held send N
  /reject N [reason]          reject held send N
  /ping                       measure the round trip to the hub
  /help                       show this help
  /quit                       leave (also: end of input, Ctrl-D)";

/// What one input line asks for.
#[derive(Debug, Clone, PartialEq)]
pub enum Input {
    /// Blank line: nothing to do.
    Nothing,
    /// Goes to the hub; `kind` names it in the transcript and the body is
    /// the message without its `request_id`.
    Request {
        kind: &'static str,
        body: Value,
    },
    /// `/send-file`: a local file to upload, then send.
    SendFile {
        contact: String,
        path: PathBuf,
        caption: Option<String>,
    },
    Help,
    Quit,
    /// A line the terminal cannot use; printed locally, nothing is sent.
    Invalid(String),
}

/// Reply buttons WhatsApp shows at most, and the longest title it takes.
const MAX_BUTTONS: usize = 3;
const MAX_BUTTON_TITLE: usize = 20;

/// Parses one line of input.
pub fn parse_line(line: &str) -> Input {
    let line = line.trim();
    if line.is_empty() {
        return Input::Nothing;
    }
    let Some(rest) = line.strip_prefix('/') else {
        return Input::Request {
            kind: "whatsapp_ai_command",
            body: json!({"type": "whatsapp_ai_command", "command": line}),
        };
    };
    let (name, args) = match rest.split_once(char::is_whitespace) {
        Some((name, args)) => (name, args.trim()),
        None => (rest, ""),
    };
    match name.to_ascii_lowercase().as_str() {
        "send" => parse_send(args),
        "send-file" => parse_send_file(args),
        "buttons" => parse_buttons(args),
        "read" => match unquote(args) {
            "" => Input::Invalid("usage: /read <contact>".into()),
            contact => {
                whatsapp(json!({"action": "mark_read", "contact": contact, "typing": false}))
            }
        },
        "templates" => no_args(name, args, || whatsapp(json!({"action": "list_templates"}))),
        "contacts" => no_args(name, args, || whatsapp(json!({"action": "list_contacts"}))),
        "history" => parse_history(args),
        "broadcast" => {
            if args.is_empty() {
                Input::Invalid("usage: /broadcast <text>".into())
            } else {
                Input::Request {
                    kind: "broadcast",
                    body: json!({"type": "broadcast", "payload": {"text": args}}),
                }
            }
        }
        "approvals" => no_args(name, args, || Input::Request {
            kind: "list_approvals",
            body: json!({"type": "list_approvals"}),
        }),
        "approve" => parse_decision("approve", args),
        "reject" => parse_decision("reject", args),
        "ping" => no_args(name, args, || Input::Request {
            kind: "ping",
            body: json!({"type": "ping"}),
        }),
        "help" | "h" | "?" => Input::Help,
        "quit" | "exit" | "q" => Input::Quit,
        "" => Input::Invalid("empty command; type /help for the list".into()),
        _ => Input::Invalid(format!("unknown command /{name}; type /help for the list")),
    }
}

fn whatsapp(command: Value) -> Input {
    Input::Request {
        kind: "whatsapp_command",
        body: json!({"type": "whatsapp_command", "command": command}),
    }
}

/// `/approve N` and `/reject N [reason]`: N is the held send's number in
/// its `approval_request`.
fn parse_decision(kind: &'static str, args: &str) -> Input {
    let (number, reason) = match args.split_once(char::is_whitespace) {
        Some((n, reason)) => (n, Some(reason.trim()).filter(|r| !r.is_empty())),
        None => (args, None),
    };
    let Ok(id) = number.parse::<u64>() else {
        return Input::Invalid(if kind == "approve" {
            "usage: /approve N (N: the number of the held send)".into()
        } else {
            "usage: /reject N [reason] (N: the number of the held send)".into()
        });
    };
    if kind == "approve" && reason.is_some() {
        return Input::Invalid("usage: /approve N".into());
    }
    let mut body = json!({"type": kind, "id": id});
    if let Some(reason) = reason {
        body["reason"] = json!(reason);
    }
    Input::Request { kind, body }
}

fn no_args(name: &str, args: &str, ok: impl FnOnce() -> Input) -> Input {
    if args.is_empty() {
        ok()
    } else {
        Input::Invalid(format!("/{name} takes no arguments"))
    }
}

fn parse_send(args: &str) -> Input {
    const USAGE: &str = "usage: /send <contact> <message>";
    let Some((contact, message)) = split_first_arg(args) else {
        return Input::Invalid(USAGE.into());
    };
    let message = message.trim();
    if contact.trim().is_empty() || message.is_empty() {
        return Input::Invalid(USAGE.into());
    }
    whatsapp(json!({"action": "send", "contact": contact, "message": message}))
}

/// `/send-file John ~/report.pdf Q3 numbers`: contact and path are one word
/// or quoted; the rest is the caption.
fn parse_send_file(args: &str) -> Input {
    const USAGE: &str = "usage: /send-file <contact> <path> [caption]";
    let (contact, rest) = split_arg(args);
    let (path, caption) = split_arg(rest);
    let (Some(contact), Some(path)) = (contact, path) else {
        return Input::Invalid(USAGE.into());
    };
    if contact.trim().is_empty() || path.is_empty() {
        return Input::Invalid(USAGE.into());
    }
    let caption = caption.trim();
    Input::SendFile {
        contact: contact.to_string(),
        path: expand_home(path),
        caption: (!caption.is_empty()).then(|| caption.to_string()),
    }
}

/// `~/x` is under `$HOME`, as in a shell.
fn expand_home(path: &str) -> PathBuf {
    match (path.strip_prefix("~/"), std::env::var_os("HOME")) {
        (Some(rest), Some(home)) => PathBuf::from(home).join(rest),
        _ => PathBuf::from(path),
    }
}

/// `/buttons John Coming tonight? | Yes | No | Maybe`: a `send` whose
/// options are reply buttons, their ids made from their titles (`yes`).
fn parse_buttons(args: &str) -> Input {
    const USAGE: &str = "usage: /buttons <contact> <text> | <option> | <option> | <option>";
    let (Some(contact), rest) = split_arg(args) else {
        return Input::Invalid(USAGE.into());
    };
    let mut parts = rest.split('|').map(str::trim);
    let text = parts.next().unwrap_or_default();
    let titles: Vec<&str> = parts.collect();
    if contact.trim().is_empty() || text.is_empty() || titles.is_empty() {
        return Input::Invalid(USAGE.into());
    }
    if titles.len() > MAX_BUTTONS {
        return Input::Invalid(format!("at most {MAX_BUTTONS} buttons; {USAGE}"));
    }
    let mut ids: Vec<String> = Vec::new();
    for (i, title) in titles.iter().enumerate() {
        if title.is_empty() {
            return Input::Invalid(format!("an empty option; {USAGE}"));
        }
        if title.chars().count() > MAX_BUTTON_TITLE {
            return Input::Invalid(format!(
                "\"{title}\" is too long for a button (at most {MAX_BUTTON_TITLE} characters)"
            ));
        }
        if titles[..i].contains(title) {
            return Input::Invalid(format!("\"{title}\" is offered twice"));
        }
        ids.push(button_id(title, i + 1, &ids));
    }
    let buttons: Vec<Value> = titles
        .iter()
        .zip(&ids)
        .map(|(title, id)| json!({"id": id, "title": title}))
        .collect();
    whatsapp(
        json!({"action": "send", "contact": contact, "message": text,
        "interactive": {"type": "buttons", "buttons": buttons}}),
    )
}

/// A button's id from its title: lowercase letters and digits joined by
/// `_` (`Not now!` → `not_now`), `option_N` when nothing is left (an emoji),
/// suffixed to stay unique.
fn button_id(title: &str, n: usize, taken: &[String]) -> String {
    let mut id = String::new();
    for word in title
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
    {
        if !id.is_empty() {
            id.push('_');
        }
        id.extend(word.chars().flat_map(char::to_lowercase));
    }
    if id.is_empty() {
        id = format!("option_{n}");
    }
    let mut unique = id.clone();
    let mut k = 2;
    while taken.contains(&unique) {
        unique = format!("{id}_{k}");
        k += 1;
    }
    unique
}

/// `/history John Smith 5`: an optional trailing number is the limit, the
/// rest is the contact (quotes are allowed but not needed).
fn parse_history(args: &str) -> Input {
    const USAGE: &str = "usage: /history <contact> [N]";
    let (contact, limit) = match args.rsplit_once(char::is_whitespace) {
        Some((head, last)) if last.chars().all(|c| c.is_ascii_digit()) => {
            match last.parse::<usize>() {
                Ok(n) if n > 0 => (head.trim(), Some(n)),
                _ => return Input::Invalid(format!("{USAGE} (N must be a positive number)")),
            }
        }
        _ => (args, None),
    };
    let contact = unquote(contact);
    if contact.trim().is_empty() {
        return Input::Invalid(USAGE.into());
    }
    let mut command = json!({"action": "get_history", "contact": contact});
    if let Some(n) = limit {
        command["limit"] = json!(n);
    }
    whatsapp(command)
}

/// Splits off the first argument: a `"quoted string"` or one word.
fn split_first_arg(args: &str) -> Option<(&str, &str)> {
    let args = args.trim_start();
    if let Some(quoted) = args.strip_prefix('"') {
        let end = quoted.find('"')?;
        Some((&quoted[..end], &quoted[end + 1..]))
    } else {
        args.split_once(char::is_whitespace)
    }
}

/// The first argument (a `"quoted string"` or one word) and the rest;
/// `None` for no argument or an unclosed quote.
fn split_arg(args: &str) -> (Option<&str>, &str) {
    let args = args.trim_start();
    if args.is_empty() {
        return (None, "");
    }
    match split_first_arg(args) {
        Some((first, rest)) => (Some(first), rest.trim_start()),
        None if args.starts_with('"') => (None, ""),
        None => (Some(args.trim_end()), ""),
    }
}

fn unquote(s: &str) -> &str {
    let s = s.trim();
    s.strip_prefix('"')
        .and_then(|inner| inner.strip_suffix('"'))
        .unwrap_or(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(input: Input) -> Value {
        match input {
            Input::Request { body, .. } => body,
            other => panic!("expected a request, got {other:?}"),
        }
    }

    #[test]
    fn plain_text_is_an_ai_command() {
        assert_eq!(
            body(parse_line("  send john a message saying hello \n")),
            json!({"type": "whatsapp_ai_command", "command": "send john a message saying hello"})
        );
        assert_eq!(parse_line("   "), Input::Nothing);
    }

    #[test]
    fn send_takes_a_word_or_a_quoted_contact() {
        assert_eq!(
            body(parse_line("/send John hi there")),
            json!({"type": "whatsapp_command",
                   "command": {"action": "send", "contact": "John", "message": "hi there"}})
        );
        assert_eq!(
            body(parse_line(r#"/send "John Smith"   see you"#))["command"],
            json!({"action": "send", "contact": "John Smith", "message": "see you"})
        );
        for bad in ["/send", "/send John", "/send John   ", r#"/send "John hi"#] {
            assert!(matches!(parse_line(bad), Input::Invalid(_)), "{bad}");
        }
    }

    #[test]
    fn history_with_optional_limit() {
        assert_eq!(
            body(parse_line("/history John"))["command"],
            json!({"action": "get_history", "contact": "John"})
        );
        assert_eq!(
            body(parse_line("/history John Smith 5"))["command"],
            json!({"action": "get_history", "contact": "John Smith", "limit": 5})
        );
        assert_eq!(
            body(parse_line(r#"/history "Room 101""#))["command"],
            json!({"action": "get_history", "contact": "Room 101"})
        );
        assert!(matches!(parse_line("/history"), Input::Invalid(_)));
        assert!(matches!(parse_line("/history John 0"), Input::Invalid(_)));
    }

    #[test]
    fn other_commands() {
        assert_eq!(
            body(parse_line("/contacts")),
            json!({"type": "whatsapp_command", "command": {"action": "list_contacts"}})
        );
        assert_eq!(
            body(parse_line("/broadcast lunch at 1?")),
            json!({"type": "broadcast", "payload": {"text": "lunch at 1?"}})
        );
        assert_eq!(body(parse_line("/PING")), json!({"type": "ping"}));
        assert_eq!(parse_line("/help"), Input::Help);
        for command in ["/send-file", "/buttons", "/read", "/templates"] {
            assert!(
                HELP.contains(&format!("\n  {command} ")),
                "{command} in HELP"
            );
        }
        assert_eq!(parse_line("/quit"), Input::Quit);
        assert_eq!(parse_line("/exit"), Input::Quit);
    }

    #[test]
    fn send_file_takes_a_path_and_an_optional_caption() {
        assert_eq!(
            parse_line("/send-file John /tmp/report.pdf"),
            Input::SendFile {
                contact: "John".into(),
                path: "/tmp/report.pdf".into(),
                caption: None
            }
        );
        assert_eq!(
            parse_line(r#"/send-file "John Smith" "/tmp/my photos/a.jpg"  at the beach "#),
            Input::SendFile {
                contact: "John Smith".into(),
                path: "/tmp/my photos/a.jpg".into(),
                caption: Some("at the beach".into())
            }
        );
        if let Some(home) = std::env::var_os("HOME") {
            assert_eq!(
                parse_line("/send-file John ~/a.png"),
                Input::SendFile {
                    contact: "John".into(),
                    path: PathBuf::from(home).join("a.png"),
                    caption: None
                }
            );
        }
        for bad in [
            "/send-file",
            "/send-file John",
            r#"/send-file John "/tmp/a.pdf"#,
            r#"/send-file "John a.pdf"#,
        ] {
            assert!(matches!(parse_line(bad), Input::Invalid(_)), "{bad}");
        }
    }

    #[test]
    fn buttons_get_ids_from_their_titles() {
        assert_eq!(
            body(parse_line(
                "/buttons John Coming tonight? | Yes | Not now! | 🤷"
            )),
            json!({"type": "whatsapp_command", "command": {"action": "send", "contact": "John",
                "message": "Coming tonight?", "interactive": {"type": "buttons", "buttons": [
                    {"id": "yes", "title": "Yes"},
                    {"id": "not_now", "title": "Not now!"},
                    {"id": "option_3", "title": "🤷"}]}}})
        );
        let ids: Vec<Value> = body(parse_line(r#"/buttons "Room 1" Pick | Ja! | ja | Élan"#))
            ["command"]["interactive"]["buttons"]
            .as_array()
            .unwrap()
            .iter()
            .map(|b| b["id"].clone())
            .collect();
        assert_eq!(ids, [json!("ja"), json!("ja_2"), json!("élan")]);
        for bad in [
            "/buttons",
            "/buttons John",
            "/buttons John hello",
            "/buttons John | Yes",
            "/buttons John hi | Yes | | No",
            "/buttons John hi | a | b | c | d",
            "/buttons John hi | Yes | Yes",
            "/buttons John hi | this title is far too long",
        ] {
            assert!(matches!(parse_line(bad), Input::Invalid(_)), "{bad}");
        }
    }

    #[test]
    fn read_and_templates() {
        assert_eq!(
            body(parse_line(r#"/read "John Smith""#)),
            json!({"type": "whatsapp_command",
                   "command": {"action": "mark_read", "contact": "John Smith", "typing": false}})
        );
        assert_eq!(
            body(parse_line("/templates")),
            json!({"type": "whatsapp_command", "command": {"action": "list_templates"}})
        );
        assert!(matches!(parse_line("/read"), Input::Invalid(_)));
        assert!(matches!(parse_line("/templates all"), Input::Invalid(_)));
    }

    #[test]
    fn approve_and_reject_name_a_held_send() {
        assert_eq!(
            body(parse_line("/approve 3")),
            json!({"type": "approve", "id": 3})
        );
        assert_eq!(
            body(parse_line("/reject 4 not to my boss")),
            json!({"type": "reject", "id": 4, "reason": "not to my boss"})
        );
        assert_eq!(
            body(parse_line("/reject 4")),
            json!({"type": "reject", "id": 4})
        );
        for bad in [
            "/approve",
            "/approve x",
            "/approve -1",
            "/approve 3 yes",
            "/reject",
        ] {
            assert!(matches!(parse_line(bad), Input::Invalid(_)), "{bad}");
        }
    }

    #[test]
    fn unknown_or_malformed_commands_stay_local() {
        for bad in ["/dance", "/", "/contacts now", "/ping pong", "/broadcast"] {
            match parse_line(bad) {
                Input::Invalid(msg) => assert!(!msg.is_empty()),
                other => panic!("{bad}: {other:?}"),
            }
        }
        match parse_line("/dance") {
            Input::Invalid(msg) => assert!(msg.contains("/dance"), "{msg}"),
            other => panic!("{other:?}"),
        }
    }
}
