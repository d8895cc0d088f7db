//! Helpers every on-disk store shares: content hashes as hex, atomic file
//! writes, and directories of fnhost's own (private, 0700; never one that
//! another user owns or may write in). Knows nothing of wasm, queues or
//! HTTP.

use sha2::{Digest, Sha256};
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};

/// Lower-case hex of bytes (a digest, a random token).
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The SHA-256 of `bytes`, as lower-case hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

/// Write a file so that readers see the old content or the new, never half:
/// a temp file beside it, fsync, rename, fsync of the folder.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    put_in_place(write_beside(path, bytes)?, path)
}

/// The slow half of [`write_atomic`]: the bytes in a temp file beside
/// `path`, on disk. Nothing is visible at `path` yet.
pub fn write_beside(path: &Path, bytes: &[u8]) -> std::io::Result<tempfile::NamedTempFile> {
    use std::io::Write;
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
    tmp.write_all(bytes)?;
    tmp.as_file().sync_all()?;
    Ok(tmp)
}

/// The quick half of [`write_atomic`]: rename the temp file onto `path`
/// and make the rename durable.
pub fn put_in_place(tmp: tempfile::NamedTempFile, path: &Path) -> std::io::Result<()> {
    tmp.persist(path).map_err(|e| e.error)?;
    let dir = path.parent().unwrap_or(Path::new("."));
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// Why a directory cannot be made fnhost's own.
#[derive(Debug, thiserror::Error)]
pub enum DirError {
    /// Other users may write in it: fnhost does not take it over.
    #[error(
        "{path:?} is shared (mode {mode:04o}, owner uid {uid}): give fnhost a directory of its own, e.g. {suggestion:?}, which it creates"
    )]
    Shared {
        /// The directory.
        path: PathBuf,
        /// Its mode bits (permissions, sticky bit).
        mode: u32,
        /// Its owner.
        uid: u32,
        /// A directory fnhost could make inside it instead.
        suggestion: PathBuf,
    },
    /// Another user's: fnhost does not change its mode.
    #[error(
        "{path:?} belongs to uid {uid}, not to uid {me} that fnhost runs as: give fnhost a directory of its own (or run it as that user)"
    )]
    NotOurs {
        /// The directory.
        path: PathBuf,
        /// Its owner.
        uid: u32,
        /// The user fnhost runs as.
        me: u32,
    },
    /// Something else is there.
    #[error("{0:?} exists and is not a directory: name a directory")]
    NotADirectory(PathBuf),
    /// A path whose part that does not exist yet goes up (`..`).
    #[error("{0:?} goes up (`..`) below a directory that does not exist yet: name it without `..`")]
    GoesUp(PathBuf),
    /// The file system refused.
    #[error("{path:?}: {source}")]
    Io {
        /// Where.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> DirError + '_ {
    move |source| DirError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Where `dir` is, found without changing anything: its canonical path
/// when it exists, else its nearest existing ancestor's canonical path
/// with the rest appended (so a symlink on the way is followed as the OS
/// will follow it when the directory is made).
pub fn resolve(dir: &Path) -> Result<PathBuf, DirError> {
    let absolute = std::path::absolute(dir).map_err(io_error(dir))?;
    let mut existing = absolute.as_path();
    while !existing.exists() {
        existing = match existing.parent() {
            Some(parent) => parent,
            None => break,
        };
    }
    let base = existing.canonicalize().map_err(io_error(existing))?;
    let rest = absolute.strip_prefix(existing).unwrap_or(Path::new(""));
    let mut resolved = base;
    for part in rest.components() {
        match part {
            std::path::Component::Normal(name) => resolved.push(name),
            std::path::Component::CurDir => {}
            _ => return Err(DirError::GoesUp(dir.to_path_buf())),
        }
    }
    Ok(resolved)
}

/// Can `dir` be made fnhost's private directory without taking over
/// anyone else's? True when it does not exist yet, or is a directory this
/// user owns that others cannot write in (no sticky bit, not
/// world-writable, as `/tmp` is). Changes nothing.
pub fn check_own_dir(dir: &Path) -> Result<(), DirError> {
    let meta = match std::fs::metadata(dir) {
        Ok(meta) => meta,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io_error(dir)(e)),
    };
    if !meta.is_dir() {
        return Err(DirError::NotADirectory(dir.to_path_buf()));
    }
    let mode = meta.mode() & 0o7777;
    if mode & 0o1000 != 0 || mode & 0o002 != 0 {
        return Err(DirError::Shared {
            path: dir.to_path_buf(),
            mode,
            uid: meta.uid(),
            suggestion: dir.join("fnhost"),
        });
    }
    // SAFETY: geteuid(2) cannot fail and touches no memory.
    let me = unsafe { libc::geteuid() };
    if meta.uid() != me {
        return Err(DirError::NotOurs {
            path: dir.to_path_buf(),
            uid: meta.uid(),
            me,
        });
    }
    Ok(())
}

