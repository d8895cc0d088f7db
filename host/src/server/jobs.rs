//! The async-jobs API: submit any function as a job
//! (`POST /v1/functions/{name}/jobs` → `202` with its id and status URL) and
//! follow it (`GET /v1/jobs/{id}`).

use super::{AppState, error};
use crate::jobs::NewJob;
use crate::queue::QueueError;
use axum::Json;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::Value;

pub(crate) fn routes() -> axum::Router<AppState> {
    axum::Router::new()
        .route("/functions/{name}/jobs", post(submit))
        .route("/jobs/{id}", get(status))
}

/// A submission: the input and where to report completion.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Submit {
    /// The invoke payload: a string is its text, other JSON its serialization.
    input: Option<Value>,
    callback_url: Option<String>,
    reply_to: Option<String>,
    correlation_id: Option<String>,
    not_before_ms: Option<u64>,
    /// RFC 3339, e.g. "2026-12-01T03:00:00Z".
    not_before: Option<String>,
    /// e.g. "2s"
    delay: Option<String>,
}

fn bad(message: String) -> Response {
    error(StatusCode::BAD_REQUEST, "invalid_job", message)
}

async fn submit(
    State(state): State<AppState>,
    Path(name): Path<String>,
    body: axum::body::Bytes,
) -> Response {
    if state.dispatcher.get(&name).is_none() {
        return error(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no function named {name:?} is deployed"),
        );
    }
    let req: Submit = if body.is_empty() {
        Submit::default()
    } else {
        match serde_json::from_slice(&body) {
            Ok(r) => r,
            Err(e) => {
                return bad(format!(
                    "the body must be {{\"input\": …, \"callback_url\", \"reply_to\", \"correlation_id\", \"delay\", \"not_before\", \"not_before_ms\"}}: {e}"
                ));
            }
        }
    };
    if let Some(url) = &req.callback_url
        && !(url.starts_with("http://") || url.starts_with("https://"))
    {
        return bad(format!(
            "callback_url {url:?} must be an http:// or https:// URL"
        ));
    }
    if let Some(q) = &req.reply_to
        && (!crate::manifest::valid_name(q) || crate::queue::check_user_queue(q).is_err())
    {
        return bad(format!(
            "reply_to {q:?} is not a valid queue name; use lower-case letters, digits and '-', not starting with \"fnhost-\""
        ));
    }
    let delay_ms = match req.delay.as_deref().map(humantime::parse_duration) {
        None => None,
        Some(Ok(d)) => Some(d.as_millis() as u64),
        Some(Err(e)) => return bad(format!("delay is not a duration ({e}); write e.g. \"2s\"")),
    };
    let not_before_ms = match (&req.not_before, req.not_before_ms) {
        (Some(_), Some(_)) => {
            return bad("give not_before or not_before_ms, not both".into());
        }
        (Some(t), None) => match chrono::DateTime::parse_from_rfc3339(t) {
            Ok(at) => Some(u64::try_from(at.timestamp_millis()).unwrap_or(0)),
            Err(e) => {
                return bad(format!(
                    "not_before {t:?} is not an RFC 3339 time ({e}); write e.g. \"2026-12-01T03:00:00Z\""
                ));
            }
        },
        (None, ms) => ms,
    };
    let job = NewJob {
        function: name,
        payload: req.input.map(super::queues::body_bytes).unwrap_or_default(),
        callback_url: req.callback_url,
        reply_to: req.reply_to,
        correlation_id: req.correlation_id,
        not_before_ms,
        delay_ms,
    };
    if job.payload.len() > crate::queue::MAX_BODY_BYTES {
        return bad(format!(
            "the input is over the limit of {} bytes",
            crate::queue::MAX_BODY_BYTES
        ));
    }
    match state.dispatcher.jobs().submit(job).await {
        Ok(record) => {
            let location = format!("/v1/jobs/{}", record.id);
            (
                StatusCode::ACCEPTED,
                [(header::LOCATION, location)],
                Json(record.to_json()),
            )
                .into_response()
        }
        Err(e) => job_error(e),
    }
}

async fn status(State(state): State<AppState>, Path(id): Path<String>) -> Response {
    match state.dispatcher.jobs().get(id.clone()).await {
        Ok(Some(record)) => Json(record.to_json()).into_response(),
        Ok(None) => error(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no job {id:?}: it never existed or its record expired"),
        ),
        Err(e) => job_error(e),
    }
}

fn job_error(e: QueueError) -> Response {
    match e {
        QueueError::Invalid(m) => bad(m),
        QueueError::Backend(m) => {
            tracing::error!(error = %m, "job store failure");
            error(
                StatusCode::SERVICE_UNAVAILABLE,
                "jobs_unavailable",
                "the job store failed; try again",
            )
        }
    }
}
