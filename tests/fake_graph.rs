//! The fake Graph API (`support::fake_graph`) and the webhook builders
//! (`support::wa_payloads`) against the reference
//! (/work/shared/reference/whatsapp-cloud-api.md): driven directly with
//! reqwest, no hub, one behaviour per test, so a hub test that fails on
//! the fake fails on the hub, not on the fake.

use crate::support;

use base64::Engine;
use reqwest::multipart::{Form, Part};
use serde_json::{Value, json};
use support::fake_graph::{Behavior, FakeGraph, PHONE_NUMBER_ID, TOKEN, VERSION, WABA_ID};
use support::wa_payloads;
use support::*;

const PHONE_B: &str = "106540352242999";
const TOKEN_B: &str = "token-of-number-b";
const USER: &str = "16505551234";

/// (status, JSON body or Null) of a response.
async fn answer(r: reqwest::RequestBuilder) -> (u16, Value) {
    let r = r.send().await.expect("the fake answers");
    let status = r.status().as_u16();
    let body = r.json().await.unwrap_or(Value::Null);
    (status, body)
}

fn url(graph: &FakeGraph, path: &str) -> String {
    format!("{}/{VERSION}/{path}", graph.base_url())
}

async fn send(graph: &FakeGraph, phone: &str, token: &str, body: Value) -> (u16, Value) {
    let r = reqwest::Client::new()
        .post(url(graph, &format!("{phone}/messages")))
        .bearer_auth(token)
        .json(&body);
    answer(r).await
}

/// A send of `kind` with `object` to USER.
fn message(kind: &str, object: Value) -> Value {
    json!({"messaging_product": "whatsapp", "recipient_type": "individual",
           "to": USER, "type": kind, kind: object})
}

fn text(body: &str) -> Value {
    message("text", json!({"body": body}))
}

async fn upload(
    graph: &FakeGraph,
    phone: &str,
    token: &str,
    mime: &str,
    bytes: Vec<u8>,
) -> (u16, Value) {
    let part = Part::bytes(bytes)
        .file_name("file.bin")
        .mime_str(mime)
        .expect("mime");
    let form = Form::new()
        .text("messaging_product", "whatsapp")
        .text("type", mime.to_string())
        .part("file", part);
    let r = reqwest::Client::new()
        .post(url(graph, &format!("{phone}/media")))
        .bearer_auth(token)
        .multipart(form);
    answer(r).await
}

/// Uploads on the default number; the media id.
async fn uploaded(graph: &FakeGraph, mime: &str, bytes: Vec<u8>) -> String {
    let (status, body) = upload(graph, PHONE_NUMBER_ID, TOKEN, mime, bytes).await;
    assert_eq!(status, 200, "{body}");
    body["id"].as_str().expect("an id").to_string()
}

fn assert_code(status: u16, body: &Value, want_status: u16, code: i64) {
    assert_eq!(
        (status, body["error"]["code"].as_i64()),
        (want_status, Some(code)),
        "{body}"
    );
}

async fn two_number_graph() -> FakeGraph {
    let graph = FakeGraph::start().await;
    graph.add_number(PHONE_B, TOKEN_B, WABA_ID);
    graph
}

