//! The embedded blob store: each bucket is a folder under
//! `<data-dir>/blobs/`, each object a file named by the SHA-256 of its key
//! (so any valid key maps to one flat, safe file name), and an SQLite index
//! (`<data-dir>/blobs.db`) holds keys and metadata.
//!
//! A put writes a temp file beside the target, fsyncs it, renames it into
//! place and fsyncs the folder, then records the metadata: readers see the
//! old object or the new one, never half. A delete forgets the key first,
//! then removes the file, so a crash can leave an unreferenced file but never
//! a key without content.

use super::{BlobBackend, BlobError, MAX_OBJECT_BYTES, ObjectMeta, Stored, validate};
use crate::queue::BoxFuture;
use rusqlite::{Connection, OptionalExtension, params};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS blob_objects (
    bucket TEXT NOT NULL,
    key TEXT NOT NULL,
    size INTEGER NOT NULL,
    etag TEXT NOT NULL,
    content_type TEXT,
    modified_ms INTEGER NOT NULL,
    PRIMARY KEY (bucket, key)
);
";

/// The embedded blob store's handle (cheap to clone).
#[derive(Clone)]
pub struct EmbeddedBlobs {
    inner: Arc<Inner>,
}

struct Inner {
    root: PathBuf,
    db: Mutex<Connection>,
}

fn db(e: rusqlite::Error) -> BlobError {
    BlobError::Backend(e.to_string())
}

fn io(what: &str, path: &Path, e: std::io::Error) -> BlobError {
    BlobError::Backend(format!("cannot {what} {path:?}: {e}"))
}

impl EmbeddedBlobs {
    /// Open (or create) the store in `data_dir`.
    pub fn open(data_dir: &Path) -> Result<EmbeddedBlobs, BlobError> {
        let root = data_dir.join("blobs");
        std::fs::create_dir_all(&root).map_err(|e| io("create", &root, e))?;
        let conn = Connection::open(data_dir.join("blobs.db")).map_err(db)?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(db)?;
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(db)?;
        conn.execute_batch(SCHEMA).map_err(db)?;
        Ok(EmbeddedBlobs {
            inner: Arc::new(Inner {
                root,
                db: Mutex::new(conn),
            }),
        })
    }

    /// Run blocking work (files, SQLite) off the async threads.
    fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Inner) -> Result<T, BlobError> + Send + 'static,
    ) -> BoxFuture<'_, Result<T, BlobError>> {
        let inner = self.inner.clone();
        Box::pin(async move {
            tokio::task::spawn_blocking(move || f(&inner))
                .await
                .map_err(|e| BlobError::Backend(format!("a blob task failed: {e}")))?
        })
    }
}

impl Inner {
    fn path(&self, bucket: &str, key: &str) -> PathBuf {
        self.root
            .join(bucket)
            .join(crate::sandbox::hex(&Sha256::digest(key.as_bytes())))
    }

    fn db(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.db.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn meta(&self, bucket: &str, key: &str) -> Result<Option<ObjectMeta>, BlobError> {
        self.db()
            .query_row(
                "SELECT key, size, etag, content_type, modified_ms FROM blob_objects WHERE bucket = ?1 AND key = ?2",
                params![bucket, key],
                row_to_meta,
            )
            .optional()
            .map_err(db)
    }
}

fn row_to_meta(r: &rusqlite::Row<'_>) -> rusqlite::Result<ObjectMeta> {
    Ok(ObjectMeta {
        key: r.get(0)?,
        size: r.get(1)?,
        etag: r.get(2)?,
        content_type: r.get(3)?,
        modified_ms: r.get(4)?,
    })
}

/// Fail at once (before any blocking work) when the bucket or key is bad.
fn checked<'a, T: Send + 'a>(
    bucket: &str,
    key: &str,
    run: impl FnOnce() -> BoxFuture<'a, Result<T, BlobError>>,
) -> BoxFuture<'a, Result<T, BlobError>> {
    match validate(bucket, key) {
        Ok(()) => run(),
        Err(e) => Box::pin(async move { Err(e) }),
    }
}

