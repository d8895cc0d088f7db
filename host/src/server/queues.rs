//! The queue API under `/v1/queues`: send, stats, peek, dead letters
//! (list, redrive, purge) and purge. Bodies travel as JSON: a string body is
//! its UTF-8 bytes, any other JSON value is its serialization.

use super::{AppState, error};
use crate::queue::{DeadLetter, Message, NewMessage, QueueError};
use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::{Value, json};
use std::collections::BTreeMap;

pub(crate) fn routes() -> axum::Router<AppState> {
    axum::Router::new()
        .route("/queues", get(list))
        .route("/queues/{queue}", get(stats))
        .route(
            "/queues/{queue}/messages",
            post(send).get(peek).delete(purge),
        )
        .route(
            "/queues/{queue}/dead-letters",
            get(dead_letters).delete(purge_dead_letters),
        )
        .route("/queues/{queue}/dead-letters/redrive", post(redrive))
}

/// One message as the API takes it.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct SendMessage {
    body: Value,
    #[serde(default)]
    attributes: BTreeMap<String, String>,
    /// e.g. "5s"
    delay: Option<String>,
    not_before_ms: Option<u64>,
    dedup_id: Option<String>,
    group: Option<String>,
    #[serde(default)]
    priority: u8,
    correlation_id: Option<String>,
    reply_to: Option<String>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum SendRequest {
    Batch { messages: Vec<SendMessage> },
    One(SendMessage),
}

impl SendMessage {
    fn into_message(self) -> Result<NewMessage, String> {
        let delay_ms =
            (self.delay.as_deref().map(parse_delay).transpose()).map_err(|e| e.to_string())?;
        Ok(NewMessage {
            body: body_bytes(self.body),
            attributes: self.attributes.into_iter().collect(),
            not_before_ms: self.not_before_ms,
            delay_ms,
            dedup_id: self.dedup_id,
            group: self.group,
            priority: self.priority,
            correlation_id: self.correlation_id,
            reply_to: self.reply_to,
            dedup_scope: None,
        })
    }
}

/// A `delay` that is not a duration (the same text is refused again).
#[derive(Debug, thiserror::Error)]
#[error("delay {text} is not a duration ({}); write e.g. \"5s\"", crate::text::capped(.source.to_string(), 128))]
pub(crate) struct BadDelay {
    /// The delay as given, quoted and cut.
    text: String,
    #[source]
    source: humantime::DurationError,
}

/// A `delay` as milliseconds (saturated: the caller's range check names the limit).
pub(crate) fn parse_delay(d: &str) -> Result<u64, BadDelay> {
    humantime::parse_duration(d)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .map_err(|source| BadDelay {
            text: crate::text::quote(d),
            source,
        })
}

/// A string body is its text; anything else is its JSON.
pub(crate) fn body_bytes(body: Value) -> Vec<u8> {
    match body {
        Value::String(s) => s.into_bytes(),
        other => other.to_string().into_bytes(),
    }
}

fn message_json(m: &Message) -> Value {
    let mut v = serde_json::to_value(m).unwrap_or_default();
    v["body"] = json!(String::from_utf8_lossy(&m.body));
    v["size"] = json!(m.body.len());
    v["checkpoint_size"] = json!(m.checkpoint.as_ref().map(Vec::len));
    v
}

fn dead_letter_json(d: &DeadLetter) -> Value {
    json!({
        "message": message_json(&d.message),
        "error": d.error,
        "attempts": d.attempts,
        "function": d.function,
        "dead_at_ms": d.dead_at_ms,
    })
}

fn queue_error(e: QueueError) -> Response {
    match e {
        QueueError::Invalid(m) => error(StatusCode::BAD_REQUEST, "invalid_message", m),
        QueueError::Unsupported(m) => error(StatusCode::NOT_IMPLEMENTED, "not_supported", m),
        e => {
            tracing::error!(error = %e, "queue store failure");
            error(
                StatusCode::SERVICE_UNAVAILABLE,
                "queue_unavailable",
                "the queue store failed; try again",
            )
        }
    }
}