#[tokio::test]
async fn upload_retrieve_and_download_round_trip() {
    let graph = FakeGraph::start().await;
    let bytes = b"\xff\xd8\xff\xe0 a jpeg, or close enough".to_vec();
    let id = uploaded(&graph, "image/jpeg", bytes.clone()).await;
    assert!(id.chars().all(|c| c.is_ascii_digit()), "{id}");

    let get = reqwest::Client::new()
        .get(url(
            &graph,
            &format!("{id}?phone_number_id={PHONE_NUMBER_ID}"),
        ))
        .bearer_auth(TOKEN);
    let (status, info) = answer(get).await;
    assert_eq!(status, 200, "{info}");
    let digest = ring::digest::digest(&ring::digest::SHA256, &bytes);
    let sha = base64::engine::general_purpose::STANDARD.encode(digest.as_ref());
    assert_eq!(info["messaging_product"], "whatsapp");
    assert_eq!(info["mime_type"], "image/jpeg");
    assert_eq!(info["sha256"], sha.as_str());
    assert_eq!(info["file_size"], bytes.len().to_string().as_str());
    assert_eq!(info["id"], id.as_str());
    let media_url = info["url"].as_str().expect("url");
    assert!(
        media_url.starts_with(&format!("{}/lookaside/{id}?ext=", graph.base_url())),
        "{media_url}"
    );

    let r = reqwest::Client::new()
        .get(media_url)
        .bearer_auth(TOKEN)
        .send()
        .await
        .expect("download");
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(r.headers()["content-type"], "image/jpeg");
    assert_eq!(r.bytes().await.expect("bytes").to_vec(), bytes);

    assert_eq!((graph.media_fetches(), graph.downloads()), (1, 1));
    let up = &graph.uploads()[0];
    assert_eq!(
        (
            up.phone.as_str(),
            up.filename.as_deref(),
            up.mime.as_deref(),
            up.size
        ),
        (
            PHONE_NUMBER_ID,
            Some("file.bin"),
            Some("image/jpeg"),
            bytes.len()
        )
    );
    assert_eq!(up.media_id.as_deref(), Some(id.as_str()));
    let recorded = graph.requests();
    assert_eq!(recorded[0].body["messaging_product"], "whatsapp");
    assert_eq!(
        recorded[1].query,
        format!("phone_number_id={PHONE_NUMBER_ID}")
    );
}

#[tokio::test]
async fn upload_takes_messaging_product_from_the_query_string() {
    // whatsapp-api-js's way (§7.1): only `file` in the form.
    let graph = FakeGraph::start().await;
    let part = Part::bytes(b"hello".to_vec())
        .file_name("a.txt")
        .mime_str("text/plain")
        .unwrap();
    let r = reqwest::Client::new()
        .post(url(
            &graph,
            &format!("{PHONE_NUMBER_ID}/media?messaging_product=whatsapp"),
        ))
        .bearer_auth(TOKEN)
        .multipart(Form::new().part("file", part));
    let (status, body) = answer(r).await;
    assert_eq!(status, 200, "{body}");

    let part = Part::bytes(b"hello".to_vec())
        .file_name("a.txt")
        .mime_str("text/plain")
        .unwrap();
    let r = reqwest::Client::new()
        .post(url(&graph, &format!("{PHONE_NUMBER_ID}/media")))
        .bearer_auth(TOKEN)
        .multipart(Form::new().part("file", part));
    let (status, body) = answer(r).await;
    assert_code(status, &body, 400, 100);
}

#[tokio::test]
async fn a_wrong_mime_type_is_refused_with_the_documented_body() {
    let graph = FakeGraph::start().await;
    let (status, body) = upload(
        &graph,
        PHONE_NUMBER_ID,
        TOKEN,
        "application/octet-stream",
        vec![0; 10],
    )
    .await;
    assert_eq!(status, 400);
    let expected = json!({"error": {
        "message": "(#100) Param file must be a file with one of the following types: audio/aac, audio/mp4, audio/mpeg, audio/amr, audio/ogg, audio/opus, application/vnd.ms-powerpoint, application/msword, application/vnd.openxmlformats-officedocument.wordprocessingml.document, application/vnd.openxmlformats-officedocument.presentationml.presentation, application/vnd.openxmlformats-officedocument.spreadsheetml.sheet, application/pdf, text/plain, application/vnd.ms-excel, image/jpeg, image/png, image/webp, video/mp4, video/3gpp. Received file of type 'application/octet-stream'.",
        "type": "OAuthException",
        "code": 100,
        "fbtrace_id": "Afake",
    }});
    assert_eq!(body, expected);
    assert_eq!(graph.uploads()[0].media_id, None);
    // Both spellings of 3GPP video, and a voice note with its codec
    // parameter, are taken.
    for mime in ["video/3gp", "video/3gpp", "audio/ogg; codecs=opus"] {
        uploaded(&graph, mime, vec![1; 10]).await;
    }
}

