//! The embedded blob store: each bucket is a folder under
//! `<data-dir>/blobs/`, each version of an object a file named by the
//! SHA-256 of its key and the start of its etag (so any valid key maps to
//! flat, safe file names), and an SQLite index (`<data-dir>/blobs.db`) holds
//! keys, metadata and which file is current.
//!
//! A put writes the new version's file (temp file, fsync, rename, fsync of
//! the folder) beside the current one, then switches the index to it in one
//! transaction, then removes the old file: the commit is the one step, so a
//! crash before it leaves the old object whole (and an unreferenced file,
//! removed at the next open) and a crash after it the new one, with its
//! change in the feed. Readers see the old object or the new one, never
//! half, and never new bytes under the old etag. A delete forgets the key
//! first, then removes the file, so a crash can leave an unreferenced file
//! but never a key without content.
//!
//! The change feed lives in the same database: the index update and its
//! [`Change`] row commit in one transaction, so no acknowledged write goes
//! unrecorded; cursors and receipts commit together too.

use crate::blobs::{
    BlobBackend, BlobError, Change, ChangeFeed, ChangeKind, ObjectMeta, Stored, validate,
};
mod feed;

use crate::task::BoxFuture;
use rusqlite::{Connection, OptionalExtension, params};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use tokio::sync::Notify;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS blob_objects (
    bucket TEXT NOT NULL,
    key TEXT NOT NULL,
    size INTEGER NOT NULL,
    etag TEXT NOT NULL,
    content_type TEXT,
    modified_ms INTEGER NOT NULL,
    file TEXT,
    PRIMARY KEY (bucket, key)
);
CREATE TABLE IF NOT EXISTS blob_changes (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    bucket TEXT NOT NULL,
    key TEXT NOT NULL,
    kind TEXT NOT NULL,
    etag TEXT,
    size INTEGER,
    content_type TEXT,
    at_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS blob_cursors (
    consumer TEXT PRIMARY KEY,
    seq INTEGER NOT NULL,
    spec TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS blob_receipts (
    consumer TEXT NOT NULL,
    bucket TEXT NOT NULL,
    key TEXT NOT NULL,
    etag TEXT NOT NULL,
    at_ms INTEGER NOT NULL,
    PRIMARY KEY (consumer, bucket, key)
);
";

const CHANGE_COLUMNS: &str = "seq, bucket, key, kind, etag, size, content_type, at_ms";

/// The embedded blob store's handle (cheap to clone).
#[derive(Clone)]
pub struct EmbeddedBlobs {
    inner: Arc<Inner>,
}

struct Inner {
    root: PathBuf,
    db: Mutex<Connection>,
    notify: Arc<Notify>,
}

fn db(e: rusqlite::Error) -> BlobError {
    BlobError::backend(e.to_string(), Some(std::sync::Arc::new(e)))
}

fn io(what: &str, path: &Path, e: std::io::Error) -> BlobError {
    BlobError::backend(
        format!("cannot {what} {path:?}: {e}"),
        Some(std::sync::Arc::new(e)),
    )
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
        // Receipts made before they recorded the feed position of the
        // version they are for have none (and are judged by etag alone).
        let positioned: bool = conn
            .prepare("SELECT 1 FROM pragma_table_info('blob_receipts') WHERE name = 'seq'")
            .and_then(|mut s| s.exists([]))
            .map_err(db)?;
        if !positioned {
            conn.execute_batch("ALTER TABLE blob_receipts ADD COLUMN seq INTEGER")
                .map_err(db)?;
        }
        // Objects written before versions had files of their own have none
        // (their file is named by the key alone).
        let versioned: bool = conn
            .prepare("SELECT 1 FROM pragma_table_info('blob_objects') WHERE name = 'file'")
            .and_then(|mut s| s.exists([]))
            .map_err(db)?;
        if !versioned {
            conn.execute_batch("ALTER TABLE blob_objects ADD COLUMN file TEXT")
                .map_err(db)?;
        }
        let inner = Inner {
            root,
            db: Mutex::new(conn),
            notify: Arc::new(Notify::new()),
        };
        inner.sweep()?;
        Ok(EmbeddedBlobs {
            inner: Arc::new(inner),
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
                .map_err(|e| BlobError::backend(format!("a blob task failed: {e}"), None))?
        })
    }
}

impl Inner {
    /// The file of an object's version: its key's hash, then (for versions
    /// written since files were versioned) the start of its etag.
    fn path(&self, bucket: &str, file: &str) -> PathBuf {
        self.root.join(bucket).join(file)
    }

    /// Where the current version of `key` lives, if it exists, with its metadata.
    fn current(
        &self,
        conn: &Connection,
        bucket: &str,
        key: &str,
    ) -> Result<Option<(ObjectMeta, String)>, BlobError> {
        conn.prepare_cached(
            "SELECT key, size, etag, content_type, modified_ms, file FROM blob_objects WHERE bucket = ?1 AND key = ?2",
        )
        .and_then(|mut s| {
            s.query_row(params![bucket, key], |r| {
                let file: Option<String> = r.get(5)?;
                Ok((
                    row_to_meta(r)?,
                    file.unwrap_or_else(|| legacy_file(key)),
                ))
            })
            .optional()
        })
        .map_err(db)
    }

    /// Remove what a crash left behind: temp files of puts cut off before
    /// their rename, and version files no index row names (a put cut off
    /// before its commit, or an old version whose removal was).
    fn sweep(&self) -> Result<(), BlobError> {
        let conn = self.db();
        let mut referenced = std::collections::HashSet::new();
        let mut stmt = conn
            .prepare("SELECT bucket, key, file FROM blob_objects")
            .map_err(db)?;
        let rows = stmt
            .query_map([], |r| {
                let (bucket, key, file): (String, String, Option<String>) =
                    (r.get(0)?, r.get(1)?, r.get(2)?);
                Ok((bucket, file.unwrap_or_else(|| legacy_file(&key))))
            })
            .map_err(db)?;
        for row in rows {
            referenced.insert(row.map_err(db)?);
        }
        let Ok(buckets) = std::fs::read_dir(&self.root) else {
            return Ok(());
        };
        let mut removed = 0usize;
        for bucket in buckets.flatten() {
            let name = bucket.file_name().to_string_lossy().into_owned();
            let Ok(files) = std::fs::read_dir(bucket.path()) else {
                continue;
            };
            for f in files.flatten() {
                let file = f.file_name().to_string_lossy().into_owned();
                if !referenced.contains(&(name.clone(), file))
                    && std::fs::remove_file(f.path()).is_ok()
                {
                    removed += 1;
                }
            }
        }
        if removed > 0 {
            tracing::info!(removed, "removed blob files left by an interrupted write");
        }
        Ok(())
    }

    fn db(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.db.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn meta(&self, bucket: &str, key: &str) -> Result<Option<ObjectMeta>, BlobError> {
        Ok(self.current(&self.db(), bucket, key)?.map(|(meta, _)| meta))
    }
}

/// The file of an object written before versions had files of their own.
fn legacy_file(key: &str) -> String {
    crate::files::sha256_hex(key.as_bytes())
}

/// The file of the version of `key` whose content hash is `etag`.
fn version_file(key: &str, etag: &str) -> String {
    format!("{}.{}", legacy_file(key), &etag[..etag.len().min(16)])
}

fn row_to_change(r: &rusqlite::Row<'_>) -> rusqlite::Result<Change> {
    let kind: String = r.get(3)?;
    Ok(Change {
        seq: r.get(0)?,
        bucket: r.get(1)?,
        key: r.get(2)?,
        kind: ChangeKind::parse(&kind).unwrap_or(ChangeKind::Updated),
        etag: r.get(4)?,
        size: r.get(5)?,
        content_type: r.get(6)?,
        at_ms: r.get(7)?,
        as_of: None,
    })
}

/// Record a change in the feed, inside the caller's transaction.
fn record(tx: &rusqlite::Transaction<'_>, bucket: &str, change: &Change) -> rusqlite::Result<()> {
    tx.prepare_cached(
        "INSERT INTO blob_changes (bucket, key, kind, etag, size, content_type, at_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )?
    .execute(params![
        bucket,
        change.key,
        change.kind.as_str(),
        change.etag,
        change.size,
        change.content_type,
        change.at_ms
    ])?;
    Ok(())
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

impl EmbeddedBlobs {
    /// Store an object; with `expect`, only while the current one's etag
    /// is that (`None` when it is not, with nothing written).
    fn write(
        &self,
        bucket: &str,
        key: &str,
        body: Vec<u8>,
        content_type: Option<String>,
        expect: Option<String>,
    ) -> BoxFuture<'_, Result<Option<Stored>, BlobError>> {
        if let Err(e) = crate::blobs::validate_put(bucket, key, body.len(), content_type.as_deref())
        {
            return Box::pin(async move { Err(e) });
        }
        let (bucket, key) = (bucket.to_string(), key.to_string());
        checked(&bucket.clone(), &key.clone(), move || {
            self.blocking(move |inner| {
                let etag = crate::files::sha256_hex(&body);
                let file = version_file(&key, &etag);
                let path = inner.path(&bucket, &file);
                let dir = path.parent().expect("an object path has a bucket folder");
                std::fs::create_dir_all(dir).map_err(|e| io("create", dir, e))?;
                // The bytes reach the disk outside the lock, in a file of
                // their own; the index switches to it in one transaction,
                // under the lock, so the index, the feed and the file always
                // name the same put when two race on one key.
                let tmp = crate::files::write_beside(&path, &body)
                    .map_err(|e| io("write", &path, e))?;
                let meta = ObjectMeta {
                    key,
                    size: body.len() as u64,
                    etag,
                    content_type,
                    modified_ms: crate::clock::now_ms(),
                };
                let mut conn = inner.db();
                let current = inner.current(&conn, &bucket, &meta.key)?;
                if let Some(etag) = &expect
                    && current.as_ref().map(|(m, _)| &m.etag) != Some(etag)
                {
                    // Changed or gone: the new bytes' file goes with `tmp`.
                    return Ok(None);
                }
                let old = current.map(|(_, f)| f);
                crate::files::put_in_place(tmp, &path).map_err(|e| io("write", &path, e))?;
                // One transaction for the check, the write and its change, so
                // concurrent puts agree on which of them created the object
                // and no write is left out of the feed.
                let tx = conn.transaction().map_err(db)?;
                tx.execute(
                        "INSERT INTO blob_objects (bucket, key, size, etag, content_type, modified_ms, file) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
                         ON CONFLICT(bucket, key) DO UPDATE SET size = excluded.size, etag = excluded.etag,
                             content_type = excluded.content_type, modified_ms = excluded.modified_ms, file = excluded.file",
                        params![bucket, meta.key, meta.size, meta.etag, meta.content_type, meta.modified_ms, file],
                    )
                    .map_err(db)?;
                let replaced = old.is_some();
                let kind = if replaced {
                    ChangeKind::Updated
                } else {
                    ChangeKind::Created
                };
                let change = Change::written(&bucket, meta.clone(), kind);
                record(&tx, &bucket, &change).map_err(db)?;
                tx.commit().map_err(db)?;
                // The old version's file, now unreferenced (a crash here
                // leaves it for the next open's sweep).
                if let Some(old) = old.filter(|o| *o != file)
                    && let Err(e) = std::fs::remove_file(inner.path(&bucket, &old))
                    && e.kind() != std::io::ErrorKind::NotFound
                {
                    tracing::warn!(bucket = %bucket, error = %e, "cannot delete a replaced object's old file; the next open's sweep removes it");
                }
                drop(conn);
                inner.notify.notify_one();
                Ok(Some(Stored { meta, replaced }))
            })
        })
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
        let write = self.write(bucket, key, body, content_type, None);
        Box::pin(async move { Ok(write.await?.expect("an unconditional write always writes")) })
    }

    fn replace_if(
        &self,
        bucket: &str,
        key: &str,
        body: Vec<u8>,
        content_type: Option<String>,
        etag: String,
    ) -> BoxFuture<'_, Result<Option<Stored>, BlobError>> {
        self.write(bucket, key, body, content_type, Some(etag))
    }

    fn get(
        &self,
        bucket: &str,
        key: &str,
    ) -> BoxFuture<'_, Result<Option<crate::blobs::Object>, BlobError>> {
        let (bucket, key) = (bucket.to_string(), key.to_string());
        checked(&bucket.clone(), &key.clone(), move || {
            self.blocking(move |inner| {
                // A put may replace the version between the lookup and the
                // read (its old file is then gone): look again.
                for _ in 0..3 {
                    let Some((meta, file)) = inner.current(&inner.db(), &bucket, &key)? else {
                        return Ok(None);
                    };
                    let path = inner.path(&bucket, &file);
                    match std::fs::read(&path) {
                        Ok(body) => return Ok(Some((meta, body))),
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                        Err(e) => return Err(io("read", &path, e)),
                    }
                }
                tracing::warn!(bucket = %bucket, key = %crate::text::LogSafe(&key), "an indexed object has no file; treating it as absent");
                Ok(None)
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
                let mut conn = inner.db();
                let file = inner.current(&conn, &bucket, &key)?.map(|(_, f)| f);
                let tx = conn.transaction().map_err(db)?;
                let n = tx
                    .execute(
                        "DELETE FROM blob_objects WHERE bucket = ?1 AND key = ?2",
                        params![bucket, key],
                    )
                    .map_err(db)?;
                if n == 1 {
                    let change = Change {
                        seq: 0,
                        bucket: bucket.clone(),
                        key: key.clone(),
                        kind: ChangeKind::Deleted,
                        etag: None,
                        size: None,
                        content_type: None,
                        at_ms: crate::clock::now_ms(),
                        as_of: None,
                    };
                    record(&tx, &bucket, &change).map_err(db)?;
                }
                tx.commit().map_err(db)?;
                // Under the lock too: a put racing this delete must not have
                // its new file removed after it was indexed.
                let removed = match file.map(|f| inner.path(&bucket, &f)) {
                    None => Ok(()),
                    Some(path) => match std::fs::remove_file(&path) {
                        Ok(()) => Ok(()),
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                        Err(e) => Err(io("remove", &path, e)),
                    },
                };
                drop(conn);
                if n == 1 {
                    inner.notify.notify_one();
                }
                removed?;
                Ok(n == 1)
            })
        })
    }

    fn list(
        &self,
        bucket: &str,
        prefix: &str,
        start_after: Option<String>,
        max: usize,
    ) -> BoxFuture<'_, Result<Vec<ObjectMeta>, BlobError>> {
        let page = self.list_at(bucket, prefix, start_after, max);
        Box::pin(async move { Ok(page.await?.0) })
    }

    fn feed(&self) -> Option<Arc<dyn ChangeFeed>> {
        Some(Arc::new(self.clone()))
    }
}

#[cfg(test)]
mod tests;
