//! WhatsApp beyond text, end to end against the fake Graph API
//! (`support::fake_graph`) with signed webhooks (`support::wa_payloads`):
//! inbound media served at session-scoped hub URLs, uploads and media
//! sends, reply buttons and the replies they bring, the 24-hour window
//! checked before Graph is called, read receipts, templates, the
//! connector-`none` error order, and two numbers on one Redis cluster.

use crate::support;

use std::process::Stdio;
use std::time::Duration;

use mcp_hub::auth::{Role, mint};
use serde_json::{Value, json};
use support::fake_graph::{FakeGraph, PHONE_NUMBER_ID, TOKEN, VERSION, WABA_ID};
use support::wa_payloads as wa;
use support::*;
use tokio::io::{AsyncBufReadExt, BufReader};

const SECRET: &str = "0123456789abcdef0123456789abcdef-media-tests";
const CONTACTS: &str =
    r#"[{"name": "John", "phone": "+1 555 0100"}, {"name": "Jane", "phone": "+15550102"}]"#;
const JOHN: &str = "15550100";

fn token(sub: &str, sessions: &[&str]) -> String {
    let sessions: Vec<String> = sessions.iter().map(|s| s.to_string()).collect();
    mint(
        SECRET,
        sub,
        &sessions,
        Role::Client,
        Duration::from_secs(600),
    )
    .expect("mint")
}

