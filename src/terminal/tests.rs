//! The session logic against a scripted fake hub, for what the real hub
//! never does (ignore a request, send odd frames) or does rarely (close
//! with a code). The real hub is exercised in tests/terminal_cli.rs.

use std::sync::{Arc, Mutex};

use clap::Parser;
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use super::*;

type ServerWs = WebSocketStream<TcpStream>;

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    args: TerminalArgs,
}

fn args(url: &str, extra: &[&str]) -> TerminalArgs {
    let argv = ["terminal", "--url", url, "--name", "t", "--client-id", "t"];
    Cli::parse_from(argv.iter().chain(extra)).args
}

/// Accepts one WebSocket connection and runs `script` on it.
async fn fake_hub<F, Fut>(script: F) -> (String, tokio::task::JoinHandle<()>)
where
    F: FnOnce(ServerWs) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("ws://{}", listener.local_addr().unwrap());
    let task = tokio::spawn(async move {
        let (stream, _) = listener.accept().await.unwrap();
        let ws = tokio_tungstenite::accept_async(stream).await.unwrap();
        script(ws).await;
    });
    (url, task)
}

/// Reads the next text frame as JSON (None once the client is gone).
async fn next_json(ws: &mut ServerWs) -> Option<Value> {
    while let Some(Ok(msg)) = ws.next().await {
        match msg {
            Message::Text(t) => return serde_json::from_str(&t).ok(),
            Message::Close(_) => return None,
            _ => {}
        }
    }
    None
}

async fn confirm_registration(ws: &mut ServerWs) {
    let reg = next_json(ws).await.expect("a register message");
    assert_eq!(reg["type"], "register");
    assert_eq!(reg["client_id"], "t");
    assert_eq!(reg["client_name"], "t");
    let confirmed = json!({"type":"registration_confirmed","client_id":"t","client_name":"t",
        "session":"default","instance":"fake","agent":false,
        "clients":[{"client_id":"t","client_name":"t","instance":"fake"},
                   {"client_id":"b7","client_name":"bob","instance":"fake"}]});
    ws.send(Message::text(confirmed.to_string())).await.unwrap();
}

struct Run {
    result: Result<(), Failure>,
    transcript: Vec<String>,
}

impl Run {
    fn has(&self, needle: &str) -> bool {
        self.transcript.iter().any(|l| l.contains(needle))
    }

    fn position(&self, needle: &str) -> usize {
        self.transcript
            .iter()
            .position(|l| l.contains(needle))
            .unwrap_or_else(|| panic!("no line with {needle:?} in {:#?}", self.transcript))
    }
}

/// Runs a scripted terminal session with `lines` as input; input stays
/// open after them unless `close_input`.
async fn run_session(
    args: TerminalArgs,
    lines: &[&str],
    close_input: bool,
) -> (Run, Option<mpsc::Sender<String>>) {
    let (tx, rx) = mpsc::channel(16);
    for line in lines {
        tx.send(line.to_string()).await.unwrap();
    }
    let captured = Arc::new(Mutex::new(Vec::new()));
    let mut terminal = Terminal::new(args, true);
    terminal.out = Output {
        captured: Some(captured.clone()),
    };
    // The sender is handed back (input stays open) or dropped (end of input).
    let keep = (!close_input).then_some(tx);
    let result = tokio::time::timeout(Duration::from_secs(10), terminal.run(rx))
        .await
        .expect("the session ends by itself");
    let transcript = captured.lock().unwrap().clone();
    (Run { result, transcript }, keep)
}

