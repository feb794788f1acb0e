//! The Python SDK (clients/python, `mcp_hub_client`) against real hubs:
//! clients/python/tests/scenarios.py registers, sends and receives its
//! `message_event`; resumes with nothing lost across a hub killed with
//! `kill -9` and restarted on the same port and data directory; and
//! replaces a short-lived token before it expires (or after the hub's
//! 4401), reading the new one through its `get_token` callable.
//!
//! Needs python3 with `websockets` (scripts/test installs it); without it
//! the tests say so and pass, like the other interop suites.

use crate::support;

use std::process::Stdio;
use std::time::Duration;

use mcp_hub::auth::{Role, mint};
use serde_json::{Value, json};
use support::*;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};

const SECRET: &str = "0123456789abcdef0123456789abcdef-sdk-python";

/// Bound on any one line of a scenario.
const LINE_TIMEOUT: Duration = Duration::from_secs(60);

/// python3 with `websockets` (the SDK's one dependency); false, saying so,
/// without it.
fn sdk_runs() -> bool {
    let ok = std::process::Command::new("python3")
        .args(["-c", "import websockets.asyncio.client"])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        eprintln!(
            "skipping: python3 with websockets is missing (python3 -m pip install 'websockets>=15', or ./scripts/test)"
        );
    }
    ok
}

/// A running scenarios.py: its stdout, one JSON object a line.
struct Scenario {
    child: Child,
    lines: Lines<BufReader<ChildStdout>>,
    stderr: tokio::task::JoinHandle<String>,
    seen: Vec<Value>,
}

impl Scenario {
    fn spawn(args: &[&str]) -> Scenario {
        let mut child = Command::new("python3")
            .arg(repo_path("clients/python/tests/scenarios.py"))
            .args(args)
            .env("PYTHONPATH", repo_path("clients/python/src"))
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("python3 runs");
        let lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
        let mut err = child.stderr.take().expect("stderr");
        let stderr = tokio::spawn(async move {
            let mut text = String::new();
            let _ = err.read_to_string(&mut text).await;
            text
        });
        Scenario {
            child,
            lines,
            stderr,
            seen: Vec::new(),
        }
    }

    /// Reads lines until one has `key`: its value.
    async fn until(&mut self, key: &str) -> Value {
        loop {
            let line = match tokio::time::timeout(LINE_TIMEOUT, self.lines.next_line()).await {
                Ok(Ok(Some(line))) => line,
                Ok(_) => self.fail(&format!("ended before a `{key}` line")).await,
                Err(_) => {
                    self.fail(&format!("no `{key}` line within {LINE_TIMEOUT:?}"))
                        .await
                }
            };
            let v: Value = serde_json::from_str(&line)
                .unwrap_or_else(|e| panic!("scenario printed a non-JSON line ({e}): {line}"));
            self.seen.push(v.clone());
            if let Some(found) = v.get(key) {
                return found.clone();
            }
        }
    }

    /// Reads `received` lines until `n` messages have arrived.
    async fn received(&mut self, n: u64) {
        while self.until("received").await.as_u64() != Some(n) {}
    }

    /// Whether a line with `key` has been printed by now (without waiting).
    async fn printed(&mut self, key: &str) -> bool {
        while let Ok(Ok(Some(line))) =
            tokio::time::timeout(Duration::from_millis(1), self.lines.next_line()).await
        {
            let v: Value = serde_json::from_str(&line).unwrap_or(Value::Null);
            self.seen.push(v);
        }
        self.seen.iter().any(|v| v.get(key).is_some())
    }

    /// The final report, after which the scenario must exit 0.
    async fn report(mut self) -> Value {
        let report = self.until("report").await;
        let status = tokio::time::timeout(LINE_TIMEOUT, self.child.wait())
            .await
            .expect("the scenario exits after its report")
            .expect("status");
        if !status.success() {
            self.fail(&format!("exited with {status}")).await;
        }
        report
    }

    async fn fail(&mut self, why: &str) -> ! {
        let _ = self.child.start_kill();
        let _ = self.child.wait().await;
        let stderr = (&mut self.stderr).await.unwrap_or_default();
        panic!(
            "scenario {why}; its lines: {:#?}\nstderr:\n{stderr}",
            self.seen
        );
    }
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .unwrap_or_else(|| panic!("not a list: {v}"))
        .iter()
        .map(|s| {
            s.as_str()
                .unwrap_or_else(|| panic!("not a string: {s}"))
                .to_string()
        })
        .collect()
}

