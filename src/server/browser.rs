//! Browser safety and the connection caps: the `Host` allow-list of every
//! route against DNS rebinding (403 `host_not_allowed`, [`allowed_host`]),
//! the `Origin` check of a WebSocket upgrade against cross-site WebSocket
//! hijacking (403 `forbidden_origin`), the WebSocket slots of an instance
//! (`MAX_CONNECTIONS`, 503) and of one token `sub`
//! (`MAX_CONNECTIONS_PER_IDENTITY`, 429), both `too_many_connections`, the
//! security headers of the pages ([`Page`]: CSP, no framing), and the REST
//! API's CORS layer (only with `ALLOWED_ORIGINS`). docs/security.md
//! section 7 is the design.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Json;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use base64::Engine;
use serde_json::json;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tower_http::cors::{AllowOrigin, CorsLayer};

use crate::auth::Identity;
use crate::config::normalize_origin;
use crate::hub::Hub;
use crate::metrics::{Metrics, Shed};
use crate::protocol::ErrorCode;

/// An HTTP error before the upgrade, with the same JSON body as a
/// WebSocket `error` message.
pub fn upgrade_error(status: StatusCode, code: ErrorCode, message: &str) -> Response {
    let body = json!({"type": "error", "code": code.as_str(), "message": message});
    (status, Json(body)).into_response()
}

/// Every route: a request whose `Host` is not in `ALLOWED_HOSTS` (IP
/// literals always are) gets 403 `host_not_allowed` before anything else
/// runs. A page of a name the attacker controls, rebound to this hub's
/// address, sends that name as `Host`, and its `Origin` then matches it:
/// refusing the name is what keeps the same-host `Origin` rule sound.
/// Without a `Host` header (HTTP/2) the URI's authority is checked.
pub async fn allowed_host(State(hub): State<Arc<Hub>>, req: Request, next: Next) -> Response {
    let hosts = &hub.config().limits.allowed_hosts;
    let allowed = match req.headers().get(header::HOST) {
        Some(host) => host.to_str().is_ok_and(|host| hosts.allows(Some(host))),
        None => hosts.allows(req.uri().authority().map(|a| a.host())),
    };
    if allowed {
        return next.run(req).await;
    }
    hub.metrics().shed(Shed::HostNotAllowed);
    hub.metrics().error(ErrorCode::HostNotAllowed);
    upgrade_error(
        StatusCode::FORBIDDEN,
        ErrorCode::HostNotAllowed,
        "this Host is not served here; list the name in ALLOWED_HOSTS",
    )
}

/// Whether a WebSocket upgrade may proceed as far as its `Origin` goes.
///
/// No `Origin` (terminals, agents, scripts): yes. With `allowed` (from
/// `ALLOWED_ORIGINS`): exactly those origins. Otherwise the page must come
/// from the host it connects to: the Origin's host[:port] equals `Host`.
pub fn origin_allowed(headers: &HeaderMap, allowed: &[String]) -> bool {
    let Some(origin) = headers.get(header::ORIGIN) else {
        return true;
    };
    let Ok(origin) = origin.to_str() else {
        return false;
    };
    let origin = normalize_origin(origin);
    if !allowed.is_empty() {
        return allowed.contains(&origin);
    }
    let Some((scheme, authority)) = origin.split_once("://") else {
        // `null` (sandboxed frames, file://) and anything malformed.
        return false;
    };
    let Some(host) = headers.get(header::HOST).and_then(|h| h.to_str().ok()) else {
        return false;
    };
    let host = host.trim().to_ascii_lowercase();
    without_default_port(scheme, authority) == without_default_port(scheme, &host)
}

/// `example.com:443` and `example.com` are the same place for https.
fn without_default_port<'a>(scheme: &str, authority: &'a str) -> &'a str {
    let default = match scheme {
        "http" | "ws" => ":80",
        "https" | "wss" => ":443",
        _ => return authority,
    };
    authority.strip_suffix(default).unwrap_or(authority)
}

