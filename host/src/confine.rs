//! Confinement by the operating system (Linux Landlock): a process gives
//! up, for good, every file-system access outside a short list of paths.
//!
//! A host with sensitive buckets runs as two processes and each confines
//! itself before it starts any thread, so every thread it ever has is
//! confined too (Landlock binds the thread that asks and what it creates):
//! - the public process keeps its data dir (read-write) and the system's
//!   read-only directories, and can no longer open the trusted dir (the
//!   sensitive store and its keys) at all — not through a bug, not
//!   through a guest escape;
//! - the trusted worker keeps the trusted dir and the system's read-only
//!   directories, and cannot open the public data dir.
//!
//! Where the kernel has no Landlock, [`restrict`] says so; the host then
//! refuses to serve sensitive buckets unless its config accepts the weaker
//! mode (`[sensitive] accept_without_landlock = true`).

use landlock::{
    ABI, Access, AccessFs, CompatLevel, Compatible, Ruleset, RulesetAttr, RulesetCreatedAttr,
    RulesetStatus, path_beneath_rules,
};
use std::path::{Path, PathBuf};

/// The Landlock ABI whose file-system rights are asked for: version 3
/// (Linux 6.2) covers reading, writing, executing, making and removing
/// files and directories, linking across directories and truncating.
const FS_ABI: ABI = ABI::V3;

/// What the system offers a confined process read-only: libraries, the
/// configuration (DNS, TLS roots, time zones), `/proc` and `/sys`.
const SYSTEM_READ: &[&str] = &[
    "/usr", "/lib", "/lib64", "/lib32", "/bin", "/sbin", "/etc", "/proc", "/sys", "/opt",
];

/// How far a process is confined.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Confinement {
    /// Every right asked for is enforced.
    Full,
    /// The kernel enforces some of the rights (an older Landlock ABI).
    Partial,
    /// Nothing is enforced: the kernel has no Landlock (or it is off).
    None(String),
}

impl std::fmt::Display for Confinement {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Confinement::Full => f.write_str("fully enforced"),
            Confinement::Partial => {
                f.write_str("partly enforced (the kernel's Landlock is older than ABI 3)")
            }
            Confinement::None(why) => write!(f, "not enforced ({why})"),
        }
    }
}

