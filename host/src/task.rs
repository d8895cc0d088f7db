//! What the backend and executor traits of every layer share: the boxed
//! future their methods return (so they can be used as `dyn`), the error
//! source their failures keep, and running blocking work (SQLite, files,
//! compilation) off the async threads.
//!
//! A leaf: it knows nothing of the rest of the host.

use std::future::Future;
use std::pin::Pin;

/// A boxed future, so a trait with async methods can be used as `dyn`.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The error beneath a backend failure, kept so logs and callers can see
/// what the store itself said (cheap to clone with the failure).
pub type ErrorSource = std::sync::Arc<dyn std::error::Error + Send + Sync>;

/// Run blocking work off the async threads and wait for it. A panic in
/// `f` is resumed here.
pub async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    match tokio::task::spawn_blocking(f).await {
        Ok(value) => value,
        Err(e) => std::panic::resume_unwind(e.into_panic()),
    }
}
