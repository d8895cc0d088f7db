//! Blobs: buckets of objects behind the guest `storage` import, the blob
//! HTTP API and blob-change triggers.
//!
//! [`BlobBackend`] is the seam for objects: the embedded store keeps each
//! bucket as a folder in the data dir with an SQLite index of keys and
//! metadata; S3 keeps them as objects. Keys are validated here, once, for
//! every backend.
//!
//! Where changes come from is a seam of its own. The embedded store
//! records every create, update and delete, with the write, in a
//! [`ChangeFeed`]: numbered [`Change`]s that blob triggers read through
//! per-consumer [`Cursor`]s, with a receipt per (consumer, object, etag) so
//! each version of an object is handed to a consumer once. S3 has no feed:
//! its event notifications arrive on an SQS queue. Knows nothing of wasm,
//! triggers or HTTP.

use crate::task::BoxFuture;
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// The longest key, in bytes.
pub const MAX_KEY_BYTES: usize = 1024;
/// The largest object, in bytes.
pub const MAX_OBJECT_BYTES: usize = 64 << 20;
/// The longest content type, in bytes (a MIME type is at most 127 + 1 +
/// 127 characters, RFC 6838; parameters such as `charset` fit beside it).
pub const MAX_CONTENT_TYPE_BYTES: usize = 256;

/// An object's metadata.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
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
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Stored {
    /// The new object's metadata.
    pub meta: ObjectMeta,
    /// True when it replaced an object of the same key.
    pub replaced: bool,
}

/// What happened to an object.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ChangeKind {
    /// A new key.
    Created,
    /// New content for an existing key.
    Updated,
    /// The key was deleted.
    Deleted,
}

impl ChangeKind {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            ChangeKind::Created => "created",
            ChangeKind::Updated => "updated",
            ChangeKind::Deleted => "deleted",
        }
    }

    /// Parse a stored name.
    pub fn parse(s: &str) -> Option<ChangeKind> {
        match s {
            "created" => Some(ChangeKind::Created),
            "updated" => Some(ChangeKind::Updated),
            "deleted" => Some(ChangeKind::Deleted),
            _ => None,
        }
    }
}

/// One recorded change to an object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Change {
    /// Position in the feed (increasing; 0 for changes found by a scan).
    pub seq: u64,
    /// The bucket.
    pub bucket: String,
    /// The key.
    pub key: String,
    /// What happened.
    pub kind: ChangeKind,
    /// The new content's etag; none for deletes.
    pub etag: Option<String>,
    /// The new content's size; none for deletes.
    pub size: Option<u64>,
    /// The new content's type, if it was given.
    pub content_type: Option<String>,
    /// When it happened, ms since the epoch.
    pub at_ms: u64,
    /// For a change found by a scan: the feed position its listing
    /// reflects (every change up to it had happened when the object was
    /// listed), so an older change read from the feed afterwards is known
    /// to be older. None for changes from the feed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub as_of: Option<u64>,
}

impl Change {
    /// A write of `meta` as a change of `kind`, not yet numbered by the feed.
    pub fn written(bucket: &str, meta: ObjectMeta, kind: ChangeKind) -> Change {
        Change {
            seq: 0,
            bucket: bucket.to_string(),
            key: meta.key,
            kind,
            etag: Some(meta.etag),
            size: Some(meta.size),
            content_type: meta.content_type,
            at_ms: meta.modified_ms,
            as_of: None,
        }
    }

    /// An existing object as a `created` change, for a scan that
    /// reconciles a consumer with what is already stored; `as_of` is the
    /// feed position the listing reflects (see [`BlobBackend::list_at`]).
    pub fn found(bucket: &str, meta: ObjectMeta, as_of: u64) -> Change {
        Change {
            as_of: Some(as_of),
            ..Change::written(bucket, meta, ChangeKind::Created)
        }
    }
}

/// How far a consumer has read the change feed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cursor {
    /// Every change up to and including this one has been handled.
    pub seq: u64,
    /// What the consumer was watching when it got here (its filter), so a
    /// changed filter can be reconciled afresh.
    pub spec: String,
}

