//! The admin API under `/v1/`: deploy, list, show, roll back, remove and
//! invoke functions. Every route requires a bearer token whose scope
//! allows it (see [`crate::tokens`]).

use super::auth::Note;
use super::{AppState, auth, error, trigger};
use crate::dispatcher::{Authority, DeployError, Deployed};
use crate::exec::{Event, LoadError};
use crate::tokens::{Bearer, Scope};
use axum::Json;
use axum::extract::{DefaultBodyLimit, Extension, Multipart, Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use bytes::Bytes;
use serde::Deserialize;
use serde_json::{Value, json};

pub(crate) fn routes(state: AppState) -> axum::Router<AppState> {
    let upload = state.config.max_upload_bytes;
    let body = state.config.max_body_bytes;
    let router = axum::Router::new();
    // A probe for the tests of confinement: compiled into debug builds
    // only, and served only when FNHOST_DEBUG_PROBES is set.
    #[cfg(debug_assertions)]
    let router = match std::env::var_os("FNHOST_DEBUG_PROBES") {
        Some(_) => router.route("/debug/open", post(debug_open)),
        None => router,
    };
    router
        .route(
            "/functions",
            get(list).post(deploy).layer(DefaultBodyLimit::max(upload)),
        )
        .route("/functions/{name}", get(show).delete(remove))
        .route("/functions/{name}/rollback", post(rollback))
        .route(
            "/functions/{name}/invoke",
            post(invoke).layer(DefaultBodyLimit::max(body)),
        )
        .merge(super::queues::routes().layer(DefaultBodyLimit::max(body)))
        .merge(super::jobs::routes().layer(DefaultBodyLimit::max(body)))
        .merge(super::blobs::routes().layer(DefaultBodyLimit::max(upload)))
        .merge(super::tokens::routes().layer(DefaultBodyLimit::max(64 << 10)))
        .merge(super::invocations::routes())
        .layer(axum::middleware::from_fn_with_state(
            state,
            auth::require_token,
        ))
}

/// Try to open the file the body names from this process (on a blocking
/// thread, as the stores do) and say what the OS answered.
#[cfg(debug_assertions)]
async fn debug_open(body: Bytes) -> Response {
    let path = std::path::PathBuf::from(String::from_utf8_lossy(&body).into_owned());
    let opened = crate::task::blocking(move || std::fs::File::open(&path).map(drop)).await;
    Json(match opened {
        Ok(()) => json!({ "opened": true }),
        Err(e) => json!({
            "opened": false,
            "error": e.to_string(),
            "permission_denied": e.kind() == std::io::ErrorKind::PermissionDenied,
        }),
    })
    .into_response()
}

fn describe(d: &Deployed) -> Value {
    let limits = d.manifest.limits();
    json!({
        "name": d.record.name,
        "version": d.record.version,
        "digest": d.record.digest,
        "size": d.record.size,
        "deployed_at_ms": d.record.created_at_ms,
        "routes": d.manifest.triggers.http,
        "limits": {
            "fuel": limits.fuel,
            "memory_bytes": limits.memory_bytes,
            "timeout_ms": limits.timeout.as_millis() as u64,
            "log_bytes": limits.log_bytes,
        },
    })
}

/// Who the bearer is to the dispatcher: an admin token's bearer may make
/// any change, anyone else (a `deploy` token) only an ordinary one.
fn authority(bearer: &Bearer) -> Authority {
    match bearer.scope {
        Scope::Admin => Authority::Admin,
        _ => Authority::Deployer,
    }
}

fn deploy_error(err: DeployError) -> Response {
    match err {
        DeployError::Manifest(e) => {
            error(StatusCode::BAD_REQUEST, "invalid_manifest", e.to_string())
        }
        DeployError::Load(e @ (LoadError::NotAComponent(_) | LoadError::WrongWorld(_))) => {
            error(StatusCode::BAD_REQUEST, "invalid_component", e.to_string())
        }
        DeployError::Conflict(m) => error(StatusCode::CONFLICT, "route_conflict", m),
        DeployError::Forbidden(m) => error(StatusCode::FORBIDDEN, "forbidden", m),
        DeployError::NotFound(m) => error(StatusCode::NOT_FOUND, "not_found", m),
        DeployError::Shared(crate::state::StateError::Invalid(m)) => {
            error(StatusCode::BAD_REQUEST, "not_shareable", m)
        }
        DeployError::Notifications(m) => {
            tracing::error!(error = %m, "admin request failed");
            error(
                StatusCode::SERVICE_UNAVAILABLE,
                "notifications_not_set_up",
                m,
            )
        }
        DeployError::Shared(e) => {
            tracing::error!(error = %e, "admin request failed");
            error(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                format!("{e}; try again"),
            )
        }
        e @ (DeployError::Load(_) | DeployError::Registry(_)) => {
            tracing::error!(error = %e, "admin request failed");
            error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "the host failed to store the function; see the host log",
            )
        }
    }
}

async fn list(State(state): State<AppState>) -> Response {
    let registry = state.services.registry().clone();
    let functions = match tokio::task::spawn_blocking(move || registry.functions()).await {
        Ok(Ok(f)) => f,
        Ok(Err(e)) => return deploy_error(e.into()),
        Err(_) => {
            return error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "listing failed",
            );
        }
    };
    let out: Vec<Value> = functions
        .into_iter()
        .map(|f| {
            let mut v = state
                .dispatcher
                .get(&f.name)
                .map(|d| describe(&d))
                .unwrap_or_else(|| json!({"name": f.name, "loaded": false}));
            v["active_version"] = json!(f.active_version);
            v["versions"] = json!(f.versions);
            v
        })
        .collect();
    Json(json!({ "functions": out })).into_response()
}

