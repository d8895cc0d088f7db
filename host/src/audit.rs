//! The audit log: one JSON line per event that matters to security, in
//! two files of the data dir, so that what must be kept cannot be pushed
//! out by what anyone can cause:
//!
//! - `audit.log` — **changes and sensitive access**: every deploy,
//!   rollback and remove, every data change through the admin API, every
//!   token made or revoked (each first as `started`, written before the
//!   change is made, then with its outcome), and every access of a trusted
//!   function to a sensitive bucket. These are [`Audit::record_required`]:
//!   an access whose line cannot be written does not happen.
//! - `audit-denied.log` — **refusals**: every refused admin request or
//!   token-protected route, and a guest's denied calls (the first few of
//!   each invocation). Refusals of unauthenticated requests (no token, an
//!   unknown or expired one) are counted per kind (event, source address,
//!   reason) and window ([`refusals`]), so a flood of bad tokens costs a
//!   line or two per window.
//!
//! Each file is bounded: past [`MAX_FILE_BYTES`] it becomes `<name>.1`
//! (the older ones shift up to `<name>.<KEEP>`, the oldest dropped).
//!
//! Each line: `{"at_ms", "event", "outcome", "token"?, "source"?,
//! "target"?, "detail"?}`, and on a count of refusals `"count"`,
//! `"from_ms"`, `"to_ms"`. Fields a client or guest sent are kept as text
//! and cut (with a note of their length) so that each one takes at most
//! [`MAX_FIELD_BYTES`] *as written*, escapes included: no line can be too
//! long to write, and none can forge another (serde_json escapes newlines).
//!
//! The trusted worker keeps no log of its own: its lines go to the host
//! process ([`Forward`]), which writes them; a required one is written
//! before the worker's access goes ahead.
//!
//! Knows nothing of HTTP or wasm.

mod file;
pub mod refusals;

use crate::task::BoxFuture;
use file::LogFile;
use serde::{Deserialize, Serialize};
use std::borrow::Cow;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// The size at which a log file is rotated, in bytes.
pub const MAX_FILE_BYTES: u64 = 16 << 20;
/// How many rotated files of each are kept.
pub const KEEP: u32 = 3;
/// The most bytes one field takes in a line, escapes included; longer
/// values are cut.
pub const MAX_FIELD_BYTES: usize = 512;

/// One audited event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Entry {
    /// When (ms since the epoch); filled in when it is recorded, unless set.
    pub at_ms: u64,
    /// What happened: `admin.denied`, `http.denied`, `guest.denied`,
    /// `deploy`, `rollback`, `remove`, `data.change`, `token.create`,
    /// `token.revoke`, `sensitive.access`.
    pub event: Cow<'static, str>,
    /// `started`, `ok`, `denied` or `failed`.
    pub outcome: Cow<'static, str>,
    /// The token's id, when one was recognised.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// The client's address, for a request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// What it was done to: a function, a route, a token id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// More: a version, a scope, why it was refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// On a count of refusals: how many more like the line before it of
    /// this kind came, between `from_ms` and `to_ms`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count: Option<u64>,
    /// When the first of the counted window came.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_ms: Option<u64>,
    /// When the last counted one came.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to_ms: Option<u64>,
}

impl Entry {
    /// True for a refusal (it goes to `audit-denied.log`).
    pub fn is_refusal(&self) -> bool {
        self.event.ends_with(".denied")
    }

    /// As one JSON line (without the newline), every field cut to fit.
    pub fn to_line(mut self) -> String {
        for field in [
            &mut self.token,
            &mut self.source,
            &mut self.target,
            &mut self.detail,
        ] {
            if let Some(v) = field.take() {
                *field = Some(cut_escaped(v, MAX_FIELD_BYTES));
            }
        }
        for name in [&mut self.event, &mut self.outcome] {
            if escaped_len(name) > 64 {
                *name = cut_escaped(name.to_string(), 64).into();
            }
        }
        serde_json::to_string(&self).expect("an audit entry serializes")
    }
}

/// How many bytes `c` takes inside a JSON string as serde_json writes it.
fn escaped_char_len(c: char) -> usize {
    match c {
        '"' | '\\' | '\n' | '\r' | '\t' | '\u{8}' | '\u{c}' => 2,
        c if (c as u32) < 0x20 => 6,
        c => c.len_utf8(),
    }
}

fn escaped_len(s: &str) -> usize {
    s.chars().map(escaped_char_len).sum()
}