fn numbered(range: std::ops::Range<usize>) -> Vec<String> {
    range.map(|n| format!("m{n}")).collect()
}

/// Offsets strictly increasing: no event twice, none out of order.
fn assert_increasing(offsets: &Value) {
    let offsets: Vec<u64> = offsets
        .as_array()
        .expect("offsets")
        .iter()
        .map(|o| o.as_u64().expect("an offset"))
        .collect();
    assert!(
        offsets.windows(2).all(|w| w[0] < w[1]),
        "offsets in order, each once: {offsets:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registers_sends_to_john_and_receives_the_message_event() {
    if !sdk_runs() {
        return;
    }
    let hub = TestHub::start(&[]).await;
    let report = Scenario::spawn(&["send", &hub.ws_url()]).report().await;

    let reg = &report["registration"];
    assert_eq!(reg["client_id"], "py-send", "{report:#}");
    assert_eq!(reg["client_name"], "Python SDK");
    assert_eq!(reg["session"], "sdk-send");
    assert_eq!(reg["recovered"], false);
    assert_eq!(strings(&reg["clients"]), ["py-send"]);
    assert_eq!(strings(&reg["contacts"]), BUILTIN);
    assert_eq!(report["contact_event"]["type"], "contact_list_broadcast");
    let epoch = reg["epoch"].as_str().expect("an epoch");
    assert!(!epoch.is_empty());

    // The answer matched by the generated request_id.
    let response = &report["response"];
    assert_eq!(response["type"], "response", "{response}");
    assert_eq!(response["response_type"], "whatsapp_command_result");
    assert_eq!(response["content"]["success"], true, "{response}");
    assert_eq!(response["content"]["contact"], "John");
    assert!(
        response["request_id"]
            .as_str()
            .is_some_and(|r| r.starts_with("py-")),
        "{response}"
    );

    // The event, with its log position after the registration's.
    let event = &report["event"];
    assert_eq!(event["type"], "message_event", "{event}");
    assert_eq!(event["direction"], "outgoing");
    assert_eq!(event["contact"], "John");
    assert_eq!(event["message"], "hello from python");
    assert_eq!(event["by"], "py-send");
    assert_eq!(event["message_id"], response["content"]["message_id"]);
    assert_eq!(event["epoch"], epoch);
    assert!(event["offset"].as_u64() > reg["offset"].as_u64(), "{event}");

    // An `error` frame is a typed HubError with the hub's code.
    let error = &report["error"];
    assert_eq!(error["code"], "unknown_action", "{error}");
    assert!(error["request_id"].is_string(), "{error}");
    assert_eq!(report["pong"]["type"], "pong");
    // close(): the events end, the client says it is closed.
    assert_eq!(report["closed"], true);
}

/// The hub is killed with `kill -9` and restarted on the same port and data
/// directory while the SDK client is reconnecting (its first retry 2.5 to
/// 5 s after the loss). Messages sent before the kill arrive live; the 15
/// sent after the restart, while the client is away, arrive after it
/// resumes (`recovered: true`, replayed: at or below its resumed offset);
/// all 20 exactly once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resumes_across_a_killed_and_restarted_hub_with_nothing_lost() {
    const BEFORE: usize = 5;
    const AWAY: usize = 15;
    if !sdk_runs() {
        return;
    }
    let data = TempDir::new();
    let data_dir = data.path().to_str().expect("utf8").to_string();
    let port = free_port().to_string();
    let args = ["--data-dir", data_dir.as_str(), "--port", port.as_str()];
    let mut hub = HubProcess::start(&args, &[]).await;
    let url = hub.ws_url();
    let total = (BEFORE + AWAY).to_string();
    let mut py = Scenario::spawn(&["resume", &url, &total, "--backoff", "5"]);
    py.until("ready").await;

    let (mut producer, _) = WsClient::register(&url, "sdk-resume", "producer").await;
    for n in 0..BEFORE {
        let answer = producer.request(send_cmd("John", &format!("m{n}"))).await;
        assert_eq!(answer["content"]["success"], true, "{answer}");
    }
    py.received(BEFORE as u64).await;

    hub.kill();
    drop(producer);
    let lost = py.until("disconnected").await;
    assert_eq!(lost["will_reconnect"], true, "{lost}");

    let _hub = HubProcess::start(&args, &[]).await;
    let (mut producer, _) = WsClient::register(&url, "sdk-resume", "producer").await;
    for n in BEFORE..BEFORE + AWAY {
        let answer = producer.request(send_cmd("John", &format!("m{n}"))).await;
        assert_eq!(answer["content"]["success"], true, "{answer}");
    }
    let last_offset = producer
        .flush()
        .await
        .iter()
        .filter(|f| f["type"] == "message_event")
        .filter_map(|f| f["offset"].as_u64())
        .max()
        .expect("the producer saw its message events");
    let away = !py.printed("reconnected").await;

    let report = py.report().await;
    assert_eq!(
        strings(&report["messages"]),
        numbered(0..BEFORE + AWAY),
        "every message once, in order: {report:#}"
    );
    assert_increasing(&report["offsets"]);
    let reconnects = report["reconnects"].as_array().expect("reconnects");
    assert_eq!(reconnects.len(), 1, "{report:#}");
    assert_eq!(reconnects[0]["recovered"], true, "{report:#}");
    assert_eq!(report["registrations"], 2, "{report:#}");
    // Killed: the connection ended without a close frame.
    assert_eq!(report["disconnects"][0]["code"], Value::Null, "{report:#}");
    // Everything sent after the restart was logged before the client came
    // back, so all of it came as the replay.
    assert!(away, "the client reconnected before the producer was done");
    assert!(
        reconnects[0]["offset"].as_u64() >= Some(last_offset),
        "{report:#}"
    );
    assert_eq!(report["replayed"], AWAY, "{report:#}");
}