/// How long changes are kept once every consumer has passed them.
pub const CHANGE_RETENTION: std::time::Duration = std::time::Duration::from_secs(24 * 60 * 60);

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
    /// The object (or its content type) is too large.
    #[error("{0}")]
    TooLarge(String),
    /// The content type is not acceptable.
    #[error("{0}")]
    InvalidContentType(String),
    /// The store asks the caller to slow down (S3's SlowDown, say): nothing
    /// happened, and a retry after a while can succeed.
    #[error("the blob store is busy: {message}; retry later")]
    Throttled {
        /// What the store said.
        message: String,
        /// The store's own error.
        #[source]
        source: Option<crate::task::ErrorSource>,
    },
    /// The store failed; the operation may not have happened, and a retry
    /// may succeed.
    #[error("the blob store failed: {message}")]
    Backend {
        /// What failed.
        message: String,
        /// The store's own error.
        #[source]
        source: Option<crate::task::ErrorSource>,
    },
}

impl BlobError {
    /// A store failure described by `message`, caused by `source` if given.
    pub fn backend(
        message: impl Into<String>,
        source: Option<crate::task::ErrorSource>,
    ) -> BlobError {
        BlobError::Backend {
            message: message.into(),
            source,
        }
    }

    /// True when trying the same operation again may succeed (the store
    /// failed or was busy), false when it will not (it was refused).
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            BlobError::Throttled { .. } | BlobError::Backend { .. }
        )
    }
}

/// Check a bucket name.
pub fn validate_bucket(bucket: &str) -> Result<(), BlobError> {
    crate::names::BucketName::parse(bucket)
        .map(drop)
        .map_err(|e| BlobError::InvalidBucket(e.to_string()))
}

/// Check a bucket name and a key. Keys are relative paths of non-empty
/// segments: no leading `/`, no `.` or `..` segments, no backslash or NUL,
/// at most [`MAX_KEY_BYTES`].
pub fn validate(bucket: &str, key: &str) -> Result<(), BlobError> {
    validate_bucket(bucket)?;
    let bad = |why: &str| {
        Err(BlobError::InvalidKey(format!(
            "key {} {why}",
            crate::text::quote(key)
        )))
    };
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

/// Check a content type: at most [`MAX_CONTENT_TYPE_BYTES`] of printable
/// ASCII (what an HTTP header carries), so that every change to an object
/// fits the message that hands it to a blob trigger.
pub fn validate_content_type(content_type: &str) -> Result<(), BlobError> {
    if content_type.len() > MAX_CONTENT_TYPE_BYTES {
        return Err(BlobError::TooLarge(format!(
            "the content type is {} bytes, over the limit of {MAX_CONTENT_TYPE_BYTES}",
            content_type.len()
        )));
    }
    if content_type.is_empty() || !content_type.bytes().all(|b| (0x20..0x7f).contains(&b)) {
        return Err(BlobError::InvalidContentType(format!(
            "the content type {} is not acceptable; use printable ASCII such as \"image/png\"",
            crate::text::quote(content_type)
        )));
    }
    Ok(())
}

/// Check a put before it reaches a backend: the bucket and key, the size
/// (at most [`MAX_OBJECT_BYTES`]) and the content type.
pub fn validate_put(
    bucket: &str,
    key: &str,
    size: usize,
    content_type: Option<&str>,
) -> Result<(), BlobError> {
    validate(bucket, key)?;
    if size > MAX_OBJECT_BYTES {
        return Err(BlobError::TooLarge(format!(
            "the object is {size} bytes, over the limit of {MAX_OBJECT_BYTES}"
        )));
    }
    content_type.map_or(Ok(()), validate_content_type)
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
    /// Replace an object only while its etag is still `etag` (a compare
    /// and swap): `None`, with nothing written, when it changed or is
    /// gone. A store that cannot says so (the default).
    fn replace_if(
        &self,
        bucket: &str,
        key: &str,
        body: Vec<u8>,
        content_type: Option<String>,
        etag: String,
    ) -> BoxFuture<'_, Result<Option<Stored>, BlobError>> {
        let _ = (bucket, key, body, content_type, etag);
        Box::pin(async {
            Err(BlobError::backend(
                "this store cannot replace an object conditionally",
                None,
            ))
        })
    }
    /// An object and its metadata, if it exists.
    fn get(&self, bucket: &str, key: &str) -> BoxFuture<'_, Result<Option<Object>, BlobError>>;
    /// An object's metadata, if it exists.
    fn head(&self, bucket: &str, key: &str)
    -> BoxFuture<'_, Result<Option<ObjectMeta>, BlobError>>;
    /// Delete an object; false when there was none.
    fn delete(&self, bucket: &str, key: &str) -> BoxFuture<'_, Result<bool, BlobError>>;
    /// Objects whose keys start with `prefix` and sort after `start_after`,
    /// in key order, at most `max`.
    fn list(
        &self,
        bucket: &str,
        prefix: &str,
        start_after: Option<String>,
        max: usize,
    ) -> BoxFuture<'_, Result<Vec<ObjectMeta>, BlobError>>;
    /// The change feed of these buckets, for a backend that keeps one (the
    /// embedded store); `None` where changes arrive another way (S3's event
    /// notifications).
    fn feed(&self) -> Option<Arc<dyn ChangeFeed>> {
        None
    }
}

