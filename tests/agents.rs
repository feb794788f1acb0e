//! Agents, against an in-process hub: a client registered with the
//! `whatsapp` capability executes the session's commands (`execute` /
//! `execute_result`), reports contacts and incoming messages; timeouts,
//! late answers, disconnects, fallback to the simulated connector, and the
//! agent role changing hands (newest wins, replaced by a plain client).

use crate::support;

use serde_json::{Value, json};
use support::*;

/// The next `execute` an agent receives (other frames are skipped).
async fn next_execute(agent: &mut WsClient) -> (String, Value) {
    let exec = agent.recv_type("execute").await;
    assert_eq!(keys(&exec), ["command", "request_id", "type"], "{exec}");
    let id = exec["request_id"].as_str().expect("call id").to_string();
    assert!(id.starts_with("call-"), "{exec}");
    (id, exec["command"].clone())
}

async fn answer(agent: &mut WsClient, call_id: &str, content: Value) {
    agent
        .send_json(json!({"type": "execute_result", "request_id": call_id, "content": content}))
        .await;
}

/// A hub with `user` and `watcher` in session "s", then `phone` as its
/// agent; nothing pending for any of them.
async fn agent_session() -> (TestHub, WsClient, WsClient, WsClient) {
    let hub = TestHub::start(&["--instance-id", "agent-hub"]).await;
    let url = hub.ws_url();
    let mut members = join_session(&url, "s", ["user", "watcher"]).await;
    let agent = join_agent(&url, "s", "phone", &mut members).await;
    let [user, watcher] = members;
    (hub, user, watcher, agent)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registering_an_agent_announces_agent_changed_to_everyone() {
    let hub = TestHub::start(&["--instance-id", "agent-hub"]).await;
    let url = hub.ws_url();
    let [mut user, mut watcher] = join_session(&url, "s", ["user", "watcher"]).await;
    // Registering as agent: confirmed with agent:true; everyone, the agent
    // included, gets agent_changed naming it.
    let (mut agent, conf) = register_agent(&url, "s", "phone").await;
    assert_eq!(conf["agent"], true);
    let changed = agent.recv().await;
    assert_eq!(
        without_volatile(&changed),
        json!({"type": "agent_changed", "client_id": "phone", "instance": "agent-hub"})
    );
    for c in [&mut user, &mut watcher] {
        let joined = c.recv().await;
        assert_eq!(joined["type"], "client_joined");
        assert_eq!(joined["capabilities"], json!(["whatsapp"]));
        assert_eq!(
            without_volatile(&c.recv().await),
            without_volatile(&changed)
        );
    }
    let (_, summary) = http_get_json(&hub, "/api/v1/sessions/s").await;
    assert_eq!(
        summary["agent"],
        json!({"client_id": "phone", "instance": "agent-hub"})
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_send_executed_by_the_agent_is_recorded_and_broadcast_before_the_response() {
    let (_hub, mut user, mut watcher, mut agent) = agent_session().await;
    // Forwarded with the contact resolved, the agent's content is the
    // response, and a successful send is recorded and broadcast (before
    // the response).
    user.send_json(json!({"type": "whatsapp_command", "request_id": "q1",
        "command": {"action": "send", "contact": "bob", "message": "hi bob"}}))
        .await;
    let (call, command) = next_execute(&mut agent).await;
    assert_eq!(
        command,
        json!({"action": "send", "contact": "Bob", "message": "hi bob"})
    );
    let content = json!({"success": true, "contact": "Bob", "message": "hi bob",
                         "message_id": "wamid.1", "executed_by": "phone-app"});
    answer(&mut agent, &call, content.clone()).await;
    let (events, resp) = until_answer(&mut user, "q1").await;
    assert_eq!(resp["type"], "response", "{resp}");
    assert_eq!(resp["response_type"], "whatsapp_command_result");
    assert_eq!(resp["content"], content, "the agent's content, unchanged");
    assert_eq!(events.len(), 1, "{events:?}");
    let expected_event = json!({"type": "message_event", "direction": "outgoing",
        "contact": "Bob", "message": "hi bob", "message_id": "wamid.1", "by": "user",
        "executed_by": "agent"});
    assert_eq!(
        without_volatile(&events[0]),
        without_volatile(&expected_event)
    );
    assert_eq!(events[0]["message_id"], "wamid.1");
    for c in [&mut watcher, &mut agent] {
        let ev = c.recv_type("message_event").await;
        assert_eq!(ev["message_id"], "wamid.1");
        assert_eq!(ev["by"], "user");
    }

    // An unknown name is forwarded as typed; no message_id → agent.…
    user.send_json(json!({"type": "whatsapp_command", "request_id": "q2",
        "command": {"action": "send", "contact": "Grandpa Joe", "message": "hello"}}))
        .await;
    let (call, command) = next_execute(&mut agent).await;
    assert_eq!(command["contact"], "Grandpa Joe");
    answer(
        &mut agent,
        &call,
        json!({"success": true, "contact": "Grandpa Joe"}),
    )
    .await;
    let (events, resp) = until_answer(&mut user, "q2").await;
    assert_eq!(resp["content"]["success"], true);
    assert!(
        events[0]["message_id"]
            .as_str()
            .is_some_and(|m| m.starts_with("agent.")),
        "{events:?}"
    );
    agent.recv_type("message_event").await;
    watcher.recv_type("message_event").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_send_from_the_agent_is_passed_through_and_not_recorded() {
    let (_hub, mut user, mut watcher, mut agent) = agent_session().await;
    user.send_json(json!({"type": "whatsapp_command", "request_id": "q3",
        "command": {"action": "send", "contact": "jane", "message": "lost"}}))
        .await;
    let (call, _) = next_execute(&mut agent).await;
    answer(
        &mut agent,
        &call,
        json!({"success": false, "error": "phone offline"}),
    )
    .await;
    let (events, resp) = until_answer(&mut user, "q3").await;
    assert!(
        events.is_empty(),
        "no message_event for a failed send: {events:?}"
    );
    assert_eq!(
        resp["content"],
        json!({"success": false, "error": "phone offline"})
    );
    assert_quiet(&mut watcher, "nothing recorded").await;
    assert_quiet(&mut agent, "nothing recorded").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_contacts_and_get_history_go_to_the_agent() {
    let (_hub, mut user, _watcher, mut agent) = agent_session().await;
    user.send_json(json!({"type": "whatsapp_command", "request_id": "q4",
        "command": {"action": "get_history", "contact": "JOHN", "limit": 3}}))
        .await;
    let (call, command) = next_execute(&mut agent).await;
    assert_eq!(
        command,
        json!({"action": "get_history", "contact": "John", "limit": 3})
    );
    answer(
        &mut agent,
        &call,
        json!({"success": true, "messages": [], "count": 0}),
    )
    .await;
    let (_, r) = until_answer(&mut user, "q4").await;
    assert_eq!(
        r["content"],
        json!({"success": true, "messages": [], "count": 0})
    );
    user.send_json(json!({"type": "whatsapp_command", "request_id": 5,
        "command": {"action": "list_contacts"}}))
        .await;
    let (call, command) = next_execute(&mut agent).await;
    assert_eq!(command, json!({"action": "list_contacts"}));
    answer(
        &mut agent,
        &call,
        json!({"success": true, "contacts": [{"name": "Real"}], "total_count": 1}),
    )
    .await;
    let (_, resp) = until_answer(&mut user, "5").await;
    assert_eq!(names(&resp["content"]["contacts"]), ["Real"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ai_command_is_interpreted_then_executed_by_the_agent() {
    let (_hub, mut user, _watcher, mut agent) = agent_session().await;
    user.send_json(json!({"type": "whatsapp_ai_command", "request_id": "q6",
        "command": "tell maria that via the phone"}))
        .await;
    let (call, command) = next_execute(&mut agent).await;
    assert_eq!(
        command,
        json!({"action": "send", "contact": "Maria", "message": "via the phone"})
    );
    let content = json!({"success": true, "contact": "Maria", "message_id": "wamid.6"});
    answer(&mut agent, &call, content.clone()).await;
    let (events, resp) = until_answer(&mut user, "q6").await;
    assert_eq!(resp["response_type"], "whatsapp_ai_command_result");
    assert_eq!(resp["content"]["success"], true, "{resp}");
    assert_eq!(resp["content"]["result"], content);
    assert_eq!(events[0]["message_id"], "wamid.6");
    assert_eq!(
        agent.recv_type("message_event").await["message_id"],
        "wamid.6"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agents_own_commands_are_executed_by_the_connector() {
    let (_hub, _user, _watcher, mut agent) = agent_session().await;
    let r = agent
        .request(send_cmd("alice", "from the agent itself"))
        .await;
    assert_eq!(r["content"]["executed_by"], "simulated", "{r}");
    let pending = barrier(&mut agent).await;
    assert!(
        pending.iter().all(|m| m["type"] == "message_event"),
        "no execute for the agent's own command: {pending:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_called_agent_may_answer_a_call_and_only_once() {
    let (_hub, mut user, mut watcher, mut agent) = agent_session().await;
    // No such call; no id at all.
    let e = agent
        .request(json!({"type": "execute_result", "content": {"success": true}}))
        .await;
    assert_eq!(e["code"], "unknown_request", "{e}");
    agent
        .send_json(json!({"type": "execute_result", "content": {}}))
        .await;
    let e = agent.recv_type("error").await;
    assert_eq!(e["code"], "missing_field", "{e}");
    // Someone else's answer to the agent's call.
    user.send_json(json!({"type": "whatsapp_command", "request_id": "q7",
        "command": {"action": "list_contacts"}}))
        .await;
    let (call, _) = next_execute(&mut agent).await;
    watcher
        .send_json(
            json!({"type": "execute_result", "request_id": call, "content": {"forged": true}}),
        )
        .await;
    let e = watcher.recv_type("error").await;
    assert_eq!(
        (e["code"].as_str(), e["request_id"].as_str()),
        (Some("unknown_request"), Some(call.as_str())),
        "only the agent it was sent to may answer"
    );
    answer(&mut agent, &call, json!({"success": true, "n": 7})).await;
    let (_, resp) = until_answer(&mut user, "q7").await;
    assert_eq!(resp["content"], json!({"success": true, "n": 7}));
    // Answered twice.
    answer(&mut agent, &call, json!({"success": true})).await;
    let e = agent.recv_type("error").await;
    assert_eq!(
        (e["code"].as_str(), e["request_id"].as_str()),
        (Some("unknown_request"), Some(call.as_str())),
        "answered twice"
    );
    assert_quiet(&mut user, "one answer per request").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn contacts_update_is_acknowledged_broadcast_and_resolves_names() {
    let (_hub, mut user, mut watcher, mut agent) = agent_session().await;
    let ack = agent
        .request(json!({"type": "contacts_update",
            "contacts": [{"name": "Grandma", "phone": "+1"}, "Bob", {"name": "John Smith"}]}))
        .await;
    assert_eq!(ack["type"], "response", "{ack}");
    assert_eq!(ack["response_type"], "ack");
    assert_eq!(ack["content"], json!({"success": true}));
    let expected =
        json!([{"name": "Grandma", "phone": "+1"}, {"name": "Bob"}, {"name": "John Smith"}]);
    for c in [&mut user, &mut watcher, &mut agent] {
        let list = c.recv_type("contact_list_broadcast").await;
        assert_eq!(list["contacts"], expected);
        assert_eq!(list["total_count"], 3);
    }
    // Without request_id: no ack, still broadcast.
    agent
        .send_json(json!({"type": "contacts_update", "contacts": ["Grandma", "Bob", "John Smith"]}))
        .await;
    let pending = barrier(&mut agent).await;
    assert!(
        pending
            .iter()
            .all(|m| m["type"] == "contact_list_broadcast"),
        "{pending:?}"
    );
    assert_eq!(
        names(&user.recv_type("contact_list_broadcast").await["contacts"]),
        ["Grandma", "Bob", "John Smith"]
    );
    user.send_json(json!({"type": "whatsapp_command", "request_id": "q8",
        "command": {"action": "send", "contact": "grandma", "message": "see you sunday"}}))
        .await;
    let (call, command) = next_execute(&mut agent).await;
    assert_eq!(
        command["contact"], "Grandma",
        "resolved against the new list"
    );
    answer(
        &mut agent,
        &call,
        json!({"success": true, "message_id": "wamid.8"}),
    )
    .await;
    let (events, _) = until_answer(&mut user, "q8").await;
    assert_eq!(events[0]["message_id"], "wamid.8", "{events:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_incoming_message_is_recorded_broadcast_and_becomes_the_last_contact() {
    let (hub, mut user, mut watcher, mut agent) = agent_session().await;
    // The phone's contacts, then something outgoing to another contact.
    agent
        .send_json(json!({"type": "contacts_update", "contacts": ["Grandma", "Bob"]}))
        .await;
    for c in [&mut user, &mut watcher, &mut agent] {
        c.recv_type("contact_list_broadcast").await;
    }
    let r = agent.request(send_cmd("bob", "earlier")).await;
    assert_eq!(r["content"]["success"], true, "{r}");
    let ack = agent
        .request(json!({"type": "incoming_message", "contact": "Grandma", "message": "bring cake"}))
        .await;
    assert_eq!(ack["response_type"], "ack", "{ack}");
    for c in [&mut user, &mut watcher, &mut agent] {
        let ev = loop {
            let ev = c.recv_type("message_event").await;
            if ev["direction"] == "incoming" {
                break ev;
            }
        };
        assert_eq!(
            without_volatile(&ev),
            json!({"type": "message_event", "direction": "incoming", "contact": "Grandma",
                   "message": "bring cake", "by": "Grandma", "executed_by": "agent"})
        );
        assert!(
            ev["message_id"]
                .as_str()
                .is_some_and(|m| m.starts_with("in."))
        );
    }
    // It is in the shared history (read by the agent's own get_history,
    // which the connector serves) and makes Grandma the last contact.
    let h = agent.request(history_cmd("grandma")).await;
    let texts: Vec<&str> = h["content"]["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .map(|m| m["message"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(texts, ["bring cake"], "{h}");
    let (_, summary) = http_get_json(&hub, "/api/v1/sessions/s").await;
    assert_eq!(summary["last_contact"], "Grandma");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reports_from_anyone_but_the_agent_or_malformed_are_refused_without_effect() {
    let (_hub, mut user, _watcher, mut agent) = agent_session().await;
    // Reports from anyone but the agent: not_agent.
    for body in [
        json!({"type": "contacts_update", "contacts": ["X"]}),
        json!({"type": "incoming_message", "contact": "X", "message": "fake"}),
    ] {
        let e = user.request(body.clone()).await;
        assert_eq!(e["type"], "error", "{body}: {e}");
        assert_eq!(e["code"], "not_agent", "{body}: {e}");
    }
    // Bad reports: invalid_field or missing_field.
    for body in [
        json!({"type": "contacts_update", "contacts": ["ok", " "]}),
        json!({"type": "contacts_update", "contacts": "Grandma"}),
        json!({"type": "incoming_message", "contact": "Grandma", "message": ""}),
        json!({"type": "incoming_message", "contact": "", "message": "who?"}),
    ] {
        let e = agent.request(body.clone()).await;
        assert_eq!(e["code"], "invalid_field", "{body}: {e}");
    }
    for body in [
        json!({"type": "contacts_update"}),
        json!({"type": "incoming_message", "contact": "Grandma"}),
    ] {
        let e = agent.request(body.clone()).await;
        assert_eq!(e["code"], "missing_field", "{body}: {e}");
    }
    assert_quiet(&mut user, "rejected reports must have no effect").await;
    assert_quiet(&mut agent, "rejected reports must have no effect").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_agent_times_out_and_late_answers_are_still_recorded() {
    let hub = TestHub::start(&["--agent-timeout-ms", "300"]).await;
    let url = hub.ws_url();
    let (mut user, _) = WsClient::register(&url, "t", "user").await;
    let (mut agent, _) = register_agent(&url, "t", "phone").await;
    // The role is in effect once agent_changed is out.
    agent.recv_type("agent_changed").await;

    for (rid, body) in [
        ("t1", send_cmd("john", "anyone there?")),
        ("t2", ai_command("show history with jane")),
    ] {
        let mut body = body;
        body["request_id"] = json!(rid);
        user.send_json(body).await;
        let (call, _) = next_execute(&mut agent).await;
        // The agent says nothing: the requester gets agent_timeout, no
        // fallback to the connector.
        let (events, err) = until_answer(&mut user, rid).await;
        assert_eq!(err["type"], "error", "{err}");
        assert_eq!(err["code"], "agent_timeout", "{err}");
        assert!(
            events.iter().all(|m| m["type"] != "message_event"),
            "a timed-out send must not be recorded: {events:?}"
        );
        // Its late answer is still accepted: a late send was carried out,
        // so it is recorded and announced; anything else changes nothing.
        answer(
            &mut agent,
            &call,
            json!({"success": true, "contact": "John", "message_id": format!("late-{rid}")}),
        )
        .await;
        if rid == "t1" {
            let ev = user.recv_type("message_event").await;
            assert_eq!(ev["message_id"], "late-t1", "{ev}");
            assert_eq!(ev["executed_by"], "agent", "{ev}");
            assert_eq!(ev["message"], "anyone there?", "{ev}");
        }
    }
    // Over REST the same timeout is a 504 with {code, message}.
    let rest_call = tokio::spawn({
        let url = hub.http_url("/api/v1/sessions/t/commands");
        async move {
            let r = reqwest::Client::new()
                .post(url)
                .json(
                    &json!({"command": {"action": "send", "contact": "john", "message": "rest?"}}),
                )
                .send()
                .await
                .expect("POST");
            (r.status().as_u16(), r.json::<Value>().await.expect("json"))
        }
    });
    next_execute(&mut agent).await;
    let (status, body) = rest_call.await.expect("join");
    assert_eq!(status, 504, "{body}");
    assert_eq!(body["code"], "agent_timeout", "{body}");
    let pending = barrier(&mut user).await;
    assert!(
        pending
            .iter()
            .all(|m| m["type"] != "message_event" && m["type"] != "response"),
        "{pending:?}"
    );
    let (_, summary) = http_get_json(&hub, "/api/v1/sessions/t").await;
    assert_eq!(
        summary["last_contact"], "John",
        "only the late send was recorded"
    );
    let body = metrics_text(&hub).await;
    assert!(
        metric_value(&body, "hub_agent_calls_total{outcome=\"timeout\"}") >= Some(3.0),
        "{body}"
    );
    // The agent is still the agent.
    user.send_json(json!({"type": "whatsapp_command", "request_id": "t3",
        "command": {"action": "list_contacts"}}))
        .await;
    let (call, _) = next_execute(&mut agent).await;
    let (_, summary) = http_get_json(&hub, "/api/v1/sessions/t").await;
    assert_eq!(
        summary["agent"]["client_id"], "phone",
        "a timeout does not take the role away"
    );
    answer(&mut agent, &call, json!({"success": true})).await;
    until_answer(&mut user, "t3").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_disconnects_mid_call_then_the_connector_takes_over() {
    let hub = TestHub::start(&[]).await;
    let url = hub.ws_url();
    let (mut user, _) = WsClient::register(&url, "d", "user").await;
    let (mut watcher, _) = WsClient::register(&url, "d", "watcher").await;

    // Twice: a clean close, then a connection that just drops.
    for clean in [true, false] {
        let (mut agent, _) = register_agent(&url, "d", "phone").await;
        assert_eq!(user.recv_type("agent_changed").await["client_id"], "phone");
        assert_eq!(
            watcher.recv_type("agent_changed").await["client_id"],
            "phone"
        );
        let rid = format!("pending-{clean}");
        user.send_json(json!({"type": "whatsapp_command", "request_id": rid,
            "command": {"action": "send", "contact": "bob", "message": "in flight"}}))
            .await;
        next_execute(&mut agent).await;
        if clean {
            agent.close().await;
        } else {
            drop(agent);
        }
        // The requester: agent_disconnected (no retry through the
        // connector: the agent may have sent it), plus the role change and
        // the departure, in some order.
        let (mut err, mut changed, mut left) = (None, None, None);
        while err.is_none() || changed.is_none() || left.is_none() {
            let m = user.recv().await;
            match m["type"].as_str() {
                Some("error") => err = Some(m),
                Some("agent_changed") => changed = Some(m),
                Some("client_left") => left = Some(m),
                _ => panic!("unexpected {m}"),
            }
        }
        let err = err.expect("error");
        assert_eq!(err["code"], "agent_disconnected", "{err}");
        assert_eq!(err["request_id"], rid.as_str());
        let changed = changed.expect("agent_changed");
        assert_eq!(changed["client_id"], Value::Null, "{changed}");
        assert_eq!(changed["instance"], Value::Null, "{changed}");
        assert_eq!(left.expect("client_left")["client_id"], "phone");
        let changed = watcher.recv_type("agent_changed").await;
        assert_eq!(changed["client_id"], Value::Null);

        // No agent: the simulated connector executes.
        let frames = send_and_collect(
            &mut user,
            send_cmd("bob", "via the connector"),
            &format!("after-{clean}"),
        )
        .await;
        let resp = frames.last().expect("answer");
        assert_eq!(resp["content"]["executed_by"], "simulated", "{resp}");
        assert_eq!(resp["content"]["success"], true);
        assert!(frames.iter().any(|m| m["type"] == "message_event"));
        assert_eq!(
            watcher.recv_type("message_event").await["message"],
            "via the connector"
        );
        let (_, summary) = http_get_json(&hub, "/api/v1/sessions/d").await;
        assert_eq!(summary["agent"], Value::Null);
    }
    let h = user.request(history_cmd("bob")).await;
    assert_eq!(
        h["content"]["count"], 2,
        "only the connector's sends were recorded: {h}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_newest_agent_wins() {
    let hub = TestHub::start(&["--instance-id", "two-agents"]).await;
    let url = hub.ws_url();
    let (mut old, _) = register_agent(&url, "n", "phone-old").await;
    assert_eq!(
        old.recv_type("agent_changed").await["client_id"],
        "phone-old"
    );
    let (mut user, _) = WsClient::register(&url, "n", "user").await;
    let (mut new, conf) = register_agent(&url, "n", "phone-new").await;
    assert_eq!(conf["agent"], true);
    for c in [&mut old, &mut user, &mut new] {
        let changed = c.recv_type("agent_changed").await;
        assert_eq!(
            without_volatile(&changed),
            json!({"type": "agent_changed", "client_id": "phone-new", "instance": "two-agents"})
        );
    }
    let (_, summary) = http_get_json(&hub, "/api/v1/sessions/n").await;
    assert_eq!(summary["agent"]["client_id"], "phone-new");

    // execute goes to the newer one only.
    user.send_json(json!({"type": "whatsapp_command", "request_id": "w1",
        "command": {"action": "send", "contact": "john", "message": "to the new phone"}}))
        .await;
    let (call, command) = next_execute(&mut new).await;
    assert_eq!(command["contact"], "John");
    answer(
        &mut new,
        &call,
        json!({"success": true, "message_id": "wamid.new"}),
    )
    .await;
    let (_, resp) = until_answer(&mut user, "w1").await;
    assert_eq!(resp["content"]["message_id"], "wamid.new");
    let pending = barrier(&mut old).await;
    assert!(
        pending.iter().all(|m| m["type"] != "execute"),
        "the replaced agent got a command: {pending:?}"
    );
    // The replaced agent may no longer report; the new one may.
    for body in [
        json!({"type": "contacts_update", "contacts": ["Stale"]}),
        json!({"type": "incoming_message", "contact": "John", "message": "stale"}),
    ] {
        let e = old.request(body.clone()).await;
        assert_eq!(e["code"], "not_agent", "{body}: {e}");
    }
    let ack = new
        .request(json!({"type": "contacts_update", "contacts": ["John", "Fresh"]}))
        .await;
    assert_eq!(ack["response_type"], "ack");
    assert_eq!(
        names(&user.recv_type("contact_list_broadcast").await["contacts"]),
        ["John", "Fresh"]
    );
    // The old agent leaving changes nothing about the role.
    old.close().await;
    assert_eq!(
        user.recv_type("client_left").await["client_id"],
        "phone-old"
    );
    let pending = barrier(&mut user).await;
    assert!(
        pending.iter().all(|m| m["type"] != "agent_changed"),
        "{pending:?}"
    );
    user.send_json(json!({"type": "whatsapp_command", "request_id": "w2",
        "command": {"action": "list_contacts"}}))
        .await;
    let (call, _) = next_execute(&mut new).await;
    answer(&mut new, &call, json!({"success": true, "from": "new"})).await;
    assert_eq!(
        until_answer(&mut user, "w2").await.1["content"]["from"],
        "new"
    );
    // The current one leaving hands back to the connector.
    new.close().await;
    assert_eq!(
        user.recv_type("agent_changed").await["client_id"],
        Value::Null
    );
    let r = user
        .request(ws_command(json!({"action": "list_contacts"})))
        .await;
    assert_eq!(r["content"]["executed_by"], "simulated");
    assert_eq!(
        names(&r["content"]["contacts"]),
        ["John", "Fresh"],
        "the agent's contacts stay"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_replaced_by_a_plain_client_gives_up_the_role() {
    // A timeout longer than any wait here: only the hub's own reaction
    // can answer the pending call below.
    let hub = TestHub::start(&["--agent-timeout-ms", "60000"]).await;
    let url = hub.ws_url();
    let (mut user, _) = WsClient::register(&url, "r", "user").await;
    let (mut agent, _) = register_agent(&url, "r", "phone").await;
    user.recv_type("agent_changed").await;
    // A call is waiting for the agent when its connection is replaced.
    user.send_json(json!({"type": "whatsapp_command", "request_id": "pending",
        "command": {"action": "send", "contact": "bob", "message": "lost with the old connection"}}))
        .await;
    let (call, _) = next_execute(&mut agent).await;
    // The same client id registers again without the capability.
    let (mut phone, conf) = WsClient::register(&url, "r", "phone").await;
    assert_eq!(conf["agent"], false);
    assert_eq!(agent.expect_close().await, Some(4001));
    let mut seen: Vec<Value> = Vec::new();
    let has = |seen: &[Value], ty: &str| seen.iter().any(|m| m["type"] == ty);
    while !has(&seen, "agent_changed") || !has(&seen, "client_joined") || !has(&seen, "error") {
        seen.push(user.recv().await);
    }
    // The call went down with the connection it was sent to, as when an
    // agent disconnects.
    let err = seen.iter().find(|m| m["type"] == "error").expect("error");
    assert_eq!(
        (err["code"].as_str(), err["request_id"].as_str()),
        (Some("agent_disconnected"), Some("pending")),
        "{err}"
    );
    // The new, plain connection cannot answer the old connection's call.
    phone
        .send_json(
            json!({"type": "execute_result", "request_id": call, "content": {"success": true}}),
        )
        .await;
    assert_eq!(phone.recv_type("error").await["code"], "unknown_request");
    // Once the old connection is fully cleaned up, still no client_left.
    wait_metric(
        &hub,
        "hub_ws_connections_closed_total{reason=\"replaced\"}",
        1.0,
    )
    .await;
    seen.extend(barrier(&mut user).await);
    assert!(
        !has(&seen, "client_left"),
        "a replacement is not a departure: {seen:?}"
    );
    let changed = seen
        .iter()
        .find(|m| m["type"] == "agent_changed")
        .expect("changed");
    assert_eq!(changed["client_id"], Value::Null);
    let (_, summary) = http_get_json(&hub, "/api/v1/sessions/r").await;
    assert_eq!(summary["agent"], Value::Null);
    let members: Vec<&str> = summary["clients"]
        .as_array()
        .expect("clients")
        .iter()
        .filter_map(|c| c["client_id"].as_str())
        .collect();
    assert_eq!(members, ["user", "phone"], "{summary}");
    let r = user.request(send_cmd("john", "no agent now")).await;
    assert_eq!(r["content"]["executed_by"], "simulated", "{r}");

    // An agent reconnecting (same id, still an agent) keeps the role; what
    // was sent to its old connection fails the same way.
    let (mut user2, _) = WsClient::register(&url, "r2", "user").await;
    let (mut old, _) = register_agent(&url, "r2", "phone").await;
    user2.recv_type("agent_changed").await;
    user2
        .send_json(json!({"type": "whatsapp_command", "request_id": "p2",
            "command": {"action": "list_contacts"}}))
        .await;
    next_execute(&mut old).await;
    let (mut new, _) = register_agent(&url, "r2", "phone").await;
    assert_eq!(old.expect_close().await, Some(4001));
    let err = user2.recv_type("error").await;
    assert_eq!(
        (err["code"].as_str(), err["request_id"].as_str()),
        (Some("agent_disconnected"), Some("p2")),
        "{err}"
    );
    user2
        .send_json(json!({"type": "whatsapp_command", "request_id": "p3",
            "command": {"action": "list_contacts"}}))
        .await;
    let (call, _) = next_execute(&mut new).await;
    answer(&mut new, &call, json!({"success": true, "via": "new"})).await;
    assert_eq!(
        until_answer(&mut user2, "p3").await.1["content"]["via"],
        "new"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_role_changes_hands_as_documented() {
    let hub = TestHub::start(&[]).await;
    let url = hub.ws_url();
    let (mut user, _) = WsClient::register(&url, "ag", "user").await;
    let (mut first, conf) = register_agent(&url, "ag", "first").await;
    assert_eq!(conf["agent"], true);
    // agent_changed goes to everyone, the new agent included.
    assert_eq!(first.recv_type("agent_changed").await["client_id"], "first");
    assert_eq!(user.recv_type("agent_changed").await["client_id"], "first");

    let (mut second, _) = register_agent(&url, "ag", "second").await;
    for c in [&mut user, &mut first, &mut second] {
        let ev = c.recv_type("agent_changed").await;
        assert_eq!(ev["client_id"], "second");
        assert!(ev["instance"].is_string());
    }
    // The previous agent leaving changes nothing about the role.
    first.close().await;
    wait_connections(&hub, 2).await;
    let seen = user.flush().await;
    // (second's client_joined was skipped while waiting for agent_changed)
    assert_eq!(types(&seen), ["client_left"], "{seen:?}");
    assert_eq!(seen[0]["client_id"], "first");
    let rid = "via-second";
    user.send_json(json!({"type":"whatsapp_command","request_id":rid,"command":{"action":"get_history","contact":"mom","limit":3}}))
        .await;
    let exec = second.recv_type("execute").await;
    assert_eq!(
        exec["command"],
        json!({"action":"get_history","contact":"Mom","limit":3})
    );
    assert!(
        exec["request_id"]
            .as_str()
            .is_some_and(|r| r.starts_with("call-"))
    );
    // A failure is passed through unchanged, and nothing is recorded.
    let failure = json!({"success":false,"error":"phone offline","detail":{"battery":3}});
    second
        .send_json(
            json!({"type":"execute_result","request_id":exec["request_id"],"content":failure}),
        )
        .await;
    let r = user.answer_to(rid, &json!(rid)).await;
    assert_eq!(r["response_type"], "whatsapp_command_result");
    assert_eq!(r["content"], failure);

    // The agent's own commands are executed by the connector.
    let own = second
        .request(json!({"type":"whatsapp_command","command":{"action":"send","contact":"bob","message":"from the agent"}}))
        .await;
    assert_eq!(own["content"]["executed_by"], "simulated", "{own}");
    assert!(
        types(&second.flush().await)
            .iter()
            .all(|t| t == "message_event"),
        "no execute sent back to the agent itself"
    );

    // An AI command is forwarded with the resolved interpretation, and a
    // successful send is recorded and broadcast before the response.
    user.send_json(json!({"type":"whatsapp_ai_command","request_id":"ai-1","command":"tell maria that dinner at 8"}))
        .await;
    let exec = second.recv_type("execute").await;
    assert_eq!(
        exec["command"],
        json!({"action":"send","contact":"Maria","message":"dinner at 8"})
    );
    let answer =
        json!({"success":true,"contact":"Maria","message":"dinner at 8","message_id":"wamid.1"});
    second
        .send_json(
            json!({"type":"execute_result","request_id":exec["request_id"],"content":answer}),
        )
        .await;
    let frames = frames_until(&mut user, "ai-1").await;
    let ev = frames
        .iter()
        .find(|f| f["type"] == "message_event" && f["message_id"] == "wamid.1");
    assert!(ev.is_some_and(|e| e["by"] == "user"), "{frames:?}");
    let last = frames.last().cloned().unwrap_or_default();
    assert_eq!(last["response_type"], "whatsapp_ai_command_result");
    assert_eq!(last["content"]["result"], answer);
    assert_eq!(last["content"]["success"], true);
    assert_eq!(
        second.recv_type("message_event").await["message_id"],
        "wamid.1"
    );

    // The agent reconnects without the capability under the same id: the
    // role is released and commands go to the connector again.
    let (_plain, _) = WsClient::register(&url, "ag", "second").await;
    assert_eq!(second.expect_close().await, Some(4001));
    let ev = user.recv_type("agent_changed").await;
    assert!(ev["client_id"].is_null(), "{ev}");
    let r = user
        .request(json!({"type":"whatsapp_command","command":{"action":"list_contacts"}}))
        .await;
    assert_eq!(r["content"]["executed_by"], "simulated", "{r}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_timeout_is_not_kept_under_its_idempotency_key() {
    let hub = TestHub::start(&["--agent-timeout-ms", "300"]).await;
    let url = hub.ws_url();
    let (mut user, _) = WsClient::register(&url, "t", "user").await;
    let (mut agent, _) = register_agent(&url, "t", "phone").await;
    agent.recv_type("agent_changed").await;
    let keyed = json!({"type": "whatsapp_command", "idempotency_key": "retry-me",
        "command": {"action": "send", "contact": "john", "message": "are you back?"}});
    // The agent is busy: the first try times out.
    let mut first = keyed.clone();
    first["request_id"] = json!("first");
    user.send_json(first).await;
    next_execute(&mut agent).await;
    let (_, err) = until_answer(&mut user, "first").await;
    assert_eq!(err["code"], "agent_timeout", "{err}");
    // It is back: the retry with the same key runs (it is not the stored
    // timeout) and the agent's answer is the answer.
    let mut retry = keyed.clone();
    retry["request_id"] = json!("retry");
    user.send_json(retry).await;
    let (call, command) = next_execute(&mut agent).await;
    assert_eq!(command["message"], "are you back?");
    answer(
        &mut agent,
        &call,
        json!({"success": true, "contact": "John", "message_id": "wamid.back"}),
    )
    .await;
    let (_, answered) = until_answer(&mut user, "retry").await;
    assert_eq!(
        answered["content"]["message_id"], "wamid.back",
        "{answered}"
    );
    // That outcome is final: a third try replays it, the agent hears nothing.
    let mut third = keyed;
    third["request_id"] = json!("third");
    user.send_json(third).await;
    let (_, replayed) = until_answer(&mut user, "third").await;
    assert_eq!(
        replayed["content"]["message_id"], "wamid.back",
        "{replayed}"
    );
    agent
        .expect_no("execute", std::time::Duration::from_millis(300))
        .await;
}