#[tokio::test]
async fn an_over_size_upload_is_refused() {
    let graph = FakeGraph::start().await;
    // Stickers: 500 KB (decimal), the smallest limit of §7.5.
    uploaded(&graph, "image/webp", vec![0; 500_000]).await;
    let (status, body) = upload(
        &graph,
        PHONE_NUMBER_ID,
        TOKEN,
        "image/webp",
        vec![0; 500_001],
    )
    .await;
    assert_code(status, &body, 400, 131_053);
}

#[tokio::test]
async fn media_belongs_to_the_number_it_was_uploaded_on() {
    let graph = two_number_graph().await;
    let id = uploaded(&graph, "image/png", vec![7; 32]).await;
    let client = reqwest::Client::new();

    // Retrieval scoped to number B: "does not exist".
    let (status, body) = answer(
        client
            .get(url(&graph, &format!("{id}?phone_number_id={PHONE_B}")))
            .bearer_auth(TOKEN_B),
    )
    .await;
    assert_code(status, &body, 400, 100);
    assert_eq!(body["error"]["error_subcode"], 33);
    assert_eq!(body["error"]["type"], "GraphMethodException");

    // Sent from B: not B's media; from A: fine.
    let image = message("image", json!({"id": id, "caption": "a tile"}));
    let (status, body) = send(&graph, PHONE_B, TOKEN_B, image.clone()).await;
    assert_code(status, &body, 400, 131_009);
    let (status, body) = send(&graph, PHONE_NUMBER_ID, TOKEN, image).await;
    assert_eq!(status, 200, "{body}");

    // Media a user sent to B (seeded) is B's.
    let inbound = graph.put_media(PHONE_B, "audio/ogg; codecs=opus", vec![3; 8]);
    let (status, body) = answer(
        client
            .get(url(&graph, &format!("{inbound}?phone_number_id={PHONE_B}")))
            .bearer_auth(TOKEN_B),
    )
    .await;
    assert_eq!(
        (status, body["mime_type"].as_str()),
        (200, Some("audio/ogg; codecs=opus")),
        "{body}"
    );
}

#[tokio::test]
async fn deleted_media_is_gone() {
    let graph = FakeGraph::start().await;
    let id = uploaded(&graph, "application/pdf", b"%PDF-1.7".to_vec()).await;
    let client = reqwest::Client::new();
    let (status, body) = answer(client.delete(url(&graph, &id)).bearer_auth(TOKEN)).await;
    assert_eq!((status, body), (200, json!({"success": true})));
    let (status, body) = answer(client.get(url(&graph, &id)).bearer_auth(TOKEN)).await;
    assert_eq!(body["error"]["error_subcode"], 33, "{body}");
    assert_eq!(status, 400);
    assert!(graph.media(&id).is_none());
}

#[tokio::test]
async fn downloads_need_a_token_and_can_fail_once() {
    let graph = FakeGraph::start().await;
    let id = graph.put_media(PHONE_NUMBER_ID, "image/jpeg", vec![9; 16]);
    let media_url = graph.media_info(&id).expect("info")["url"]
        .as_str()
        .unwrap()
        .to_string();
    let client = reqwest::Client::new();
    let status = |r: reqwest::Response| r.status().as_u16();
    let get = || client.get(&media_url);
    assert_eq!(status(get().send().await.unwrap()), 401);
    graph.fail_next_download(404);
    assert_eq!(status(get().bearer_auth(TOKEN).send().await.unwrap()), 404);
    assert_eq!(status(get().bearer_auth(TOKEN).send().await.unwrap()), 200);
    let unknown = format!("{}/lookaside/1", graph.base_url());
    let r = client.get(unknown).bearer_auth(TOKEN).send().await.unwrap();
    assert_eq!(status(r), 404);
    assert_eq!(graph.downloads(), 4);
}