#[tokio::test]
async fn answers_are_printed_and_the_session_lingers_after_input_ends() {
    let (url, hub) = fake_hub(|mut ws| async move {
        confirm_registration(&mut ws).await;
        let ping = next_json(&mut ws).await.unwrap();
        assert_eq!(ping["type"], "ping");
        let reply = json!({"type":"pong","timestamp":1,"request_id":ping["request_id"]});
        ws.send(Message::text(reply.to_string())).await.unwrap();
        // An event during the linger time is still printed.
        tokio::time::sleep(Duration::from_millis(50)).await;
        let event = json!({"type":"message_event","direction":"outgoing","contact":"John",
            "message":"late","by":"b7"});
        ws.send(Message::text(event.to_string())).await.unwrap();
        while next_json(&mut ws).await.is_some() {}
    })
    .await;
    let args = args(&url, &["--linger-ms", "400"]);
    let (run, _) = run_session(args, &["/ping", "", "/help", "/nope"], true).await;
    assert!(run.result.is_ok(), "{:?}", run.result);
    assert!(run.has("connected to ws://"), "{:#?}", run.transcript);
    assert!(run.has("also connected: bob (b7, instance fake)"));
    assert!(run.position("[#1] > /ping") < run.position("[#1] pong ("));
    assert!(run.has("/history <contact> [N]"), "help is printed");
    assert!(run.has("stderr: error: unknown command /nope"));
    assert!(run.has("→ John: late (by bob)"), "{:#?}", run.transcript);
    hub.await.unwrap();
}

