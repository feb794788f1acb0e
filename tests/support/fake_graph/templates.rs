//! `GET /{version}/{waba_id}/message_templates` (§11.2): the templates of
//! one WhatsApp Business Account, filtered by `status`, trimmed to
//! `fields`, `limit` at a time (25 by default: Meta's default page size is
//! unverified) with cursor paging.

use std::collections::HashMap;
use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, Uri};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use serde_json::{Map, Value, json};

use super::errors::{self, GraphError};
use super::{GraphRequest, Inner};

const DEFAULT_LIMIT: usize = 25;

/// Cursors are opaque to clients; here, the base64 of a template id.
fn cursor(template: &Value) -> String {
    let id = template["id"].as_str().unwrap_or_default();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(id)
}

fn decode_cursor(cursor: &str) -> Option<String> {
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(cursor)
        .ok()?;
    String::from_utf8(bytes).ok()
}

/// The token must be one of a number of `waba` (401 otherwise); an
/// account the fake does not know is Graph's "does not exist".
fn authorize(inner: &Inner, waba: &str, headers: &HeaderMap) -> Result<(), GraphError> {
    inner.authorize_any(headers)?;
    let token = Inner::bearer(headers);
    let state = inner.state();
    let mut numbers = state.numbers.values().filter(|n| n.waba == waba).peekable();
    if numbers.peek().is_none() && !state.templates.contains_key(waba) {
        return Err(errors::no_such_object("get", waba));
    }
    if numbers.any(|n| Some(n.token.as_str()) == token) {
        Ok(())
    } else {
        Err(errors::invalid_token())
    }
}

pub(super) async fn list(
    State(inner): State<Arc<Inner>>,
    Path((_version, waba)): Path<(String, String)>,
    Query(query): Query<HashMap<String, String>>,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    inner.record(GraphRequest::new("GET", &uri, &headers, Value::Null));
    if let Err(r) = authorize(&inner, &waba, &headers) {
        return r.into_response();
    }
    let limit = match query.get("limit").map(|l| l.parse::<usize>()) {
        None => DEFAULT_LIMIT,
        Some(Ok(n)) if n > 0 => n,
        Some(_) => return errors::param("Param limit must be a positive integer.").into_response(),
    };
    // `status=approved` in Meta's example, `APPROVED` in answers.
    let wanted: Option<Vec<String>> = query.get("status").map(|s| {
        s.split(',')
            .map(|s| s.trim().to_ascii_uppercase())
            .collect()
    });
    let all: Vec<Value> = inner
        .state()
        .templates
        .get(&waba)
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .filter(|t| {
            let status = t["status"]
                .as_str()
                .unwrap_or_default()
                .to_ascii_uppercase();
            wanted.as_ref().is_none_or(|w| w.contains(&status))
        })
        .collect();
    let start = match query.get("after") {
        None => 0,
        Some(after) => {
            let id = decode_cursor(after);
            match all.iter().position(|t| id.as_deref() == t["id"].as_str()) {
                Some(i) => i + 1,
                None => return errors::param("Invalid cursor: after.").into_response(),
            }
        }
    };
    let page: Vec<Value> = all.iter().skip(start).take(limit).cloned().collect();
    let more = start + page.len() < all.len();
    let fields: Option<Vec<&str>> = query.get("fields").map(|f| {
        f.split(',')
            .map(str::trim)
            .filter(|f| !f.is_empty())
            .collect()
    });
    let data: Vec<Value> = page
        .iter()
        .map(|t| match &fields {
            None => t.clone(),
            Some(fields) => project(t, fields),
        })
        .collect();
    let mut answer = json!({"data": data});
    if let (Some(first), Some(last)) = (page.first(), page.last()) {
        let mut paging = json!({"cursors": {"before": cursor(first)}});
        // `after` and `next` only while more remain: a client pages
        // until `next` is gone.
        if more {
            let after = cursor(last);
            paging["cursors"]["after"] = json!(after);
            paging["next"] = json!(next_url(&inner.base, &uri, &after));
        }
        answer["paging"] = paging;
    }
    Json(answer).into_response()
}

/// Only the asked `fields` of a template, and its `id` always.
fn project(template: &Value, fields: &[&str]) -> Value {
    let mut out = Map::new();
    for f in fields.iter().copied().chain(["id"]) {
        if let Some(v) = template.get(f) {
            out.insert(f.to_string(), v.clone());
        }
    }
    Value::Object(out)
}

/// The same request on the fake with `after` set: an absolute URL.
fn next_url(base: &str, uri: &Uri, after: &str) -> String {
    let mut url = reqwest::Url::parse(&format!("{base}{uri}")).expect("fake URL");
    let kept: Vec<(String, String)> = url
        .query_pairs()
        .filter(|(k, _)| k != "after")
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    url.query_pairs_mut()
        .clear()
        .extend_pairs(kept)
        .append_pair("after", after);
    url.to_string()
}
