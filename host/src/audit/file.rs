//! One bounded log file of the audit log: lines appended as they come;
//! past its size it becomes `<name>.1` (the older ones shift up to
//! `<name>.<keep>`, the oldest dropped), so it holds at most
//! `(keep + 1) × max_bytes`. Knows nothing of what the lines say.

use std::fs::{File, OpenOptions};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// An append-only file, rotated at a size.
pub(super) struct LogFile {
    path: PathBuf,
    max_bytes: u64,
    keep: u32,
    /// The open file and its length, once the first line came.
    file: Mutex<Option<(File, u64)>>,
}

impl LogFile {
    /// `path`, rotated past `max_bytes`, keeping `keep` old files.
    pub(super) fn new(path: PathBuf, max_bytes: u64, keep: u32) -> LogFile {
        LogFile {
            path,
            max_bytes,
            keep,
            file: Mutex::new(None),
        }
    }

    /// Its path.
    pub(super) fn path(&self) -> &Path {
        &self.path
    }

    /// Append `line` (which ends with a newline) whole, or fail.
    pub(super) fn append(&self, line: &[u8]) -> std::io::Result<()> {
        let mut slot = self.file.lock().unwrap_or_else(|e| e.into_inner());
        if slot.is_none() {
            *slot = Some(self.open()?);
        }
        if let Some((_, len)) = slot.as_ref()
            && *len > 0
            && len + line.len() as u64 > self.max_bytes
        {
            *slot = None;
            self.rotate()?;
            *slot = Some(self.open()?);
        }
        let (file, len) = slot.as_mut().expect("opened above");
        if let Err(e) = file.write_all(line) {
            // A part may be written: start the next line on a line of its
            // own, in a file opened afresh.
            *slot = None;
            return Err(e);
        }
        *len += line.len() as u64;
        Ok(())
    }

    /// The file for appending (mode 0600), with its length.
    fn open(&self) -> std::io::Result<(File, u64)> {
        let mut options = OpenOptions::new();
        options.create(true).append(true);
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let file = options.open(&self.path)?;
        let len = file.metadata()?.len();
        Ok((file, len))
    }

    /// `<name>` → `.1` → … → `.<keep>` (dropped).
    fn rotate(&self) -> std::io::Result<()> {
        let name = |i: u32| {
            let mut p = self.path.clone().into_os_string();
            p.push(format!(".{i}"));
            PathBuf::from(p)
        };
        for i in (1..self.keep).rev() {
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
