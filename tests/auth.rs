//! Authentication and authorization (issue 10, docs/security.md): 401
//! before the upgrade, `forbidden` on register, 4401 at `exp`, REST
//! identity and session checks, admin-only `/api/v1/cluster`, the startup
//! rules (spawned binary, exit 2), JWKS, a Redis cluster behind HAProxy
//! with auth on, and interop with PyJWT (tests/auth_interop.py).

use crate::support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use mcp_hub::auth::{Claims, Role, mint};
use serde_json::{Value, json};
use support::*;

const SECRET: &str = "0123456789abcdef0123456789abcdef-auth-tests";

fn token(sub: &str, sessions: &[&str], role: Role) -> String {
    let sessions: Vec<String> = sessions.iter().map(|s| s.to_string()).collect();
    mint(SECRET, sub, &sessions, role, Duration::from_secs(600)).expect("mint")
}

/// An HS256 token with exactly these claims (expired ones too).
fn token_with(claims: Value, secret: &str) -> String {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .expect("encode")
}

async fn auth_hub() -> TestHub {
    TestHub::start(&["--auth-jwt-secret", SECRET]).await
}

fn register(session: &str, client_id: &str) -> Value {
    json!({"type": "register", "session": session, "client_id": client_id})
}

fn assert_unauthorized(refused: Result<WsClient, (u16, String)>, what: &str) {
    let Err((status, body)) = refused else {
        panic!("{what}: the upgrade was accepted");
    };
    assert_eq!(status, 401, "{what}: {body}");
    let body: Value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{what}: {e}: {body}"));
    assert_eq!(body["type"], "error", "{what}: {body}");
    assert_eq!(body["code"], "unauthorized", "{what}: {body}");
    assert!(body["message"].is_string(), "{what}: {body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_upgrade_needs_a_valid_token() {
    let hub = auth_hub().await;
    let url = hub.ws_url();
    assert_unauthorized(WsClient::try_connect(&url, None).await, "no token");
    assert_unauthorized(
        WsClient::try_connect(&url, Some("not-a-jwt")).await,
        "garbage",
    );
    let wrong = token_with(
        json!({"sub": "a", "sessions": ["default"], "exp": now_secs() + 600}),
        "another-secret-that-is-long-enough-32",
    );
    assert_unauthorized(WsClient::try_connect(&url, Some(&wrong)).await, "wrong key");
    let expired = token_with(
        json!({"sub": "a", "sessions": ["default"], "exp": now_secs() - 5}),
        SECRET,
    );
    assert_unauthorized(WsClient::try_connect(&url, Some(&expired)).await, "expired");
    let no_sub = token_with(json!({"exp": now_secs() + 600}), SECRET);
    assert_unauthorized(WsClient::try_connect(&url, Some(&no_sub)).await, "no sub");
    assert_unauthorized(
        WsClient::try_connect(&format!("{}ws?token=bad", url), None).await,
        "bad ?token= on /ws",
    );

    // A good token as a header or as ?token= (the web page).
    let good = token("alice", &["default"], Role::Client);
    let (mut c, confirmed) =
        WsClient::register_with_token(&url, &good, register("default", "alice-1")).await;
    assert_eq!(confirmed["client_id"], "alice-1");
    c.request(json!({"type": "ping"})).await;
    let (_c2, confirmed) = WsClient::register_with(
        &format!("{url}?token={good}"),
        register("default", "alice-2"),
    )
    .await;
    assert_eq!(confirmed["client_id"], "alice-2");

    // Probes and metrics stay open.
    for path in ["/health", "/ready", "/metrics"] {
        assert_eq!(hub.get(path).await.0, 200, "{path}");
    }
    // The web page itself is served without a token (it asks for one).
    assert_eq!(hub.get("/ui").await.0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn register_is_forbidden_outside_what_the_token_allows() {
    let hub = auth_hub().await;
    let url = hub.ws_url();
    let alice = token("alice", &["default"], Role::Client);

    // Another session: forbidden, the connection stays open, unregistered.
    let mut c = WsClient::connect_with_token(&url, &alice).await;
    let err = c.request(register("other", "a1")).await;
    assert_eq!(err["type"], "error", "{err}");
    assert_eq!(err["code"], "forbidden", "{err}");
    let not_registered = c.request(history_cmd("john")).await;
    assert_eq!(not_registered["code"], "not_registered", "{not_registered}");

    // The agent role without role agent/admin.
    let err = c
        .request(
            json!({"type": "register", "session": "default", "client_id": "wa",
                         "capabilities": ["whatsapp"]}),
        )
        .await;
    assert_eq!(err["code"], "forbidden", "{err}");
    // ... and the same connection may still register within its rights.
    c.send_json(register("default", "a1")).await;
    assert_eq!(
        c.recv_type("registration_confirmed").await["client_id"],
        "a1"
    );

    // role agent may claim the agent role; "*" means every session.
    let agent = token("wa-agent", &["*"], Role::Agent);
    let (_agent, confirmed) = WsClient::register_with_token(
        &url,
        &agent,
        json!({"type": "register", "session": "anything", "client_id": "wa",
               "capabilities": ["whatsapp"]}),
    )
    .await;
    assert_eq!(confirmed["agent"], true, "{confirmed}");
    // admin: every session and the agent role, without a sessions claim.
    let admin = token("root", &[], Role::Admin);
    let (_admin, confirmed) =
        WsClient::register_with_token(&url, &admin, register("ops", "root-1")).await;
    assert_eq!(confirmed["session"], "ops");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_subs_client_id_is_forbidden_and_the_holder_untouched() {
    let hub = auth_hub().await;
    let url = hub.ws_url();
    let alice = token("alice", &["default"], Role::Client);
    let bob = token("bob", &["default"], Role::Client);
    let (mut held, _) =
        WsClient::register_with_token(&url, &alice, register("default", "desk")).await;

    let mut thief = WsClient::connect_with_token(&url, &bob).await;
    let err = thief.request(register("default", "desk")).await;
    assert_eq!(err["code"], "forbidden", "{err}");
    // The holder is still connected and registered.
    assert_eq!(held.request(json!({"type": "ping"})).await["type"], "pong");
    assert!(held.closed().is_none());

    // The same sub may take its own client id over (replace, close 4001).
    let (_again, _) =
        WsClient::register_with_token(&url, &alice, register("default", "desk")).await;
    assert_eq!(held.expect_close().await, Some(4001));
}

/// Two users registering the same brand-new client id at the same moment,
/// on two hubs of one cluster: exactly one gets it (issue 22, the
/// `client_id` race). The owner check and the presence write are one step
/// in Redis; when they were two, both passed the check and the second
/// silently took the first one's id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_users_racing_for_a_new_client_id_on_two_hubs_get_it_once() {
    let redis = RedisServer::start();
    let mut hubs = Vec::new();
    for id in ["r1", "r2"] {
        let args = ["--redis-url", &redis.url(), "--instance-id", id];
        hubs.push(TestHub::start(&[&args[..], &["--auth-jwt-secret", SECRET]].concat()).await);
    }
    let alice = token("alice", &["default"], Role::Client);
    let bob = token("bob", &["default"], Role::Client);
    for round in 0..20 {
        let mut a = WsClient::connect_with_token(&hubs[0].ws_url(), &alice).await;
        let mut b = WsClient::connect_with_token(&hubs[1].ws_url(), &bob).await;
        let id = format!("fresh-{round}");
        let (to_a, to_b) = tokio::join!(
            a.request(register("default", &id)),
            b.request(register("default", &id))
        );
        let won: Vec<&Value> = [&to_a, &to_b]
            .into_iter()
            .filter(|answer| answer["type"] == "registration_confirmed")
            .collect();
        assert_eq!(won.len(), 1, "round {round}: {to_a} / {to_b}");
        let lost = if to_a["type"] == "error" {
            &to_a
        } else {
            &to_b
        };
        assert_eq!(lost["code"], "forbidden", "round {round}: {lost}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_connection_is_closed_with_4401_when_its_token_expires() {
    let hub = auth_hub().await;
    let short = token_with(
        json!({"sub": "alice", "sessions": ["default"], "exp": now_secs() + 2}),
        SECRET,
    );
    let (mut c, _) =
        WsClient::register_with_token(&hub.ws_url(), &short, register("default", "a")).await;
    // Bounded by expect_close's RECV_TIMEOUT (10 s).
    assert_eq!(c.expect_close().await, Some(4401));
    wait_metric(
        &hub,
        "hub_ws_connections_closed_total{reason=\"token_expired\"}",
        1.0,
    )
    .await;
}

async fn rest(
    hub: &TestHub,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<Value>,
    client_id: Option<&str>,
) -> (u16, Value) {
    let client = reqwest::Client::new();
    let mut req = match method {
        "POST" => client.post(hub.http_url(path)),
        _ => client.get(hub.http_url(path)),
    };
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    if let Some(b) = body {
        req = req.json(&b);
    }
    if let Some(id) = client_id {
        req = req.header("x-client-id", id);
    }
    let r = req.send().await.expect("HTTP");
    let status = r.status().as_u16();
    let text = r.text().await.expect("body");
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rest_needs_a_token_and_the_caller_is_its_sub() {
    let hub = auth_hub().await;
    let alice = token("alice", &["default"], Role::Client);
    let send = json!({"command": {"action": "send", "contact": "john", "message": "hi"}});

    let (status, body) = rest(&hub, "GET", "/api/v1/sessions/default", None, None, None).await;
    assert_eq!(status, 401, "{body}");
    assert_eq!(body["type"], "error");
    assert_eq!(body["code"], "unauthorized");
    let (status, _) = rest(
        &hub,
        "GET",
        "/api/v1/sessions/default",
        Some("x.y.z"),
        None,
        None,
    )
    .await;
    assert_eq!(status, 401);
    let (status, body) = rest(
        &hub,
        "POST",
        "/api/v1/sessions/other/commands",
        Some(&alice),
        Some(send.clone()),
        None,
    )
    .await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["code"], "forbidden");
    let (status, _) = rest(
        &hub,
        "GET",
        "/api/v1/sessions/other/history/john",
        Some(&alice),
        None,
        None,
    )
    .await;
    assert_eq!(status, 403);

    // The caller is the token's sub; X-Client-Id is ignored with auth on
    // (in a session that exists: a client registered in it).
    let (_member, _) =
        WsClient::register_with_token(&hub.ws_url(), &alice, register("default", "member")).await;
    let (status, body) = rest(
        &hub,
        "POST",
        "/api/v1/sessions/default/commands",
        Some(&alice),
        Some(send),
        Some("mallory"),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let (status, history) = rest(
        &hub,
        "GET",
        "/api/v1/sessions/default/history/john",
        Some(&alice),
        None,
        None,
    )
    .await;
    assert_eq!(status, 200, "{history}");
    let messages = history["messages"].as_array().expect("messages");
    assert_eq!(messages.last().expect("one")["by"], "alice", "{history}");
    let (status, _) = rest(
        &hub,
        "GET",
        "/api/v1/sessions/default",
        Some(&alice),
        None,
        None,
    )
    .await;
    assert_eq!(status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cluster_endpoint_is_for_admins() {
    let hub = auth_hub().await;
    let (status, body) = rest(&hub, "GET", "/api/v1/cluster", None, None, None).await;
    assert_eq!((status, body["code"].as_str()), (401, Some("unauthorized")));
    for role in [Role::Client, Role::Agent] {
        let t = token("x", &["*"], role);
        let (status, body) = rest(&hub, "GET", "/api/v1/cluster", Some(&t), None, None).await;
        assert_eq!(status, 403, "{role:?}: {body}");
        assert_eq!(body["type"], "error");
        assert_eq!(body["code"], "forbidden");
    }
    let admin = token("root", &[], Role::Admin);
    let (status, body) = rest(&hub, "GET", "/api/v1/cluster", Some(&admin), None, None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["mode"], "standalone");

    // Without auth (loopback, nothing set) everything stays open as before.
    let open = TestHub::start(&[]).await;
    assert_eq!(open.get("/api/v1/cluster").await.0, 200);
    let (_c, confirmed) = WsClient::register(&open.ws_url(), "default", "c").await;
    assert_eq!(confirmed["type"], "registration_confirmed");
}

/// A token with a `scope` claim gets its role's scopes narrowed to those:
/// `whatsapp.read` registers and reads but cannot send or broadcast on the
/// WebSocket or REST; `whatsapp.send` alone cannot register; a role-admin
/// token without `admin` is refused by the admin API. All with
/// `insufficient_scope` (403 over HTTP).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scopes_narrow_what_a_token_may_do_on_every_door() {
    let hub = auth_hub().await;
    let scoped = |role, scope: &str| {
        let grant = mcp_hub::auth::Grant {
            audience: None,
            scope: Some(scope.to_string()),
        };
        let sessions = ["default".to_string()];
        mcp_hub::auth::mint_with(
            SECRET,
            "rita",
            &sessions,
            role,
            Duration::from_secs(600),
            &grant,
        )
        .expect("mint")
    };
    let reader = scoped(Role::Client, "whatsapp.read");

    let (mut ws, confirmed) =
        WsClient::register_with_token(&hub.ws_url(), &reader, register("default", "rita")).await;
    assert_eq!(confirmed["type"], "registration_confirmed", "{confirmed}");
    let list = ws
        .request(json!({"type": "whatsapp_command", "command": {"action": "list_contacts"}}))
        .await;
    assert_eq!(list["content"]["success"], true, "{list}");
    for refused in [
        json!({"type": "whatsapp_command", "command": {"action": "send", "contact": "john", "message": "hi"}}),
        json!({"type": "whatsapp_ai_command", "command": "tell john hi"}),
        json!({"type": "broadcast", "payload": {"text": "hi"}}),
    ] {
        let answer = ws.request(refused.clone()).await;
        assert_eq!(answer["type"], "error", "{refused}: {answer}");
        assert_eq!(answer["code"], "insufficient_scope", "{refused}: {answer}");
    }

    let path = "/api/v1/sessions/default";
    assert_eq!(
        rest(&hub, "GET", path, Some(&reader), None, None).await.0,
        200
    );
    let commands = "/api/v1/sessions/default/commands";
    let send = json!({"command": {"action": "send", "contact": "john", "message": "hi"}});
    let (status, body) = rest(&hub, "POST", commands, Some(&reader), Some(send), None).await;
    assert_eq!(
        (status, &body["code"]),
        (403, &json!("insufficient_scope")),
        "{body}"
    );
    let list = json!({"command": {"action": "list_contacts"}});
    let (status, body) = rest(&hub, "POST", commands, Some(&reader), Some(list), None).await;
    assert_eq!(status, 200, "a read through /commands: {body}");

    let sender = scoped(Role::Client, "whatsapp.send");
    let mut ws = WsClient::connect_with_token(&hub.ws_url(), &sender).await;
    let refused = ws.request(register("default", "sam")).await;
    assert_eq!(refused["code"], "insufficient_scope", "{refused}");

    let narrow_admin = scoped(Role::Admin, "whatsapp.read whatsapp.send");
    let (status, body) = rest(
        &hub,
        "GET",
        "/api/v1/cluster",
        Some(&narrow_admin),
        None,
        None,
    )
    .await;
    assert_eq!(
        (status, &body["code"]),
        (403, &json!("insufficient_scope")),
        "{body}"
    );
}

/// A REST, admin or MCP call's token is verified once per request (the
/// rate limit keys callers by it; the handler reads the same verdict), and
/// the answers are those of a single check: 404 / 200 / 403 / 401.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_verifies_its_token_once() {
    let hub = auth_hub().await;
    let alice = token("alice", &["default"], Role::Client);
    let root = token("root", &[], Role::Admin);
    let expired = token_with(
        json!({"sub": "a", "sessions": ["default"], "exp": now_secs() - 5}),
        SECRET,
    );
    let summary = "/api/v1/sessions/default";
    let (status, body) = rest(&hub, "GET", summary, Some(&alice), None, None).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (404, Some("session_not_found"))
    );
    let (status, body) = rest(&hub, "GET", "/api/v1/sessions", Some(&root), None, None).await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = rest(&hub, "GET", "/api/v1/instances", Some(&alice), None, None).await;
    assert_eq!((status, body["code"].as_str()), (403, Some("forbidden")));
    let (status, body) = rest(&hub, "GET", summary, Some(&expired), None, None).await;
    assert_eq!((status, body["code"].as_str()), (401, Some("unauthorized")));
    assert_eq!(body["message"], "token expired", "{body}");
    let (status, body) = rest(&hub, "GET", summary, Some("not-a-jwt"), None, None).await;
    assert_eq!((status, body["code"].as_str()), (401, Some("unauthorized")));
    let ping = json!({"jsonrpc": "2.0", "id": 1, "method": "ping"});
    let (status, body) = rest(&hub, "POST", "/mcp", Some("not-a-jwt"), Some(ping), None).await;
    assert_eq!((status, body["code"].as_str()), (401, Some("unauthorized")));
    // Without a token nothing is verified.
    let (status, _) = rest(&hub, "GET", summary, None, None, None).await;
    assert_eq!(status, 401);

    let metrics = metrics_text(&hub).await;
    let checks = |result: &str| {
        let series = format!("hub_token_verifications_total{{result=\"{result}\"}}");
        metric_value(&metrics, &series)
    };
    assert_eq!(checks("accepted"), Some(3.0), "alice, root, alice");
    assert_eq!(checks("expired"), Some(1.0));
    assert_eq!(checks("invalid"), Some(2.0), "REST and MCP");
}

// ------------------------------------------------------- startup rules

/// The hub must refuse to start (exit 2) naming every one of `names`.
fn refuses(dir: &TempDir, args: &[&str], envs: &[(&str, &str)], names: &[&str]) {
    let (code, stderr) = run_hub(args, envs, dir);
    assert_eq!(code, Some(2), "{args:?} {envs:?}: {stderr}");
    for name in names {
        assert!(
            stderr.contains(name),
            "{args:?} {envs:?}: no {name} in {stderr}"
        );
    }
}

#[test]
fn startup_refuses_unsafe_or_broken_auth_settings() {
    let dir = TempDir::new();
    let port = ["--port", "0"];
    refuses(
        &dir,
        &["--host", "0.0.0.0", "--port", "0"],
        &[],
        &["AUTH_JWT_SECRET", "AUTH_MODE=none"],
    );
    refuses(
        &dir,
        &port,
        &[("AUTH_JWT_SECRET", "short")],
        &["AUTH_JWT_SECRET"],
    );
    refuses(&dir, &port, &[("AUTH_MODE", "jwt")], &["AUTH_JWT_SECRET"]);
    refuses(
        &dir,
        &port,
        &[("AUTH_JWT_PUBLIC_KEY_FILE", "/nonexistent/key.pem")],
        &["AUTH_JWT_PUBLIC_KEY_FILE"],
    );
    let not_pem = dir.write(
        "not.pem",
        "-----BEGIN PUBLIC KEY-----\nnope\n-----END PUBLIC KEY-----\n",
    );
    refuses(
        &dir,
        &port,
        &[("AUTH_JWT_PUBLIC_KEY_FILE", not_pem.to_str().expect("utf-8"))],
        &["AUTH_JWT_PUBLIC_KEY_FILE"],
    );
}

#[test]
fn token_command_mints_and_refuses_without_a_secret() {
    let dir = TempDir::new();
    let (code, _, stderr) = run_binary(&["token", "--sub", "a", "--session", "default"], &[], &dir);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("AUTH_JWT_SECRET"), "{stderr}");
    let (code, _, stderr) = run_binary(
        &["token", "--sub", "a"],
        &[("AUTH_JWT_SECRET", "short")],
        &dir,
    );
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("AUTH_JWT_SECRET"), "{stderr}");
    let (code, stdout, stderr) = run_binary(
        &[
            "token",
            "--sub",
            "alice",
            "--session",
            "default",
            "--session",
            "ops",
            "--role",
            "agent",
            "--ttl",
            "1h",
        ],
        &[("AUTH_JWT_SECRET", SECRET)],
        &dir,
    );
    assert_eq!(code, Some(0), "{stderr}");
    let claims: Claims = jsonwebtoken::decode(
        stdout.trim(),
        &jsonwebtoken::DecodingKey::from_secret(SECRET.as_bytes()),
        &jsonwebtoken::Validation::new(Algorithm::HS256),
    )
    .expect("valid token")
    .claims;
    assert_eq!(claims.sub, "alice");
    assert_eq!(claims.sessions, vec!["default", "ops"]);
    assert_eq!(claims.role.as_deref(), Some("agent"));
    let ttl = claims.exp - now_secs();
    assert!((3590..=3600).contains(&ttl), "{ttl}");

    // A narrowed token for /mcp: `scope` and `aud` as given.
    let (code, stdout, stderr) = run_binary(
        &[
            "token",
            "--sub",
            "claude",
            "--scope",
            "whatsapp.read",
            "--audience",
            "https://hub.example",
        ],
        &[("AUTH_JWT_SECRET", SECRET)],
        &dir,
    );
    assert_eq!(code, Some(0), "{stderr}");
    let mut validation = jsonwebtoken::Validation::new(Algorithm::HS256);
    validation.set_audience(&["https://hub.example"]);
    let claims: Claims = jsonwebtoken::decode(
        stdout.trim(),
        &jsonwebtoken::DecodingKey::from_secret(SECRET.as_bytes()),
        &validation,
    )
    .expect("valid token for the audience")
    .claims;
    assert_eq!(claims.scope.as_deref(), Some("whatsapp.read"));
}

// ---------------------------------------------------------------- JWKS

fn openssl_rsa_key(dir: &TempDir, name: &str) -> (std::path::PathBuf, std::path::PathBuf) {
    assert!(have("openssl"), "openssl is missing: run ./scripts/test");
    let private = dir.path().join(format!("{name}.key.pem"));
    let public = dir.path().join(format!("{name}.pub.pem"));
    let ok = std::process::Command::new("openssl")
        .args([
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
            "-out",
        ])
        .arg(&private)
        .stderr(std::process::Stdio::null())
        .status()
        .expect("openssl genpkey")
        .success();
    assert!(ok, "openssl genpkey failed");
    let ok = std::process::Command::new("openssl")
        .args(["pkey", "-pubout", "-in"])
        .arg(&private)
        .arg("-out")
        .arg(&public)
        .status()
        .expect("openssl pkey")
        .success();
    assert!(ok, "openssl pkey -pubout failed");
    (private, public)
}

fn rs256(private: &std::path::Path, kid: Option<&str>, sub: &str) -> String {
    let key = EncodingKey::from_rsa_pem(&std::fs::read(private).expect("key")).expect("rsa key");
    let mut header = Header::new(Algorithm::RS256);
    header.kid = kid.map(str::to_string);
    let claims = json!({"sub": sub, "sessions": ["default"], "exp": now_secs() + 600});
    jsonwebtoken::encode(&header, &claims, &key).expect("sign")
}

fn jwk(private: &std::path::Path, kid: &str) -> Jwk {
    let key = EncodingKey::from_rsa_pem(&std::fs::read(private).expect("key")).expect("rsa key");
    let mut jwk = Jwk::from_encoding_key(&key, Algorithm::RS256).expect("jwk");
    jwk.common.key_id = Some(kid.to_string());
    jwk
}

/// A JWKS endpoint on 127.0.0.1:0 serving whatever `set` holds (None: 500).
struct JwksServer {
    url: String,
    set: Arc<std::sync::Mutex<Option<JwkSet>>>,
    fetches: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl JwksServer {
    async fn start(set: JwkSet) -> JwksServer {
        use axum::http::StatusCode;
        use axum::response::IntoResponse;
        let shared = Arc::new(std::sync::Mutex::new(Some(set)));
        let fetches = Arc::new(AtomicUsize::new(0));
        let (s, f) = (shared.clone(), fetches.clone());
        let app = axum::Router::new().route(
            "/jwks.json",
            axum::routing::get(move || {
                let (s, f) = (s.clone(), f.clone());
                async move {
                    f.fetch_add(1, Ordering::SeqCst);
                    match s.lock().expect("lock").clone() {
                        Some(set) => axum::Json(set).into_response(),
                        None => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
                    }
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        JwksServer {
            url: format!("http://{addr}/jwks.json"),
            set: shared,
            fetches,
            task,
        }
    }
}

impl Drop for JwksServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwks_keys_are_fetched_refreshed_and_kept_on_failure() {
    let dir = TempDir::new();
    let (k1, _) = openssl_rsa_key(&dir, "k1");
    let (k2, _) = openssl_rsa_key(&dir, "k2");
    let jwks = JwksServer::start(JwkSet {
        keys: vec![jwk(&k1, "k1")],
    })
    .await;
    let hub = TestHub::start(&[
        "--auth-jwks-url",
        &jwks.url,
        "--auth-jwks-refresh-ms",
        "1000",
    ])
    .await;
    let url = hub.ws_url();

    assert!(
        WsClient::try_connect(&url, Some(&rs256(&k1, Some("k1"), "a")))
            .await
            .is_ok()
    );
    // A key the set does not hold (yet), and HS256 when no secret is set.
    assert_unauthorized(
        WsClient::try_connect(&url, Some(&rs256(&k2, Some("k2"), "a"))).await,
        "unknown kid",
    );
    assert_unauthorized(
        WsClient::try_connect(&url, Some(&token("a", &["default"], Role::Client))).await,
        "HS256 without a secret",
    );

    // The IdP publishes k2: picked up by the periodic refresh.
    *jwks.set.lock().expect("lock") = Some(JwkSet {
        keys: vec![jwk(&k1, "k1"), jwk(&k2, "k2")],
    });
    let t2 = rs256(&k2, Some("k2"), "b");
    wait_until_async("k2 to be accepted", Duration::from_secs(15), || {
        let (url, t2) = (url.clone(), t2.clone());
        async move { WsClient::try_connect(&url, Some(&t2)).await.is_ok() }
    })
    .await;

    // The JWKS endpoint fails: the last good set stays.
    *jwks.set.lock().expect("lock") = None;
    let seen = jwks.fetches.load(Ordering::SeqCst);
    wait_until_async("two failed refreshes", Duration::from_secs(15), || {
        let n = jwks.fetches.load(Ordering::SeqCst);
        async move { n >= seen + 2 }
    })
    .await;
    assert!(WsClient::try_connect(&url, Some(&t2)).await.is_ok());
    assert!(
        WsClient::try_connect(&url, Some(&rs256(&k1, Some("k1"), "a")))
            .await
            .is_ok()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pem_public_key_verifies_rs256_and_issuer_audience_are_checked() {
    let dir = TempDir::new();
    let (private, public) = openssl_rsa_key(&dir, "idp");
    let public = public.to_str().expect("utf-8").to_string();
    let hub = TestHub::start(&[
        "--auth-jwt-public-key-file",
        &public,
        "--auth-jwt-issuer",
        "https://idp.example",
        "--auth-jwt-audience",
        "mcp-hub",
    ])
    .await;
    let key = EncodingKey::from_rsa_pem(&std::fs::read(&private).expect("key")).expect("key");
    let sign = |claims: Value| {
        jsonwebtoken::encode(&Header::new(Algorithm::RS256), &claims, &key).expect("sign")
    };
    let exp = now_secs() + 600;
    let good = sign(json!({"sub": "a", "exp": exp, "sessions": ["default"],
                           "iss": "https://idp.example", "aud": "mcp-hub"}));
    assert!(
        WsClient::try_connect(&hub.ws_url(), Some(&good))
            .await
            .is_ok()
    );
    for (what, claims) in [
        ("no iss/aud", json!({"sub": "a", "exp": exp})),
        (
            "other iss",
            json!({"sub": "a", "exp": exp, "iss": "evil", "aud": "mcp-hub"}),
        ),
        (
            "other aud",
            json!({"sub": "a", "exp": exp, "iss": "https://idp.example", "aud": "x"}),
        ),
    ] {
        assert_unauthorized(
            WsClient::try_connect(&hub.ws_url(), Some(&sign(claims))).await,
            what,
        );
    }
}

// ------------------------------------------------ cluster behind HAProxy

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_behind_haproxy_with_auth() {
    let redis = RedisServer::start();
    let url = redis.url();
    let mut hubs = Vec::new();
    for id in ["a1", "a2", "a3"] {
        hubs.push(
            TestHub::start(&[
                "--redis-url",
                &url,
                "--instance-id",
                id,
                "--heartbeat-ms",
                "200",
                "--presence-ttl-ms",
                "2000",
                "--auth-jwt-secret",
                SECRET,
            ])
            .await,
        );
    }
    let addrs: Vec<_> = hubs.iter().map(|h| h.addr).collect();
    let lb = Haproxy::start(&addrs, 3);
    let alice = token("alice", &["default"], Role::Client);
    let (mut c, confirmed) =
        WsClient::register_with_token(&lb.ws_url(), &alice, register("default", "lb-1")).await;
    assert_eq!(confirmed["type"], "registration_confirmed");
    assert_unauthorized(
        WsClient::try_connect(&lb.ws_url(), None).await,
        "through HAProxy",
    );

    // Ownership of a client id holds across instances.
    let (_held, _) =
        WsClient::register_with_token(&hubs[0].ws_url(), &alice, register("default", "desk")).await;
    let bob = token("bob", &["default"], Role::Client);
    let mut thief = WsClient::connect_with_token(&hubs[1].ws_url(), &bob).await;
    let err = thief.request(register("default", "desk")).await;
    assert_eq!(err["code"], "forbidden", "{err}");
    assert_eq!(c.request(json!({"type": "ping"})).await["type"], "pong");
}

// ------------------------------------------------------ interop: PyJWT

/// PyJWT from scripts/test; without it (a bare `cargo test`) the interop
/// tests say so and pass, as the HAProxy tests do without haproxy.
fn pyjwt() -> bool {
    let ok = std::process::Command::new("python3")
        .args(["-c", "import jwt, cryptography"])
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        eprintln!(
            "skipping: PyJWT is missing (python3 -m pip install PyJWT cryptography, or ./scripts/test)"
        );
    }
    ok
}

fn interop(args: &[&str]) -> (bool, String) {
    let out = std::process::Command::new("python3")
        .arg(repo_path("tests/auth_interop.py"))
        .args(args)
        .output()
        .expect("python3");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interop_pyjwt_tokens_are_accepted_and_a_wrong_secret_refused() {
    if !pyjwt() {
        return;
    }
    let dir = TempDir::new();
    let (private, public) = openssl_rsa_key(&dir, "py");
    let public = public.to_str().expect("utf-8").to_string();
    let hub = TestHub::start(&[
        "--auth-jwt-secret",
        SECRET,
        "--auth-jwt-public-key-file",
        &public,
    ])
    .await;
    let (ok, out) = interop(&[
        "mint",
        SECRET,
        private.to_str().expect("utf-8"),
        "a-wrong-secret-that-is-long-enough-32b",
    ]);
    assert!(ok, "{out}");
    let tokens: Value = serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{e}: {out}"));
    for alg in ["hs256", "rs256"] {
        let t = tokens[alg].as_str().expect("token");
        let (_c, confirmed) =
            WsClient::register_with_token(&hub.ws_url(), t, register("default", alg)).await;
        assert_eq!(confirmed["client_id"], alg);
    }
    let wrong = tokens["wrong_secret"].as_str().expect("token");
    assert_unauthorized(
        WsClient::try_connect(&hub.ws_url(), Some(wrong)).await,
        "PyJWT, wrong secret",
    );
}

#[test]
fn interop_mcp_hub_token_verifies_with_pyjwt() {
    if !pyjwt() {
        return;
    }
    let dir = TempDir::new();
    let (code, stdout, stderr) = run_binary(
        &[
            "token",
            "--sub",
            "alice",
            "--session",
            "default",
            "--role",
            "admin",
            "--ttl",
            "15m",
        ],
        &[("AUTH_JWT_SECRET", SECRET)],
        &dir,
    );
    assert_eq!(code, Some(0), "{stderr}");
    let (ok, out) = interop(&["verify", stdout.trim(), SECRET]);
    assert!(ok, "{out}");
    let claims: Value = serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert_eq!(claims["sub"], "alice");
    assert_eq!(claims["sessions"], json!(["default"]));
    assert_eq!(claims["role"], "admin");
    let (ok, _) = interop(&["verify", stdout.trim(), "not-the-secret-not-the-secret-xx"]);
    assert!(!ok, "PyJWT must refuse the token with another secret");
}

// ------------------------------------------------------------ terminal

/// Reads lines of `stream` until one contains `needle` (bounded).
async fn wait_for_output<R: tokio::io::AsyncRead + Unpin>(
    lines: &mut tokio::io::Lines<tokio::io::BufReader<R>>,
    needle: &str,
) {
    let mut seen = Vec::new();
    let found = tokio::time::timeout(Duration::from_secs(15), async {
        while let Ok(Some(line)) = lines.next_line().await {
            let hit = line.contains(needle);
            seen.push(line);
            if hit {
                return true;
            }
        }
        false
    })
    .await
    .unwrap_or(false);
    assert!(found, "no line containing {needle:?}:\n{}", seen.join("\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_terminal_sends_its_token_and_renews_it_from_the_token_file_after_4401() {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    let hub = auth_hub().await;
    let dir = TempDir::new();
    let terminal = |envs: &[(&str, &str)]| {
        let mut cmd = tokio::process::Command::new(hub_binary());
        cmd.args(["terminal", "--url", &hub.ws_url(), "--linger-ms", "100"])
            .env_remove("MCP_HUB_URL")
            .env_remove("MCP_HUB_TOKEN")
            .env_remove("MCP_HUB_TOKEN_FILE")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true);
        for (k, v) in envs {
            cmd.env(k, v);
        }
        cmd.spawn().expect("spawn terminal")
    };

    // Without a token: refused with 401, exit 1.
    let out = terminal(&[]).wait_with_output().await.expect("terminal");
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("401"),
        "{out:?}"
    );

    // A token that expires in 2 s, from a file; the file is then renewed.
    let short = token_with(
        json!({"sub": "tty", "sessions": ["default"], "exp": now_secs() + 2}),
        SECRET,
    );
    let file = dir.write("token", &short);
    let mut child = terminal(&[("MCP_HUB_TOKEN_FILE", file.to_str().expect("utf-8"))]);
    let mut stdout = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let mut stderr = BufReader::new(child.stderr.take().expect("stderr")).lines();
    wait_for_output(&mut stdout, "connected to").await;
    wait_for_output(&mut stderr, "token expired (4401)").await;
    // Replaced atomically, as token rotators do: a plain write truncates
    // first, and a terminal reading in between sees an empty token.
    let renewed = dir.write("token.new", &token("tty", &["default"], Role::Client));
    std::fs::rename(&renewed, &file).expect("renew");
    wait_for_output(&mut stderr, "reconnecting with the renewed token").await;
    wait_for_output(&mut stdout, "connected to").await;
    let mut stdin = child.stdin.take().expect("stdin");
    stdin.write_all(b"/ping\n").await.expect("write");
    drop(stdin);
    let status = tokio::time::timeout(Duration::from_secs(15), child.wait())
        .await
        .expect("terminal exits after its input")
        .expect("wait");
    assert_eq!(status.code(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_kid_refetches_the_jwks_at_most_every_10_s() {
    let dir = TempDir::new();
    let (k1, _) = openssl_rsa_key(&dir, "k1");
    let (k2, _) = openssl_rsa_key(&dir, "k2");
    let jwks = JwksServer::start(JwkSet {
        keys: vec![jwk(&k1, "k1")],
    })
    .await;
    // The periodic refresh (default 5 min) plays no part here.
    let hub = TestHub::start(&["--auth-jwks-url", &jwks.url]).await;
    assert_eq!(jwks.fetches.load(Ordering::SeqCst), 1, "fetched at start");
    *jwks.set.lock().expect("lock") = Some(JwkSet {
        keys: vec![jwk(&k1, "k1"), jwk(&k2, "k2")],
    });
    let t2 = rs256(&k2, Some("k2"), "b");
    // Tokens with the new kid, tried every 250 ms: refused until 10 s
    // after the last fetch, then one refetch lets them in.
    let url = hub.ws_url();
    wait_until_async(
        "the unknown kid to trigger a refetch",
        Duration::from_secs(20),
        || {
            let (url, t2) = (url.clone(), t2.clone());
            async move {
                let ok = WsClient::try_connect(&url, Some(&t2)).await.is_ok();
                if !ok {
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
                ok
            }
        },
    )
    .await;
    assert_eq!(
        jwks.fetches.load(Ordering::SeqCst),
        2,
        "many unknown-kid tokens, one refetch"
    );
}
