//! The dashboard in a real browser (headless chromium over WebDriver,
//! docs/dashboard.md): three hubs on one Redis (a Redis Cluster with
//! `MCP_HUB_TEST_REDIS=cluster`), the page opened on the
//! first through the web page's link, showing the whole cluster and
//! following it live — a client connecting on another instance appears
//! without a reload, and disconnecting it from the page closes it (4002)
//! and removes it. Both pages run under their Content-Security-Policy
//! (issue 19): their inline script and style apply, and the web page's
//! WebSocket to its own origin connects.

mod support;

use fantoccini::Locator;
use serde_json::json;
use support::browser::Browser;
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
