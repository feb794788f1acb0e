//! Media the hub passes between WhatsApp and its clients: which MIME types
//! and sizes WhatsApp takes (Meta's media table), the session-scoped
//! references that name a media id in hub URLs, and each instance's
//! in-memory cache of downloaded bytes.
//!
//! Media bytes never go into the session store (Redis or the data
//! directory): a reference carries the Cloud API media id, so any
//! instance that misses its cache fetches the bytes from the Cloud API
//! again (Meta keeps inbound media for 7 days, uploads for 30).

use std::sync::Arc;

use bytes::Bytes;
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use quick_cache::Weighter;
use quick_cache::sync::Cache;
use ring::hmac;

use crate::protocol::MediaKind;

/// The MIME types WhatsApp accepts, and the kind each one is sent as
/// (Meta "Media", supported types). `audio/ogg` must be OPUS.
const TYPES: &[(&str, MediaKind)] = &[
    ("image/jpeg", MediaKind::Image),
    ("image/png", MediaKind::Image),
    ("image/webp", MediaKind::Sticker),
    ("audio/aac", MediaKind::Audio),
    ("audio/amr", MediaKind::Audio),
    ("audio/mpeg", MediaKind::Audio),
    ("audio/mp4", MediaKind::Audio),
    ("audio/ogg", MediaKind::Audio),
    ("video/mp4", MediaKind::Video),
    ("video/3gpp", MediaKind::Video),
    ("video/3gp", MediaKind::Video),
    ("text/plain", MediaKind::Document),
    ("application/pdf", MediaKind::Document),
    ("application/msword", MediaKind::Document),
    (
        "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
        MediaKind::Document,
    ),
    ("application/vnd.ms-excel", MediaKind::Document),
    (
        "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
        MediaKind::Document,
    ),
    ("application/vnd.ms-powerpoint", MediaKind::Document),
    (
        "application/vnd.openxmlformats-officedocument.presentationml.presentation",
        MediaKind::Document,
    ),
];

/// The kind a MIME type is sent as; None if WhatsApp does not take it.
/// Parameters (`audio/ogg; codecs=opus`) and case are ignored.
pub fn kind_of_mime(mime: &str) -> Option<MediaKind> {
    let essence = mime.split(';').next().unwrap_or("").trim();
    TYPES
        .iter()
        .find(|(t, _)| t.eq_ignore_ascii_case(essence))
        .map(|(_, kind)| *kind)
}

/// Every MIME type WhatsApp takes, for error messages.
pub fn accepted_types() -> String {
    TYPES.iter().map(|(t, _)| *t).collect::<Vec<_>>().join(", ")
}

/// The largest file of a kind WhatsApp takes (decimal megabytes, as the
/// official SDKs check them); an animated sticker may be 500 KB.
pub fn max_bytes(kind: MediaKind) -> usize {
    match kind {
        MediaKind::Image => 5_000_000,
        MediaKind::Audio | MediaKind::Video => 16_000_000,
        MediaKind::Document => 100_000_000,
        MediaKind::Sticker => 500_000,
    }
}

/// The largest media of any kind (what a download may read at most).
pub const MAX_MEDIA_BYTES: usize = 100_000_000;

/// Binds media ids to sessions: a reference is `{media_id}.{tag}`, the tag
/// an HMAC of the session and the id, so a member of one session cannot
/// read another session's media by changing the URL. The key comes from
/// WHATSAPP_APP_SECRET, shared by every instance of a cluster.
pub struct MediaRefs {
    key: hmac::Key,
}

/// What a session name keeps unescaped in a URL path segment.
const PATH_SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

/// Hex characters of a reference's tag (64 bits).
const TAG_HEX: usize = 16;

impl MediaRefs {
    /// Keys derived from `secret`; without one (no Cloud API), a key of
    /// this process only.
    pub fn new(secret: Option<&str>) -> Self {
        let material = match secret {
            Some(s) => {
                let root = hmac::Key::new(hmac::HMAC_SHA256, s.as_bytes());
                hmac::sign(&root, b"mcp-hub media references v1")
                    .as_ref()
                    .to_vec()
            }
            None => uuid::Uuid::new_v4().as_bytes().to_vec(),
        };
        MediaRefs {
            key: hmac::Key::new(hmac::HMAC_SHA256, &material),
        }
    }

    fn tag(&self, session: &str, media_id: &str) -> String {
        let mut msg = Vec::with_capacity(session.len() + media_id.len() + 1);
        msg.extend_from_slice(session.as_bytes());
        msg.push(0);
        msg.extend_from_slice(media_id.as_bytes());
        let tag = hmac::sign(&self.key, &msg);
        tag.as_ref()[..TAG_HEX / 2]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    /// The reference of `media_id` in `session`.
    pub fn reference(&self, session: &str, media_id: &str) -> String {
        format!("{media_id}.{}", self.tag(session, media_id))
    }

    /// The hub path that serves it.
    pub fn url(&self, session: &str, media_id: &str) -> String {
        format!(
            "/api/v1/sessions/{}/media/{}",
            utf8_percent_encode(session, PATH_SEGMENT),
            self.reference(session, media_id)
        )
    }

    /// The media id of a reference made for `session`; None for anything
    /// else (compared in constant time).
    pub fn media_id<'a>(&self, session: &str, reference: &'a str) -> Option<&'a str> {
        let (id, tag) = reference.rsplit_once('.')?;
        if id.is_empty() || id.len() > 256 || tag.len() != TAG_HEX {
            return None;
        }
        let expected = self.tag(session, id);
        super::webhooks::constant_time_eq(expected.as_bytes(), tag.as_bytes()).then_some(id)
    }
}

