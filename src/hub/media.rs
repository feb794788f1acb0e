//! Media on the hub: uploads from clients (checked against WhatsApp's
//! types and sizes, then handed to the connector), and the bytes behind a
//! message's `media.url`, served to the session's members from this
//! instance's cache or fetched through the connector on first request.
//! Downloads run a few at a time per instance, and one per media however
//! many ask at once.

use std::sync::Arc;

use bytes::Bytes;
use serde::Serialize;
use tokio::sync::Semaphore;

use super::Hub;
use crate::config::HubConfig;
use crate::protocol::{ErrorCode, HubError, MediaKind, MessageContent};
use crate::whatsapp::MediaUpload;
use crate::whatsapp::media::{
    CachedMedia, MAX_MEDIA_BYTES, MediaCache, MediaRefs, accepted_types, kind_of_mime, max_bytes,
};

/// How long an inbound message waits for its media's size.
const MEDIA_LOOKUP_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// Downloads in progress at once on one instance.
const CONCURRENT_DOWNLOADS: usize = 4;

pub struct MediaDesk {
    refs: MediaRefs,
    cache: MediaCache,
    downloads: Semaphore,
}

impl MediaDesk {
    pub fn new(config: &HubConfig) -> Self {
        let secret = config.whatsapp.app_secret.as_ref().map(|s| s.expose());
        MediaDesk {
            refs: MediaRefs::new(secret),
            cache: MediaCache::new(config.whatsapp.media_cache_bytes),
            downloads: Semaphore::new(CONCURRENT_DOWNLOADS),
        }
    }
}

/// An upload's answer.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct UploadedMedia {
    /// The media id to send it with (`media.id`).
    pub id: String,
    /// The kind it is sent as.
    #[schema(value_type = String)]
    pub kind: MediaKind,
    pub mime_type: String,
    pub size: u64,
    /// Where the session's members can fetch it from this hub.
    pub url: String,
}

/// A plain file name: no directories, no control characters, bounded.
fn clean_filename(name: &str) -> String {
    let base = name.rsplit(['/', '\\']).next().unwrap_or("");
    let cleaned: String = base.chars().filter(|c| !c.is_control()).take(240).collect();
    let cleaned = cleaned.trim().to_string();
    if cleaned.is_empty() || cleaned == "." || cleaned == ".." {
        "file".to_string()
    } else {
        cleaned
    }
}

impl Hub {
    /// Gives every media with an id its hub URL.
    pub(super) fn media_urls(&self, session: &str, mut content: MessageContent) -> MessageContent {
        if let Some(media) = &mut content.media
            && let Some(id) = &media.id
        {
            media.url = Some(self.media.refs.url(session, id));
        }
        content
    }

    /// An inbound media's size, asked of the connector (no download),
    /// within `MEDIA_LOOKUP_TIMEOUT`; None when it cannot tell in time.
    pub(super) async fn inbound_media_size(&self, session: &str, content: &mut MessageContent) {
        let Some(media) = &mut content.media else {
            return;
        };
        let Some(id) = media.id.clone() else {
            return;
        };
        let asked = self.connector.media_size(session, &id);
        match tokio::time::timeout(MEDIA_LOOKUP_TIMEOUT, asked).await {
            Ok(Ok(size)) => media.size = size,
            Ok(Err(e)) => tracing::debug!(error = %e, "media size unknown"),
            Err(_) => tracing::debug!("media size lookup timed out"),
        }
    }

    /// Takes a client's upload for a later send: its type must be one
    /// WhatsApp takes and its size within that kind's limit.
    pub async fn upload_media(
        &self,
        session: &str,
        filename: &str,
        mime_type: &str,
        bytes: Bytes,
    ) -> Result<UploadedMedia, HubError> {
        let essence = mime_type
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        let Some(kind) = kind_of_mime(&essence) else {
            return Err(HubError::new(
                ErrorCode::UnsupportedMediaType,
                format!(
                    "WhatsApp does not take `{}` files; it takes {}",
                    essence.chars().take(128).collect::<String>(),
                    accepted_types()
                ),
            ));
        };
        let limit = max_bytes(kind);
        if bytes.len() > limit {
            return Err(HubError::new(
                ErrorCode::PayloadTooLarge,
                format!("a {} may be at most {limit} bytes", kind.as_str()),
            ));
        }
        if bytes.is_empty() {
            return Err(HubError::new(ErrorCode::InvalidField, "the file is empty"));
        }
        let size = bytes.len() as u64;
        let upload = MediaUpload {
            bytes: bytes.clone(),
            mime_type: essence.clone(),
            filename: clean_filename(filename),
        };
        let id = self.connector.upload_media(session, upload).await?;
        let reference = self.media.refs.reference(session, &id);
        // The sender's own clients see it at once, without a download.
        self.media.cache.insert(
            reference,
            Arc::new(CachedMedia {
                mime_type: essence.clone(),
                bytes,
            }),
        );
        self.metrics.media.with_label_values(&["upload"]).inc();
        Ok(UploadedMedia {
            url: self.media.refs.url(session, &id),
            id,
            kind,
            mime_type: essence,
            size,
        })
    }

    /// The bytes behind a `media.url` of `session`: from this instance's
    /// cache, else fetched through the connector (then cached).
    pub async fn media_bytes(
        &self,
        session: &str,
        reference: &str,
    ) -> Result<Arc<CachedMedia>, HubError> {
        let not_found = || HubError::new(ErrorCode::MediaNotFound, "no such media in this session");
        let media_id = self
            .media
            .refs
            .media_id(session, reference)
            .ok_or_else(not_found)?;
        if let Some(hit) = self.media.cache.get(reference) {
            self.metrics.media.with_label_values(&["cache_hit"]).inc();
            return Ok(hit);
        }
        self.media
            .cache
            .get_or_fetch(reference, async {
                let _permit = self
                    .media
                    .downloads
                    .acquire()
                    .await
                    .map_err(|_| HubError::new(ErrorCode::ShuttingDown, "shutting down"))?;
                let fetched = self
                    .connector
                    .fetch_media(session, media_id, MAX_MEDIA_BYTES)
                    .await;
                let outcome = if fetched.is_ok() {
                    "download"
                } else {
                    "download_failed"
                };
                self.metrics.media.with_label_values(&[outcome]).inc();
                let fetched = fetched?;
                Ok(Arc::new(CachedMedia {
                    mime_type: fetched.mime_type,
                    bytes: fetched.bytes,
                }))
            })
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::clean_filename;

    #[test]
    fn file_names_are_plain() {
        assert_eq!(clean_filename("report.pdf"), "report.pdf");
        assert_eq!(clean_filename("../../etc/passwd"), "passwd");
        assert_eq!(clean_filename("C:\\x\\a.doc"), "a.doc");
        assert_eq!(clean_filename("a\nb.txt"), "ab.txt");
        assert_eq!(clean_filename(".."), "file");
        assert_eq!(clean_filename(""), "file");
        assert_eq!(clean_filename(&"x".repeat(500)).len(), 240);
    }
}