/// The 403 for a disallowed `Origin`.
pub fn forbidden_origin() -> Response {
    upgrade_error(
        StatusCode::FORBIDDEN,
        ErrorCode::ForbiddenOrigin,
        "this Origin may not open a WebSocket here (same host only, or list it in ALLOWED_ORIGINS)",
    )
}

/// The instance's WebSocket connection slots: `MAX_CONNECTIONS` in all,
/// and with auth on `MAX_CONNECTIONS_PER_IDENTITY` per token `sub` (with
/// auth off there is no identity; the per-address cap of the listener
/// applies). A slot is taken before the upgrade and held by the
/// connection until it ends, so concurrent upgrades cannot overshoot a cap.
#[derive(Clone)]
pub struct ConnectionSlots {
    instance: Arc<Semaphore>,
    identities: Arc<IdentitySlots>,
}

/// How many WebSockets each `sub` holds; a `sub` holding none has no
/// entry, so the map is bounded by `MAX_CONNECTIONS`.
struct IdentitySlots {
    max: usize,
    held: Mutex<HashMap<String, usize>>,
}

/// A connection's slot: freed when dropped.
pub struct Slot {
    _instance: OwnedSemaphorePermit,
    _identity: Option<IdentitySlot>,
}

struct IdentitySlot {
    slots: Arc<IdentitySlots>,
    sub: String,
}

impl Drop for IdentitySlot {
    fn drop(&mut self) {
        let mut held = self
            .slots
            .held
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(n) = held.get_mut(&self.sub) {
            *n -= 1;
            if *n == 0 {
                held.remove(&self.sub);
            }
        }
    }
}

