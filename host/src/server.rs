//! The host's HTTP server: the admin API under `/v1/`, `/healthz`, and the
//! HTTP trigger for every other path.
//!
//! [`serve`] binds, answers until a shutdown signal, then stops accepting and
//! drains in-flight requests for at most the stopping wait time. Handlers
//! turn HTTP into dispatcher calls and back; they know nothing of wasm.

mod admin;
mod auth;
mod blobs;
mod conn;
mod invocations;
mod jobs;
mod queues;
mod tokens;
mod trigger;

use crate::dispatcher::Dispatcher;
use crate::records::Records;
use crate::services::Services;
use crate::telemetry::Telemetry;
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use auth::{Guard, load_or_create_token, token_path};
#[cfg(test)]
pub(crate) use jobs::parse_submit;
#[cfg(test)]
pub(crate) use queues::parse_send;

/// Settings of the HTTP server.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// The admin bearer token.
    pub token: String,
    /// Largest HTTP-trigger request body, in bytes (413 above it).
    pub max_body_bytes: usize,
    /// Largest deploy upload, in bytes.
    pub max_upload_bytes: usize,
    /// How long to drain in-flight requests on shutdown.
    pub stopping_wait_time: Duration,
    /// Connections open at once; one more is answered 503 and closed.
    pub max_connections: usize,
    /// How long a client may take to send a request's headers.
    pub header_read_timeout: Duration,
    /// How long a request body may go without sending anything.
    pub body_read_timeout: Duration,
    /// HTTP invocations that may wait for a free instance; one more is
    /// answered 503 with `Retry-After`.
    pub max_pending_requests: usize,
    /// Serve HTTP triggers (false on a host in the worker role: every
    /// route then answers 404 `worker_role`).
    pub http_triggers: bool,
}

impl ServerConfig {
    /// The defaults of `fnhost serve`, with `token`.
    pub fn new(token: String) -> ServerConfig {
        ServerConfig {
            token,
            max_body_bytes: 10 << 20,
            max_upload_bytes: 64 << 20,
            stopping_wait_time: Duration::from_secs(30),
            max_connections: 1024,
            header_read_timeout: Duration::from_secs(10),
            body_read_timeout: Duration::from_secs(30),
            max_pending_requests: 512,
            http_triggers: true,
        }
    }
}

/// What the server serves: the host's functions, its stores, who may do
/// what, and its history.
pub struct Served {
    /// Deployments, routes and invocations.
    pub dispatcher: Arc<Dispatcher>,
    /// The stores the API reads and changes.
    pub services: Arc<Services>,
    /// Tokens, the audit log, the trusted worker.
    pub guard: Guard,
    /// The invocation records.
    pub records: Arc<Records>,
    /// The metrics.
    pub telemetry: Arc<Telemetry>,
    /// Cancelled when the host begins to stop (`/readyz` says `draining`).
    pub stopping: CancellationToken,
}

/// What every handler can reach.
#[derive(Clone)]
pub(crate) struct AppState {
    pub dispatcher: Arc<Dispatcher>,
    pub services: Arc<Services>,
    pub config: Arc<ServerConfig>,
    pub guard: Guard,
    pub records: Arc<Records>,
    pub telemetry: Arc<Telemetry>,
    pub stopping: CancellationToken,
}

/// Build the router: admin API, health, HTTP trigger.
pub fn router(served: Served, config: ServerConfig) -> axum::Router {
    let state = AppState {
        dispatcher: served.dispatcher,
        services: served.services,
        config: Arc::new(config),
        guard: served.guard,
        records: served.records,
        telemetry: served.telemetry,
        stopping: served.stopping,
    };
    let scraped = axum::Router::new()
        .route("/metrics", axum::routing::get(metrics))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::require_token,
        ));
    axum::Router::new()
        .route("/healthz", axum::routing::get(healthz))
        .route("/readyz", axum::routing::get(readyz))
        .merge(scraped)
        .nest("/v1", admin::routes(state.clone()))
        .fallback(trigger::handle)
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            count_responses,
        ))
        .with_state(state)
}

/// Count every response by its kind and status, for `/metrics`.
async fn count_responses(
    State(state): State<AppState>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let kind = match req.uri().path() {
        p if p.starts_with("/v1/") => "api",
        "/healthz" | "/readyz" | "/metrics" => "health",
        _ => "trigger",
    };
    let response = next.run(req).await;
    state.telemetry.answered(kind, response.status().as_u16());
    response
}

/// `GET /metrics`: the host's figures in Prometheus' text format.
async fn metrics(State(state): State<AppState>) -> Response {
    let text = state.telemetry.render().await;
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response()
}

