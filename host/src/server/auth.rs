//! The admin bearer token: taken from `FNHOST_TOKEN`, or generated on first
//! start into `<data-dir>/token` (mode 0600) and printed once; and the
//! middleware that requires it on every `/v1/` request.

use super::{AppState, error};
use crate::audit::{Audit, Entry};
use crate::tokens::{Action, Bearer, Refused, Tokens};
use axum::extract::{FromRequestParts as _, MatchedPath, RawPathParams, Request, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::Response;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Where a host keeps its generated token.
pub fn token_path(data_dir: &Path) -> PathBuf {
    data_dir.join("token")
}

/// The token to require: `explicit` when given, else the one in the data dir,
/// else a new random one written there. The bool is true when it was created.
pub fn load_or_create_token(
    data_dir: &Path,
    explicit: Option<String>,
) -> std::io::Result<(String, bool)> {
    if let Some(token) = explicit.filter(|t| !t.trim().is_empty()) {
        return Ok((token.trim().to_string(), false));
    }
    let path = token_path(data_dir);
    match std::fs::read_to_string(&path) {
        Ok(token) if !token.trim().is_empty() => return Ok((token.trim().to_string(), false)),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let token = crate::tokens::random_hex(32).map_err(|e| std::io::Error::other(e.to_string()))?;
    crate::files::write_atomic(&path, token.as_bytes())?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    }
    Ok((token, true))
}

/// What guards the admin API and the HTTP trigger: the token store (who a
/// bearer is), the audit log (where refusals and changes go), and the
/// trusted worker's state, for `/healthz`. (A storage grant's reach is
/// `capabilities::Access`, another thing.)
#[derive(Clone)]
pub struct Guard {
    /// Who a bearer is.
    pub tokens: Arc<Tokens>,
    /// Where refusals and changes are recorded.
    pub audit: Arc<Audit>,
    /// The trusted worker, on a host with sensitive data.
    pub trusted_worker: Option<Arc<crate::trusted::RemoteWorker>>,
}

/// A note a handler leaves on its response for the audit log (what it
/// deployed, which token it made).
#[derive(Debug, Clone)]
pub(crate) struct Note(pub String);

/// What a request under `/v1` does, from its method and route.
fn action(method: &Method, route: &str) -> Action {
    let route = route.strip_prefix("/v1").unwrap_or(route);
    let read = matches!(*method, Method::GET | Method::HEAD);
    match route {
        "/functions" | "/functions/{name}" if read => Action::Status,
        "/functions" | "/functions/{name}" | "/functions/{name}/rollback" => Action::Deploy,
        "/functions/{name}/invoke" | "/functions/{name}/jobs" => Action::Invoke,
        "/jobs/{id}" => Action::ReadJob,
        "/queues" | "/queues/{queue}" => Action::Status,
        // Counts and names, no data: what any token may read.
        "/metrics" => Action::Status,
        // Records carry reasons and the guest's output: data.
        "/invocations" | "/invocations/{id}" if read => Action::ReadData,
        "/queues/{queue}/messages" if *method == Method::POST => Action::Invoke,
        r if (r.starts_with("/queues/") || r.starts_with("/buckets/")) && read => Action::ReadData,
        r if r.starts_with("/queues/") || r.starts_with("/buckets/") => Action::WriteData,
        // Tokens, and anything added later until it is placed: admin only.
        _ => Action::Tokens,
    }
}

/// The audit log's name for a request that changes something, if it does.
fn event(method: &Method, route: &str, action: Action) -> Option<&'static str> {
    let route = route.strip_prefix("/v1").unwrap_or(route);
    match (action, method.as_str(), route) {
        (Action::Deploy, "POST", "/functions") => Some("deploy"),
        (Action::Deploy, "DELETE", _) => Some("remove"),
        (Action::Deploy, "POST", _) => Some("rollback"),
        (Action::Tokens, "POST", _) => Some("token.create"),
        (Action::Tokens, "DELETE", _) => Some("token.revoke"),
        (Action::WriteData, _, _) => Some("data.change"),
        _ => None,
    }
}