#[tokio::test]
async fn each_number_takes_only_its_own_token() {
    let graph = two_number_graph().await;
    let (status, body) = send(&graph, PHONE_B, TOKEN, text("hi")).await;
    assert_eq!(
        body,
        json!({"error": {"message": "Invalid OAuth access token - Cannot parse access token",
                         "type": "OAuthException", "code": 190, "fbtrace_id": "Afake"}})
    );
    assert_eq!(status, 401);
    let (status, body) = send(&graph, PHONE_B, TOKEN_B, text("hi")).await;
    assert_eq!(status, 200, "{body}");
    // Uploads too.
    let (status, body) = upload(&graph, PHONE_NUMBER_ID, TOKEN_B, "text/plain", vec![1]).await;
    assert_code(status, &body, 401, 190);
}

#[tokio::test]
async fn an_unknown_phone_number_id_does_not_exist() {
    let graph = FakeGraph::start().await;
    let (status, body) = send(&graph, PHONE_B, TOKEN, text("hi")).await;
    assert_eq!(status, 400);
    assert_eq!(
        body,
        json!({"error": {
            "message": format!("Unsupported post request. Object with ID '{PHONE_B}' does not exist, cannot be loaded due to missing permissions, or does not support this operation. Please read the Graph API documentation at https://developers.facebook.com/docs/graph-api"),
            "type": "GraphMethodException", "code": 100, "error_subcode": 33, "fbtrace_id": "Afake"}})
    );
}

fn buttons(titles: &[&str]) -> Value {
    let buttons: Vec<Value> = titles
        .iter()
        .enumerate()
        .map(|(i, t)| json!({"type": "reply", "reply": {"id": format!("b{i}"), "title": t}}))
        .collect();
    message(
        "interactive",
        json!({"type": "button", "body": {"text": "Pick one"}, "action": {"buttons": buttons}}),
    )
}

fn list(rows_per_section: &[usize], row: Value) -> Value {
    let mut n = 0;
    let sections: Vec<Value> = rows_per_section
        .iter()
        .map(|&count| {
            let rows: Vec<Value> = (0..count)
                .map(|_| {
                    n += 1;
                    let mut r = row.clone();
                    r["id"] = json!(format!("row{n}"));
                    r
                })
                .collect();
            json!({"title": format!("Section {n}"), "rows": rows})
        })
        .collect();
    message(
        "interactive",
        json!({"type": "list", "body": {"text": "Which one?"},
               "action": {"button": "Options", "sections": sections}}),
    )
}

#[tokio::test]
async fn interactive_messages_keep_to_their_limits() {
    let graph = FakeGraph::start().await;
    let row = json!({"title": "Priority Mail", "description": "1-3 Days"});
    let long_body = {
        let mut b = buttons(&["Yes"]);
        b["interactive"]["body"]["text"] = json!("x".repeat(1025));
        b
    };
    let no_body = {
        let mut b = buttons(&["Yes"]);
        b["interactive"]["body"] = Value::Null;
        b
    };
    let long_button = {
        let mut l = list(&[1], row.clone());
        l["interactive"]["action"]["button"] = json!("x".repeat(21));
        l
    };
    let refused = [
        ("no buttons", buttons(&[])),
        ("4 buttons", buttons(&["a", "b", "c", "d"])),
        ("title of 21", buttons(&[&"t".repeat(21)])),
        ("same titles", buttons(&["Same", "Same"])),
        ("body of 1025", long_body),
        ("no body", no_body),
        ("11 rows", list(&[6, 5], row.clone())),
        ("label of 21", long_button),
        (
            "row title of 25",
            list(&[1], json!({"title": "r".repeat(25)})),
        ),
        (
            "description of 73",
            list(&[1], json!({"title": "r", "description": "d".repeat(73)})),
        ),
    ];
    for (why, body) in refused {
        let (status, answer) = send(&graph, PHONE_NUMBER_ID, TOKEN, body).await;
        assert_code(status, &answer, 400, 131_009);
        assert!(
            answer["error"]["error_data"]["details"]
                .as_str()
                .is_some_and(|d| !d.is_empty()),
            "{why}: {answer}"
        );
    }
    let accepted = [
        buttons(&["a", "b", &"t".repeat(20)]),
        list(&[6, 4], row.clone()),
        list(
            &[1],
            json!({"title": "r".repeat(24), "description": "d".repeat(72)}),
        ),
    ];
    for body in accepted {
        let (status, answer) = send(&graph, PHONE_NUMBER_ID, TOKEN, body).await;
        assert_eq!(status, 200, "{answer}");
    }
}

