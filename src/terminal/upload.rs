//! `/send-file`: a local file checked (size, a type WhatsApp takes),
//! read (bounded), uploaded to the hub's media endpoint
//! (`POST /api/v1/sessions/{session}/media`, multipart field `file`) and
//! then sent as the `media` of a `send`.
//!
//! The checks that need no reading run at once, so a wrong path or type is
//! a local error like any bad input; the read and the upload run on their
//! own task so the session keeps printing events meanwhile.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::AsyncReadExt;

use super::content::human_size;
use crate::protocol::MediaKind;

/// Files above this are refused before anything is read (WhatsApp's
/// largest media, a document, is 100 MB).
pub(super) const MAX_FILE_BYTES: u64 = 100 * 1024 * 1024;

/// The types WhatsApp takes, by file extension (lowercase).
const TYPES: &[(&str, &str)] = &[
    ("jpg", "image/jpeg"),
    ("jpeg", "image/jpeg"),
    ("png", "image/png"),
    ("webp", "image/webp"),
    ("aac", "audio/aac"),
    ("amr", "audio/amr"),
    ("mp3", "audio/mpeg"),
    ("m4a", "audio/mp4"),
    ("ogg", "audio/ogg"),
    ("oga", "audio/ogg"),
    ("opus", "audio/ogg"),
    ("mp4", "video/mp4"),
    ("3gp", "video/3gpp"),
    ("3gpp", "video/3gpp"),
    ("txt", "text/plain"),
    ("pdf", "application/pdf"),
    ("doc", "application/msword"),
    (
        "docx",
        "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
    ),
    ("xls", "application/vnd.ms-excel"),
    (
        "xlsx",
        "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
    ),
    ("ppt", "application/vnd.ms-powerpoint"),
    (
        "pptx",
        "application/vnd.openxmlformats-officedocument.presentationml.presentation",
    ),
];

/// The MIME type WhatsApp knows for `path`'s extension.
pub(super) fn mime_type(path: &Path) -> Option<&'static str> {
    let ext = path.extension()?.to_str()?.to_ascii_lowercase();
    TYPES.iter().find(|(e, _)| *e == ext).map(|(_, mime)| *mime)
}

/// The kind of media a MIME type is sent as: a WebP image is a sticker.
pub(super) fn kind_of(mime: &str) -> MediaKind {
    match mime {
        "image/webp" => MediaKind::Sticker,
        m if m.starts_with("image/") => MediaKind::Image,
        m if m.starts_with("audio/") => MediaKind::Audio,
        m if m.starts_with("video/") => MediaKind::Video,
        _ => MediaKind::Document,
    }
}

/// A file that passed the checks that need no reading.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct FileToSend {
    pub path: PathBuf,
    pub filename: String,
    pub mime: &'static str,
}

/// Checks `path` without reading it: a regular file, not empty, at most
/// [`MAX_FILE_BYTES`], of a type WhatsApp takes. Err: what to tell the user.
pub(super) fn check(path: &Path) -> Result<FileToSend, String> {
    let shown = path.display();
    let filename = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .ok_or_else(|| format!("{shown} does not name a file"))?;
    let Some(mime) = mime_type(path) else {
        return Err(format!(
            "cannot send {filename}: WhatsApp does not take that type of file \
             (images .jpg .png, stickers .webp, audio .aac .amr .mp3 .m4a .ogg, \
             video .mp4 .3gp, documents .txt .pdf .doc(x) .xls(x) .ppt(x))"
        ));
    };
    let meta = std::fs::metadata(path).map_err(|e| format!("cannot read {shown}: {e}"))?;
    if !meta.is_file() {
        return Err(format!("cannot send {shown}: not a regular file"));
    }
    if meta.len() > MAX_FILE_BYTES {
        return Err(format!(
            "cannot send {filename}: {} is over the limit of {}",
            human_size(meta.len()),
            human_size(MAX_FILE_BYTES)
        ));
    }
    if meta.len() == 0 {
        return Err(format!("cannot send {filename}: the file is empty"));
    }
    Ok(FileToSend {
        path: path.to_path_buf(),
        filename,
        mime,
    })
}

