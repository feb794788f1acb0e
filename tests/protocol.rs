//! Every client message type over a real WebSocket, against an in-process
//! hub: register (given and generated ids, every field), ping,
//! whatsapp_command (send / list_contacts / get_history content shapes,
//! history limits), whatsapp_ai_command (phrasings, fuzzy and ambiguous
//! names, context), ai_request, `request_id` echoing on answers and errors,
//! and bad input: every malformed or misplaced message gets its stable
//! error code and the connection stays usable.

use crate::support;

use serde_json::{Value, json};
use support::*;

fn assert_client_info(v: &Value, client_id: &str, name: &str, instance: &str, caps: Value) {
    assert_eq!(v["client_id"], client_id, "{v}");
    assert_eq!(v["client_name"], name, "{v}");
    assert_eq!(v["instance"], instance, "{v}");
    assert_eq!(v["capabilities"], caps, "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn register_without_an_id_gets_a_generated_one_in_the_default_session() {
    let hub = TestHub::start(&["--instance-id", "proto-hub"]).await;
    let url = hub.ws_url();
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
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn register_with_only_a_session_gets_a_generated_id_in_that_session() {
    let hub = TestHub::start(&[]).await;
    let (_only_session, conf) = WsClient::register_with(
        &hub.ws_url(),
        json!({"type": "register", "session": "only-session"}),
    )
    .await;
    let generated = conf["client_id"].as_str().expect("client_id");
    assert!(generated.starts_with("client-"), "{conf}");
    assert_eq!(conf["session"], "only-session");
    assert_eq!(ids(&conf["clients"]), [generated]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blank_client_name_counts_as_absent() {
    let hub = TestHub::start(&[]).await;
    let url = hub.ws_url();
    let [mut watcher] = join_session(&url, "blank", ["watcher"]).await;
    let (_named, conf) = WsClient::register_with(
        &url,
        json!({"type": "register", "session": "blank", "client_id": "blank-name", "client_name": "  "}),
    )
    .await;
    assert_eq!(conf["client_name"], "blank-name");
    assert_eq!(
        watcher.recv_type("client_joined").await["client_name"],
        "blank-name"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn register_accepts_128_character_ids_and_ignores_unknown_fields() {
    // 129 are refused: an_invalid_registration_is_refused_joins_nobody_and_may_be_retried.
    let hub = TestHub::start(&[]).await;
    let long = "x".repeat(128);
    let (_long, conf) = WsClient::register_with(
        &hub.ws_url(),
        json!({"type": "register", "client_id": long, "session": long,
               "colour": "blue", "request_id": "reg-1"}),
    )
    .await;
    assert_eq!(conf["client_id"].as_str().map(str::len), Some(128));
    assert_eq!(conf["session"].as_str().map(str::len), Some(128));
    assert_eq!(conf["request_id"], "reg-1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn register_with_every_field_is_confirmed_and_announced_in_its_session_only() {
    let hub = TestHub::start(&["--instance-id", "proto-hub"]).await;
    let url = hub.ws_url();
    let [mut elsewhere] = join_session(&url, "default", ["elsewhere"]).await;
    let (mut alice, conf) = WsClient::register_with(
        &url,
        json!({"type": "register", "client_id": "alice", "client_name": "Alice (test)",
               "session": "proto", "capabilities": ["reader"], "request_id": "r"}),
    )
    .await;
    assert_eq!(conf["client_id"], "alice");
    assert_eq!(conf["client_name"], "Alice (test)");
    assert_eq!(conf["session"], "proto");
    assert_eq!(conf["request_id"], "r");
    assert_client_info(
        &conf["clients"][0],
        "alice",
        "Alice (test)",
        "proto-hub",
        json!(["reader"]),
    );
    let (_bob, conf) = WsClient::register(&url, "proto", "bob").await;
    let members: Vec<&str> = conf["clients"]
        .as_array()
        .expect("clients")
        .iter()
        .map(|c| c["client_id"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(members, ["alice", "bob"], "join order");
    assert_client_info(
        &conf["clients"][0],
        "alice",
        "Alice (test)",
        "proto-hub",
        json!(["reader"]),
    );
    let joined = alice.recv().await;
    assert_eq!(joined["type"], "client_joined", "{joined}");
    assert_client_info(&joined, "bob", "bob", "proto-hub", json!([]));
    assert!(joined["timestamp"].as_u64().is_some());
    assert_quiet(&mut elsewhere, "another session's joins are not seen").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn numeric_request_ids_are_echoed_as_strings_and_null_as_absent() {
    let hub = TestHub::start(&[]).await;
    let url = hub.ws_url();
    // On register...
    let (mut alice, conf) = WsClient::register_with(
        &url,
        json!({"type": "register", "client_id": "alice", "session": "ids", "request_id": 5}),
    )
    .await;
    assert_eq!(conf["request_id"], "5");
    // ...on ping: strings as is, numbers as strings, null as absent...
    for (given, echoed) in [
        (json!("p-1"), json!("p-1")),
        (json!(7), json!("7")),
        (json!(-3), json!("-3")),
        (json!(2.5), json!("2.5")),
        (json!(-1.5), json!("-1.5")),
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
    // ...on a command...
    alice
        .send_json(json!({"type": "whatsapp_command", "request_id": 42,
                          "command": {"action": "list_contacts"}}))
        .await;
    let list = alice.recv().await;
    assert_eq!(list["type"], "response", "{list}");
    assert_eq!(list["request_id"], "42");
    // ...and on an error.
    alice
        .send_json(json!({"type": "whatsapp_command", "request_id": 99,
                          "command": {"action": "fly"}}))
        .await;
    let e = alice.recv().await;
    assert_eq!(e["code"], "unknown_action");
    assert_eq!(e["request_id"], "99");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_send_answers_the_event_first_then_the_response_and_others_get_the_event() {
    let hub = TestHub::start(&[]).await;
    let [mut alice, mut bob] = join_session(&hub.ws_url(), "proto", ["alice", "bob"]).await;
    // Fields the hub does not know are ignored in commands too.
    let mut send = send_cmd("john", "Hello!");
    send["command"]["extra"] = json!("ignored");
    let frames = send_and_collect(&mut alice, send, "s1").await;
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
    assert!(c["timestamp"].as_u64().is_some_and(|t| t > 0), "{c}");
    assert_eq!(event["type"], "message_event");
    assert_eq!(
        without_volatile(event),
        json!({"type": "message_event", "direction": "outgoing", "contact": "John",
               "message": "Hello!", "by": "alice", "executed_by": "simulated"})
    );
    assert_eq!(event["message_id"], c["message_id"]);
    assert_eq!(event["timestamp"], c["timestamp"]);
    assert!(
        event.get("request_id").is_none(),
        "events carry no request_id"
    );
    assert_eq!(bob.recv().await, *event, "the same event reaches bob");
    assert_quiet(&mut bob, "only the event").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_contacts_answers_the_contacts_with_their_phones() {
    let hub = TestHub::start(&[]).await;
    let [mut bob] = join_session(&hub.ws_url(), "proto", ["bob"]).await;
    let list = bob
        .request(ws_command(json!({"action": "list_contacts"})))
        .await;
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
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_history_is_oldest_first_and_its_limit_keeps_the_newest() {
    let hub = TestHub::start(&[]).await;
    let [mut alice, mut bob] = join_session(&hub.ws_url(), "proto", ["alice", "bob"]).await;
    for text in ["one", "two", "three"] {
        let r = bob.request(send_cmd("JANE", text)).await;
        assert_eq!(r["content"]["contact"], "Jane", "{r}");
        for c in [&mut alice, &mut bob] {
            assert_eq!(c.recv_type("message_event").await["message"], text);
        }
    }
    let messages = |h: &Value| -> Vec<String> {
        h["content"]["messages"]
            .as_array()
            .expect("messages")
            .iter()
            .map(|m| m["message"].as_str().unwrap_or_default().to_string())
            .collect()
    };
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
    assert_eq!(messages(&h), ["one", "two", "three"]);
    let first = &c["messages"][0];
    assert_eq!(
        keys(first),
        [
            "by",
            "contact",
            "direction",
            "executed_by",
            "message",
            "message_id",
            "timestamp"
        ]
    );
    assert_eq!(first["by"], "bob");
    assert_eq!(first["executed_by"], "simulated");
    assert_eq!(first["direction"], "outgoing");
    let h = bob
        .request(ws_command(
            json!({"action": "get_history", "contact": "Jane", "limit": 2}),
        ))
        .await;
    assert_eq!(
        messages(&h),
        ["two", "three"],
        "the newest two, oldest first"
    );
    assert_eq!(h["content"]["count"], 2);
    let h = bob
        .request(ws_command(
            json!({"action": "get_history", "contact": "mom"}),
        ))
        .await;
    assert_eq!(h["content"]["messages"], json!([]));
    assert_eq!(h["content"]["count"], 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_and_ambiguous_contacts_are_unsuccessful_responses_with_candidates() {
    let hub = TestHub::start(&[]).await;
    let [mut bob] = join_session(&hub.ws_url(), "proto", ["bob"]).await;
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
    assert_quiet(&mut bob, "nothing was sent, so no message_event").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ai_request_answers_with_the_rules_provider() {
    let hub = TestHub::start(&[]).await;
    let [mut alice] = join_session(&hub.ws_url(), "proto", ["alice"]).await;
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
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broadcast_reaches_every_other_member_of_its_session_only() {
    let hub = TestHub::start(&[]).await;
    let url = hub.ws_url();
    let [mut alice, mut bob, mut carol] =
        join_session(&url, "proto", ["alice", "bob", "carol"]).await;
    let [mut elsewhere] = join_session(&url, "default", ["elsewhere"]).await;
    // Every other client gets {type, from, payload}; the sender gets
    // broadcast_sent only with a request_id, never its own broadcast.
    let payload = json!({"text": "lunch?", "n": [1, 2, {"deep": null}], "ok": true});
    let sent = alice
        .request(json!({"type": "broadcast", "payload": payload}))
        .await;
    assert_eq!(sent["type"], "response");
    assert_eq!(sent["response_type"], "broadcast_sent");
    assert_eq!(sent["content"], json!({"success": true}));
    for c in [&mut bob, &mut carol] {
        let b = c.recv().await;
        assert_eq!(
            keys(&b),
            ["epoch", "from", "offset", "payload", "timestamp", "type"],
            "{b}"
        );
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
    assert_quiet(&mut elsewhere, "broadcasts stay in their session").await;
}

/// `me` and `watcher`, registered in session "ai" of a fresh hub.
async fn ai_session(hub: &TestHub) -> [WsClient; 2] {
    join_session(&hub.ws_url(), "ai", ["me", "watcher"]).await
}

/// Sends `text` as a whatsapp_ai_command and asserts it was understood as
/// a send of `message` to `contact` and executed; returns the response.
async fn assert_ai_send(me: &mut WsClient, text: &str, contact: &str, message: &str) -> Value {
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
    r
}

/// Natural-language commands with the offline rules provider and the
/// built-in contacts: every send phrasing, typos and case included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ai_send_phrasings_send_to_the_resolved_contact() {
    let hub = TestHub::start(&[]).await;
    let [mut me, mut watcher] = ai_session(&hub).await;
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
        ("send hello to mom", "Mom", "hello"),
        ("TELL JOHN HELLO", "John", "HELLO"),
        // `tell` without `that`, an apostrophe, the `whatsapp` verb.
        (
            "please tell JOHN dinner is ready",
            "John",
            "dinner is ready",
        ),
        (
            "tell jane that I'm running late",
            "Jane",
            "I'm running late",
        ),
        // Typos and case: jon, jhon, JOHN all mean John; alcie is Alice.
        ("send jon a message saying typo", "John", "typo"),
        ("tell jhon that transposed", "John", "transposed"),
        ("please message JOHN saying caps", "John", "caps"),
        ("whatsapp alcie are you there", "Alice", "are you there"),
    ];
    for (text, contact, message) in sends {
        let r = assert_ai_send(&mut me, text, contact, message).await;
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
        assert_eq!(ev["message_id"], r["content"]["result"]["message_id"]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reply_goes_to_the_sessions_last_contact() {
    let hub = TestHub::start(&[]).await;
    let [mut me, mut watcher] = ai_session(&hub).await;
    // A fresh session has no last contact to reply to.
    let r = me.request(ai_command("reply hi")).await;
    assert_eq!(r["response_type"], "whatsapp_ai_command_result");
    assert_eq!(r["content"]["success"], false, "{r}");
    assert_eq!(r["content"]["code"], "unparseable_command");
    assert_quiet(&mut watcher, "nothing sent").await;
    // The last contact is the last one an AI command sent to...
    assert_ai_send(&mut me, "tell jon that first", "John", "first").await;
    assert_ai_send(&mut me, "reply sounds good", "John", "sounds good").await;
    assert_ai_send(&mut me, "tell maria that switching", "Maria", "switching").await;
    assert_ai_send(
        &mut me,
        "reply to the last contact saying ok then",
        "Maria",
        "ok then",
    )
    .await;
    // ...or a plain whatsapp_command.
    let r = me.request(send_cmd("mom", "hey")).await;
    assert_eq!(r["content"]["success"], true, "{r}");
    assert_ai_send(&mut me, "respond: ok", "Mom", "ok").await;
    let r = me.request(send_cmd("bob", "hey")).await;
    assert_eq!(r["content"]["success"], true, "{r}");
    assert_ai_send(&mut me, "reply how are you?", "Bob", "how are you?").await;
    for expected in [
        "first",
        "sounds good",
        "switching",
        "ok then",
        "hey",
        "ok",
        "hey",
        "how are you?",
    ] {
        assert_eq!(
            watcher.recv_type("message_event").await["message"],
            expected
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ai_history_phrasings_read_the_contacts_history() {
    let hub = TestHub::start(&[]).await;
    let [mut me, _watcher] = ai_session(&hub).await;
    for text in ["one", "two", "three"] {
        let r = me.request(send_cmd("john", text)).await;
        assert_eq!(r["content"]["success"], true, "{r}");
    }
    me.request(send_cmd("jane", "not john's")).await;
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
    assert_eq!(texts, ["one", "two", "three"]);
    let r = me
        .request(ai_command("read the last 2 messages from jon"))
        .await;
    assert_eq!(
        r["content"]["interpretation"],
        json!({"action": "get_history", "contact": "John", "limit": 2}),
        "{r}"
    );
    assert_eq!(r["content"]["result"]["count"], 2);
    assert_eq!(r["content"]["result"]["messages"][0]["message"], "two");
    assert_eq!(r["content"]["result"]["messages"][1]["message"], "three");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ai_list_contacts_phrasings_list_every_contact() {
    let hub = TestHub::start(&[]).await;
    let [mut me, mut watcher] = ai_session(&hub).await;
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
    assert_quiet(&mut watcher, "listing sends nothing").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_ambiguous_or_unparseable_ai_commands_send_nothing() {
    let hub = TestHub::start(&[]).await;
    let [mut me, mut watcher] = ai_session(&hub).await;
    // Unknown name: success:false with every contact as candidate.
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
    let r = me.request(ai_command("send j a message saying hi")).await;
    assert_eq!(r["type"], "response");
    assert_eq!(r["content"]["success"], false);
    assert_eq!(r["content"]["code"], "ambiguous_contact", "{r}");
    assert_eq!(names(&r["content"]["candidates"]), ["John", "Jane"]);
    // Not understood, empty text included.
    let r = me.request(ai_command("what is the meaning of life")).await;
    let c = &r["content"];
    assert_eq!(c["success"], false);
    assert_eq!(c["code"], "unparseable_command");
    assert_eq!(c["interpretation"]["action"], "unknown");
    assert!(c["error"].as_str().is_some_and(|e| !e.is_empty()));
    let r = me.request(ai_command("")).await;
    assert_eq!(r["content"]["success"], false, "{r}");
    assert_eq!(r["content"]["code"], "unparseable_command", "{r}");
    assert_quiet(&mut watcher, "failed commands send nothing").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_given_context_is_used_instead_of_the_sessions() {
    let hub = TestHub::start(&[]).await;
    let [mut me, _watcher] = ai_session(&hub).await;
    assert_ai_send(&mut me, "tell john that first", "John", "first").await;
    // Its last contact replaces the session's...
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
    // ...its contact list is the only one the interpretation may use...
    let r = me
        .request(
            json!({"type": "whatsapp_ai_command", "command": "tell jane that hi",
            "context": {"contact_list": ["Bob", "John"]}}),
        )
        .await;
    assert_eq!(r["content"]["code"], "contact_not_found", "{r}");
    assert_eq!(names(&r["content"]["candidates"]), ["Bob", "John"]);
    // ...names resolve against it only: "jo" is ambiguous in it, though
    // the session has a single John...
    let r = me
        .request(
            json!({"type": "whatsapp_ai_command", "command": "send jo a message saying hi",
            "context": {"contact_list": ["John", {"name": "Joanna", "phone": "+1"}]}}),
        )
        .await;
    assert_eq!(r["content"]["code"], "ambiguous_contact", "{r}");
    assert_eq!(names(&r["content"]["candidates"]), ["John", "Joanna"]);
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
    // What it sent moves the session's own last contact: Alice now.
    let r = me.request(ai_command("reply and again")).await;
    assert_eq!(r["content"]["interpretation"]["contact"], "Alice", "{r}");
}

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
    let hub = TestHub::start(&["--contacts-file", file.to_str().expect("utf-8")]).await;
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn default_history_is_the_newest_twenty_and_the_store_keeps_history_limit() {
    let hub = TestHub::start(&["--history-limit", "25"]).await;
    let (mut a, _) = WsClient::register(&hub.ws_url(), "hist", "a").await;
    for i in 0..30 {
        let r = a
            .request(ws_command(
                json!({"action":"send","contact":"bob","message":format!("m{i}")}),
            ))
            .await;
        assert_eq!(r["content"]["success"], true, "{r}");
    }
    let r = a
        .request(ws_command(json!({"action":"get_history","contact":"bob"})))
        .await;
    let texts: Vec<String> = r["content"]["messages"]
        .as_array()
        .map(|m| {
            m.iter()
                .filter_map(|e| e["message"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    let expected: Vec<String> = (10..30).map(|i| format!("m{i}")).collect();
    assert_eq!(texts, expected);
    let r = a
        .request(ws_command(
            json!({"action":"get_history","contact":"bob","limit":500}),
        ))
        .await;
    assert_eq!(r["content"]["count"], 25, "HISTORY_LIMIT caps what is kept");
    assert_eq!(r["content"]["messages"][0]["message"], "m5");
}

/// Every kind of answer echoes its `request_id` (the values themselves:
/// `register_ping_commands_ai_and_broadcast`); ping needs no registration.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_kind_of_answer_echoes_its_request_id() {
    let hub = TestHub::start(&["--instance-id", "proto"]).await;
    let (mut a, _) = WsClient::register(&hub.ws_url(), "echo", "a").await;
    let (mut b, _) = WsClient::register(&hub.ws_url(), "echo", "b").await;
    a.recv_type("client_joined").await;

    // Ping without request_id, and before registering.
    let mut fresh = WsClient::connect(&hub.ws_url()).await;
    fresh.send_json(json!({"type":"ping"})).await;
    assert_eq!(fresh.recv().await["type"], "pong");

    // Every kind of answer echoes the id it was asked with.
    let asks = [
        (ws_command(json!({"action":"list_contacts"})), "response"),
        (ai_command("list contacts"), "response"),
        (json!({"type":"ai_request","prompt":"x"}), "response"),
        (json!({"type":"broadcast","payload":1}), "response"),
        (json!({"type":"nope"}), "error"),
        (json!({"type":"ai_request"}), "error"),
        (json!({"type":"register"}), "error"),
    ];
    for (i, (mut ask, ty)) in asks.into_iter().enumerate() {
        let rid = format!("echo-{i}");
        ask["request_id"] = json!(rid);
        a.send_json(ask.clone()).await;
        let answer = a.answer_to(&rid, &ask).await;
        assert_eq!(answer["type"], ty, "{ask} → {answer}");
    }
    // The broadcast with a request_id was acknowledged, and reached b
    // without the id.
    let ev = b.recv_type("broadcast").await;
    assert!(ev.get("request_id").is_none(), "{ev}");
}

/// Sends `frame`, expects exactly one error with `code` (and `request_id`
/// echoed as `rid`), then proves the connection still works.
async fn expect_error(c: &mut WsClient, frame: &str, code: &str, rid: Option<&str>) -> Value {
    c.send_text(frame).await;
    let err = c.recv().await;
    assert_eq!(err["type"], "error", "{frame} → {err}");
    assert_eq!(err["code"], code, "{frame} → {err}");
    assert!(
        err["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{frame} → {err}"
    );
    match rid {
        Some(rid) => assert_eq!(err["request_id"], rid, "{frame} → {err}"),
        None => assert!(err.get("request_id").is_none(), "{frame} → {err}"),
    }
    let pending = barrier(c).await;
    assert!(
        pending.is_empty(),
        "one error per bad frame, and the connection answers a ping after {frame}: {pending:?}"
    );
    err
}

/// A hub whose rate limit is far above what the bad-input tests send.
async fn bad_input_hub() -> TestHub {
    TestHub::start(&[
        "--rate-limit-per-sec",
        "10000",
        "--rate-limit-burst",
        "10000",
    ])
    .await
}

/// Sends every case through [`expect_error`], then asserts that each code
/// was counted once per case in `hub_errors_total` (each test has its own
/// hub).
async fn expect_errors(hub: &TestHub, c: &mut WsClient, cases: &[(&str, &str, Option<&str>)]) {
    for (frame, code, rid) in cases {
        expect_error(c, frame, code, *rid).await;
    }
    assert_error_counts(hub, cases.iter().map(|(_, code, _)| *code)).await;
}

async fn assert_error_counts<'a>(hub: &TestHub, codes: impl Iterator<Item = &'a str>) {
    let mut expected: std::collections::BTreeMap<&str, f64> = Default::default();
    for code in codes {
        *expected.entry(code).or_default() += 1.0;
    }
    let body = metrics_text(hub).await;
    for (code, n) in expected {
        let series = format!("hub_errors_total{{code=\"{code}\"}}");
        assert_eq!(metric_value(&body, &series), Some(n), "{series}");
    }
}

/// `peer` got nothing of the bad input, and `c` is still its registered
/// self: its next command runs and reaches `peer`.
async fn assert_nothing_leaked(peer: &mut WsClient, c: &mut WsClient, by: &str) {
    let pending = barrier(peer).await;
    assert!(
        pending.is_empty(),
        "bad input leaked to the session: {pending:?}"
    );
    let r = c.request(send_cmd("john", "still here")).await;
    assert_eq!(r["content"]["success"], true, "{r}");
    assert_eq!(peer.recv_type("message_event").await["by"], by);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn before_registering_only_ping_and_register_are_accepted() {
    let hub = bad_input_hub().await;
    let mut c = WsClient::connect(&hub.ws_url()).await;
    expect_errors(
        &hub,
        &mut c,
        &[
            (
                r#"{"type":"whatsapp_command","request_id":"n1","command":{"action":"list_contacts"}}"#,
                "not_registered",
                Some("n1"),
            ),
            (
                r#"{"type":"whatsapp_ai_command","request_id":"n2","command":"list contacts"}"#,
                "not_registered",
                Some("n2"),
            ),
            (
                r#"{"type":"ai_request","request_id":"n3","prompt":"hi"}"#,
                "not_registered",
                Some("n3"),
            ),
            (
                r#"{"type":"broadcast","request_id":"n4","payload":1}"#,
                "not_registered",
                Some("n4"),
            ),
            (
                r#"{"type":"execute_result","request_id":"n5","content":{}}"#,
                "not_registered",
                Some("n5"),
            ),
            (
                r#"{"type":"contacts_update","request_id":"n6","contacts":[]}"#,
                "not_registered",
                Some("n6"),
            ),
            (
                r#"{"type":"incoming_message","request_id":"n7","contact":"a","message":"b"}"#,
                "not_registered",
                Some("n7"),
            ),
            // Parse errors come before the registration check.
            ("{nope", "invalid_json", None),
            (r#""just a string""#, "invalid_message", None),
            (r#"{"request_id":"x1"}"#, "missing_field", Some("x1")),
            (
                r#"{"type":5,"request_id":"x2"}"#,
                "invalid_field",
                Some("x2"),
            ),
            (
                r#"{"type":"ping","request_id":{"a":1}}"#,
                "invalid_field",
                None,
            ),
        ],
    )
    .await;
    // Ping is answered, unregistered.
    assert_eq!(c.request(json!({"type": "ping"})).await["type"], "pong");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_registration_is_refused_joins_nobody_and_may_be_retried() {
    let hub = bad_input_hub().await;
    let url = hub.ws_url();
    let [mut peer] = join_session(&url, "bad", ["peer"]).await;
    let mut c = WsClient::connect(&url).await;
    let long = "x".repeat(129);
    let long_id =
        json!({"type": "register", "client_id": long, "session": "bad", "request_id": "long"})
            .to_string();
    let long_session = json!({"type": "register", "session": long}).to_string();
    expect_errors(
        &hub,
        &mut c,
        &[
            (
                r#"{"type":"register","client_id":"   "}"#,
                "invalid_field",
                None,
            ),
            (
                r#"{"type":"register","client_id":"a\u0007b"}"#,
                "invalid_field",
                None,
            ),
            (r#"{"type":"register","session":""}"#, "invalid_field", None),
            (
                r#"{"type":"register","session":"a\u0007b"}"#,
                "invalid_field",
                None,
            ),
            (
                r#"{"type":"register","client_id":42,"request_id":"x5"}"#,
                "invalid_field",
                Some("x5"),
            ),
            (
                r#"{"type":"register","capabilities":"whatsapp","request_id":"x6"}"#,
                "invalid_field",
                Some("x6"),
            ),
            (&long_id, "invalid_field", Some("long")),
            (&long_session, "invalid_field", None),
        ],
    )
    .await;
    assert_quiet(&mut peer, "failed registrations join nobody").await;
    // The connection is still unregistered, free to retry.
    let conf = c
        .request(json!({"type": "register", "client_id": "x", "session": "bad"}))
        .await;
    assert_eq!(conf["type"], "registration_confirmed", "{conf}");
    assert_eq!(c.recv().await["type"], "contact_list_broadcast");
    assert_eq!(peer.recv().await["type"], "client_joined");
    assert_nothing_leaked(&mut peer, &mut c, "x").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_envelopes_get_their_codes() {
    let hub = bad_input_hub().await;
    let [mut peer, mut c] = join_session(&hub.ws_url(), "bad", ["peer", "x"]).await;
    let cases: &[(&str, &str, Option<&str>)] = &[
        // Not JSON / not an object: no request_id can be read.
        ("{nope", "invalid_json", None),
        ("", "invalid_json", None),
        (r#"{"type":"ping""#, "invalid_json", None),
        ("[1,2,3]", "invalid_message", None),
        ("\"ping\"", "invalid_message", None),
        ("42", "invalid_message", None),
        ("null", "invalid_message", None),
        // Envelope.
        (
            r#"{"prompt":"x","request_id":"r1"}"#,
            "missing_field",
            Some("r1"),
        ),
        (
            r#"{"type":null,"request_id":"r2"}"#,
            "invalid_field",
            Some("r2"),
        ),
        (
            r#"{"type":5,"request_id":"r3"}"#,
            "invalid_field",
            Some("r3"),
        ),
        (
            r#"{"type":"ping","request_id":{"a":1}}"#,
            "invalid_field",
            None,
        ),
        (r#"{"type":"ping","request_id":[1]}"#, "invalid_field", None),
        (
            r#"{"type":"ping","request_id":true}"#,
            "invalid_field",
            None,
        ),
        (
            r#"{"type":"teleport","request_id":"r4"}"#,
            "unknown_type",
            Some("r4"),
        ),
        (
            r#"{"type":"execute","request_id":8}"#,
            "unknown_type",
            Some("8"),
        ),
        (
            r#"{"type":"PING","request_id":"r5"}"#,
            "unknown_type",
            Some("r5"),
        ),
    ];
    expect_errors(&hub, &mut c, cases).await;
    // Every one of them is counted as an invalid message received.
    assert_eq!(
        hub.metric("hub_ws_messages_received_total{type=\"invalid\"}")
            .await,
        Some(cases.len() as f64)
    );
    // Unknown fields are ignored, not errors.
    let pong = c
        .request(json!({"type": "ping", "extra": {"anything": [1]}}))
        .await;
    assert_eq!(pong["type"], "pong");
    assert_nothing_leaked(&mut peer, &mut c, "x").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_commands_get_their_codes_and_run_nothing() {
    let hub = bad_input_hub().await;
    let [mut peer, mut c] = join_session(&hub.ws_url(), "bad", ["peer", "x"]).await;
    expect_errors(
        &hub,
        &mut c,
        &[
            // whatsapp_command.
            (
                r#"{"type":"whatsapp_command","request_id":"w1"}"#,
                "missing_field",
                Some("w1"),
            ),
            (
                r#"{"type":"whatsapp_command","request_id":"w2","command":"send"}"#,
                "invalid_field",
                Some("w2"),
            ),
            (
                r#"{"type":"whatsapp_command","request_id":"w3","command":{}}"#,
                "missing_field",
                Some("w3"),
            ),
            (
                r#"{"type":"whatsapp_command","request_id":"w4","command":{"action":7}}"#,
                "invalid_field",
                Some("w4"),
            ),
            (
                r#"{"type":"whatsapp_command","request_id":"w5","command":{"action":"dance"}}"#,
                "unknown_action",
                Some("w5"),
            ),
            (
                r#"{"type":"whatsapp_command","request_id":"w6","command":{"action":"send","contact":"bob"}}"#,
                "missing_field",
                Some("w6"),
            ),
            (
                r#"{"type":"whatsapp_command","request_id":"w7","command":{"action":"send","message":"hi"}}"#,
                "missing_field",
                Some("w7"),
            ),
            (
                r#"{"type":"whatsapp_command","request_id":"w8","command":{"action":"send","contact":" ","message":"hi"}}"#,
                "invalid_field",
                Some("w8"),
            ),
            (
                r#"{"type":"whatsapp_command","request_id":"w9","command":{"action":"send","contact":"bob","message":""}}"#,
                "invalid_field",
                Some("w9"),
            ),
            (
                r#"{"type":"whatsapp_command","request_id":"w10","command":{"action":"send","contact":"bob","message":5}}"#,
                "invalid_field",
                Some("w10"),
            ),
            (
                r#"{"type":"whatsapp_command","request_id":"w11","command":{"action":"get_history"}}"#,
                "missing_field",
                Some("w11"),
            ),
            (
                r#"{"type":"whatsapp_command","request_id":"w12","command":{"action":"get_history","contact":"bob","limit":0}}"#,
                "invalid_field",
                Some("w12"),
            ),
            (
                r#"{"type":"whatsapp_command","request_id":"w13","command":{"action":"get_history","contact":"bob","limit":501}}"#,
                "invalid_field",
                Some("w13"),
            ),
            (
                r#"{"type":"whatsapp_command","request_id":"w14","command":{"action":"get_history","contact":"bob","limit":-1}}"#,
                "invalid_field",
                Some("w14"),
            ),
            (
                r#"{"type":"whatsapp_command","request_id":"w15","command":{"action":"get_history","contact":"bob","limit":"5"}}"#,
                "invalid_field",
                Some("w15"),
            ),
            // whatsapp_ai_command, ai_request, broadcast.
            (
                r#"{"type":"whatsapp_ai_command","request_id":"a1"}"#,
                "missing_field",
                Some("a1"),
            ),
            (
                r#"{"type":"whatsapp_ai_command","request_id":"a2","command":{"action":"send"}}"#,
                "invalid_field",
                Some("a2"),
            ),
            (
                r#"{"type":"whatsapp_ai_command","request_id":"a3","command":["send"]}"#,
                "invalid_field",
                Some("a3"),
            ),
            (
                r#"{"type":"whatsapp_ai_command","request_id":"a4","command":"reply hi","context":"bob"}"#,
                "invalid_field",
                Some("a4"),
            ),
            (
                r#"{"type":"whatsapp_ai_command","request_id":"a5","command":"reply hi","context":{"contact_list":"bob"}}"#,
                "invalid_field",
                Some("a5"),
            ),
            (
                r#"{"type":"ai_request","request_id":"a6"}"#,
                "missing_field",
                Some("a6"),
            ),
            (
                r#"{"type":"ai_request","request_id":"a7","prompt":42}"#,
                "invalid_field",
                Some("a7"),
            ),
            (
                r#"{"type":"broadcast","request_id":"b1"}"#,
                "missing_field",
                Some("b1"),
            ),
        ],
    )
    .await;
    // Nothing was sent or stored.
    let h = c.request(history_cmd("bob")).await;
    assert_eq!(h["content"]["count"], 0, "{h}");
    assert_nothing_leaked(&mut peer, &mut c, "x").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_only_messages_from_a_plain_client_are_refused() {
    let hub = bad_input_hub().await;
    let [mut peer, mut c] = join_session(&hub.ws_url(), "bad", ["peer", "x"]).await;
    expect_errors(
        &hub,
        &mut c,
        &[
            (
                r#"{"type":"execute_result","request_id":"x1"}"#,
                "missing_field",
                Some("x1"),
            ),
            // Without a request_id it cannot be matched.
            (
                r#"{"type":"execute_result","content":{}}"#,
                "missing_field",
                None,
            ),
            (
                r#"{"type":"execute_result","request_id":"call-nope","content":{}}"#,
                "unknown_request",
                Some("call-nope"),
            ),
            (
                r#"{"type":"execute_result","request_id":"call-nope2","content":{"success":true}}"#,
                "unknown_request",
                Some("call-nope2"),
            ),
            (
                r#"{"type":"contacts_update","request_id":"c1","contacts":["A"]}"#,
                "not_agent",
                Some("c1"),
            ),
            (
                r#"{"type":"incoming_message","request_id":"c2","contact":"A","message":"b"}"#,
                "not_agent",
                Some("c2"),
            ),
        ],
    )
    .await;
    assert_nothing_leaked(&mut peer, &mut c, "x").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registering_twice_is_refused_with_already_registered() {
    let hub = bad_input_hub().await;
    let [mut peer, mut c] = join_session(&hub.ws_url(), "bad", ["peer", "x"]).await;
    expect_errors(
        &hub,
        &mut c,
        &[
            (
                r#"{"type":"register","request_id":"again"}"#,
                "already_registered",
                Some("again"),
            ),
            (
                r#"{"type":"register","client_id":"other","session":"other"}"#,
                "already_registered",
                None,
            ),
        ],
    )
    .await;
    // The registration stands.
    assert_nothing_leaked(&mut peer, &mut c, "x").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_frames_are_refused_but_harmless() {
    let hub = bad_input_hub().await;
    let [mut peer, mut c] = join_session(&hub.ws_url(), "bad", ["peer", "x"]).await;
    c.send_binary(vec![0, 1, 2, 255]).await;
    let e = c.recv().await;
    assert_eq!(e["code"], "binary_not_supported", "{e}");
    assert_quiet(&mut c, "one error per binary frame").await;
    c.send_binary(br#"{"type":"ping"}"#.to_vec()).await;
    assert_eq!(c.recv().await["code"], "binary_not_supported");
    assert_quiet(&mut c, "binary JSON is still binary").await;
    assert_error_counts(&hub, ["binary_not_supported"; 2].into_iter()).await;
    assert_nothing_leaked(&mut peer, &mut c, "x").await;
}
