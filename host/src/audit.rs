//! The audit log: one JSON line per event that matters to security —
//! every refused admin request or token-protected route, every deploy,
//! rollback and remove, every data change through the admin API, every
//! token made or revoked, and a guest's denied calls (the first few of
//! each invocation) — in `<data-dir>/audit.log`, appended and flushed
//! as it happens. The file is bounded: past [`MAX_FILE_BYTES`] it becomes
//! `audit.log.1` (the older ones shift up to `audit.log.<KEEP>`, the
//! oldest dropped), so the log holds at most `(KEEP + 1) × MAX_FILE_BYTES`.
//!
//! Each line: `{"at_ms", "event", "outcome", "token"?, "target"?,
//! "detail"?}`. Fields a client sent are kept as text and cut to
//! [`MAX_FIELD_BYTES`], so a request cannot make a line huge or forge
//! another (serde_json escapes newlines).

use serde::Serialize;
use std::fs::{File, OpenOptions};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// The size at which `audit.log` is rotated, in bytes.
pub const MAX_FILE_BYTES: u64 = 16 << 20;
/// How many rotated files are kept.
pub const KEEP: u32 = 3;
/// The longest field, in bytes; longer ones are cut.
pub const MAX_FIELD_BYTES: usize = 512;

/// One audited event.
#[derive(Debug, Clone, Serialize, Default)]
pub struct Entry {
    /// When (ms since the epoch); filled in by [`Audit::record`].
    pub at_ms: u64,
    /// What happened: `admin.denied`, `http.denied`, `guest.denied`,
    /// `deploy`, `rollback`, `remove`, `data.change`, `token.create`,
    /// `token.revoke`.
    pub event: &'static str,
    /// `ok`, `denied` or `failed`.
    pub outcome: &'static str,
    /// The token's id, when one was recognised.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// What it was done to: a function, a route, a token id.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// More: a version, a scope, why it was refused.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// The audit log of one host.
pub struct Audit {
    path: PathBuf,
    file: Mutex<Option<(File, u64)>>,
    /// Where lines go instead of the file: the trusted worker hands its
    /// lines to the host process, which owns the log.
    forward: Option<Box<dyn Fn(String) + Send + Sync>>,
}

/// The longest line [`Audit::append_line`] takes from the trusted worker.
pub const MAX_LINE_BYTES: usize = 4 * MAX_FIELD_BYTES;

/// The audit log's file in `data_dir`.
pub fn path(data_dir: &Path) -> PathBuf {
    data_dir.join("audit.log")
}

fn cut(s: Option<String>) -> Option<String> {
    s.map(|s| crate::text::capped(s, MAX_FIELD_BYTES))
}

impl Audit {
    /// The log in `data_dir` (the file is made at the first entry).
    pub fn open(data_dir: &Path) -> Audit {
        Audit {
            path: path(data_dir),
            file: Mutex::new(None),
            forward: None,
        }
    }

    /// A log whose lines are handed to `forward` (the trusted worker's,
    /// whose host process writes them).
    pub fn forwarding(forward: impl Fn(String) + Send + Sync + 'static) -> Audit {
        Audit {
            path: PathBuf::new(),
            file: Mutex::new(None),
            forward: Some(Box::new(forward)),
        }
    }

    /// Append a line the trusted worker recorded: one JSON object on one
    /// line, at most [`MAX_LINE_BYTES`]; anything else is refused.
    pub fn append_line(&self, line: &str) -> Result<(), String> {
        if line.len() > MAX_LINE_BYTES || line.contains('\n') {
            return Err(format!(
                "an audit line must be one line of at most {MAX_LINE_BYTES} bytes"
            ));
        }
        match serde_json::from_str::<serde_json::Value>(line) {
            Ok(serde_json::Value::Object(_)) => {}
            _ => return Err("an audit line must be a JSON object".into()),
        }
        let mut bytes = line.as_bytes().to_vec();
        bytes.push(b'\n');
        self.append(&bytes).map_err(|e| e.to_string())
    }

    /// Append `entry`. A log that cannot be written is reported in the host
    /// log, never fails the request that was audited.
    pub fn record(&self, mut entry: Entry) {
        entry.at_ms = crate::clock::now_ms();
        entry.token = cut(entry.token);
        entry.target = cut(entry.target);
        entry.detail = cut(entry.detail);
        if let Some(forward) = &self.forward {
            forward(serde_json::to_string(&entry).expect("an audit entry serializes"));
            return;
        }
        let mut line = serde_json::to_vec(&entry).expect("an audit entry serializes");
        line.push(b'\n');
        if let Err(e) = self.append(&line) {
            tracing::error!(path = %self.path.display(), error = %e, "cannot write the audit log");
        }
    }

