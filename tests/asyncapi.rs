//! The AsyncAPI 3.0 document of the WebSocket protocol (issue 24,
//! `GET /api/v1/asyncapi.json`): valid for the official AsyncAPI CLI
//! (`asyncapi validate`, tests/node/asyncapi-cli) and parser
//! (tests/node/asyncapi_check.mjs), both installed by scripts/test, one message
//! for every kind the parser accepts, every `whatsapp_command` action and
//! every event the hub emits (and nothing else), and real frames of an
//! in-process hub validate against their message's payload schema.

use crate::support;

use std::collections::BTreeSet;

use mcp_hub::protocol::{ClientMessage, ErrorCode, ServerEvent, parse_whatsapp_command};
use serde_json::{Value, json};
use support::*;

/// The served document, checked to be JSON with that content type.
async fn served(hub: &TestHub) -> Value {
    let r = reqwest::get(hub.http_url("/api/v1/asyncapi.json"))
        .await
        .expect("GET /api/v1/asyncapi.json");
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(
        r.headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok()),
        Some("application/json")
    );
    r.json().await.expect("JSON")
}

struct Checked {
    warnings: Vec<String>,
    /// (message id, valid, errors) per frame, in order.
    frames: Vec<(String, bool, Vec<String>)>,
}

/// Runs the AsyncAPI parser on `doc` and Ajv on `frames` (message id,
/// frame); panics when the parser refuses the document.
fn node_check(doc: &Value, frames: &[(String, Value)]) -> Checked {
    let dir = TempDir::new();
    let doc_file = dir.write("asyncapi.json", &doc.to_string());
    let frames: Vec<Value> = frames
        .iter()
        .map(|(message, frame)| json!({"message": message, "frame": frame}))
        .collect();
    let frames_file = dir.write("frames.json", &Value::Array(frames).to_string());
    let out = std::process::Command::new("node")
        .arg(repo_path("tests/node/asyncapi_check.mjs"))
        .arg(&doc_file)
        .arg(&frames_file)
        .output()
        .expect("node runs (scripts/test installs tests/node's packages)");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "the AsyncAPI parser refused the document:\n{stderr}{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let report: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("asyncapi_check.mjs printed no report ({e}):\n{stderr}"));
    let strings = |v: &Value| -> Vec<String> {
        v.as_array()
            .into_iter()
            .flatten()
            .map(|s| s.as_str().unwrap_or_default().to_string())
            .collect()
    };
    Checked {
        warnings: strings(&report["warnings"]),
        frames: report["frames"]
            .as_array()
            .expect("frames")
            .iter()
            .map(|f| {
                (
                    f["message"].as_str().unwrap_or_default().to_string(),
                    f["valid"] == true,
                    strings(&f["errors"]),
                )
            })
            .collect(),
    }
}

/// Runs the official AsyncAPI CLI's `asyncapi validate` (pinned in
/// tests/node/asyncapi-cli, installed by scripts/test) on `doc`, failing on
/// warnings as well as errors; returns whether it passed and what it printed.
fn asyncapi_cli_validate(doc: &Value) -> (bool, String) {
    let cli = repo_path("tests/node/asyncapi-cli/node_modules/.bin/asyncapi");
    assert!(
        cli.exists(),
        "{} is missing: cd tests/node/asyncapi-cli && npm ci (./scripts/test does it)",
        cli.display()
    );
    let dir = TempDir::new();
    let doc_file = dir.write("asyncapi.json", &doc.to_string());
    let out = std::process::Command::new(cli)
        .arg("validate")
        .arg(&doc_file)
        .args(["--fail-severity", "warn"])
        // No usage metrics sent or written to the home directory.
        .env("CI", "true")
        .env(
            "ASYNCAPI_METRICS_CONFIG_PATH",
            dir.path().join("asyncapi-analytics.json"),
        )
        .output()
        .expect("the AsyncAPI CLI runs");
    let printed = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), printed)
}

