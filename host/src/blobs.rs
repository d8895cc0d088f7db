//! Blobs: buckets of objects behind the guest `storage` import (and, in a
//! later release, the blob HTTP API and blob-change triggers).
//!
//! [`BlobBackend`] is the seam (S3 later); [`embedded::EmbeddedBlobs`] keeps
//! each bucket as a folder in the data dir with an SQLite index of keys and
//! metadata. Keys are validated here, once, for every backend. Knows nothing
//! of wasm, triggers or HTTP.

pub mod embedded;

use crate::queue::BoxFuture;
use serde::Serialize;

/// The longest key, in bytes.
pub const MAX_KEY_BYTES: usize = 1024;
/// The largest object, in bytes.
pub const MAX_OBJECT_BYTES: usize = 64 << 20;

/// An object's metadata.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ObjectMeta {
    /// The key.
    pub key: String,
    /// Size in bytes.
    pub size: u64,
    /// SHA-256 of the content, hex.
    pub etag: String,
    /// The content type given when it was written.
    pub content_type: Option<String>,
    /// Last write, ms since the epoch.
    pub modified_ms: u64,
}

/// What a put stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    /// The new object's metadata.
    pub meta: ObjectMeta,
    /// True when it replaced an object of the same key.
    pub replaced: bool,
}

/// An object's metadata and content.
pub type Object = (ObjectMeta, Vec<u8>);

/// A blob store failure.
#[derive(Debug, Clone, thiserror::Error)]
pub enum BlobError {
    /// The bucket name is not acceptable.
    #[error("{0}")]
    InvalidBucket(String),
    /// The key is not acceptable.
    #[error("{0}")]
    InvalidKey(String),
    /// The object is too large.
    #[error("{0}")]
    TooLarge(String),
    /// The store failed; the operation may not have happened.
    #[error("the blob store failed: {0}")]
    Backend(String),
}

/// Check a bucket name and a key. Keys are relative paths of non-empty
/// segments: no leading `/`, no `.` or `..` segments, no backslash or NUL,
/// at most [`MAX_KEY_BYTES`].
pub fn validate(bucket: &str, key: &str) -> Result<(), BlobError> {
    if !crate::manifest::valid_name(bucket) {
        return Err(BlobError::InvalidBucket(format!(
            "{bucket:?} is not a valid bucket name; use 1-63 lower-case letters, digits and '-', starting with a letter"
        )));
    }
    let bad = |why: &str| Err(BlobError::InvalidKey(format!("key {key:?} {why}")));
    if key.is_empty() {
        return bad("is empty");
    }
    if key.len() > MAX_KEY_BYTES {
        return bad(&format!("is longer than {MAX_KEY_BYTES} bytes"));
    }
    if key.contains('\0') || key.contains('\\') {
        return bad("contains a NUL or a backslash");
    }
    if key.starts_with('/') {
        return bad("is absolute; keys are relative, like \"images/cat.png\"");
    }
    if key
        .split('/')
        .any(|s| s.is_empty() || s == "." || s == "..")
    {
        return bad("has an empty, '.' or '..' segment");
    }
    Ok(())
}

/// A bucket-of-objects store. Writes are atomic: readers see the old object
/// or the new one, never half.
pub trait BlobBackend: Send + Sync {
    /// Create or replace an object.
    fn put(
        &self,
        bucket: &str,
        key: &str,
        body: Vec<u8>,
        content_type: Option<String>,
    ) -> BoxFuture<'_, Result<Stored, BlobError>>;
    /// An object and its metadata, if it exists.
    fn get(&self, bucket: &str, key: &str) -> BoxFuture<'_, Result<Option<Object>, BlobError>>;
    /// An object's metadata, if it exists.
    fn head(&self, bucket: &str, key: &str)
    -> BoxFuture<'_, Result<Option<ObjectMeta>, BlobError>>;
    /// Delete an object; false when there was none.
    fn delete(&self, bucket: &str, key: &str) -> BoxFuture<'_, Result<bool, BlobError>>;
    /// Objects whose keys start with `prefix`, in key order.
    fn list(&self, bucket: &str, prefix: &str)
    -> BoxFuture<'_, Result<Vec<ObjectMeta>, BlobError>>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_that_could_escape_or_confuse_are_refused() {
        assert!(validate("uploads", "images/cat.png").is_ok());
        assert!(validate("uploads", "a").is_ok());
        for key in [
            "",
            "/etc/passwd",
            "../x",
            "a/../b",
            "a/./b",
            "a//b",
            "a/",
            "a\\b",
            "a\0b",
        ] {
            assert!(
                matches!(validate("uploads", key), Err(BlobError::InvalidKey(_))),
                "{key:?}"
            );
        }
        assert!(validate("uploads", &"k".repeat(MAX_KEY_BYTES + 1)).is_err());
        assert!(matches!(
            validate("Up Loads", "a"),
            Err(BlobError::InvalidBucket(_))
        ));
    }
}
