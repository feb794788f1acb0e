//! The dashboard in a real browser (headless chromium over WebDriver,
//! docs/dashboard.md): three hubs on one Redis (a Redis Cluster with
//! `MCP_HUB_TEST_REDIS=cluster`), the page opened on the
//! first through the web page's link, showing the whole cluster and
//! following it live — a client connecting on another instance appears
//! without a reload, and disconnecting it from the page closes it (4002)
//! and removes it. Both pages run under their Content-Security-Policy
//! (issue 19): their inline style and their scripts served by the hub
//! (the SDK bundle among them) apply, and the web page's WebSocket to its
//! own origin connects. An image in a message shows
//! inline on both pages, its bytes fetched with the page's token. The
//! dashboard's feed comes back after its hub restarts, still watching.

use crate::support;

use std::time::{Duration, Instant};

use base64::Engine;
use fantoccini::Locator;
use mcp_hub::auth::{Role, mint};
use serde_json::{Value, json};
use support::browser::{Browser, PAGE_TIMEOUT};
use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_shows_the_cluster_live_and_disconnects_a_client() {
    assert!(
        Browser::available(),
        "this test needs Debian's chromium and chromium-driver (scripts/test installs them)"
    );
    let redis = TestRedis::start();
    let hubs = start_cluster(&redis, &["hub-1", "hub-2", "hub-3"], &[]).await;
    let browser = Browser::start().await;

    // The web page registers by itself, then links to the dashboard.
    browser
        .client
        .goto(&hubs[0].http_url("/ui"))
        .await
        .expect("open the web page");
    browser
        .wait_for("#status", |t| t.contains(" @ hub-1"))
        .await;
    assert_eq!(header_background(&browser).await, "rgb(31, 41, 55)");
    browser.click("a[href='/dashboard']").await;
    browser.wait_for("#feed-status", |t| t == "live").await;
    assert_eq!(header_background(&browser).await, "rgb(29, 36, 48)");
    for id in ["hub-1", "hub-2", "hub-3"] {
        browser
            .wait_for(&format!("tr[data-instance='{id}']"), |t| {
                t.contains("ready")
            })
            .await;
    }

    // Clients on the other instances appear without a reload.
    let (_agent, _) = WsClient::register_with(
        &hubs[2].ws_url(),
        json!({"type": "register", "session": "demo", "client_id": "wa-agent",
               "client_name": "WhatsApp agent", "capabilities": ["whatsapp"]}),
    )
    .await;
    let (mut laptop, _) = WsClient::register(&hubs[2].ws_url(), "demo", "laptop").await;
    let (mut phone, _) = WsClient::register(&hubs[1].ws_url(), "demo", "phone").await;
    let phone_row = "li[data-session='demo'][data-client='phone']";
    let shown = browser.wait_for(phone_row, |t| t.contains("hub-2")).await;
    assert!(shown.contains("phone"), "{shown}");
    browser
        .wait_for(
            "li[data-session='demo'][data-client='wa-agent'] .agent-mark",
            |_| true,
        )
        .await;

    // The session's live events, and a test broadcast from the page.
    browser.click("div[data-session='demo'] h3 button").await;
    let text = browser
        .client
        .find(Locator::Css("#broadcast-text"))
        .await
        .expect("broadcast field");
    text.send_keys("hello from the dashboard")
        .await
        .expect("type");
    browser.click("#broadcast-form button").await;
    assert_eq!(
        laptop.recv_type("broadcast").await["payload"]["text"],
        "hello from the dashboard"
    );
    browser
        .wait_for("#events div", |t| t.contains("hello from the dashboard"))
        .await;
    let png = browser.client.screenshot().await.expect("screenshot");
    let shot = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("dashboard.png");
    std::fs::write(&shot, png).expect("save the screenshot");

    // Disconnect the phone (on hub-2) from the page on hub-1.
    browser
        .click(&format!("{phone_row} button.disconnect"))
        .await;
    assert_eq!(phone.expect_close().await, Some(4002));
    browser.wait_gone(phone_row).await;
    let left = laptop.recv_type("client_left").await;
    assert_eq!(left["client_id"], "phone", "{left}");
    browser.quit().await;
}