#[tokio::test]
async fn media_sends_take_exactly_one_source_and_captions_where_allowed() {
    let graph = FakeGraph::start().await;
    let id = uploaded(&graph, "audio/mpeg", vec![1; 4]).await;
    let link = "https://example.com/a.mp3";
    let refused = [
        message("audio", json!({"id": id, "link": link})),
        message("audio", json!({})),
        message("audio", json!({"id": "123"})),
        message("audio", json!({"id": id, "caption": "no"})),
        message("sticker", json!({"link": link, "caption": "no"})),
        message("image", json!({"link": link, "caption": "c".repeat(1025)})),
    ];
    for body in refused {
        let (status, answer) = send(&graph, PHONE_NUMBER_ID, TOKEN, body).await;
        assert_code(status, &answer, 400, 131_009);
    }
    let accepted = [
        message("audio", json!({"id": id, "voice": true})),
        message("video", json!({"link": link, "caption": "a clip"})),
        message(
            "document",
            json!({"link": link, "filename": "a.pdf", "caption": "c"}),
        ),
        message("sticker", json!({"link": link})),
    ];
    for body in accepted {
        let (status, answer) = send(&graph, PHONE_NUMBER_ID, TOKEN, body).await;
        assert_eq!(status, 200, "{answer}");
    }
    assert_eq!(graph.sends().len(), 10);
}

#[tokio::test]
async fn reactions_and_locations_are_validated() {
    let graph = FakeGraph::start().await;
    let ok = [
        message("reaction", json!({"message_id": "wamid.x", "emoji": "👍"})),
        message("reaction", json!({"message_id": "wamid.x", "emoji": ""})),
        message(
            "location",
            json!({"latitude": "37.44216251868683", "longitude": "-122.16153582049394",
                   "name": "Philz Coffee"}),
        ),
        message("location", json!({"latitude": 37.4, "longitude": -122.1})),
    ];
    for body in ok {
        let (status, answer) = send(&graph, PHONE_NUMBER_ID, TOKEN, body).await;
        assert_eq!(status, 200, "{answer}");
    }
    let (status, answer) = send(
        &graph,
        PHONE_NUMBER_ID,
        TOKEN,
        message("reaction", json!({"emoji": "👍"})),
    )
    .await;
    assert_code(status, &answer, 400, 100);
    let (status, answer) = send(
        &graph,
        PHONE_NUMBER_ID,
        TOKEN,
        message("location", json!({"latitude": "north", "longitude": 1})),
    )
    .await;
    assert_code(status, &answer, 400, 131_009);
}

