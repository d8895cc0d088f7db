//! The embedded blob store's change feed: [`ChangeFeed`] over its
//! database, and the bookkeeping behind it — which changes a consumer has
//! not been handed yet (its receipts), moving its cursor with its receipts
//! in one transaction, and forgetting consumers and old changes. The feed's rows are written with each put and delete
//! (`record`, in the handle's file).

use super::{CHANGE_COLUMNS, EmbeddedBlobs, Inner, db, row_to_change, row_to_meta};
use crate::blobs::{
    BlobError, CHANGE_RETENTION, Change, ChangeFeed, ChangeKind, Cursor, ObjectMeta,
};
use crate::task::BoxFuture;
use rusqlite::{OptionalExtension, params};
use std::sync::Arc;
use tokio::sync::Notify;

impl Inner {
    /// Of `changes`, those not yet handed to `consumer` (see
    /// `BlobBackend::undelivered`).
    pub(super) fn undelivered(
        &self,
        consumer: &str,
        changes: Vec<Change>,
    ) -> Result<Vec<Change>, BlobError> {
        let conn = self.db();
        let mut stmt = conn
            .prepare_cached(
                "SELECT etag, seq FROM blob_receipts WHERE consumer = ?1 AND bucket = ?2 AND key = ?3",
            )
            .map_err(db)?;
        // The receipts (etag, feed position) as they will be once the
        // earlier changes of this batch are delivered: a delete then a
        // re-upload of the same content is two changes, the same version
        // twice is one.
        type Seen = Option<(String, Option<u64>)>;
        let mut pending: std::collections::HashMap<(String, String), Seen> =
            std::collections::HashMap::new();
        let mut out = Vec::with_capacity(changes.len());
        for c in changes {
            let at = (c.bucket.clone(), c.key.clone());
            let seen: Seen = match pending.get(&at) {
                Some(s) => s.clone(),
                None => stmt
                    .query_row(params![consumer, c.bucket, c.key], |r| {
                        Ok((r.get(0)?, r.get(1)?))
                    })
                    .optional()
                    .map_err(db)?,
            };
            // A feed change no newer than the version delivered (a scan
            // listed the object after it happened) is already reflected.
            if let Some((_, Some(delivered_at))) = &seen
                && c.seq > 0
                && c.seq <= *delivered_at
            {
                continue;
            }
            if c.kind == ChangeKind::Deleted {
                pending.insert(at, None);
                out.push(c);
                continue;
            }
            if seen.as_ref().map(|(etag, _)| Some(etag)) == Some(c.etag.as_ref()) {
                continue;
            }
            let position = if c.seq > 0 { Some(c.seq) } else { c.as_of };
            pending.insert(at, c.etag.clone().map(|etag| (etag, position)));
            out.push(c);
        }
        Ok(out)
    }

    /// Receipts for `delivered` and the consumer's new cursor, in one
    /// transaction.
    pub(super) fn advance(
        &self,
        consumer: &str,
        cursor: Cursor,
        delivered: Vec<Change>,
    ) -> Result<(), BlobError> {
        let mut conn = self.db();
        let tx = conn.transaction().map_err(db)?;
        let now = crate::clock::now_ms();
        for c in &delivered {
            match (&c.kind, &c.etag) {
                (ChangeKind::Deleted, _) | (_, None) => {
                    tx.prepare_cached(
                        "DELETE FROM blob_receipts WHERE consumer = ?1 AND bucket = ?2 AND key = ?3",
                    )
                    .and_then(|mut s| s.execute(params![consumer, c.bucket, c.key]))
                    .map_err(db)?;
                }
                (_, Some(etag)) => {
                    // The feed position of the version delivered.
                    let position = if c.seq > 0 { Some(c.seq) } else { c.as_of };
                    tx.prepare_cached(
                        "INSERT INTO blob_receipts (consumer, bucket, key, etag, at_ms, seq) VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                         ON CONFLICT(consumer, bucket, key) DO UPDATE SET etag = excluded.etag, at_ms = excluded.at_ms, seq = excluded.seq",
                    )
                    .and_then(|mut s| s.execute(params![consumer, c.bucket, c.key, etag, now, position]))
                    .map_err(db)?;
                }
            }
        }
        tx.execute(
            "INSERT INTO blob_cursors (consumer, seq, spec) VALUES (?1, ?2, ?3)
             ON CONFLICT(consumer) DO UPDATE SET seq = excluded.seq, spec = excluded.spec",
            params![consumer, cursor.seq, cursor.spec],
        )
        .map_err(db)?;
        tx.commit().map_err(db)
    }

    /// Forget cursors not in `keep`, and changes every cursor has passed
    /// that are older than the retention.
    pub(super) fn prune(&self, keep: Vec<String>) -> Result<(), BlobError> {
        let mut conn = self.db();
        let tx = conn.transaction().map_err(db)?;
        let cursors: Vec<String> = {
            let mut stmt = tx
                .prepare("SELECT consumer FROM blob_cursors")
                .map_err(db)?;
            let rows = stmt.query_map([], |r| r.get(0)).map_err(db)?;
            rows.collect::<Result<_, _>>().map_err(db)?
        };
        for c in cursors.iter().filter(|c| !keep.contains(c)) {
            tx.execute("DELETE FROM blob_cursors WHERE consumer = ?1", params![c])
                .map_err(db)?;
        }
        let before = crate::clock::now_ms().saturating_sub(CHANGE_RETENTION.as_millis() as u64);
        tx.execute(
            "DELETE FROM blob_changes WHERE at_ms < ?1
             AND seq <= COALESCE((SELECT MIN(seq) FROM blob_cursors), seq)",
            params![before],
        )
        .map_err(db)?;
        tx.commit().map_err(db)
    }

