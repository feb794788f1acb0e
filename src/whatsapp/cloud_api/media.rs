//! Media through the Cloud API: upload (`POST /{phone_number_id}/media`,
//! multipart) and download (`GET /{media_id}` for a short-lived URL, then
//! `GET` that URL with the number's token; a failed download gets a fresh
//! URL once, as Meta advises). Sizes are checked before and while reading.

use serde_json::Value;

use super::CloudApiConnector;
use super::request::{self, read_limited};
use crate::config::whatsapp::NumberSettings;
use crate::protocol::{ErrorCode, HubError};
use crate::whatsapp::{MediaBytes, MediaUpload};

pub(super) async fn upload(
    api: &CloudApiConnector,
    number: &NumberSettings,
    upload: MediaUpload,
) -> Result<String, HubError> {
    let url = api.url(&format!("{}/media", number.phone_number_id));
    let answer = request::call(api.deadline, |_| {
        // A multipart form is consumed by sending it: built per attempt
        // (the bytes are shared, not copied).
        let part = reqwest::multipart::Part::stream(upload.bytes.clone())
            .file_name(upload.filename.clone())
            .mime_str(&upload.mime_type)
            .unwrap_or_else(|_| reqwest::multipart::Part::bytes(Vec::new()));
        let form = reqwest::multipart::Form::new()
            .text("messaging_product", "whatsapp")
            .text("type", upload.mime_type.clone())
            .part("file", part);
        api.http
            .post(&url)
            .bearer_auth(number.access_token.expose())
            .multipart(form)
    })
    .await?;
    answer
        .get("id")
        .and_then(Value::as_str)
        .filter(|id| !id.is_empty() && id.len() <= 256)
        .map(str::to_string)
        .ok_or_else(|| {
            HubError::new(
                ErrorCode::ConnectorFailed,
                "the Cloud API took the upload but returned no media id",
            )
        })
}

/// Where the bytes are now, their type and (when Graph says) size.
struct Located {
    url: String,
    mime_type: String,
    size: Option<u64>,
}

/// The media's size as the Cloud API reports it (no download).
pub(super) async fn size(
    api: &CloudApiConnector,
    number: &NumberSettings,
    media_id: &str,
) -> Result<Option<u64>, HubError> {
    Ok(locate(api, number, media_id, usize::MAX).await?.size)
}

async fn locate(
    api: &CloudApiConnector,
    number: &NumberSettings,
    media_id: &str,
    max_bytes: usize,
) -> Result<Located, HubError> {
    let url = api.url(media_id);
    let answer = request::call(api.deadline, |_| {
        api.http
            .get(&url)
            .query(&[("phone_number_id", number.phone_number_id.as_str())])
            .bearer_auth(number.access_token.expose())
    })
    .await
    .map_err(|e| match e.code {
        // Unknown, expired (7 days for inbound media) or another number's.
        ErrorCode::ConnectorRejected => HubError::new(
            ErrorCode::MediaNotFound,
            format!("the Cloud API has no such media (expired?): {}", e.message),
        ),
        _ => e,
    })?;
    // file_size is a string in Meta's example, a number in others.
    let size = match answer.get("file_size") {
        Some(Value::String(s)) => s.parse::<u64>().ok(),
        Some(v) => v.as_u64(),
        None => None,
    };
    if size.is_some_and(|s| s > max_bytes as u64) {
        return Err(HubError::new(
            ErrorCode::PayloadTooLarge,
            format!("the media is larger than {max_bytes} bytes"),
        ));
    }
    let located = answer
        .get("url")
        .and_then(Value::as_str)
        .filter(|u| u.starts_with("https://") || u.starts_with("http://"))
        .map(|url| Located {
            url: url.to_string(),
            mime_type: answer
                .get("mime_type")
                .and_then(Value::as_str)
                .unwrap_or("application/octet-stream")
                .chars()
                .take(128)
                .collect(),
            size,
        });
    located.ok_or_else(|| {
        HubError::new(
            ErrorCode::ConnectorFailed,
            "the Cloud API gave no download URL for the media",
        )
    })
}

pub(super) async fn download(
    api: &CloudApiConnector,
    number: &NumberSettings,
    media_id: &str,
    max_bytes: usize,
) -> Result<MediaBytes, HubError> {
    let mut last = None;
    // The URL lives 5 minutes; a failure gets one fresh URL.
    for _ in 0..2 {
        let located = locate(api, number, media_id, max_bytes).await?;
        let sent = api
            .http
            .get(&located.url)
            .bearer_auth(number.access_token.expose())
            .timeout(api.deadline)
            .send()
            .await;
        let response = match sent {
            Ok(r) if r.status().is_success() => r,
            Ok(r) => {
                last = Some(HubError::new(
                    ErrorCode::MediaFailed,
                    format!("the media download answered HTTP {}", r.status().as_u16()),
                ));
                continue;
            }
            Err(e) => {
                last = Some(HubError::new(
                    ErrorCode::ConnectorUnavailable,
                    format!("the media download failed: {}", e.without_url()),
                ));
                continue;
            }
        };
        return match read_limited(response, max_bytes).await {
            Ok(bytes) => Ok(MediaBytes {
                mime_type: located.mime_type,
                bytes,
            }),
            Err(Some(_)) => Err(HubError::new(
                ErrorCode::PayloadTooLarge,
                format!("the media is larger than {max_bytes} bytes"),
            )),
            Err(None) => Err(HubError::new(
                ErrorCode::ConnectorUnavailable,
                "the media download broke off",
            )),
        };
    }
    Err(last.unwrap_or_else(|| HubError::new(ErrorCode::MediaFailed, "the media download failed")))
}