/// `value` cut so that it takes at most `max` bytes inside a JSON string,
/// with a note of its length when it had to be cut.
fn cut_escaped(value: String, max: usize) -> String {
    if escaped_len(&value) <= max {
        return value;
    }
    let note = format!("… (cut: {} bytes in all)", value.len());
    let budget = max.saturating_sub(note.len());
    let mut used = 0;
    let mut end = 0;
    for (i, c) in value.char_indices() {
        let n = escaped_char_len(c);
        if used + n > budget {
            break;
        }
        used += n;
        end = i + c.len_utf8();
    }
    format!("{}{note}", &value[..end])
}

/// Why a line that had to be written was not.
#[derive(Debug, thiserror::Error)]
#[error("the audit log cannot be written: {0}")]
pub struct AuditError(pub String);

/// Where a log without files of its own (the trusted worker's) hands its
/// lines: the host process, which writes them.
pub trait Forward: Send + Sync {
    /// Hand over a line to write when it can (a refusal).
    fn line(&self, line: String);
    /// Hand over a line and wait until it is written; `Err` when it was not.
    fn required(&self, line: String) -> BoxFuture<'_, Result<(), AuditError>>;
}

enum Sink {
    Files {
        /// `audit.log`: changes and sensitive access.
        changes: LogFile,
        /// `audit-denied.log`: refusals.
        denied: LogFile,
    },
    Forward(Box<dyn Forward>),
}

/// The audit log of one host.
pub struct Audit {
    sink: Sink,
    refusals: Mutex<refusals::Refusals>,
}

/// The audit log of changes and sensitive access in `data_dir`.
pub fn path(data_dir: &Path) -> PathBuf {
    data_dir.join("audit.log")
}

/// The audit log of refusals in `data_dir`.
pub fn denied_path(data_dir: &Path) -> PathBuf {
    data_dir.join("audit-denied.log")
}

impl Audit {
    /// The log in `data_dir` (its files are made at their first line).
    pub fn open(data_dir: &Path) -> Audit {
        Audit {
            sink: Sink::Files {
                changes: LogFile::new(path(data_dir), MAX_FILE_BYTES, KEEP),
                denied: LogFile::new(denied_path(data_dir), MAX_FILE_BYTES, KEEP),
            },
            refusals: Mutex::default(),
        }
    }

    /// A log whose lines are handed to `forward` (the trusted worker's,
    /// whose host process writes them).
    pub fn forwarding(forward: impl Forward + 'static) -> Audit {
        Audit {
            sink: Sink::Forward(Box::new(forward)),
            refusals: Mutex::default(),
        }
    }

    /// Record `entry` as well as the log can: a line that cannot be
    /// written is reported in the host log and the request goes on (a
    /// refusal, or the outcome of a change whose start is recorded).
    pub fn record(&self, mut entry: Entry) {
        if entry.at_ms == 0 {
            entry.at_ms = crate::clock::now_ms();
        }
        let refusal = entry.is_refusal();
        let line = entry.to_line();
        match &self.sink {
            Sink::Forward(f) => f.line(line),
            Sink::Files { changes, denied } => {
                let file = if refusal { denied } else { changes };
                if let Err(e) = write(file, line) {
                    tracing::error!(path = %file.path().display(), error = %e, "cannot write the audit log");
                }
            }
        }
    }

