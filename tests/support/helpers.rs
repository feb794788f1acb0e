//! Protocol helpers shared by the suites: message builders, contact names,
//! the ping barrier, metric parsing, promtool.

use serde_json::{Value, json};

use super::{Endpoint, WsClient, http_get};

/// The simulated connector's built-in contacts, in order.
pub const BUILTIN: [&str; 6] = ["John", "Jane", "Alice", "Bob", "Maria", "Mom"];

/// Names of a contact list (`[{name, phone?}]` or `["name"]`).
pub fn names(list: &Value) -> Vec<String> {
    list.as_array()
        .unwrap_or_else(|| panic!("not a list of contacts: {list}"))
        .iter()
        .map(|c| {
            c["name"]
                .as_str()
                .or(c.as_str())
                .unwrap_or_else(|| panic!("contact without a name: {c}"))
                .to_string()
        })
        .collect()
}

/// Sends a `ping` and returns every frame that arrived before its `pong`.
///
/// The hub handles one connection's frames in order and queues its answers
/// in order, so anything the hub had already queued for this client (an
/// event, an answer to an inline message such as `broadcast`) comes before
/// the pong: an empty result proves nothing was pending.
pub async fn barrier(c: &mut WsClient) -> Vec<Value> {
    c.flush().await
}

/// Asserts that nothing is pending for `c` (see [`barrier`]).
pub async fn assert_quiet(c: &mut WsClient, why: &str) {
    let pending = barrier(c).await;
    assert!(pending.is_empty(), "{why}: unexpected {pending:?}");
}

/// Receives exactly `n` frames (panics if one does not come).
pub async fn recv_n(c: &mut WsClient, n: usize) -> Vec<Value> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        out.push(c.recv().await);
    }
    out
}

/// Sends `body` with the given `request_id` and returns the frames up to
/// and including the answer carrying it (so ordering can be checked).
pub async fn send_and_collect(c: &mut WsClient, mut body: Value, rid: &str) -> Vec<Value> {
    body["request_id"] = json!(rid);
    c.send_json(body).await;
    frames_until(c, rid).await
}

/// A copy without the fields that differ from run to run (a session
/// event's log position included: `offset`, `epoch`).
pub fn without_volatile(v: &Value) -> Value {
    match v {
        Value::Object(map) => Value::Object(
            map.iter()
                .filter(|(k, _)| {
                    !matches!(
                        k.as_str(),
                        "message_id" | "timestamp" | "offset" | "epoch" | "connected_at"
                    )
                })
                .map(|(k, v)| (k.clone(), without_volatile(v)))
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.iter().map(without_volatile).collect()),
        other => other.clone(),
    }
}

/// Sorted keys of an object.
pub fn keys(v: &Value) -> Vec<String> {
    let mut k: Vec<String> = v
        .as_object()
        .unwrap_or_else(|| panic!("not an object: {v}"))
        .keys()
        .cloned()
        .collect();
    k.sort();
    k
}

pub fn ws_command(command: Value) -> Value {
    json!({"type": "whatsapp_command", "command": command})
}

pub fn ai_command(text: &str) -> Value {
    json!({"type": "whatsapp_ai_command", "command": text})
}

pub fn send_cmd(contact: &str, message: &str) -> Value {
    ws_command(json!({"action": "send", "contact": contact, "message": message}))
}

pub fn history_cmd(contact: &str) -> Value {
    ws_command(json!({"action": "get_history", "contact": contact}))
}

/// A client token (role `client`) for `sub`, good for `session` only and
/// for `secs` seconds, signed with `secret`.
pub fn client_token(secret: &str, sub: &str, session: &str, secs: u64) -> String {
    mcp_hub::auth::mint(
        secret,
        sub,
        &[session.to_string()],
        mcp_hub::auth::Role::Client,
        std::time::Duration::from_secs(secs),
    )
    .expect("mint")
}

/// Registers as the session's agent (`capabilities: ["whatsapp"]`).
pub async fn register_agent(url: &str, session: &str, client_id: &str) -> (WsClient, Value) {
    WsClient::register_with(
        url,
        json!({"type": "register", "session": session, "client_id": client_id,
               "capabilities": ["whatsapp"]}),
    )
    .await
}

/// GET as JSON: status and the parsed body (panics if it is not JSON).
pub async fn http_get_json(hub: &impl Endpoint, path: &str) -> (u16, Value) {
    let (status, body) = http_get(hub, path).await;
    let v = serde_json::from_str(&body)
        .unwrap_or_else(|e| panic!("GET {path}: not JSON ({e}): {body}"));
    (status, v)
}

/// The `/metrics` exposition.
pub async fn metrics_text(hub: &impl Endpoint) -> String {
    let (status, body) = http_get(hub, "/metrics").await;
    assert_eq!(status, 200, "/metrics: {body}");
    body
}

/// Polls `/metrics` until `series` reaches `at_least` (bounded).
pub async fn wait_metric(hub: &impl Endpoint, series: &str, at_least: f64) -> f64 {
    hub.wait_metric(series, |v| v >= at_least).await
}

