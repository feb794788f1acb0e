//! The Graph error bodies the fake answers with, as the reference quotes
//! them (§2, §6, §7.1, §8.5, §12.2, §13).

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

pub(super) const FBTRACE: &str = "Afake";

/// A Graph error answer, boxed: a bare `Response` is too large to pass
/// around in `Result`s.
pub(super) struct GraphError(Box<Response>);

impl IntoResponse for GraphError {
    fn into_response(self) -> Response {
        *self.0
    }
}

fn respond(status: u16, body: Value) -> GraphError {
    GraphError(Box::new(
        (
            StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST),
            Json(body),
        )
            .into_response(),
    ))
}

/// The WhatsApp envelope: `(#code) title` plus `error_data.details`.
pub(super) fn whatsapp(status: u16, code: i64, title: &str, details: &str) -> GraphError {
    respond(
        status,
        json!({"error": {
            "message": format!("(#{code}) {title}"),
            "type": "OAuthException",
            "code": code,
            "error_data": {"messaging_product": "whatsapp", "details": details},
            "fbtrace_id": FBTRACE,
        }}),
    )
}

/// A scripted failure: any status and code.
pub(super) fn scripted(status: u16, code: i64) -> GraphError {
    whatsapp(status, code, "scripted failure", "scripted failure")
}

/// 401 code 190, exactly §6.
pub(super) fn invalid_token() -> GraphError {
    respond(
        401,
        json!({"error": {
            "message": "Invalid OAuth access token - Cannot parse access token",
            "type": "OAuthException",
            "code": 190,
            "fbtrace_id": FBTRACE,
        }}),
    )
}

/// Graph's "object does not exist" (§13): an unknown phone number id,
/// media id or WABA. `verb` is the request's method, lower case.
pub(super) fn no_such_object(verb: &str, id: &str) -> GraphError {
    respond(
        400,
        json!({"error": {
            "message": format!("Unsupported {verb} request. Object with ID '{id}' does not exist, cannot be loaded due to missing permissions, or does not support this operation. Please read the Graph API documentation at https://developers.facebook.com/docs/graph-api"),
            "type": "GraphMethodException",
            "code": 100,
            "error_subcode": 33,
            "fbtrace_id": FBTRACE,
        }}),
    )
}

/// 400 code 100 for a missing or malformed parameter, worded as Graph
/// words it (`(#100) The parameter to is required.`).
pub(super) fn param(message: &str) -> GraphError {
    respond(
        400,
        json!({"error": {
            "message": format!("(#100) {message}"),
            "type": "OAuthException",
            "code": 100,
            "error_data": {"messaging_product": "whatsapp", "details": message},
            "fbtrace_id": FBTRACE,
        }}),
    )
}

/// 400 code 131009 "Parameter value is not valid" with what was wrong
/// (§8.5: that every limit maps to 131009 is unverified; the details are
/// the fake's own words).
pub(super) fn not_valid(details: &str) -> GraphError {
    whatsapp(400, 131_009, "Parameter value is not valid", details)
}

/// 400 code 131047, exactly §12.2.
pub(super) fn re_engagement() -> GraphError {
    whatsapp(
        400,
        131_047,
        "Re-engagement message",
        "Message failed to send because more than 24 hours have passed since the customer last replied to this number.",
    )
}

/// The accepted upload types in the order of §7.1's captured error.
pub(super) const UPLOAD_TYPES: &str = "audio/aac, audio/mp4, audio/mpeg, audio/amr, audio/ogg, audio/opus, application/vnd.ms-powerpoint, application/msword, application/vnd.openxmlformats-officedocument.wordprocessingml.document, application/vnd.openxmlformats-officedocument.presentationml.presentation, application/vnd.openxmlformats-officedocument.spreadsheetml.sheet, application/pdf, text/plain, application/vnd.ms-excel, image/jpeg, image/png, image/webp, video/mp4, video/3gpp";

/// An upload of a type Meta does not take: exactly §7.1.
pub(super) fn wrong_upload_type(received: &str) -> GraphError {
    respond(
        400,
        json!({"error": {
            "message": format!("(#100) Param file must be a file with one of the following types: {UPLOAD_TYPES}. Received file of type '{received}'."),
            "type": "OAuthException",
            "code": 100,
            "fbtrace_id": FBTRACE,
        }}),
    )
}