/// The independent validator the issue names: the AsyncAPI CLI accepts the
/// hub's document with no error or warning, and refuses it once an
/// operation points at a channel that does not exist (so a pass means
/// something).
#[test]
fn the_asyncapi_cli_validates_the_document_and_refuses_a_broken_one() {
    let doc = mcp_hub::server::asyncapi::document();
    let (valid, printed) = asyncapi_cli_validate(&doc);
    assert!(valid, "asyncapi validate refused the document:\n{printed}");
    assert!(printed.contains("is valid"), "{printed}");

    let mut broken = doc;
    let operation = broken["operations"]
        .as_object_mut()
        .and_then(|ops| ops.values_mut().next())
        .expect("an operation");
    operation["channel"]["$ref"] = json!("#/channels/nowhere");
    let (valid, printed) = asyncapi_cli_validate(&broken);
    assert!(
        !valid,
        "asyncapi validate accepted a dangling $ref:\n{printed}"
    );
    assert!(printed.contains("#/channels/nowhere"), "{printed}");
}

/// The messages of the operations with `action`, by id, with their
/// payloads (resolving the document's `$ref`s by hand).
fn messages_of(doc: &Value, action: &str) -> Vec<(String, Value)> {
    let mut out = Vec::new();
    for op in doc["operations"].as_object().expect("operations").values() {
        if op["action"] != action {
            continue;
        }
        assert_eq!(op["channel"]["$ref"], "#/channels/ws", "{op}");
        for m in op["messages"].as_array().expect("messages") {
            let reference = m["$ref"].as_str().expect("a $ref");
            let id = reference
                .strip_prefix("#/channels/ws/messages/")
                .expect("a message of the channel");
            let in_channel = &doc["channels"]["ws"]["messages"][id]["$ref"];
            assert_eq!(
                in_channel.as_str(),
                Some(format!("#/components/messages/{id}").as_str())
            );
            let payload = doc["components"]["messages"][id]["payload"].clone();
            assert!(payload.is_object(), "{id} has no payload");
            out.push((id.to_string(), payload));
        }
    }
    out
}

