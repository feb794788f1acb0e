//! Turning one typed line into what the terminal does with it: a request to
//! the hub, a local action, or a local error. Pure, so it is unit tested.

use serde_json::{Value, json};

pub const HELP: &str = "\
commands:
  <text>                      natural-language command, e.g. \"send john a message saying hello\"
  /send <contact> <message>   send a message (quote a contact with spaces: /send \"John Smith\" hi)
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
    Help,
    Quit,
    /// A line the terminal cannot use; printed locally, nothing is sent.
    Invalid(String),
}

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
        assert_eq!(parse_line("/quit"), Input::Quit);
        assert_eq!(parse_line("/exit"), Input::Quit);
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
