//! The hub as a process, where the process is the point: exit codes and
//! the one line on stderr for every invalid setting (flags, environment,
//! `.env`), `.env` precedence (flag > environment > .env), the contacts
//! file from the environment, graceful shutdown on SIGTERM/SIGINT (close
//! 1001 for everyone, queued events first, bounded even with a client that
//! never reads), and a closed stderr.

use crate::support;

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use serde_json::{Value, json};
use support::*;

fn assert_one_line_naming(stderr: &str, setting: &str, what: &str) {
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "{what}: one line on stderr, got:\n{stderr}");
    assert!(
        lines[0].contains(setting),
        "{what}: `{}` does not name {setting}",
        lines[0]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_invalid_setting_exits_2_with_one_line_naming_it() {
    let dir = TempDir::new();
    let bad_json = dir.write("bad.json", "{not json");
    let not_a_list = dir.write("object.json", r#"{"name":"John"}"#);
    let empty_name = dir.write("empty.json", r#"[{"name":"  ","phone":"+1"}]"#);
    let blank_entry = dir.write("blank.json", r#"["John", "  "]"#);
    let missing = dir.path().join("no-such-contacts.json");
    let bad_json = bad_json.to_str().expect("utf8");
    let not_a_list = not_a_list.to_str().expect("utf8");
    let empty_name = empty_name.to_str().expect("utf8");
    let blank_entry = blank_entry.to_str().expect("utf8");
    let missing = missing.to_str().expect("utf8");

    // (flags, environment, the setting the line must name)
    type Case<'a> = (Vec<&'a str>, Vec<(&'a str, &'a str)>, &'a str);
    let cases: Vec<Case> = vec![
        (vec!["--redis-url", "http://x"], vec![], "REDIS_URL"),
        (vec![], vec![("REDIS_URL", "localhost:6379")], "REDIS_URL"),
        (
            vec!["serve"],
            vec![("REDIS_URL", "localhost:6379")],
            "REDIS_URL",
        ),
        (vec![], vec![("MCP_SERVER_PORT", "abc")], "MCP_SERVER_PORT"),
        (vec!["--port", "70000"], vec![], "MCP_SERVER_PORT"),
        (
            vec!["serve"],
            vec![("MCP_SERVER_PORT", "70000")],
            "MCP_SERVER_PORT",
        ),
        (vec!["--host", "not-an-ip"], vec![], "MCP_SERVER_HOST"),
        (
            vec!["--contacts-file", "/definitely/missing.json"],
            vec![],
            "CONTACTS_FILE",
        ),
        (vec![], vec![("CONTACTS_FILE", missing)], "CONTACTS_FILE"),
        (
            vec!["serve", "--contacts-file", missing],
            vec![],
            "CONTACTS_FILE",
        ),
        (vec![], vec![("CONTACTS_FILE", bad_json)], "CONTACTS_FILE"),
        (vec!["--contacts-file", bad_json], vec![], "CONTACTS_FILE"),
        (vec!["--contacts-file", not_a_list], vec![], "CONTACTS_FILE"),
        (vec!["--contacts-file", empty_name], vec![], "CONTACTS_FILE"),
        (
            vec!["--contacts-file", blank_entry],
            vec![],
            "CONTACTS_FILE",
        ),
        (
            vec!["--max-message-bytes", "10"],
            vec![],
            "MAX_MESSAGE_BYTES",
        ),
        (
            vec![],
            vec![("RATE_LIMIT_PER_SEC", "0")],
            "RATE_LIMIT_PER_SEC",
        ),
        (
            vec!["--rate-limit-per-sec", "NaN"],
            vec![],
            "RATE_LIMIT_PER_SEC",
        ),
        (vec!["--rate-limit-burst", "0"], vec![], "RATE_LIMIT_BURST"),
        (
            vec!["--outbound-queue-len", "0"],
            vec![],
            "OUTBOUND_QUEUE_LEN",
        ),
        (
            vec![],
            vec![("OUTBOUND_QUEUE_LEN", "0")],
            "OUTBOUND_QUEUE_LEN",
        ),
        (vec![], vec![("MAX_IN_FLIGHT", "-3")], "MAX_IN_FLIGHT"),
        (vec![], vec![("AGENT_TIMEOUT_MS", "0")], "AGENT_TIMEOUT_MS"),
        (
            vec![],
            vec![("AGENT_TIMEOUT_MS", "soon")],
            "AGENT_TIMEOUT_MS",
        ),
        (vec!["--history-limit", "0"], vec![], "HISTORY_LIMIT"),
        (
            vec!["--heartbeat-ms", "5000", "--presence-ttl-ms", "1000"],
            vec![],
            "PRESENCE_TTL_MS",
        ),
        (
            vec!["--redis-key-prefix", "has space"],
            vec![],
            "REDIS_KEY_PREFIX",
        ),
        (vec!["--instance-id", "  "], vec![], "INSTANCE_ID"),
        (vec!["--instance-id", " "], vec![], "INSTANCE_ID"),
        (vec![], vec![("LOG_FORMAT", "xml")], "LOG_FORMAT"),
        (
            vec![],
            vec![("WHATSAPP_CONNECTOR", "real")],
            "WHATSAPP_CONNECTOR",
        ),
        // cloud_api without a required setting names the first missing one:
        // the number, then its token.
        (
            vec![],
            vec![("WHATSAPP_CONNECTOR", "cloud_api")],
            "WHATSAPP_PHONE_NUMBER_ID",
        ),
        (
            vec![],
            vec![
                ("WHATSAPP_CONNECTOR", "cloud_api"),
                ("WHATSAPP_PHONE_NUMBER_ID", "1"),
            ],
            "WHATSAPP_ACCESS_TOKEN",
        ),
        (
            vec!["--connector", "cloud_api"],
            vec![
                ("WHATSAPP_ACCESS_TOKEN", "t"),
                ("WHATSAPP_PHONE_NUMBER_ID", "1"),
                ("WHATSAPP_APP_SECRET", "s"),
            ],
            "WHATSAPP_VERIFY_TOKEN",
        ),
        (vec!["--ai-provider", "magic"], vec![], "AI_PROVIDER"),
        // A selected provider without its key.
        (
            vec!["serve", "--ai-provider", "gemini"],
            vec![],
            "GEMINI_API_KEY",
        ),
        (
            vec!["serve", "--ai-provider", "openai"],
            vec![],
            "OPENAI_API_KEY",
        ),
    ];
    // Each case is its own short-lived process: run them side by side.
    let results: Vec<(Option<i32>, String)> = std::thread::scope(|scope| {
        let runs: Vec<_> = cases
            .iter()
            .map(|(args, envs, _)| scope.spawn(|| run_hub(args, envs, &dir)))
            .collect();
        runs.into_iter()
            .map(|run| run.join().unwrap_or_else(|_| panic!("a case panicked")))
            .collect()
    });
    for ((args, envs, setting), (code, stderr)) in cases.iter().zip(results) {
        assert_eq!(code, Some(2), "{args:?} {envs:?}: {stderr}");
        assert_one_line_naming(&stderr, setting, &format!("{args:?} {envs:?}"));
    }

    // A port that is taken: exit 2, one line naming the setting and the port.
    let busy = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let busy_port = busy.local_addr().expect("addr").port().to_string();
    let (code, stderr) = run_hub(&["--port", &busy_port], &[], &dir);
    assert_eq!(code, Some(2), "{stderr}");
    assert_one_line_naming(&stderr, "MCP_SERVER_PORT", "port taken");
    assert!(
        stderr
            .lines()
            .last()
            .is_some_and(|l| l.contains(&busy_port)),
        "{stderr}"
    );
    drop(busy);

    // A .env in the working directory is read too.
    let dotenv_dir = TempDir::new();
    dotenv_dir.write(".env", "MCP_SERVER_PORT=abc\n");
    let (code, stderr) = run_hub(&[], &[], &dotenv_dir);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("MCP_SERVER_PORT"), "{stderr}");
    // A malformed .env is reported (quoting the bad line), not half-applied.
    let dotenv_dir = TempDir::new();
    dotenv_dir.write(
        ".env",
        "INSTANCE_ID=x\nAUTO_REPLY=two words\nMCP_SERVER_PORT=abc\n",
    );
    let (code, stderr) = run_hub(&[], &[], &dotenv_dir);
    assert_eq!(code, Some(2), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains(".env") && stderr.contains("two words"),
        "{stderr}"
    );

    // --help and --version are not errors.
    let (code, _) = run_hub(&["--help"], &[], &dir);
    assert_eq!(code, Some(0));
    let (code, _) = run_hub(&["--version"], &[], &dir);
    assert_eq!(code, Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_contacts_file_is_honoured_from_the_flag_or_the_environment() {
    let dir = TempDir::new();
    let file = dir.write(
        "contacts.json",
        r#"[{"name": "Grandma", "phone": "+4420"}, "Dr. Who", {"name": "Bob"}]"#,
    );
    let file = file.to_str().expect("utf-8");
    let expected =
        json!([{"name": "Grandma", "phone": "+4420"}, {"name": "Dr. Who"}, {"name": "Bob"}]);
    for (args, envs) in [
        (vec!["--contacts-file", file], vec![]),
        (vec![], vec![("CONTACTS_FILE", file)]),
    ] {
        let hub = HubProcess::start(&args, &envs).await;
        let mut c = WsClient::connect(&hub.ws_url()).await;
        c.send_json(json!({"type": "register", "session": "book"}))
            .await;
        assert_eq!(c.recv().await["type"], "registration_confirmed");
        let list = c.recv().await;
        assert_eq!(list["contacts"], expected, "{args:?} {envs:?}");
        assert_eq!(list["total_count"], 3);
        let r = c.request(ai_command("tell grandma that hello")).await;
        assert_eq!(r["content"]["result"]["contact"], "Grandma", "{r}");
        let r = c.request(send_cmd("John", "not in the file")).await;
        assert_eq!(r["content"]["code"], "contact_not_found");
        assert_eq!(
            names(&r["content"]["candidates"]),
            ["Grandma", "Dr. Who", "Bob"]
        );
    }
}

/// A hub spawned by the test itself in `cwd` (to read a `.env` there).
struct Spawned(tokio::process::Child);

/// Starts the hub in `cwd` with only `envs` set, and polls (bounded) until
/// `port` answers /ready. Returns the process and /api/v1/cluster.
async fn spawn_in(
    cwd: &Path,
    args: &[&str],
    envs: &[(&str, &str)],
    port: u16,
) -> (Spawned, serde_json::Value) {
    let mut cmd = tokio::process::Command::new(hub_binary());
    cmd.args(args)
        .current_dir(cwd)
        .env_clear()
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true);
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let mut child = Spawned(cmd.spawn().expect("spawn"));
    let base = format!("http://127.0.0.1:{port}");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(r) = reqwest::get(format!("{base}/ready")).await
            && r.status().as_u16() == 200
        {
            break;
        }
        if let Ok(Some(status)) = child.0.try_wait() {
            panic!("hub {args:?} {envs:?} exited: {status:?}");
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "hub {args:?} {envs:?} never answered on port {port}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let cluster: serde_json::Value = reqwest::get(format!("{base}/api/v1/cluster"))
        .await
        .expect("cluster")
        .json()
        .await
        .expect("json");
    (child, cluster)
}

/// The incoming auto-reply the hub at `url` answers "hi" to `contact` with
/// (the whole `message_event`).
async fn auto_reply_on(url: &str, contact: &str) -> Value {
    let (mut c, _) = WsClient::register(url, "env", "probe").await;
    let r = c.request(send_cmd(contact, "hi")).await;
    assert_eq!(r["content"]["success"], true, "{r}");
    loop {
        let ev = c.recv_type("message_event").await;
        if ev["direction"] == "incoming" {
            return ev;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dotenv_is_read_and_flags_beat_environment_beat_dotenv() {
    let dir = TempDir::new();
    let (p1, p2, p3) = (free_port(), free_port(), free_port());
    let contacts = dir.write(
        "contacts.json",
        r#"[{"name":"Grandma","phone":"+4401"},"Dr. Who",{"name":"Zoe"}]"#,
    );
    dir.write(
        ".env",
        &format!(
            "# settings for this directory\nINSTANCE_ID=from-dotenv\nMCP_SERVER_PORT={p1}\nCONTACTS_FILE={}\nAUTO_REPLY=\"dotenv says {{message}}\"\nAUTO_REPLY_DELAY_MS=10\n",
            contacts.display()
        ),
    );
    let cwd = dir.path();

    // Only .env: all of it applies (instance, port, contacts, auto-reply).
    let (hub, cluster) = spawn_in(cwd, &[], &[], p1).await;
    assert_eq!(cluster["instance"], "from-dotenv", "{cluster}");
    let url = format!("ws://127.0.0.1:{p1}/");
    let (c, conf) = WsClient::register(&url, "s", "c").await;
    assert_eq!(conf["instance"], "from-dotenv");
    assert_eq!(
        names(&c.registration_contacts()["contacts"]),
        ["Grandma", "Dr. Who", "Zoe"]
    );
    assert_eq!(c.registration_contacts()["contacts"][0]["phone"], "+4401");
    let ev = auto_reply_on(&url, "grandma").await;
    assert_eq!(ev["message"], "dotenv says hi");
    assert_eq!(ev["by"], "Grandma");
    assert_eq!(ev["contact"], "Grandma");
    drop(hub);

    // The environment beats .env; .env still fills in the rest.
    let p2s = p2.to_string();
    let env = [
        ("INSTANCE_ID", "from-env"),
        ("MCP_SERVER_PORT", p2s.as_str()),
    ];
    let (hub, cluster) = spawn_in(cwd, &["serve"], &env, p2).await;
    assert_eq!(cluster["instance"], "from-env", "{cluster}");
    let url = format!("ws://127.0.0.1:{p2}/");
    assert_eq!(
        auto_reply_on(&url, "grandma").await["message"],
        "dotenv says hi"
    );
    drop(hub);

    // Flags beat both.
    let p3s = p3.to_string();
    let (_hub, cluster) = spawn_in(
        cwd,
        &[
            "serve",
            "--instance-id",
            "from-flag",
            "--port",
            &p3s,
            "--auto-reply",
            "flag: {message}",
        ],
        &env,
        p3,
    )
    .await;
    assert_eq!(cluster["instance"], "from-flag", "{cluster}");
    let url = format!("ws://127.0.0.1:{p3}/");
    assert_eq!(auto_reply_on(&url, "grandma").await["message"], "flag: hi");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_closes_every_client_with_1001_and_exits_0() {
    let mut hub = HubProcess::start(&["--shutdown-timeout-ms", "3000"], &[]).await;
    let url = hub.ws_url();
    let (mut a, _) = WsClient::register(&url, "s1", "a").await;
    let (mut b, _) = WsClient::register(&url, "s1", "b").await;
    let (mut c, _) = WsClient::register(&url, "s2", "c").await;
    let (mut agent, _) = register_agent(&url, "s2", "phone").await;
    let mut unregistered = WsClient::connect(&url).await;
    assert_eq!(
        unregistered.request(json!({"type": "ping"})).await["type"],
        "pong"
    );
    a.recv_type("client_joined").await;

    hub.sigterm();
    for (name, client) in [
        ("a", &mut a),
        ("b", &mut b),
        ("c", &mut c),
        ("agent", &mut agent),
        ("unregistered", &mut unregistered),
    ] {
        assert_eq!(client.expect_close().await, Some(1001), "{name}");
    }
    let status = hub
        .wait_exit(Duration::from_secs(15))
        .await
        .expect("the hub exits after SIGTERM");
    assert!(status.success(), "exit status {status:?}");
    assert_eq!(status.code(), Some(0));
    // Nobody can connect any more.
    assert!(
        tokio_tungstenite::connect_async(url.as_str())
            .await
            .is_err(),
        "still accepting after shutdown"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_queued_before_sigterm_are_delivered_before_the_close() {
    let mut hub = HubProcess::start(
        &[
            "--shutdown-timeout-ms",
            "8000",
            "--outbound-queue-len",
            "4096",
            // 80 frames of 60 kB stay queued: above the default byte bound.
            "--outbound-queue-bytes",
            "100000000",
            "--rate-limit-per-sec",
            "100000",
            "--rate-limit-burst",
            "100000",
        ],
        &[],
    )
    .await;
    let url = hub.ws_url();
    let (mut reader, _) = WsClient::register(&url, "q", "reader").await;
    let (mut sender, _) = WsClient::register(&url, "q", "sender").await;
    assert_eq!(reader.recv().await["type"], "client_joined");

    // `reader` stops reading: its socket fills up, and the rest of the
    // broadcasts wait in its queue on the hub.
    let fill = "q".repeat(60_000);
    let rounds = 80u64;
    for round in 0..rounds {
        sender
            .send_json(json!({"type": "broadcast", "payload": {"round": round, "fill": fill}}))
            .await;
    }
    let ack = sender
        .request(json!({"type": "broadcast", "payload": {"round": "last"}}))
        .await;
    assert_eq!(ack["response_type"], "broadcast_sent");
    // The last one is still queued: not all broadcasts have been written
    // (only `reader` receives broadcasts here).
    let written = metric_value(
        &metrics_text(&hub).await,
        "hub_ws_messages_sent_total{type=\"broadcast\"}",
    )
    .unwrap_or(0.0);
    assert!(
        written < (rounds + 1) as f64,
        "the socket took everything ({written} written): nothing was left queued"
    );

    hub.sigterm();
    assert_eq!(sender.expect_close().await, Some(1001));
    // Everything arrives, in order, then the close.
    for round in 0..rounds {
        let b = reader.recv().await;
        assert_eq!(b["type"], "broadcast");
        assert_eq!(b["payload"]["round"], round, "in order, none lost");
    }
    let last = reader.recv().await;
    assert_eq!(last["payload"]["round"], "last", "{last}");
    assert_eq!(reader.expect_close().await, Some(1001));
    let status = hub.wait_exit(Duration::from_secs(20)).await.expect("exit");
    assert!(status.success(), "{status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_is_bounded_even_with_a_client_that_never_reads() {
    let mut hub = HubProcess::start(
        &[
            "--shutdown-timeout-ms",
            "2000",
            // Big enough that the stuck client is never cut off as slow.
            "--outbound-queue-len",
            "100000",
            "--outbound-queue-bytes",
            "1000000000",
            "--rate-limit-per-sec",
            "100000",
            "--rate-limit-burst",
            "100000",
        ],
        &[],
    )
    .await;
    let url = hub.ws_url();
    let (stuck, _) = WsClient::register(&url, "s", "stuck").await;
    let (mut producer, _) = WsClient::register(&url, "s", "producer").await;
    let (mut other, _) = WsClient::register(&url, "other", "other").await;
    // ~12 MB for a reader that reads nothing: more than the loopback
    // socket buffers hold, so the hub's write to it blocks.
    let fill = "z".repeat(60_000);
    for i in 0..200 {
        producer
            .send_json(json!({"type":"broadcast","payload":{"i":i,"fill":fill}}))
            .await;
    }
    // The producer's own acknowledgement proves the hub processed them all.
    let ack = producer
        .request(json!({"type":"broadcast","payload":"last"}))
        .await;
    assert_eq!(ack["response_type"], "broadcast_sent");
    hub.sigterm();
    // The others are closed normally; `stuck` is never read from.
    assert_eq!(other.expect_close().await, Some(1001));
    assert_eq!(producer.expect_close().await, Some(1001));
    let status = hub
        .wait_exit(Duration::from_secs(20))
        .await
        .unwrap_or_else(|| panic!("shutdown not bounded; log:\n{}", hub.log()));
    assert!(status.success(), "{status:?}\n{}", hub.log());
    assert_eq!(status.code(), Some(0), "{status:?}");
    drop(stuck);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigint_drains_like_sigterm() {
    let mut hub = HubProcess::start(&[], &[]).await;
    let (mut a, _) = WsClient::register(&hub.ws_url(), "s", "a").await;
    let (mut agent, _) = WsClient::register_with(
        &hub.ws_url(),
        json!({"type":"register","session":"s","client_id":"agent","capabilities":["whatsapp"]}),
    )
    .await;
    // A request is waiting for the agent when the signal arrives.
    a.send_json(json!({"type":"whatsapp_command","request_id":"pending","command":{"action":"list_contacts"}}))
        .await;
    agent.recv_type("execute").await;
    hub.sigint();
    assert_eq!(a.expect_close().await, Some(1001));
    assert_eq!(agent.expect_close().await, Some(1001));
    let status = hub
        .wait_exit(Duration::from_secs(15))
        .await
        .unwrap_or_else(|| panic!("no exit after SIGINT; log:\n{}", hub.log()));
    assert!(status.success(), "{status:?}\n{}", hub.log());
    assert!(hub.log().contains("shutdown requested"), "{}", hub.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_hub_exits_zero_on_sigterm() {
    let mut hub = HubProcess::start(&[], &[]).await;
    hub.sigterm();
    let status = hub
        .wait_exit(Duration::from_secs(15))
        .await
        .expect("exited");
    assert!(status.success(), "{status:?}\n{}", hub.log());
}

/// Logs piped into something that goes away (`mcp-hub | head`, a dead log
/// shipper): the hub must keep serving and still shut down on SIGTERM.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_stderr_breaks_neither_serving_nor_shutdown() {
    use tokio::io::{AsyncBufReadExt, BufReader};
    let cwd = TempDir::new();
    let mut cmd = tokio::process::Command::new(hub_binary());
    cmd.args(["serve", "--host", "127.0.0.1", "--port", "0"])
        .current_dir(cwd.path())
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    for var in hub_env_vars() {
        cmd.env_remove(var);
    }
    let mut child = cmd.spawn().expect("spawn");
    let mut lines = BufReader::new(child.stderr.take().expect("stderr")).lines();
    let addr = tokio::time::timeout(Duration::from_secs(20), async {
        while let Ok(Some(line)) = lines.next_line().await {
            if let Some(rest) = line.split("mcp-hub listening on ").nth(1) {
                return rest.split_whitespace().next().map(str::to_string);
            }
        }
        None
    })
    .await
    .ok()
    .flatten()
    .expect("listening line");
    drop(lines); // nobody reads the hub's stderr any more

    let url = format!("ws://{addr}/");
    let (mut a, _) = WsClient::register(&url, "s", "a").await;
    let (mut b, _) = WsClient::register(&url, "s", "b").await;
    let r = a
        .request(json!({"type":"whatsapp_command","command":{"action":"send","contact":"bob","message":"still logging?"}}))
        .await;
    assert_eq!(r["content"]["success"], true, "{r}");
    assert_eq!(
        b.recv_type("message_event").await["message"],
        "still logging?"
    );

    let pid = child.id().expect("running") as libc::pid_t;
    // SAFETY: kill(2) on our own child.
    unsafe {
        libc::kill(pid, libc::SIGTERM);
    }
    assert_eq!(a.expect_close().await, Some(1001));
    assert_eq!(b.expect_close().await, Some(1001));
    let status = tokio::time::timeout(Duration::from_secs(15), child.wait())
        .await
        .expect("the hub must exit after SIGTERM although its stderr is gone")
        .expect("wait");
    assert!(status.success(), "{status:?}");
}