#[tokio::test]
async fn unanswered_requests_are_given_up_and_odd_frames_printed_raw() {
    let (url, hub) = fake_hub(|mut ws| async move {
        confirm_registration(&mut ws).await;
        let mut ids = Vec::new();
        while let Some(request) = next_json(&mut ws).await {
            ids.push(request["request_id"].clone());
            for frame in [
                r#"{"type":"surprise","n":1}"#,
                "not json",
                r#"{"type":"pong"#,
            ] {
                ws.send(Message::text(frame)).await.unwrap();
            }
            ws.send(Message::binary(vec![1u8, 2, 3])).await.unwrap();
        }
        assert_eq!(ids, [json!("1"), json!("2")]);
    })
    .await;
    let args = args(&url, &["--wait-ms", "200", "--linger-ms", "50"]);
    let (run, _) = run_session(args, &["/ping", "/contacts"], true).await;
    assert!(run.result.is_ok(), "{:?}", run.result);
    assert!(
        run.has(r#"? {"type":"surprise","n":1}"#),
        "{:#?}",
        run.transcript
    );
    assert!(run.has("? not json"));
    assert!(run.has(r#"? {"type":"pong"#));
    assert!(run.has("? binary frame of 3 bytes"));
    // Piped input goes one request at a time: #2 waits for #1 to expire.
    let gave_up = run.position("stderr: warning: [#1] no response to ping after 200 ms");
    assert!(gave_up < run.position("[#2] > /contacts"));
    assert!(run.has("stderr: warning: [#2] no response to whatsapp_command"));
    hub.await.unwrap();
}

#[tokio::test]
async fn the_hub_closing_the_connection_is_a_failure_naming_code_and_reason() {
    let (url, hub) = fake_hub(|mut ws| async move {
        confirm_registration(&mut ws).await;
        let frame = CloseFrame {
            code: CloseCode::from(4001),
            reason: "client_id registered again on another connection".into(),
        };
        ws.send(Message::Close(Some(frame))).await.unwrap();
        while ws.next().await.is_some() {}
    })
    .await;
    // Input stays open: the session must still end.
    let (run, _input) = run_session(args(&url, &[]), &[], false).await;
    let err = run.result.unwrap_err();
    assert_eq!(
        err.to_string(),
        "connection closed by the hub: 4001 client_id registered again on another connection"
    );
    hub.await.unwrap();
}

#[tokio::test]
async fn a_dropped_connection_is_a_failure() {
    let (url, hub) = fake_hub(|mut ws| async move {
        confirm_registration(&mut ws).await;
        drop(ws);
    })
    .await;
    let args = args(&url, &["--reconnect-attempts", "0"]);
    let (run, _input) = run_session(args, &[], false).await;
    assert!(
        matches!(run.result, Err(Failure::Lost(_))),
        "{:?}",
        run.result
    );
    hub.await.unwrap();
}

/// Accepts two connections in turn, running `first` then `second`.
async fn fake_hub_twice<F1, Fut1, F2, Fut2>(
    first: F1,
    second: F2,
) -> (String, tokio::task::JoinHandle<()>)
where
    F1: FnOnce(ServerWs) -> Fut1 + Send + 'static,
    Fut1: std::future::Future<Output = ()> + Send,
    F2: FnOnce(ServerWs) -> Fut2 + Send + 'static,
    Fut2: std::future::Future<Output = ()> + Send,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("ws://{}", listener.local_addr().unwrap());
    let task = tokio::spawn(async move {
        let (stream, _) = listener.accept().await.unwrap();
        first(tokio_tungstenite::accept_async(stream).await.unwrap()).await;
        let (stream, _) = listener.accept().await.unwrap();
        second(tokio_tungstenite::accept_async(stream).await.unwrap()).await;
    });
    (url, task)
}

async fn send_json(ws: &mut ServerWs, v: Value) {
    ws.send(Message::text(v.to_string())).await.unwrap();
}

fn message_event(offset: u64, text: &str) -> Value {
    json!({"type":"message_event","offset":offset,"epoch":"e1","direction":"incoming",
        "contact":"John","message":text,"by":"John","message_id":format!("m{offset}")})
}

#[tokio::test]
async fn a_lost_connection_resumes_from_the_last_offset_seen() {
    let (url, hub) = fake_hub_twice(
        |mut ws| async move {
            let reg = next_json(&mut ws).await.unwrap();
            assert!(
                reg.get("since").is_none(),
                "a first registration resumes nothing"
            );
            send_json(
                &mut ws,
                json!({"type":"registration_confirmed","client_id":"t",
                "client_name":"t","session":"default","instance":"fake","agent":false,
                "clients":[],"recovered":false,"offset":5,"epoch":"e1"}),
            )
            .await;
            send_json(&mut ws, message_event(6, "before")).await;
            // Wait for the terminal's request, then vanish without a close frame.
            let ping = next_json(&mut ws).await.unwrap();
            assert_eq!(ping["type"], "ping");
            drop(ws);
        },
        |mut ws| async move {
            let reg = next_json(&mut ws).await.unwrap();
            assert_eq!(reg["client_id"], "t");
            assert_eq!(reg["since"], json!({"offset": 6, "epoch": "e1"}));
            send_json(
                &mut ws,
                json!({"type":"registration_confirmed","client_id":"t",
                "client_name":"t","session":"default","instance":"fake2","agent":false,
                "clients":[],"recovered":true,"offset":8,"epoch":"e1"}),
            )
            .await;
            send_json(&mut ws, message_event(7, "missed one")).await;
            send_json(&mut ws, message_event(8, "missed two")).await;
            // Input typed while reconnecting is sent on the new connection.
            let after = next_json(&mut ws).await.unwrap();
            assert_eq!(after["type"], "broadcast");
            while next_json(&mut ws).await.is_some() {}
        },
    )
    .await;
    let (tx, rx) = mpsc::channel(16);
    let captured = Arc::new(Mutex::new(Vec::new()));
    let mut terminal = Terminal::new(
        args(&url, &["--linger-ms", "200", "--wait-ms", "300"]),
        true,
    );
    terminal.out = Output {
        captured: Some(captured.clone()),
    };
    tx.send("/ping".to_string()).await.unwrap();
    tx.send("/broadcast after".to_string()).await.unwrap();
    drop(tx);
    let result = tokio::time::timeout(Duration::from_secs(10), terminal.run(rx))
        .await
        .expect("the session ends by itself");
    let run = Run {
        result,
        transcript: captured.lock().unwrap().clone(),
    };
    assert!(run.result.is_ok(), "{:?} {:#?}", run.result, run.transcript);
    assert!(run.has("connection lost: "), "{:#?}", run.transcript);
    assert!(run.has("stderr: warning: [#1] connection lost before the response to ping"));
    let resumed = run.position("(resumed: 2 missed events)");
    assert!(run.position("reconnected to ws://") < resumed);
    assert!(
        resumed < run.position("missed two"),
        "{:#?}",
        run.transcript
    );
    assert_eq!(
        terminal.position,
        Some(Position {
            offset: 8,
            epoch: "e1".into()
        })
    );
    hub.await.unwrap();
}

#[tokio::test]
async fn a_failed_resume_reloads_the_last_conversation() {
    let (url, hub) = fake_hub_twice(
        |mut ws| async move {
            next_json(&mut ws).await.unwrap();
            // A hub without the event log: no offsets anywhere.
            send_json(
                &mut ws,
                json!({"type":"registration_confirmed","client_id":"gen-1",
                "client_name":"t","session":"default","instance":"fake","agent":false,
                "clients":[]}),
            )
            .await;
            let mut event = message_event(0, "hi");
            event.as_object_mut().unwrap().remove("offset");
            send_json(&mut ws, event).await;
            let close = CloseFrame {
                code: CloseCode::from(1001),
                reason: "hub shutting down".into(),
            };
            ws.send(Message::Close(Some(close))).await.unwrap();
            while ws.next().await.is_some() {}
        },
        |mut ws| async move {
            let reg = next_json(&mut ws).await.unwrap();
            assert_eq!(reg["client_id"], "gen-1", "the confirmed id is kept");
            assert!(
                reg.get("since").is_none(),
                "no offset seen, nothing to resume"
            );
            send_json(
                &mut ws,
                json!({"type":"registration_confirmed","client_id":"gen-1",
                "client_name":"t","session":"default","instance":"fake","agent":false,
                "clients":[]}),
            )
            .await;
            let history = next_json(&mut ws).await.unwrap();
            assert_eq!(
                history["command"],
                json!({"action":"get_history","contact":"John"})
            );
            let answer = json!({"type":"response","request_id":history["request_id"],
                "success":true,"data":{"contact":"John","messages":[]}});
            send_json(&mut ws, answer).await;
            while next_json(&mut ws).await.is_some() {}
        },
    )
    .await;
    let mut a = args(&url, &["--linger-ms", "300"]);
    a.client_id = None;
    let (run, _) = run_session(a, &[], true).await;
    assert!(run.result.is_ok(), "{:?} {:#?}", run.result, run.transcript);
    let reloaded = run.position("(could not resume: history reloaded)");
    assert!(reloaded < run.position("response"), "{:#?}", run.transcript);
    hub.await.unwrap();
}

#[tokio::test]
async fn a_registration_error_is_fatal() {
    let (url, hub) = fake_hub(|mut ws| async move {
        next_json(&mut ws).await.unwrap();
        let err = json!({"type":"error","code":"invalid_field","message":"bad session"});
        ws.send(Message::text(err.to_string())).await.unwrap();
        while ws.next().await.is_some() {}
    })
    .await;
    let (run, _input) = run_session(args(&url, &[]), &["/ping"], false).await;
    let err = run.result.unwrap_err().to_string();
    assert_eq!(
        err,
        "registration failed: error [invalid_field]: bad session"
    );
    hub.await.unwrap();
}

#[tokio::test]
async fn quit_closes_the_connection_even_with_input_open() {
    let (url, hub) = fake_hub(|mut ws| async move {
        confirm_registration(&mut ws).await;
        let mut saw_close = false;
        while let Some(Ok(msg)) = ws.next().await {
            if let Message::Close(_) = msg {
                saw_close = true;
            }
        }
        assert!(saw_close, "the terminal sends a close frame");
    })
    .await;
    let (run, _input) = run_session(args(&url, &[]), &["/quit", "/ping"], false).await;
    assert!(run.result.is_ok(), "{:?}", run.result);
    assert!(!run.has("/ping"), "nothing after /quit is sent");
    hub.await.unwrap();
}

#[tokio::test]
async fn connecting_to_nothing_fails() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let (run, _input) = run_session(args(&format!("ws://127.0.0.1:{port}"), &[]), &[], false).await;
    let err = run.result.unwrap_err();
    assert!(matches!(err, Failure::Connect(_)), "{err:?}");
    assert!(
        err.to_string()
            .starts_with("cannot connect: ws://127.0.0.1:")
    );
}

/// One upload the fake media hub took: session, Authorization header,
/// filename, content type, bytes.
type Upload = (String, Option<String>, String, String, Vec<u8>);

/// What the fake media hub saw: uploads and `whatsapp_command` commands.
#[derive(Clone, Default)]
struct MediaHubLog {
    uploads: Arc<Mutex<Vec<Upload>>>,
    commands: Arc<Mutex<Vec<Value>>>,
}

/// A fake hub serving, on one port as the real one does, the media
/// endpoint (`POST /api/v1/sessions/{session}/media`: 401 without the
/// token `tok`, 413 over 64 bytes) and the WebSocket, which confirms the
/// registration and answers `send` (with the hub's `message_event`) and
/// `mark_read`.
async fn fake_media_hub() -> (String, MediaHubLog) {
    use axum::extract::ws::{Message as AxMessage, WebSocket, WebSocketUpgrade};
    use axum::extract::{Multipart, Path, State};
    use axum::http::{HeaderMap, StatusCode};
    use axum::response::{IntoResponse, Response};
    use axum::routing::{get, post};

    async fn upload(
        State(log): State<MediaHubLog>,
        Path(session): Path<String>,
        headers: HeaderMap,
        mut form: Multipart,
    ) -> Response {
        let auth = headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        if auth.as_deref() != Some("Bearer tok") {
            let body = json!({"code": "unauthorized", "message": "a token is needed"});
            return (StatusCode::UNAUTHORIZED, axum::Json(body)).into_response();
        }
        let field = form.next_field().await.unwrap().expect("a part");
        assert_eq!(field.name(), Some("file"));
        let filename = field.file_name().unwrap_or_default().to_string();
        let mime = field.content_type().unwrap_or_default().to_string();
        let bytes = field.bytes().await.unwrap().to_vec();
        if bytes.len() > 64 {
            let body = json!({"code": "payload_too_large", "message": "over 64 bytes"});
            return (StatusCode::PAYLOAD_TOO_LARGE, axum::Json(body)).into_response();
        }
        let size = bytes.len();
        let mut uploads = log.uploads.lock().unwrap();
        uploads.push((session, auth, filename, mime.clone(), bytes));
        let id = format!("media-{}", uploads.len());
        axum::Json(json!({"id": id, "kind": "document", "mime_type": mime, "size": size}))
            .into_response()
    }

    async fn serve(mut ws: WebSocket, log: MediaHubLog) {
        let next = async |ws: &mut WebSocket| loop {
            match ws.recv().await {
                Some(Ok(AxMessage::Text(t))) => return serde_json::from_str::<Value>(&t).ok(),
                Some(Ok(_)) => {}
                _ => return None,
            }
        };
        let reg = next(&mut ws).await.expect("register");
        assert_eq!(reg["type"], "register");
        let confirmed = json!({"type":"registration_confirmed","client_id":"t",
            "client_name":"t","session":"default","instance":"fake","agent":false,"clients":[]});
        let send = |v: Value| AxMessage::Text(v.to_string().into());
        ws.send(send(confirmed)).await.unwrap();
        while let Some(request) = next(&mut ws).await {
            let command = request["command"].clone();
            log.commands.lock().unwrap().push(command.clone());
            let rid = request["request_id"].clone();
            let content = match command["action"].as_str() {
                Some("send") => {
                    let mut media = command["media"].clone();
                    let path = format!("/api/v1/sessions/default/media/{}", media["id"]);
                    media["url"] = json!(path.replace('"', ""));
                    media["size"] = json!(8);
                    let event = json!({"type":"message_event","direction":"outgoing",
                        "contact":"John","message":"[document] report.pdf","by":"t",
                        "message_id":"sim.1","media":media});
                    ws.send(send(event)).await.unwrap();
                    json!({"success":true,"contact":"John","message_id":"sim.1"})
                }
                _ => json!({"success":true,"contact":"John","message_id":"in.1"}),
            };
            let answer = json!({"type":"response","response_type":"whatsapp_command_result",
                "request_id":rid,"content":content});
            ws.send(send(answer)).await.unwrap();
        }
    }

    let log = MediaHubLog::default();
    let app = axum::Router::new()
        .route(
            "/",
            get(
                |up: WebSocketUpgrade, State(log): State<MediaHubLog>| async move {
                    up.on_upgrade(move |ws| serve(ws, log))
                },
            ),
        )
        .route("/api/v1/sessions/{session}/media", post(upload))
        .with_state(log.clone());
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("ws://{}/", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, log)
}

#[tokio::test]
async fn send_file_uploads_then_sends_and_read_marks_read() {
    let (url, log) = fake_media_hub().await;
    let dir = std::env::temp_dir().join(format!("mcp-hub-send-file-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let report = dir.join("report.pdf");
    std::fs::write(&report, b"%PDF-1.4").unwrap();
    let big = dir.join("big.pdf");
    std::fs::write(&big, [b'x'; 100]).unwrap();
    let lines = [
        format!("/send-file John {} Q3 numbers", report.display()),
        format!("/send-file John {}", dir.join("setup.exe").display()),
        format!("/send-file John {}", big.display()),
        "/read John".to_string(),
    ];
    let lines: Vec<&str> = lines.iter().map(String::as_str).collect();
    let args = args(&url, &["--token", "tok", "--linger-ms", "100"]);
    let (run, _) = run_session(args, &lines, true).await;
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(run.result.is_ok(), "{:?} {:#?}", run.result, run.transcript);

    let origin = url.trim_end_matches('/').replace("ws://", "http://");
    let shown = run.position(&format!(
        "→ John: document report.pdf (8 B) \"Q3 numbers\" {origin}/api/v1/sessions/default/media/media-1 (by t)"
    ));
    assert!(run.position("[#1] > /send-file John") < shown);
    assert!(
        run.has("[#1] ok: sent report.pdf (8 B) to John"),
        "{:#?}",
        run.transcript
    );
    assert!(run.has("stderr: error: cannot send setup.exe: WhatsApp does not take that type"));
    assert!(
        run.has("[#2] failed [payload_too_large]: the hub refused the upload (HTTP 413 Payload Too Large): over 64 bytes"),
        "{:#?}",
        run.transcript
    );
    assert!(run.has("[#3] ok: marked the latest message from John read"));

    let uploads = log.uploads.lock().unwrap().clone();
    assert_eq!(uploads.len(), 1);
    let (session, auth, filename, mime, bytes) = &uploads[0];
    assert_eq!(
        (
            session.as_str(),
            auth.as_deref(),
            filename.as_str(),
            mime.as_str()
        ),
        (
            "default",
            Some("Bearer tok"),
            "report.pdf",
            "application/pdf"
        )
    );
    assert_eq!(bytes, b"%PDF-1.4");
    let commands = log.commands.lock().unwrap().clone();
    assert_eq!(
        commands,
        [
            json!({"action":"send","contact":"John","media":{"kind":"document","id":"media-1",
                "filename":"report.pdf","caption":"Q3 numbers"}}),
            json!({"action":"mark_read","contact":"John","typing":false}),
        ]
    );
}

#[tokio::test]
async fn a_refused_upload_prints_as_a_failure_and_sends_nothing() {
    let (url, log) = fake_media_hub().await;
    let path = std::env::temp_dir().join(format!("mcp-hub-no-token-{}.png", std::process::id()));
    std::fs::write(&path, b"\x89PNG").unwrap();
    let line = format!("/send-file John {}", path.display());
    let (run, _) = run_session(args(&url, &["--linger-ms", "50"]), &[&line], true).await;
    std::fs::remove_file(&path).unwrap();
    assert!(run.result.is_ok(), "{:?}", run.result);
    assert!(
        run.has("[#1] failed [unauthorized]: the hub refused the upload (HTTP 401 Unauthorized): a token is needed"),
        "{:#?}",
        run.transcript
    );
    assert!(log.commands.lock().unwrap().is_empty());
}