/// `{"status": "ok"}`; on a host with sensitive data, also the trusted
/// worker's pid (none while it is down: `"status": "degraded"`) and how
/// often the host lost it.
async fn healthz(State(state): State<AppState>) -> Json<serde_json::Value> {
    let Some(worker) = &state.guard.trusted_worker else {
        return Json(serde_json::json!({ "status": "ok" }));
    };
    let pid = worker.pid();
    Json(serde_json::json!({
        "status": if pid.is_some() { "ok" } else { "degraded" },
        "trusted_worker": { "pid": pid, "lost": worker.lost() },
    }))
}

/// Whether this host should be sent work: `200 {"status": "ready"}` once
/// it is serving (its registry loaded and its triggers started, both
/// before it listens); `503` with `"status": "draining"` once it has begun
/// to stop, and `"status": "degraded"` while the trusted worker of a host
/// with sensitive data is down (its supervisor restarts it). A load
/// balancer or Kubernetes readiness probe takes it out of rotation on a
/// 503; `/healthz` says whether the process is alive at all.
async fn readyz(State(state): State<AppState>) -> Response {
    let (status, why) = if state.stopping.is_cancelled() {
        (
            "draining",
            Some("the host is stopping: it finishes what it runs and takes no new work"),
        )
    } else if state
        .guard
        .trusted_worker
        .as_ref()
        .is_some_and(|w| w.pid().is_none())
    {
        (
            "degraded",
            Some(
                "the trusted worker is down and being restarted: trusted functions cannot run now",
            ),
        )
    } else {
        ("ready", None)
    };
    let body = Json(serde_json::json!({
        "status": status,
        "reason": why,
        "functions": state.dispatcher.active().len(),
    }));
    match why {
        None => (StatusCode::OK, body).into_response(),
        Some(_) => (StatusCode::SERVICE_UNAVAILABLE, body).into_response(),
    }
}

/// Serve on `listener` until `shutdown` is cancelled, then drain in-flight
/// HTTP requests and `background` invocations (queue messages) for at most
/// the stopping wait time; what is still running then is abandoned, and its
/// queue leases expire so the messages come back.
///
/// Connections are served by hyper (HTTP/1.1) under the config's caps: at
/// most `max_connections` at once (the next is answered `503` with
/// `Retry-After` and closed), `header_read_timeout` to send a request's
/// headers, and `body_read_timeout` between pieces of a body.
pub async fn serve(
    listener: tokio::net::TcpListener,
    served: Served,
    config: ServerConfig,
    shutdown: CancellationToken,
    background: TaskTracker,
) -> anyhow::Result<()> {
    let wait = config.stopping_wait_time;
    let limits = conn::Limits::from(&config);
    let dispatcher = served.dispatcher.clone();
    let app = router(served, config);
    let connections = TaskTracker::new();
    let accepting = conn::accept_loop(listener, app, limits, shutdown.clone(), connections.clone());
    accepting.await;
    connections.close();
    tracing::info!(in_flight = dispatcher.in_flight(), wait = ?wait, "shutting down: no new requests or messages; draining in-flight invocations");
    let drain = async {
        connections.wait().await;
        background.wait().await;
    };
    match tokio::time::timeout(wait, drain).await {
        Ok(()) => tracing::info!("drained; stopped"),
        Err(_) => tracing::warn!(
            in_flight = dispatcher.in_flight(),
            "the stopping wait time passed; abandoning in-flight invocations"
        ),
    }
    Ok(())
}

/// A JSON body's parse error, cut short: serde quotes the value it choked
/// on, which may be as long as the body.
pub(crate) fn json_error(e: serde_json::Error) -> String {
    crate::text::capped(e.to_string(), 256)
}

/// A request's JSON body, or the `400 bad_request` that names the shape it
/// must have and what was wrong with it.
// The refusal is what the handler answers at once: boxing it would only
// add an allocation to the error path.
#[allow(clippy::result_large_err)]
pub(crate) fn json_body<T: serde::de::DeserializeOwned>(
    body: &[u8],
    shape: &str,
) -> Result<T, Response> {
    serde_json::from_slice(body).map_err(|e| {
        error(
            StatusCode::BAD_REQUEST,
            "bad_request",
            format!("the body must be {shape}: {}", json_error(e)),
        )
    })
}

/// A JSON error response: `{"error": {"code": …, "message": …}}`.
pub(crate) fn error(status: StatusCode, code: &str, message: impl Into<String>) -> Response {
    let body = serde_json::json!({"error": {"code": code, "message": message.into()}});
    (status, Json(body)).into_response()
}
