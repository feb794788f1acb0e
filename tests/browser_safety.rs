//! Browser safety against an in-process hub: the `Origin` check on the
//! WebSocket upgrade (same host by default, exactly `ALLOWED_ORIGINS` when
//! set, requests without `Origin` unaffected, 403 `forbidden_origin`
//! before the upgrade) and CORS on the REST API (none by default, exactly
//! the listed origins with `ALLOWED_ORIGINS`, preflight included).

use crate::support;

use serde_json::json;
use support::*;

const FOREIGN: &str = "https://evil.example";
const LISTED: &str = "https://app.example";

async fn refused(url: &str, origin: &str) {
    match WsClient::try_connect_with(url, &[("origin", origin)]).await {
        Ok(_) => panic!("{url} accepted Origin {origin}"),
        Err((status, body)) => {
            assert_eq!(status, 403, "{origin}: {body}");
            assert_eq!(body["type"], "error", "{body}");
            assert_eq!(body["code"], "forbidden_origin", "{body}");
            assert!(body["message"].as_str().is_some_and(|m| !m.is_empty()));
        }
    }
}

async fn accepted(url: &str, origin: Option<&str>, client_id: &str) {
    let headers: Vec<(&str, &str)> = origin.map(|o| ("origin", o)).into_iter().collect();
    let mut ws = WsClient::try_connect_with(url, &headers)
        .await
        .unwrap_or_else(|(status, body)| panic!("{origin:?} refused: {status} {body}"));
    ws.send_json(json!({"type": "register", "session": "browser", "client_id": client_id}))
        .await;
    assert_eq!(ws.recv().await["type"], "registration_confirmed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn by_default_only_same_host_pages_may_open_a_websocket() {
    let hub = TestHub::start(&[]).await;
    let same_host = format!("http://{}", hub.addr);
    for url in [hub.ws_url(), format!("ws://{}/ws", hub.addr)] {
        // Terminals, agents and scripts send no Origin: unaffected.
        accepted(&url, None, "script").await;
        // The web page served by this hub (/ui) has its host as Origin.
        accepted(&url, Some(&same_host), "page").await;
        refused(&url, FOREIGN).await;
        // Same host name, other port: another site.
        refused(&url, &format!("http://127.0.0.1:{}", hub.addr.port() + 1)).await;
        refused(&url, "null").await;
    }
    hub.wait_metric("hub_errors_total{code=\"forbidden_origin\"}", |v| v >= 6.0)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allowed_origins_replace_the_same_host_rule() {
    let hub = TestHub::start(&[
        "--allowed-origins",
        &format!("{LISTED},http://other.example:8080"),
    ])
    .await;
    let url = hub.ws_url();
    accepted(&url, Some(LISTED), "listed").await;
    accepted(&url, Some("http://other.example:8080"), "other").await;
    accepted(&url, None, "script").await;
    refused(&url, FOREIGN).await;
    refused(&url, &format!("http://{}", hub.addr)).await;
}

/// An OPTIONS preflight for a POST from `origin`: status and the
/// Access-Control-Allow-Origin it got (if any).
async fn preflight(hub: &TestHub, origin: &str) -> (u16, Option<String>) {
    let r = reqwest::Client::new()
        .request(
            reqwest::Method::OPTIONS,
            hub.http_url("/api/v1/sessions/browser/commands"),
        )
        .header("origin", origin)
        .header("access-control-request-method", "POST")
        .header("access-control-request-headers", "content-type")
        .send()
        .await
        .expect("OPTIONS");
    let allow = r
        .headers()
        .get("access-control-allow-origin")
        .map(|v| v.to_str().unwrap_or_default().to_string());
    (r.status().as_u16(), allow)
}

/// A GET with `origin`: status and its Access-Control-Allow-Origin.
async fn get_from(hub: &TestHub, origin: &str) -> (u16, Option<String>) {
    let r = reqwest::Client::new()
        .get(hub.http_url("/api/v1/sessions/browser"))
        .header("origin", origin)
        .send()
        .await
        .expect("GET");
    let allow = r
        .headers()
        .get("access-control-allow-origin")
        .map(|v| v.to_str().unwrap_or_default().to_string());
    (r.status().as_u16(), allow)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rest_answers_cors_only_for_allowed_origins() {
    // Default: no CORS at all, no preflight.
    let plain = TestHub::start(&[]).await;
    let (_ws, _) = WsClient::register(&plain.ws_url(), "browser", "w").await;
    let (status, allow) = preflight(&plain, LISTED).await;
    assert_eq!((status, allow), (405, None));
    let (status, allow) = get_from(&plain, LISTED).await;
    assert_eq!((status, allow), (200, None));

    let cors = TestHub::start(&["--allowed-origins", LISTED]).await;
    let (_ws, _) = WsClient::register(&cors.ws_url(), "browser", "w").await;
    let (status, allow) = preflight(&cors, LISTED).await;
    assert_eq!((status, allow.as_deref()), (200, Some(LISTED)));
    let (_, allow) = get_from(&cors, LISTED).await;
    assert_eq!(allow.as_deref(), Some(LISTED));
    // Any other origin gets no CORS headers: the browser blocks the call.
    let (_, allow) = preflight(&cors, FOREIGN).await;
    assert_eq!(allow, None);
    let (_, allow) = get_from(&cors, FOREIGN).await;
    assert_eq!(allow, None);
}