async fn show(State(state): State<AppState>, Path(name): Path<String>) -> Response {
    match state.dispatcher.get(&name) {
        Some(d) => {
            let mut v = describe(&d);
            v["manifest"] = json!(d.record.manifest);
            if d.manifest.triggers.timer.is_some() {
                let registry = state.services.registry().clone();
                let timer = tokio::task::spawn_blocking(move || registry.timer(&name)).await;
                if let Ok(Ok(Some(t))) = timer {
                    v["timer"] = json!(t);
                }
            }
            Json(v).into_response()
        }
        None => error(
            StatusCode::NOT_FOUND,
            "not_found",
            format!(
                "no function named {} is deployed",
                crate::text::quote(&name)
            ),
        ),
    }
}

async fn deploy(
    State(state): State<AppState>,
    Extension(bearer): Extension<Bearer>,
    mut form: Multipart,
) -> Response {
    let mut manifest: Option<String> = None;
    let mut component: Option<Bytes> = None;
    loop {
        let field = match form.next_field().await {
            Ok(Some(f)) => f,
            Ok(None) => break,
            Err(e) => {
                return error(
                    e.status(),
                    "bad_upload",
                    format!("cannot read the upload: {}", e.body_text()),
                );
            }
        };
        let name = field.name().unwrap_or("").to_string();
        let data = match field.bytes().await {
            Ok(d) => d,
            Err(e) => {
                return error(
                    e.status(),
                    "bad_upload",
                    format!(
                        "cannot read field {}: {}",
                        crate::text::quote(&name),
                        e.body_text()
                    ),
                );
            }
        };
        match name.as_str() {
            "manifest" => match String::from_utf8(data.to_vec()) {
                Ok(text) => manifest = Some(text),
                Err(_) => {
                    return error(
                        StatusCode::BAD_REQUEST,
                        "invalid_manifest",
                        "fnhost.toml: (syntax): the manifest is not UTF-8 text",
                    );
                }
            },
            "component" => component = Some(data),
            other => {
                return error(
                    StatusCode::BAD_REQUEST,
                    "bad_upload",
                    format!(
                        "unexpected form field {}; send `manifest` (fnhost.toml) and `component` (the .wasm)",
                        crate::text::quote(other)
                    ),
                );
            }
        }
    }
    let (Some(manifest), Some(component)) = (manifest, component) else {
        return error(
            StatusCode::BAD_REQUEST,
            "bad_upload",
            "a deploy is a multipart form with two fields: `manifest` (fnhost.toml) and `component` (the .wasm)",
        );
    };
    let deployed = (state.dispatcher)
        .deploy(manifest, component.to_vec(), authority(&bearer))
        .await;
    state.telemetry.deployed("deploy", deployed.is_ok());
    match deployed {
        Ok(d) => {
            tracing::info!(function = %d.record.name, version = d.record.version, digest = %d.record.digest, "deployed");
            let mut response = (StatusCode::CREATED, Json(describe(&d))).into_response();
            response.extensions_mut().insert(Note(format!(
                "{} version {} ({})",
                d.record.name, d.record.version, d.record.digest
            )));
            response
        }
        Err(e) => deploy_error(e),
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RollbackRequest {
    version: Option<u32>,
}

async fn rollback(
    State(state): State<AppState>,
    Extension(bearer): Extension<Bearer>,
    Path(name): Path<String>,
    body: Bytes,
) -> Response {
    let req: RollbackRequest = if body.is_empty() {
        RollbackRequest::default()
    } else {
        match super::json_body(&body, "{\"version\": N} or empty") {
            Ok(r) => r,
            Err(refusal) => return refusal,
        }
    };
    let rolled = (state.dispatcher)
        .rollback(&name, req.version, authority(&bearer))
        .await;
    state.telemetry.deployed("rollback", rolled.is_ok());
    match rolled {
        Ok(d) => {
            tracing::info!(function = %name, version = d.record.version, "rolled back");
            let mut response = Json(describe(&d)).into_response();
            response
                .extensions_mut()
                .insert(Note(format!("{name} to version {}", d.record.version)));
            response
        }
        Err(e) => deploy_error(e),
    }
}

async fn remove(
    State(state): State<AppState>,
    Extension(bearer): Extension<Bearer>,
    Path(name): Path<String>,
) -> Response {
    let removed = state.dispatcher.remove(&name, authority(&bearer)).await;
    state.telemetry.deployed("remove", removed.is_ok());
    match removed {
        Ok(()) => {
            tracing::info!(function = %name, "removed");
            StatusCode::NO_CONTENT.into_response()
        }
        Err(e) => deploy_error(e),
    }
}

async fn invoke(State(state): State<AppState>, Path(name): Path<String>, body: Bytes) -> Response {
    let Some(deployed) = state.dispatcher.get(&name) else {
        return error(
            StatusCode::NOT_FOUND,
            "not_found",
            format!(
                "no function named {} is deployed",
                crate::text::quote(&name)
            ),
        );
    };
    trigger::invoke(&state, deployed, Event::Invoke(body.to_vec())).await
}
