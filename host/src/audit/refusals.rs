//! Refusals of unauthenticated requests, counted rather than written one
//! by one: the first refusal of a kind (event, source address, reason) in
//! a [`WINDOW`] is written in full; the others of that window are counted,
//! and one line with the count is written when the window closes. A client
//! that sends a hundred thousand bad tokens costs the log a line or two
//! per window, not a hundred thousand.
//!
//! Plain bookkeeping on times it is given: the caller writes the lines it
//! returns and calls [`Refusals::expire`] every so often.

use super::Entry;
use std::collections::HashMap;
use std::time::Duration;

/// How long refusals of one kind from one source are counted into one line.
pub const WINDOW: Duration = Duration::from_secs(10);
/// Kinds counted at once; refusals of a new kind past this are counted
/// under the source `*` (every other source).
pub const MAX_KINDS: usize = 4096;

/// What refusals are counted together by.
type Kind = (String, Option<String>, Option<String>);

/// One kind's open window.
struct Window {
    /// When its first refusal (the one written in full) came.
    first_ms: u64,
    /// When its last counted one came.
    last_ms: u64,
    /// Refusals after the first, not written yet.
    count: u64,
    /// The last counted refusal's target.
    target: Option<String>,
}

/// The open windows.
#[derive(Default)]
pub(super) struct Refusals {
    open: HashMap<Kind, Window>,
}

impl Refusals {
    /// The lines to write for `entry`, refused at `now_ms`: none while its
    /// kind's window is open (it is counted), else a closed window's count
    /// (if any) and the entry itself.
    pub(super) fn refuse(&mut self, mut entry: Entry, now_ms: u64) -> Vec<Entry> {
        let mut kind: Kind = (
            entry.event.to_string(),
            entry.source.clone(),
            entry.detail.clone(),
        );
        if self.open.len() >= MAX_KINDS && !self.open.contains_key(&kind) {
            kind.1 = Some("*".into());
            entry.source = kind.1.clone();
        }
        let mut lines = Vec::new();
        if let Some(w) = self.open.get_mut(&kind) {
            if now_ms.saturating_sub(w.first_ms) < WINDOW.as_millis() as u64 {
                w.count += 1;
                w.last_ms = now_ms;
                w.target = entry.target;
                return lines;
            }
            let w = self.open.remove(&kind).expect("found above");
            lines.extend(summary(&kind, w, now_ms));
        }
        self.open.insert(
            kind,
            Window {
                first_ms: now_ms,
                last_ms: now_ms,
                count: 0,
                target: None,
            },
        );
        entry.at_ms = now_ms;
        lines.push(entry);
        lines
    }

    /// The counts of the windows closed by `now_ms`.
    pub(super) fn expire(&mut self, now_ms: u64) -> Vec<Entry> {
        let window = WINDOW.as_millis() as u64;
        let closed: Vec<Kind> = (self.open.iter())
            .filter(|(_, w)| now_ms.saturating_sub(w.first_ms) >= window)
            .map(|(k, _)| k.clone())
            .collect();
        let mut lines = Vec::new();
        for kind in closed {
            let w = self.open.remove(&kind).expect("listed above");
            lines.extend(summary(&kind, w, now_ms));
        }
        lines
    }

    /// The counts of every open window (at shutdown).
    pub(super) fn drain(&mut self, now_ms: u64) -> Vec<Entry> {
        let open = std::mem::take(&mut self.open);
        open.into_iter()
            .filter_map(|(kind, w)| summary(&kind, w, now_ms))
            .collect()
    }
}

/// The line that stands for a window's counted refusals, if it has any.
fn summary(kind: &Kind, w: Window, now_ms: u64) -> Option<Entry> {
    (w.count > 0).then(|| Entry {
        at_ms: now_ms,
        event: kind.0.clone().into(),
        outcome: "denied".into(),
        source: kind.1.clone(),
        detail: kind.2.clone(),
        target: w.target,
        count: Some(w.count),
        from_ms: Some(w.first_ms),
        to_ms: Some(w.last_ms),
        ..Entry::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refusal(source: &str, target: &str) -> Entry {
        Entry {
            event: "admin.denied".into(),
            outcome: "denied".into(),
            source: Some(source.into()),
            target: Some(target.into()),
            detail: Some("not a token of this host, or revoked".into()),
            ..Entry::default()
        }
    }

    /// The refusals `lines` stand for: one each, or their count.
    fn stands_for(lines: &[Entry]) -> u64 {
        lines.iter().map(|e| e.count.unwrap_or(1)).sum()
    }

    #[test]
    fn a_flood_from_one_source_is_a_line_and_a_count_per_window() {
        let mut r = Refusals::default();
        let mut written = Vec::new();
        let window = WINDOW.as_millis() as u64;
        // 100,000 refusals over three and a half windows.
        for i in 0..100_000u64 {
            let at = 1_000 + i * (window * 7 / 2) / 100_000;
            written.extend(r.refuse(refusal("10.0.0.1", &format!("GET /v1/x{i}")), at));
        }
        written.extend(r.expire(1_000 + window * 5));
        assert_eq!(stands_for(&written), 100_000);
        assert!(written.len() <= 8, "{}", written.len());
        // Each count says which refusals it stands for.
        let count = written.iter().find(|e| e.count.is_some()).unwrap();
        assert!(count.from_ms.unwrap() < count.to_ms.unwrap());
        assert_eq!(count.source.as_deref(), Some("10.0.0.1"));
        assert!(count.target.as_deref().unwrap().starts_with("GET /v1/x"));
    }

    #[test]
    fn sources_and_reasons_are_counted_apart_and_a_single_refusal_is_one_line() {
        let mut r = Refusals::default();
        let mut written = r.refuse(refusal("10.0.0.1", "a"), 0);
        written.extend(r.refuse(refusal("10.0.0.2", "b"), 1));
        let mut other = refusal("10.0.0.1", "c");
        other.detail = Some("no bearer token".into());
        written.extend(r.refuse(other, 2));
        assert_eq!(written.len(), 3, "each kind's first refusal is written");
        assert!(r.expire(100_000).is_empty(), "nothing was counted");
        assert!(r.open.is_empty());
    }

    #[test]
    fn kinds_past_the_cap_share_one_count_and_the_rest_is_drained_at_shutdown() {
        let mut r = Refusals::default();
        let mut written = Vec::new();
        for i in 0..MAX_KINDS + 500 {
            written.extend(r.refuse(refusal(&format!("src{i}"), "t"), 5));
        }
        assert_eq!(r.open.len(), MAX_KINDS + 1, "the cap and the shared kind");
        written.extend(r.drain(6));
        assert_eq!(stands_for(&written), (MAX_KINDS + 500) as u64);
        assert!(written.iter().any(|e| e.source.as_deref() == Some("*")));
        assert!(r.open.is_empty());
    }
}