impl ConnectionSlots {
    pub fn new(max: usize, max_per_identity: usize) -> Self {
        ConnectionSlots {
            instance: Arc::new(Semaphore::new(max.min(Semaphore::MAX_PERMITS))),
            identities: Arc::new(IdentitySlots {
                max: max_per_identity,
                held: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// A slot for a connection of `identity` (None with auth off), or why
    /// there is none (counted).
    pub fn take(&self, identity: Option<&Identity>, metrics: &Metrics) -> Result<Slot, NoSlot> {
        let identity = match identity {
            Some(id) => match self.take_identity(&id.sub) {
                Some(slot) => Some(slot),
                None => {
                    metrics.shed(Shed::ConnectionsPerIdentity);
                    metrics.error(ErrorCode::TooManyConnections);
                    return Err(NoSlot::Identity);
                }
            },
            None => None,
        };
        match self.instance.clone().try_acquire_owned() {
            Ok(permit) => Ok(Slot {
                _instance: permit,
                _identity: identity,
            }),
            Err(_) => {
                metrics.error(ErrorCode::TooManyConnections);
                Err(NoSlot::Instance)
            }
        }
    }

    fn take_identity(&self, sub: &str) -> Option<IdentitySlot> {
        let mut held = self
            .identities
            .held
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let n = held.entry(sub.to_string()).or_insert(0);
        if *n >= self.identities.max {
            return None;
        }
        *n += 1;
        Some(IdentitySlot {
            slots: self.identities.clone(),
            sub: sub.to_string(),
        })
    }
}

/// Why a WebSocket upgrade got no [`Slot`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoSlot {
    /// Every `MAX_CONNECTIONS` slot of the instance is taken: 503.
    Instance,
    /// The token's `sub` holds `MAX_CONNECTIONS_PER_IDENTITY`: 429.
    Identity,
}

impl IntoResponse for NoSlot {
    fn into_response(self) -> Response {
        match self {
            NoSlot::Instance => upgrade_error(
                StatusCode::SERVICE_UNAVAILABLE,
                ErrorCode::TooManyConnections,
                "this instance holds MAX_CONNECTIONS connections; retry later or elsewhere",
            ),
            NoSlot::Identity => upgrade_error(
                StatusCode::TOO_MANY_REQUESTS,
                ErrorCode::TooManyConnections,
                "this token's sub holds MAX_CONNECTIONS_PER_IDENTITY connections on this instance; close one first",
            ),
        }
    }
}

/// A page served from the binary (the web client, the dashboard) with the
/// headers that keep it from being framed or sniffed, and a
/// Content-Security-Policy that runs only scripts served by this hub (the
/// modules of [`super::assets`]: `'self'`) and, should a page carry any,
/// its own inline scripts and styles (by their SHA-256, computed once),
/// talks only to its own origin, and loads nothing else.
pub struct Page {
    html: &'static str,
    csp: HeaderValue,
}

impl Page {
    pub fn new(html: &'static str) -> Page {
        let hashes = |tag: &str| -> String {
            inline_blocks(html, tag)
                .map(|block| {
                    let digest = ring::digest::digest(&ring::digest::SHA256, block.as_bytes());
                    let b64 = base64::engine::general_purpose::STANDARD.encode(digest.as_ref());
                    format!(" 'sha256-{b64}'")
                })
                .collect()
        };
        let csp = format!(
            "default-src 'none'; script-src 'self'{}; style-src{}; connect-src 'self'; img-src 'self' blob:; media-src 'self' blob:; \
             base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
            hashes("script"),
            hashes("style"),
        );
        Page {
            html,
            csp: HeaderValue::from_str(&csp).expect("a CSP is ASCII"),
        }
    }

    pub fn response(&self) -> Response {
        let headers = [
            (header::CONTENT_SECURITY_POLICY, self.csp.clone()),
            (header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY")),
            (
                header::X_CONTENT_TYPE_OPTIONS,
                HeaderValue::from_static("nosniff"),
            ),
            (
                header::REFERRER_POLICY,
                HeaderValue::from_static("no-referrer"),
            ),
        ];
        (headers, axum::response::Html(self.html)).into_response()
    }
}

/// The text of every inline `<tag …>…</tag>` element of `html`, as a
/// browser hashes it for the CSP; an element loaded from a `src` has none.
fn inline_blocks<'a>(html: &'a str, tag: &str) -> impl Iterator<Item = &'a str> {
    let open = format!("<{tag}");
    let close = format!("</{tag}>");
    let mut rest = html;
    let elements = std::iter::from_fn(move || {
        let start = rest.find(&open)?;
        let element = &rest[start..];
        let tag_end = element.find('>')?;
        let loaded = element[..tag_end].contains(" src=");
        let body = &element[tag_end + 1..];
        let end = body.find(&close)?;
        rest = &body[end + close.len()..];
        Some((loaded, &body[..end]))
    });
    elements.filter_map(|(loaded, body)| (!loaded).then_some(body))
}

/// CORS for the REST API, for exactly the `ALLOWED_ORIGINS`; None (no CORS
/// headers at all, preflights answered 405) when the list is empty.
pub fn cors_layer(allowed: &[String]) -> Option<CorsLayer> {
    if allowed.is_empty() {
        return None;
    }
    let origins: Vec<HeaderValue> = allowed
        .iter()
        .filter_map(|o| HeaderValue::from_str(o).ok())
        .collect();
    Some(
        CorsLayer::new()
            .allow_origin(AllowOrigin::list(origins))
            .allow_methods([Method::GET, Method::POST])
            .allow_headers([
                header::CONTENT_TYPE,
                header::AUTHORIZATION,
                HeaderName::from_static("x-client-id"),
            ])
            .max_age(Duration::from_secs(600)),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(origin: Option<&str>, host: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, HeaderValue::from_str(host).unwrap());
        if let Some(o) = origin {
            h.insert(header::ORIGIN, HeaderValue::from_str(o).unwrap());
        }
        h
    }

    #[test]
    fn same_host_by_default() {
        let none: &[String] = &[];
        assert!(origin_allowed(&headers(None, "hub:8002"), none));
        assert!(origin_allowed(
            &headers(Some("http://hub:8002"), "hub:8002"),
            none
        ));
        assert!(origin_allowed(
            &headers(Some("https://Hub.Example"), "hub.example:443"),
            none
        ));
        assert!(!origin_allowed(
            &headers(Some("http://evil:8002"), "hub:8002"),
            none
        ));
        assert!(!origin_allowed(
            &headers(Some("http://hub:8003"), "hub:8002"),
            none
        ));
        assert!(!origin_allowed(&headers(Some("null"), "hub:8002"), none));
    }

    #[test]
    fn a_pages_csp_allows_the_hubs_scripts_and_hashes_each_inline_one() {
        let page = Page::new(
            "<style>a{}</style><p>x</p><script>\"use strict\";</script><script>1</script>",
        );
        let csp = page.csp.to_str().unwrap();
        let sha = |text: &str| {
            let digest = ring::digest::digest(&ring::digest::SHA256, text.as_bytes());
            base64::engine::general_purpose::STANDARD.encode(digest.as_ref())
        };
        assert!(
            csp.contains(&format!(
                "script-src 'self' 'sha256-{}' 'sha256-{}';",
                sha("\"use strict\";"),
                sha("1")
            )),
            "{csp}"
        );
        assert!(
            csp.contains(&format!("style-src 'sha256-{}';", sha("a{}"))),
            "{csp}"
        );
        assert!(csp.contains("frame-ancestors 'none'"), "{csp}");
        assert!(!csp.contains("unsafe"), "{csp}");
        // A page whose scripts are all served modules: `'self'` alone.
        let modules =
            Page::new("<style>a{}</style><script type=\"module\" src=\"/assets/x.js\"></script>");
        let csp = modules.csp.to_str().unwrap();
        assert!(csp.contains("script-src 'self';"), "{csp}");
        assert!(!csp.contains("unsafe") && !csp.contains("http"), "{csp}");
    }

    #[test]
    fn one_identity_holds_at_most_its_share_of_slots() {
        let metrics = Metrics::new("test");
        let slots = ConnectionSlots::new(3, 2);
        let id = |sub: &str| Identity {
            sub: sub.into(),
            role: crate::auth::Role::Client,
            sessions: vec!["*".into()],
            exp: u64::MAX,
            scopes: vec![],
            audiences: vec![],
        };
        let (alice, bob) = (id("alice"), id("bob"));
        let a1 = slots.take(Some(&alice), &metrics).unwrap();
        let _a2 = slots.take(Some(&alice), &metrics).unwrap();
        let refused = slots.take(Some(&alice), &metrics).err().unwrap();
        assert_eq!(refused, NoSlot::Identity);
        assert_eq!(
            refused.into_response().status(),
            StatusCode::TOO_MANY_REQUESTS
        );
        let _b1 = slots.take(Some(&bob), &metrics).unwrap();
        // The instance is full: 503 for anyone, auth off included.
        let full = slots.take(None, &metrics).err().unwrap();
        assert_eq!(
            full.into_response().status(),
            StatusCode::SERVICE_UNAVAILABLE
        );
        drop(a1);
        let _a3 = slots.take(Some(&alice), &metrics).unwrap();
        drop(_b1);
        assert!(slots.identities.held.lock().unwrap().get("bob").is_none());
    }

    #[test]
    fn listed_origins_only_when_configured() {
        let allowed = vec!["https://app.example".to_string()];
        assert!(origin_allowed(
            &headers(Some("https://app.example"), "hub"),
            &allowed
        ));
        assert!(origin_allowed(&headers(None, "hub"), &allowed));
        assert!(!origin_allowed(
            &headers(Some("http://hub"), "hub"),
            &allowed
        ));
    }
}
