//! The hub process's life: configuration (flags, environment, `.env`, and
//! every kind of invalid setting → exit 2 with one line naming it) and
//! graceful shutdown on SIGTERM/SIGINT, also with a client that never reads.

mod common;

use std::time::Duration;

use common::{HubProcess, TempDir, WsClient, hub_binary, hub_env_vars};
use serde_json::{Value, json};

/// Runs the hub to completion (it must exit by itself: invalid settings).
fn run_hub(args: &[&str], envs: &[(&str, &str)], cwd: &TempDir) -> (Option<i32>, String) {
    let mut cmd = std::process::Command::new(hub_binary());
    cmd.args(args)
        .current_dir(cwd.path())
        .stdin(std::process::Stdio::null());
    for var in hub_env_vars() {
        cmd.env_remove(var);
    }
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let mut child = common::ChildGuard::spawn(
        cmd.stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped()),
    );
    let status = child.wait_exit(Duration::from_secs(20));
    let mut stderr = String::new();
    if let Some(mut pipe) = child.0.stderr.take() {
        use std::io::Read;
        let _ = pipe.read_to_string(&mut stderr);
    }
    let status = status.unwrap_or_else(|| {
        panic!("hub {args:?} {envs:?} did not exit; it should have refused to start")
    });
    (status.code(), stderr)
}

fn names(list: &Value) -> Vec<String> {
    list.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|c| c["name"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_invalid_setting_exits_2_with_one_line_naming_it() {
    let dir = TempDir::new();
    let bad_json = dir.write("bad.json", "{not json");
    let not_a_list = dir.write("object.json", r#"{"name":"John"}"#);
    let empty_name = dir.write("empty.json", r#"[{"name":"  ","phone":"+1"}]"#);
    let bad_json = bad_json.to_str().expect("utf8");
    let not_a_list = not_a_list.to_str().expect("utf8");
    let empty_name = empty_name.to_str().expect("utf8");
    let busy = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let busy_port = busy.local_addr().expect("addr").port().to_string();

    // (flags, environment, the setting the line must name)
    type Case<'a> = (Vec<&'a str>, Vec<(&'a str, &'a str)>, &'a str);
    let cases: Vec<Case> = vec![
        (vec!["--redis-url", "http://x"], vec![], "REDIS_URL"),
        (vec![], vec![("REDIS_URL", "localhost:6379")], "REDIS_URL"),
        (vec![], vec![("MCP_SERVER_PORT", "abc")], "MCP_SERVER_PORT"),
        (vec!["--port", "70000"], vec![], "MCP_SERVER_PORT"),
        (vec!["--host", "not-an-ip"], vec![], "MCP_SERVER_HOST"),
        (
            vec!["--contacts-file", "/definitely/missing.json"],
            vec![],
            "CONTACTS_FILE",
        ),
        (vec![], vec![("CONTACTS_FILE", bad_json)], "CONTACTS_FILE"),
        (vec!["--contacts-file", not_a_list], vec![], "CONTACTS_FILE"),
        (vec!["--contacts-file", empty_name], vec![], "CONTACTS_FILE"),
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
        (vec![], vec![("MAX_IN_FLIGHT", "-3")], "MAX_IN_FLIGHT"),
        (vec![], vec![("AGENT_TIMEOUT_MS", "0")], "AGENT_TIMEOUT_MS"),
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
        (vec![], vec![("LOG_FORMAT", "xml")], "LOG_FORMAT"),
        (
            vec![],
            vec![("WHATSAPP_CONNECTOR", "real")],
            "WHATSAPP_CONNECTOR",
        ),
        (vec!["--ai-provider", "magic"], vec![], "AI_PROVIDER"),
        (
            vec!["--port", busy_port.as_str()],
            vec![],
            "MCP_SERVER_PORT",
        ),
    ];
    for (args, envs, setting) in &cases {
        let (code, stderr) = run_hub(args, envs, &dir);
        assert_eq!(code, Some(2), "{args:?} {envs:?}: {stderr}");
        let lines: Vec<&str> = stderr.trim().lines().collect();
        assert_eq!(
            lines.len(),
            1,
            "{args:?} {envs:?}: one line, got:\n{stderr}"
        );
        assert!(
            lines[0].contains(setting),
            "{args:?} {envs:?}: `{}` does not name {setting}",
            lines[0]
        );
    }
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
async fn flags_beat_environment_beats_dotenv() {
    let dir = TempDir::new();
    let contacts = dir.write(
        "contacts.json",
        r#"[{"name":"Grandma","phone":"+4401"},"Dr. Who",{"name":"Zoe"}]"#,
    );
    dir.write(
        ".env",
        &format!(
            "INSTANCE_ID=from-dotenv\nCONTACTS_FILE={}\nAUTO_REPLY=\"dotenv says {{message}}\"\n",
            contacts.display()
        ),
    );
    // .env alone: all three settings apply.
    let hub = HubProcess::start_in(dir, &["--auto-reply-delay-ms", "1"], &[]).await;
    let (mut c, conf) = WsClient::register(&hub.ws_url(), "s", "c").await;
    assert_eq!(conf["instance"], "from-dotenv");
    assert_eq!(
        names(&c.registration_contacts()["contacts"]),
        ["Grandma", "Dr. Who", "Zoe"]
    );
    assert_eq!(c.registration_contacts()["contacts"][0]["phone"], "+4401");
    let r = c
        .request(json!({"type":"whatsapp_command","command":{"action":"send","contact":"grandma","message":"hi"}}))
        .await;
    assert_eq!(r["content"]["contact"], "Grandma", "{r}");
    loop {
        let ev = c.recv_type("message_event").await;
        if ev["direction"] == "incoming" {
            assert_eq!(ev["message"], "dotenv says hi");
            assert_eq!(ev["by"], "Grandma");
            break;
        }
    }
    drop(hub);

    // The environment beats .env; a flag beats both.
    let dir = TempDir::new();
    dir.write(".env", "INSTANCE_ID=from-dotenv\n");
    let hub = HubProcess::start_in(dir, &[], &[("INSTANCE_ID", "from-env")]).await;
    let (_c, conf) = WsClient::register(&hub.ws_url(), "s", "c").await;
    assert_eq!(conf["instance"], "from-env");
    drop(hub);
    let dir = TempDir::new();
    dir.write(".env", "INSTANCE_ID=from-dotenv\n");
    let hub = HubProcess::start_in(
        dir,
        &["--instance-id", "from-flag"],
        &[("INSTANCE_ID", "from-env")],
    )
    .await;
    let (_c, conf) = WsClient::register(&hub.ws_url(), "s", "c").await;
    assert_eq!(conf["instance"], "from-flag");
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_is_bounded_even_with_a_client_that_never_reads() {
    let mut hub = HubProcess::start(
        &[
            "--shutdown-timeout-ms",
            "2000",
            // Big enough that the stuck client is never cut off as slow.
            "--outbound-queue-len",
            "100000",
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
    assert_eq!(producer.expect_close().await, Some(1001));
    let status = hub
        .wait_exit(Duration::from_secs(20))
        .await
        .unwrap_or_else(|| panic!("shutdown not bounded; log:\n{}", hub.log()));
    assert!(status.success(), "{status:?}\n{}", hub.log());
    drop(stuck);
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