/// The same behind HAProxy, on two hubs sharing Redis: the hub the Python
/// client is on is killed (`kill -9`), and what the producer sends on the
/// other hub meanwhile reaches the client once, in order, after it
/// resumes through the load balancer (`recovered: true`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_haproxy_a_killed_hub_loses_nothing_for_a_resuming_python_client() {
    const BEFORE: usize = 3;
    const AWAY: usize = 12;
    if !sdk_runs() {
        return;
    }
    let redis = RedisServer::start();
    let redis_url = redis.url();
    let mut hubs = Vec::new();
    for id in ["py1", "py2"] {
        let args = [
            "--redis-url",
            redis_url.as_str(),
            "--instance-id",
            id,
            "--heartbeat-ms",
            "500",
            "--presence-ttl-ms",
            "5000",
        ];
        hubs.push(HubProcess::start(&args, &[]).await);
    }
    let addrs: Vec<_> = hubs.iter().map(|h| h.addr).collect();
    let lb = Haproxy::start(&addrs, 2);
    let lb_url = format!("ws://127.0.0.1:{}/", lb.port);
    let total = (BEFORE + AWAY).to_string();
    let mut py = Scenario::spawn(&["resume", &lb_url, &total, "--backoff", "0.5"]);
    py.until("ready").await;

    // Which hub HAProxy gave the client.
    let (status, session) = http_get_json(&hubs[0], "/api/v1/sessions/sdk-resume").await;
    assert_eq!(status, 200, "{session}");
    let holder = session["clients"]
        .as_array()
        .expect("clients")
        .iter()
        .find(|c| c["client_id"] == "py-resume")
        .unwrap_or_else(|| panic!("py-resume is a member: {session}"))["instance"]
        .clone();
    let on = if holder == "py1" { 0 } else { 1 };
    let (mut producer, _) =
        WsClient::register(&hubs[1 - on].ws_url(), "sdk-resume", "producer").await;
    for n in 0..BEFORE {
        let answer = producer.request(send_cmd("John", &format!("m{n}"))).await;
        assert_eq!(answer["content"]["success"], true, "{answer}");
    }
    py.received(BEFORE as u64).await;

    hubs[on].kill();
    for n in BEFORE..BEFORE + AWAY {
        let answer = producer.request(send_cmd("John", &format!("m{n}"))).await;
        assert_eq!(answer["content"]["success"], true, "{answer}");
    }
    let report = py.report().await;
    assert_eq!(
        strings(&report["messages"]),
        numbered(0..BEFORE + AWAY),
        "every message once, in order: {report:#}"
    );
    assert_increasing(&report["offsets"]);
    let reconnects = report["reconnects"].as_array().expect("reconnects");
    assert!(!reconnects.is_empty(), "{report:#}");
    assert!(
        reconnects.iter().all(|r| r["recovered"] == true),
        "every resume recovered: {report:#}"
    );
}