/// Landlock refused the rules (the kernel has it, and said no): the
/// process is not confined. Retrying cannot help.
#[derive(Debug, thiserror::Error)]
#[error("Landlock refused the rules: {0}")]
pub struct Refused(#[source] landlock::RulesetError);

/// Confine the calling thread (and every thread and process it creates
/// afterwards) to `read_write` and `read_only` plus the system's read-only
/// directories. Paths that do not exist are skipped. Call it before any
/// other thread starts.
pub fn restrict(read_write: &[PathBuf], read_only: &[PathBuf]) -> Result<Confinement, Refused> {
    // For the tests of the weaker mode: a kernel without Landlock, as debug
    // builds can pretend (release builds cannot).
    #[cfg(debug_assertions)]
    if std::env::var_os("FNHOST_DEBUG_NO_LANDLOCK").is_some() {
        return Ok(Confinement::None(
            "FNHOST_DEBUG_NO_LANDLOCK is set (a debug build pretending the kernel has none)".into(),
        ));
    }
    let all = AccessFs::from_all(FS_ABI);
    let read = AccessFs::from_read(FS_ABI);
    let system: Vec<PathBuf> = SYSTEM_READ.iter().map(PathBuf::from).collect();
    let status = Ruleset::default()
        .set_compatibility(CompatLevel::BestEffort)
        .handle_access(all)
        .and_then(|r| r.create())
        .and_then(|r| r.add_rules(path_beneath_rules(read_write, all)))
        .and_then(|r| r.add_rules(path_beneath_rules(read_only.iter().chain(&system), read)))
        // `/dev/null`, `/dev/urandom` and the like: read and write, no more.
        .and_then(|r| {
            r.add_rules(path_beneath_rules(
                ["/dev"],
                AccessFs::ReadFile | AccessFs::WriteFile,
            ))
        })
        .and_then(|r| r.restrict_self())
        .map_err(Refused)?;
    Ok(match status.ruleset {
        RulesetStatus::FullyEnforced => Confinement::Full,
        RulesetStatus::PartiallyEnforced => Confinement::Partial,
        RulesetStatus::NotEnforced => {
            Confinement::None("this kernel has no Landlock, or it is disabled".into())
        }
    })
}

/// What the AWS SDK reads, read-only: `~/.aws` (profiles, credentials),
/// the files the `AWS_*_FILE` variables name, and TLS roots named by
/// `SSL_CERT_FILE` / `SSL_CERT_DIR`.
fn credentials() -> Vec<PathBuf> {
    let mut paths: Vec<PathBuf> = [
        "AWS_CONFIG_FILE",
        "AWS_SHARED_CREDENTIALS_FILE",
        "AWS_WEB_IDENTITY_TOKEN_FILE",
        "SSL_CERT_FILE",
        "SSL_CERT_DIR",
    ]
    .iter()
    .filter_map(std::env::var_os)
    .map(PathBuf::from)
    .collect();
    if let Some(home) = std::env::var_os("HOME") {
        paths.push(PathBuf::from(home).join(".aws"));
    }
    paths
}

/// Every path the public process keeps some access to, with `data_dir`:
/// the trusted dir must be none of them, under none, and above none.
pub fn public_paths(data_dir: &Path) -> Vec<PathBuf> {
    let mut paths = vec![data_dir.to_path_buf(), PathBuf::from("/dev")];
    paths.extend(SYSTEM_READ.iter().map(PathBuf::from));
    paths.extend(credentials());
    paths
        .into_iter()
        .map(|p| p.canonicalize().unwrap_or(p))
        .collect()
}

/// Why `trusted_dir` (canonical) is within the public process's reach, if
/// it is: equal to, under or above one of [`public_paths`].
pub fn reachable_by_public(trusted_dir: &Path, data_dir: &Path) -> Option<PathBuf> {
    public_paths(data_dir)
        .into_iter()
        .find(|p| trusted_dir.starts_with(p) || p.starts_with(trusted_dir))
}

/// Confine the public process of a host with sensitive buckets: its data
/// dir read-write, nothing of `trusted_dir`.
pub fn public_process(data_dir: &Path) -> Result<Confinement, Refused> {
    restrict(&[data_dir.to_path_buf()], &credentials())
}

/// Confine the trusted worker: its trusted dir read-write, nothing of the
/// public data dir.
pub fn trusted_worker(trusted_dir: &Path) -> Result<Confinement, Refused> {
    restrict(&[trusted_dir.to_path_buf()], &credentials())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_confined_thread_opens_what_it_kept_and_nothing_else() {
        let kept = tempfile::tempdir().unwrap();
        let other = tempfile::tempdir().unwrap();
        std::fs::write(other.path().join("secret"), b"s").unwrap();
        let (k, o) = (kept.path().to_path_buf(), other.path().to_path_buf());
        // A thread of its own, so the test runner's threads stay free.
        let result = std::thread::spawn(move || {
            let status = restrict(std::slice::from_ref(&k), &[]).unwrap();
            let write = std::fs::write(k.join("mine"), b"m");
            let read = std::fs::read(o.join("secret"));
            (status, write, read)
        })
        .join()
        .unwrap();
        match result {
            (Confinement::None(_), _, _) => {} // no Landlock here: nothing to check
            (_, write, read) => {
                write.unwrap();
                let err = read.unwrap_err();
                assert_eq!(err.kind(), std::io::ErrorKind::PermissionDenied, "{err}");
            }
        }
        // This thread was never confined.
        assert_eq!(std::fs::read(other.path().join("secret")).unwrap(), b"s");
    }

    #[test]
    fn a_trusted_dir_the_public_process_keeps_access_to_is_found() {
        let data = Path::new("/srv/fnhost/data");
        for inside in [
            "/opt/fnhost.trusted",
            "/etc/fnhost",
            "/dev/shm/t",
            "/srv/fnhost/data/t",
        ] {
            assert!(
                reachable_by_public(Path::new(inside), data).is_some(),
                "{inside}"
            );
        }
        // Above the data dir: it would hold the data dir, and be opened as a parent.
        assert!(reachable_by_public(Path::new("/srv/fnhost"), data).is_some());
        for outside in [
            "/srv/fnhost/data.trusted",
            "/var/lib/fnhost.trusted",
            "/tmp/x",
        ] {
            assert_eq!(
                reachable_by_public(Path::new(outside), data),
                None,
                "{outside}"
            );
        }
    }
}
