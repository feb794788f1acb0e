//! Standalone mode, every client message type end to end: register (given
//! and generated ids), ping, whatsapp_command (send / list_contacts /
//! get_history content shapes), whatsapp_ai_command (phrasings, fuzzy and
//! ambiguous names, context), ai_request, broadcast, and `request_id`
//! echoing on answers and errors.

mod common;
mod standalone_support;

use common::{HubProcess, WsClient};
use serde_json::{Value, json};
use standalone_support::*;

fn assert_client_info(v: &Value, client_id: &str, name: &str, instance: &str, caps: Value) {
    assert_eq!(v["client_id"], client_id, "{v}");
    assert_eq!(v["client_name"], name, "{v}");
    assert_eq!(v["instance"], instance, "{v}");
    assert_eq!(v["capabilities"], caps, "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn register_ping_commands_ai_and_broadcast() {
    let hub = HubProcess::start(&["--instance-id", "proto-hub"], &[]).await;
    let url = hub.ws_url();

    // register without client_id or session: generated id, session "default".
    let mut anon = WsClient::connect(&url).await;
    anon.send_json(json!({"type": "register"})).await;
    let conf = anon.recv().await;
    assert_eq!(conf["type"], "registration_confirmed", "{conf}");
    let id = conf["client_id"].as_str().expect("client_id").to_string();
    let hex = id
        .strip_prefix("client-")
        .expect("generated ids start client-");
    assert!(
        hex.len() == 12 && hex.chars().all(|c| c.is_ascii_hexdigit()),
        "{id}"
    );
    assert_eq!(conf["session"], "default");
    assert_eq!(conf["instance"], "proto-hub");
    assert_eq!(conf["agent"], false);
    assert_eq!(conf["client_name"], id.as_str(), "name defaults to the id");
    assert!(
        conf.get("request_id").is_none(),
        "no request_id given: {conf}"
    );
    let clients = conf["clients"].as_array().expect("clients");
    assert_eq!(clients.len(), 1, "{conf}");
    assert_client_info(&clients[0], &id, &id, "proto-hub", json!([]));
    let contacts = anon.recv().await;
    assert_eq!(contacts["type"], "contact_list_broadcast", "{contacts}");
    assert_eq!(names(&contacts["contacts"]), BUILTIN);
    assert_eq!(contacts["total_count"], 6);
    assert_eq!(contacts["contacts"][0]["phone"], "+15550100001");
    assert!(contacts["timestamp"].as_u64().is_some_and(|t| t > 0));
    // A second anonymous client gets a different id in the same session.
    let (_anon2, conf2) = WsClient::register_with(&url, json!({"type": "register"})).await;
    assert_ne!(conf2["client_id"], id.as_str());
    assert_eq!(conf2["session"], "default");
    assert_eq!(conf2["clients"].as_array().map(Vec::len), Some(2));
    let joined = anon.recv_type("client_joined").await;
    assert_eq!(joined["client_id"], conf2["client_id"]);
    // A blank name counts as absent.
    let (_named, conf3) = WsClient::register_with(
        &url,
        json!({"type": "register", "client_id": "blank-name", "client_name": "  "}),
    )
    .await;
    assert_eq!(conf3["client_name"], "blank-name");
    assert_eq!(
        anon.recv_type("client_joined").await["client_name"],
        "blank-name"
    );

    // register with everything, and a numeric request_id (echoed as a string).
    let (mut alice, conf) = WsClient::register_with(
        &url,
        json!({"type": "register", "client_id": "alice", "client_name": "Alice (test)",
               "session": "proto", "capabilities": ["reader"], "request_id": 5}),
    )
    .await;
    assert_eq!(conf["client_id"], "alice");
    assert_eq!(conf["client_name"], "Alice (test)");
    assert_eq!(conf["session"], "proto");
    assert_eq!(conf["request_id"], "5");
    assert_client_info(
        &conf["clients"][0],
        "alice",
        "Alice (test)",
        "proto-hub",
        json!(["reader"]),
    );
    let (mut bob, conf) = WsClient::register(&url, "proto", "bob").await;
    let members: Vec<&str> = conf["clients"]
        .as_array()
        .expect("clients")
        .iter()
        .map(|c| c["client_id"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(members, ["alice", "bob"], "join order");
    let joined = alice.recv().await;
    assert_eq!(joined["type"], "client_joined", "{joined}");
    assert_client_info(&joined, "bob", "bob", "proto-hub", json!([]));
    assert!(joined["timestamp"].as_u64().is_some());
    assert_quiet(&mut anon, "another session's joins are not seen").await;

    // ping → pong; request_id echoed: strings as is, numbers as strings,
    // null as absent.
    for (given, echoed) in [
        (json!("p-1"), json!("p-1")),
        (json!(7), json!("7")),
        (json!(-3), json!("-3")),
        (json!(2.5), json!("2.5")),
    ] {
        alice
            .send_json(json!({"type": "ping", "request_id": given}))
            .await;
        let pong = alice.recv().await;
        assert_eq!(pong["type"], "pong", "{pong}");
        assert_eq!(pong["request_id"], echoed, "{given} → {pong}");
        assert!(pong["timestamp"].as_u64().is_some_and(|t| t > 0));
    }
    alice
        .send_json(json!({"type": "ping", "request_id": null}))
        .await;
    let pong = alice.recv().await;
    assert_eq!(pong["type"], "pong");
    assert!(pong.get("request_id").is_none(), "{pong}");
    alice.send_json(json!({"type": "ping"})).await;
    assert!(alice.recv().await.get("request_id").is_none());

    // whatsapp_command send: the requester sees the message_event first,
    // then the response; everyone else sees the event.
    let frames = send_and_collect(&mut alice, send_cmd("john", "Hello!"), "s1").await;
    assert_eq!(frames.len(), 2, "event then response: {frames:?}");
    let (event, resp) = (&frames[0], &frames[1]);
    assert_eq!(resp["type"], "response");
    assert_eq!(resp["response_type"], "whatsapp_command_result");
    assert_eq!(resp["request_id"], "s1");
    let c = &resp["content"];
    assert_eq!(
        keys(c),
        [
            "contact",
            "executed_by",
            "message",
            "message_id",
            "success",
            "timestamp"
        ]
    );
    assert_eq!(c["success"], true);
    assert_eq!(c["contact"], "John", "resolved name");
    assert_eq!(c["message"], "Hello!");
    assert_eq!(c["executed_by"], "simulated");
    assert!(
        c["message_id"]
            .as_str()
            .is_some_and(|m| m.starts_with("sim."))
    );
    assert_eq!(event["type"], "message_event");
    assert_eq!(
        without_volatile(event),
        json!({"type": "message_event", "direction": "outgoing", "contact": "John",
               "message": "Hello!", "by": "alice"})
    );
    assert_eq!(event["message_id"], c["message_id"]);
    assert_eq!(event["timestamp"], c["timestamp"]);
    assert!(
        event.get("request_id").is_none(),
        "events carry no request_id"
    );
    assert_eq!(bob.recv().await, *event, "the same event reaches bob");

    // Numeric request_id on a command.
    bob.send_json(json!({"type": "whatsapp_command", "request_id": 42,
                         "command": {"action": "list_contacts"}}))
        .await;
    let list = bob.recv().await;
    assert_eq!(list["request_id"], "42");
    let c = &list["content"];
    assert_eq!(
        keys(c),
        ["contacts", "executed_by", "success", "total_count"]
    );
    assert_eq!(c["success"], true);
    assert_eq!(c["total_count"], 6);
    assert_eq!(names(&c["contacts"]), BUILTIN);
    assert_eq!(
        c["contacts"][5],
        json!({"name": "Mom", "phone": "+15550100006"})
    );
    assert_eq!(c["executed_by"], "simulated");

    // get_history: oldest first, `limit` keeps the newest.
    for text in ["one", "two", "three"] {
        let r = bob.request(send_cmd("JANE", text)).await;
        assert_eq!(r["content"]["contact"], "Jane", "{r}");
        for c in [&mut alice, &mut bob] {
            assert_eq!(c.recv_type("message_event").await["message"], text);
        }
    }
    let h = bob
        .request(ws_command(
            json!({"action": "get_history", "contact": "jane"}),
        ))
        .await;
    let c = &h["content"];
    assert_eq!(
        keys(c),
        ["contact", "count", "executed_by", "messages", "success"]
    );
    assert_eq!(c["contact"], "Jane");
    assert_eq!(c["count"], 3);
    let texts: Vec<&str> = c["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .map(|m| m["message"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(texts, ["one", "two", "three"]);
    let first = &c["messages"][0];
    assert_eq!(
        keys(first),
        [
            "by",
            "contact",
            "direction",
            "message",
            "message_id",
            "timestamp"
        ]
    );
    assert_eq!(first["by"], "bob");
    assert_eq!(first["direction"], "outgoing");
    let h = bob
        .request(ws_command(
            json!({"action": "get_history", "contact": "Jane", "limit": 2}),
        ))
        .await;
    let texts: Vec<&str> = h["content"]["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .map(|m| m["message"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(texts, ["two", "three"], "the newest two, oldest first");
    assert_eq!(h["content"]["count"], 2);
    let h = bob
        .request(ws_command(
            json!({"action": "get_history", "contact": "mom"}),
        ))
        .await;
    assert_eq!(h["content"]["messages"], json!([]));
    assert_eq!(h["content"]["count"], 0);

    // Unknown and ambiguous contacts are `success:false` responses.
    let r = bob.request(send_cmd("Zed", "hi")).await;
    assert_eq!(r["type"], "response", "{r}");
    assert_eq!(r["content"]["success"], false);
    assert_eq!(r["content"]["code"], "contact_not_found");
    assert!(
        r["content"]["error"]
            .as_str()
            .is_some_and(|e| !e.is_empty())
    );
    assert_eq!(names(&r["content"]["candidates"]), BUILTIN);
    let r = bob.request(history_cmd("m")).await;
    assert_eq!(r["content"]["success"], false);
    assert_eq!(r["content"]["code"], "ambiguous_contact");
    assert_eq!(names(&r["content"]["candidates"]), ["Maria", "Mom"]);

    // Errors echo the request_id too (strings and numbers).
    bob.send_json(json!({"type": "teleport", "request_id": "e-1"}))
        .await;
    let e = bob.recv().await;
    assert_eq!(
        (
            e["type"].as_str(),
            e["code"].as_str(),
            e["request_id"].as_str()
        ),
        (Some("error"), Some("unknown_type"), Some("e-1"))
    );
    bob.send_json(json!({"type": "whatsapp_command", "request_id": 99,
                         "command": {"action": "fly"}}))
        .await;
    let e = bob.recv().await;
    assert_eq!(e["code"], "unknown_action");
    assert_eq!(e["request_id"], "99");

    // ai_request
    let r = alice
        .request(json!({"type": "ai_request", "prompt": "tell john that I'm late"}))
        .await;
    assert_eq!(r["type"], "response");
    assert_eq!(r["response_type"], "ai_response");
    assert_eq!(r["content"]["provider"], "rules");
    let text = r["content"]["text"].as_str().expect("text");
    assert!(text.contains("john") && text.contains("I'm late"), "{text}");
    assert!(r["content"]["cached"].is_boolean() && r["content"]["shared"].is_boolean());
    let r = alice
        .request(json!({"type": "ai_request", "prompt": "hello?", "context": {"any": [1, 2]}}))
        .await;
    assert!(
        r["content"]["text"].as_str().is_some_and(|t| !t.is_empty()),
        "{r}"
    );

    // broadcast: every other client gets {type, from, payload}; the sender
    // gets broadcast_sent only with a request_id, never its own broadcast.
    let (mut carol, _) = WsClient::register(&url, "proto", "carol").await;
    alice.recv_type("client_joined").await;
    bob.recv_type("client_joined").await;
    let payload = json!({"text": "lunch?", "n": [1, 2, {"deep": null}], "ok": true});
    let sent = alice
        .request(json!({"type": "broadcast", "payload": payload}))
        .await;
    assert_eq!(sent["type"], "response");
    assert_eq!(sent["response_type"], "broadcast_sent");
    assert_eq!(sent["content"], json!({"success": true}));
    for c in [&mut bob, &mut carol] {
        let b = c.recv().await;
        assert_eq!(keys(&b), ["from", "payload", "timestamp", "type"], "{b}");
        assert_eq!(b["type"], "broadcast");
        assert_eq!(b["from"], "alice");
        assert_eq!(b["payload"], payload);
    }
    assert_quiet(&mut alice, "the sender must not get its own broadcast").await;
    // Without request_id: no acknowledgement, still relayed. Any JSON value.
    carol
        .send_json(json!({"type": "broadcast", "payload": "plain string"}))
        .await;
    assert_quiet(&mut carol, "no broadcast_sent without request_id").await;
    for c in [&mut alice, &mut bob] {
        let b = c.recv().await;
        assert_eq!(
            (b["from"].as_str(), b["payload"].as_str()),
            (Some("carol"), Some("plain string"))
        );
    }
    assert_quiet(&mut anon, "broadcasts stay in their session").await;
}

/// Natural-language commands with the offline rules provider and the
/// built-in contacts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ai_commands_understand_phrasings_and_resolve_names() {
    let hub = HubProcess::start(&[], &[]).await;
    let url = hub.ws_url();
    let (mut me, _) = WsClient::register(&url, "ai", "me").await;
    let (mut watcher, _) = WsClient::register(&url, "ai", "watcher").await;
    me.recv_type("client_joined").await;

    // A fresh session has no last contact to reply to.
    let r = me.request(ai_command("reply hi")).await;
    assert_eq!(r["response_type"], "whatsapp_ai_command_result");
    assert_eq!(r["content"]["success"], false, "{r}");
    assert_eq!(r["content"]["code"], "unparseable_command");

    // (text, contact, message) for every send phrasing.
    let sends = [
        (
            "send john a message saying hello there",
            "John",
            "hello there",
        ),
        (
            "Send a message to Alice saying Hi Alice!",
            "Alice",
            "Hi Alice!",
        ),
        (
            "tell jane that the meeting moved to 3pm",
            "Jane",
            "the meeting moved to 3pm",
        ),
        ("message bob: see you at 5", "Bob", "see you at 5"),
        ("text maria \"call me\"", "Maria", "call me"),
        ("send hello mom to mom", "Mom", "hello mom"),
        ("TELL JOHN HELLO", "John", "HELLO"),
        // Typos and case: jon, jhon, JOHN all mean John.
        ("send jon a message saying typo", "John", "typo"),
        ("tell jhon that transposed", "John", "transposed"),
        ("please message JOHN saying caps", "John", "caps"),
    ];
    for (text, contact, message) in sends {
        let r = me.request(ai_command(text)).await;
        assert_eq!(r["type"], "response", "{text}: {r}");
        assert_eq!(r["response_type"], "whatsapp_ai_command_result");
        let c = &r["content"];
        assert_eq!(c["success"], true, "{text}: {r}");
        assert_eq!(
            c["interpretation"],
            json!({"action": "send", "contact": contact, "message": message}),
            "{text}"
        );
        assert_eq!(c["provider"], "rules");
        assert_eq!(c["result"]["success"], true);
        assert_eq!(c["result"]["contact"], contact);
        assert_eq!(c["result"]["message"], message);
        assert_eq!(c["result"]["executed_by"], "simulated");
        // Everyone sees the message it sent, attributed to the requester.
        let ev = watcher.recv_type("message_event").await;
        assert_eq!(
            (
                ev["contact"].as_str(),
                ev["message"].as_str(),
                ev["by"].as_str()
            ),
            (Some(contact), Some(message), Some("me")),
            "{text}"
        );
        assert_eq!(ev["message_id"], c["result"]["message_id"]);
    }

    // "reply" goes to the session's last contact (John, from the last send).
    let r = me.request(ai_command("reply sounds good")).await;
    assert_eq!(
        r["content"]["interpretation"],
        json!({"action": "send", "contact": "John", "message": "sounds good"}),
        "{r}"
    );
    me.request(ai_command("tell maria that switching")).await;
    let r = me
        .request(ai_command("reply to the last contact saying ok then"))
        .await;
    assert_eq!(r["content"]["interpretation"]["contact"], "Maria", "{r}");
    assert_eq!(r["content"]["interpretation"]["message"], "ok then");
    for expected in ["sounds good", "switching", "ok then"] {
        assert_eq!(
            watcher.recv_type("message_event").await["message"],
            expected
        );
    }

    // History with someone, with and without a count.
    let r = me.request(ai_command("show history with john")).await;
    let c = &r["content"];
    assert_eq!(c["success"], true, "{r}");
    assert_eq!(
        c["interpretation"],
        json!({"action": "get_history", "contact": "John"})
    );
    let texts: Vec<&str> = c["result"]["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .map(|m| m["message"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(
        texts,
        [
            "hello there",
            "HELLO",
            "typo",
            "transposed",
            "caps",
            "sounds good"
        ]
    );
    let r = me
        .request(ai_command("read the last 2 messages from jon"))
        .await;
    assert_eq!(
        r["content"]["interpretation"],
        json!({"action": "get_history", "contact": "John", "limit": 2}),
        "{r}"
    );
    assert_eq!(r["content"]["result"]["count"], 2);
    assert_eq!(
        r["content"]["result"]["messages"][1]["message"],
        "sounds good"
    );

    // Listing contacts, several phrasings.
    for text in [
        "list contacts",
        "Show me my contacts",
        "who are my contacts?",
        "contacts",
    ] {
        let r = me.request(ai_command(text)).await;
        let c = &r["content"];
        assert_eq!(c["success"], true, "{text}: {r}");
        assert_eq!(
            c["interpretation"],
            json!({"action": "list_contacts"}),
            "{text}"
        );
        assert_eq!(names(&c["result"]["contacts"]), BUILTIN);
        assert_eq!(c["result"]["total_count"], 6);
    }

    // Unknown name: success:false with every contact as candidate, nothing sent.
    let r = me
        .request(ai_command("send zebedee a message saying hi"))
        .await;
    let c = &r["content"];
    assert_eq!(c["success"], false, "{r}");
    assert_eq!(c["code"], "contact_not_found");
    assert_eq!(names(&c["candidates"]), BUILTIN);
    assert_eq!(
        c["interpretation"]["contact"], "zebedee",
        "raw proposal: {r}"
    );
    assert!(c.get("result").is_none(), "nothing executed: {r}");
    // Ambiguous name: the candidates are the matches.
    let r = me.request(ai_command("tell m that which one?")).await;
    assert_eq!(r["content"]["code"], "ambiguous_contact", "{r}");
    assert_eq!(names(&r["content"]["candidates"]), ["Maria", "Mom"]);
    // Not understood.
    let r = me.request(ai_command("what is the meaning of life")).await;
    let c = &r["content"];
    assert_eq!(c["success"], false);
    assert_eq!(c["code"], "unparseable_command");
    assert_eq!(c["interpretation"]["action"], "unknown");
    assert!(c["error"].as_str().is_some_and(|e| !e.is_empty()));
    assert_quiet(&mut watcher, "failed commands send nothing").await;

    // A given context is used instead of the session's.
    let r = me
        .request(json!({"type": "whatsapp_ai_command", "command": "reply on my way",
            "context": {"last_contact": "Bob", "contact_list": ["Bob", {"name": "John", "phone": "+1"}]}}))
        .await;
    assert_eq!(
        r["content"]["interpretation"],
        json!({"action": "send", "contact": "Bob", "message": "on my way"}),
        "{r}"
    );
    assert_eq!(r["content"]["result"]["contact"], "Bob");
    // Its contact list is the only one the interpretation may use...
    let r = me
        .request(
            json!({"type": "whatsapp_ai_command", "command": "tell jane that hi",
            "context": {"contact_list": ["Bob", "John"]}}),
        )
        .await;
    assert_eq!(r["content"]["code"], "contact_not_found", "{r}");
    assert_eq!(names(&r["content"]["candidates"]), ["Bob", "John"]);
    // ...and with a list but no last contact, "reply" has no one to go to
    // (no fallback to the session's last contact).
    let r = me
        .request(json!({"type": "whatsapp_ai_command", "command": "reply x",
            "context": {"contact_list": ["Bob"]}}))
        .await;
    assert_eq!(r["content"]["code"], "unparseable_command", "{r}");
    // A context with only last_contact keeps the session's contacts.
    let r = me
        .request(
            json!({"type": "whatsapp_ai_command", "command": "reply hey alice",
            "context": {"last_contact": "alice"}}),
        )
        .await;
    assert_eq!(r["content"]["interpretation"]["contact"], "Alice", "{r}");
    assert_eq!(r["content"]["success"], true);
    // The session's own last contact is now Alice.
    let r = me.request(ai_command("reply and again")).await;
    assert_eq!(r["content"]["interpretation"]["contact"], "Alice", "{r}");
}

/// Ambiguity needs names that share a prefix: a contacts file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_from_a_contacts_file_resolve_or_are_ambiguous() {
    let dir = std::env::temp_dir().join(format!("mcp-hub-protocol-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let file = dir.join("contacts.json");
    std::fs::write(
        &file,
        r#"["John Smith", "Johanna", {"name": "Bob", "phone": "+4412345"}]"#,
    )
    .expect("write contacts");
    let hub = HubProcess::start(&["--contacts-file", file.to_str().expect("utf-8")], &[]).await;
    let _ = std::fs::remove_dir_all(&dir);
    let url = hub.ws_url();
    let mut me = WsClient::connect(&url).await;
    me.send_json(json!({"type": "register", "session": "file", "client_id": "me"}))
        .await;
    assert_eq!(me.recv().await["type"], "registration_confirmed");
    let contacts = me.recv().await;
    assert_eq!(
        contacts["contacts"],
        json!([{"name": "John Smith"}, {"name": "Johanna"}, {"name": "Bob", "phone": "+4412345"}]),
        "phone omitted when unknown"
    );
    assert_eq!(contacts["total_count"], 3);

    let ambiguous = [
        ai_command("send joh a message saying which one?"),
        send_cmd("jo", "which one?"),
        history_cmd("JOH"),
    ];
    for body in ambiguous {
        let r = me.request(body.clone()).await;
        let c = &r["content"];
        assert_eq!(c["success"], false, "{body}: {r}");
        assert_eq!(c["code"], "ambiguous_contact", "{body}: {r}");
        assert_eq!(names(&c["candidates"]), ["John Smith", "Johanna"], "{body}");
    }
    for (text, contact) in [
        ("tell john that first name", "John Smith"),
        ("send johana a message saying typo", "Johanna"),
        ("message smith: substring", "John Smith"),
        ("tell johanna that exact", "Johanna"),
    ] {
        let r = me.request(ai_command(text)).await;
        assert_eq!(r["content"]["success"], true, "{text}: {r}");
        assert_eq!(r["content"]["interpretation"]["contact"], contact, "{text}");
        assert_eq!(r["content"]["result"]["contact"], contact, "{text}");
    }
    let r = me.request(ai_command("send zed a message saying hi")).await;
    assert_eq!(r["content"]["code"], "contact_not_found", "{r}");
    assert_eq!(
        names(&r["content"]["candidates"]),
        ["John Smith", "Johanna", "Bob"]
    );
    let r = me.request(send_cmd("Jane", "not in this account")).await;
    assert_eq!(r["content"]["code"], "contact_not_found", "{r}");
}
