//! The host's HTTP server: the admin API under `/v1/`, `/healthz`, and the
//! HTTP trigger for every other path.
//!
//! [`serve`] binds, answers until a shutdown signal, then stops accepting and
//! drains in-flight requests for at most the stopping wait time. Handlers
//! turn HTTP into dispatcher calls and back; they know nothing of wasm.

mod admin;
mod auth;
mod blobs;
mod jobs;
mod queues;
mod trigger;

use crate::dispatcher::Dispatcher;
use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use auth::{load_or_create_token, token_path};

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
}

/// What every handler can reach.
#[derive(Clone)]
pub(crate) struct AppState {
    pub dispatcher: Arc<Dispatcher>,
    pub config: Arc<ServerConfig>,
}

/// Build the router: admin API, health, HTTP trigger.
pub fn router(dispatcher: Arc<Dispatcher>, config: ServerConfig) -> axum::Router {
    let state = AppState {
        dispatcher,
        config: Arc::new(config),
    };
    axum::Router::new()
        .route(
            "/healthz",
            axum::routing::get(|| async { Json(serde_json::json!({"status": "ok"})) }),
        )
        .nest("/v1", admin::routes(state.clone()))
        .fallback(trigger::handle)
        .with_state(state)
}

/// Serve on `listener` until `shutdown` is cancelled, then drain in-flight
/// HTTP requests and `background` invocations (queue messages) for at most
/// the stopping wait time; what is still running then is abandoned, and its
/// queue leases expire so the messages come back.
pub async fn serve(
    listener: tokio::net::TcpListener,
    dispatcher: Arc<Dispatcher>,
    config: ServerConfig,
    shutdown: CancellationToken,
    background: TaskTracker,
) -> anyhow::Result<()> {
    let wait = config.stopping_wait_time;
    let app = router(dispatcher.clone(), config);
    let server =
        axum::serve(listener, app).with_graceful_shutdown(shutdown.clone().cancelled_owned());
    let mut task = tokio::spawn(async move { server.await });
    tokio::select! {
        res = &mut task => return res?.map_err(Into::into),
        () = shutdown.cancelled() => {}
    }
    tracing::info!(in_flight = dispatcher.in_flight(), wait = ?wait, "shutting down: no new requests or messages; draining in-flight invocations");
    let drain = async {
        let served = (&mut task).await;
        background.wait().await;
        served
    };
    match tokio::time::timeout(wait, drain).await {
        Ok(res) => {
            res??;
            tracing::info!("drained; stopped");
        }
        Err(_) => {
            tracing::warn!(
                in_flight = dispatcher.in_flight(),
                "the stopping wait time passed; abandoning in-flight invocations"
            );
            task.abort();
        }
    }
    Ok(())
}

/// A JSON error response: `{"error": {"code": …, "message": …}}`.
pub(crate) fn error(status: StatusCode, code: &str, message: impl Into<String>) -> Response {
    let body = serde_json::json!({"error": {"code": code, "message": message.into()}});
    (status, Json(body)).into_response()
}