    /// Record `entry`, which must be written before what it records may
    /// happen: `Err` when it was not (the caller then does not go ahead).
    pub fn record_required(&self, mut entry: Entry) -> BoxFuture<'_, Result<(), AuditError>> {
        if entry.at_ms == 0 {
            entry.at_ms = crate::clock::now_ms();
        }
        let refusal = entry.is_refusal();
        let line = entry.to_line();
        Box::pin(async move {
            match &self.sink {
                Sink::Forward(f) => f.required(line).await,
                Sink::Files { changes, denied } => {
                    let file = if refusal { denied } else { changes };
                    write(file, line).map_err(|e| {
                        tracing::error!(path = %file.path().display(), error = %e, "cannot write the audit log; refusing what it would record");
                        AuditError(format!("{}: {e}", file.path().display()))
                    })
                }
            }
        })
    }

    /// Record the refusal of an unauthenticated request: counted with the
    /// others of its kind in the current window (see [`refusals`]).
    pub fn refused(&self, entry: Entry) {
        let now = crate::clock::now_ms();
        let lines = self.lock_refusals().refuse(entry, now);
        for line in lines {
            self.record(line);
        }
    }

    /// Write the counts of the refusal windows that have closed; call it
    /// every second or so.
    pub fn flush(&self) {
        let now = crate::clock::now_ms();
        let lines = self.lock_refusals().expire(now);
        for line in lines {
            self.record(line);
        }
    }

    /// Write the counts of every open refusal window (at shutdown).
    pub fn flush_all(&self) {
        let now = crate::clock::now_ms();
        let lines = self.lock_refusals().drain(now);
        for line in lines {
            self.record(line);
        }
    }

    fn lock_refusals(&self) -> std::sync::MutexGuard<'_, refusals::Refusals> {
        self.refusals.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Take a line the trusted worker recorded (an [`Entry`] as JSON): its
    /// fields are cut to fit again here, so a line is never refused for
    /// its length; `required` says whether it must be written before the
    /// worker goes ahead.
    pub fn take_forwarded(
        &self,
        line: &str,
        required: bool,
    ) -> BoxFuture<'_, Result<(), AuditError>> {
        let entry = match serde_json::from_str::<Entry>(line) {
            Ok(entry) => entry,
            Err(e) => {
                let why =
                    format!("the trusted worker sent an audit line that is not an entry: {e}");
                return Box::pin(std::future::ready(Err(AuditError(why))));
            }
        };
        if required {
            self.record_required(entry)
        } else {
            self.record(entry);
            Box::pin(std::future::ready(Ok(())))
        }
    }
}