/// A cloud_api hub on `graph` with John and Jane, then `extra` flags.
async fn cloud_hub(graph: &FakeGraph, dir: &TempDir, extra: &[&str]) -> TestHub {
    let file = dir.write("contacts.json", CONTACTS);
    let mut args = graph.hub_flags();
    args.extend(["--contacts-file".into(), file.display().to_string()]);
    args.extend(extra.iter().map(|s| s.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    TestHub::start(&args).await
}

async fn post_signed(hub: &impl Endpoint, body: &str) {
    let status = reqwest::Client::new()
        .post(hub.http_url("/webhooks/whatsapp"))
        .header("content-type", "application/json")
        .header("x-hub-signature-256", wa::signature(APP_SECRET, body))
        .body(body.to_string())
        .send()
        .await
        .expect("POST webhook")
        .status();
    assert_eq!(status, 200, "{body}");
}

/// The next `message_event` with this direction.
async fn next_message(c: &mut WsClient, direction: &str) -> Value {
    loop {
        let ev = c.recv_type("message_event").await;
        if ev["direction"] == direction {
            return ev;
        }
    }
}

/// GET `path` on the hub with an optional bearer token: status and bytes.
async fn get_bytes(hub: &impl Endpoint, path: &str, token: Option<&str>) -> (u16, Vec<u8>, String) {
    let mut req = reqwest::Client::new().get(hub.http_url(path));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let res = req.send().await.expect("GET");
    let status = res.status().as_u16();
    let mime = res
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    (status, res.bytes().await.expect("body").to_vec(), mime)
}

/// Uploads `bytes` as `filename` (`mime`) to the session's media endpoint.
async fn upload(
    hub: &impl Endpoint,
    session: &str,
    token: Option<&str>,
    filename: &str,
    mime: &str,
    bytes: Vec<u8>,
) -> (u16, Value) {
    let part = reqwest::multipart::Part::bytes(bytes)
        .file_name(filename.to_string())
        .mime_str(mime)
        .expect("mime");
    let form = reqwest::multipart::Form::new().part("file", part);
    let mut req = reqwest::Client::new()
        .post(hub.http_url(&format!("/api/v1/sessions/{session}/media")))
        .multipart(form);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let res = req.send().await.expect("POST media");
    let status = res.status().as_u16();
    (status, res.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_photo_and_a_voice_note_reach_members_at_urls_strangers_cannot_read() {
    let graph = FakeGraph::start().await;
    let dir = TempDir::new();
    let hub = cloud_hub(&graph, &dir, &["--auth-jwt-secret", SECRET]).await;
    let alice = token("alice", &["default"]);
    let (mut member, _) = WsClient::register_with_token(
        &hub.ws_url(),
        &alice,
        json!({"type": "register", "session": "default", "client_id": "alice"}),
    )
    .await;
    let photo: Vec<u8> = (0..40_000u32).map(|i| (i % 251) as u8).collect();
    let photo_id = graph.put_media(PHONE_NUMBER_ID, "image/jpeg", photo.clone());
    let voice = b"OggS fake opus voice note".to_vec();
    let voice_id = graph.put_media(PHONE_NUMBER_ID, "audio/ogg", voice.clone());

    post_signed(
        &hub,
        &wa::image(
            PHONE_NUMBER_ID,
            "wamid.photo",
            JOHN,
            &photo_id,
            Some("Taj Mahal"),
        ),
    )
    .await;
    let ev = next_message(&mut member, "incoming").await;
    assert_eq!(ev["media"]["kind"], "image", "{ev}");
    assert_eq!(ev["media"]["caption"], "Taj Mahal", "{ev}");
    assert_eq!(ev["media"]["mime_type"], "image/jpeg", "{ev}");
    assert_eq!(ev["message"], "[image] Taj Mahal", "{ev}");
    let photo_url = ev["media"]["url"].as_str().expect("a hub url").to_string();
    assert!(
        photo_url.starts_with("/api/v1/sessions/default/media/"),
        "{ev}"
    );

    post_signed(
        &hub,
        &wa::voice(PHONE_NUMBER_ID, "wamid.voice", JOHN, &voice_id),
    )
    .await;
    let ev = next_message(&mut member, "incoming").await;
    assert_eq!(ev["media"]["kind"], "audio", "{ev}");
    assert_eq!(ev["media"]["voice"], true, "{ev}");
    assert_eq!(ev["message"], "[voice note]", "{ev}");
    let voice_url = ev["media"]["url"].as_str().expect("a hub url").to_string();

    // The member gets the bytes, with their type; fetched from Graph once.
    let (status, bytes, mime) = get_bytes(&hub, &photo_url, Some(&alice)).await;
    assert_eq!((status, mime.as_str()), (200, "image/jpeg"));
    assert_eq!(bytes, photo);
    let (status, bytes, _) = get_bytes(&hub, &voice_url, Some(&alice)).await;
    assert_eq!((status, bytes), (200, voice));
    let (_, again, _) = get_bytes(&hub, &photo_url, Some(&alice)).await;
    assert_eq!(again, photo);
    assert_eq!(graph.downloads(), 2, "the second read came from the cache");

    // A stranger: 401. Another session's member: 403. A forged reference
    // (another media id under this session's tag): 404.
    assert_eq!(get_bytes(&hub, &photo_url, None).await.0, 401);
    let mallory = token("mallory", &["other"]);
    assert_eq!(get_bytes(&hub, &photo_url, Some(&mallory)).await.0, 403);
    let tag = photo_url.rsplit_once('.').unwrap().1;
    let forged = format!("/api/v1/sessions/default/media/{voice_id}9.{tag}");
    assert_eq!(get_bytes(&hub, &forged, Some(&alice)).await.0, 404);
    // The same reference under another session name: 404, even for a
    // member of that session.
    let elsewhere = photo_url.replace("/sessions/default/", "/sessions/other/");
    assert_eq!(get_bytes(&hub, &elsewhere, Some(&mallory)).await.0, 404);

    // History keeps the media (with its URL) for clients that join later.
    let r = member.request(history_cmd("john")).await;
    let kinds: Vec<&str> = r["content"]["messages"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|m| m["media"]["kind"].as_str())
        .collect();
    assert_eq!(kinds, ["image", "audio"], "{r}");
}

/// The README's terminal client, as a person runs it: the photo and the
/// voice note arrive as lines with their kind, size and a URL that serves
/// their bytes to the member and 401s a stranger.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_photo_and_a_voice_note_show_in_the_terminal_with_working_urls() {
    let graph = FakeGraph::start().await;
    let dir = TempDir::new();
    let hub = cloud_hub(&graph, &dir, &["--auth-jwt-secret", SECRET]).await;
    let alice = token("alice", &["default"]);
    let mut terminal = tokio::process::Command::new(hub_binary())
        .args(["terminal", "--url", &hub.ws_url(), "--name", "alice"])
        .env("MCP_HUB_TOKEN", &alice)
        .env_remove("MCP_HUB_URL")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn the terminal client");
    let mut lines = BufReader::new(terminal.stdout.take().expect("stdout")).lines();
    let mut seen = Vec::new();
    wait_for_line(&mut lines, "connected to", &mut seen).await;

    let photo = vec![7u8; 3 * 1024];
    let photo_id = graph.put_media(PHONE_NUMBER_ID, "image/jpeg", photo.clone());
    let voice = vec![9u8; 2048];
    let voice_id = graph.put_media(PHONE_NUMBER_ID, "audio/ogg", voice.clone());
    post_signed(
        &hub,
        &wa::image(
            PHONE_NUMBER_ID,
            "wamid.t1",
            JOHN,
            &photo_id,
            Some("the view"),
        ),
    )
    .await;
    wait_for_line(&mut lines, "image (3.0 KB) \"the view\"", &mut seen).await;
    post_signed(
        &hub,
        &wa::voice(PHONE_NUMBER_ID, "wamid.t2", JOHN, &voice_id),
    )
    .await;
    wait_for_line(&mut lines, "voice note (2.0 KB)", &mut seen).await;

    let origin = hub.http_url("");
    for (line, bytes) in [
        (&seen[seen.len() - 2], &photo),
        (&seen[seen.len() - 1], &voice),
    ] {
        let url = line
            .split_whitespace()
            .find(|w| w.starts_with(origin.trim_end_matches('/')))
            .unwrap_or_else(|| panic!("no hub URL in {line:?}"));
        let path = &url[origin.trim_end_matches('/').len()..];
        let (status, got, _) = get_bytes(&hub, path, Some(&alice)).await;
        assert_eq!((status, &got), (200, bytes), "{line}");
        assert_eq!(get_bytes(&hub, path, None).await.0, 401, "{line}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_uploaded_pdf_goes_to_graph_then_out_as_a_document() {
    let graph = FakeGraph::start().await;
    let dir = TempDir::new();
    let hub = cloud_hub(&graph, &dir, &[]).await;
    let (mut user, _) = WsClient::register(&hub.ws_url(), "default", "alice").await;
    // John wrote a minute ago: the window is open.
    post_signed(
        &hub,
        &wa::text(PHONE_NUMBER_ID, "wamid.hi", JOHN, "send me the report"),
    )
    .await;
    next_message(&mut user, "incoming").await;

    // From the terminal client, as a person sends it.
    let pdf = b"%PDF-1.4 fake report".to_vec();
    let path = dir.path().join("report.pdf");
    std::fs::write(&path, &pdf).expect("write the pdf");
    let mut terminal = tokio::process::Command::new(hub_binary())
        .args([
            "terminal",
            "--url",
            &hub.ws_url(),
            "--name",
            "bob",
            "--linger-ms",
            "300",
        ])
        .env_remove("MCP_HUB_URL")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn the terminal client");
    let mut stdin = terminal.stdin.take().expect("stdin");
    let line = format!("/send-file john {} Q3\n", path.display());
    tokio::io::AsyncWriteExt::write_all(&mut stdin, line.as_bytes())
        .await
        .expect("type the command");
    drop(stdin);
    let out = tokio::time::timeout(Duration::from_secs(20), terminal.wait_with_output())
        .await
        .expect("the terminal ends with its input")
        .expect("its output");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");

    // Graph got the upload first, then a document message with its id.
    let uploads = graph.uploads();
    assert_eq!(uploads.len(), 1, "{text}");
    assert_eq!(uploads[0].filename.as_deref(), Some("report.pdf"));
    assert_eq!(uploads[0].mime.as_deref(), Some("application/pdf"));
    assert_eq!(uploads[0].phone, PHONE_NUMBER_ID);
    let media_id = uploads[0].media_id.clone().expect("accepted");
    assert_eq!(graph.media(&media_id).unwrap().bytes, pdf);
    let sent = graph.sends();
    let doc = sent.last().expect("a send");
    assert_eq!(doc["type"], "document", "{doc}");
    assert_eq!(
        doc["document"],
        json!({"id": media_id, "caption": "Q3", "filename": "report.pdf"})
    );
    let requests = graph.requests();
    let upload_at = requests.iter().position(|r| r.upload.is_some());
    let send_at = requests.iter().position(|r| r.body["type"] == "document");
    assert!(upload_at < send_at, "upload, then send");
    let ev = next_message(&mut user, "outgoing").await;
    assert_eq!(ev["message"], "[document report.pdf] Q3", "{ev}");
    assert_eq!(ev["media"]["filename"], "report.pdf", "{ev}");
    // The sender's clients can open what was sent, without a download.
    let url = ev["media"]["url"].as_str().expect("url");
    let (status, bytes, _) = get_bytes(&hub, url, None).await;
    assert_eq!((status, bytes), (200, pdf));
    assert_eq!(graph.downloads(), 0);

    // Over REST: the answer names the id; types WhatsApp does not take,
    // and sizes over the limits, are refused before Graph hears of them.
    let (status, up) = upload(
        &hub,
        "default",
        None,
        "r.pdf",
        "application/pdf",
        b"%PDF".to_vec(),
    )
    .await;
    assert_eq!(
        (status, up["kind"].as_str()),
        (200, Some("document")),
        "{up}"
    );
    assert_eq!(up["size"], 4, "{up}");
    let (status, body) = upload(
        &hub,
        "default",
        None,
        "x.exe",
        "application/x-msdownload",
        b"MZ".to_vec(),
    )
    .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (415, Some("unsupported_media_type"))
    );
    let big = vec![0u8; 5_000_001];
    let (status, body) = upload(&hub, "default", None, "big.jpg", "image/jpeg", big).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (413, Some("payload_too_large"))
    );
    assert_eq!(graph.uploads().len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reply_buttons_go_out_and_a_tap_comes_back_as_a_reply() {
    let graph = FakeGraph::start().await;
    let dir = TempDir::new();
    let hub = cloud_hub(&graph, &dir, &[]).await;
    let (mut user, _) = WsClient::register(&hub.ws_url(), "default", "alice").await;
    post_signed(
        &hub,
        &wa::text(PHONE_NUMBER_ID, "wamid.q", JOHN, "can we move it?"),
    )
    .await;
    next_message(&mut user, "incoming").await;

    let r = user
        .request(ws_command(json!({"action": "send", "contact": "john",
            "message": "Keep Tuesday 9am?",
            "interactive": {"type": "buttons", "buttons": [
                {"id": "keep", "title": "Keep"}, {"id": "move", "title": "Move"}]}})))
        .await;
    assert_eq!(r["content"]["success"], true, "{r}");
    let offer_id = r["content"]["message_id"].as_str().unwrap().to_string();
    let sent = graph.sends();
    let offer = sent.last().unwrap();
    assert_eq!(offer["interactive"]["type"], "button", "{offer}");
    assert_eq!(
        offer["interactive"]["action"]["buttons"][1]["reply"],
        json!({"id": "move", "title": "Move"})
    );
    let ev = next_message(&mut user, "outgoing").await;
    assert_eq!(ev["interactive"]["buttons"][0]["title"], "Keep", "{ev}");

    post_signed(
        &hub,
        &wa::button_reply(
            PHONE_NUMBER_ID,
            "wamid.tap",
            JOHN,
            &offer_id,
            "move",
            "Move",
        ),
    )
    .await;
    let ev = next_message(&mut user, "incoming").await;
    assert_eq!(ev["message"], "Move", "{ev}");
    assert_eq!(
        ev["reply"],
        json!({"source": "button", "id": "move", "title": "Move", "context_message_id": offer_id})
    );

    // Over the Cloud API's limits: refused by the hub, Graph never asked.
    let before = graph.sends().len();
    let four: Vec<Value> = (0..4)
        .map(|i| json!({"id": format!("b{i}"), "title": format!("B{i}")}))
        .collect();
    let r = user
        .request(ws_command(
            json!({"action": "send", "contact": "john", "message": "pick",
            "interactive": {"type": "buttons", "buttons": four}}),
        ))
        .await;
    assert_eq!(r["type"], "error", "{r}");
    assert_eq!(r["code"], "invalid_field", "{r}");
    assert_eq!(graph.sends().len(), before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_free_form_send_on_day_three_is_refused_before_graph() {
    let graph = FakeGraph::start().await;
    let dir = TempDir::new();
    let hub = cloud_hub(&graph, &dir, &[]).await;
    let (mut user, _) = WsClient::register(&hub.ws_url(), "default", "alice").await;
    let three_days_ago = now_secs() - 3 * 86_400;
    post_signed(
        &hub,
        &wa::at(
            &wa::text(PHONE_NUMBER_ID, "wamid.old", JOHN, "thanks!"),
            three_days_ago,
        ),
    )
    .await;
    next_message(&mut user, "incoming").await;

    for command in [
        json!({"action": "send", "contact": "john", "message": "are you there?"}),
        json!({"action": "send", "contact": "john",
               "reaction": {"message_id": "wamid.old", "emoji": "👍"}}),
    ] {
        let r = user.request(ws_command(command)).await;
        assert_eq!(r["content"]["success"], false, "{r}");
        assert_eq!(r["content"]["code"], "outside_service_window", "{r}");
        assert!(
            r["content"]["error"].as_str().unwrap().contains("template"),
            "{r}"
        );
    }
    assert!(
        graph.sends().is_empty(),
        "no Graph call: {:?}",
        graph.sends()
    );

    // A template still goes out; and once John writes again, text does too.
    let r = user
        .request(ws_command(
            json!({"action": "send_template", "contact": "john",
            "template": "hello_world", "language": "en_US"}),
        ))
        .await;
    assert_eq!(r["content"]["success"], true, "{r}");
    post_signed(&hub, &wa::text(PHONE_NUMBER_ID, "wamid.new", JOHN, "yes?")).await;
    next_message(&mut user, "incoming").await;
    let r = user.request(send_cmd("john", "great, see you")).await;
    assert_eq!(r["content"]["success"], true, "{r}");
    assert_eq!(graph.sends().len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_receipts_typing_and_templates_go_through_graph() {
    let graph = FakeGraph::start().await;
    graph.add_template(
        WABA_ID,
        json!({"name": "order_update", "language": "en_US", "status": "APPROVED",
               "category": "UTILITY", "components": [{"type": "BODY", "text": "Order {{1}} is {{2}}"}]}),
    );
    let dir = TempDir::new();
    let hub = cloud_hub(&graph, &dir, &["--whatsapp-business-account-id", WABA_ID]).await;
    let (mut user, _) = WsClient::register(&hub.ws_url(), "default", "alice").await;
    graph.add_inbound(PHONE_NUMBER_ID, "wamid.in1");
    post_signed(
        &hub,
        &wa::text(PHONE_NUMBER_ID, "wamid.in1", JOHN, "hello?"),
    )
    .await;
    next_message(&mut user, "incoming").await;

    let r = user
        .request(ws_command(
            json!({"action": "mark_read", "contact": "john", "typing": true}),
        ))
        .await;
    assert_eq!(r["content"]["success"], true, "{r}");
    assert_eq!(r["content"]["message_id"], "wamid.in1", "{r}");
    assert_eq!(
        graph.read_receipts(),
        [(PHONE_NUMBER_ID.to_string(), "wamid.in1".to_string(), true)]
    );
    // Nothing from Jane: nothing to mark, no call.
    let r = user
        .request(ws_command(
            json!({"action": "mark_read", "contact": "jane"}),
        ))
        .await;
    assert_eq!(r["content"]["message_id"], Value::Null, "{r}");
    assert_eq!(graph.read_receipts().len(), 1);

    let r = user
        .request(ws_command(json!({"action": "list_templates"})))
        .await;
    assert_eq!(r["content"]["templates"][0]["name"], "order_update", "{r}");
    assert_eq!(r["content"]["templates"][0]["parameters"], 2, "{r}");
    let (status, rest) = http_get_json(&hub, "/api/v1/sessions/default/templates").await;
    assert_eq!(status, 200, "{rest}");
    assert_eq!(rest["count"], 1, "{rest}");
    let auth = graph
        .requests()
        .into_iter()
        .find(|r| r.path.ends_with("/message_templates"))
        .expect("templates read from Graph");
    assert_eq!(auth.path, format!("/{VERSION}/{WABA_ID}/message_templates"));
    assert_eq!(
        auth.headers["authorization"].to_str().unwrap(),
        format!("Bearer {TOKEN}")
    );

    // While an AI-interpreted answer is on its way, John sees "typing…".
    let r = user
        .request(ai_command("send john a message saying on my way"))
        .await;
    assert_eq!(r["content"]["success"], true, "{r}");
    wait_until_async("the typing indicator", Duration::from_secs(5), || async {
        graph.read_receipts().len() == 2
    })
    .await;
    assert_eq!(
        graph.read_receipts()[1],
        (PHONE_NUMBER_ID.to_string(), "wamid.in1".to_string(), true)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_an_agent_connector_none_says_so_before_any_contact_lookup() {
    let dir = TempDir::new();
    let file = dir.write("contacts.json", CONTACTS);
    let hub = TestHub::start(&[
        "--connector",
        "none",
        "--contacts-file",
        file.to_str().unwrap(),
    ])
    .await;
    let (mut user, _) = WsClient::register(&hub.ws_url(), "default", "alice").await;
    for contact in ["john", "nobody-known"] {
        let r = user.request(send_cmd(contact, "hi")).await;
        assert_eq!(r["code"], "agent_unavailable", "{contact}: {r}");
    }
    let r = user
        .request(ws_command(
            json!({"action": "mark_read", "contact": "nobody-known"}),
        ))
        .await;
    assert_eq!(r["code"], "agent_unavailable", "{r}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_numbers_on_one_cluster_never_see_each_others_messages() {
    const SALES: &str = "111111111111111";
    const SUPPORT: &str = "222222222222222";
    let graph = FakeGraph::start().await;
    graph.add_number(SALES, "sales-token", WABA_ID);
    graph.add_number(SUPPORT, "support-token", WABA_ID);
    let redis = RedisServer::start();
    let base = graph.base_url();
    let dir = TempDir::new();
    let contacts = dir.write("contacts.json", CONTACTS).display().to_string();
    let flags = [
        "--contacts-file",
        &contacts,
        "--connector",
        "cloud_api",
        "--whatsapp-numbers",
        &format!("{SALES}:sales,{SUPPORT}:support"),
        "--whatsapp-number-tokens",
        "111111111111111:sales-token,222222222222222:support-token",
        "--whatsapp-app-secret",
        APP_SECRET,
        "--whatsapp-verify-token",
        VERIFY_TOKEN,
        "--whatsapp-base-url",
        &base,
    ];
    let hubs = start_cluster(&redis, &["hub-a", "hub-b"], &flags).await;
    let (mut sales, _) = WsClient::register(&hubs[0].ws_url(), "sales", "s1").await;
    let (mut support, _) = WsClient::register(&hubs[1].ws_url(), "support", "p1").await;

    // One POST holding a message for each number, plus a number we do not
    // serve (acknowledged, ignored).
    let photo = graph.put_media(SUPPORT, "image/png", b"\x89PNG support photo".to_vec());
    let both = wa::two_numbers(
        &wa::text(SALES, "wamid.s1", JOHN, "price list please"),
        &wa::image(SUPPORT, "wamid.p1", JOHN, &photo, Some("broken part")),
    );
    post_signed(&hubs[0], &both).await;
    post_signed(
        &hubs[1],
        &wa::text("999999999999999", "wamid.x", JOHN, "stray"),
    )
    .await;
    let ev = next_message(&mut sales, "incoming").await;
    assert_eq!(ev["message"], "price list please", "{ev}");
    let ev = next_message(&mut support, "incoming").await;
    assert_eq!(ev["message"], "[image] broken part", "{ev}");
    let url = ev["media"]["url"].as_str().unwrap().to_string();
    assert_quiet(&mut sales, "no support message reaches sales").await;
    assert_quiet(&mut support, "no sales message reaches support").await;

    // The support photo is served by either instance (each fetches it from
    // Graph with the support number's token); never under sales.
    for hub in &hubs {
        let (status, bytes, _) = get_bytes(hub, &url, None).await;
        assert_eq!((status, &bytes[..]), (200, &b"\x89PNG support photo"[..]));
    }
    let under_sales = url.replace("/sessions/support/", "/sessions/sales/");
    assert_eq!(get_bytes(&hubs[0], &under_sales, None).await.0, 404);

    // Replies go out through each session's own number and token.
    assert_eq!(
        sales.request(send_cmd("john", "attached")).await["content"]["success"],
        true
    );
    assert_eq!(
        support.request(send_cmd("john", "on its way")).await["content"]["success"],
        true
    );
    let sends: Vec<(String, String)> = graph
        .requests()
        .into_iter()
        .filter(|r| r.method == "POST" && r.path.ends_with("/messages"))
        .map(|r| {
            (
                r.path.clone(),
                r.headers["authorization"].to_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        sends,
        [
            (
                format!("/{VERSION}/{SALES}/messages"),
                "Bearer sales-token".to_string()
            ),
            (
                format!("/{VERSION}/{SUPPORT}/messages"),
                "Bearer support-token".to_string()
            ),
        ]
    );
    let (_, listing) = http_get_json(&hubs[1], "/api/v1/sessions/sales").await;
    assert_eq!(listing["phone_number_id"], SALES, "{listing}");
}
