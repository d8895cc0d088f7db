//! The registry: deployed functions, every version of each, and which one is
//! active, kept in the host's SQLite database; component files kept by
//! content hash under `<data-dir>/components`.
//!
//! It stores and answers; it knows nothing of wasm (compiling is the
//! sandbox's job) or HTTP. Calls block: run them on a blocking thread.

use rusqlite::{Connection, OptionalExtension, params};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// A registry failure.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The database refused or failed.
    #[error("the registry database failed: {0}")]
    Db(#[from] rusqlite::Error),
    /// A component file could not be read or written.
    #[error("cannot access component file {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        source: std::io::Error,
    },
}

/// One deployed version of a function.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionRecord {
    /// The function's name.
    pub name: String,
    /// 1, 2, 3, … per function.
    pub version: u32,
    /// SHA-256 of the component, hex.
    pub digest: String,
    /// The manifest text as deployed.
    pub manifest: String,
    /// The component's size in bytes.
    pub size: u64,
    /// Deploy time, milliseconds since the Unix epoch.
    pub created_at_ms: u64,
}

/// A function and its active version.
#[derive(Debug, Clone, Serialize)]
pub struct FunctionRecord {
    /// The function's name.
    pub name: String,
    /// The version that serves invocations.
    pub active_version: u32,
    /// Every version kept, oldest first.
    pub versions: Vec<u32>,
}

/// The registry's handle.
pub struct Registry {
    db: Mutex<Connection>,
    components: PathBuf,
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS functions (
    name TEXT PRIMARY KEY,
    active_version INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS versions (
    name TEXT NOT NULL,
    version INTEGER NOT NULL,
    digest TEXT NOT NULL,
    manifest TEXT NOT NULL,
    size INTEGER NOT NULL,
    created_at_ms INTEGER NOT NULL,
    PRIMARY KEY (name, version)
);
CREATE TABLE IF NOT EXISTS timers (
    function TEXT PRIMARY KEY,
    spec TEXT NOT NULL,
    last_run_ms INTEGER,
    next_run_ms INTEGER,
    skipped INTEGER NOT NULL DEFAULT 0,
    last_skipped_ms INTEGER
);
";

/// A timer trigger's persisted schedule state.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TimerState {
    /// The schedule (and time zone) this state belongs to.
    pub spec: String,
    /// When the last run that started was due, ms since the epoch.
    pub last_run_ms: Option<u64>,
    /// When the next run is due.
    pub next_run_ms: Option<u64>,
    /// Ticks skipped because the previous run was still going.
    pub skipped: u64,
    /// When the last skipped tick was due.
    pub last_skipped_ms: Option<u64>,
}

impl Registry {
    /// Open (or create) the registry in `data_dir`.
    pub fn open(data_dir: &Path) -> Result<Registry, RegistryError> {
        let components = data_dir.join("components");
        std::fs::create_dir_all(&components).map_err(|source| RegistryError::Io {
            path: components.clone(),
            source,
        })?;
        let conn = Connection::open(data_dir.join("fnhost.db"))?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        conn.execute_batch(SCHEMA)?;
        Ok(Registry {
            db: Mutex::new(conn),
            components,
        })
    }