#[tokio::test]
async fn read_receipts_name_messages_received_on_that_number() {
    let graph = two_number_graph().await;
    graph.add_inbound(PHONE_NUMBER_ID, "wamid.in.1");
    let receipt = |wamid: &str| {
        json!({"messaging_product": "whatsapp", "status": "read", "message_id": wamid,
               "typing_indicator": {"type": "text"}})
    };
    let (status, body) = send(&graph, PHONE_NUMBER_ID, TOKEN, receipt("wamid.in.1")).await;
    assert_eq!((status, body), (200, json!({"success": true})));
    let (status, body) = send(&graph, PHONE_NUMBER_ID, TOKEN, receipt("wamid.unknown")).await;
    assert_code(status, &body, 400, 131_009);
    // Received on A, so unknown on B.
    let (status, body) = send(&graph, PHONE_B, TOKEN_B, receipt("wamid.in.1")).await;
    assert_code(status, &body, 400, 131_009);
    let plain =
        json!({"messaging_product": "whatsapp", "status": "read", "message_id": "wamid.in.1"});
    send(&graph, PHONE_NUMBER_ID, TOKEN, plain).await;

    let receipts = graph.read_receipts();
    assert_eq!(receipts.len(), 4);
    assert_eq!(
        receipts[0],
        (PHONE_NUMBER_ID.to_string(), "wamid.in.1".to_string(), true)
    );
    assert_eq!(
        receipts[3],
        (PHONE_NUMBER_ID.to_string(), "wamid.in.1".to_string(), false)
    );
    assert!(graph.sends().is_empty(), "receipts are not sends");
}

#[tokio::test]
async fn receipts_consume_no_scripted_behaviour() {
    let graph = FakeGraph::start().await;
    graph.add_inbound(PHONE_NUMBER_ID, "wamid.in.1");
    graph.script([Behavior::error(400, 131_056)]);
    let receipt =
        json!({"messaging_product": "whatsapp", "status": "read", "message_id": "wamid.in.1"});
    let (status, _) = send(&graph, PHONE_NUMBER_ID, TOKEN, receipt).await;
    assert_eq!(status, 200);
    let (status, body) = send(&graph, PHONE_NUMBER_ID, TOKEN, text("hi")).await;
    assert_code(status, &body, 400, 131_056);
    let (status, body) = send(&graph, PHONE_NUMBER_ID, TOKEN, text("hi")).await;
    assert_eq!(body["messages"][0]["id"], "wamid.fake.3", "{body}");
    assert_eq!(status, 200);
    assert_eq!(graph.call_count(), 3);
}

#[tokio::test]
async fn free_form_sends_outside_the_24_hour_window_fail_with_131047() {
    let graph = two_number_graph().await;
    // Off by default.
    let (status, _) = send(&graph, PHONE_NUMBER_ID, TOKEN, text("hi")).await;
    assert_eq!(status, 200);

    graph.set_window_check(true);
    let (status, body) = send(&graph, PHONE_NUMBER_ID, TOKEN, text("hi")).await;
    assert_eq!(status, 400);
    assert_eq!(
        body,
        json!({"error": {"message": "(#131047) Re-engagement message", "type": "OAuthException",
            "code": 131047, "error_data": {"messaging_product": "whatsapp",
            "details": "Message failed to send because more than 24 hours have passed since the customer last replied to this number."},
            "fbtrace_id": "Afake"}})
    );
    graph.set_last_inbound(PHONE_NUMBER_ID, USER, now_secs() - 25 * 3600);
    let (status, _) = send(&graph, PHONE_NUMBER_ID, TOKEN, text("hi")).await;
    assert_eq!(status, 400);
    // A template may reopen the conversation.
    let template = message(
        "template",
        json!({"name": "hello_world", "language": {"code": "en_US"}}),
    );
    let (status, body) = send(&graph, PHONE_NUMBER_ID, TOKEN, template).await;
    assert_eq!(body["messages"][0]["message_status"], "accepted", "{body}");
    assert_eq!(status, 200);

    // The user wrote an hour ago, to A, with `to` formatted as Meta
    // recommends: open on A only.
    graph.set_last_inbound(PHONE_NUMBER_ID, USER, now_secs() - 3600);
    let mut formatted = text("hi");
    formatted["to"] = json!("+1 (650) 555-1234");
    let (status, body) = send(&graph, PHONE_NUMBER_ID, TOKEN, formatted).await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = send(&graph, PHONE_B, TOKEN_B, text("hi")).await;
    assert_code(status, &body, 400, 131_047);
}

