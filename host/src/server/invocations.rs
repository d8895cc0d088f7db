//! The invocation history API: `GET /v1/invocations` (a filtered page of
//! this host's records, newest first or, with `after`, oldest first) and
//! `GET /v1/invocations/{id}` (one invocation, with its logs).
//!
//! Every parameter is checked at the edge: an unknown one, a value past
//! its cap or a page larger than [`records::MAX_PAGE`] is answered `400`
//! naming the parameter and the cap, never clamped quietly.

use super::{AppState, error};
use crate::dispatcher::events::TriggerKind;
use crate::records::{self, Cursor, Filter, OutcomeFilter, Query};
use axum::Json;
use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;

pub(crate) fn routes() -> axum::Router<AppState> {
    axum::Router::new()
        .route("/invocations", get(list))
        .route("/invocations/{id}", get(show))
}

/// A page's size unless asked.
const DEFAULT_PAGE: usize = 50;

/// The parameters `GET /v1/invocations` takes.
const PARAMETERS: &str = "function, version, trigger, outcome, since, until, id, job, message, correlation, before, after, limit, logs";

fn bad(message: String) -> Response {
    error(StatusCode::BAD_REQUEST, "invalid_query", message)
}

/// A time bound: a duration back from `now_ms` (`10m`, `2h`), an RFC 3339
/// time, or ms since the epoch.
fn time_bound(name: &str, value: &str, now_ms: u64) -> Result<u64, String> {
    if let Ok(ms) = value.parse::<u64>() {
        return Ok(ms);
    }
    if let Ok(ago) = humantime::parse_duration(value) {
        return Ok(now_ms.saturating_sub(ago.as_millis().min(u64::MAX as u128) as u64));
    }
    match humantime::parse_rfc3339_weak(value) {
        Ok(at) => Ok(at
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0)),
        Err(_) => Err(format!(
            "{name} must be a duration back from now (e.g. 10m), an RFC 3339 time (e.g. 2026-12-01T03:00:00Z) or ms since the epoch, not {}",
            crate::text::quote(value)
        )),
    }
}

fn number<T: std::str::FromStr>(name: &str, value: &str) -> Result<T, String> {
    value.parse().map_err(|_| {
        format!(
            "{name} must be a whole number, not {}",
            crate::text::quote(value)
        )
    })
}

/// The query a request's query string asks for, or why it cannot be run.
fn parse_query(raw: Option<&str>, now_ms: u64) -> Result<Query, String> {
    let mut query = Query {
        filter: Filter::default(),
        cursor: Cursor::Before(None),
        limit: DEFAULT_PAGE,
        logs: false,
    };
    let mut seen = std::collections::HashSet::new();
    let mut before = None;
    let mut after = None;
    let mut limit = None;
    for (name, value) in form_urlencoded::parse(raw.unwrap_or("").as_bytes()) {
        let known = PARAMETERS.split(", ").find(|p| *p == name);
        let Some(name) = known else {
            return Err(format!(
                "unknown parameter {}; the parameters are {PARAMETERS}",
                crate::text::quote(&name)
            ));
        };
        if !seen.insert(name) {
            return Err(format!("{name} is given twice; give it once"));
        }
        if value.len() > records::MAX_FILTER_BYTES {
            return Err(format!(
                "{name} is {} bytes, over the cap of {} bytes",
                value.len(),
                records::MAX_FILTER_BYTES
            ));
        }
        let text = Some(value.to_string());
        let f = &mut query.filter;
        match name {
            "function" => f.function = text,
            "id" => f.id = text,
            "job" => f.job_id = text,
            "message" => f.message_id = text,
            "correlation" => f.correlation_id = text,
            "version" => f.version = Some(number(name, &value)?),
            "trigger" => {
                let kinds = [
                    TriggerKind::Http,
                    TriggerKind::Queue,
                    TriggerKind::Job,
                    TriggerKind::Blob,
                    TriggerKind::Timer,
                    TriggerKind::Invoke,
                ];
                f.trigger = Some(kinds.into_iter().find(|k| k.as_str() == value).ok_or_else(|| {
                    format!(
                        "trigger must be one of http, queue, job, blob, timer, invoke, not {}",
                        crate::text::quote(&value)
                    )
                })?)
            }
            "outcome" => {
                f.outcome = Some(OutcomeFilter::parse(&value).ok_or_else(|| {
                    format!(
                        "outcome must be one of succeeded, retry, failed, limit, trapped, unsuccessful, not {}",
                        crate::text::quote(&value)
                    )
                })?)
            }
            "since" => f.since_ms = Some(time_bound(name, &value, now_ms)?),
            "until" => f.until_ms = Some(time_bound(name, &value, now_ms)?),
            "before" => before = Some(number::<u64>(name, &value)?),
            "after" => after = Some(number::<u64>(name, &value)?),
            "limit" => limit = Some(number::<usize>(name, &value)?),
            "logs" => {
                query.logs = match &*value {
                    "true" | "1" => true,
                    "false" | "0" => false,
                    _ => return Err(format!("logs must be true or false, not {}", crate::text::quote(&value))),
                }
            }
            _ => unreachable!("every known parameter is handled"),
        }
    }
    query.cursor = match (before, after) {
        (Some(_), Some(_)) => return Err("give before or after, not both".into()),
        (before, None) => Cursor::Before(before),
        (None, Some(after)) => Cursor::After(after),
    };
    let cap = match query.logs {
        true => records::MAX_PAGE_WITH_LOGS,
        false => records::MAX_PAGE,
    };
    query.limit = match limit {
        None => DEFAULT_PAGE.min(cap),
        Some(0) => return Err("limit must be at least 1".into()),
        Some(n) if n > cap => {
            return Err(match query.logs {
                true => format!(
                    "limit {n} is over the cap of {cap} records per page with logs; ask for fewer, and follow `next`"
                ),
                false => format!(
                    "limit {n} is over the cap of {cap} records per page; ask for fewer, and follow `next`"
                ),
            });
        }
        Some(n) => n,
    };
    Ok(query)
}