    fn db(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.db.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn component_path(&self, digest: &str) -> PathBuf {
        self.components.join(format!("{digest}.wasm"))
    }

    /// Store component bytes by content hash (atomically); returns the digest.
    pub fn store_component(&self, wasm: &[u8]) -> Result<String, RegistryError> {
        let digest = crate::files::sha256_hex(wasm);
        let path = self.component_path(&digest);
        if !path.exists() {
            crate::files::write_atomic(&path, wasm).map_err(|source| RegistryError::Io {
                path: path.clone(),
                source,
            })?;
        }
        Ok(digest)
    }

    /// The bytes of a stored component.
    pub fn component(&self, digest: &str) -> Result<Vec<u8>, RegistryError> {
        let path = self.component_path(digest);
        std::fs::read(&path).map_err(|source| RegistryError::Io { path, source })
    }

    /// Record a new version and make it active, in one transaction.
    pub fn add_version(
        &self,
        name: &str,
        digest: &str,
        manifest: &str,
        size: u64,
    ) -> Result<VersionRecord, RegistryError> {
        let mut db = self.db();
        let tx = db.transaction()?;
        let version: u32 = tx.query_row(
            "SELECT COALESCE(MAX(version), 0) + 1 FROM versions WHERE name = ?1",
            [name],
            |r| r.get(0),
        )?;
        let created_at_ms = crate::clock::now_ms();
        tx.execute(
            "INSERT INTO versions (name, version, digest, manifest, size, created_at_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![name, version, digest, manifest, size, created_at_ms],
        )?;
        tx.execute(
            "INSERT INTO functions (name, active_version) VALUES (?1, ?2)
             ON CONFLICT(name) DO UPDATE SET active_version = excluded.active_version",
            params![name, version],
        )?;
        tx.commit()?;
        Ok(VersionRecord {
            name: name.into(),
            version,
            digest: digest.into(),
            manifest: manifest.into(),
            size,
            created_at_ms,
        })
    }

    /// One version of a function.
    pub fn version(
        &self,
        name: &str,
        version: u32,
    ) -> Result<Option<VersionRecord>, RegistryError> {
        Ok(self
            .db()
            .query_row(
                "SELECT name, version, digest, manifest, size, created_at_ms FROM versions WHERE name = ?1 AND version = ?2",
                params![name, version],
                row_to_version,
            )
            .optional()?)
    }

    /// The active version of every function (what a starting host loads).
    pub fn active_versions(&self) -> Result<Vec<VersionRecord>, RegistryError> {
        let db = self.db();
        let mut stmt = db.prepare(
            "SELECT v.name, v.version, v.digest, v.manifest, v.size, v.created_at_ms
             FROM functions f JOIN versions v ON v.name = f.name AND v.version = f.active_version
             ORDER BY v.name",
        )?;
        let rows = stmt
            .query_map([], row_to_version)?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(rows)
    }

    /// Every function with its versions.
    pub fn functions(&self) -> Result<Vec<FunctionRecord>, RegistryError> {
        let db = self.db();
        let mut stmt = db.prepare(
            "SELECT f.name, f.active_version, v.version FROM functions f
             JOIN versions v ON v.name = f.name ORDER BY f.name, v.version",
        )?;
        let mut out: Vec<FunctionRecord> = Vec::new();
        let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get(1)?, r.get(2)?)))?;
        for row in rows {
            let (name, active_version, version) = row?;
            match out.last_mut() {
                Some(f) if f.name == name => f.versions.push(version),
                _ => out.push(FunctionRecord {
                    name,
                    active_version,
                    versions: vec![version],
                }),
            }
        }
        Ok(out)
    }

    /// Make the versions of `name` exactly `versions` (as numbered
    /// elsewhere: a fleet's shared record) with `active` the active one,
    /// in one transaction: versions missing here are added, versions here
    /// that are not there (or differ) are dropped. Their components must
    /// be stored already.
    pub fn mirror(
        &self,
        name: &str,
        versions: &[VersionRecord],
        active: u32,
    ) -> Result<(), RegistryError> {
        let mut db = self.db();
        let tx = db.transaction()?;
        let here: Vec<VersionRecord> = {
            let mut stmt = tx.prepare(
                "SELECT name, version, digest, manifest, size, created_at_ms FROM versions WHERE name = ?1",
            )?;
            stmt.query_map([name], row_to_version)?
                .collect::<Result<_, _>>()?
        };
        for stale in here.iter().filter(|h| !versions.contains(h)) {
            tx.execute(
                "DELETE FROM versions WHERE name = ?1 AND version = ?2",
                params![name, stale.version],
            )?;
        }
        for v in versions.iter().filter(|v| !here.contains(v)) {
            tx.execute(
                "INSERT INTO versions (name, version, digest, manifest, size, created_at_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![name, v.version, v.digest, v.manifest, v.size, v.created_at_ms],
            )?;
        }
        tx.execute(
            "INSERT INTO functions (name, active_version) VALUES (?1, ?2)
             ON CONFLICT(name) DO UPDATE SET active_version = excluded.active_version",
            params![name, active],
        )?;
        tx.commit()?;
        Ok(())
    }

    /// Does the component `digest` exist here?
    pub fn has_component(&self, digest: &str) -> bool {
        self.component_path(digest).exists()
    }

    /// Make `version` of `name` active.
    pub fn activate(&self, name: &str, version: u32) -> Result<(), RegistryError> {
        self.db().execute(
            "UPDATE functions SET active_version = ?2 WHERE name = ?1",
            params![name, version],
        )?;
        Ok(())
    }

    /// A function's timer state, if its timer has ever been scheduled.
    pub fn timer(&self, function: &str) -> Result<Option<TimerState>, RegistryError> {
        Ok(self
            .db()
            .query_row(
                "SELECT spec, last_run_ms, next_run_ms, skipped, last_skipped_ms FROM timers WHERE function = ?1",
                [function],
                |r| {
                    Ok(TimerState {
                        spec: r.get(0)?,
                        last_run_ms: r.get(1)?,
                        next_run_ms: r.get(2)?,
                        skipped: r.get(3)?,
                        last_skipped_ms: r.get(4)?,
                    })
                },
            )
            .optional()?)
    }

    /// Save a function's timer state: `create` it when a scheduler starts,
    /// otherwise only update a state that still exists, so a scheduler that
    /// is being replaced cannot bring back a state [`Registry::forget_timer`]
    /// has just deleted.
    pub fn save_timer(
        &self,
        function: &str,
        state: &TimerState,
        create: bool,
    ) -> Result<(), RegistryError> {
        let sql = if create {
            "INSERT INTO timers (function, spec, last_run_ms, next_run_ms, skipped, last_skipped_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)
             ON CONFLICT(function) DO UPDATE SET spec = excluded.spec, last_run_ms = excluded.last_run_ms,
                 next_run_ms = excluded.next_run_ms, skipped = excluded.skipped, last_skipped_ms = excluded.last_skipped_ms"
        } else {
            "UPDATE timers SET spec = ?2, last_run_ms = ?3, next_run_ms = ?4, skipped = ?5, last_skipped_ms = ?6
             WHERE function = ?1"
        };
        self.db().execute(
            sql,
            params![
                function,
                state.spec,
                state.last_run_ms,
                state.next_run_ms,
                state.skipped,
                state.last_skipped_ms
            ],
        )?;
        Ok(())
    }

    /// Forget a function's timer state (its active version has no timer), so
    /// a timer added again later starts afresh instead of running once
    /// "past due" for the time it was gone.
    pub fn forget_timer(&self, function: &str) -> Result<(), RegistryError> {
        self.db()
            .execute("DELETE FROM timers WHERE function = ?1", [function])?;
        Ok(())
    }

    /// Forget a function and all its versions; delete component files no
    /// other version uses. False when there was no such function.
    pub fn remove(&self, name: &str) -> Result<bool, RegistryError> {
        let digests: Vec<String> = {
            let mut db = self.db();
            let tx = db.transaction()?;
            let digests = {
                let mut stmt = tx.prepare(
                    "SELECT DISTINCT digest FROM versions WHERE name = ?1
                     AND digest NOT IN (SELECT digest FROM versions WHERE name != ?1)",
                )?;
                stmt.query_map([name], |r| r.get(0))?
                    .collect::<Result<Vec<_>, _>>()?
            };
            let removed = tx.execute("DELETE FROM functions WHERE name = ?1", [name])?;
            tx.execute("DELETE FROM versions WHERE name = ?1", [name])?;
            tx.execute("DELETE FROM timers WHERE function = ?1", [name])?;
            tx.commit()?;
            if removed == 0 {
                return Ok(false);
            }
            digests
        };
        for digest in digests {
            let path = self.component_path(&digest);
            if let Err(e) = std::fs::remove_file(&path)
                && e.kind() != std::io::ErrorKind::NotFound
            {
                tracing::warn!(path = ?path, error = %e, "the function is removed but its component file cannot be deleted; delete it by hand");
            }
        }
        Ok(true)
    }
}