/// Where and how to upload: the media endpoint's URL, the token if any, and
/// the bound on the whole upload.
#[derive(Debug, Clone)]
pub(super) struct Target {
    pub url: reqwest::Url,
    pub token: Option<String>,
    pub timeout: Duration,
}

/// `{origin}/api/v1/sessions/{session}/media`, the session percent-encoded.
pub(super) fn media_endpoint(origin: &str, session: &str) -> Option<reqwest::Url> {
    let mut url = reqwest::Url::parse(origin).ok()?;
    url.path_segments_mut()
        .ok()?
        .clear()
        .extend(["api", "v1", "sessions", session, "media"]);
    Some(url)
}

/// What the hub answered to an upload.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Uploaded {
    pub id: String,
    pub size: Option<u64>,
}

/// Why an upload failed, shaped like a failed command's content (`code`,
/// `error`) so it prints as the other failure lines do.
pub(super) type UploadError = Value;

fn upload_error(code: Option<&str>, message: String) -> UploadError {
    match code {
        Some(code) => json!({"success": false, "code": code, "error": message}),
        None => json!({"success": false, "error": message}),
    }
}

/// Reads the file (bounded again: it may have grown since [`check`]) and
/// uploads it.
pub(super) async fn upload(file: &FileToSend, target: &Target) -> Result<Uploaded, UploadError> {
    let bytes = read_bounded(&file.path)
        .await
        .map_err(|e| upload_error(None, e))?;
    let part = reqwest::multipart::Part::bytes(bytes)
        .file_name(file.filename.clone())
        .mime_str(file.mime)
        .map_err(|e| upload_error(None, format!("cannot build the upload: {e}")))?;
    let form = reqwest::multipart::Form::new().part("file", part);
    let client = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(10))
        .timeout(target.timeout)
        .build()
        .map_err(|e| upload_error(None, format!("cannot start an HTTP client: {e}")))?;
    let mut request = client.post(target.url.clone()).multipart(form);
    if let Some(token) = &target.token {
        request = request.bearer_auth(token);
    }
    let response = request
        .send()
        .await
        .map_err(|e| upload_error(None, format!("the upload to {} failed: {e}", target.url)))?;
    let status = response.status();
    let body: Value = response.json().await.unwrap_or(Value::Null);
    if !status.is_success() {
        let field = |k: &str| body.get(k).and_then(Value::as_str);
        let why = field("message").or_else(|| field("error"));
        let message = match why {
            Some(why) => format!("the hub refused the upload (HTTP {status}): {why}"),
            // No media endpoint at all: a hub from before uploads.
            None if status == reqwest::StatusCode::NOT_FOUND => format!(
                "the hub refused the upload (HTTP {status}): it takes no uploads (an older version?)"
            ),
            None => format!("the hub refused the upload (HTTP {status})"),
        };
        return Err(upload_error(field("code"), message));
    }
    match body.get("id").and_then(Value::as_str) {
        Some(id) if !id.is_empty() => Ok(Uploaded {
            id: id.to_string(),
            size: body.get("size").and_then(Value::as_u64),
        }),
        _ => Err(upload_error(
            None,
            format!("the hub's answer to the upload has no media id: {body}"),
        )),
    }
}

/// The whole file, refusing (without reading on) more than the limit.
async fn read_bounded(path: &Path) -> Result<Vec<u8>, String> {
    let file = tokio::fs::File::open(path)
        .await
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let mut bytes = Vec::new();
    file.take(MAX_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .await
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Err(format!(
            "cannot send {}: it grew over the limit of {}",
            path.display(),
            human_size(MAX_FILE_BYTES)
        ));
    }
    Ok(bytes)
}

