//! The HTTP trigger: a request to a route a function declares invokes it
//! synchronously, and its output becomes the response.
//!
//! Unknown route → 404, wrong method → 405, a route with `auth = "token"`
//! without a token allowed to invoke → 401/403, body over the limit → 413,
//! function error → 500 with a JSON body that names the failure but no host
//! internals. No function ever sees an fnhost token: on every route, the
//! `Authorization` and `Proxy-Authorization` values that carry one are
//! taken off the request first.

use super::{AppState, error};
use crate::dispatcher::Attempt;
use crate::exec::Failure;
use crate::exec::{Event, HttpRequest, Output, TrapReason};
use crate::tokens::Tokens;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;

/// The fallback handler: route, invoke, respond.
pub(crate) async fn handle(State(state): State<AppState>, req: Request) -> Response {
    if !state.config.http_triggers {
        return error(
            StatusCode::NOT_FOUND,
            "worker_role",
            "this host runs in the worker role and serves no HTTP triggers; send the request to a host in the api (or default) role",
        );
    }
    let routes = state.dispatcher.routes();
    let path = req.uri().path().to_string();
    let Ok(matched) = routes.at(&path) else {
        return error(
            StatusCode::NOT_FOUND,
            "no_route",
            format!("no function is bound to {path}"),
        );
    };
    let target = matched.value.clone();
    let params: Vec<(String, String)> = matched
        .params
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let method = req.method().as_str().to_string();
    if !target.methods.is_empty() && !target.methods.contains(&method) {
        return error(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            format!("{path} answers {}, not {method}", target.methods.join(", ")),
        );
    }
    let Some(deployed) = state.dispatcher.get(&target.function) else {
        return error(
            StatusCode::NOT_FOUND,
            "no_route",
            format!("no function is bound to {path}"),
        );
    };
    let (mut parts, body) = req.into_parts();
    if target.token {
        let what = format!("{method} {path}");
        let source = super::auth::source(&parts.extensions);
        let bearer = super::auth::authorize(
            &state.guard,
            &parts.headers,
            source,
            crate::tokens::Action::Invoke,
            &what,
            "http.denied",
        )
        .await;
        if let Err(refusal) = bearer {
            return refusal;
        }
        // The function never sees the caller's token.
        parts.headers.remove(header::AUTHORIZATION);
    }
    // Nor, on any route, anyone's fnhost token.
    strip_fnhost_tokens(&mut parts.headers, &state.guard.tokens);
    let body = match axum::body::to_bytes(body, state.config.max_body_bytes).await {
        Ok(b) => b,
        Err(e) if timed_out(&e) => {
            return error(
                StatusCode::REQUEST_TIMEOUT,
                "body_timeout",
                format!(
                    "the request body stalled for longer than the host's limit of {:?}",
                    state.config.body_read_timeout
                ),
            );
        }
        Err(_) => {
            return error(
                StatusCode::PAYLOAD_TOO_LARGE,
                "body_too_large",
                format!(
                    "the request body is over the host's limit of {} bytes",
                    state.config.max_body_bytes
                ),
            );
        }
    };
    let headers = parts
        .headers
        .iter()
        .filter_map(|(k, v)| Some((k.as_str().to_string(), v.to_str().ok()?.to_string())))
        .collect();
    let event = Event::Http(HttpRequest {
        method,
        path,
        query: parts.uri.query().unwrap_or("").to_string(),
        params,
        headers,
        body: body.to_vec(),
    });
    invoke(&state, deployed, event).await
}

/// Take off every `Authorization` and `Proxy-Authorization` value that
/// carries an fnhost token, as it came or inside `Basic` credentials, so
/// that no guest ever sees one, whatever route it is on. Values of a
/// user's own scheme, with no fnhost token in them, pass as they came.
fn strip_fnhost_tokens(headers: &mut HeaderMap, tokens: &Tokens) {
    let carries = |value: &HeaderValue| {
        let bytes = value.as_bytes();
        let basic = (bytes.get(..6))
            .filter(|scheme| scheme.eq_ignore_ascii_case(b"basic "))
            .and_then(|_| {
                base64::engine::general_purpose::STANDARD
                    .decode(bytes[6..].trim_ascii())
                    .ok()
            });
        tokens.carried_by(bytes) || basic.is_some_and(|decoded| tokens.carried_by(&decoded))
    };
    for name in [header::AUTHORIZATION, header::PROXY_AUTHORIZATION] {
        let values: Vec<HeaderValue> = headers.get_all(&name).iter().cloned().collect();
        if !values.iter().any(carries) {
            continue;
        }
        headers.remove(&name);
        for value in values.into_iter().filter(|v| !carries(v)) {
            headers.append(name.clone(), value);
        }
    }
}

