//! Standalone mode, process lifecycle: graceful shutdown on SIGTERM
//! (close 1001 for everyone, queued events delivered first, exit 0 within
//! the shutdown bound), configuration errors (exit 2, one line naming the
//! setting), the contacts file, and `.env` with its precedence (flag >
//! environment > .env).

mod common;
mod standalone_support;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use common::{HubProcess, WsClient, free_port, hub_binary};
use serde_json::json;
use standalone_support::*;

/// A private directory for one test, removed on drop.
struct Dir(PathBuf);

impl Dir {
    fn new(tag: &str) -> Dir {
        let dir =
            std::env::temp_dir().join(format!("mcp-hub-lifecycle-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        Dir(dir)
    }

    fn file(&self, name: &str, contents: &str) -> PathBuf {
        let path = self.0.join(name);
        std::fs::write(&path, contents).expect("write");
        path
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs the hub to completion (it is expected to refuse to start) in `cwd`
/// with only `envs` in its environment; returns (exit code, stderr).
fn run_to_exit(cwd: &Path, args: &[&str], envs: &[(&str, &str)]) -> (Option<i32>, String) {
    let mut cmd = std::process::Command::new(hub_binary());
    cmd.args(args)
        .current_dir(cwd)
        .env_clear()
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("spawn mcp-hub");
    // Bounded: a hub that unexpectedly starts serving is killed.
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while matches!(child.try_wait(), Ok(None)) {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("mcp-hub {args:?} {envs:?} did not exit (it should refuse to start)");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().expect("output");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn assert_one_line_naming(stderr: &str, setting: &str, what: &str) {
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "{what}: one line on stderr, got:\n{stderr}");
    assert!(
        lines[0].contains(setting),
        "{what}: must name {setting}: {stderr}"
    );
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
async fn shutdown_is_bounded_even_with_a_client_that_reads_nothing() {
    let mut hub = HubProcess::start(
        &[
            "--shutdown-timeout-ms",
            "1000",
            "--outbound-queue-len",
            "4096",
            "--rate-limit-per-sec",
            "100000",
            "--rate-limit-burst",
            "100000",
        ],
        &[],
    )
    .await;
    let url = hub.ws_url();
    let (_stuck, _) = WsClient::register(&url, "b", "stuck").await;
    let (mut sender, _) = WsClient::register(&url, "b", "sender").await;
    let (mut other, _) = WsClient::register(&url, "other", "other").await;
    let fill = "s".repeat(60_000);
    for round in 0..80 {
        sender
            .send_json(json!({"type": "broadcast", "payload": {"round": round, "fill": fill}}))
            .await;
    }
    sender
        .request(json!({"type": "broadcast", "payload": "last"}))
        .await;
    hub.sigterm();
    // The others are closed normally; `stuck` is never read from.
    assert_eq!(other.expect_close().await, Some(1001));
    assert_eq!(sender.expect_close().await, Some(1001));
    let status = hub
        .wait_exit(Duration::from_secs(20))
        .await
        .expect("the hub must not wait for a client that reads nothing");
    assert_eq!(status.code(), Some(0), "{status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configuration_errors_exit_2_with_one_line_naming_the_setting() {
    let dir = Dir::new("config");
    let cwd = dir.0.as_path();
    let (code, err) = run_to_exit(cwd, &["--redis-url", "http://x"], &[]);
    assert_eq!(code, Some(2), "{err}");
    assert_one_line_naming(&err, "REDIS_URL", "--redis-url http://x");
    let (code, err) = run_to_exit(cwd, &["serve"], &[("REDIS_URL", "localhost:6379")]);
    assert_eq!(code, Some(2), "{err}");
    assert_one_line_naming(&err, "REDIS_URL", "REDIS_URL=localhost:6379");

    let (code, err) = run_to_exit(cwd, &[], &[("MCP_SERVER_PORT", "abc")]);
    assert_eq!(code, Some(2), "{err}");
    assert_one_line_naming(&err, "MCP_SERVER_PORT", "MCP_SERVER_PORT=abc");
    let (code, err) = run_to_exit(cwd, &["serve"], &[("MCP_SERVER_PORT", "70000")]);
    assert_eq!(code, Some(2), "{err}");
    assert_one_line_naming(&err, "MCP_SERVER_PORT", "MCP_SERVER_PORT=70000");

    let missing = dir.0.join("no-such-contacts.json");
    let missing = missing.to_str().expect("utf-8");
    let (code, err) = run_to_exit(cwd, &[], &[("CONTACTS_FILE", missing)]);
    assert_eq!(code, Some(2), "{err}");
    assert_one_line_naming(&err, "CONTACTS_FILE", "CONTACTS_FILE missing");
    let (code, err) = run_to_exit(cwd, &["serve", "--contacts-file", missing], &[]);
    assert_eq!(code, Some(2), "{err}");
    assert_one_line_naming(&err, "CONTACTS_FILE", "--contacts-file missing");
    for (name, contents) in [
        ("broken.json", "{not json"),
        ("object.json", r#"{"name": "John"}"#),
        ("blank.json", r#"["John", "  "]"#),
    ] {
        let path = dir.file(name, contents);
        let (code, err) = run_to_exit(
            cwd,
            &["--contacts-file", path.to_str().expect("utf-8")],
            &[],
        );
        assert_eq!(code, Some(2), "{name}: {err}");
        assert_one_line_naming(&err, "CONTACTS_FILE", name);
    }

    for (args, envs, setting) in [
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
            vec![],
            vec![("OUTBOUND_QUEUE_LEN", "0")],
            "OUTBOUND_QUEUE_LEN",
        ),
        (vec!["--instance-id", " "], vec![], "INSTANCE_ID"),
        (
            vec![],
            vec![("AGENT_TIMEOUT_MS", "soon")],
            "AGENT_TIMEOUT_MS",
        ),
    ] {
        let (code, err) = run_to_exit(cwd, &args, &envs);
        assert_eq!(code, Some(2), "{args:?} {envs:?}: {err}");
        assert_one_line_naming(&err, setting, &format!("{args:?} {envs:?}"));
    }

    // A port that is taken: exit 2 naming the setting.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = taken.local_addr().expect("addr").port().to_string();
    let (code, err) = run_to_exit(cwd, &["--port", &port], &[]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("MCP_SERVER_PORT"), "{err}");
    assert!(
        err.lines().last().is_some_and(|l| l.contains(&port)),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_contacts_file_is_honoured_from_the_flag_or_the_environment() {
    let dir = Dir::new("contacts");
    let file = dir.file(
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

impl Drop for Spawned {
    fn drop(&mut self) {
        let _ = self.0.start_kill();
    }
}

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

/// The auto-reply text the hub on `port` answers "hi" with.
async fn auto_reply_on(port: u16) -> String {
    let url = format!("ws://127.0.0.1:{port}/");
    let (mut c, _) = WsClient::register(&url, "env", "probe").await;
    c.request(send_cmd("john", "hi")).await;
    loop {
        let ev = c.recv_type("message_event").await;
        if ev["direction"] == "incoming" {
            return ev["message"].as_str().unwrap_or_default().to_string();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dotenv_is_read_and_flags_beat_environment_beat_dotenv() {
    let dir = Dir::new("dotenv");
    let (p1, p2, p3) = (free_port(), free_port(), free_port());
    dir.file(
        ".env",
        &format!(
            "# settings for this directory\nINSTANCE_ID=from-dotenv\nMCP_SERVER_PORT={p1}\nAUTO_REPLY=\"dotenv: {{message}}\"\nAUTO_REPLY_DELAY_MS=10\n"
        ),
    );
    let cwd = dir.0.as_path();

    // Only .env: all of it applies.
    let (hub, cluster) = spawn_in(cwd, &[], &[], p1).await;
    assert_eq!(cluster["instance"], "from-dotenv", "{cluster}");
    assert_eq!(auto_reply_on(p1).await, "dotenv: hi");
    drop(hub);

    // The environment beats .env; .env still fills in the rest.
    let p2s = p2.to_string();
    let env = [
        ("INSTANCE_ID", "from-env"),
        ("MCP_SERVER_PORT", p2s.as_str()),
    ];
    let (hub, cluster) = spawn_in(cwd, &["serve"], &env, p2).await;
    assert_eq!(cluster["instance"], "from-env", "{cluster}");
    assert_eq!(auto_reply_on(p2).await, "dotenv: hi");
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
    assert_eq!(auto_reply_on(p3).await, "flag: hi");
}
