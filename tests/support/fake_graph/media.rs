//! Media (§7): upload (`POST /{version}/{phone}/media`, multipart),
//! retrieve its URL (`GET /{version}/{media_id}`), delete it, and download
//! the bytes from the URL, which points back at the fake
//! (`GET /lookaside/{media_id}`, standing in for lookaside.fbsbx.com).

use std::collections::HashMap;
use std::sync::Arc;

use axum::Json;
use axum::extract::multipart::MultipartRejection;
use axum::extract::{Multipart, Path, Query, State};
use axum::http::{HeaderMap, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use serde_json::{Map, Value, json};

use super::errors::{self, GraphError};
use super::{GraphRequest, Inner, Media, State as FakeState, Upload, now_secs};

/// §7.5 by MIME type (without parameters): the kind's size limit in
/// decimal bytes (whatsapp-api-js's reading; 10^6 vs 2^20 is unverified).
/// `video/3gp` is the older pages' spelling; `audio/opus` is named by the
/// upload error itself (§7.1) although §7.5's table lacks it.
fn limit(mime: &str) -> Option<usize> {
    const MB: usize = 1_000_000;
    Some(match mime {
        "audio/aac" | "audio/amr" | "audio/mpeg" | "audio/mp4" | "audio/ogg" | "audio/opus" => {
            16 * MB
        }
        "text/plain"
        | "application/pdf"
        | "application/msword"
        | "application/vnd.openxmlformats-officedocument.wordprocessingml.document"
        | "application/vnd.ms-excel"
        | "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
        | "application/vnd.ms-powerpoint"
        | "application/vnd.openxmlformats-officedocument.presentationml.presentation" => 100 * MB,
        "image/jpeg" | "image/png" => 5 * MB,
        // Static stickers may be 100 KB, animated 500 KB: the fake cannot
        // tell them apart, so it takes the larger.
        "image/webp" => 500_000,
        "video/mp4" | "video/3gpp" | "video/3gp" => 16 * MB,
        _ => return None,
    })
}

/// The MIME type without parameters, lower case (`audio/ogg; codecs=opus`
/// → `audio/ogg`).
fn essence(mime: &str) -> String {
    mime.split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase()
}

/// `/{version}/{media_id}`: two segments, not the lookaside.
pub(super) fn is_media_path(path: &str) -> bool {
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    segments.len() == 2 && segments[0] != "lookaside"
}

/// Stores `media`; its new numeric id.
pub(super) fn store(state: &mut FakeState, media: Media) -> String {
    state.media_counter += 1;
    let id = (1_037_543_291_543_636 + state.media_counter).to_string();
    state.media.insert(id.clone(), media);
    id
}

fn sha256_base64(bytes: &[u8]) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, bytes);
    base64::engine::general_purpose::STANDARD.encode(digest.as_ref())
}

/// The §7.2 answer for `id`, its URL on the fake's lookaside.
pub(super) fn info(base: &str, id: &str, m: &Media) -> Value {
    let sha256 = sha256_base64(&m.bytes);
    // `ext` (expiry) and `hash` imitate the real URL's query; the
    // download does not check them.
    let ext = now_secs() + 300;
    let hash: String = sha256
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .take(12)
        .collect();
    json!({
        "messaging_product": "whatsapp",
        "url": format!("{base}/lookaside/{id}?ext={ext}&hash={hash}"),
        "mime_type": m.mime,
        "sha256": sha256,
        "file_size": m.bytes.len().to_string(),
        "id": id,
    })
}

/// The form as read: text fields, and the file part if any.
#[derive(Default)]
struct Form {
    fields: Map<String, Value>,
    file: Option<(Option<String>, Option<String>, Vec<u8>)>,
    /// A malformed body: what multer said.
    error: Option<String>,
}

async fn read_form(multipart: Result<Multipart, MultipartRejection>) -> Form {
    let mut form = Form::default();
    let mut multipart = match multipart {
        Ok(m) => m,
        Err(e) => {
            form.error = Some(e.body_text());
            return form;
        }
    };
    loop {
        match multipart.next_field().await {
            Ok(None) => return form,
            Err(e) => {
                form.error = Some(e.body_text());
                return form;
            }
            Ok(Some(field)) => {
                let name = field.name().unwrap_or_default().to_string();
                if name == "file" {
                    let filename = field.file_name().map(str::to_string);
                    let mime = field.content_type().map(str::to_string);
                    match field.bytes().await {
                        Ok(bytes) => form.file = Some((filename, mime, bytes.to_vec())),
                        Err(e) => form.error = Some(e.body_text()),
                    }
                } else {
                    match field.text().await {
                        Ok(text) => {
                            form.fields.insert(name, Value::String(text));
                        }
                        Err(e) => form.error = Some(e.body_text()),
                    }
                }
            }
        }
    }
}