/// Invoke for an HTTP caller: `503` with `Retry-After` when every instance
/// is busy and the line for one is full, or the function's share of it.
pub(crate) async fn invoke(
    state: &AppState,
    deployed: std::sync::Arc<crate::dispatcher::Deployed>,
    event: Event,
) -> Response {
    match state
        .dispatcher
        .invoke_or_busy(
            deployed,
            event,
            Attempt::default(),
            state.config.max_pending_requests,
        )
        .await
    {
        Ok((id, outcome)) => outcome_response(&id, outcome.result),
        Err(busy) => {
            let message = match busy.share {
                Some(share) => format!(
                    "every instance is busy and this function's share of the line for one is full: {share} of its requests already wait (of {} places, the rest kept for other functions); retry in a moment",
                    busy.waiting
                ),
                None => format!(
                    "every instance is busy and {} requests already wait for one; retry in a moment",
                    busy.waiting
                ),
            };
            let mut response = error(StatusCode::SERVICE_UNAVAILABLE, "busy", message);
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            response
        }
    }
}

/// True when a body failed because it stalled past the body-read timeout.
pub(crate) fn timed_out(e: &axum::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(s) = source {
        if s.is::<tower_http::timeout::TimeoutError>() {
            return true;
        }
        source = s.source();
    }
    false
}

/// An invocation's result as an HTTP response, tagged with its invocation id.
pub(crate) fn outcome_response(id: &str, result: Result<Output, Failure>) -> Response {
    let mut response = match result {
        Ok(output) => output_response(output),
        Err(failure) => failure_response(&failure),
    };
    if let Ok(v) = HeaderValue::from_str(id) {
        response.headers_mut().insert("fnhost-invocation-id", v);
    }
    response
}

fn output_response(output: Output) -> Response {
    let status = StatusCode::from_u16(output.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut response = (status, Body::from(output.body)).into_response();
    for (name, value) in output.headers {
        let (Ok(name), Ok(value)) = (HeaderName::try_from(name), HeaderValue::try_from(value))
        else {
            continue;
        };
        // Framing is the server's job, not the guest's.
        if matches!(
            name.as_str(),
            "content-length" | "transfer-encoding" | "connection"
        ) {
            continue;
        }
        response.headers_mut().append(name, value);
    }
    response
}

fn failure_response(failure: &Failure) -> Response {
    if let Failure::Trap(TrapReason::Unavailable(why)) = failure {
        let mut r = error(
            StatusCode::SERVICE_UNAVAILABLE,
            "trusted_worker_unavailable",
            format!(
                "the trusted worker that runs this function is unavailable ({why}); it is being restarted: retry shortly"
            ),
        );
        r.headers_mut()
            .insert("retry-after", HeaderValue::from_static("1"));
        return r;
    }
    let (code, message) = match failure {
        Failure::Retry(_) | Failure::Fail(_) | Failure::Limit(_) => {
            ("function_error", failure.to_string())
        }
        Failure::Trap(TrapReason::Host(_)) => (
            "host_error",
            "the host could not run the invocation; see the host log".to_string(),
        ),
        Failure::Trap(reason) => ("function_trapped", reason.to_string()),
    };
    error(StatusCode::INTERNAL_SERVER_ERROR, code, message)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_carrying_an_fnhost_token_are_taken_off_and_the_rest_pass() {
        let dir = tempfile::tempdir().unwrap();
        let state = crate::backends::embedded::EmbeddedState::open(dir.path()).unwrap();
        let tokens = Tokens::new(std::sync::Arc::new(state), "the-bootstrap".into());
        let basic = |credentials: &str| {
            let encoded = base64::engine::general_purpose::STANDARD.encode(credentials);
            HeaderValue::from_str(&format!("Basic {encoded}")).unwrap()
        };
        let mut headers = HeaderMap::new();
        for value in [
            HeaderValue::from_static("Bearer fnh_0123456789abcdef_secret"),
            HeaderValue::from_static("Bearer the-bootstrap"),
            basic("ci:the-bootstrap"),
            basic("ci:fnh_0123456789abcdef_secret"),
            HeaderValue::from_static("Bearer mine"),
            basic("ada:lovelace"),
        ] {
            headers.append(header::AUTHORIZATION, value);
        }
        headers.append(
            header::PROXY_AUTHORIZATION,
            HeaderValue::from_static("basic  dGhlLWJvb3RzdHJhcA== "),
        );
        headers.append(header::COOKIE, HeaderValue::from_static("a=b"));
        strip_fnhost_tokens(&mut headers, &tokens);
        let left: Vec<&HeaderValue> = headers.get_all(header::AUTHORIZATION).iter().collect();
        assert_eq!(
            left,
            [
                &HeaderValue::from_static("Bearer mine"),
                &basic("ada:lovelace")
            ]
        );
        assert!(headers.get(header::PROXY_AUTHORIZATION).is_none());
        assert_eq!(headers[header::COOKIE], "a=b");
    }
}
