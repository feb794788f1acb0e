//! Plain JSON-RPC calls to `/mcp` (no SDK): what the MCP suites use to
//! check answers and errors exactly.

use serde_json::{Value, json};

use super::Endpoint;

pub fn mcp_url(addr: impl std::fmt::Display) -> String {
    format!("http://{addr}/mcp")
}

/// One `tools/call` without `initialize` (the endpoint is stateless):
/// the HTTP status and the JSON-RPC answer.
pub async fn call_tool(
    hub: &impl Endpoint,
    token: Option<&str>,
    tool: &str,
    args: Value,
) -> (u16, Value) {
    rpc(
        hub,
        token,
        "tools/call",
        json!({"name": tool, "arguments": args}),
    )
    .await
}

/// One JSON-RPC request to `/mcp`: the HTTP status and the answer.
pub async fn rpc(
    hub: &impl Endpoint,
    token: Option<&str>,
    method: &str,
    params: Value,
) -> (u16, Value) {
    let mut request = reqwest::Client::new()
        .post(mcp_url(hub.addr()))
        .header("accept", "application/json, text/event-stream")
        .json(&json!({"jsonrpc": "2.0", "id": 1, "method": method, "params": params}));
    if let Some(t) = token {
        request = request.bearer_auth(t);
    }
    let r = request.send().await.expect("POST /mcp");
    let status = r.status().as_u16();
    let body = r.text().await.expect("body");
    (status, json_rpc_answer(&body))
}

/// The JSON-RPC answer of a plain JSON body, or of an SSE body (an MCP
/// session's answers come as events).
pub fn json_rpc_answer(body: &str) -> Value {
    if let Ok(answer) = serde_json::from_str(body) {
        return answer;
    }
    body.lines()
        .filter_map(|l| l.strip_prefix("data:"))
        .filter_map(|d| serde_json::from_str::<Value>(d.trim()).ok())
        .find(|m| m.get("jsonrpc").is_some())
        .unwrap_or(json!(body))
}

/// The tool error's code, from the structured content and the text.
pub fn tool_error_code(answer: &Value) -> &str {
    let result = &answer["result"];
    assert_eq!(result["isError"], true, "a tool error: {answer}");
    let code = result["structuredContent"]["code"]
        .as_str()
        .unwrap_or_else(|| panic!("a code: {answer}"));
    assert_eq!(result["structuredContent"]["success"], false, "{answer}");
    // The text block is the structured content's JSON.
    let text = result["content"][0]["text"].as_str().unwrap_or_default();
    let text: Value = serde_json::from_str(text).expect("the text block is JSON");
    assert_eq!(text, result["structuredContent"], "{answer}");
    code
}

/// `send_message` by an MCP caller (`claude`), in its own task: it waits
/// for the decision.
pub fn mcp_send(hub: std::net::SocketAddr, message: &str) -> tokio::task::JoinHandle<Value> {
    let args = json!({"contact": "John", "message": message});
    tokio::spawn(async move {
        let (status, answer) = call_tool_as(&hub, "claude", "send_message", args).await;
        assert_eq!(status, 200, "{answer}");
        answer["result"].clone()
    })
}

/// One `tools/call` without auth, as `X-Client-Id: client_id`.
pub async fn call_tool_as(
    hub: &impl Endpoint,
    client_id: &str,
    tool: &str,
    args: Value,
) -> (u16, Value) {
    let r = reqwest::Client::new()
        .post(mcp_url(hub.addr()))
        .header("accept", "application/json, text/event-stream")
        .header("x-client-id", client_id)
        .json(&json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
                      "params": {"name": tool, "arguments": args}}))
        .send()
        .await
        .expect("POST /mcp");
    let status = r.status().as_u16();
    (status, json_rpc_answer(&r.text().await.expect("body")))
}
