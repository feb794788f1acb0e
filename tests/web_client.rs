//! The built-in web page (`web/index.html`) in a real browser (headless
//! chromium, tests/support/browser.rs) against real hub processes, which
//! can restart on the same port: the page runs on the TypeScript SDK the
//! hub serves (`/assets/mcp-hub-client.js`), reconnects by itself and says
//! whether it resumed; with the hub's state kept (`--data-dir`) it shows
//! what was sent while it was away, once; with authentication on it
//! explains a refused connection and an expired token. And the SDK bundle the binary
//! serves is a fresh build of clients/typescript/src. (The dashboard, this
//! page's link to it, and how both pages show an image in a message:
//! tests/dashboard.rs.)

use crate::support;

use std::process::Command;
use std::time::Duration;

use fantoccini::Locator;
use serde_json::json;
use support::browser::Browser;
use support::*;

/// The committed bundle (what the binary embeds and serves) is
/// byte-identical to one built now from the SDK's sources, so the two
/// cannot drift: after changing clients/typescript/src, rebuild it with
/// `node scripts/bundle.mjs` there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_served_sdk_bundle_is_a_fresh_build_of_the_sdk() {
    if !have("node") {
        eprintln!("skipped: no Node.js to rebuild the SDK bundle and compare");
        return;
    }
    let sdk = repo_path("clients/typescript");
    assert!(
        sdk.join("node_modules/esbuild/package.json").exists(),
        "clients/typescript/node_modules/esbuild is missing: cd clients/typescript && npm ci \
         (./scripts/test does it)"
    );
    let dir = TempDir::new();
    let fresh = dir.path().join("mcp-hub-client.js");
    let out = Command::new("node")
        .arg("scripts/bundle.mjs")
        .arg(&fresh)
        .current_dir(&sdk)
        .output()
        .expect("node runs");
    assert!(
        out.status.success(),
        "the bundle build failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let fresh = std::fs::read(&fresh).expect("the fresh bundle");
    let committed =
        std::fs::read(repo_path("src/server/assets/mcp-hub-client.js")).expect("the bundle");
    assert!(
        fresh == committed,
        "src/server/assets/mcp-hub-client.js is not a build of clients/typescript/src: \
         run `node scripts/bundle.mjs` in clients/typescript and commit the result"
    );

    // And the hub serves exactly those bytes, as JavaScript.
    let hub = TestHub::start(&[]).await;
    let served = reqwest::get(hub.http_url("/assets/mcp-hub-client.js"))
        .await
        .expect("GET the bundle");
    assert_eq!(served.status(), 200);
    assert_eq!(
        served.headers()["content-type"],
        "text/javascript; charset=utf-8"
    );
    assert!(served.bytes().await.expect("body") == committed);
}

/// Types `text` into the page's input and submits it (Enter).
async fn type_line(browser: &Browser, text: &str) {
    browser
        .client
        .find(Locator::Css("#input"))
        .await
        .expect("the input")
        .send_keys(&format!("{text}\u{E007}"))
        .await
        .expect("type");
}

/// The page's log lines containing `needle`.
async fn log_lines_with(browser: &Browser, needle: &str) -> Vec<String> {
    let found = browser
        .client
        .execute(
            "return [...document.querySelectorAll('#log div')].map((d) => d.textContent)
                .filter((t) => t.includes(arguments[0]))",
            vec![json!(needle)],
        )
        .await
        .expect("read the log");
    serde_json::from_value(found).expect("strings")
}

