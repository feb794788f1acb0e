//! The TypeScript SDK (clients/typescript, `@mcp-hub/client`) in Node with
//! the `ws` package, driven through clients/typescript/test/sdk_test.mjs:
//! a send and its `message_event`, a typed `HubError`, the bounded send
//! queue; a hub killed with `kill -9` and restarted on its port (same data
//! directory), and one of two hubs on Redis behind HAProxy, while the
//! client resumes with nothing lost; tokens renewed through `getToken()`,
//! before `exp` and after the hub's 4401; a connection gone silent,
//! noticed by the heartbeat.
//!
//! The SDK must be built: `cd clients/typescript && npm ci && npx tsc`
//! (./scripts/test does it).

use crate::support;

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use serde_json::{Value, json};
use support::*;
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};

const SECRET: &str = "0123456789abcdef0123456789abcdef-sdk-tests";

/// clients/typescript, built; panics with how to build it otherwise.
fn sdk_dir() -> PathBuf {
    let dir = repo_path("clients/typescript");
    for needed in ["dist/index.js", "node_modules/ws/package.json"] {
        assert!(
            dir.join(needed).exists(),
            "clients/typescript/{needed} is missing: build the SDK first \
             (cd clients/typescript && npm ci && npx tsc), or run ./scripts/test"
        );
    }
    dir
}

/// test/sdk_test.mjs running in `mode`; its stdout read line by line.
struct Script {
    child: Child,
    lines: Lines<BufReader<ChildStdout>>,
}

impl Script {
    fn start(args: &[&str]) -> Script {
        let dir = sdk_dir();
        let mut child = Command::new("node")
            .arg(dir.join("test/sdk_test.mjs"))
            .args(args)
            .current_dir(&dir)
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("node runs");
        let lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
        Script { child, lines }
    }

    /// The next JSON line (at most 30 s).
    async fn next(&mut self) -> Value {
        let line = tokio::time::timeout(Duration::from_secs(30), self.lines.next_line())
            .await
            .expect("the SDK script reports within 30 s")
            .expect("stdout")
            .expect("a line (the script failed: see its stderr)");
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"))
    }