/// A change feed: every create, update and delete of a blob backend,
/// numbered, read by consumers through cursors, with a receipt per
/// (consumer, object, etag) so that each version goes to a consumer once.
/// The embedded store keeps one; S3 has none (its events arrive on SQS).
pub trait ChangeFeed: Send + Sync {
    /// Like [`BlobBackend::list`], with the feed position the page reflects:
    /// every change up to it had happened when the page was read, and none
    /// after it had.
    fn list_at(
        &self,
        bucket: &str,
        prefix: &str,
        start_after: Option<String>,
        max: usize,
    ) -> BoxFuture<'_, Result<(Vec<ObjectMeta>, u64), BlobError>>;

    /// Changes after `after`, oldest first, at most `max`; only `bucket`'s
    /// when given.
    fn changes(
        &self,
        bucket: Option<String>,
        after: u64,
        max: usize,
    ) -> BoxFuture<'_, Result<Vec<Change>, BlobError>>;
    /// The newest change's number (0 when there is none).
    fn latest_change(&self) -> BoxFuture<'_, Result<u64, BlobError>>;
    /// Where `consumer` is in the feed, if it has started.
    fn cursor(&self, consumer: &str) -> BoxFuture<'_, Result<Option<Cursor>, BlobError>>;
    /// Of `changes`, those not yet handed to `consumer`: a create or update
    /// is dropped when its (bucket, key, etag) already has a receipt, and any
    /// feed change is dropped when the key's receipt is for a version as new
    /// or newer (a scan that listed the object after the change).
    fn undelivered(
        &self,
        consumer: &str,
        changes: Vec<Change>,
    ) -> BoxFuture<'_, Result<Vec<Change>, BlobError>>;
    /// In one durable step: receipts for the `delivered` changes (a delete
    /// forgets the key's receipt) and the consumer's new cursor.
    fn advance(
        &self,
        consumer: &str,
        cursor: Cursor,
        delivered: Vec<Change>,
    ) -> BoxFuture<'_, Result<(), BlobError>>;
    /// Forget the cursors of consumers not in `keep` (their receipts stay,
    /// so a consumer that comes back is not handed old versions again), and
    /// changes older than [`CHANGE_RETENTION`] that every cursor has passed.
    fn prune(&self, keep: Vec<String>) -> BoxFuture<'_, Result<(), BlobError>>;
    /// Forget the cursors and receipts of every consumer of `function` (ids
    /// `<function>/<bucket>`): it was removed, and a function deployed later
    /// under the same name is a new consumer, handed the objects already there.
    fn forget_function(&self, function: &str) -> BoxFuture<'_, Result<(), BlobError>>;
    /// Woken after every change, for backends that can tell; others are polled.
    fn notifier(&self) -> Option<Arc<tokio::sync::Notify>> {
        None
    }
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
        let e = validate("uploads", &"k".repeat(1_200_000))
            .unwrap_err()
            .to_string();
        assert!(e.len() < 200, "the error quotes a prefix, not the key: {e}");
        assert!(matches!(
            validate("Up Loads", "a"),
            Err(BlobError::InvalidBucket(_))
        ));
    }

    #[test]
    fn content_types_are_capped_printable_text() {
        assert!(validate_content_type("image/png").is_ok());
        assert!(validate_content_type("text/plain; charset=utf-8").is_ok());
        let e = validate_content_type(&"x".repeat(2 << 20)).unwrap_err();
        assert!(matches!(e, BlobError::TooLarge(_)), "{e}");
        assert!(e.to_string().contains("over the limit of 256"), "{e}");
        for bad in ["", "text/plain\r\nx-forged: 1", "t\u{7f}"] {
            assert!(matches!(
                validate_content_type(bad),
                Err(BlobError::InvalidContentType(_))
            ));
        }
    }
}