fn row_to_version(r: &rusqlite::Row<'_>) -> rusqlite::Result<VersionRecord> {
    Ok(VersionRecord {
        name: r.get(0)?,
        version: r.get(1)?,
        digest: r.get(2)?,
        manifest: r.get(3)?,
        size: r.get(4)?,
        created_at_ms: r.get(5)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_are_kept_and_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        {
            let reg = Registry::open(dir.path()).unwrap();
            let d1 = reg.store_component(b"one").unwrap();
            let d2 = reg.store_component(b"two").unwrap();
            assert_eq!(
                reg.add_version("a", &d1, "name = \"a\"", 3)
                    .unwrap()
                    .version,
                1
            );
            assert_eq!(
                reg.add_version("a", &d2, "name = \"a\"", 3)
                    .unwrap()
                    .version,
                2
            );
            reg.add_version("b", &d1, "name = \"b\"", 3).unwrap();
            reg.activate("a", 1).unwrap();
        }
        let reg = Registry::open(dir.path()).unwrap();
        let active = reg.active_versions().unwrap();
        assert_eq!(
            active
                .iter()
                .map(|v| (v.name.as_str(), v.version))
                .collect::<Vec<_>>(),
            [("a", 1), ("b", 1)]
        );
        assert_eq!(reg.component(&active[0].digest).unwrap(), b"one");
        let fns = reg.functions().unwrap();
        assert_eq!(fns[0].versions, [1, 2]);

        // Removing `a` keeps the component `b` still uses.
        assert!(reg.remove("a").unwrap());
        assert!(!reg.remove("a").unwrap());
        assert_eq!(reg.component(&active[1].digest).unwrap(), b"one");
        assert_eq!(reg.functions().unwrap().len(), 1);

        let (d1, d2) = (
            reg.store_component(b"one").unwrap(),
            reg.store_component(b"two").unwrap(),
        );
        // Mirroring another registry's history replaces this one's.
        let theirs = vec![
            VersionRecord {
                name: "b".into(),
                version: 1,
                digest: d2.clone(),
                manifest: "name = \"b\"".into(),
                size: 3,
                created_at_ms: 5,
            },
            VersionRecord {
                name: "b".into(),
                version: 4,
                digest: d1.clone(),
                manifest: "name = \"b\"".into(),
                size: 3,
                created_at_ms: 6,
            },
        ];
        reg.mirror("b", &theirs, 4).unwrap();
        assert_eq!(reg.version("b", 1).unwrap().as_ref(), Some(&theirs[0]));
        assert_eq!(reg.functions().unwrap()[0].versions, [1, 4]);
        assert_eq!(reg.active_versions().unwrap()[0], theirs[1]);
        reg.mirror("b", &theirs[1..], 4).unwrap();
        assert_eq!(reg.version("b", 1).unwrap(), None);
    }
}