#[derive(Clone)]
struct ByteWeight;

impl Weighter<String, Arc<CachedMedia>> for ByteWeight {
    fn weight(&self, _key: &String, media: &Arc<CachedMedia>) -> u64 {
        media.bytes.len() as u64 + 1
    }
}

/// Downloaded media as served.
#[derive(Debug)]
pub struct CachedMedia {
    pub mime_type: String,
    pub bytes: Bytes,
}

/// This instance's downloaded media, bounded in bytes (MEDIA_CACHE_BYTES;
/// least recently used out first). Concurrent requests for the same media
/// share one download.
pub struct MediaCache {
    cache: Cache<String, Arc<CachedMedia>, ByteWeight>,
}

impl MediaCache {
    pub fn new(max_bytes: u64) -> Self {
        // Items are large: a small estimate keeps the index small.
        let estimated_items = (max_bytes / (256 * 1024)).clamp(16, 4096) as usize;
        MediaCache {
            cache: Cache::with_weighter(estimated_items, max_bytes.max(1), ByteWeight),
        }
    }

    /// The cached media of `key`, or `fetch`'s (then cached, if it fits).
    pub async fn get_or_fetch<E>(
        &self,
        key: &str,
        fetch: impl Future<Output = Result<Arc<CachedMedia>, E>>,
    ) -> Result<Arc<CachedMedia>, E> {
        self.cache.get_or_insert_async(key, fetch).await
    }

    pub fn insert(&self, key: String, media: Arc<CachedMedia>) {
        self.cache.insert(key, media);
    }

    pub fn get(&self, key: &str) -> Option<Arc<CachedMedia>> {
        self.cache.get(key)
    }

    /// Bytes held now.
    pub fn weight(&self) -> u64 {
        self.cache.weight()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mime_types_map_to_kinds() {
        assert_eq!(kind_of_mime("image/jpeg"), Some(MediaKind::Image));
        assert_eq!(
            kind_of_mime("audio/ogg; codecs=opus"),
            Some(MediaKind::Audio)
        );
        assert_eq!(kind_of_mime("Application/PDF"), Some(MediaKind::Document));
        assert_eq!(kind_of_mime("image/webp"), Some(MediaKind::Sticker));
        assert_eq!(kind_of_mime("application/octet-stream"), None);
        assert_eq!(kind_of_mime("image/gif"), None);
        assert!(max_bytes(MediaKind::Document) <= MAX_MEDIA_BYTES);
    }

    #[test]
    fn references_are_bound_to_their_session() {
        let refs = MediaRefs::new(Some("app-secret"));
        let r = refs.reference("sales", "1003383421387256");
        assert_eq!(refs.media_id("sales", &r), Some("1003383421387256"));
        assert_eq!(refs.media_id("support", &r), None);
        // Same secret, another instance: same reference.
        assert_eq!(
            MediaRefs::new(Some("app-secret")).reference("sales", "1003383421387256"),
            r
        );
        assert_ne!(
            MediaRefs::new(Some("other")).reference("sales", "1003383421387256"),
            r
        );
        let forged = format!("1003383421387257.{}", r.rsplit_once('.').unwrap().1);
        assert_eq!(refs.media_id("sales", &forged), None);
        for bad in ["", ".", "123", "123.", ".abcd", "1.zz"] {
            assert_eq!(refs.media_id("sales", bad), None, "{bad}");
        }
        assert!(
            refs.url("a b", "1")
                .starts_with("/api/v1/sessions/a%20b/media/1.")
        );
    }

    #[tokio::test]
    async fn the_cache_is_bounded_in_bytes() {
        let cache = MediaCache::new(1_000);
        for i in 0..20 {
            let media = Arc::new(CachedMedia {
                mime_type: "image/png".into(),
                bytes: Bytes::from(vec![0u8; 100]),
            });
            cache.insert(format!("k{i}"), media);
        }
        assert!(cache.weight() <= 1_000, "{}", cache.weight());
        let fetched = cache
            .get_or_fetch("new", async {
                Ok::<_, ()>(Arc::new(CachedMedia {
                    mime_type: "image/png".into(),
                    bytes: Bytes::from_static(b"x"),
                }))
            })
            .await
            .unwrap();
        assert_eq!(&fetched.bytes[..], b"x");
        assert!(cache.get("new").is_some());
    }
}