/// The actions the parser accepts, as its `unknown_action` error lists them.
fn parser_actions() -> BTreeSet<String> {
    let err = parse_whatsapp_command(json!({"action": "no_such_action"})).expect_err("unknown");
    assert_eq!(err.code, ErrorCode::UnknownAction);
    let list = err
        .message
        .split("(expected ")
        .nth(1)
        .and_then(|rest| rest.strip_suffix(')'))
        .unwrap_or_else(|| panic!("unexpected wording: {}", err.message));
    list.split([',', ' '])
        .filter(|w| !w.is_empty() && *w != "or")
        .map(str::to_string)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_document_is_valid_asyncapi_and_covers_every_message() {
    let hub = TestHub::start(&[]).await;
    let doc = served(&hub).await;
    assert_eq!(doc["asyncapi"], "3.0.0");
    assert_eq!(doc, mcp_hub::server::asyncapi::document());
    assert_eq!(doc["channels"]["ws"]["address"], "/ws");

    // Every client message kind the parser accepts, and only those.
    let received = messages_of(&doc, "receive");
    let kinds: BTreeSet<&str> = received
        .iter()
        .map(|(id, p)| {
            let kind = p["properties"]["type"]["const"]
                .as_str()
                .expect("a const type");
            assert!(id.starts_with(&format!("client.{kind}")), "{id}");
            kind
        })
        .collect();
    let parsed: BTreeSet<&str> = ClientMessage::KINDS.iter().copied().collect();
    assert_eq!(
        kinds, parsed,
        "client messages in the document vs the parser"
    );
    for kind in &parsed {
        // Each kind parses (with its required fields) as itself: the
        // parser's match and KINDS are one list.
        assert_ne!(
            mcp_hub::protocol::parse_client_message(&json!({"type": kind}).to_string())
                .err()
                .map(|(e, _)| e.code),
            Some(ErrorCode::UnknownType),
            "{kind}"
        );
    }

    // whatsapp_command: one message per action the parser accepts.
    let actions: BTreeSet<String> = received
        .iter()
        .filter(|(id, _)| id.starts_with("client.whatsapp_command."))
        .map(|(id, p)| {
            let action = p["properties"]["command"]["properties"]["action"]["const"]
                .as_str()
                .expect("a const action")
                .to_string();
            assert_eq!(id, &format!("client.whatsapp_command.{action}"));
            action
        })
        .collect();
    assert_eq!(actions, parser_actions());

    // Every event kind the hub emits, and only those.
    let sent = messages_of(&doc, "send");
    let events: BTreeSet<&str> = sent
        .iter()
        .map(|(id, p)| {
            let kind = p["properties"]["type"]["const"]
                .as_str()
                .expect("a const type");
            assert_eq!(id, &format!("hub.{kind}"));
            kind
        })
        .collect();
    let emitted: BTreeSet<&str> = <ServerEvent<'_> as strum::VariantNames>::VARIANTS
        .iter()
        .copied()
        .collect();
    assert_eq!(events, emitted, "events in the document vs ServerEvent");

    // Each message is in exactly one operation.
    let all: Vec<&String> = received.iter().chain(&sent).map(|(id, _)| id).collect();
    let unique: BTreeSet<&String> = all.iter().copied().collect();
    assert_eq!(all.len(), unique.len(), "a message in two operations");
    assert_eq!(
        unique.len(),
        doc["components"]["messages"]
            .as_object()
            .expect("messages")
            .len(),
        "a message in no operation"
    );

    // `error.code` is the enum of every stable code.
    let (_, error) = sent
        .iter()
        .find(|(id, _)| id == "hub.error")
        .expect("error");
    let codes: Vec<&str> = error["properties"]["code"]["enum"]
        .as_array()
        .expect("an enum of codes")
        .iter()
        .map(|c| c.as_str().expect("a string"))
        .collect();
    let all_codes: Vec<&str> = ErrorCode::all().map(ErrorCode::as_str).collect();
    assert_eq!(codes, all_codes);

    let checked = node_check(&doc, &[]);
    assert!(
        checked.warnings.is_empty(),
        "the AsyncAPI parser warns: {:?}",
        checked.warnings
    );
}

/// Real frames, both ways, validate against their message's payload; and
/// frames the hub refuses do not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_frames_validate_against_their_messages() {
    let hub = TestHub::start(&[]).await;
    let url = hub.ws_url();
    let mut frames: Vec<(String, Value)> = Vec::new();
    let client = |frame: &Value| -> String {
        match frame["command"]["action"].as_str() {
            Some(action) => format!("client.whatsapp_command.{action}"),
            None => format!("client.{}", frame["type"].as_str().expect("type")),
        }
    };

    let mut sent: Vec<Value> = Vec::new();
    let mut got: Vec<Value> = Vec::new();

    let register = json!({"type": "register", "session": "doc", "client_id": "alice",
                          "client_name": "Alice", "capabilities": [], "request_id": "r1"});
    let (mut alice, confirmed) = WsClient::register_with(&url, register.clone()).await;
    sent.push(register);
    got.push(confirmed);
    got.push(alice.registration_contacts().clone());

    let (mut bob, _) = WsClient::register(&url, "doc", "bob").await;
    got.push(alice.recv_type("client_joined").await);

    let send = send_cmd("John", "See you at 6");
    got.push(bob.request(send.clone()).await);
    sent.push(send);
    let event = alice.recv_type("message_event").await;
    assert!(event["offset"].as_u64().is_some(), "{event}");
    got.push(event);

    let history = history_cmd("John");
    got.push(bob.request(history.clone()).await);
    sent.push(history);

    let ping = json!({"type": "ping", "request_id": 7});
    got.push(bob.request(ping.clone()).await);
    sent.push(ping);

    let broadcast = json!({"type": "broadcast", "payload": {"text": "hello"}});
    bob.send_json(broadcast.clone()).await;
    sent.push(broadcast);
    got.push(alice.recv_type("broadcast").await);

    let unknown = json!({"type": "no_such_type"});
    let error = bob.request(unknown).await;
    assert_eq!(error["code"], "unknown_type", "{error}");
    got.push(error);
    let bad = json!({"type": "whatsapp_command", "command": {"action": "send", "message": "x"}});
    let error = bob.request(bad).await;
    assert_eq!(error["code"], "missing_field", "{error}");
    got.push(error);

    for frame in &sent {
        let mut frame = frame.clone();
        frame.as_object_mut().expect("object").remove("request_id");
        frames.push((client(&frame), frame));
    }
    for frame in &got {
        frames.push((
            format!("hub.{}", frame["type"].as_str().expect("type")),
            frame.clone(),
        ));
    }
    let real = frames.len();
    // What the hub refuses is refused by the schemas too.
    let refused = [
        (
            "client.whatsapp_command.send",
            json!({"type": "whatsapp_command", "command": {"action": "send", "message": "x"}}),
        ),
        (
            "client.register",
            json!({"type": "register", "since": {"offset": -1, "epoch": "e"}}),
        ),
        (
            "hub.error",
            json!({"type": "error", "code": "no_such_code", "message": "m"}),
        ),
        ("hub.pong", json!({"type": "ping", "timestamp": 1})),
    ];
    for (id, frame) in &refused {
        frames.push((id.to_string(), frame.clone()));
    }

    let doc = served(&hub).await;
    let checked = node_check(&doc, &frames);
    assert_eq!(checked.frames.len(), frames.len());
    for (i, ((id, frame), (checked_id, valid, errors))) in
        frames.iter().zip(&checked.frames).enumerate()
    {
        assert_eq!(id, checked_id);
        if i < real {
            assert!(valid, "{id}: {frame} does not validate: {errors:?}");
        } else {
            assert!(!valid, "{id}: {frame} validates, but the hub refuses it");
        }
    }
    let covered: BTreeSet<&str> = frames[..real].iter().map(|(id, _)| id.as_str()).collect();
    for id in [
        "client.register",
        "client.whatsapp_command.send",
        "hub.registration_confirmed",
        "hub.response",
        "hub.message_event",
        "hub.error",
    ] {
        assert!(covered.contains(id), "no real {id} frame checked");
    }
}

