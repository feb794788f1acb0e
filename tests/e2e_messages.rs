//! The WebSocket protocol message by message, against the real hub binary:
//! registration variants, every client message type and the shape of its
//! answer, `request_id` echoing, and the rules AI phrasings. Complements
//! tests/standalone.rs (which walks through the same types end to end).

mod common;

use std::time::Duration;

use common::{HubProcess, WsClient};
use serde_json::{Value, json};

async fn hub() -> HubProcess {
    HubProcess::start(&["--instance-id", "proto"], &[]).await
}

fn names(list: &Value) -> Vec<String> {
    list.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|c| c["name"].as_str().or(c.as_str()).map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

fn ids(list: &Value) -> Vec<String> {
    let mut ids: Vec<String> = list
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|c| c["client_id"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    ids.sort();
    ids
}

const BUILTIN: [&str; 6] = ["John", "Jane", "Alice", "Bob", "Maria", "Mom"];

fn ai(text: &str) -> Value {
    json!({"type":"whatsapp_ai_command","command":text})
}

fn cmd(command: Value) -> Value {
    json!({"type":"whatsapp_command","command":command})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn register_variants_and_what_follows() {
    let hub = hub().await;
    let url = hub.ws_url();

    // client_id only: session "default", name defaults to the id.
    let (a, conf) =
        WsClient::register_with(&url, json!({"type":"register","client_id":"only-id"})).await;
    assert_eq!(conf["client_id"], "only-id");
    assert_eq!(conf["client_name"], "only-id");
    assert_eq!(conf["session"], "default");
    assert_eq!(conf["instance"], "proto");
    assert_eq!(conf["agent"], false);
    assert_eq!(ids(&conf["clients"]), ["only-id"]);
    assert!(conf.get("request_id").is_none(), "{conf}");
    let contacts = a.registration_contacts();
    assert_eq!(names(&contacts["contacts"]), BUILTIN);
    assert_eq!(contacts["total_count"], 6);
    assert_eq!(contacts["contacts"][0]["phone"], "+15550100001");
    assert!(contacts["timestamp"].as_u64().is_some_and(|t| t > 0));

    // session only: a generated `client-` + 12 hex digits id.
    let (_b, conf) =
        WsClient::register_with(&url, json!({"type":"register","session":"only-session"})).await;
    let id = conf["client_id"].as_str().unwrap_or_default().to_string();
    let hex = id.strip_prefix("client-").unwrap_or_default();
    assert!(
        hex.len() == 12 && hex.chars().all(|c| c.is_ascii_hexdigit()),
        "generated id {id}"
    );
    assert_eq!(conf["session"], "only-session");
    assert_eq!(ids(&conf["clients"]), vec![id]);

    // Everything: name, capabilities other than whatsapp, request_id, and
    // fields the hub does not know (ignored).
    let (_c, conf) = WsClient::register_with(
        &url,
        json!({"type":"register","client_id":"c","session":"default","client_name":"Cee",
               "capabilities":["web"],"request_id":"reg-1","colour":"blue"}),
    )
    .await;
    assert_eq!(conf["client_name"], "Cee");
    assert_eq!(conf["request_id"], "reg-1");
    assert_eq!(conf["agent"], false);
    assert_eq!(ids(&conf["clients"]), ["c", "only-id"]);
    let me = conf["clients"]
        .as_array()
        .and_then(|a| a.iter().find(|c| c["client_id"] == "c"))
        .cloned()
        .unwrap_or_default();
    assert_eq!(me["capabilities"], json!(["web"]));
    assert_eq!(me["instance"], "proto");

    // A blank name counts as absent.
    let (_d, conf) = WsClient::register_with(
        &url,
        json!({"type":"register","client_id":"d","client_name":"   "}),
    )
    .await;
    assert_eq!(conf["client_name"], "d");

    // Ids of exactly 128 characters are accepted.
    let long = "x".repeat(128);
    let (_e, conf) = WsClient::register_with(
        &url,
        json!({"type":"register","client_id":long,"session":long}),
    )
    .await;
    assert_eq!(conf["session"].as_str().map(str::len), Some(128));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whatsapp_command_content_shapes() {
    let hub = hub().await;
    let (mut a, _) = WsClient::register(&hub.ws_url(), "shapes", "a").await;

    let r = a
        .request(cmd(
            json!({"action":"send","contact":"MARIA","message":"first","extra":"ignored"}),
        ))
        .await;
    assert_eq!(r["type"], "response", "{r}");
    assert_eq!(r["response_type"], "whatsapp_command_result");
    let c = &r["content"];
    assert_eq!(c["success"], true, "{r}");
    assert_eq!(c["contact"], "Maria");
    assert_eq!(c["message"], "first");
    assert_eq!(c["executed_by"], "simulated");
    assert!(
        c["message_id"]
            .as_str()
            .is_some_and(|m| m.starts_with("sim."))
    );
    assert!(c["timestamp"].as_u64().is_some_and(|t| t > 0));
    // The sender sees its own message_event too, before the response.
    let ev = a.recv_type("message_event").await;
    assert_eq!(ev["message_id"], c["message_id"]);
    assert_eq!(ev["direction"], "outgoing");
    assert_eq!(ev["by"], "a");
    assert!(ev.get("request_id").is_none(), "events carry no request_id");

    for text in ["second", "third"] {
        a.request(cmd(
            json!({"action":"send","contact":"maria","message":text}),
        ))
        .await;
    }

    let r = a.request(cmd(json!({"action":"list_contacts"}))).await;
    let c = &r["content"];
    assert_eq!(c["success"], true);
    assert_eq!(c["total_count"], 6);
    assert_eq!(names(&c["contacts"]), BUILTIN);
    assert_eq!(
        c["contacts"][3],
        json!({"name":"Bob","phone":"+15550100004"})
    );

    // get_history: the newest `limit`, oldest first.
    let r = a
        .request(cmd(
            json!({"action":"get_history","contact":"maria","limit":2}),
        ))
        .await;
    let c = &r["content"];
    assert_eq!(c["success"], true, "{r}");
    assert_eq!(c["contact"], "Maria");
    assert_eq!(c["count"], 2);
    let texts: Vec<&str> = c["messages"]
        .as_array()
        .map(|m| m.iter().filter_map(|e| e["message"].as_str()).collect())
        .unwrap_or_default();
    assert_eq!(texts, ["second", "third"]);
    let entry = &c["messages"][0];
    for field in [
        "direction",
        "contact",
        "message",
        "message_id",
        "timestamp",
        "by",
    ] {
        assert!(
            entry.get(field).is_some(),
            "history entry lacks {field}: {entry}"
        );
    }
    // Without limit: all three (default 20); limit 500 is allowed.
    let r = a
        .request(cmd(json!({"action":"get_history","contact":"maria"})))
        .await;
    assert_eq!(r["content"]["count"], 3);
    let r = a
        .request(cmd(
            json!({"action":"get_history","contact":"Maria","limit":500}),
        ))
        .await;
    assert_eq!(r["content"]["count"], 3);
    // A contact with no messages.
    let r = a
        .request(cmd(json!({"action":"get_history","contact":"mom"})))
        .await;
    assert_eq!(r["content"]["messages"], json!([]));

    // Unknown and ambiguous names are command failures inside a response.
    let r = a
        .request(cmd(
            json!({"action":"send","contact":"zebedee","message":"x"}),
        ))
        .await;
    assert_eq!(r["type"], "response", "{r}");
    assert_eq!(r["content"]["success"], false);
    assert_eq!(r["content"]["code"], "contact_not_found");
    assert!(
        r["content"]["error"]
            .as_str()
            .is_some_and(|e| !e.is_empty())
    );
    assert_eq!(names(&r["content"]["candidates"]), BUILTIN);
    let r = a
        .request(cmd(json!({"action":"get_history","contact":"j"})))
        .await;
    assert_eq!(r["content"]["code"], "ambiguous_contact", "{r}");
    assert_eq!(names(&r["content"]["candidates"]), ["John", "Jane"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn default_history_is_the_newest_twenty_and_the_store_keeps_history_limit() {
    let hub = HubProcess::start(&["--history-limit", "25"], &[]).await;
    let (mut a, _) = WsClient::register(&hub.ws_url(), "hist", "a").await;
    for i in 0..30 {
        let r = a
            .request(cmd(
                json!({"action":"send","contact":"bob","message":format!("m{i}")}),
            ))
            .await;
        assert_eq!(r["content"]["success"], true, "{r}");
    }
    let r = a
        .request(cmd(json!({"action":"get_history","contact":"bob"})))
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
        .request(cmd(
            json!({"action":"get_history","contact":"bob","limit":500}),
        ))
        .await;
    assert_eq!(r["content"]["count"], 25, "HISTORY_LIMIT caps what is kept");
    assert_eq!(r["content"]["messages"][0]["message"], "m5");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ai_command_phrasings() {
    let hub = hub().await;
    let (mut a, _) = WsClient::register(&hub.ws_url(), "ai", "a").await;

    // (text, contact, message) for every send phrasing.
    let sends = [
        (
            "send john a message saying hello there",
            "John",
            "hello there",
        ),
        ("Send a message to Alice saying Hi!", "Alice", "Hi!"),
        (
            "tell jane that I'm running late",
            "Jane",
            "I'm running late",
        ),
        ("message bob: see you at 5", "Bob", "see you at 5"),
        ("text maria \"call me\"", "Maria", "call me"),
        ("send hello to mom", "Mom", "hello"),
        ("whatsapp alcie are you there", "Alice", "are you there"),
        (
            "please tell JOHN dinner is ready",
            "John",
            "dinner is ready",
        ),
    ];
    for (text, contact, message) in sends {
        let r = a.request(ai(text)).await;
        assert_eq!(r["type"], "response", "{text}: {r}");
        assert_eq!(r["response_type"], "whatsapp_ai_command_result");
        let c = &r["content"];
        assert_eq!(c["success"], true, "{text}: {r}");
        assert_eq!(c["provider"], "rules");
        assert_eq!(
            c["interpretation"],
            json!({"action":"send","contact":contact,"message":message}),
            "{text}"
        );
        assert_eq!(c["result"]["success"], true);
        assert_eq!(c["result"]["contact"], contact);
        assert_eq!(c["result"]["executed_by"], "simulated");
    }

    // The last send was to John: replies go there.
    for text in [
        "reply ok",
        "reply to the last contact saying ok",
        "respond: ok",
    ] {
        let r = a.request(ai(text)).await;
        assert_eq!(
            r["content"]["interpretation"]["contact"], "John",
            "{text}: {r}"
        );
        assert_eq!(r["content"]["interpretation"]["message"], "ok", "{text}");
    }
    // A plain whatsapp_command also moves the last contact.
    a.request(cmd(
        json!({"action":"send","contact":"bob","message":"hey"}),
    ))
    .await;
    let r = a.request(ai("reply how are you?")).await;
    assert_eq!(r["content"]["interpretation"]["contact"], "Bob", "{r}");

    // History and contact list.
    let r = a.request(ai("show history with bob")).await;
    assert_eq!(
        r["content"]["interpretation"],
        json!({"action":"get_history","contact":"Bob"})
    );
    let msgs = r["content"]["result"]["messages"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    // "message bob: see you at 5", "hey" and "how are you?".
    assert_eq!(msgs.len(), 3, "{r}");
    let r = a.request(ai("read the last 1 messages from bob")).await;
    assert_eq!(r["content"]["interpretation"]["limit"], 1, "{r}");
    assert_eq!(
        r["content"]["result"]["messages"][0]["message"],
        "how are you?"
    );
    for text in ["list contacts", "show me my contacts", "contacts"] {
        let r = a.request(ai(text)).await;
        assert_eq!(
            r["content"]["interpretation"]["action"], "list_contacts",
            "{text}"
        );
        assert_eq!(r["content"]["result"]["total_count"], 6);
    }

    // Failures: ambiguous, unknown, unparseable, empty.
    let r = a.request(ai("send j a message saying hi")).await;
    assert_eq!(r["type"], "response");
    assert_eq!(r["content"]["success"], false);
    assert_eq!(r["content"]["code"], "ambiguous_contact", "{r}");
    assert_eq!(names(&r["content"]["candidates"]), ["John", "Jane"]);
    let r = a.request(ai("tell zebedee that hi")).await;
    assert_eq!(r["content"]["code"], "contact_not_found", "{r}");
    assert_eq!(names(&r["content"]["candidates"]), BUILTIN);
    for text in ["what is the weather like", ""] {
        let r = a.request(ai(text)).await;
        assert_eq!(r["content"]["success"], false, "{text:?}: {r}");
        assert_eq!(r["content"]["code"], "unparseable_command", "{text:?}");
    }
    // None of the failures sent anything.
    let r = a
        .request(cmd(json!({"action":"get_history","contact":"bob"})))
        .await;
    assert_eq!(r["content"]["count"], 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ai_command_uses_the_given_context() {
    let hub = hub().await;
    let (mut a, _) = WsClient::register(&hub.ws_url(), "ctx", "a").await;
    a.request(cmd(json!({"action":"send","contact":"jane","message":"x"})))
        .await;

    // last_contact alone overrides the session's (Jane).
    let r = a
        .request(
            json!({"type":"whatsapp_ai_command","command":"reply hi mom",
                        "context":{"last_contact":"Mom"}}),
        )
        .await;
    assert_eq!(r["content"]["interpretation"]["contact"], "Mom", "{r}");
    assert_eq!(r["content"]["success"], true);

    // A contact list makes names resolve against it: "jo" is ambiguous in
    // it, though the session has a single John.
    let r = a
        .request(
            json!({"type":"whatsapp_ai_command","command":"send jo a message saying hi",
                        "context":{"contact_list":["John",{"name":"Joanna","phone":"+1"}]}}),
        )
        .await;
    assert_eq!(r["content"]["code"], "ambiguous_contact", "{r}");
    assert_eq!(names(&r["content"]["candidates"]), ["John", "Joanna"]);
    // Without a last_contact in a context that has a list, "reply" has no
    // one to go to even though the session has one.
    let r = a
        .request(json!({"type":"whatsapp_ai_command","command":"reply hi",
                        "context":{"contact_list":["John"]}}))
        .await;
    assert_eq!(r["content"]["code"], "unparseable_command", "{r}");
    // Without any context the session's last contact is used: Mom, since
    // the reply above went to her.
    let r = a.request(ai("reply hi")).await;
    assert_eq!(r["content"]["interpretation"]["contact"], "Mom", "{r}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ai_request_ping_and_request_id_echo() {
    let hub = hub().await;
    let (mut a, _) = WsClient::register(&hub.ws_url(), "echo", "a").await;
    let (mut b, _) = WsClient::register(&hub.ws_url(), "echo", "b").await;
    a.recv_type("client_joined").await;

    let r = a
        .request(
            json!({"type":"ai_request","prompt":"tell bob that lunch is at noon",
                        "context":{"anything":[1,2]}}),
        )
        .await;
    assert_eq!(r["type"], "response");
    assert_eq!(r["response_type"], "ai_response");
    assert_eq!(r["content"]["provider"], "rules");
    let text = r["content"]["text"].as_str().unwrap_or_default();
    assert!(
        text.contains("bob") && text.contains("lunch is at noon"),
        "{r}"
    );
    let r = a
        .request(json!({"type":"ai_request","prompt":"hello?"}))
        .await;
    assert!(r["content"]["text"].as_str().is_some_and(|t| !t.is_empty()));

    // request_id: strings and numbers (as strings); null is absent.
    for (rid, echoed) in [
        (json!("p-1"), json!("p-1")),
        (json!(42), json!("42")),
        (json!(-1.5), json!("-1.5")),
    ] {
        a.send_json(json!({"type":"ping","request_id":rid})).await;
        let pong = a.recv().await;
        assert_eq!(pong["type"], "pong");
        assert_eq!(pong["request_id"], echoed);
        assert!(pong["timestamp"].as_u64().is_some_and(|t| t > 0));
    }
    a.send_json(json!({"type":"ping","request_id":null})).await;
    let pong = a.recv().await;
    assert_eq!(pong["type"], "pong");
    assert!(pong.get("request_id").is_none(), "{pong}");
    // Ping without request_id, and before registering.
    let mut fresh = WsClient::connect(&hub.ws_url()).await;
    fresh.send_json(json!({"type":"ping"})).await;
    assert_eq!(fresh.recv().await["type"], "pong");

    // Every kind of answer echoes the id it was asked with.
    let asks = [
        (cmd(json!({"action":"list_contacts"})), "response"),
        (ai("list contacts"), "response"),
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broadcast_reaches_every_other_client_in_order() {
    let hub = hub().await;
    let url = hub.ws_url();
    let (mut a, _) = WsClient::register(&url, "bc", "a").await;
    let (mut b, _) = WsClient::register(&url, "bc", "b").await;
    let (mut c, _) = WsClient::register(&url, "bc", "c").await;
    a.recv_type("client_joined").await;
    a.recv_type("client_joined").await;
    b.recv_type("client_joined").await;

    // Any JSON payload, unchanged; without request_id no acknowledgement.
    let payloads = [
        json!({"nested":{"list":[1,"two",null,true]}}),
        json!("just a string"),
        json!([1, 2, 3]),
        json!(null),
        json!(3.25),
    ];
    for p in &payloads {
        a.send_json(json!({"type":"broadcast","payload":p})).await;
    }
    for other in [&mut b, &mut c] {
        for p in &payloads {
            let ev = other.recv().await;
            assert_eq!(ev["type"], "broadcast", "{ev}");
            assert_eq!(ev["from"], "a");
            assert_eq!(&ev["payload"], p);
            assert!(ev["timestamp"].as_u64().is_some_and(|t| t > 0));
        }
    }
    // With a request_id: broadcast_sent to the sender, nothing else.
    let ack = a
        .request(json!({"type":"broadcast","payload":"acked"}))
        .await;
    assert_eq!(ack["type"], "response");
    assert_eq!(ack["response_type"], "broadcast_sent");
    assert_eq!(ack["content"]["success"], true);
    a.expect_no("broadcast", Duration::from_millis(200)).await;

    // Order is kept per sender (30 stays inside the default burst of 40).
    for i in 0..30 {
        b.send_json(json!({"type":"broadcast","payload":{"seq":i}}))
            .await;
    }
    for other in [&mut a, &mut c] {
        let mut seen = Vec::new();
        while seen.len() < 30 {
            let ev = other.recv_type("broadcast").await;
            if ev["from"] == "b" {
                seen.push(ev["payload"]["seq"].as_i64().unwrap_or(-1));
            }
        }
        assert_eq!(seen, (0..30).collect::<Vec<i64>>());
    }
}
