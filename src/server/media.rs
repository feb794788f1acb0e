//! The media endpoints of the session API: `POST …/media` takes a
//! client's upload (multipart field `file`) for a later `send` with
//! `media.id`; `GET …/media/{ref}` serves the bytes behind a message's
//! `media.url` to the session's members. Same auth, rate limit and CORS
//! as the rest of the session API ([`super::rest`]); the upload's body
//! limit is MEDIA_MAX_UPLOAD_BYTES instead of MAX_REST_BODY_BYTES, and a
//! few uploads at a time per instance.

use std::sync::Arc;

use axum::Json;
use axum::extract::{DefaultBodyLimit, Multipart, Path, State};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use tokio::sync::Semaphore;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::auth::Bearer;
use super::rest::{ApiError, caller};
use crate::auth::Scope;
use crate::hub::media::UploadedMedia;
use crate::hub::{Hub, SessionUse};
use crate::protocol::{ErrorCode, HubError};

/// Uploads read at once on one instance (each holds its bytes in memory).
const CONCURRENT_UPLOADS: usize = 2;

/// Room for the multipart framing around the file.
const FORM_OVERHEAD: usize = 64 * 1024;

pub fn routes(hub: &Hub) -> OpenApiRouter<Arc<Hub>> {
    let uploads = Arc::new(Semaphore::new(CONCURRENT_UPLOADS));
    let max = hub.config().whatsapp.media_max_upload_bytes;
    OpenApiRouter::new()
        .routes(routes!(upload))
        // Innermost, so it wins over the session API's small body limit.
        .layer(DefaultBodyLimit::max(max + FORM_OVERHEAD))
        .layer(axum::Extension(UploadSlots(uploads)))
        .routes(routes!(download))
}

#[derive(Clone)]
struct UploadSlots(Arc<Semaphore>);

/// Uploads a file for a later `send` (`media: {"kind", "id"}`): its type
/// must be one WhatsApp takes and its size within that kind's limit and
/// MEDIA_MAX_UPLOAD_BYTES. With the Cloud API it is forwarded to the
/// session's number; the simulator keeps it on this instance.
#[utoipa::path(post, path = "/api/v1/sessions/{session}/media", tag = "sessions",
    params(("session" = String, Path, description = "the session id")),
    request_body(content_type = "multipart/form-data", description = "one field `file`: the file, with its file name and Content-Type"),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "the media id to send it with", body = UploadedMedia),
        (status = 400, description = "no `file` field, or an empty one", body = super::openapi::ErrorBody),
        (status = 401, description = "missing or invalid token", body = super::openapi::ErrorBody),
        (status = 403, description = "`forbidden` or `insufficient_scope` (needs `whatsapp.send`)", body = super::openapi::ErrorBody),
        (status = 404, description = "`session_not_found`", body = super::openapi::ErrorBody),
        (status = 413, description = "`payload_too_large`", body = super::openapi::ErrorBody),
        (status = 415, description = "`unsupported_media_type`: a type WhatsApp does not take", body = super::openapi::ErrorBody),
        (status = 429, description = "`rate_limited`: too many uploads in progress", body = super::openapi::ErrorBody),
    ))]
async fn upload(
    State(hub): State<Arc<Hub>>,
    Path(session): Path<String>,
    axum::Extension(UploadSlots(slots)): axum::Extension<UploadSlots>,
    headers: HeaderMap,
    bearer: Bearer,
    form: Result<Multipart, axum::extract::multipart::MultipartRejection>,
) -> Result<Json<UploadedMedia>, ApiError> {
    caller(&hub, &headers, bearer, &session, Scope::Send)?;
    hub.require_session(&session, SessionUse::Write).await?;
    let mut form = form.map_err(|e| HubError::new(ErrorCode::InvalidField, e.body_text()))?;
    let _slot = slots.try_acquire().map_err(|_| {
        HubError::new(
            ErrorCode::RateLimited,
            "too many uploads in progress on this instance; try again shortly",
        )
    })?;
    let too_large = || {
        HubError::new(
            ErrorCode::PayloadTooLarge,
            format!(
                "an upload may be at most {} bytes (MEDIA_MAX_UPLOAD_BYTES)",
                hub.config().whatsapp.media_max_upload_bytes
            ),
        )
    };
    loop {
        let field = form
            .next_field()
            .await
            .map_err(|e| match e.status().as_u16() {
                413 => too_large(),
                _ => HubError::new(ErrorCode::InvalidField, e.body_text()),
            })?;
        let Some(field) = field else {
            return Err(HubError::new(ErrorCode::MissingField, "missing field `file`").into());
        };
        if field.name() != Some("file") {
            continue;
        }
        let filename = field.file_name().unwrap_or("file").to_string();
        let mime = field
            .content_type()
            .unwrap_or("application/octet-stream")
            .to_string();
        let bytes = field.bytes().await.map_err(|e| match e.status().as_u16() {
            413 => too_large(),
            _ => HubError::new(ErrorCode::InvalidField, e.body_text()),
        })?;
        if bytes.len() > hub.config().whatsapp.media_max_upload_bytes {
            return Err(too_large().into());
        }
        let uploaded = hub.upload_media(&session, &filename, &mime, bytes).await?;
        return Ok(Json(uploaded));
    }
}

/// The bytes behind a message's `media.url`, for the session's members:
/// from this instance's cache, else fetched from the Cloud API first.
#[utoipa::path(get, path = "/api/v1/sessions/{session}/media/{reference}", tag = "sessions",
    params(
        ("session" = String, Path, description = "the session id"),
        ("reference" = String, Path, description = "the last segment of a `media.url`"),
    ),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "the media, with its Content-Type"),
        (status = 401, description = "missing or invalid token", body = super::openapi::ErrorBody),
        (status = 403, description = "`forbidden` or `insufficient_scope` (needs `whatsapp.read`)", body = super::openapi::ErrorBody),
        (status = 404, description = "`media_not_found`: not this session's, or expired at the Cloud API", body = super::openapi::ErrorBody),
        (status = 502, description = "`media_failed` / `connector_*`: the Cloud API did not give the bytes", body = super::openapi::ErrorBody),
    ))]
async fn download(
    State(hub): State<Arc<Hub>>,
    Path((session, reference)): Path<(String, String)>,
    headers: HeaderMap,
    bearer: Bearer,
) -> Result<Response, ApiError> {
    caller(&hub, &headers, bearer, &session, Scope::Read)?;
    let media = hub.media_bytes(&session, &reference).await?;
    let content_type = HeaderValue::from_str(&media.mime_type)
        .unwrap_or(HeaderValue::from_static("application/octet-stream"));
    Ok((
        [
            (header::CONTENT_TYPE, content_type),
            (
                header::CACHE_CONTROL,
                HeaderValue::from_static("private, max-age=3600"),
            ),
            // Bytes a stranger sent: never run as a page of this origin.
            (
                header::CONTENT_SECURITY_POLICY,
                HeaderValue::from_static("default-src 'none'; sandbox"),
            ),
            (
                header::X_CONTENT_TYPE_OPTIONS,
                HeaderValue::from_static("nosniff"),
            ),
        ],
        media.bytes.clone(),
    )
        .into_response())
}