/// The document is served like the OpenAPI one: only to a `Host` the hub
/// serves, with CORS headers for the allowed origins only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_document_follows_the_rest_apis_host_and_cors_rules() {
    const LISTED: &str = "https://app.example";
    let hub = TestHub::start(&["--allowed-origins", LISTED]).await;
    let get = |path: &str, header: (&'static str, &'static str)| {
        reqwest::Client::new()
            .get(hub.http_url(path))
            .header(header.0, header.1)
            .send()
    };
    for path in ["/api/v1/openapi.json", "/api/v1/asyncapi.json"] {
        let r = get(path, ("host", "evil.example")).await.expect("GET");
        assert_eq!(r.status().as_u16(), 403, "{path} for a foreign Host");
        for (origin, allowed) in [(LISTED, Some(LISTED)), ("https://evil.example", None)] {
            let r = get(path, ("origin", origin)).await.expect("GET");
            assert_eq!(r.status().as_u16(), 200, "{path}");
            let allow = r
                .headers()
                .get("access-control-allow-origin")
                .map(|v| v.to_str().unwrap_or_default().to_string());
            assert_eq!(allow.as_deref(), allowed, "{path} from {origin}");
        }
    }
}

/// The SDKs' frame types (clients/typescript/src/protocol.generated.ts,
/// clients/python/src/mcp_hub_client/protocol_generated.py) are what
/// clients/codegen/generate.py makes of this document: regenerated here
/// and compared, so they cannot drift from the Rust types.
/// `MCP_HUB_REGENERATE=1 cargo test --test suite asyncapi::generated` rewrites them.
#[test]
fn the_sdks_generated_frame_types_match_the_document() {
    let dir = TempDir::new();
    let doc = dir.write(
        "asyncapi.json",
        &mcp_hub::server::asyncapi::document().to_string(),
    );
    let committed = [
        repo_path("clients/typescript/src/protocol.generated.ts"),
        repo_path("clients/python/src/mcp_hub_client/protocol_generated.py"),
    ];
    let fresh = [dir.path().join("frames.ts"), dir.path().join("frames.py")];
    let out = std::process::Command::new("python3")
        .arg(repo_path("clients/codegen/generate.py"))
        .arg(&doc)
        .args(&fresh)
        .output()
        .expect("python3 runs");
    assert!(
        out.status.success(),
        "generate.py failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let regenerate = std::env::var_os("MCP_HUB_REGENERATE").is_some();
    for (committed, fresh) in committed.iter().zip(&fresh) {
        let fresh = std::fs::read_to_string(fresh).expect("generated");
        if regenerate {
            std::fs::write(committed, &fresh).expect("rewrite the generated file");
        }
        let current = std::fs::read_to_string(committed).unwrap_or_default();
        assert!(
            current == fresh,
            "{} differs from what the AsyncAPI document generates: run \
             MCP_HUB_REGENERATE=1 cargo test --test suite asyncapi::generated",
            committed.display()
        );
    }
}
