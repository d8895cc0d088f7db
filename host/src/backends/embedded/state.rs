//! The embedded state store: documents in `<data-dir>/state.db` (SQLite,
//! WAL, `synchronous=FULL`), each with a random version that changes on
//! every write; a conditional write checks and writes in one transaction.
//! One host's state, for tests and a single host; a fleet uses S3.

use crate::state::{Listed, StateError, StateStore, Versioned, Write, validate_key};
use crate::task::BoxFuture;
use rusqlite::{Connection, OptionalExtension, params};
use std::path::Path;
use std::sync::{Arc, Mutex};

/// The embedded state store's handle (cheap to clone).
#[derive(Clone)]
pub struct EmbeddedState {
    db: Arc<Mutex<Connection>>,
}

fn db(e: rusqlite::Error) -> StateError {
    StateError::backend(e.to_string(), Some(Arc::new(e)))
}

impl EmbeddedState {
    /// Open (or create) the store in `data_dir`.
    pub fn open(data_dir: &Path) -> Result<EmbeddedState, StateError> {
        let conn = Connection::open(data_dir.join("state.db")).map_err(db)?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(db)?;
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(db)?;
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS state (key TEXT PRIMARY KEY, bytes BLOB NOT NULL, version TEXT NOT NULL)",
        )
        .map_err(db)?;
        Ok(EmbeddedState {
            db: Arc::new(Mutex::new(conn)),
        })
    }

    fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection) -> Result<T, StateError> + Send + 'static,
    ) -> BoxFuture<'_, Result<T, StateError>> {
        let db = self.db.clone();
        Box::pin(async move {
            crate::task::blocking(move || f(&mut db.lock().unwrap_or_else(|e| e.into_inner())))
                .await
        })
    }
}

fn refuse<'a, T: Send + 'a>(e: StateError) -> BoxFuture<'a, Result<T, StateError>> {
    Box::pin(async move { Err(e) })
}

impl StateStore for EmbeddedState {
    fn get(&self, key: &str) -> BoxFuture<'_, Result<Option<Versioned>, StateError>> {
        if let Err(e) = validate_key(key) {
            return refuse(e);
        }
        let key = key.to_string();
        self.blocking(move |conn| {
            conn.query_row(
                "SELECT bytes, version FROM state WHERE key = ?1",
                [&key],
                |r| {
                    Ok(Versioned {
                        bytes: r.get(0)?,
                        version: r.get(1)?,
                    })
                },
            )
            .optional()
            .map_err(db)
        })
    }

    fn put(
        &self,
        key: &str,
        bytes: Vec<u8>,
        condition: Write,
    ) -> BoxFuture<'_, Result<String, StateError>> {
        if let Err(e) = validate_key(key) {
            return refuse(e);
        }
        let key = key.to_string();
        self.blocking(move |conn| {
            let tx = conn.transaction().map_err(db)?;
            let now: Option<String> = tx
                .query_row("SELECT version FROM state WHERE key = ?1", [&key], |r| {
                    r.get(0)
                })
                .optional()
                .map_err(db)?;
            let holds = match (&condition, &now) {
                (Write::Create, None) | (Write::Overwrite, _) => true,
                (Write::Replace(v), Some(n)) => v == n,
                _ => false,
            };
            if !holds {
                return Err(StateError::Conflict(crate::text::quote(&key)));
            }
            let version = uuid::Uuid::now_v7().to_string();
            tx.execute(
                "INSERT INTO state (key, bytes, version) VALUES (?1, ?2, ?3)
                 ON CONFLICT(key) DO UPDATE SET bytes = excluded.bytes, version = excluded.version",
                params![key, bytes, version],
            )
            .map_err(db)?;
            tx.commit().map_err(db)?;
            Ok(version)
        })
    }

    fn delete(&self, key: &str) -> BoxFuture<'_, Result<bool, StateError>> {
        let key = key.to_string();
        self.blocking(move |conn| {
            conn.execute("DELETE FROM state WHERE key = ?1", [&key])
                .map(|n| n == 1)
                .map_err(db)
        })
    }

    fn list(
        &self,
        prefix: &str,
        after: Option<String>,
        max: usize,
    ) -> BoxFuture<'_, Result<Vec<Listed>, StateError>> {
        let prefix = prefix.to_string();
        self.blocking(move |conn| {
            let mut stmt = conn
                .prepare(
                    "SELECT key, version FROM state WHERE substr(key, 1, length(?1)) = ?1 AND (?2 IS NULL OR key > ?2)
                     ORDER BY key LIMIT ?3",
                )
                .map_err(db)?;
            let rows = stmt
                .query_map(params![prefix, after, max as i64], |r| {
                    Ok(Listed {
                        key: r.get(0)?,
                        version: r.get(1)?,
                    })
                })
                .map_err(db)?;
            rows.collect::<Result<_, _>>().map_err(db)
        })
    }
}