async fn open_page(browser: &Browser, hub: &HubProcess) {
    browser
        .client
        .goto(&hub.http_url("/ui"))
        .await
        .expect("open the web page");
    browser
        .wait_for("#log div", |t| t.contains("registered as"))
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_web_page_reconnects_after_the_hub_restarts() {
    assert!(
        Browser::available(),
        "this test needs Debian's chromium and chromium-driver (scripts/test installs them)"
    );
    let port = free_port().to_string();
    let mut hub = HubProcess::start(&["--port", &port], &[]).await;
    let browser = Browser::start().await;
    open_page(&browser, &hub).await;
    type_line(&browser, "/send John before").await;
    browser
        .wait_for("#log div", |t| t.contains("→ John: before"))
        .await;

    hub.sigterm();
    assert!(hub.wait_exit(Duration::from_secs(15)).await.is_some());
    browser
        .wait_for("#log div", |t| t.contains("connection lost (1001"))
        .await;
    // A fresh working directory: the restarted hub keeps nothing.
    let _hub = HubProcess::start(&["--port", &port], &[]).await;
    browser
        .wait_for("#log div", |t| t.contains("reconnected as"))
        .await;
    // No event log to resume from.
    browser
        .wait_for("#log div", |t| {
            t.contains("(could not resume: history reloaded)")
        })
        .await;
    type_line(&browser, "/send John after").await;
    browser
        .wait_for("#log div", |t| t.contains("→ John: after"))
        .await;
    browser.quit().await;
}

/// With its state on disk the restarted hub still has the session's event
/// log: the page registers again with `since` (the SDK's resume) and is
/// replayed what it missed. To send something while the page is away, the
/// hub first comes back refusing the page's `Origin` (the page keeps
/// retrying) while a client without one sends; then it restarts as usual.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_web_page_resumes_after_a_restart_and_shows_what_it_missed_once() {
    assert!(
        Browser::available(),
        "this test needs Debian's chromium and chromium-driver (scripts/test installs them)"
    );
    let data = TempDir::new();
    let data_dir = data.path().to_str().expect("utf8").to_string();
    let port = free_port().to_string();
    let args = ["--port", port.as_str(), "--data-dir", data_dir.as_str()];
    let mut hub = HubProcess::start(&args, &[]).await;
    let browser = Browser::start().await;
    open_page(&browser, &hub).await;
    type_line(&browser, "/send John before").await;
    browser
        .wait_for("#log div", |t| t.contains("→ John: before"))
        .await;

    hub.sigterm();
    assert!(hub.wait_exit(Duration::from_secs(15)).await.is_some());
    let closed_to_pages = [
        &args[..],
        &["--allowed-origins", "https://elsewhere.example"],
    ]
    .concat();
    let mut away = HubProcess::start(&closed_to_pages, &[]).await;
    let (mut phone, _) = WsClient::register(&away.ws_url(), "default", "phone").await;
    let answer = phone
        .request(json!({"type": "whatsapp_command",
            "command": {"action": "send", "contact": "John", "message": "while away"}}))
        .await;
    assert_eq!(answer["content"]["success"], true, "{answer}");
    drop(phone);
    away.sigterm();
    assert!(away.wait_exit(Duration::from_secs(15)).await.is_some());

    let _hub = HubProcess::start(&args, &[]).await;
    browser
        .wait_for("#log div", |t| t.contains("(resumed: "))
        .await;
    browser
        .wait_for("#log div", |t| t.contains("→ John: while away"))
        .await;
    type_line(&browser, "/send John after").await;
    browser
        .wait_for("#log div", |t| t.contains("→ John: after"))
        .await;
    assert_eq!(
        log_lines_with(&browser, "while away").await.len(),
        1,
        "the missed message shows once"
    );
    assert!(
        log_lines_with(&browser, "could not resume")
            .await
            .is_empty(),
        "it resumed"
    );
    browser.quit().await;
}

const SECRET: &str = "0123456789abcdef0123456789abcdef-web-client";

/// With authentication on, the page explains a refused connection (a 401
/// is invisible to a WebSocket: it asks the REST API) and stops; with a
/// token it registers, and when the token expires (close 4401) it says so
/// instead of reconnecting with it. Its prompts for a new token are
/// dismissed here (chromedriver's default).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_web_page_explains_a_missing_token_and_an_expired_one() {
    assert!(
        Browser::available(),
        "this test needs Debian's chromium and chromium-driver (scripts/test installs them)"
    );
    let hub = TestHub::start(&["--auth-jwt-secret", SECRET]).await;
    let browser = Browser::start().await;
    browser
        .client
        .goto(&hub.http_url("/ui"))
        .await
        .expect("open the web page");
    browser
        .wait_for("#log div.err", |t| {
            t.contains("the hub needs a valid token (401")
        })
        .await;
    browser
        .wait_for("#status", |t| t.starts_with("closed (1006"))
        .await;

    let short = client_token(SECRET, "web", "default", 2);
    browser
        .client
        .execute(
            "sessionStorage.setItem('mcp-hub-token', arguments[0])",
            vec![json!(short)],
        )
        .await
        .expect("store the token");
    browser
        .client
        .goto(&hub.http_url("/ui"))
        .await
        .expect("open the web page again");
    browser
        .wait_for("#log div", |t| t.contains("registered as"))
        .await;
    browser
        .wait_for("#log div.err", |t| {
            t.contains("token expired: enter a new one")
        })
        .await;
    assert!(
        log_lines_with(&browser, "reconnecting").await.is_empty(),
        "an expired token is not retried"
    );
    browser.quit().await;
}
