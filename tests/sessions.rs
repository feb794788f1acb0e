//! Sessions over real WebSockets, against an in-process hub: clients of one
//! session see each other's events (two and five clients), presence (join,
//! leave, a dropped socket), sessions never leak into each other,
//! broadcasts reach every other client in order, and the simulated
//! connector's auto-reply flows to everyone and into history, and a large
//! session's `registration_confirmed` lists at most 100 members with the
//! true total. (A reconnect
//! replacing the old connection is in tests/limits.rs, with the other
//! forced closes.)

use crate::support;

use std::time::Duration;

use serde_json::json;
use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_clients_see_each_others_events() {
    let hub = TestHub::start(&["--instance-id", "duo-hub"]).await;
    let url = hub.ws_url();
    let (mut a, conf) = WsClient::register(&url, "duo", "a").await;
    assert_eq!(ids(&conf["clients"]), ["a"]);
    let (mut b, conf) = WsClient::register(&url, "duo", "b").await;
    assert_eq!(ids(&conf["clients"]), ["a", "b"]);
    let joined = a.recv().await;
    assert_eq!(
        without_volatile(&joined),
        json!({"type": "client_joined", "client_id": "b", "client_name": "b",
               "instance": "duo-hub", "capabilities": []})
    );
    assert_quiet(&mut b, "a client is not told about its own join").await;

    // b's command: both see the event.
    let r = b.request(send_cmd("alice", "from b")).await;
    assert_eq!(r["content"]["success"], true);
    let ev_a = a.recv().await;
    let ev_b = b.recv().await;
    assert_eq!(ev_a, ev_b, "one event, the same for everyone");
    assert_eq!(
        without_volatile(&ev_a),
        json!({"type": "message_event", "direction": "outgoing", "contact": "Alice",
               "message": "from b", "by": "b", "executed_by": "simulated"})
    );
    // a's AI command: both see it.
    let r = a.request(ai_command("tell bob that from a")).await;
    assert_eq!(r["content"]["success"], true, "{r}");
    for c in [&mut a, &mut b] {
        let ev = c.recv().await;
        assert_eq!(
            (
                ev["type"].as_str(),
                ev["contact"].as_str(),
                ev["by"].as_str()
            ),
            (Some("message_event"), Some("Bob"), Some("a"))
        );
    }
    // Both read the same shared history.
    let ha = a.request(history_cmd("alice")).await;
    let hb = b.request(history_cmd("alice")).await;
    assert_eq!(ha["content"], hb["content"]);
    assert_eq!(ha["content"]["count"], 1);

    // a broadcasts; b gets it.
    a.send_json(json!({"type": "broadcast", "payload": {"cursor": 3}}))
        .await;
    let bc = b.recv().await;
    assert_eq!(
        (bc["type"].as_str(), bc["from"].as_str()),
        (Some("broadcast"), Some("a"))
    );
    assert_eq!(bc["payload"], json!({"cursor": 3}));

    // b leaves: a is told; b comes back: a is told again.
    b.close().await;
    let left = a.recv().await;
    assert_eq!(
        without_volatile(&left),
        json!({"type": "client_left", "client_id": "b", "client_name": "b",
               "instance": "duo-hub", "capabilities": []})
    );
    let (_b, conf) = WsClient::register(&url, "duo", "b").await;
    assert_eq!(ids(&conf["clients"]), ["a", "b"], "b left presence");
    assert_eq!(a.recv().await["type"], "client_joined");
    assert_quiet(&mut a, "nothing else").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_clients_share_one_session() {
    let hub = TestHub::start(&[]).await;
    let url = hub.ws_url();
    let mut team = Vec::new();
    for i in 0..5 {
        let (c, conf) = WsClient::register(&url, "five", &format!("m{i}")).await;
        let expected: Vec<String> = (0..=i).map(|j| format!("m{j}")).collect();
        assert_eq!(ids(&conf["clients"]), expected, "join order");
        team.push(c);
    }
    // Everyone was told about each later arrival, in order.
    for (i, c) in team.iter_mut().enumerate() {
        for j in i + 1..5 {
            let joined = c.recv().await;
            assert_eq!(joined["type"], "client_joined", "{joined}");
            assert_eq!(joined["client_id"], format!("m{j}"));
        }
        assert_quiet(c, "only later joins").await;
    }

    // Everyone sends at once; every client sees all five messages in the
    // same order (events of one instance are delivered in one order).
    let contacts = ["John", "Jane", "Alice", "Bob", "Maria"];
    for (i, c) in team.iter_mut().enumerate() {
        c.send_json(json!({"type": "whatsapp_command", "request_id": format!("go{i}"),
            "command": {"action": "send", "contact": contacts[i], "message": format!("hello from m{i}")}}))
            .await;
    }
    let mut orders = Vec::new();
    for (i, c) in team.iter_mut().enumerate() {
        let mut events = Vec::new();
        let mut answered = false;
        while events.len() < 5 || !answered {
            let m = c.recv().await;
            match m["type"].as_str() {
                Some("message_event") => events.push(m),
                Some("response") => {
                    assert_eq!(m["request_id"], format!("go{i}"));
                    assert_eq!(m["content"]["success"], true, "{m}");
                    answered = true;
                }
                _ => panic!("unexpected {m}"),
            }
        }
        let mut by: Vec<String> = events
            .iter()
            .map(|e| {
                format!(
                    "{}→{}",
                    e["by"].as_str().unwrap_or(""),
                    e["contact"].as_str().unwrap_or("")
                )
            })
            .collect();
        orders.push(
            events
                .iter()
                .map(|e| e["message_id"].clone())
                .collect::<Vec<_>>(),
        );
        by.sort();
        assert_eq!(
            by,
            ["m0→John", "m1→Jane", "m2→Alice", "m3→Bob", "m4→Maria"],
            "m{i} saw every message"
        );
    }
    for o in &orders[1..] {
        assert_eq!(o, &orders[0], "same order for every client");
    }

    // Each broadcasts once: each receives the four others', never its own.
    for (i, c) in team.iter_mut().enumerate() {
        c.send_json(json!({"type": "broadcast", "payload": {"i": i}}))
            .await;
    }
    for (i, c) in team.iter_mut().enumerate() {
        let mut from: Vec<String> = Vec::new();
        for _ in 0..4 {
            let b = c.recv_type("broadcast").await;
            assert_eq!(
                b["payload"]["i"],
                b["from"].as_str().unwrap_or("")[1..]
                    .parse::<u64>()
                    .unwrap_or(99)
            );
            from.push(b["from"].as_str().unwrap_or_default().to_string());
        }
        from.sort();
        let expected: Vec<String> = (0..5)
            .filter(|&j| j != i)
            .map(|j| format!("m{j}"))
            .collect();
        assert_eq!(from, expected, "m{i}");
        assert_quiet(c, "not its own broadcast").await;
    }

    // Leaving one by one: the remaining clients are told, in order.
    while team.len() > 1 {
        let gone = team.len() - 1;
        team.pop().expect("member").close().await;
        for c in team.iter_mut() {
            let left = c.recv().await;
            assert_eq!(left["type"], "client_left", "{left}");
            assert_eq!(left["client_id"], format!("m{gone}"));
        }
    }
    let (_late, conf) = WsClient::register(&url, "five", "late").await;
    assert_eq!(ids(&conf["clients"]), ["m0", "late"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_are_isolated() {
    let hub = TestHub::start(&[]).await;
    let url = hub.ws_url();
    // The same client id in two sessions is two clients (no replacement).
    let (mut red1, _) = WsClient::register(&url, "red", "same-id").await;
    let (mut red2, _) = WsClient::register(&url, "red", "red-2").await;
    let (mut blue1, conf) = WsClient::register(&url, "blue", "same-id").await;
    assert_eq!(ids(&conf["clients"]), ["same-id"], "only blue's members");
    let (mut blue2, _) = WsClient::register(&url, "blue", "blue-2").await;
    assert_eq!(red1.recv().await["client_id"], "red-2");
    assert_eq!(blue1.recv().await["client_id"], "blue-2");

    // Activity in red.
    red1.request(send_cmd("john", "red secret")).await;
    red2.request(ai_command("tell john that red again")).await;
    red1.send_json(json!({"type": "broadcast", "payload": "red only"}))
        .await;
    for expected in ["red secret", "red again"] {
        assert_eq!(red2.recv_type("message_event").await["message"], expected);
    }
    assert_eq!(red2.recv_type("broadcast").await["payload"], "red only");
    // Activity in blue.
    blue2.request(send_cmd("jane", "blue secret")).await;
    assert_eq!(
        blue1.recv_type("message_event").await["message"],
        "blue secret"
    );

    // No cross-talk: everything red produced was already delivered (red2
    // saw it), so a blue client would have it queued before the pong.
    for c in [&mut blue1, &mut blue2] {
        let pending = barrier(c).await;
        assert!(
            pending
                .iter()
                .all(|m| m["type"] == "message_event" && m["message"] == "blue secret"),
            "red leaked into blue: {pending:?}"
        );
    }
    red1.recv_type("message_event").await;
    red1.recv_type("message_event").await;
    for c in [&mut red1, &mut red2] {
        assert_quiet(c, "blue leaked into red").await;
    }

    // Separate histories.
    let h = blue1.request(history_cmd("john")).await;
    assert_eq!(h["content"]["messages"], json!([]), "{h}");
    let h = red2.request(history_cmd("john")).await;
    assert_eq!(h["content"]["count"], 2);
    let h = red2.request(history_cmd("jane")).await;
    assert_eq!(h["content"]["count"], 0);
    // Separate last contacts: "reply" goes to John in red, Jane in blue.
    let r = red1.request(ai_command("reply from red")).await;
    assert_eq!(r["content"]["interpretation"]["contact"], "John", "{r}");
    let r = blue1.request(ai_command("reply from blue")).await;
    assert_eq!(r["content"]["interpretation"]["contact"], "Jane", "{r}");
    // A session nobody used has no last contact.
    let (mut green, _) = WsClient::register(&url, "green", "g").await;
    let r = green.request(ai_command("reply anyone?")).await;
    assert_eq!(r["content"]["code"], "unparseable_command", "{r}");

    // Separate contacts: an agent's contact list in red stays in red.
    let (mut agent, _) = register_agent(&url, "red", "red-phone").await;
    agent.recv_type("agent_changed").await;
    let ack = agent
        .request(json!({"type": "contacts_update", "contacts": ["Only Red"]}))
        .await;
    assert_eq!(ack["response_type"], "ack", "{ack}");
    let list = red1.recv_type("contact_list_broadcast").await;
    assert_eq!(names(&list["contacts"]), ["Only Red"]);
    let r = blue1
        .request(ws_command(json!({"action": "list_contacts"})))
        .await;
    assert_eq!(names(&r["content"]["contacts"]), BUILTIN);
    // The agent executes red's commands only.
    let r = blue2.request(send_cmd("bob", "not via red's agent")).await;
    assert_eq!(r["content"]["executed_by"], "simulated", "{r}");
    let pending = barrier(&mut agent).await;
    assert!(
        pending.iter().all(|m| m["type"] != "execute"),
        "red's agent got blue's command: {pending:?}"
    );
    // Leaving is only announced in one's own session.
    red1.close().await;
    assert_eq!(red2.recv_type("client_left").await["client_id"], "same-id");
    let pending = barrier(&mut blue2).await;
    assert!(
        pending.iter().all(|m| m["type"] != "client_left"),
        "{pending:?}"
    );
    let (_, conf) = WsClient::register(&url, "blue", "blue-3").await;
    assert_eq!(ids(&conf["clients"]), ["same-id", "blue-2", "blue-3"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_reply_reaches_every_client_and_history() {
    let hub = TestHub::start(&[
        "--auto-reply",
        "{contact} got: {message}",
        "--auto-reply-delay-ms",
        "50",
    ])
    .await;
    let url = hub.ws_url();
    let (mut a, _) = WsClient::register(&url, "auto", "a").await;
    let (mut b, _) = WsClient::register(&url, "auto", "b").await;
    let (mut outsider, _) = WsClient::register(&url, "elsewhere", "o").await;
    a.recv_type("client_joined").await;

    let r = a.request(send_cmd("maria", "ping")).await;
    assert_eq!(r["content"]["success"], true);
    for c in [&mut a, &mut b] {
        let out = c.recv().await;
        assert_eq!(
            (out["direction"].as_str(), out["message"].as_str()),
            (Some("outgoing"), Some("ping")),
            "{out}"
        );
        let incoming = c.recv().await;
        assert_eq!(incoming["type"], "message_event", "{incoming}");
        assert_eq!(
            without_volatile(&incoming),
            json!({"type": "message_event", "direction": "incoming", "contact": "Maria",
                   "message": "Maria got: ping", "by": "Maria", "executed_by": "simulated"})
        );
        assert!(
            incoming["message_id"]
                .as_str()
                .is_some_and(|m| m.starts_with("in.")),
            "{incoming}"
        );
    }
    let h = b.request(history_cmd("maria")).await;
    let msgs: Vec<(String, String)> = h["content"]["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .map(|m| {
            (
                m["direction"].as_str().unwrap_or_default().to_string(),
                m["message"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    assert_eq!(
        msgs,
        [
            ("outgoing".to_string(), "ping".to_string()),
            ("incoming".to_string(), "Maria got: ping".to_string())
        ]
    );
    // The reply made Maria the last contact; replying to it is answered too.
    let r = b.request(ai_command("reply thanks")).await;
    assert_eq!(r["content"]["interpretation"]["contact"], "Maria", "{r}");
    for c in [&mut a, &mut b] {
        assert_eq!(c.recv().await["message"], "thanks");
        let incoming = c.recv().await;
        assert_eq!(
            (incoming["direction"].as_str(), incoming["message"].as_str()),
            (Some("incoming"), Some("Maria got: thanks"))
        );
    }
    assert_quiet(&mut outsider, "auto-replies stay in their session").await;
    let h = a.request(history_cmd("maria")).await;
    assert_eq!(h["content"]["count"], 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broadcast_reaches_every_other_client_in_order() {
    let hub = TestHub::start(&["--instance-id", "proto"]).await;
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_socket_is_a_departure() {
    let hub = TestHub::start(&[]).await;
    let (mut a, _) = WsClient::register(&hub.ws_url(), "drop", "a").await;
    let (b, _) = WsClient::register(&hub.ws_url(), "drop", "b").await;
    a.recv_type("client_joined").await;
    drop(b); // no close frame: the TCP connection just ends
    let left = a.recv_type("client_left").await;
    assert_eq!(left["client_id"], "b");
    assert_eq!(left["client_name"], "b");
    wait_connections(&hub, 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registration_confirmed_lists_at_most_100_members_with_the_total() {
    // More members than the list shows: raise MAX_CLIENTS_PER_SESSION (100).
    let hub = TestHub::start(&["--max-clients-per-session", "200"]).await;
    let url = hub.ws_url();
    let mut members = Vec::new();
    for i in 0..101 {
        let id = format!("m{i:03}");
        let (c, conf) = WsClient::register(&url, "crowd", &id).await;
        // Below the cap the list is complete, in join order.
        let expected: Vec<String> = (0..=i).map(|j| format!("m{j:03}")).collect();
        if i < 100 {
            assert_eq!(ids(&conf["clients"]), expected, "join {i}");
        }
        assert_eq!(conf["clients_total"], i + 1, "join {i}");
        members.push(c);
    }
    // The 101st: the first 100 members, and the true total.
    let (_last, conf) = WsClient::register(&url, "crowd", "late").await;
    let listed = ids(&conf["clients"]);
    assert_eq!(listed.len(), 100);
    let first_100: Vec<String> = (0..100).map(|j| format!("m{j:03}")).collect();
    assert_eq!(listed, first_100);
    assert_eq!(conf["clients_total"], 102);
    // Everyone already there is still told about the join.
    let joined = members[0].recv_type("client_joined").await;
    assert_eq!(joined["client_id"], "m001");
}

/// Presence is exact however registrations and departures interleave:
/// every client learns of every other member exactly once — listed in its
/// `registration_confirmed` or announced by one `client_joined` later,
/// never both, never neither — and of each departure by one `client_left`
/// (never of one it did not know). 90 clients register at once, then
/// half of them leave while 45 new ones register (tests/support/presence.rs).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_joins_and_leaves_tell_each_member_about_each_other_exactly_once() {
    let hub = TestHub::start(&[]).await;
    check_presence_exactly_once(&[hub.ws_url()], &hub, "rush", 90).await;
}