impl BlobBackend for EmbeddedBlobs {
    fn put(
        &self,
        bucket: &str,
        key: &str,
        body: Vec<u8>,
        content_type: Option<String>,
    ) -> BoxFuture<'_, Result<Stored, BlobError>> {
        if body.len() > MAX_OBJECT_BYTES {
            let e = BlobError::TooLarge(format!(
                "the object is {} bytes, over the limit of {MAX_OBJECT_BYTES}",
                body.len()
            ));
            return Box::pin(async move { Err(e) });
        }
        let (bucket, key) = (bucket.to_string(), key.to_string());
        checked(&bucket.clone(), &key.clone(), move || {
            self.blocking(move |inner| {
                let path = inner.path(&bucket, &key);
                let dir = path.parent().expect("an object path has a bucket folder");
                std::fs::create_dir_all(dir).map_err(|e| io("create", dir, e))?;
                crate::sandbox::write_atomic(&path, &body).map_err(|e| io("write", &path, e))?;
                let meta = ObjectMeta {
                    key,
                    size: body.len() as u64,
                    etag: crate::sandbox::hex(&Sha256::digest(&body)),
                    content_type,
                    modified_ms: crate::registry::now_ms(),
                };
                // One lock for the check and the write, so concurrent puts
                // agree on which of them created the object.
                let conn = inner.db();
                let replaced: bool = conn
                    .query_row(
                        "SELECT EXISTS (SELECT 1 FROM blob_objects WHERE bucket = ?1 AND key = ?2)",
                        params![bucket, meta.key],
                        |r| r.get(0),
                    )
                    .map_err(db)?;
                conn.execute(
                        "INSERT INTO blob_objects (bucket, key, size, etag, content_type, modified_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                         ON CONFLICT(bucket, key) DO UPDATE SET size = excluded.size, etag = excluded.etag,
                             content_type = excluded.content_type, modified_ms = excluded.modified_ms",
                        params![bucket, meta.key, meta.size, meta.etag, meta.content_type, meta.modified_ms],
                    )
                    .map_err(db)?;
                Ok(Stored { meta, replaced })
            })
        })
    }

    fn get(
        &self,
        bucket: &str,
        key: &str,
    ) -> BoxFuture<'_, Result<Option<super::Object>, BlobError>> {
        let (bucket, key) = (bucket.to_string(), key.to_string());
        checked(&bucket.clone(), &key.clone(), move || {
            self.blocking(move |inner| {
                let Some(meta) = inner.meta(&bucket, &key)? else { return Ok(None) };
                let path = inner.path(&bucket, &key);
                match std::fs::read(&path) {
                    Ok(body) => Ok(Some((meta, body))),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                        tracing::warn!(%bucket, %key, "an indexed object has no file; treating it as absent");
                        Ok(None)
                    }
                    Err(e) => Err(io("read", &path, e)),
                }
            })
        })
    }

    fn head(
        &self,
        bucket: &str,
        key: &str,
    ) -> BoxFuture<'_, Result<Option<ObjectMeta>, BlobError>> {
        let (bucket, key) = (bucket.to_string(), key.to_string());
        checked(&bucket.clone(), &key.clone(), move || {
            self.blocking(move |inner| inner.meta(&bucket, &key))
        })
    }

    fn delete(&self, bucket: &str, key: &str) -> BoxFuture<'_, Result<bool, BlobError>> {
        let (bucket, key) = (bucket.to_string(), key.to_string());
        checked(&bucket.clone(), &key.clone(), move || {
            self.blocking(move |inner| {
                let n = inner
                    .db()
                    .execute(
                        "DELETE FROM blob_objects WHERE bucket = ?1 AND key = ?2",
                        params![bucket, key],
                    )
                    .map_err(db)?;
                let path = inner.path(&bucket, &key);
                match std::fs::remove_file(&path) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(io("remove", &path, e)),
                }
                Ok(n == 1)
            })
        })
    }

    fn list(
        &self,
        bucket: &str,
        prefix: &str,
    ) -> BoxFuture<'_, Result<Vec<ObjectMeta>, BlobError>> {
        if let Err(e) = validate(bucket, "x") {
            return Box::pin(async move { Err(e) });
        }
        let (bucket, prefix) = (bucket.to_string(), prefix.to_string());
        self.blocking(move |inner| {
            let conn = inner.db();
            let mut stmt = conn
                .prepare(
                    "SELECT key, size, etag, content_type, modified_ms FROM blob_objects
                     WHERE bucket = ?1 AND substr(key, 1, length(?2)) = ?2 ORDER BY key LIMIT 10000",
                )
                .map_err(db)?;
            let rows = stmt.query_map(params![bucket, prefix], row_to_meta).map_err(db)?;
            rows.collect::<Result<_, _>>().map_err(db)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn objects_are_written_read_listed_replaced_and_deleted() {
        let dir = tempfile::tempdir().unwrap();
        let blobs = EmbeddedBlobs::open(dir.path()).unwrap();
        let stored = blobs
            .put(
                "uploads",
                "img/cat.png",
                b"meow".to_vec(),
                Some("image/png".into()),
            )
            .await
            .unwrap();
        assert!(!stored.replaced, "a new object");
        let meta = stored.meta;
        assert_eq!(
            (meta.size, meta.content_type.as_deref()),
            (4, Some("image/png"))
        );
        assert_eq!(meta.etag, crate::sandbox::hex(&Sha256::digest(b"meow")));
        blobs
            .put("uploads", "img/dog.png", b"woof".to_vec(), None)
            .await
            .unwrap();
        blobs
            .put("uploads", "doc/a.txt", b"a".to_vec(), None)
            .await
            .unwrap();
        // A key and a "folder" of the same name can both exist.
        blobs
            .put("uploads", "img", b"x".to_vec(), None)
            .await
            .unwrap();

        let (m, body) = blobs.get("uploads", "img/cat.png").await.unwrap().unwrap();
        assert_eq!((body.as_slice(), &m), (&b"meow"[..], &meta));
        let keys: Vec<String> = blobs
            .list("uploads", "img/")
            .await
            .unwrap()
            .into_iter()
            .map(|m| m.key)
            .collect();
        assert_eq!(keys, ["img/cat.png", "img/dog.png"]);
        assert_eq!(blobs.list("uploads", "").await.unwrap().len(), 4);

        let replaced = blobs
            .put("uploads", "img/cat.png", b"purr".to_vec(), None)
            .await
            .unwrap();
        assert!(replaced.replaced);
        assert_ne!(replaced.meta.etag, meta.etag);
        assert_eq!(
            blobs
                .get("uploads", "img/cat.png")
                .await
                .unwrap()
                .unwrap()
                .1,
            b"purr"
        );

        assert!(blobs.delete("uploads", "img/cat.png").await.unwrap());
        assert!(!blobs.delete("uploads", "img/cat.png").await.unwrap());
        assert!(blobs.get("uploads", "img/cat.png").await.unwrap().is_none());
        assert!(
            blobs
                .head("uploads", "img/dog.png")
                .await
                .unwrap()
                .is_some()
        );
        assert!(
            blobs.get("other", "img/dog.png").await.unwrap().is_none(),
            "buckets are separate"
        );
    }

    #[tokio::test]
    async fn traversal_is_refused_and_nothing_is_written() {
        let dir = tempfile::tempdir().unwrap();
        let blobs = EmbeddedBlobs::open(dir.path()).unwrap();
        for key in ["../../etc/passwd", "/abs", "a/../../b"] {
            let err = blobs
                .put("uploads", key, b"x".to_vec(), None)
                .await
                .unwrap_err();
            assert!(matches!(err, BlobError::InvalidKey(_)), "{key}: {err}");
        }
        assert!(
            std::fs::read_dir(dir.path().join("blobs"))
                .unwrap()
                .next()
                .is_none()
        );
        let big = vec![0u8; MAX_OBJECT_BYTES + 1];
        assert!(matches!(
            blobs.put("uploads", "big", big, None).await,
            Err(BlobError::TooLarge(_))
        ));
    }
}