fn write(file: &LogFile, mut line: String) -> std::io::Result<()> {
    line.push('\n');
    file.append(line.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(path: &Path) -> Vec<serde_json::Value> {
        std::fs::read_to_string(path)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    #[test]
    fn entries_are_json_lines_and_each_file_rotates_within_its_bound() {
        let dir = tempfile::tempdir().unwrap();
        let audit = Audit::open(dir.path());
        audit.record(Entry {
            event: "admin.denied".into(),
            outcome: "denied".into(),
            target: Some("GET /v1/x\n{\"forged\":1}".into()),
            ..Entry::default()
        });
        let denied = lines(&denied_path(dir.path()));
        assert_eq!(denied.len(), 1);
        assert_eq!(denied[0]["event"], "admin.denied");
        assert_eq!(denied[0]["target"], "GET /v1/x\n{\"forged\":1}");
        assert!(denied[0]["at_ms"].as_u64().unwrap() > 0);
        assert!(!path(dir.path()).exists(), "a refusal is not a change");
        // Fill past several rotations with the largest entries.
        let big = "d".repeat(10 * MAX_FIELD_BYTES);
        let per = 3 * MAX_FIELD_BYTES as u64;
        for _ in 0..(MAX_FILE_BYTES / per) * u64::from(KEEP + 2) {
            audit.record(Entry {
                event: "deploy".into(),
                outcome: "ok".into(),
                target: Some(big.clone()),
                detail: Some(big.clone()),
                token: Some(big.clone()),
                ..Entry::default()
            });
        }
        let mut total = 0;
        for entry in std::fs::read_dir(dir.path()).unwrap() {
            let entry = entry.unwrap();
            let len = entry.metadata().unwrap().len();
            assert!(len <= MAX_FILE_BYTES, "{len}");
            total += 1;
        }
        assert_eq!(
            total,
            2 + KEEP as usize,
            "audit.log, {KEEP} rotated files and audit-denied.log"
        );
        // The refusal was never rotated out by the changes.
        assert_eq!(lines(&denied_path(dir.path())).len(), 1);
    }

    #[test]
    fn a_field_of_control_characters_is_cut_to_fit_never_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let audit = Audit::open(dir.path());
        // Each control character takes six bytes escaped (`\u0001`).
        let key = "\u{1}".repeat(2_000);
        let target = format!("vault@v1 invocation i: storage write customers/{key}");
        futures_ready(audit.record_required(Entry {
            event: "sensitive.access".into(),
            outcome: "ok".into(),
            target: Some(target.clone()),
            ..Entry::default()
        }))
        .unwrap();
        let text = std::fs::read_to_string(path(dir.path())).unwrap();
        assert_eq!(text.lines().count(), 1);
        let line = text.lines().next().unwrap();
        assert!(line.len() < 2 * MAX_FIELD_BYTES, "{}", line.len());
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        let kept = v["target"].as_str().unwrap();
        assert!(kept.starts_with("vault@v1 invocation i: storage write customers/\u{1}"));
        assert!(kept.ends_with(&format!("(cut: {} bytes in all)", target.len())));
        // Plain text is cut by its length alone, on a character boundary.
        let cut = cut_escaped("é".repeat(1_000), MAX_FIELD_BYTES);
        assert!(escaped_len(&cut) <= MAX_FIELD_BYTES);
        assert_eq!(cut_escaped("short".into(), 10), "short");
    }

    #[test]
    fn a_required_line_that_cannot_be_written_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        // A directory where the file should be: no line can be written.
        std::fs::create_dir(path(dir.path())).unwrap();
        let audit = Audit::open(dir.path());
        let err = futures_ready(audit.record_required(Entry {
            event: "deploy".into(),
            outcome: "started".into(),
            ..Entry::default()
        }))
        .unwrap_err();
        assert!(err.to_string().contains("audit.log"), "{err}");
    }

    #[test]
    fn the_workers_lines_are_taken_as_entries_and_cut_again() {
        let dir = tempfile::tempdir().unwrap();
        let audit = Audit::open(dir.path());
        futures_ready(audit.take_forwarded(
            r#"{"at_ms":5,"event":"sensitive.access","outcome":"ok"}"#,
            true,
        ))
        .unwrap();
        let long = serde_json::json!({
            "at_ms": 6, "event": "sensitive.access", "outcome": "ok",
            "target": "\n".repeat(10_000),
        });
        futures_ready(audit.take_forwarded(&long.to_string(), false)).unwrap();
        for bad in ["not json", "[1]", "{\"event\": 5}"] {
            assert!(
                futures_ready(audit.take_forwarded(bad, true)).is_err(),
                "{bad}"
            );
        }
        let written = lines(&path(dir.path()));
        assert_eq!(written.len(), 2);
        assert_eq!(written[0]["at_ms"], 5, "the worker's time is kept");
        assert!(
            written[1]["target"]
                .as_str()
                .unwrap()
                .contains("(cut: 10000 bytes in all)")
        );
        // A forwarding log hands its lines over instead of writing them.
        struct Sink(std::sync::Arc<Mutex<Vec<(String, bool)>>>);
        impl Forward for Sink {
            fn line(&self, line: String) {
                self.0.lock().unwrap().push((line, false));
            }
            fn required(&self, line: String) -> BoxFuture<'_, Result<(), AuditError>> {
                self.0.lock().unwrap().push((line, true));
                Box::pin(std::future::ready(Ok(())))
            }
        }
        let got = std::sync::Arc::new(Mutex::new(Vec::new()));
        let forwarding = Audit::forwarding(Sink(got.clone()));
        forwarding.record(Entry {
            event: "guest.denied".into(),
            outcome: "denied".into(),
            ..Entry::default()
        });
        futures_ready(forwarding.record_required(Entry {
            event: "sensitive.access".into(),
            outcome: "ok".into(),
            ..Entry::default()
        }))
        .unwrap();
        let got = got.lock().unwrap();
        assert_eq!(got.len(), 2);
        assert!(!got[0].1 && got[1].1);
        for (line, required) in got.iter() {
            futures_ready(audit.take_forwarded(line, *required)).unwrap();
        }
        assert_eq!(lines(&denied_path(dir.path())).len(), 1);
    }

    #[test]
    fn unauthenticated_refusals_are_counted_and_flushed() {
        let dir = tempfile::tempdir().unwrap();
        let audit = Audit::open(dir.path());
        for i in 0..1_000 {
            audit.refused(Entry {
                event: "admin.denied".into(),
                outcome: "denied".into(),
                source: Some("127.0.0.1".into()),
                target: Some(format!("GET /v1/functions/{i}")),
                detail: Some("no bearer token".into()),
                ..Entry::default()
            });
        }
        assert_eq!(lines(&denied_path(dir.path())).len(), 1);
        audit.flush_all();
        let written = lines(&denied_path(dir.path()));
        assert_eq!(written.len(), 2);
        assert_eq!(written[1]["count"], 999);
        assert_eq!(written[1]["target"], "GET /v1/functions/999");
    }

    /// The output of a future that finishes without waiting.
    fn futures_ready<T>(f: BoxFuture<'_, T>) -> T {
        let waker = std::task::Waker::noop();
        let mut cx = std::task::Context::from_waker(waker);
        let mut f = f;
        match f.as_mut().poll(&mut cx) {
            std::task::Poll::Ready(v) => v,
            std::task::Poll::Pending => panic!("the future waited"),
        }
    }
}