/// A client token for the session `sdk-token`, valid for `secs`.
fn token(sub: &str, secs: u64) -> String {
    let sessions = ["sdk-token".to_string()];
    mint(
        SECRET,
        sub,
        &sessions,
        Role::Client,
        Duration::from_secs(secs),
    )
    .expect("mint")
}

/// Runs the `refresh` scenario: the client starts with a token that
/// expires in 4 s; once it is connected the token file holds a new one,
/// and a producer sends 12 messages over 6 s. The report.
async fn token_refresh(margin: &str) -> (Value, String, String) {
    const COUNT: usize = 12;
    let hub = TestHub::start(&["--auth-jwt-secret", SECRET]).await;
    let url = hub.ws_url();
    let short = token("py", 4);
    let long = token("py", 600);
    let dir = TempDir::new();
    let file = dir.path().join("token");
    std::fs::write(&file, &short).expect("write the token");
    let count = COUNT.to_string();
    let file_arg = file.to_str().expect("utf8");
    let mut py = Scenario::spawn(&[
        "refresh",
        &url,
        file_arg,
        &count,
        "--refresh-margin",
        margin,
    ]);
    py.until("ready").await;
    // The application renews its token (atomically: never half a file).
    let next = dir.path().join("token.new");
    std::fs::write(&next, &long).expect("write the token");
    std::fs::rename(&next, &file).expect("replace the token");

    let (mut producer, _) = WsClient::register_with_token(
        &url,
        &token("producer", 600),
        json!({"type": "register", "session": "sdk-token", "client_id": "producer"}),
    )
    .await;
    for n in 0..COUNT {
        let answer = producer.request(send_cmd("John", &format!("m{n}"))).await;
        assert_eq!(answer["content"]["success"], true, "{answer}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let report = py.report().await;
    assert_eq!(
        strings(&report["messages"]),
        numbered(0..COUNT),
        "every message once, in order: {report:#}"
    );
    assert_increasing(&report["offsets"]);
    let reconnects = report["reconnects"].as_array().expect("reconnects");
    assert_eq!(reconnects.len(), 1, "one reconnection: {report:#}");
    assert_eq!(reconnects[0]["recovered"], true, "{report:#}");
    // The first connection used the short token, the second the new one.
    assert_eq!(strings(&report["tokens"]), [short.clone(), long.clone()]);
    assert_eq!(report["pong"]["type"], "pong", "{report:#}");
    (report, short, long)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_is_replaced_before_it_expires() {
    if !sdk_runs() {
        return;
    }
    let (report, _, _) = token_refresh("30").await;
    // The client closed the old connection itself, before the hub's 4401.
    let lost = &report["disconnects"][0];
    assert_eq!(lost["code"], 1000, "{report:#}");
    assert_eq!(lost["reason"], "token refresh", "{report:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_4401_the_client_reconnects_with_a_new_token() {
    if !sdk_runs() {
        return;
    }
    // No refresh ahead of time: the hub closes at `exp` with 4401.
    let (report, _, _) = token_refresh("0").await;
    let lost = &report["disconnects"][0];
    assert_eq!(lost["code"], 4401, "{report:#}");
    assert_eq!(lost["will_reconnect"], true, "{report:#}");
}

/// The SDK's protocol decisions (close codes, resume positions, offsets,
/// request ids) agree with the terminal client's and the TypeScript SDK's
/// on every case of clients/cases/protocol-cases.json (tests/cases.py).
#[test]
fn the_sdk_agrees_with_every_shared_protocol_case() {
    if !sdk_runs() {
        return;
    }
    let out = std::process::Command::new("python3")
        .arg(repo_path("clients/python/tests/cases.py"))
        .env("PYTHONPATH", repo_path("clients/python/src"))
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .output()
        .expect("python3 runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let report: Value = serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("{e}: {stdout}{}", String::from_utf8_lossy(&out.stderr)));
    assert_eq!(report["failures"], json!([]), "{report:#}");
    assert!(report["cases"].as_u64() > Some(30), "{report}");
    assert!(out.status.success());
}