pub(super) async fn upload(
    State(inner): State<Arc<Inner>>,
    Path((_version, phone)): Path<(String, String)>,
    Query(query): Query<HashMap<String, String>>,
    uri: Uri,
    headers: HeaderMap,
    multipart: Result<Multipart, MultipartRejection>,
) -> Response {
    let form = read_form(multipart).await;
    // Recorded: the text fields as the body, the file part as `upload`.
    let mut request = GraphRequest::new("POST", &uri, &headers, Value::Object(form.fields.clone()));
    let mut upload = Upload {
        phone: phone.clone(),
        filename: None,
        mime: None,
        size: 0,
        media_id: None,
    };
    if let Some((filename, mime, bytes)) = &form.file {
        upload.filename = filename.clone();
        upload.mime = mime.clone();
        upload.size = bytes.len();
    }
    let response = match accept_upload(&inner, &phone, &query, &headers, form) {
        Ok(id) => {
            upload.media_id = Some(id.clone());
            Json(json!({"id": id})).into_response()
        }
        Err(r) => r.into_response(),
    };
    request.upload = Some(upload);
    inner.record(request);
    response
}

/// §7.1: `messaging_product` from the form or the query, a `file` part of
/// an accepted type and size; the new media id.
fn accept_upload(
    inner: &Inner,
    phone: &str,
    query: &HashMap<String, String>,
    headers: &HeaderMap,
    form: Form,
) -> Result<String, GraphError> {
    inner.authorize_number(phone, headers, "post")?;
    if let Some(e) = form.error {
        return Err(errors::param(&format!("Invalid multipart body: {e}")));
    }
    let product = form.fields.get("messaging_product").and_then(Value::as_str);
    let product = product.or(query.get("messaging_product").map(String::as_str));
    match product {
        None => {
            return Err(errors::param(
                "The parameter messaging_product is required.",
            ));
        }
        Some("whatsapp") => {}
        Some(other) => {
            return Err(errors::param(&format!(
                "Param messaging_product must be 'whatsapp', got '{other}'."
            )));
        }
    }
    let Some((filename, part_mime, bytes)) = form.file else {
        return Err(errors::param("The parameter file is required."));
    };
    // The part's own Content-Type decides; a part without one is what
    // Meta reports as application/octet-stream (§7.1's capture).
    let mime = part_mime.unwrap_or_else(|| "application/octet-stream".into());
    let Some(max) = limit(&essence(&mime)) else {
        return Err(errors::wrong_upload_type(&mime));
    };
    if bytes.len() > max {
        // Unverified (§7.1): whether Meta refuses an over-size upload
        // synchronously, and with which code. The fake answers 131053
        // "Media upload error", the code Meta gives for media it cannot
        // take.
        return Err(errors::whatsapp(
            400,
            131_053,
            "Media upload error",
            &format!(
                "File of {} bytes is over the {max}-byte limit for {mime}.",
                bytes.len()
            ),
        ));
    }
    let media = Media {
        bytes,
        mime,
        filename,
        phone: phone.to_string(),
    };
    Ok(store(&mut inner.state(), media))
}

/// The media `id` as `phone_number_id` (if given) may see it: unknown, or
/// owned by another number → 400 code 100 subcode 33 (§7.2, §13).
fn lookup(
    inner: &Inner,
    id: &str,
    query: &HashMap<String, String>,
    headers: &HeaderMap,
    verb: &str,
) -> Result<Media, GraphError> {
    inner.authorize_any(headers)?;
    let state = inner.state();
    match state.media.get(id) {
        Some(m) if query.get("phone_number_id").is_none_or(|p| *p == m.phone) => Ok(m.clone()),
        _ => Err(errors::no_such_object(verb, id)),
    }
}

pub(super) async fn retrieve(
    State(inner): State<Arc<Inner>>,
    Path((_version, id)): Path<(String, String)>,
    Query(query): Query<HashMap<String, String>>,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    inner.record(GraphRequest::new("GET", &uri, &headers, Value::Null));
    match lookup(&inner, &id, &query, &headers, "get") {
        Ok(m) => Json(info(&inner.base, &id, &m)).into_response(),
        Err(r) => r.into_response(),
    }
}

pub(super) async fn delete(
    State(inner): State<Arc<Inner>>,
    Path((_version, id)): Path<(String, String)>,
    Query(query): Query<HashMap<String, String>>,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    inner.record(GraphRequest::new("DELETE", &uri, &headers, Value::Null));
    if let Err(r) = lookup(&inner, &id, &query, &headers, "delete") {
        return r.into_response();
    }
    inner.state().media.remove(&id);
    Json(json!({"success": true})).into_response()
}

/// §7.3: the bytes with their Content-Type, for any configured token;
/// 404 for unknown media (Meta's answer to a failed download).
pub(super) async fn download(
    State(inner): State<Arc<Inner>>,
    Path(id): Path<String>,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    inner.record(GraphRequest::new("GET", &uri, &headers, Value::Null));
    if let Some(status) = inner.state().fail_next_download.take() {
        return StatusCode::from_u16(status)
            .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
            .into_response();
    }
    if let Err(r) = inner.authorize_any(&headers) {
        return r.into_response();
    }
    let Some(m) = inner.state().media.get(&id).cloned() else {
        return StatusCode::NOT_FOUND.into_response();
    };
    ([(header::CONTENT_TYPE, m.mime)], m.bytes).into_response()
}
