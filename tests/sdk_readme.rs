//! The SDK READMEs' examples, run as a new developer would paste them
//! (issue 24: "connects a TypeScript app and a Python script with the
//! README's 10 lines each"): the first code block of
//! clients/typescript/README.md and of clients/python/README.md, with only
//! the hub's address changed, against an in-process hub. A client of the
//! same session sees the example's message, so an example that stops
//! working (a renamed call, a changed default) fails here.

use crate::support;

use std::process::Stdio;
use std::time::Duration;

use serde_json::json;
use support::*;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

/// The address the READMEs' examples connect to.
const README_URL: &str = "ws://127.0.0.1:8002/";
const SECRET: &str = "0123456789abcdef0123456789abcdef-readme-tests";

/// The first fenced block of `readme` whose info string is `lang`, with the
/// hub's address replaced by `url`.
fn example(readme: &str, lang: &str, url: &str) -> String {
    let text = std::fs::read_to_string(repo_path(readme)).expect("the README");
    let fence = format!("```{lang}\n");
    let start = text
        .find(&fence)
        .unwrap_or_else(|| panic!("{readme} has no ```{lang} block"))
        + fence.len();
    let body = &text[start..];
    let body = &body[..body.find("\n```").expect("the block ends")];
    assert!(
        body.contains(README_URL),
        "{readme}'s example no longer connects to {README_URL}"
    );
    body.replace(README_URL, url)
}

/// Waits for the session's `message_event` carrying `text` by `by`.
async fn sees_message(observer: &mut WsClient, by: &str, text: &str) {
    loop {
        let event = observer.recv_type("message_event").await;
        if event["message"] == text {
            assert_eq!(
                (&event["by"], &event["contact"]),
                (&json!(by), &json!("John")),
                "{event}"
            );
            return;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_typescript_readme_example_sends_through_a_hub_that_wants_tokens() {
    let sdk = repo_path("clients/typescript");
    assert!(
        sdk.join("dist/index.js").exists() && sdk.join("node_modules/ws").exists(),
        "build the SDK first (cd clients/typescript && npm ci && npx tsc), or run ./scripts/test"
    );
    let hub = TestHub::start(&["--auth-jwt-secret", SECRET]).await;
    let token = |sub: &str| client_token(SECRET, sub, "default", 600);
    let (mut observer, _) = WsClient::register_with_token(
        &hub.ws_url(),
        &token("observer"),
        json!({"type": "register", "session": "default", "client_id": "observer"}),
    )
    .await;

    // The example as an app would hold it: an ES module next to its
    // node_modules, with the two functions it leaves to the app.
    let dir = TempDir::new();
    let modules = dir.path().join("node_modules");
    std::fs::create_dir_all(modules.join("@mcp-hub")).expect("node_modules");
    std::os::unix::fs::symlink(&sdk, modules.join("@mcp-hub/client")).expect("link the SDK");
    std::os::unix::fs::symlink(sdk.join("node_modules/ws"), modules.join("ws")).expect("link ws");
    let app = format!(
        "const fetchToken = async () => {:?};\nconst reloadEverything = () => {{}};\n{}\n",
        token("desk"),
        example("clients/typescript/README.md", "ts", &hub.ws_url())
    );
    let script = dir.write("app.mjs", &app);
    let out = tokio::time::timeout(
        Duration::from_secs(30),
        Command::new("node")
            .arg(&script)
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("the example ends by itself within 30 s")
    .expect("node runs");
    assert_succeeded(&out, "the README example failed");
    sees_message(&mut observer, "desk", "Hello!").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_readme_example_sends_and_prints_the_sessions_events() {
    let hub = TestHub::start(&[]).await;
    let (mut observer, _) = WsClient::register(&hub.ws_url(), "default", "observer").await;
    let code = example("clients/python/README.md", "python", &hub.ws_url());
    let mut child = Command::new("python3")
        .args(["-c", &code])
        .env("PYTHONPATH", repo_path("clients/python/src"))
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .env("PYTHONUNBUFFERED", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("python3 runs");
    sees_message(&mut observer, "bot", "Hello!").await;

    // The example prints the session's events as they come, its own
    // message among them; it runs until stopped.
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let printed = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(line) = lines.next_line().await.expect("stdout") {
            if line.contains("message_event") && line.contains("Hello!") {
                return line;
            }
        }
        panic!("the example ended without printing its message_event");
    })
    .await
    .expect("the example prints its message_event within 30 s");
    assert!(printed.contains("'by': 'bot'"), "{printed}");
    child.kill().await.expect("stop the example");
}