    /// Waits for the script to exit successfully.
    async fn finish(mut self) {
        let status = tokio::time::timeout(Duration::from_secs(10), self.child.wait())
            .await
            .expect("the script exits")
            .expect("wait");
        assert!(status.success(), "the SDK script failed: {status}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sdk_registers_sends_and_receives_the_message_event() {
    let hub = TestHub::start(&[]).await;
    let mut script = Script::start(&["basic", &hub.ws_url()]);
    let report = script.next().await;
    script.finish().await;

    let registered = &report["registered"];
    assert_eq!(
        (&registered["client_id"], &registered["session"]),
        (&json!("sdk-1"), &json!("sdk-basic")),
        "{report}"
    );
    assert_eq!(registered["client_name"], "SDK test");
    let result = &report["result"];
    assert_eq!(
        (&result["success"], &result["executed_by"]),
        (&json!(true), &json!("simulated")),
        "{report}"
    );
    let event = &report["event"];
    assert_eq!(event["type"], "message_event");
    assert_eq!(
        (&event["contact"], &event["by"], &event["direction"]),
        (&json!("John"), &json!("sdk-1"), &json!("outgoing"))
    );
    assert_eq!(event["message_id"], result["message_id"]);
    assert!(
        event["offset"].is_u64() && event["epoch"].is_string(),
        "{event}"
    );
    // An `error` frame rejects the request with a typed HubError.
    assert_eq!(
        (&report["error"]["isHubError"], &report["error"]["code"]),
        (&json!(true), &json!("unknown_action")),
        "{report}"
    );
    assert_eq!(report["pong"]["type"], "pong");
    // Backpressure: two requests queued, the third refused, the queued
    // ones rejected by the abort, and the never-connected client too.
    assert_eq!(report["queuedBefore"], 2, "{report}");
    assert_eq!(report["third"], "queue_full", "{report}");
    assert_eq!(
        report["afterAbort"],
        json!(["closed", "closed"]),
        "{report}"
    );
    assert_eq!(report["ready"], "closed", "{report}");
}

/// Sends `text` to John as `client`; asserts it was sent.
async fn send(client: &mut WsClient, text: &str) {
    let answer = client.request(send_cmd("John", text)).await;
    assert_eq!(answer["content"]["success"], true, "{answer}");
}

/// The hub is killed (`kill -9`) under the SDK client. While the client
/// retries its port, a hub on the same data directory (elsewhere) takes N
/// sends and is killed too; then the hub comes back on the client's port.
/// The client resumes (`recovered: true`) and gets the N sends, then M
/// live ones: every one once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hub_killed_and_restarted_loses_nothing_for_a_resuming_sdk_client() {
    const AWAY: usize = 12;
    const AFTER: usize = 3;
    let data = TempDir::new();
    let data_dir = data.path().to_str().expect("utf8").to_string();
    let mut hub = HubProcess::start(&["--data-dir", &data_dir], &[]).await;
    let port = hub.addr.port().to_string();
    let mut script = Script::start(&[
        "resume",
        &hub.ws_url(),
        &AWAY.to_string(),
        &AFTER.to_string(),
    ]);
    let first = script.next().await;
    assert!(first["registered"].is_u64(), "{first}");

    hub.kill();
    let mut away = HubProcess::start(&["--data-dir", &data_dir], &[]).await;
    let (mut producer, _) = WsClient::register(&away.ws_url(), "sdk-resume", "producer").await;
    for n in 0..AWAY {
        send(&mut producer, &format!("away {n}")).await;
    }
    away.kill();

    let hub = HubProcess::start(&["--data-dir", &data_dir, "--port", &port], &[]).await;
    let resumed = script.next().await;
    assert_eq!(resumed["resumed"], true, "{resumed}");
    assert_eq!(resumed["since"]["epoch"], first["epoch"], "{resumed}");
    let (mut producer, _) = WsClient::register(&hub.ws_url(), "sdk-resume", "producer").await;
    for n in 0..AFTER {
        send(&mut producer, &format!("after {n}")).await;
    }
    let report = script.next().await;
    script.finish().await;

    let expected: Vec<String> = (0..AWAY)
        .map(|n| format!("away {n}"))
        .chain((0..AFTER).map(|n| format!("after {n}")))
        .collect();
    assert_eq!(report["received"], json!(expected), "{report}");
    assert_eq!(report["replayed"], AWAY, "{report}");
    assert!(
        report["disconnects"]
            .as_array()
            .is_some_and(|d| !d.is_empty()),
        "{report}"
    );
}

/// A token of the SDK test's session, valid `secs` seconds.
fn token(secs: u64) -> String {
    client_token(SECRET, "sdk-app", "sdk-token", secs)
}

/// getToken() reads a file the test rewrites: the first token lives 3 s;
/// once the client registered, the file holds a fresh one. `refresh`: the
/// client reconnects with it before `exp`; `expire`: after the hub's 4401.
/// Either way it resumes and sees what is sent afterwards.
async fn renews_its_token(how: &str) {
    let hub = TestHub::start(&["--auth-jwt-secret", SECRET]).await;
    let dir = TempDir::new();
    let file = dir.write("token", &token(3));
    let mut script = Script::start(&["token", &hub.ws_url(), file.to_str().expect("utf8"), how]);
    assert_eq!(script.next().await["registered"], 1);
    dir.write("token", &token(600));

    let again = script.next().await;
    assert_eq!(
        (&again["registered"], &again["recovered"]),
        (&json!(2), &json!(true)),
        "{again}"
    );
    let (mut sender, _) = WsClient::register_with_token(
        &hub.ws_url(),
        &token(600),
        json!({"type": "register", "session": "sdk-token", "client_id": "sender"}),
    )
    .await;
    send(&mut sender, "after the refresh").await;
    let report = script.next().await;
    script.finish().await;

    assert_eq!(report["event"], "after the refresh", "{report}");
    assert_eq!(report["tokens"], 2, "two tokens were used: {report}");
    let codes: Vec<u64> = report["disconnects"]
        .as_array()
        .expect("disconnects")
        .iter()
        .filter_map(|d| d["code"].as_u64())
        .collect();
    match how {
        "refresh" => assert_eq!(codes, [1000], "renewed before exp: {report}"),
        _ => assert_eq!(codes, [4401], "the hub closed at exp: {report}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sdk_renews_its_token_before_it_expires() {
    renews_its_token("refresh").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sdk_reconnects_with_a_fresh_token_after_the_hub_closes_4401() {
    renews_its_token("expire").await;
}

/// A connection that goes silent without closing (a relay in the script
/// drops every byte both ways): no frame for the heartbeat timeout, and
/// the client drops it, reconnects and resumes with the sends it missed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sdk_notices_a_silent_connection_and_resumes() {
    let hub = TestHub::start(&[]).await;
    let mut script = Script::start(&["heartbeat", &hub.ws_url()]);
    let report = script.next().await;
    script.finish().await;
    assert_eq!(
        report["received"],
        json!(["while frozen 0", "while frozen 1", "while frozen 2"]),
        "{report}"
    );
    assert_eq!(report["recovered"], true, "{report}");
    assert!(
        report["reason"]
            .as_str()
            .is_some_and(|r| r.starts_with("no frame for")),
        "{report}"
    );
    // Heartbeat timeout 1.2 s, checked every 300 ms.
    let detected = report["detectedMs"].as_u64().expect("detectedMs");
    assert!((1000..5000).contains(&detected), "{report}");
}

/// The same through HAProxy to two hubs on Redis: the hub the SDK client
/// is on is killed (`kill -9`); sends made on the other meanwhile, and
/// after, all reach the client once, in order, once it has resumed
/// through the load balancer; then the killed hub comes back on its port.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_haproxy_a_killed_hub_loses_nothing_for_a_resuming_sdk_client() {
    const AWAY: usize = 12;
    const AFTER: usize = 3;
    let redis = RedisServer::start();
    let redis_url = redis.url();
    let hub_args = |id: &'static str| -> Vec<String> {
        [
            "--redis-url",
            &redis_url,
            "--instance-id",
            id,
            "--heartbeat-ms",
            "500",
            "--presence-ttl-ms",
            "5000",
        ]
        .map(str::to_string)
        .to_vec()
    };
    let mut hubs = Vec::new();
    for id in ["ts1", "ts2"] {
        let args = hub_args(id);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        hubs.push(HubProcess::start(&args, &[]).await);
    }
    let addrs: Vec<_> = hubs.iter().map(|h| h.addr).collect();
    let lb = Haproxy::start(&addrs, 2);
    let lb_url = format!("ws://127.0.0.1:{}/", lb.port);
    let mut script = Script::start(&["resume", &lb_url, &AWAY.to_string(), &AFTER.to_string()]);
    let first = script.next().await;
    let on = match first["instance"].as_str() {
        Some("ts1") => 0,
        Some("ts2") => 1,
        other => panic!("an instance of ours: {other:?} {first}"),
    };
    let (killed_id, survivor) = (["ts1", "ts2"][on], 1 - on);
    let port = hubs[on].addr.port().to_string();

    hubs[on].kill();
    let (mut producer, _) =
        WsClient::register(&hubs[survivor].ws_url(), "sdk-resume", "producer").await;
    for n in 0..AWAY {
        send(&mut producer, &format!("away {n}")).await;
    }
    let resumed = script.next().await;
    assert_eq!(resumed["resumed"], true, "{resumed}");
    assert_eq!(resumed["since"]["epoch"], first["epoch"], "{resumed}");
    for n in 0..AFTER {
        send(&mut producer, &format!("after {n}")).await;
    }
    let report = script.next().await;
    script.finish().await;
    let expected: Vec<String> = (0..AWAY)
        .map(|n| format!("away {n}"))
        .chain((0..AFTER).map(|n| format!("after {n}")))
        .collect();
    assert_eq!(report["received"], json!(expected), "{report}");

    // The killed hub comes back on its port and serves again.
    let mut args = hub_args(killed_id);
    args.extend(["--port".to_string(), port]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let back = HubProcess::start(&args, &[]).await;
    let (_, conf) = WsClient::register(&back.ws_url(), "sdk-resume", "late").await;
    assert_eq!(conf["epoch"], first["epoch"], "{conf}");
}

/// The SDK's protocol decisions (close codes, resume positions, offsets,
/// request ids) agree with the terminal client's and the Python SDK's on
/// every case of clients/cases/protocol-cases.json (test/cases_test.mjs).
#[test]
fn the_sdk_agrees_with_every_shared_protocol_case() {
    let dir = sdk_dir();
    let out = std::process::Command::new("node")
        .arg(dir.join("test/cases_test.mjs"))
        .current_dir(&dir)
        .output()
        .expect("node runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let report: Value = serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("{e}: {stdout}{}", String::from_utf8_lossy(&out.stderr)));
    assert_eq!(report["failures"], json!([]), "{report:#}");
    assert!(report["cases"].as_u64() > Some(30), "{report}");
    assert!(out.status.success());
}