    fn append(&self, line: &[u8]) -> std::io::Result<()> {
        let mut slot = self.file.lock().unwrap_or_else(|e| e.into_inner());
        if slot.is_none() {
            *slot = Some(self.open_file()?);
        }
        if let Some((_, len)) = slot.as_ref()
            && *len > 0
            && len + line.len() as u64 > MAX_FILE_BYTES
        {
            *slot = None;
            self.rotate()?;
            *slot = Some(self.open_file()?);
        }
        let (file, len) = slot.as_mut().expect("opened above");
        file.write_all(line)?;
        *len += line.len() as u64;
        Ok(())
    }

    /// `audit.log` for appending (mode 0600), with its length.
    fn open_file(&self) -> std::io::Result<(File, u64)> {
        let mut options = OpenOptions::new();
        options.create(true).append(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let file = options.open(&self.path)?;
        let len = file.metadata()?.len();
        Ok((file, len))
    }

    /// `audit.log` → `.1` → … → `.KEEP` (dropped).
    fn rotate(&self) -> std::io::Result<()> {
        let name = |i: u32| {
            let mut p = self.path.clone().into_os_string();
            p.push(format!(".{i}"));
            PathBuf::from(p)
        };
        for i in (1..KEEP).rev() {
            match std::fs::rename(name(i), name(i + 1)) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
        }
        match std::fs::rename(&self.path, name(1)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_are_json_lines_and_the_log_rotates_within_its_bound() {
        let dir = tempfile::tempdir().unwrap();
        let audit = Audit::open(dir.path());
        audit.record(Entry {
            event: "admin.denied",
            outcome: "denied",
            target: Some("GET /v1/x\n{\"forged\":1}".into()),
            ..Entry::default()
        });
        let text = std::fs::read_to_string(path(dir.path())).unwrap();
        assert_eq!(text.lines().count(), 1);
        let v: serde_json::Value = serde_json::from_str(text.trim()).unwrap();
        assert_eq!(v["event"], "admin.denied");
        assert_eq!(v["target"], "GET /v1/x\n{\"forged\":1}");
        assert!(v["at_ms"].as_u64().unwrap() > 0);
        // Fill past several rotations with the largest entries.
        let big = "d".repeat(10 * MAX_FIELD_BYTES);
        let per = 3 * MAX_FIELD_BYTES as u64;
        for _ in 0..(MAX_FILE_BYTES / per) * u64::from(KEEP + 2) {
            audit.record(Entry {
                event: "deploy",
                outcome: "ok",
                target: Some(big.clone()),
                detail: Some(big.clone()),
                token: Some(big.clone()),
                ..Entry::default()
            });
        }
        let mut total = 0;
        for entry in std::fs::read_dir(dir.path()).unwrap() {
            let len = entry.unwrap().metadata().unwrap().len();
            assert!(len <= MAX_FILE_BYTES, "{len}");
            total += 1;
        }
        assert_eq!(
            total,
            1 + KEEP as usize,
            "audit.log and {KEEP} rotated files"
        );
    }

    #[test]
    fn the_workers_lines_are_taken_only_as_single_json_objects() {
        let dir = tempfile::tempdir().unwrap();
        let audit = Audit::open(dir.path());
        audit
            .append_line(r#"{"event":"sensitive.access","outcome":"ok"}"#)
            .unwrap();
        for bad in [
            "{\"a\":1}\n{\"forged\":1}".to_string(),
            "not json".to_string(),
            "[1]".to_string(),
            format!("{{\"a\":\"{}\"}}", "x".repeat(MAX_LINE_BYTES)),
        ] {
            assert!(audit.append_line(&bad).is_err(), "{bad:.40}");
        }
        let text = std::fs::read_to_string(path(dir.path())).unwrap();
        assert_eq!(text.lines().count(), 1);
        // A forwarding log hands its lines over instead of writing them.
        let got = std::sync::Arc::new(Mutex::new(Vec::new()));
        let sink = got.clone();
        let forwarding = Audit::forwarding(move |line| sink.lock().unwrap().push(line));
        forwarding.record(Entry {
            event: "sensitive.access",
            outcome: "ok",
            ..Entry::default()
        });
        let lines = got.lock().unwrap();
        assert_eq!(lines.len(), 1);
        audit.append_line(&lines[0]).unwrap();
    }
}