/// Asserts that a finished command exited 0; if not, fails with `what`
/// and everything the command printed.
pub fn assert_succeeded(out: &std::process::Output, what: &str) {
    assert!(
        out.status.success(),
        "{what} ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Pipes an exposition through `promtool check metrics` (stdin) and panics
/// with promtool's complaints when it fails.
pub fn promtool_check(exposition: &str) {
    use std::io::Write;
    let mut child = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool (installed at /usr/bin/promtool; ./scripts/test installs it)");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(exposition.as_bytes())
        .expect("write to promtool");
    let out = child.wait_with_output().expect("promtool output");
    assert_succeeded(&out, "promtool check metrics failed");
}

/// Client ids of a `clients` list, in the order given (join order).
pub fn ids(list: &Value) -> Vec<String> {
    list.as_array()
        .unwrap_or_else(|| panic!("not a list: {list}"))
        .iter()
        .map(|c| c["client_id"].as_str().unwrap_or_default().to_string())
        .collect()
}

/// Client ids of a `clients` list, sorted.
pub fn sorted_ids(list: &Value) -> Vec<String> {
    let mut ids = ids(list);
    ids.sort();
    ids
}

/// The `type` of each frame.
pub fn types(frames: &[Value]) -> Vec<String> {
    frames
        .iter()
        .map(|f| f["type"].as_str().unwrap_or("?").to_string())
        .collect()
}

/// Frames up to and including the answer carrying `rid`.
pub async fn frames_until(c: &mut WsClient, rid: &str) -> Vec<Value> {
    let mut frames = Vec::new();
    loop {
        let m = c.recv().await;
        let done = m["request_id"] == rid;
        frames.push(m);
        if done {
            return frames;
        }
    }
}

/// Collects frames until the answer to `rid`; returns (events before it, answer).
pub async fn until_answer(c: &mut WsClient, rid: &str) -> (Vec<Value>, Value) {
    let mut frames = frames_until(c, rid).await;
    let answer = frames.pop().expect("the answer");
    (frames, answer)
}

/// Waits until the hub has finished with every connection but `open` ones
/// (a closed connection's cleanup, and the events it publishes, are done
/// before the gauge drops).
pub async fn wait_connections(hub: &impl Endpoint, open: usize) {
    hub.wait_metric("hub_ws_connections", |v| v == open as f64)
        .await;
}

/// The sum of every series of an exposition whose line starts with
/// `name_and_labels` (e.g. all label sets of one metric).
pub fn metric_sum(exposition: &str, name_and_labels: &str) -> f64 {
    exposition
        .lines()
        .filter(|l| l.starts_with(name_and_labels))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// An HTTP call on a hub with an optional bearer token and JSON body:
/// status and body as JSON (Null when the body is not JSON).
pub async fn http_call(
    hub: &impl Endpoint,
    method: reqwest::Method,
    path: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> (u16, Value) {
    let url = hub.http_url(path);
    let mut req = reqwest::Client::new().request(method.clone(), &url);
    if let Some(token) = token {
        req = req.bearer_auth(token);
    }
    if let Some(body) = body {
        req = req.json(&body);
    }
    let r = req
        .send()
        .await
        .unwrap_or_else(|e| panic!("{method} {url}: {e}"));
    let status = r.status().as_u16();
    let text = r.text().await.unwrap_or_default();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

/// Now in Unix seconds (token `exp`/`nbf`, Meta's webhook `timestamp`:
/// items outside WHATSAPP_WEBHOOK_MAX_AGE_MS are not delivered).
pub fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs()
}

/// Registers `client_ids`, in order, in `session`, and reads every
/// `client_joined` the earlier members get for the later ones, so each
/// client starts with nothing pending.
pub async fn join_session<const N: usize>(
    url: &str,
    session: &str,
    client_ids: [&str; N],
) -> [WsClient; N] {
    let mut members: Vec<WsClient> = Vec::with_capacity(N);
    for id in client_ids {
        let (client, _) = WsClient::register(url, session, id).await;
        for earlier in members.iter_mut() {
            let joined = earlier.recv_type("client_joined").await;
            assert_eq!(joined["client_id"], *id, "{joined}");
        }
        members.push(client);
    }
    match members.try_into() {
        Ok(all) => all,
        Err(_) => unreachable!("N clients registered"),
    }
}

/// Registers `client_id` as the agent of `session` after `members` (already
/// registered there), and reads the `agent_changed` it gets and the
/// `client_joined` and `agent_changed` each member gets, so every client
/// starts with nothing pending.
pub async fn join_agent(
    url: &str,
    session: &str,
    client_id: &str,
    members: &mut [WsClient],
) -> WsClient {
    let (mut agent, conf) = register_agent(url, session, client_id).await;
    assert_eq!(conf["agent"], true, "{conf}");
    assert_eq!(
        agent.recv_type("agent_changed").await["client_id"],
        client_id
    );
    for m in members.iter_mut() {
        assert_eq!(m.recv_type("client_joined").await["client_id"], client_id);
        assert_eq!(m.recv_type("agent_changed").await["client_id"], client_id);
    }
    agent
}
