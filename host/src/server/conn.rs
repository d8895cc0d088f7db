//! The server's connections: accepted under a cap, each served by hyper
//! (HTTP/1.1, keep-alive) with a header-read timeout, and every request
//! body wrapped in an idle timeout. A connection past the cap is answered
//! `503` with `Retry-After` and closed, rather than queued without bound.
//! On shutdown every connection finishes its request in flight and closes.

use super::ServerConfig;
use axum::body::Body;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

/// Connections being refused at once (each for at most a second); more
/// are closed without an answer.
const MAX_REFUSING: usize = 64;

/// The caps a connection is served under.
#[derive(Debug, Clone, Copy)]
pub(super) struct Limits {
    max_connections: usize,
    header_read_timeout: Duration,
    body_read_timeout: Duration,
}

impl From<&ServerConfig> for Limits {
    fn from(c: &ServerConfig) -> Limits {
        Limits {
            max_connections: c.max_connections.max(1),
            header_read_timeout: c.header_read_timeout,
            body_read_timeout: c.body_read_timeout,
        }
    }
}

/// Accept connections until `shutdown`, serving each in a task of `tracker`.
pub(super) async fn accept_loop(
    listener: TcpListener,
    app: axum::Router,
    limits: Limits,
    shutdown: CancellationToken,
    tracker: TaskTracker,
) {
    let open = Arc::new(Semaphore::new(limits.max_connections));
    let refusing = Arc::new(Semaphore::new(MAX_REFUSING));
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            () = shutdown.cancelled() => return,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of file descriptors, say: wait a moment, do not spin.
                tracing::warn!(error = %e, "cannot accept a connection");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        match open.clone().try_acquire_owned() {
            Ok(slot) => {
                let app = app.clone();
                let shutdown = shutdown.clone();
                tracker.spawn(async move {
                    serve_one(stream, peer, app, limits, shutdown).await;
                    drop(slot);
                });
            }
            Err(_) => {
                if let Ok(turn) = refusing.clone().try_acquire_owned() {
                    tracker.spawn(async move {
                        refuse(stream, limits.max_connections).await;
                        drop(turn);
                    });
                }
            }
        }
    }
}

/// Serve one connection until it closes, or until shutdown lets its
/// request in flight finish.
async fn serve_one(
    stream: TcpStream,
    peer: std::net::SocketAddr,
    app: axum::Router,
    limits: Limits,
    shutdown: CancellationToken,
) {
    let idle = limits.body_read_timeout;
    let service = hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
        let mut req = req.map(|body| Body::new(tower_http::timeout::TimeoutBody::new(idle, body)));
        // Who sent it, for the audit log's count of refusals per source.
        req.extensions_mut()
            .insert(axum::extract::ConnectInfo(peer));
        app.clone().oneshot(req)
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .keep_alive(true);
    let conn = builder.serve_connection(TokioIo::new(stream), service);
    let mut conn = std::pin::pin!(conn);
    tokio::select! {
        result = conn.as_mut() => {
            if let Err(e) = result {
                tracing::debug!(error = %e, "connection closed with an error");
            }
            return;
        }
        () = shutdown.cancelled() => conn.as_mut().graceful_shutdown(),
    }
    if let Err(e) = conn.await {
        tracing::debug!(error = %e, "connection closed with an error");
    }
}

/// Answer a connection past the cap with `503` and `Retry-After`, after
/// reading (briefly) what it sent, so the client sees the answer rather
/// than a reset.
async fn refuse(mut stream: TcpStream, cap: usize) {
    let body = format!(
        "{{\"error\":{{\"code\":\"too_many_connections\",\"message\":\"the host has {cap} connections open, its limit; retry in a moment\"}}}}"
    );
    let response = format!(
        "HTTP/1.1 503 Service Unavailable\r\nretry-after: 1\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let mut request = [0u8; 8192];
    let _ = tokio::time::timeout(Duration::from_millis(250), stream.read(&mut request)).await;
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        stream.write_all(response.as_bytes()).await?;
        stream.shutdown().await
    })
    .await;
}
