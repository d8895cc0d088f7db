//! The blob API under `/v1/buckets/{bucket}/objects`: put, get, head,
//! delete and list objects. A bad bucket or key is a `400` and nothing is
//! written.

use super::{AppState, error};
use crate::blobs::{BlobError, ObjectMeta};
use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::Deserialize;
use serde_json::json;

pub(crate) fn routes() -> axum::Router<AppState> {
    axum::Router::new()
        .route("/buckets/{bucket}/objects", get(list))
        .route("/buckets/{bucket}/changes", get(changes))
        .route(
            "/buckets/{bucket}/objects/{*key}",
            get(fetch).head(head).put(put).delete(delete),
        )
}

fn blob_error(e: BlobError) -> Response {
    match e {
        BlobError::InvalidBucket(m) => error(StatusCode::BAD_REQUEST, "invalid_bucket", m),
        BlobError::InvalidKey(m) => error(StatusCode::BAD_REQUEST, "invalid_key", m),
        BlobError::TooLarge(m) => error(StatusCode::PAYLOAD_TOO_LARGE, "too_large", m),
        BlobError::InvalidContentType(m) => {
            error(StatusCode::BAD_REQUEST, "invalid_content_type", m)
        }
        e => {
            tracing::error!(error = %e, "blob store failure");
            error(
                StatusCode::SERVICE_UNAVAILABLE,
                "blobs_unavailable",
                "the blob store failed; try again",
            )
        }
    }
}

fn not_found(bucket: &str, key: &str) -> Response {
    error(
        StatusCode::NOT_FOUND,
        "not_found",
        format!(
            "no object {} in bucket {}",
            crate::text::quote(key),
            crate::text::quote(bucket)
        ),
    )
}

/// Content type, length, etag and modified time as headers.
fn meta_headers(meta: &ObjectMeta, headers: &mut HeaderMap) {
    let ct = meta
        .content_type
        .as_deref()
        .unwrap_or("application/octet-stream");
    if let Ok(v) = HeaderValue::from_str(ct) {
        headers.insert(header::CONTENT_TYPE, v);
    }
    if let Ok(v) = HeaderValue::from_str(&format!("\"{}\"", meta.etag)) {
        headers.insert(header::ETAG, v);
    }
    headers.insert("fnhost-modified-ms", HeaderValue::from(meta.modified_ms));
}

async fn put(
    State(state): State<AppState>,
    Path((bucket, key)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    match state
        .services
        .blobs()
        .put(&bucket, &key, body.to_vec(), content_type)
        .await
    {
        Ok(stored) => {
            let status = if stored.replaced {
                StatusCode::OK
            } else {
                StatusCode::CREATED
            };
            (status, Json(json!(stored.meta))).into_response()
        }
        Err(e) => blob_error(e),
    }
}

async fn fetch(
    State(state): State<AppState>,
    Path((bucket, key)): Path<(String, String)>,
) -> Response {
    match state.services.blobs().get(&bucket, &key).await {
        Ok(Some((meta, body))) => {
            let mut response = Body::from(body).into_response();
            meta_headers(&meta, response.headers_mut());
            response
        }
        Ok(None) => not_found(&bucket, &key),
        Err(e) => blob_error(e),
    }
}

async fn head(
    State(state): State<AppState>,
    Path((bucket, key)): Path<(String, String)>,
) -> Response {
    match state.services.blobs().head(&bucket, &key).await {
        Ok(Some(meta)) => {
            let mut response = StatusCode::OK.into_response();
            meta_headers(&meta, response.headers_mut());
            response
                .headers_mut()
                .insert(header::CONTENT_LENGTH, HeaderValue::from(meta.size));
            response
        }
        Ok(None) => StatusCode::NOT_FOUND.into_response(),
        Err(e) => blob_error(e),
    }
}

async fn delete(
    State(state): State<AppState>,
    Path((bucket, key)): Path<(String, String)>,
) -> Response {
    match state.services.blobs().delete(&bucket, &key).await {
        Ok(true) => StatusCode::NO_CONTENT.into_response(),
        Ok(false) => not_found(&bucket, &key),
        Err(e) => blob_error(e),
    }
}

/// The most objects or changes one listing returns.
const MAX_LIST: usize = 10_000;

#[derive(Deserialize)]
struct ListQuery {
    prefix: Option<String>,
    start_after: Option<String>,
    limit: Option<usize>,
}

async fn list(
    State(state): State<AppState>,
    Path(bucket): Path<String>,
    Query(q): Query<ListQuery>,
) -> Response {
    let limit = q.limit.unwrap_or(1000).clamp(1, MAX_LIST);
    match state
        .services
        .blobs()
        .list(
            &bucket,
            q.prefix.as_deref().unwrap_or(""),
            q.start_after,
            limit,
        )
        .await
    {
        Ok(objects) => {
            // A full page may have more after it: say where to continue.
            let next = (objects.len() == limit)
                .then(|| objects.last().map(|o| o.key.clone()))
                .flatten();
            Json(json!({ "objects": objects, "next_start_after": next })).into_response()
        }
        Err(e) => blob_error(e),
    }
}

#[derive(Deserialize)]
struct ChangesQuery {
    after: Option<u64>,
    limit: Option<usize>,
}

/// The bucket's recorded changes after `after`, oldest first: what blob
/// triggers are fed, for checking what happened when.
async fn changes(
    State(state): State<AppState>,
    Path(bucket): Path<String>,
    Query(q): Query<ChangesQuery>,
) -> Response {
    if let Err(e) = crate::blobs::validate_bucket(&bucket) {
        return blob_error(e);
    }
    let limit = q.limit.unwrap_or(1000).clamp(1, MAX_LIST);
    let Some(feed) = state.services.blobs().feed() else {
        return super::error(
            StatusCode::NOT_IMPLEMENTED,
            "not_supported",
            "this host's buckets keep no change feed (on S3, changes arrive as event notifications); bind a blob trigger to follow them",
        );
    };
    match feed
        .changes(Some(bucket), q.after.unwrap_or(0), limit)
        .await
    {
        Ok(changes) => Json(json!({ "changes": changes })).into_response(),
        Err(e) => blob_error(e),
    }
}