/// The `send` of an uploaded file (without its `request_id`).
pub(super) fn send_body(
    contact: &str,
    file: &FileToSend,
    media_id: &str,
    caption: Option<&str>,
) -> Value {
    let kind = kind_of(file.mime);
    let mut media = json!({"kind": kind.as_str(), "id": media_id});
    if kind == MediaKind::Document {
        media["filename"] = json!(file.filename);
    }
    if let Some(caption) = caption {
        media["caption"] = json!(caption);
    }
    json!({"type": "whatsapp_command",
           "command": {"action": "send", "contact": contact, "media": media}})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn types_and_kinds_follow_the_extension() {
        let kind = |name: &str| mime_type(Path::new(name)).map(|m| (m, kind_of(m)));
        assert_eq!(kind("a/Photo.JPG"), Some(("image/jpeg", MediaKind::Image)));
        assert_eq!(kind("x.png"), Some(("image/png", MediaKind::Image)));
        assert_eq!(kind("s.webp"), Some(("image/webp", MediaKind::Sticker)));
        assert_eq!(kind("v.ogg"), Some(("audio/ogg", MediaKind::Audio)));
        assert_eq!(kind("v.mp3"), Some(("audio/mpeg", MediaKind::Audio)));
        assert_eq!(kind("c.3gp"), Some(("video/3gpp", MediaKind::Video)));
        assert_eq!(
            kind("r.pdf"),
            Some(("application/pdf", MediaKind::Document))
        );
        assert_eq!(kind("n.txt"), Some(("text/plain", MediaKind::Document)));
        assert_eq!(kind("s.xlsx").map(|k| k.1), Some(MediaKind::Document));
        for other in ["a.exe", "a.gif", "a.tar.gz", "noext", ".pdf"] {
            assert_eq!(kind(other), None, "{other}");
        }
    }

    #[test]
    fn checks_refuse_before_reading() {
        let dir = std::env::temp_dir().join(format!("mcp-hub-upload-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let ok = dir.join("report.pdf");
        std::fs::write(&ok, b"%PDF-1.4").unwrap();
        assert_eq!(
            check(&ok),
            Ok(FileToSend {
                path: ok.clone(),
                filename: "report.pdf".into(),
                mime: "application/pdf"
            })
        );
        let empty = dir.join("empty.txt");
        std::fs::write(&empty, b"").unwrap();
        assert!(check(&empty).unwrap_err().contains("empty"));
        // Over the limit: a sparse file, refused by its size alone.
        let big = dir.join("big.mp4");
        let f = std::fs::File::create(&big).unwrap();
        f.set_len(MAX_FILE_BYTES + 1).unwrap();
        let err = check(&big).unwrap_err();
        assert!(err.contains("over the limit of 100.0 MB"), "{err}");
        let err = check(&dir.join("x.exe")).unwrap_err();
        assert!(err.contains("does not take that type"), "{err}");
        let err = check(&dir.join("missing.pdf")).unwrap_err();
        assert!(err.starts_with("cannot read "), "{err}");
        std::fs::create_dir_all(dir.join("folder.pdf")).unwrap();
        assert!(
            check(&dir.join("folder.pdf"))
                .unwrap_err()
                .contains("not a regular file")
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_send_names_the_upload() {
        let file = |name: &str, mime| FileToSend {
            path: PathBuf::from(name),
            filename: name.into(),
            mime,
        };
        assert_eq!(
            send_body("John", &file("r.pdf", "application/pdf"), "m1", Some("Q3")),
            json!({"type": "whatsapp_command", "command": {"action": "send", "contact": "John",
                "media": {"kind": "document", "id": "m1", "filename": "r.pdf", "caption": "Q3"}}})
        );
        assert_eq!(
            send_body("John", &file("a.png", "image/png"), "m2", None)["command"]["media"],
            json!({"kind": "image", "id": "m2"})
        );
        assert_eq!(
            send_body("John", &file("s.webp", "image/webp"), "m3", None)["command"]["media"]["kind"],
            "sticker"
        );
    }

    #[test]
    fn the_endpoint_encodes_the_session() {
        assert_eq!(
            media_endpoint("http://127.0.0.1:8002", "default")
                .unwrap()
                .as_str(),
            "http://127.0.0.1:8002/api/v1/sessions/default/media"
        );
        assert_eq!(
            media_endpoint("https://hub.example", "a b/c")
                .unwrap()
                .as_str(),
            "https://hub.example/api/v1/sessions/a%20b%2Fc/media"
        );
    }
}
