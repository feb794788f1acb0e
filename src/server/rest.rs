//! The REST API for callers that don't hold a WebSocket: read a session,
//! read a conversation, run a command. Commands run exactly as if a client
//! sent them, so every WebSocket client of the session sees the result live.

use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::hub::Hub;
use crate::protocol::{
    AiContext, ClientInfo, ErrorCode, HubError, check_idempotency_key, parse_whatsapp_command,
};

pub fn routes() -> Router<Arc<Hub>> {
    Router::new()
        .route("/api/v1/sessions/{session}", get(session_summary))
        .route("/api/v1/sessions/{session}/history/{contact}", get(history))
        .route("/api/v1/sessions/{session}/commands", post(command))
}

struct ApiError(HubError);

impl From<HubError> for ApiError {
    fn from(e: HubError) -> Self {
        ApiError(e)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = match self.0.code {
            ErrorCode::StoreUnavailable
            | ErrorCode::AgentUnavailable
            | ErrorCode::AiUnavailable
            | ErrorCode::ShuttingDown => StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::AgentTimeout => StatusCode::GATEWAY_TIMEOUT,
            ErrorCode::AiRateLimited | ErrorCode::RateLimited => StatusCode::TOO_MANY_REQUESTS,
            ErrorCode::Internal | ErrorCode::AiFailed => StatusCode::BAD_GATEWAY,
            _ => StatusCode::BAD_REQUEST,
        };
        let body = json!({"code": self.0.code.as_str(), "message": self.0.message});
        (status, Json(body)).into_response()
    }
}

/// The REST caller as the session's clients see it (`by` of its messages).
fn rest_client(hub: &Hub, headers: &HeaderMap) -> ClientInfo {
    let client_id = headers
        .get("x-client-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.trim().is_empty() && v.len() <= 128)
        .unwrap_or("rest")
        .to_string();
    ClientInfo {
        client_name: client_id.clone(),
        client_id,
        instance: hub.instance().to_string(),
        capabilities: Vec::new(),
    }
}

fn check_session(session: &str) -> Result<(), ApiError> {
    if session.trim().is_empty() || session.len() > 128 || session.chars().any(char::is_control) {
        return Err(HubError::new(
            ErrorCode::InvalidField,
            "session must be 1 to 128 printable characters",
        )
        .into());
    }
    Ok(())
}

async fn session_summary(
    State(hub): State<Arc<Hub>>,
    Path(session): Path<String>,
) -> Result<Json<Value>, ApiError> {
    check_session(&session)?;
    let contacts = hub.session_contacts(&session).await?;
    let last_contact = hub.store.last_contact(&session).await?;
    let clients = hub.store.members(&session).await?;
    let agent = hub.store.agent(&session).await?;
    Ok(Json(json!({
        "session": session,
        "contacts": contacts,
        "total_count": contacts.len(),
        "last_contact": last_contact,
        "clients": clients,
        "agent": agent,
    })))
}

#[derive(Deserialize)]
struct HistoryQuery {
    limit: Option<usize>,
}

async fn history(
    State(hub): State<Arc<Hub>>,
    Path((session, contact)): Path<(String, String)>,
    query: Result<Query<HistoryQuery>, QueryRejection>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    check_session(&session)?;
    let Query(q) = query.map_err(|e| HubError::new(ErrorCode::InvalidField, e.body_text()))?;
    // Validated like a WebSocket get_history (limit 1 to 500).
    let mut command = json!({"action": "get_history", "contact": contact});
    if let Some(limit) = q.limit {
        command["limit"] = json!(limit);
    }
    let command = parse_whatsapp_command(command)?;
    run(&hub, &session, command, &rest_client(&hub, &headers))
        .await
        .map(Json)
}

/// `{"command": {"action": ...}}` runs a whatsapp_command;
/// `{"text": "send john hi", "context"?: {...}}` runs an AI command.
#[derive(Deserialize)]
struct CommandBody {
    #[serde(default)]
    command: Option<Value>,
    #[serde(default)]
    text: Option<String>,
    #[serde(default)]
    context: Option<AiContext>,
}

async fn command(
    State(hub): State<Arc<Hub>>,
    Path(session): Path<String>,
    headers: HeaderMap,
    body: Result<Json<CommandBody>, JsonRejection>,
) -> Result<Json<Value>, ApiError> {
    check_session(&session)?;
    let Json(body) = body.map_err(|e| HubError::new(ErrorCode::InvalidJson, e.body_text()))?;
    let client = rest_client(&hub, &headers);
    let key = idempotency_key(&headers)?;
    let key = key.as_deref();
    match (body.command, body.text) {
        (Some(cmd), None) => {
            let command = parse_whatsapp_command(cmd)?;
            Ok(Json(
                hub.run_command_once(&session, &command, &client, key)
                    .await?,
            ))
        }
        (None, Some(text)) => Ok(Json(
            hub.idempotent(
                &session,
                "whatsapp_ai_command",
                key,
                hub.execute_ai_command(&session, &text, body.context, &client),
            )
            .await?,
        )),
        _ => Err(HubError::new(
            ErrorCode::InvalidMessage,
            "give exactly one of `command` (an action object) or `text` (natural language)",
        )
        .into()),
    }
}

/// The `Idempotency-Key` header, validated like `idempotency_key`.
fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(v) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    let v = v.to_str().map_err(|_| {
        HubError::new(
            ErrorCode::InvalidField,
            "header `Idempotency-Key` must be printable ASCII",
        )
    })?;
    Ok(check_idempotency_key(Some(v.to_string()))?)
}

async fn run(
    hub: &Arc<Hub>,
    session: &str,
    command: crate::protocol::WhatsAppCommand,
    client: &ClientInfo,
) -> Result<Value, ApiError> {
    // The same path as a WebSocket `whatsapp_command`.
    Ok(hub.run_command(session, &command, client).await?)
}