/// The dashboard's feed (the SDK's feed client) comes back by itself after
/// its hub restarts, live again and still watching its session: what the
/// session gets after the restart shows in the live events.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_feed_comes_back_after_a_hub_restart_still_watching() {
    assert!(
        Browser::available(),
        "this test needs Debian's chromium and chromium-driver (scripts/test installs them)"
    );
    let port = free_port().to_string();
    let mut hub = HubProcess::start(&["--port", &port], &[]).await;
    let (_laptop, _) = WsClient::register(&hub.ws_url(), "demo", "laptop").await;
    let browser = Browser::start().await;
    browser
        .client
        .goto(&hub.http_url("/dashboard"))
        .await
        .expect("open the dashboard");
    browser.wait_for("#feed-status", |t| t == "live").await;
    browser.click("div[data-session='demo'] h3 button").await;
    broadcast(&hub, "before the restart").await;
    browser
        .wait_for("#events div", |t| t.contains("before the restart"))
        .await;

    hub.sigterm();
    assert!(hub.wait_exit(Duration::from_secs(15)).await.is_some());
    browser
        .wait_for("#feed-status", |t| t.starts_with("disconnected"))
        .await;
    let hub = HubProcess::start(&["--port", &port], &[]).await;
    let (_laptop, _) = WsClient::register(&hub.ws_url(), "demo", "laptop").await;
    browser.wait_for("#feed-status", |t| t == "live").await;
    // The watch is sent again on the new connection: poll with broadcasts
    // until one shows (the page may still be re-reading the API).
    let deadline = Instant::now() + PAGE_TIMEOUT;
    loop {
        broadcast(&hub, "after the restart").await;
        let shown = browser
            .client
            .execute(
                "return [...document.querySelectorAll('#events div')]
                    .some((d) => d.textContent.includes('after the restart'))",
                vec![],
            )
            .await
            .expect("read the events");
        if shown == json!(true) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the restarted hub's events never reached the dashboard"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    browser.quit().await;
}

/// A test broadcast to session `demo` through the admin API.
async fn broadcast(hub: &HubProcess, text: &str) {
    let (status, body) = http_call(
        hub,
        reqwest::Method::POST,
        "/api/v1/sessions/demo/broadcast",
        None,
        Some(json!({"payload": {"text": text}})),
    )
    .await;
    assert_eq!(status, 200, "{body}");
}

