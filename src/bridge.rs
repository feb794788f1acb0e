//! `mcp-hub mcp-stdio`: lets an MCP client that speaks only stdio (many
//! desktop apps) use a remote hub's `/mcp`. Each JSON-RPC message read from
//! stdin (one per line) is POSTed to the hub with the token; each answer
//! (plain JSON, or the `data:` of an SSE body) is written to stdout, one
//! per line. The hub is stateless, so nothing else is kept but the
//! negotiated protocol version, sent as `MCP-Protocol-Version`.
//!
//! A request the hub cannot answer (unreachable, 401, 403, 5xx, timeout)
//! is answered here with a JSON-RPC error for its id, so the client is
//! never left waiting. Logs go to stderr; the token is never logged.

use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

use crate::config::McpStdioArgs;

/// One message from the client may be at most this long (a line).
const MAX_LINE_BYTES: usize = 4 << 20;

/// The JSON-RPC code of an answer made here for a request the hub did not
/// answer (an implementation-defined server error).
const BRIDGE_ERROR: i64 = -32000;

/// Runs until stdin ends; the exit code (2: bad arguments).
pub async fn run(args: McpStdioArgs) -> u8 {
    let url = match reqwest::Url::parse(&args.url) {
        Ok(url) if matches!(url.scheme(), "http" | "https") => url,
        _ => {
            eprintln!("error: invalid setting --url: must be an http(s) URL of the hub's /mcp");
            return 2;
        }
    };
    let http = match reqwest::Client::builder()
        .timeout(Duration::from_millis(args.timeout_ms))
        .build()
    {
        Ok(http) => http,
        Err(e) => {
            eprintln!("error: cannot start the HTTP client: {e}");
            return 1;
        }
    };
    let bridge = Bridge {
        http,
        url,
        token: args.token.filter(|t| !t.is_empty()),
    };
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    let mut stdout = tokio::io::stdout();
    let mut version: Option<String> = None;
    loop {
        let line = match lines.next_line().await {
            Ok(Some(line)) => line,
            Ok(None) => return 0,
            Err(e) => {
                eprintln!("mcp-stdio: stdin: {e}");
                return 1;
            }
        };
        if line.trim().is_empty() {
            continue;
        }
        let answers = if line.len() > MAX_LINE_BYTES {
            vec![error_for(None, "the message is too large for the bridge")]
        } else {
            bridge.forward(&line, &mut version).await
        };
        for answer in answers {
            let mut out = answer.to_string();
            out.push('\n');
            if stdout.write_all(out.as_bytes()).await.is_err() || stdout.flush().await.is_err() {
                // The client went away.
                return 0;
            }
        }
    }
}

struct Bridge {
    http: reqwest::Client,
    url: reqwest::Url,
    token: Option<String>,
}

impl Bridge {
    /// POSTs one message; the messages to write back (none for a
    /// notification or a response the client sent).
    async fn forward(&self, line: &str, version: &mut Option<String>) -> Vec<Value> {
        let parsed: Option<Value> = serde_json::from_str(line).ok();
        let id = parsed.as_ref().and_then(|m| m.get("id")).cloned();
        let is_initialize = parsed.as_ref().is_some_and(|m| m["method"] == "initialize");
        let mut request = self
            .http
            .post(self.url.clone())
            .header("content-type", "application/json")
            .header("accept", "application/json, text/event-stream")
            .body(line.to_string());
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        if let Some(v) = version.as_deref() {
            request = request.header("mcp-protocol-version", v);
        }
        let response = match request.send().await {
            Ok(r) => r,
            Err(e) => {
                // reqwest's errors carry the URL, never the headers.
                eprintln!("mcp-stdio: {e}");
                return id
                    .map(|id| error_for(Some(id), &format!("the hub is unreachable: {e}")))
                    .into_iter()
                    .collect();
            }
        };
        let status = response.status();
        let is_sse = response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("text/event-stream"));
        let body = response.text().await.unwrap_or_default();
        if status == reqwest::StatusCode::ACCEPTED
            || (body.trim().is_empty() && status.is_success())
        {
            return Vec::new();
        }
        let answers: Vec<Value> = if is_sse {
            sse_data(&body)
        } else {
            serde_json::from_str(&body).into_iter().collect()
        };
        let answers: Vec<Value> = answers
            .into_iter()
            .filter(|a| a.get("jsonrpc").is_some())
            .collect();
        if answers.is_empty() {
            // A refusal before the protocol (401, 403, 413, 429, 5xx).
            let reason = serde_json::from_str::<Value>(&body)
                .ok()
                .and_then(|b| b["message"].as_str().map(str::to_string))
                .unwrap_or_else(|| body.chars().take(200).collect());
            eprintln!("mcp-stdio: HTTP {status}: {reason}");
            return id
                .map(|id| error_for(Some(id), &format!("HTTP {status}: {reason}")))
                .into_iter()
                .collect();
        }
        if is_initialize
            && let Some(v) = answers
                .iter()
                .find_map(|a| a["result"]["protocolVersion"].as_str())
        {
            *version = Some(v.to_string());
        }
        answers
    }
}

/// The JSON messages of an SSE body (`data:` lines; an event's lines
/// joined with `\n`).
fn sse_data(body: &str) -> Vec<Value> {
    body.split("\n\n")
        .filter_map(|event| {
            let data: Vec<&str> = event
                .lines()
                .filter_map(|l| l.strip_prefix("data:"))
                .map(|d| d.strip_prefix(' ').unwrap_or(d))
                .collect();
            serde_json::from_str(&data.join("\n")).ok()
        })
        .collect()
}

fn error_for(id: Option<Value>, message: &str) -> Value {
    json!({"jsonrpc": "2.0", "id": id.unwrap_or(Value::Null),
           "error": {"code": BRIDGE_ERROR, "message": message}})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sse_bodies_give_their_json_messages() {
        let body = "id: 1\nevent: message\ndata: {\"jsonrpc\":\"2.0\",\"id\":1,\"result\":{}}\n\n: keep-alive\n\ndata: {\"jsonrpc\":\"2.0\",\ndata: \"method\":\"x\"}\n\n";
        let messages = sse_data(body);
        assert_eq!(messages.len(), 2);
        assert_eq!(messages[0]["id"], 1);
        assert_eq!(messages[1]["method"], "x");
    }
}
