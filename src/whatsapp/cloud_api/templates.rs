//! The account's message templates (`GET /{waba_id}/message_templates`),
//! paged by the `after` cursor; bounded in pages and templates.

use serde::Deserialize;
use serde_json::Value;

use super::CloudApiConnector;
use super::request;
use crate::config::whatsapp::NumberSettings;
use crate::protocol::{ErrorCode, HubError};
use crate::whatsapp::TemplateInfo;

/// Templates asked per page, and most pages read.
const PAGE: usize = 100;
const MAX_PAGES: usize = 10;

#[derive(Deserialize)]
struct Page {
    #[serde(default)]
    data: Vec<Value>,
    #[serde(default)]
    paging: Option<Paging>,
}

#[derive(Deserialize)]
struct Paging {
    #[serde(default)]
    cursors: Option<Cursors>,
    #[serde(default)]
    next: Option<String>,
}

#[derive(Deserialize)]
struct Cursors {
    #[serde(default)]
    after: Option<String>,
}

/// How many `{{…}}` variables the components' texts hold.
fn variables(components: &Value) -> usize {
    let mut count = 0;
    let mut stack = vec![components];
    while let Some(v) = stack.pop() {
        match v {
            Value::String(s) => count += s.matches("{{").count(),
            Value::Array(items) => stack.extend(items),
            Value::Object(map) => {
                // Examples repeat the variables' sample values, not variables.
                stack.extend(map.iter().filter(|(k, _)| *k != "example").map(|(_, v)| v))
            }
            _ => {}
        }
    }
    count
}

fn info(item: &Value) -> Option<TemplateInfo> {
    let text = |key: &str| {
        item.get(key)
            .and_then(Value::as_str)
            .map(|s| s.chars().take(512).collect::<String>())
    };
    let components = item.get("components").cloned().unwrap_or(Value::Null);
    Some(TemplateInfo {
        name: text("name")?,
        language: text("language").unwrap_or_default(),
        status: text("status").unwrap_or_default(),
        category: text("category").unwrap_or_default(),
        parameters: variables(&components),
        components,
    })
}

pub(super) async fn list(
    api: &CloudApiConnector,
    number: &NumberSettings,
) -> Result<Vec<TemplateInfo>, HubError> {
    let waba = number.business_account_id.as_deref().ok_or_else(|| {
        HubError::new(
            ErrorCode::NotSupported,
            "listing templates needs the WhatsApp Business Account id (WHATSAPP_BUSINESS_ACCOUNT_ID, or PHONE_ID:SESSION:WABA_ID in WHATSAPP_NUMBERS)",
        )
    })?;
    let url = api.url(&format!("{waba}/message_templates"));
    let mut templates = Vec::new();
    let mut after: Option<String> = None;
    for _ in 0..MAX_PAGES {
        let limit = PAGE.to_string();
        let answer = request::call(api.deadline, |_| {
            let mut query = vec![
                ("fields", "name,language,status,category,components"),
                ("limit", limit.as_str()),
            ];
            if let Some(a) = &after {
                query.push(("after", a.as_str()));
            }
            api.http
                .get(&url)
                .query(&query)
                .bearer_auth(number.access_token.expose())
        })
        .await?;
        let page: Page = serde_json::from_value(answer).map_err(|e| {
            HubError::new(
                ErrorCode::ConnectorFailed,
                format!("the Cloud API's template list is not as documented: {e}"),
            )
        })?;
        templates.extend(page.data.iter().filter_map(info));
        // Only follow a cursor when Graph says there is a next page.
        after = page
            .paging
            .filter(|p| p.next.is_some())
            .and_then(|p| p.cursors)
            .and_then(|c| c.after)
            .filter(|a| !a.is_empty() && a.len() <= 1024);
        if after.is_none() {
            break;
        }
    }
    Ok(templates)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn variables_are_counted_outside_examples() {
        let components = json!([
            {"type": "HEADER", "format": "TEXT", "text": "Act fast, {{1}}!", "example": {"header_text": ["Pablo {{x}}"]}},
            {"type": "BODY", "text": "Code {{1}} expires in {{2}} days"}
        ]);
        assert_eq!(variables(&components), 3);
        let item = json!({"name": "promo", "language": "en", "status": "APPROVED", "category": "MARKETING", "components": components});
        let t = info(&item).unwrap();
        assert_eq!((t.name.as_str(), t.parameters), ("promo", 3));
        assert!(info(&json!({"language": "en"})).is_none());
    }
}