fn template(name: &str, status: &str) -> Value {
    json!({"name": name, "parameter_format": "POSITIONAL", "language": "en_US",
           "status": status, "category": "UTILITY",
           "components": [{"type": "BODY", "text": "Hello {{1}}"}]})
}

#[tokio::test]
async fn templates_are_listed_a_page_at_a_time() {
    let graph = FakeGraph::start().await;
    for (name, status) in [
        ("one", "APPROVED"),
        ("two", "REJECTED"),
        ("three", "APPROVED"),
        ("four", "APPROVED"),
    ] {
        graph.add_template(WABA_ID, template(name, status));
    }
    let client = reqwest::Client::new();
    let first = url(
        &graph,
        &format!("{WABA_ID}/message_templates?fields=name,status&limit=2&status=APPROVED"),
    );
    let (status, page) = answer(client.get(&first).bearer_auth(TOKEN)).await;
    assert_eq!(status, 200, "{page}");
    let names: Vec<&str> = page["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["one", "three"]);
    let mut keys: Vec<&String> = page["data"][0].as_object().unwrap().keys().collect();
    keys.sort();
    assert_eq!(
        keys,
        ["id", "name", "status"],
        "only the asked fields and id"
    );
    assert!(page["paging"]["cursors"]["after"].is_string(), "{page}");
    let next = page["paging"]["next"].as_str().expect("a next page");
    assert!(next.starts_with(&graph.base_url()), "{next}");

    let (status, last) = answer(client.get(next).bearer_auth(TOKEN)).await;
    assert_eq!(status, 200, "{last}");
    assert_eq!(last["data"].as_array().unwrap().len(), 1);
    assert_eq!(last["data"][0]["name"], "four");
    assert!(last["paging"].get("next").is_none(), "{last}");
    assert!(last["paging"]["cursors"].get("after").is_none(), "{last}");

    // The default page holds everything; a token of another account is refused.
    let all = url(&graph, &format!("{WABA_ID}/message_templates"));
    let (_, page) = answer(client.get(&all).bearer_auth(TOKEN)).await;
    assert_eq!(page["data"].as_array().unwrap().len(), 4);
    assert_eq!(page["data"][1]["components"][0]["type"], "BODY");
    graph.add_number(PHONE_B, TOKEN_B, "999");
    let (status, body) = answer(client.get(&all).bearer_auth(TOKEN_B)).await;
    assert_code(status, &body, 401, 190);
}

#[test]
fn webhook_bodies_carry_metadata_contacts_and_timestamps() {
    let a = wa_payloads::text(PHONE_NUMBER_ID, "wamid.a", USER, "hi");
    let b = wa_payloads::image(PHONE_B, "wamid.b", USER, "42", Some("look"));
    let both: Value = serde_json::from_str(&wa_payloads::two_numbers(&a, &b)).unwrap();
    assert_eq!(both["object"], "whatsapp_business_account");
    let changes = both["entry"][0]["changes"].as_array().unwrap();
    let ids: Vec<&str> = changes
        .iter()
        .map(|c| c["value"]["metadata"]["phone_number_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [PHONE_NUMBER_ID, PHONE_B]);
    let value = &changes[1]["value"];
    assert_eq!(value["contacts"][0]["wa_id"], USER);
    assert!(value["contacts"][0]["profile"]["name"].is_string());
    assert_eq!(value["messages"][0]["image"]["caption"], "look");
    let ts: u64 = value["messages"][0]["timestamp"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(now_secs() - ts < 60);

    let three_days_ago = now_secs() - 3 * 86_400;
    let old: Value = serde_json::from_str(&wa_payloads::at(&a, three_days_ago)).unwrap();
    let at = &old["entry"][0]["changes"][0]["value"]["messages"][0]["timestamp"];
    assert_eq!(at, &json!(three_days_ago.to_string()));

    // §4's HMAC test vector.
    assert_eq!(
        wa_payloads::signature("secret", "test"),
        "sha256=0329a06b62cd16b33eb6792be8c60b158d89a2ee3a876fce9a881ebb488c0914"
    );
}
