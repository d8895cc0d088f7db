//! Shared state: small documents every host of a fleet reads and writes
//! (async job records today), by key, each with a version so that a write
//! can be made conditional on what the writer read (compare-and-swap) or
//! on the key being new. [`StateStore`] is the seam: the embedded store
//! keeps documents in SQLite, the S3 one as objects with conditional
//! writes (`If-Match`, `If-None-Match: *`), so the service, not clocks or
//! a protocol of ours, decides which of two racing writers wins.
//!
//! Knows nothing of wasm, functions, triggers or HTTP.

use crate::task::{BoxFuture, ErrorSource};

/// A document and the version it was read at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Versioned {
    /// The document.
    pub bytes: Vec<u8>,
    /// Its version (an ETag on S3): pass it to [`Write::Replace`].
    pub version: String,
}

/// A key found by [`StateStore::list`], with its document's version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    /// The key.
    pub key: String,
    /// The version of its document (comparable with other listings' of
    /// the same store, not necessarily with [`Versioned::version`]).
    pub version: String,
}

/// On what condition a write happens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Write {
    /// Only if the key has no document yet.
    Create,
    /// Only if the document is still at this version.
    Replace(String),
    /// Whatever is there.
    Overwrite,
}

/// A state store failure.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StateError {
    /// The write's condition did not hold (the key exists, or the document
    /// moved on): read again and decide.
    #[error("the document {0} changed meanwhile")]
    Conflict(String),
    /// The request is not acceptable.
    #[error("{0}")]
    Invalid(String),
    /// The store failed; the write may or may not have happened.
    #[error("the state store failed: {message}")]
    Backend {
        /// What failed.
        message: String,
        /// The store's own error.
        #[source]
        source: Option<ErrorSource>,
    },
}

impl StateError {
    /// A store failure described by `message`.
    pub fn backend(message: impl Into<String>, source: Option<ErrorSource>) -> StateError {
        StateError::Backend {
            message: message.into(),
            source,
        }
    }
}

/// The longest key, in bytes.
pub const MAX_KEY_BYTES: usize = 512;
/// The largest document, in bytes: a deployed component (a fleet shares
/// them through the store) is the largest; a job record with its whole
/// result stays under 9 MiB.
pub const MAX_DOCUMENT_BYTES: usize = 128 << 20;

/// Check a key: `[A-Za-z0-9/._-]`, not empty, no `..`, at most [`MAX_KEY_BYTES`].
pub fn validate_key(key: &str) -> Result<(), StateError> {
    let ok = !key.is_empty()
        && key.len() <= MAX_KEY_BYTES
        && !key.contains("..")
        && !key.starts_with('/')
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '/' | '.' | '_' | '-'));
    if ok {
        Ok(())
    } else {
        Err(StateError::Invalid(format!(
            "{} is not a state key",
            crate::text::quote(key)
        )))
    }
}

/// Documents by key, with conditional writes.
pub trait StateStore: Send + Sync {
    /// The document at `key`, if there is one.
    fn get(&self, key: &str) -> BoxFuture<'_, Result<Option<Versioned>, StateError>>;
    /// Write the document at `key` on `condition`; its new version.
    fn put(
        &self,
        key: &str,
        bytes: Vec<u8>,
        condition: Write,
    ) -> BoxFuture<'_, Result<String, StateError>>;
    /// Delete the document at `key`; false when there was none.
    fn delete(&self, key: &str) -> BoxFuture<'_, Result<bool, StateError>>;
    /// Keys under `prefix`, in order, after `after`, at most `max`, each
    /// with its document's version (so a reader can tell what changed
    /// without reading every document).
    fn list(
        &self,
        prefix: &str,
        after: Option<String>,
        max: usize,
    ) -> BoxFuture<'_, Result<Vec<Listed>, StateError>>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_plain_paths() {
        assert!(validate_key("jobs/0192.json").is_ok());
        for bad in ["", "/a", "a/../b", "a b", &"k".repeat(MAX_KEY_BYTES + 1)] {
            assert!(validate_key(bad).is_err(), "{bad:?}");
        }
    }
}
