//! Standalone mode end to end: the real hub binary with no outside service,
//! driven by real WebSocket clients.

mod common;

use std::time::Duration;

use common::{HubProcess, WsClient};
use serde_json::{Value, json};

async fn hub(args: &[&str]) -> HubProcess {
    HubProcess::start(args, &[]).await
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_message_type_round_trips() {
    let hub = hub(&["--instance-id", "solo"]).await;

    // register without client_id or session: generated id, session "default".
    let mut anon = WsClient::connect(&hub.ws_url()).await;
    anon.send_json(json!({"type":"register"})).await;
    let conf = anon.recv().await;
    assert_eq!(conf["type"], "registration_confirmed");
    assert_eq!(conf["session"], "default");
    assert_eq!(conf["instance"], "solo");
    assert!(
        conf["client_id"]
            .as_str()
            .unwrap_or_default()
            .starts_with("client-")
    );
    let contacts = anon.recv().await;
    assert_eq!(contacts["type"], "contact_list_broadcast");
    assert_eq!(contacts["total_count"], 6);

    let (mut a, conf) = WsClient::register(&hub.ws_url(), "s1", "alice").await;
    assert_eq!(conf["client_id"], "alice");
    assert_eq!(conf["session"], "s1");

    // ping → pong, request_id echoed (numbers come back as strings).
    a.send_json(json!({"type":"ping","request_id":7})).await;
    let pong = a.recv().await;
    assert_eq!(pong["type"], "pong");
    assert_eq!(pong["request_id"], "7");

    // whatsapp_command: send, list_contacts, get_history.
    let sent = a
        .request(json!({"type":"whatsapp_command","command":{"action":"send","contact":"john","message":"Hello!"}}))
        .await;
    assert_eq!(sent["type"], "response");
    assert_eq!(sent["response_type"], "whatsapp_command_result");
    let c = &sent["content"];
    assert_eq!(
        (
            c["success"].as_bool(),
            c["contact"].as_str(),
            c["message"].as_str()
        ),
        (Some(true), Some("John"), Some("Hello!"))
    );
    assert!(c["message_id"].as_str().is_some());
    let list = a
        .request(json!({"type":"whatsapp_command","command":{"action":"list_contacts"}}))
        .await;
    assert_eq!(list["content"]["total_count"], 6);
    let hist = a
        .request(json!({"type":"whatsapp_command","command":{"action":"get_history","contact":"JOHN","limit":5}}))
        .await;
    assert_eq!(hist["content"]["messages"][0]["message"], "Hello!");
    assert_eq!(hist["content"]["messages"][0]["direction"], "outgoing");

    // whatsapp_ai_command in several phrasings.
    let ai = |text: &str| json!({"type":"whatsapp_ai_command","command":text});
    let r = a
        .request(ai("tell jane that the meeting moved to 3pm"))
        .await;
    assert_eq!(r["response_type"], "whatsapp_ai_command_result");
    assert_eq!(r["content"]["success"], true, "{r}");
    assert_eq!(r["content"]["interpretation"]["action"], "send");
    assert_eq!(r["content"]["interpretation"]["contact"], "Jane");
    assert_eq!(
        r["content"]["interpretation"]["message"],
        "the meeting moved to 3pm"
    );
    let r = a.request(ai("reply ok, see you then")).await;
    assert_eq!(
        r["content"]["interpretation"]["contact"], "Jane",
        "reply goes to the last contact: {r}"
    );
    let r = a
        .request(ai("send a message to jon saying typo tolerant"))
        .await;
    assert_eq!(r["content"]["interpretation"]["contact"], "John", "{r}");
    let r = a.request(ai("show history with john")).await;
    assert_eq!(r["content"]["interpretation"]["action"], "get_history");
    assert!(
        r["content"]["result"]["messages"]
            .as_array()
            .is_some_and(|m| m.len() == 2),
        "{r}"
    );
    let r = a.request(ai("list contacts")).await;
    assert_eq!(r["content"]["interpretation"]["action"], "list_contacts");
    let r = a.request(ai("send zebedee a message saying hi")).await;
    assert_eq!(r["content"]["success"], false);
    assert_eq!(r["content"]["code"], "contact_not_found");
    assert!(names(&r["content"]["candidates"]).contains(&"John".to_string()));
    let r = a.request(ai("what is the meaning of life")).await;
    assert_eq!(r["content"]["success"], false);
    assert_eq!(r["content"]["code"], "unparseable_command");
    // A given context is used instead of the session's.
    let r = a
        .request(
            json!({"type":"whatsapp_ai_command","command":"reply on my way",
            "context":{"last_contact":"Bob","contact_list":["Bob","John"]}}),
        )
        .await;
    assert_eq!(r["content"]["interpretation"]["contact"], "Bob", "{r}");

    // ai_request
    let r = a
        .request(json!({"type":"ai_request","prompt":"send john hi"}))
        .await;
    assert_eq!(r["response_type"], "ai_response");
    assert_eq!(r["content"]["provider"], "rules");
    assert!(r["content"]["text"].as_str().is_some_and(|t| !t.is_empty()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_share_events_and_stay_isolated() {
    let hub = hub(&[]).await;
    let mut team = Vec::new();
    for i in 0..5 {
        let (c, conf) = WsClient::register(&hub.ws_url(), "team", &format!("m{i}")).await;
        assert_eq!(conf["clients"].as_array().map(Vec::len), Some(i + 1));
        team.push(c);
    }
    for (i, c) in team.iter_mut().enumerate() {
        for _ in i + 1..5 {
            assert_eq!(c.recv_type("client_joined").await["type"], "client_joined");
        }
    }
    let (mut other, _) = WsClient::register(&hub.ws_url(), "other", "outsider").await;

    let r = team[0]
        .request(json!({"type":"whatsapp_command","command":{"action":"send","contact":"alice","message":"team news"}}))
        .await;
    assert_eq!(r["content"]["success"], true);
    for c in team.iter_mut().skip(1) {
        let ev = c.recv_type("message_event").await;
        assert_eq!(
            (
                ev["contact"].as_str(),
                ev["message"].as_str(),
                ev["by"].as_str()
            ),
            (Some("Alice"), Some("team news"), Some("m0"))
        );
    }
    team[1]
        .send_json(json!({"type":"broadcast","payload":{"hello":"team"}}))
        .await;
    for (i, c) in team.iter_mut().enumerate() {
        if i == 1 {
            continue;
        }
        let ev = c.recv_type("broadcast").await;
        assert_eq!(ev["from"], "m1");
        assert_eq!(ev["payload"]["hello"], "team");
    }
    // The sender does not get its own broadcast.
    let own = team[1].try_recv(Duration::from_millis(300)).await;
    assert!(own.is_none_or(|m| m["type"] != "broadcast"));

    // The other session saw nothing and has its own history/last contact.
    let nothing = other.try_recv(Duration::from_millis(300)).await;
    assert!(nothing.is_none(), "cross-session leak: {nothing:?}");
    let h = other
        .request(
            json!({"type":"whatsapp_command","command":{"action":"get_history","contact":"alice"}}),
        )
        .await;
    assert_eq!(h["content"]["messages"].as_array().map(Vec::len), Some(0));
    let r = other
        .request(json!({"type":"whatsapp_ai_command","command":"reply hi"}))
        .await;
    assert_eq!(
        r["content"]["success"], false,
        "no last contact in this session: {r}"
    );

    // Leaving is announced.
    let leaver = team.pop().expect("m4");
    leaver.close().await;
    let left = team[0].recv_type("client_left").await;
    assert_eq!(left["client_id"], "m4");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simulated_auto_reply_flows_to_everyone() {
    let hub = hub(&[
        "--auto-reply",
        "got: {message}",
        "--auto-reply-delay-ms",
        "50",
    ])
    .await;
    let (mut a, _) = WsClient::register(&hub.ws_url(), "s", "a").await;
    let (mut b, _) = WsClient::register(&hub.ws_url(), "s", "b").await;
    a.request(json!({"type":"whatsapp_command","command":{"action":"send","contact":"maria","message":"ping"}}))
        .await;
    for c in [&mut a, &mut b] {
        loop {
            let ev = c.recv_type("message_event").await;
            if ev["direction"] == "incoming" {
                assert_eq!(
                    (ev["contact"].as_str(), ev["message"].as_str()),
                    (Some("Maria"), Some("got: ping"))
                );
                break;
            }
        }
    }
    let h = b
        .request(
            json!({"type":"whatsapp_command","command":{"action":"get_history","contact":"maria"}}),
        )
        .await;
    assert_eq!(
        h["content"]["messages"].as_array().map(Vec::len),
        Some(2),
        "{h}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_execute_time_out_and_hand_over() {
    let hub = hub(&["--agent-timeout-ms", "400"]).await;
    let (mut agent, conf) = WsClient::register_with(
        &hub.ws_url(),
        json!({"type":"register","client_id":"phone","session":"s","capabilities":["whatsapp"]}),
    )
    .await;
    assert_eq!(conf["agent"], true);
    let (mut user, _) = WsClient::register(&hub.ws_url(), "s", "user").await;

    // Relay: execute → execute_result → response + message_event.
    user.send_json(json!({"type":"whatsapp_command","request_id":"q1","command":{"action":"send","contact":"bob","message":"hi bob"}}))
        .await;
    let exec = agent.recv_type("execute").await;
    assert_eq!(
        exec["command"],
        json!({"action":"send","contact":"Bob","message":"hi bob"})
    );
    agent
        .send_json(
            json!({"type":"execute_result","request_id":exec["request_id"],
            "content":{"success":true,"contact":"Bob","message":"hi bob","message_id":"wamid.X"}}),
        )
        .await;
    // The message is recorded and broadcast before the requester's answer.
    assert_eq!(
        user.recv_type("message_event").await["message_id"],
        "wamid.X"
    );
    let resp = user.recv_type("response").await;
    assert_eq!(resp["request_id"], "q1");
    assert_eq!(resp["content"]["message_id"], "wamid.X");

    // Silent agent → agent_timeout; its late answer → unknown_request.
    let err = user
        .request(json!({"type":"whatsapp_command","command":{"action":"list_contacts"}}))
        .await;
    assert_eq!(err["code"], "agent_timeout", "{err}");
    let late = agent.recv_type("execute").await;
    let refused = agent
        .request(json!({"type":"execute_result","content":{"success":true}}))
        .await;
    assert_eq!(refused["code"], "unknown_request");
    agent
        .send_json(json!({"type":"execute_result","request_id":late["request_id"],"content":{"success":true}}))
        .await;
    assert_eq!(agent.recv_type("error").await["code"], "unknown_request");

    // Agent reports: contacts_update and incoming_message reach everyone.
    let ack = agent
        .request(
            json!({"type":"contacts_update","contacts":["Bob",{"name":"Grandma","phone":"+1"}]}),
        )
        .await;
    assert_eq!(ack["response_type"], "ack");
    assert_eq!(
        names(&user.recv_type("contact_list_broadcast").await["contacts"]),
        ["Bob", "Grandma"]
    );
    agent
        .send_json(json!({"type":"incoming_message","contact":"Grandma","message":"call me"}))
        .await;
    let ev = user.recv_type("message_event").await;
    assert_eq!(
        (ev["direction"].as_str(), ev["contact"].as_str()),
        (Some("incoming"), Some("Grandma"))
    );
    let not_agent = user
        .request(json!({"type":"contacts_update","contacts":["X"]}))
        .await;
    assert_eq!(not_agent["code"], "not_agent");

    // A second agent: the newest registration wins.
    let (mut agent2, _) = WsClient::register_with(
        &hub.ws_url(),
        json!({"type":"register","client_id":"phone2","session":"s","capabilities":["whatsapp"]}),
    )
    .await;
    assert_eq!(user.recv_type("agent_changed").await["client_id"], "phone2");
    user.send_json(
        json!({"type":"whatsapp_command","request_id":"q2","command":{"action":"list_contacts"}}),
    )
    .await;
    let exec2 = agent2.recv_type("execute").await;
    agent2
        .send_json(json!({"type":"execute_result","request_id":exec2["request_id"],"content":{"success":true,"contacts":[]}}))
        .await;
    assert_eq!(user.recv_type("response").await["request_id"], "q2");
    let stale = agent
        .request(json!({"type":"contacts_update","contacts":["X"]}))
        .await;
    assert_eq!(
        stale["code"], "not_agent",
        "a replaced agent may not report"
    );

    // Disconnect mid-call → agent_disconnected, no fallback.
    user.send_json(json!({"type":"whatsapp_command","request_id":"q3","command":{"action":"send","contact":"bob","message":"lost?"}}))
        .await;
    agent2.recv_type("execute").await;
    agent2.close().await;
    // Both arrive, in either order: the error for q3 and agent_changed.
    let (mut err, mut changed) = (None, None);
    while err.is_none() || changed.is_none() {
        let m = user.recv().await;
        match m["type"].as_str() {
            Some("error") => err = Some(m),
            Some("agent_changed") => changed = Some(m),
            _ => {}
        }
    }
    let err = err.expect("error");
    assert_eq!(
        (err["request_id"].as_str(), err["code"].as_str()),
        (Some("q3"), Some("agent_disconnected"))
    );
    assert!(changed.expect("agent_changed")["client_id"].is_null());

    // No agent → the simulated connector executes.
    let r = user
        .request(json!({"type":"whatsapp_command","command":{"action":"send","contact":"bob","message":"fallback"}}))
        .await;
    assert_eq!(r["content"]["executed_by"], "simulated", "{r}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_stable_errors_and_the_connection_survives() {
    let hub = hub(&["--max-message-bytes", "1024"]).await;
    let mut c = WsClient::connect(&hub.ws_url()).await;

    async fn expect_error(c: &mut WsClient, frame: &str, code: &str) {
        c.send_text(frame).await;
        let err = c.recv().await;
        assert_eq!(err["type"], "error", "{frame} → {err}");
        assert_eq!(err["code"], code, "{frame} → {err}");
        assert!(err["message"].as_str().is_some_and(|m| !m.is_empty()));
        let pong = c.request(json!({"type":"ping"})).await;
        assert_eq!(
            pong["type"], "pong",
            "connection must stay usable after {frame}"
        );
    }

    expect_error(
        &mut c,
        r#"{"type":"whatsapp_command","command":{"action":"list_contacts"}}"#,
        "not_registered",
    )
    .await;
    c.send_json(json!({"type":"register","client_id":"x","session":"bad"}))
        .await;
    c.recv_type("contact_list_broadcast").await;
    expect_error(&mut c, "{nope", "invalid_json").await;
    expect_error(&mut c, "[1,2,3]", "invalid_message").await;
    expect_error(&mut c, r#"{"prompt":"x"}"#, "missing_field").await;
    expect_error(&mut c, r#"{"type":"teleport"}"#, "unknown_type").await;
    expect_error(&mut c, r#"{"type":"ai_request"}"#, "missing_field").await;
    expect_error(
        &mut c,
        r#"{"type":"ai_request","prompt":42}"#,
        "invalid_field",
    )
    .await;
    expect_error(
        &mut c,
        r#"{"type":"whatsapp_command","command":{"action":"dance"}}"#,
        "unknown_action",
    )
    .await;
    expect_error(
        &mut c,
        r#"{"type":"whatsapp_command","command":{"action":"send","contact":"bob"}}"#,
        "missing_field",
    )
    .await;
    expect_error(&mut c, r#"{"type":"whatsapp_command","command":{"action":"get_history","contact":"bob","limit":0}}"#, "invalid_field").await;
    expect_error(&mut c, r#"{"type":"register"}"#, "already_registered").await;
    // request_id is echoed on errors.
    c.send_text(r#"{"type":"teleport","request_id":"e1"}"#)
        .await;
    assert_eq!(c.recv().await["request_id"], "e1");
    // Binary frames are refused but harmless.
    c.send_binary(vec![0, 1, 2]).await;
    assert_eq!(c.recv().await["code"], "binary_not_supported");
    // Too large: close 1009.
    c.send_text(&format!(
        r#"{{"type":"ping","pad":"{}"}}"#,
        "x".repeat(2000)
    ))
    .await;
    assert_eq!(c.expect_close().await, Some(1009));
    // The hub is fine.
    let (_d, _) = WsClient::register(&hub.ws_url(), "bad", "after").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_protect_the_hub_from_greedy_and_slow_clients() {
    let hub = hub(&["--rate-limit-per-sec", "1", "--rate-limit-burst", "3"]).await;
    let (mut greedy, _) = WsClient::register(&hub.ws_url(), "lim", "greedy").await;
    for i in 0..6 {
        greedy
            .send_json(json!({"type":"ping","request_id":format!("p{i}")}))
            .await;
    }
    let mut codes = Vec::new();
    for _ in 0..6 {
        let m = greedy.recv().await;
        codes.push(
            m["code"]
                .as_str()
                .unwrap_or(m["type"].as_str().unwrap_or_default())
                .to_string(),
        );
    }
    assert!(codes.iter().any(|c| c == "rate_limited"), "{codes:?}");
    assert!(codes.iter().any(|c| c == "pong"), "{codes:?}");

    // A reader that never reads is cut off; others are unaffected.
    let hub = HubProcess::start(
        &[
            "--outbound-queue-len",
            "4",
            "--rate-limit-per-sec",
            "100000",
            "--rate-limit-burst",
            "100000",
        ],
        &[],
    )
    .await;
    let (mut slow, _) = WsClient::register(&hub.ws_url(), "flood", "slow").await;
    let (mut fast, _) = WsClient::register(&hub.ws_url(), "flood", "fast").await;
    let (mut producer, _) = WsClient::register(&hub.ws_url(), "flood", "producer").await;
    let big = "y".repeat(60_000);
    let metrics_url = hub.http_url("/metrics");
    let mut disconnected = false;
    // Far more than the socket buffers hold: the slow client's queue fills.
    for round in 0..400 {
        producer
            .send_json(json!({"type":"broadcast","payload":{"round":round,"fill":big}}))
            .await;
        // `fast` keeps up.
        let ev = fast.recv_type("broadcast").await;
        assert_eq!(ev["payload"]["round"], round);
        if round % 20 == 19 {
            let body = reqwest::get(&metrics_url)
                .await
                .expect("metrics")
                .text()
                .await
                .unwrap_or_default();
            if body.lines().any(|l| {
                l.starts_with("hub_slow_consumer_disconnects_total ") && !l.ends_with(" 0")
            }) {
                disconnected = true;
                break;
            }
        }
    }
    assert!(disconnected, "the slow client was never disconnected");
    // What reached the slow client ends with close 1008, or with the
    // connection simply ending when the close frame could not be written.
    let code = slow.expect_close().await;
    assert!(matches!(code, None | Some(1008)), "close code {code:?}");
    let pong = fast.request(json!({"type":"ping"})).await;
    assert_eq!(pong["type"], "pong");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_surface_rest_web_and_metrics() {
    let hub = hub(&["--instance-id", "web"]).await;
    let get = |path: &str| {
        let url = hub.http_url(path);
        async move {
            let r = reqwest::get(&url).await.expect("http");
            (r.status().as_u16(), r.text().await.unwrap_or_default())
        }
    };
    assert_eq!(get("/health").await.0, 200);
    assert_eq!(get("/ready").await.0, 200);
    let (status, page) = get("/").await;
    assert_eq!(status, 200);
    assert!(page.contains("<html") && page.contains("whatsapp_ai_command"));
    let (_, cluster) = get("/api/v1/cluster").await;
    let cluster: Value = serde_json::from_str(&cluster).expect("json");
    assert_eq!(cluster["mode"], "standalone");
    assert_eq!(cluster["instances"][0]["instance"], "web");

    let (mut ws, _) = WsClient::register(&hub.ws_url(), "rest", "watcher").await;
    let client = reqwest::Client::new();
    let post = |body: Value| {
        let req = client
            .post(hub.http_url("/api/v1/sessions/rest/commands"))
            .header("x-client-id", "curl")
            .json(&body);
        async move {
            let r = req.send().await.expect("post");
            let status = r.status().as_u16();
            (status, r.json::<Value>().await.unwrap_or(Value::Null))
        }
    };
    let (status, body) = post(json!({"text":"send alice a message saying from rest"})).await;
    assert_eq!(status, 200);
    assert_eq!(body["success"], true, "{body}");
    let ev = ws.recv_type("message_event").await;
    assert_eq!(
        (ev["message"].as_str(), ev["by"].as_str()),
        (Some("from rest"), Some("curl"))
    );
    let (_, body) = post(json!({"command":{"action":"get_history","contact":"alice"}})).await;
    assert_eq!(body["messages"][0]["message"], "from rest");
    let (status, body) = post(json!({"nonsense":true})).await;
    assert_eq!(status, 400);
    assert_eq!(body["code"], "invalid_message");
    let (_, summary) = get("/api/v1/sessions/rest").await;
    let summary: Value = serde_json::from_str(&summary).expect("json");
    assert_eq!(summary["last_contact"], "Alice");
    assert_eq!(summary["clients"][0]["client_id"], "watcher");

    // Metrics: every kind of traffic is counted and the exposition lints.
    ws.send_text("{bad").await;
    ws.recv_type("error").await;
    let (_, metrics) = get("/metrics").await;
    for needle in [
        "hub_ws_messages_received_total{type=\"register\"}",
        "hub_ws_messages_sent_total{type=\"message_event\"}",
        "hub_errors_total{code=\"invalid_json\"}",
        "hub_broadcast_latency_seconds_bucket",
        "hub_build_info",
        "process_resident_memory_bytes",
    ] {
        assert!(metrics.contains(needle), "missing {needle}");
    }
    if common_promtool_available() {
        let mut child = std::process::Command::new("promtool")
            .args(["check", "metrics"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("promtool");
        use std::io::Write;
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(metrics.as_bytes())
            .expect("write");
        let out = child.wait_with_output().expect("promtool output");
        assert!(
            out.status.success(),
            "promtool: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    } else {
        eprintln!("SKIPPED promtool check: promtool not installed (./scripts/test installs it)");
    }
}

fn common_promtool_available() -> bool {
    std::process::Command::new("promtool")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_closes_clients_with_1001_and_exits_zero() {
    let mut hub = hub(&["--shutdown-timeout-ms", "3000"]).await;
    let (mut a, _) = WsClient::register(&hub.ws_url(), "s", "a").await;
    let (mut b, _) = WsClient::register(&hub.ws_url(), "s", "b").await;
    a.recv_type("client_joined").await;
    hub.sigterm();
    assert_eq!(a.expect_close().await, Some(1001));
    assert_eq!(b.expect_close().await, Some(1001));
    let status = hub
        .wait_exit(Duration::from_secs(10))
        .await
        .expect("exited");
    assert!(status.success(), "exit status {status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configuration_errors_name_the_setting_and_exit_2() {
    let run = |args: &[&str], envs: &[(&str, &str)]| {
        let mut cmd = std::process::Command::new(common::hub_binary());
        cmd.args(args)
            .env_remove("REDIS_URL")
            .env_remove("MCP_SERVER_PORT");
        for (k, v) in envs {
            cmd.env(k, v);
        }
        cmd.current_dir(std::env::temp_dir());
        let out = cmd.output().expect("run hub");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    let (code, err) = run(&["--redis-url", "http://x"], &[]);
    assert_eq!(code, Some(2));
    assert!(
        err.contains("REDIS_URL") && err.trim().lines().count() == 1,
        "{err}"
    );
    let (code, err) = run(&[], &[("MCP_SERVER_PORT", "abc")]);
    assert_eq!(code, Some(2));
    assert!(
        err.contains("MCP_SERVER_PORT") && err.trim().lines().count() == 1,
        "{err}"
    );
    let (code, err) = run(&["--contacts-file", "/definitely/missing.json"], &[]);
    assert_eq!(code, Some(2));
    assert!(err.contains("CONTACTS_FILE"), "{err}");

    // A contacts file is honoured.
    let file = std::env::temp_dir().join(format!("mcp-hub-contacts-{}.json", std::process::id()));
    std::fs::write(&file, r#"["John Smith", {"name":"Johanna","phone":"+1"}]"#).expect("write");
    let hub = HubProcess::start(&["--contacts-file", file.to_str().expect("utf8")], &[]).await;
    let (mut c, _) = WsClient::register(&hub.ws_url(), "s", "c").await;
    let r = c
        .request(
            json!({"type":"whatsapp_ai_command","command":"send joh a message saying which one?"}),
        )
        .await;
    assert_eq!(r["content"]["code"], "ambiguous_contact", "{r}");
    assert_eq!(
        names(&r["content"]["candidates"]),
        ["John Smith", "Johanna"]
    );
    let _ = std::fs::remove_file(file);
}