/// Require `Authorization: Bearer <token>` whose scope allows the request;
/// audit every refusal and every change.
pub(crate) async fn require_token(
    State(state): State<AppState>,
    req: Request,
    next: Next,
) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_default();
    let method = req.method().clone();
    let action = action(&method, &route);
    // Inside `/v1`'s nest the URI has lost its prefix (`/metrics` is
    // outside it).
    let path = match req.uri().path() {
        p if p.starts_with("/v1/") || route == "/metrics" => p.to_string(),
        p => format!("/v1{p}"),
    };
    let target = format!("{method} {path}");
    let source = source(req.extensions());
    let bearer = match authorize(
        &state.guard,
        req.headers(),
        source.clone(),
        action,
        &target,
        "admin.denied",
    )
    .await
    {
        Ok(bearer) => bearer,
        Err(refusal) => return refusal,
    };
    // Sensitive buckets are served to trusted functions only: no token
    // reads or writes them through the API. The bucket is the route's
    // parameter as the handler will see it (percent-decoded), not the raw
    // path, so `secr%65ts` is `secrets` here too.
    let (mut parts, body) = req.into_parts();
    let param = |params: &RawPathParams, wanted: &str| {
        params
            .iter()
            .find(|(name, _)| *name == wanted)
            .map(|(_, value)| value.to_string())
    };
    let (bucket, queue) = match RawPathParams::from_request_parts(&mut parts, &()).await {
        Ok(params) => (param(&params, "bucket"), param(&params, "queue")),
        Err(_) => (None, None),
    };
    let mut req = Request::from_parts(parts, body);
    let sensitive = state.services.sensitive();
    // A sensitive queue's messages are sealed, and not for the API to read.
    if let Some(queue) = queue
        && action == Action::ReadData
        && sensitive.queues.contains(&queue)
    {
        state.guard.audit.record(Entry {
            event: "admin.denied".into(),
            outcome: "denied".into(),
            token: Some(bearer.id.clone()),
            source,
            target: Some(target),
            detail: Some("sensitive queue".into()),
            ..Entry::default()
        });
        return error(
            StatusCode::FORBIDDEN,
            "sensitive",
            format!(
                "queue {} is sensitive on this host: its messages are sealed for the trusted worker and not readable through the admin API",
                crate::text::quote(&queue)
            ),
        );
    }
    if let Some(bucket) = bucket
        && sensitive.buckets.contains(&bucket)
    {
        state.guard.audit.record(Entry {
            event: "admin.denied".into(),
            outcome: "denied".into(),
            token: Some(bearer.id.clone()),
            source,
            target: Some(target),
            detail: Some("sensitive bucket".into()),
            ..Entry::default()
        });
        return error(
            StatusCode::FORBIDDEN,
            "sensitive",
            format!(
                "bucket {} is sensitive on this host: only trusted functions reach it, never the admin API; ask a trusted function for what you need",
                crate::text::quote(&bucket)
            ),
        );
    }
    let token = bearer.id.clone();
    req.extensions_mut().insert(bearer);
    let Some(event) = event(&method, &route, action) else {
        return next.run(req).await;
    };
    // A change is recorded before it is made: one whose line cannot be
    // written is not made.
    let entry = |outcome: &'static str, detail: Option<String>| Entry {
        event: event.into(),
        outcome: outcome.into(),
        token: Some(token.clone()),
        source: source.clone(),
        target: Some(target.clone()),
        detail,
        ..Entry::default()
    };
    if let Err(e) = state
        .guard
        .audit
        .record_required(entry("started", None))
        .await
    {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "audit_unavailable",
            format!(
                "{e}; so this change was not made. Free space in the host's data dir or fix the log's permissions, then retry"
            ),
        );
    }
    let response = next.run(req).await;
    let ok = response.status().is_success();
    let detail = (response.extensions().get::<Note>())
        .map(|n| n.0.clone())
        .or_else(|| (!ok).then(|| response.status().to_string()));
    state
        .guard
        .audit
        .record(entry(if ok { "ok" } else { "failed" }, detail));
    response
}

/// The client's address, as the server's accept loop recorded it.
pub(crate) fn source(extensions: &axum::http::Extensions) -> Option<String> {
    extensions
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .map(|c| c.0.ip().to_string())
}