    /// Forget the cursors and receipts of every consumer `owner…`.
    pub(super) fn forget(&self, owner: String) -> Result<(), BlobError> {
        let mut conn = self.db();
        let tx = conn.transaction().map_err(db)?;
        for table in ["blob_cursors", "blob_receipts"] {
            tx.execute(
                &format!("DELETE FROM {table} WHERE substr(consumer, 1, length(?1)) = ?1"),
                params![owner],
            )
            .map_err(db)?;
        }
        tx.commit().map_err(db)
    }
}

impl ChangeFeed for EmbeddedBlobs {
    fn list_at(
        &self,
        bucket: &str,
        prefix: &str,
        start_after: Option<String>,
        max: usize,
    ) -> BoxFuture<'_, Result<(Vec<ObjectMeta>, u64), BlobError>> {
        if let Err(e) = crate::blobs::validate_bucket(bucket) {
            return Box::pin(async move { Err(e) });
        }
        let (bucket, prefix) = (bucket.to_string(), prefix.to_string());
        self.blocking(move |inner| {
            // One read transaction: the page and the position agree (puts
            // and deletes change the index and the feed in one transaction).
            let mut conn = inner.db();
            let tx = conn.transaction().map_err(db)?;
            let at: u64 = tx
                .query_row("SELECT COALESCE(MAX(seq), 0) FROM blob_changes", [], |r| {
                    r.get(0)
                })
                .map_err(db)?;
            let page = tx
                .prepare_cached(
                    "SELECT key, size, etag, content_type, modified_ms FROM blob_objects
                     WHERE bucket = ?1 AND substr(key, 1, length(?2)) = ?2 AND (?3 IS NULL OR key > ?3)
                     ORDER BY key LIMIT ?4 + 0",
                )
                .and_then(|mut stmt| {
                    stmt.query_map(params![bucket, prefix, start_after, max as i64], row_to_meta)?
                        .collect::<Result<Vec<_>, _>>()
                })
                .map_err(db)?;
            Ok((page, at))
        })
    }

    fn changes(
        &self,
        bucket: Option<String>,
        after: u64,
        max: usize,
    ) -> BoxFuture<'_, Result<Vec<Change>, BlobError>> {
        self.blocking(move |inner| {
            let conn = inner.db();
            let mut stmt = conn
                .prepare_cached(&format!(
                    "SELECT {CHANGE_COLUMNS} FROM blob_changes WHERE seq > ?1 AND (?2 IS NULL OR bucket = ?2)
                     ORDER BY seq LIMIT ?3 + 0"
                ))
                .map_err(db)?;
            let rows = stmt
                .query_map(params![after, bucket, max as i64], row_to_change)
                .map_err(db)?;
            rows.collect::<Result<_, _>>().map_err(db)
        })
    }

    fn latest_change(&self) -> BoxFuture<'_, Result<u64, BlobError>> {
        self.blocking(|inner| {
            inner
                .db()
                .query_row("SELECT COALESCE(MAX(seq), 0) FROM blob_changes", [], |r| {
                    r.get(0)
                })
                .map_err(db)
        })
    }

    fn cursor(&self, consumer: &str) -> BoxFuture<'_, Result<Option<Cursor>, BlobError>> {
        let consumer = consumer.to_string();
        self.blocking(move |inner| {
            inner
                .db()
                .query_row(
                    "SELECT seq, spec FROM blob_cursors WHERE consumer = ?1",
                    params![consumer],
                    |r| {
                        Ok(Cursor {
                            seq: r.get(0)?,
                            spec: r.get(1)?,
                        })
                    },
                )
                .optional()
                .map_err(db)
        })
    }

    fn undelivered(
        &self,
        consumer: &str,
        changes: Vec<Change>,
    ) -> BoxFuture<'_, Result<Vec<Change>, BlobError>> {
        let consumer = consumer.to_string();
        self.blocking(move |inner| inner.undelivered(&consumer, changes))
    }

    fn advance(
        &self,
        consumer: &str,
        cursor: Cursor,
        delivered: Vec<Change>,
    ) -> BoxFuture<'_, Result<(), BlobError>> {
        let consumer = consumer.to_string();
        self.blocking(move |inner| inner.advance(&consumer, cursor, delivered))
    }

    fn prune(&self, keep: Vec<String>) -> BoxFuture<'_, Result<(), BlobError>> {
        self.blocking(move |inner| inner.prune(keep))
    }

    fn forget_function(&self, function: &str) -> BoxFuture<'_, Result<(), BlobError>> {
        let owner = format!("{function}/");
        self.blocking(move |inner| inner.forget(owner))
    }

    fn notifier(&self) -> Option<Arc<Notify>> {
        Some(self.inner.notify.clone())
    }
}
