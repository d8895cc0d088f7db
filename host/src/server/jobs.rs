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
            format!(
                "no function named {} is deployed",
                crate::text::quote(&name)
            ),
        );
    }
    let policy = state.services.job_settings().callbacks.policy();
    let mut job = match parse_submit(name, &body, crate::clock::now_ms(), policy) {
        Ok(job) => job,
        Err(message) => return bad(message),
    };
    // A trusted function's input is sealed for the trusted worker: the
    // job's message holds ciphertext only it opens.
    if let (Some(worker), Some(d)) = (
        &state.guard.trusted_worker,
        state.dispatcher.get(&job.function),
    ) && d.profile.trusted
    {
        let max = crate::backends::sealed_queues::MAX_SEALED_BODY_BYTES;
        if job.payload.len() > max {
            return bad(format!(
                "the input is over the limit of {max} bytes for a trusted function (sealing adds {})",
                crate::backends::sealed_queues::OVERHEAD
            ));
        }
        let aad = crate::trusted::job_input_aad(&job.function);
        job.payload = match worker.seal(&aad, &job.payload) {
            Ok(sealed) => sealed,
            Err(e) => return job_error(e),
        };
    }
    match state.services.jobs().submit(job).await {
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

/// A submission's body as the job to submit for `function` at `now`, with
/// its callback URL checked against `policy`; or why not.
pub(crate) fn parse_submit(
    function: String,
    body: &[u8],
    now: u64,
    policy: &crate::jobs::callback::CallbackPolicy,
) -> Result<NewJob, String> {
    let req: Submit = if body.is_empty() {
        Submit::default()
    } else {
        match serde_json::from_slice(body) {
            Ok(r) => r,
            Err(e) => {
                return Err(format!(
                    "the body must be {{\"input\": …, \"callback_url\", \"reply_to\", \"correlation_id\", \"delay\", \"not_before\", \"not_before_ms\"}}: {}",
                    super::json_error(e)
                ));
            }
        }
    };
    if let Some(url) = &req.callback_url {
        policy.check_url(url).map_err(|e| e.to_string())?;
    }
    if let Some(q) = &req.reply_to {
        crate::names::QueueName::parse_user(q).map_err(|e| format!("reply_to: {e}"))?;
    }
    if let Some(c) = &req.correlation_id
        && (c.is_empty() || c.len() > crate::queue::MAX_ID_BYTES)
    {
        return Err(format!(
            "correlation_id is {} bytes; it must be 1 to {} bytes",
            c.len(),
            crate::queue::MAX_ID_BYTES
        ));
    }
    let delay_ms = match req.delay.as_deref().map(super::queues::parse_delay) {
        None => None,
        Some(Ok(ms)) => Some(ms),
        Some(Err(e)) => return Err(e.to_string()),
    };
    let not_before_ms = match (&req.not_before, req.not_before_ms) {
        (Some(_), Some(_)) => {
            return Err("give not_before or not_before_ms, not both".into());
        }
        (Some(t), None) => match chrono::DateTime::parse_from_rfc3339(t) {
            Ok(at) => Some(u64::try_from(at.timestamp_millis()).unwrap_or(0)),
            Err(e) => {
                return Err(format!(
                    "not_before {} is not an RFC 3339 time ({e}); write e.g. \"2026-12-01T03:00:00Z\"",
                    crate::text::quote(t)
                ));
            }
        },
        (None, ms) => ms,
    };
    crate::queue::check_schedule(delay_ms, not_before_ms, now).map_err(|e| e.to_string())?;
    let job = NewJob {
        function,
        payload: req.input.map(super::queues::body_bytes).unwrap_or_default(),
        callback_url: req.callback_url,
        reply_to: req.reply_to,
        correlation_id: req.correlation_id,
        not_before_ms,
        delay_ms,
    };
    if job.payload.len() > crate::queue::MAX_BODY_BYTES {
        return Err(format!(
            "the input is over the limit of {} bytes",
            crate::queue::MAX_BODY_BYTES
        ));
    }
    Ok(job)
}

async fn status(State(state): State<AppState>, Path(id): Path<String>) -> Response {
    match state.services.jobs().get(id.clone()).await {
        Ok(Some(record)) => Json(record.to_json()).into_response(),
        Ok(None) => error(
            StatusCode::NOT_FOUND,
            "not_found",
            format!(
                "no job {}: it never existed or its record expired",
                crate::text::quote(&id)
            ),
        ),
        Err(e) => job_error(e),
    }
}

fn job_error(e: QueueError) -> Response {
    match e {
        QueueError::Invalid(m) => bad(m),
        QueueError::Unsupported(m) => error(StatusCode::NOT_IMPLEMENTED, "not_supported", m),
        e => {
            tracing::error!(error = %e, "job store failure");
            error(
                StatusCode::SERVICE_UNAVAILABLE,
                "jobs_unavailable",
                "the job store failed; try again",
            )
        }
    }
}