/// Who bears the token in `headers`, if its scope allows `action`; else
/// the answer to give (`401`, `403`, or `503` when the token store is
/// down), with the refusal audited as `event` on `target`.
pub(crate) async fn authorize(
    guard: &Guard,
    headers: &HeaderMap,
    source: Option<String>,
    action: Action,
    target: &str,
    event: &'static str,
) -> Result<Bearer, Response> {
    let entry = |token: Option<&str>, why: &str| Entry {
        event: event.into(),
        outcome: "denied".into(),
        token: token.map(str::to_string),
        source: source.clone(),
        target: Some(target.to_string()),
        detail: Some(why.to_string()),
        ..Entry::default()
    };
    // Without a token of ours: counted per source and window, so a flood
    // of them costs the log a line or two.
    let anonymous = |why: &str| guard.audit.refused(entry(None, why));
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    let Some(given) = given else {
        anonymous("no bearer token");
        return Err(error(
            StatusCode::UNAUTHORIZED,
            "missing_token",
            "this needs `Authorization: Bearer <token>`; the host's own token is in its data dir (file `token`) or FNHOST_TOKEN, others are made by `fnhost tokens create`",
        ));
    };
    let bearer = match guard.tokens.check(given).await {
        Ok(Ok(bearer)) => bearer,
        Ok(Err(Refused::Unknown)) => {
            anonymous("not a token of this host, or revoked");
            return Err(error(
                StatusCode::UNAUTHORIZED,
                "bad_token",
                "the bearer token is not one of this host's tokens (or it was revoked); use the one in the host's data dir, FNHOST_TOKEN, or one made by `fnhost tokens create`",
            ));
        }
        Ok(Err(Refused::Expired(at))) => {
            anonymous("expired");
            return Err(error(
                StatusCode::UNAUTHORIZED,
                "expired_token",
                format!(
                    "the bearer token expired at {} (ms since the epoch); ask an admin for a new one (`fnhost tokens create`)",
                    at
                ),
            ));
        }
        Err(e) => {
            tracing::error!(error = %e, "cannot check a bearer token");
            return Err(error(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                format!("cannot check the bearer token now: {e}; try again"),
            ));
        }
    };
    if !bearer.scope.allows(action) {
        guard.audit.record(entry(
            Some(&bearer.id),
            &format!("scope {} does not allow {action:?}", bearer.scope.as_str()),
        ));
        return Err(error(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!(
                "this token's scope is `{}`, which does not allow {target}; use a token whose scope allows it ({})",
                bearer.scope.as_str(),
                needs(action)
            ),
        ));
    }
    Ok(bearer)
}

/// The scopes that allow `action`, for an error message.
fn needs(action: Action) -> &'static str {
    match action {
        Action::Status => "any scope",
        Action::Deploy => "deploy or admin",
        Action::Invoke => "invoke or admin",
        Action::ReadJob => "invoke, read or admin",
        Action::ReadData => "read or admin",
        Action::WriteData | Action::Tokens => "admin",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_is_generated_once_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let (t1, created) = load_or_create_token(dir.path(), None).unwrap();
        assert!(created);
        assert_eq!(t1.len(), 64);
        let (t2, created) = load_or_create_token(dir.path(), None).unwrap();
        assert!(!created);
        assert_eq!(t1, t2);
        let (t3, _) = load_or_create_token(dir.path(), Some("mine".into())).unwrap();
        assert_eq!(t3, "mine");
    }

    #[test]
    fn every_admin_route_has_the_action_its_scope_table_says() {
        use Action::*;
        let cases = [
            ("GET", "/v1/functions", Status),
            ("POST", "/v1/functions", Deploy),
            ("GET", "/v1/functions/{name}", Status),
            ("DELETE", "/v1/functions/{name}", Deploy),
            ("POST", "/v1/functions/{name}/rollback", Deploy),
            ("POST", "/v1/functions/{name}/invoke", Invoke),
            ("POST", "/v1/functions/{name}/jobs", Invoke),
            ("GET", "/v1/jobs/{id}", ReadJob),
            ("GET", "/v1/queues/{queue}", Status),
            ("POST", "/v1/queues/{queue}/messages", Invoke),
            ("GET", "/v1/queues/{queue}/messages", ReadData),
            ("DELETE", "/v1/queues/{queue}/messages", WriteData),
            ("POST", "/v1/queues/{queue}/dead-letters/redrive", WriteData),
            ("GET", "/v1/buckets/{bucket}/changes", ReadData),
            ("HEAD", "/v1/buckets/{bucket}/objects/{*key}", ReadData),
            ("PUT", "/v1/buckets/{bucket}/objects/{*key}", WriteData),
            ("GET", "/v1/tokens", Tokens),
            ("GET", "/v1/something-new", Tokens),
        ];
        for (method, route, want) in cases {
            let method = Method::from_bytes(method.as_bytes()).unwrap();
            assert_eq!(action(&method, route), want, "{method} {route}");
        }
    }
}