/// The page's `<header>` background: its inline `<style>` applied.
async fn header_background(browser: &Browser) -> String {
    let color = browser
        .client
        .execute(
            "return getComputedStyle(document.querySelector('header')).backgroundColor",
            vec![],
        )
        .await
        .expect("run a script in the page");
    color.as_str().unwrap_or_default().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_sends_are_decided_with_the_buttons_of_the_web_page_and_the_dashboard() {
    assert!(
        Browser::available(),
        "this test needs Debian's chromium and chromium-driver (scripts/test installs them)"
    );
    let hub = TestHub::start(&["--approval-required", "mcp"]).await;
    let (mut watcher, _) = WsClient::register(&hub.ws_url(), "default", "watcher").await;
    let browser = Browser::start().await;

    // Held before the page opened: the page asks for what waits.
    let first = mcp_send(hub.addr, "approved on the web page");
    watcher.recv_type("approval_request").await;
    browser
        .client
        .goto(&hub.http_url("/ui"))
        .await
        .expect("open the web page");
    browser
        .wait_for("#approvals li", |t| t.contains("approved on the web page"))
        .await;
    browser.click("#approvals li button.approve").await;
    let result = first.await.unwrap();
    assert_eq!(result["isError"], false, "{result}");
    browser.wait_gone("#approvals li").await;
    browser
        .wait_for("#log div", |t| t.contains("approved by web"))
        .await;

    // The dashboard lists what waits, and hears of new ones live.
    let second = mcp_send(hub.addr, "rejected on the dashboard");
    watcher.recv_type("approval_request").await;
    browser.click("a[href='/dashboard']").await;
    browser.wait_for("#feed-status", |t| t == "live").await;
    let row = "#approvals tr[data-approval]";
    browser
        .wait_for(row, |t| t.contains("rejected on the dashboard"))
        .await;
    browser.click(&format!("{row} button.reject")).await;
    let result = second.await.unwrap();
    assert_eq!(
        result["structuredContent"]["code"], "approval_rejected",
        "{result}"
    );
    browser.wait_gone(row).await;
    let third = mcp_send(hub.addr, "approved on the dashboard");
    browser
        .wait_for(row, |t| t.contains("approved on the dashboard"))
        .await;
    browser.click(&format!("{row} button.approve")).await;
    assert_eq!(third.await.unwrap()["isError"], false);
    let resolved = loop {
        let event = watcher.recv_type("approval_resolved").await;
        if event["decision"] == "approved" && event["decided_by"] == "admin" {
            break event;
        }
    };
    assert_eq!(resolved["result"]["message"], "approved on the dashboard");
    browser.quit().await;
}

/// A 1×1 PNG.
const PNG_1X1: &str = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg==";
const SECRET: &str = "0123456789abcdef0123456789abcdef-page-media";

/// An image someone sends shows as an `<img>` whose bytes load, on the
/// web page and on the dashboard, with auth on: an `<img src>` cannot send
/// the token, so the pages fetch the bytes with it and show them from an
/// object URL. Hostile content stays text and other origins are never
/// fetched. Needs the hub's media endpoints (upload, bytes) and a page CSP
/// that lets images and audio come from object URLs (`img-src 'self'
/// blob:; media-src 'self' blob:`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_image_in_a_message_shows_inline_on_the_web_page_and_the_dashboard() {
    assert!(
        Browser::available(),
        "this test needs Debian's chromium and chromium-driver (scripts/test installs them)"
    );
    let hub = TestHub::start(&["--auth-jwt-secret", SECRET]).await;
    let token = |sub: &str, sessions: &[&str], role| {
        let sessions: Vec<String> = sessions.iter().map(|s| s.to_string()).collect();
        mint(SECRET, sub, &sessions, role, Duration::from_secs(600)).expect("mint")
    };
    let (web, phone, admin) = (
        token("web", &["default"], Role::Client),
        token("phone", &["default"], Role::Client),
        token("root", &[], Role::Admin),
    );

    // The phone joins (REST writes need an existing session), then the
    // image reaches the hub as an upload.
    let (_phone_ws, _) = WsClient::register_with_token(
        &hub.ws_url(),
        &phone,
        json!({"type": "register", "session": "default", "client_id": "phone"}),
    )
    .await;
    let png = base64::engine::general_purpose::STANDARD
        .decode(PNG_1X1)
        .expect("base64");
    let part = reqwest::multipart::Part::bytes(png)
        .file_name("dot.png")
        .mime_str("image/png")
        .expect("mime");
    let upload = reqwest::Client::new()
        .post(hub.http_url("/api/v1/sessions/default/media"))
        .bearer_auth(&phone)
        .multipart(reqwest::multipart::Form::new().part("file", part))
        .send()
        .await
        .expect("upload");
    assert_eq!(upload.status(), 200, "the media upload");
    let uploaded: Value = upload.json().await.expect("upload answer");
    let media_id = uploaded["id"].as_str().expect("a media id").to_string();

    // The pages keep their tokens in sessionStorage: set them on the
    // hub's origin before opening them.
    let browser = Browser::start().await;
    browser
        .client
        .goto(&hub.http_url("/ready"))
        .await
        .expect("open the hub's origin");
    browser
        .client
        .execute(
            "sessionStorage.setItem('mcp-hub-token', arguments[0]);
             sessionStorage.setItem('mcp-hub-admin-token', arguments[1]);",
            vec![json!(web), json!(admin)],
        )
        .await
        .expect("store the tokens");
    browser
        .client
        .goto(&hub.http_url("/ui"))
        .await
        .expect("open the web page");
    browser.wait_for("#status", |t| t.contains(" @ ")).await;

    // Sent by another member: the page shows the hub's message_event.
    let (mut sender, _) = WsClient::register_with_token(
        &hub.ws_url(),
        &phone,
        json!({"type": "register", "session": "default", "client_id": "phone"}),
    )
    .await;
    let send = json!({"type": "whatsapp_command", "command": {"action": "send", "contact": "John",
        "media": {"kind": "image", "id": media_id, "caption": "a red dot"}}});
    let answer = sender.request(send.clone()).await;
    assert_eq!(answer["content"]["success"], true, "{answer}");
    let sent = sender.recv_type("message_event").await;
    assert_eq!(sent["media"]["kind"], "image", "{sent}");
    // Where the hub serves the bytes (an upload's path when the send's
    // event does not say).
    let path = sent["media"]["url"].as_str().map_or_else(
        || format!("/api/v1/sessions/default/media/{media_id}"),
        str::to_string,
    );
    assert!(
        path.starts_with("/api/v1/sessions/default/media/"),
        "{sent}"
    );

    // The same image arriving from John, handed to the page's handler of
    // hub frames (the one it gives the SDK) as the hub delivers an inbound one.
    let inbound = json!({"type": "message_event", "direction": "incoming", "contact": "John",
        "message": "[image] from John", "message_id": "in.page-test", "timestamp": 1, "by": "John",
        "media": {"kind": "image", "id": "in-media", "url": path, "mime_type": "image/png",
            "size": 67, "caption": "from John"}});
    browser
        .client
        .execute("mcpHubPage.onEvent(arguments[0])", vec![inbound.clone()])
        .await
        .expect("deliver the inbound event");
    let loaded = loaded_images(&browser, "#log img.media", |imgs| {
        imgs.iter().any(|(alt, _)| alt == "from John")
            && (sent["media"]["url"].is_null() || imgs.iter().any(|(alt, _)| alt == "a red dot"))
    })
    .await;
    assert!(
        loaded.iter().all(|(_, src)| src.starts_with("blob:")),
        "with a token the bytes come from object URLs: {loaded:?}"
    );
    browser
        .wait_for("#log div.in", |t| {
            t.contains("← John: image (67 B) \"from John\"")
        })
        .await;

    // Hostile content: markup stays text, another origin is never used.
    let hostile = json!({"type": "message_event", "direction": "incoming", "contact": "<b>Eve</b>",
        "message": "x", "message_id": "in.eve", "timestamp": 1, "by": "Eve",
        "media": {"kind": "image", "url": "https://example.invalid/api/v1/sessions/x.png",
            "caption": "<img src=x onerror=\"window.pwned=1\">"},
        "interactive": {"type": "buttons", "buttons": [{"id": "a", "title": "<script>window.pwned=2</script>"}]}});
    browser
        .client
        .execute("mcpHubPage.onEvent(arguments[0])", vec![hostile])
        .await
        .expect("deliver the hostile event");
    browser
        .wait_for("#log div.in", |t| {
            t.contains("<b>Eve</b>: image \"<img src=x")
        })
        .await;
    let checked = browser
        .client
        .execute(
            "return {pwned: window.pwned || null,
                     elsewhere: [...document.querySelectorAll('img, a, audio')]
                        .filter((e) => (e.src || e.href || '').includes('example.invalid')).length,
                     markup: document.querySelectorAll('#log b, #log script, #log img:not(.media)').length}",
            vec![],
        )
        .await
        .expect("inspect the page");
    assert_eq!(
        checked,
        json!({"pwned": null, "elsewhere": 0, "markup": 0}),
        "hostile strings stay text"
    );

    // The dashboard shows the watched session's messages with their images.
    browser.click("a[href='/dashboard']").await;
    browser.wait_for("#feed-status", |t| t == "live").await;
    browser.click("div[data-session='default'] h3 button").await;
    sender.request(send).await;
    browser
        .wait_for("#events .said", |t| t.contains("→ John: image"))
        .await;
    browser
        .client
        .execute("mcpHubDashboard.showEvent(arguments[0])", vec![inbound])
        .await
        .expect("show the inbound event");
    let loaded = loaded_images(&browser, "#events img.media", |imgs| {
        imgs.iter().any(|(alt, _)| alt == "from John")
    })
    .await;
    assert!(
        loaded.iter().all(|(_, src)| src.starts_with("blob:")),
        "{loaded:?}"
    );
    browser.quit().await;
}

/// Polls until the `<img>`s matching `css` whose bytes loaded (alt and
/// src of each) satisfy `ok`; returns them.
async fn loaded_images(
    browser: &Browser,
    css: &str,
    ok: impl Fn(&[(String, String)]) -> bool,
) -> Vec<(String, String)> {
    let script = "return [...document.querySelectorAll(arguments[0])]
        .map((i) => [i.alt, i.src, i.complete && i.naturalWidth > 0])";
    let deadline = Instant::now() + PAGE_TIMEOUT;
    loop {
        let found = browser
            .client
            .execute(script, vec![json!(css)])
            .await
            .expect("list the images");
        let images: Vec<(String, String, bool)> =
            serde_json::from_value(found.clone()).expect("[alt, src, loaded] triples");
        let loaded: Vec<(String, String)> = images
            .into_iter()
            .filter(|(_, _, loaded)| *loaded)
            .map(|(alt, src, _)| (alt, src))
            .collect();
        if ok(&loaded) {
            return loaded;
        }
        assert!(
            Instant::now() < deadline,
            "the images of `{css}` never loaded as expected: {found}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
