//! The operator's list of components the trusted worker may run:
//! `<trusted-dir>/allowed-components`, one SHA-256 (hex, as `fnhost list`
//! and the deploy answer show it) per line, `#` for comments. The public
//! process cannot write it (Landlock keeps it out of the trusted dir), so
//! with the list in place a public process taken over cannot have the
//! worker run code of its own as a trusted function: only what an operator
//! with access to the trusted dir allowed. Without the file every deployed
//! trusted component runs (the default).
//!
//! The file is read again whenever its modification time changes, so an
//! operator's edit takes effect at the next invocation.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::SystemTime;

/// The list's file name in the trusted dir.
pub const FILE: &str = "allowed-components";

/// The largest list file read, in bytes (a digest a line: 65 bytes).
pub const MAX_FILE_BYTES: u64 = 1 << 20;

/// The allowed components, as last read.
pub struct Allowed {
    path: PathBuf,
    /// The file's modification time and digests when last read; none
    /// while there is no file.
    cached: Mutex<Option<(SystemTime, HashSet<String>)>>,
}

impl Allowed {
    /// The list in `trusted_dir`.
    pub fn new(trusted_dir: &std::path::Path) -> Allowed {
        Allowed {
            path: trusted_dir.join(FILE),
            cached: Mutex::new(None),
        }
    }

    /// May the component `digest` run? An error says why not.
    pub fn check(&self, digest: &str) -> Result<(), NotAllowed> {
        let unreadable = |source| NotAllowed::Unreadable {
            path: self.path.clone(),
            source,
        };
        let modified = match std::fs::metadata(&self.path) {
            Ok(m) if m.len() > MAX_FILE_BYTES => {
                return Err(NotAllowed::TooLarge(self.path.clone()));
            }
            Ok(m) => m.modified().unwrap_or(SystemTime::UNIX_EPOCH),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(unreadable(e)),
        };
        let mut cached = self.cached.lock().unwrap_or_else(|e| e.into_inner());
        if cached.as_ref().map(|(t, _)| *t) != Some(modified) {
            let text = std::fs::read_to_string(&self.path).map_err(unreadable)?;
            let digests = text
                .lines()
                .map(|l| {
                    l.split('#')
                        .next()
                        .unwrap_or("")
                        .trim()
                        .to_ascii_lowercase()
                })
                .filter(|l| !l.is_empty())
                .collect();
            *cached = Some((modified, digests));
        }
        let (_, digests) = cached.as_ref().expect("read above");
        if digests.contains(digest) {
            Ok(())
        } else {
            Err(NotAllowed::NotListed {
                digest: digest.to_string(),
                path: self.path.clone(),
            })
        }
    }
}

/// Why the trusted worker will not run a component. Each clears when an
/// operator fixes the list, so a later attempt can succeed.
#[derive(Debug, thiserror::Error)]
pub enum NotAllowed {
    /// The list is over its size cap.
    #[error(
        "{0:?} is over {MAX_FILE_BYTES} bytes: the trusted worker runs nothing until it is fixed"
    )]
    TooLarge(std::path::PathBuf),
    /// The list is there but cannot be read.
    #[error("cannot read {path:?} ({source}): the trusted worker runs nothing until it can")]
    Unreadable {
        /// The list.
        path: std::path::PathBuf,
        /// What the OS said.
        #[source]
        source: std::io::Error,
    },
    /// The list does not name the component.
    #[error(
        "the component {digest} is not in {path:?}: an operator must add it (one digest a line) before the trusted worker runs it"
    )]
    NotListed {
        /// The component's SHA-256.
        digest: String,
        /// The list.
        path: std::path::PathBuf,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_a_list_all_run_with_one_only_those_listed() {
        let dir = tempfile::tempdir().unwrap();
        let allowed = Allowed::new(dir.path());
        allowed.check("aa").unwrap();
        std::fs::write(dir.path().join(FILE), "# the vault\nBB  # v3\n\n").unwrap();
        let err = allowed.check("aa").unwrap_err().to_string();
        assert!(err.contains("not in") && err.contains(FILE), "{err}");
        allowed.check("bb").unwrap();
        // An edit takes effect (a later modification time).
        std::thread::sleep(std::time::Duration::from_millis(20));
        std::fs::write(dir.path().join(FILE), "aa\n").unwrap();
        let later = SystemTime::now() + std::time::Duration::from_secs(1);
        std::fs::File::options()
            .write(true)
            .open(dir.path().join(FILE))
            .unwrap()
            .set_modified(later)
            .unwrap();
        allowed.check("aa").unwrap();
        assert!(allowed.check("bb").is_err());
    }
}