/// Make `dir` fnhost's private directory (mode 0700): create it (and any
/// missing parent, 0700 too) when missing; when it exists, check it is
/// ours ([`check_own_dir`]: never change the mode of a directory that is
/// not), then tighten it. The mode it had when it had to be tightened.
pub fn private_dir(dir: &Path) -> Result<Option<u32>, DirError> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    check_own_dir(dir)?;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(io_error(dir))?;
    // Again: made by someone else between the check and the create.
    check_own_dir(dir)?;
    let mode = std::fs::metadata(dir).map_err(io_error(dir))?.mode() & 0o777;
    if mode == 0o700 {
        return Ok(None);
    }
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(io_error(dir))?;
    Ok(Some(mode))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_writes_replace_whole_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        write_atomic(&path, b"one").unwrap();
        write_atomic(&path, b"two").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"two");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().mode() & 0o7777
    }

    fn chmod(path: &Path, mode: u32) {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    #[test]
    fn a_private_dir_is_made_0700_and_an_own_looser_one_tightened() {
        let temp = tempfile::tempdir().unwrap();
        let fresh = temp.path().join("a/b");
        assert_eq!(private_dir(&fresh).unwrap(), None);
        assert_eq!((mode(&fresh), mode(&temp.path().join("a"))), (0o700, 0o700));
        let loose = temp.path().join("loose");
        std::fs::create_dir(&loose).unwrap();
        chmod(&loose, 0o755);
        assert_eq!(private_dir(&loose).unwrap(), Some(0o755));
        assert_eq!(mode(&loose), 0o700);
        assert_eq!(private_dir(&loose).unwrap(), None);
    }

    #[test]
    fn a_shared_or_someone_elses_dir_is_refused_and_left_as_it_was() {
        let temp = tempfile::tempdir().unwrap();
        for shared in [0o1777, 0o0777, 0o1700] {
            chmod(temp.path(), shared);
            let e = private_dir(temp.path()).unwrap_err();
            assert!(
                matches!(e, DirError::Shared { mode, .. } if mode == shared),
                "{e}"
            );
            let text = e.to_string();
            assert!(
                text.contains(&format!("is shared (mode {shared:04o}, owner uid"))
                    && text.contains("give fnhost a directory of its own, e.g."),
                "{text}"
            );
            assert_eq!(mode(temp.path()), shared);
        }
        chmod(temp.path(), 0o755);
        // Another user's directory: root can make one; anyone else has `/`.
        // SAFETY: geteuid(2) cannot fail and touches no memory.
        let theirs = if unsafe { libc::geteuid() } == 0 {
            let dir = temp.path().join("theirs");
            std::fs::create_dir(&dir).unwrap();
            chmod(&dir, 0o755);
            std::os::unix::fs::chown(&dir, Some(65534), None).unwrap();
            dir
        } else {
            PathBuf::from("/")
        };
        let before = mode(&theirs);
        let e = private_dir(&theirs).unwrap_err();
        assert!(matches!(e, DirError::NotOurs { .. }), "{e}");
        assert_eq!(mode(&theirs), before);
        // A file is no directory.
        let file = temp.path().join("file");
        std::fs::write(&file, b"x").unwrap();
        assert!(matches!(
            private_dir(&file),
            Err(DirError::NotADirectory(_))
        ));
    }

    #[test]
    fn a_dir_to_be_made_resolves_through_what_exists() {
        let temp = tempfile::tempdir().unwrap();
        let real = temp.path().canonicalize().unwrap();
        std::os::unix::fs::symlink(&real, real.join("link")).unwrap();
        assert_eq!(resolve(&real.join("link/x/y")).unwrap(), real.join("x/y"));
        assert_eq!(resolve(&real.join("link")).unwrap(), real);
        assert!(matches!(
            resolve(&real.join("new/../up")),
            Err(DirError::GoesUp(_))
        ));
    }

    #[test]
    fn digests_are_lower_case_hex() {
        assert_eq!(hex(&[0x0a, 0xff]), "0aff");
        assert_eq!(
            sha256_hex(b""),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }
}
