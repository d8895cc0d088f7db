//! `/v1/tokens`: make, list and revoke scoped admin tokens (admin scope
//! only). A new token is shown once, in the answer that makes it; the host
//! keeps only its hash.

use super::auth::Note;
use super::{AppState, error};
use crate::state::StateError;
use crate::tokens::Scope;
use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get};
use bytes::Bytes;
use serde::Deserialize;
use serde_json::json;

pub(crate) fn routes() -> axum::Router<AppState> {
    axum::Router::new()
        .route("/tokens", get(list).post(create))
        .route("/tokens/{id}", delete(revoke))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateRequest {
    scope: Scope,
    #[serde(default)]
    name: String,
    /// How long it works, e.g. `30d` (forever when absent).
    expires_in: Option<String>,
}

fn store_error(e: StateError) -> Response {
    match e {
        StateError::Invalid(m) => error(StatusCode::BAD_REQUEST, "bad_request", m),
        e => {
            tracing::error!(error = %e, "token store failed");
            error(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                format!("{e}; try again"),
            )
        }
    }
}

async fn create(State(state): State<AppState>, body: Bytes) -> Response {
    let shape =
        "{\"scope\": \"admin|deploy|invoke|read\", \"name\": \"…\", \"expires_in\": \"30d\"}";
    let req: CreateRequest = match super::json_body(&body, shape) {
        Ok(r) => r,
        Err(refusal) => return refusal,
    };
    let expires = match req.expires_in.as_deref().map(humantime::parse_duration) {
        None => None,
        Some(Ok(d)) => Some(d),
        Some(Err(e)) => {
            return error(
                StatusCode::BAD_REQUEST,
                "bad_request",
                format!("expires_in is a duration like 12h or 30d: {e}"),
            );
        }
    };
    match state
        .guard
        .tokens
        .create(&req.name, req.scope, expires)
        .await
    {
        Ok((record, token)) => {
            let mut response = (
                StatusCode::CREATED,
                Json(json!({
                    "id": record.id,
                    "name": record.name,
                    "scope": record.scope,
                    "created_at_ms": record.created_at_ms,
                    "expires_at_ms": record.expires_at_ms,
                    "token": token,
                })),
            )
                .into_response();
            response.extensions_mut().insert(Note(format!(
                "made {} (scope {})",
                record.id,
                record.scope.as_str()
            )));
            response
        }
        Err(e) => store_error(e),
    }
}

async fn list(State(state): State<AppState>) -> Response {
    match state.guard.tokens.list().await {
        Ok(records) => {
            let tokens: Vec<_> = records
                .into_iter()
                .map(|r| {
                    json!({
                        "id": r.id,
                        "name": r.name,
                        "scope": r.scope,
                        "created_at_ms": r.created_at_ms,
                        "expires_at_ms": r.expires_at_ms,
                    })
                })
                .collect();
            Json(json!({ "tokens": tokens })).into_response()
        }
        Err(e) => store_error(e),
    }
}

async fn revoke(State(state): State<AppState>, Path(id): Path<String>) -> Response {
    match state.guard.tokens.revoke(&id).await {
        Ok(true) => StatusCode::NO_CONTENT.into_response(),
        Ok(false) => error(
            StatusCode::NOT_FOUND,
            "not_found",
            format!(
                "no token with id {}; `fnhost tokens list` shows them",
                crate::text::quote(&id)
            ),
        ),
        Err(e) => store_error(e),
    }
}