/// A refused request, turned into the JSON error response at the handler's edge.
struct Refused(&'static str, String);

impl IntoResponse for Refused {
    fn into_response(self) -> Response {
        error(StatusCode::BAD_REQUEST, self.0, self.1)
    }
}

fn check_name(queue: &str) -> Result<(), Refused> {
    crate::names::QueueName::parse(queue)
        .map(drop)
        .map_err(|e| Refused("invalid_queue", e.to_string()))
}

async fn send(
    State(state): State<AppState>,
    Path(queue): Path<String>,
    body: axum::body::Bytes,
) -> Response {
    if let Err(r) = check_name(&queue) {
        return r.into_response();
    }
    if let Err(e) = crate::queue::check_user_queue(&queue) {
        return queue_error(e);
    }
    let (messages, many) = match parse_send(&queue, &body, crate::clock::now_ms()) {
        Ok(parsed) => parsed,
        Err(message) => return error(StatusCode::BAD_REQUEST, "invalid_message", message),
    };
    match state.services.queues().send_batch(&queue, messages).await {
        Ok(sent) if many => {
            (StatusCode::CREATED, Json(json!({ "messages": sent }))).into_response()
        }
        Ok(mut sent) => (StatusCode::CREATED, Json(json!(sent.remove(0)))).into_response(),
        Err(e) => queue_error(e),
    }
}

/// A send request's body as the messages to store (and whether it was a
/// batch), each checked as a user's message at `now`; or why not.
pub(crate) fn parse_send(
    queue: &str,
    body: &[u8],
    now: u64,
) -> Result<(Vec<NewMessage>, bool), String> {
    let request: SendRequest = serde_json::from_slice(body).map_err(|e| {
        format!(
            "the body must be a message {{\"body\": …}} or {{\"messages\": [...]}}: {}",
            super::json_error(e)
        )
    })?;
    let (batch, many) = match request {
        SendRequest::Batch { messages } => (messages, true),
        SendRequest::One(m) => (vec![m], false),
    };
    if batch.is_empty() {
        return Err("the batch has no messages; send at least one".into());
    }
    if batch.len() > MAX_SEND_BATCH {
        return Err(format!(
            "{} messages is over the limit of {MAX_SEND_BATCH} per request; send them in several",
            batch.len()
        ));
    }
    let mut messages = Vec::with_capacity(batch.len());
    for (i, m) in batch.into_iter().enumerate() {
        let m = m
            .into_message()
            .and_then(|m| {
                crate::queue::validate_user(queue, &m, now)
                    .map(|()| m)
                    .map_err(|e| e.to_string())
            })
            .map_err(|e| format!("message {i}: {e}"))?;
        messages.push(m);
    }
    Ok((messages, many))
}

async fn list(State(state): State<AppState>) -> Response {
    let backend = state.services.queues();
    let mut names = match backend.queues().await {
        Ok(n) => n,
        Err(e) => return queue_error(e),
    };
    // Queues that functions consume (their bindings and job queues) show up even when empty.
    for d in state.dispatcher.active() {
        names.extend(d.manifest.queue_policies().into_iter().map(|p| p.queue));
    }
    names.sort();
    names.dedup();
    let mut out = Vec::with_capacity(names.len());
    for name in names {
        match describe(&state, &name).await {
            Ok(v) => out.push(v),
            Err(e) => return queue_error(e),
        }
    }
    Json(json!({ "queues": out })).into_response()
}

/// A queue's counts plus the functions bound to it with their scaling figures.
async fn describe(state: &AppState, queue: &str) -> Result<Value, QueueError> {
    let stats = state.services.queues().stats(queue).await?;
    let mut v = serde_json::to_value(&stats).unwrap_or_default();
    let bindings: Vec<Value> = state
        .dispatcher
        .active()
        .iter()
        .filter_map(|d| {
            let policy = d
                .manifest
                .queue_policies()
                .into_iter()
                .find(|p| p.queue == queue)?;
            Some((d, policy))
        })
        .map(|(d, policy)| {
            let live = state.services.binding_stats(&d.record.name, queue);
            json!({
                "function": d.record.name,
                "running": live.running.load(std::sync::atomic::Ordering::Relaxed),
                "desired": live.desired.load(std::sync::atomic::Ordering::Relaxed),
                "min_concurrency": policy.min_concurrency,
                "max_concurrency": policy.max_concurrency,
                "max_attempts": policy.max_attempts,
            })
        })
        .collect();
    v["functions"] = json!(bindings);
    Ok(v)
}

async fn stats(State(state): State<AppState>, Path(queue): Path<String>) -> Response {
    if let Err(r) = check_name(&queue) {
        return r.into_response();
    }
    match describe(&state, &queue).await {
        Ok(v) => Json(v).into_response(),
        Err(e) => queue_error(e),
    }
}

#[derive(Deserialize)]
struct Max {
    max: Option<usize>,
}

async fn peek(
    State(state): State<AppState>,
    Path(queue): Path<String>,
    Query(q): Query<Max>,
) -> Response {
    if let Err(r) = check_name(&queue) {
        return r.into_response();
    }
    match state
        .services
        .queues()
        .peek(&queue, q.max.unwrap_or(10).min(10_000))
        .await
    {
        Ok(ms) => Json(json!({ "messages": ms.iter().map(message_json).collect::<Vec<_>>() }))
            .into_response(),
        Err(e) => queue_error(e),
    }
}

async fn dead_letters(
    State(state): State<AppState>,
    Path(queue): Path<String>,
    Query(q): Query<Max>,
) -> Response {
    if let Err(r) = check_name(&queue) {
        return r.into_response();
    }
    match state
        .services
        .queues()
        .dead_letters(&queue, q.max.unwrap_or(100).min(1000))
        .await
    {
        Ok(ds) => {
            Json(json!({ "dead_letters": ds.iter().map(dead_letter_json).collect::<Vec<_>>() }))
                .into_response()
        }
        Err(e) => queue_error(e),
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Ids {
    ids: Option<Vec<String>>,
}

/// The most ids one redrive or purge names.
pub(crate) const MAX_IDS: usize = 1000;
/// The most messages one send carries.
pub(crate) const MAX_SEND_BATCH: usize = 1000;

fn ids(body: &[u8]) -> Result<Option<Vec<String>>, Refused> {
    if body.is_empty() {
        return Ok(None);
    }
    let ids = serde_json::from_slice::<Ids>(body)
        .map(|i| i.ids)
        .map_err(|e| {
            Refused(
                "bad_request",
                format!(
                    "the body must be empty or {{\"ids\": [...]}}: {}",
                    super::json_error(e)
                ),
            )
        })?;
    if let Some(ids) = &ids
        && ids.len() > MAX_IDS
    {
        return Err(Refused(
            "bad_request",
            format!(
                "{} ids is over the limit of {MAX_IDS} per request; send them in several",
                ids.len()
            ),
        ));
    }
    Ok(ids)
}

async fn redrive(
    State(state): State<AppState>,
    Path(queue): Path<String>,
    body: axum::body::Bytes,
) -> Response {
    let ids = match check_name(&queue).and_then(|()| ids(&body)) {
        Ok(ids) => ids,
        Err(r) => return r.into_response(),
    };
    match state.services.queues().redrive(&queue, ids).await {
        Ok(n) => Json(json!({ "redriven": n })).into_response(),
        Err(e) => queue_error(e),
    }
}

async fn purge_dead_letters(
    State(state): State<AppState>,
    Path(queue): Path<String>,
    body: axum::body::Bytes,
) -> Response {
    let ids = match check_name(&queue).and_then(|()| ids(&body)) {
        Ok(ids) => ids,
        Err(r) => return r.into_response(),
    };
    match state
        .services
        .queues()
        .purge_dead_letters(&queue, ids)
        .await
    {
        Ok(n) => Json(json!({ "purged": n })).into_response(),
        Err(e) => queue_error(e),
    }
}

async fn purge(State(state): State<AppState>, Path(queue): Path<String>) -> Response {
    if let Err(r) = check_name(&queue) {
        return r.into_response();
    }
    match state.services.queues().purge(&queue).await {
        Ok(n) => Json(json!({ "purged": n })).into_response(),
        Err(e) => queue_error(e),
    }
}