async fn list(State(state): State<AppState>, RawQuery(raw): RawQuery) -> Response {
    let query = match parse_query(raw.as_deref(), crate::clock::now_ms()) {
        Ok(query) => query,
        Err(message) => return bad(message),
    };
    match state.records.query(query).await {
        Ok(page) => Json(page).into_response(),
        Err(e) => unavailable(e),
    }
}

async fn show(State(state): State<AppState>, Path(id): Path<String>) -> Response {
    if id.len() > records::MAX_FILTER_BYTES {
        return bad(format!(
            "the id is {} bytes, over the cap of {} bytes",
            id.len(),
            records::MAX_FILTER_BYTES
        ));
    }
    let query = Query {
        filter: Filter {
            id: Some(id.clone()),
            ..Filter::default()
        },
        cursor: Cursor::Before(None),
        limit: 1,
        logs: true,
    };
    match state.records.query(query).await {
        Ok(page) => match page.invocations.into_iter().next() {
            Some(record) => Json(record).into_response(),
            None => error(
                StatusCode::NOT_FOUND,
                "not_found",
                format!(
                    "no invocation {} in this host's records (host {}): it ran elsewhere, or is older than the retention",
                    crate::text::quote(&id),
                    crate::text::quote(state.records.host())
                ),
            ),
        },
        Err(e) => unavailable(e),
    }
}

fn unavailable(e: records::RecordsError) -> Response {
    tracing::warn!(error = %e, "invocation records could not be read");
    error(
        StatusCode::SERVICE_UNAVAILABLE,
        "records_unavailable",
        "the invocation records could not be read now; try again (the host log says why)",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries_are_checked_at_the_edge_with_the_cap_named() {
        let now = 10_000_000;
        let q = parse_query(
            Some("function=orders&outcome=failed&since=10m&limit=20&job=j-1"),
            now,
        )
        .unwrap();
        assert_eq!(q.filter.function.as_deref(), Some("orders"));
        assert_eq!(q.filter.since_ms, Some(now - 600_000));
        assert_eq!(q.filter.job_id.as_deref(), Some("j-1"));
        assert_eq!((q.limit, q.cursor), (20, Cursor::Before(None)));
        let q = parse_query(Some("after=41&until=2026-12-01T03:00:00Z"), now).unwrap();
        assert_eq!(q.cursor, Cursor::After(41));
        assert_eq!(q.filter.until_ms, Some(1_796_094_000_000));
        assert_eq!(parse_query(None, now).unwrap().limit, DEFAULT_PAGE);

        for (raw, says) in [
            ("limit=1001", "over the cap of 1000"),
            ("limit=51&logs=true", "over the cap of 50"),
            ("limit=0", "at least 1"),
            ("limit=99999999999999999999999", "whole number"),
            ("outcome=ok", "outcome must be one of"),
            ("trigger=carrier-pigeon", "trigger must be one of"),
            ("since=yesterday-ish", "since must be"),
            ("before=1&after=2", "not both"),
            ("function=a&function=b", "given twice"),
            ("select=*", "unknown parameter"),
            ("logs=maybe", "true or false"),
        ] {
            let e = parse_query(Some(raw), now).unwrap_err();
            assert!(e.contains(says), "{raw}: {e}");
        }
        let long = format!("correlation={}", "x".repeat(records::MAX_FILTER_BYTES + 1));
        let e = parse_query(Some(&long), now).unwrap_err();
        assert!(e.contains("over the cap of 1024 bytes"), "{e}");
    }
}
