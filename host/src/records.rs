//! Invocation records: one row per invocation this host ran, taken from the
//! invocation event stream ([`crate::dispatcher::events`]) and kept in
//! `<data-dir>/invocations.db` (SQLite, a file of its own so that its
//! writes never wait on the queue store's), with the guest's captured
//! stdout and stderr beside it.
//!
//! Off the hot path: the subscriber only copies the facts into a bounded
//! channel; a writer thread takes whatever has piled up and inserts it in
//! one transaction (WAL, `synchronous=NORMAL`: no sync per batch, a record
//! is not a durable step of delivery). When the channel is full — the disk
//! far slower than the invocations — records are dropped and counted, and
//! the log says so; an invocation never waits for its record.
//!
//! Retention is bounded three ways ([`RecordsConfig`]): by age, by the
//! number of records, and by the number of invocations whose logs are
//! kept (a log holds up to the function's `log_bytes` per stream, so logs
//! are kept for fewer invocations than figures). Pruning runs in the
//! writer thread, in chunks, between batches.
//!
//! A trusted function's records keep its figures and failure reason but
//! not its output: what the trusted worker's guests print stays out of
//! the public host's store.
//!
//! Each host keeps what it ran and names itself in every record (its
//! `host` id); a fleet's figures as a whole are Prometheus' and the trace
//! collector's to gather.

mod store;

use crate::dispatcher::events::{InvocationEvent, InvocationInfo, InvocationSubscriber};
use crate::dispatcher::events::{OutcomeKind, TriggerKind};
use crate::exec::Outcome;
use serde::{Deserialize, Serialize};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long records, and logs, are kept unless configured: 7 days.
pub const DEFAULT_MAX_AGE: Duration = Duration::from_secs(7 * 24 * 60 * 60);
/// How many records are kept unless configured.
pub const DEFAULT_MAX_RECORDS: u64 = 1_000_000;
/// For how many of the newest invocations logs are kept unless configured.
pub const DEFAULT_MAX_LOGS: u64 = 100_000;
/// The most records a page holds.
pub const MAX_PAGE: usize = 1000;
/// The most records a page holds when it carries their logs.
pub const MAX_PAGE_WITH_LOGS: usize = 50;
/// The longest value a filter may hold, in bytes.
pub const MAX_FILTER_BYTES: usize = 1024;
/// The longest failure reason a record keeps, in bytes (a guest's own
/// message is cut at 4 KiB already; a trap's may be longer).
pub const MAX_REASON_BYTES: usize = 8 << 10;
/// Records waiting for the writer; past it new ones are dropped and counted.
const CHANNEL: usize = 65_536;
/// The most records one transaction inserts.
const MAX_BATCH: usize = 16_384;
/// How long the writer lets records gather before it writes them.
const GATHER: Duration = Duration::from_millis(100);
/// How often the writer prunes, at most.
const PRUNE_EVERY: Duration = Duration::from_secs(30);

/// How much history a host keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordsConfig {
    /// Records (and logs) older than this are deleted.
    pub max_age: Duration,
    /// At most this many records are kept; the oldest go first.
    pub max_records: u64,
    /// Logs are kept for at most this many of the newest invocations.
    pub max_logs: u64,
}

impl Default for RecordsConfig {
    fn default() -> RecordsConfig {
        RecordsConfig {
            max_age: DEFAULT_MAX_AGE,
            max_records: DEFAULT_MAX_RECORDS,
            max_logs: DEFAULT_MAX_LOGS,
        }
    }
}

/// One invocation, as kept and as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// Its place in this host's history: later records have larger ones
    /// (the cursor of a page).
    pub seq: u64,
    /// The invocation's id (one per attempt).
    pub id: String,
    /// The function.
    pub function: String,
    /// The version that ran.
    pub version: u32,
    /// What set it off: `http`, `queue`, `job`, `blob`, `timer`, `invoke`.
    pub trigger: String,
    /// 1 for the first attempt.
    pub attempt: u32,
    /// The async job it belongs to.
    pub job_id: Option<String>,
    /// The queue message it came from.
    pub message_id: Option<String>,
    /// That message's correlation id.
    pub correlation_id: Option<String>,
    /// The host that ran it.
    pub host: String,
    /// Is it a trusted function's (run in the trusted worker; its output
    /// is not kept)?
    pub trusted: bool,
    /// When it ended, ms since the epoch.
    pub ended_at_ms: u64,
    /// How long it waited before it ran, since its message was sent (or
    /// its tick was due), in ms.
    pub queued_ms: Option<u64>,
    /// Time in the sandbox, µs.
    pub duration_us: u64,
    /// Fuel used.
    pub fuel: u64,
    /// The most linear memory it held at once, in bytes.
    pub peak_memory_bytes: u64,
    /// `succeeded`, `retry`, `failed`, `limit` or `trapped`.
    pub outcome: String,
    /// Why it did not succeed.
    pub reason: Option<String>,
    /// The output's status, when it succeeded.
    pub status: Option<u16>,
    /// Bytes of stdout and stderr kept.
    pub log_bytes: u64,
    /// Bytes of stdout and stderr past the function's `log_bytes`, dropped.
    pub log_dropped_bytes: u64,
    /// What it wrote, when asked for and still kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logs: Option<RecordLogs>,
}

/// An invocation's captured output.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordLogs {
    /// Its stdout (lossy UTF-8, up to its `log_bytes`).
    pub stdout: String,
    /// Its stderr.
    pub stderr: String,
}

/// Which records a query wants; every field narrows it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    /// Of this function.
    pub function: Option<String>,
    /// Of this version.
    pub version: Option<u32>,
    /// Set off by this trigger.
    pub trigger: Option<TriggerKind>,
    /// That ended so.
    pub outcome: Option<OutcomeFilter>,
    /// That ended at or after this time (ms since the epoch).
    pub since_ms: Option<u64>,
    /// That ended before this time.
    pub until_ms: Option<u64>,
    /// With this invocation id.
    pub id: Option<String>,
    /// Of this async job.
    pub job_id: Option<String>,
    /// From this message.
    pub message_id: Option<String>,
    /// With this correlation id.
    pub correlation_id: Option<String>,
}

/// An outcome to filter by: one kind, or every kind but success.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutcomeFilter {
    /// Exactly this kind.
    Is(OutcomeKind),
    /// Anything but `succeeded`.
    Unsuccessful,
}

impl OutcomeFilter {
    /// The filter a name spells: an outcome kind, or `unsuccessful`.
    pub fn parse(name: &str) -> Option<OutcomeFilter> {
        if name == "unsuccessful" {
            return Some(OutcomeFilter::Unsuccessful);
        }
        ALL_OUTCOMES
            .iter()
            .find(|k| k.as_str() == name)
            .map(|k| OutcomeFilter::Is(*k))
    }
}

const ALL_OUTCOMES: [OutcomeKind; 5] = [
    OutcomeKind::Succeeded,
    OutcomeKind::Retry,
    OutcomeKind::Failed,
    OutcomeKind::Limit,
    OutcomeKind::Trapped,
];

/// Where a page starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cursor {
    /// The newest records first, older than this `seq` (from the newest
    /// when `None`).
    Before(Option<u64>),
    /// The oldest records first, newer than this `seq`: for following.
    After(u64),
}

/// A query: which records, from where, how many, with or without logs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Query {
    /// Which records.
    pub filter: Filter,
    /// From where.
    pub cursor: Cursor,
    /// At most this many (capped by [`MAX_PAGE`] or [`MAX_PAGE_WITH_LOGS`]).
    pub limit: usize,
    /// Carry each record's logs.
    pub logs: bool,
}

/// One page of records, and the cursor of the next when there may be more.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Page {
    /// The records, in the cursor's order.
    pub invocations: Vec<Record>,
    /// Pass as `before` (or `after`) for the next page.
    pub next: Option<u64>,
}

/// Why the records could not be opened or read.
#[derive(Debug, thiserror::Error)]
pub enum RecordsError {
    /// The database said no (a full disk, a locked or damaged file).
    #[error("invocation records in {path}: {source}")]
    Store {
        /// The database file.
        path: String,
        /// SQLite's error.
        #[source]
        source: rusqlite::Error,
    },
    /// The writer thread could not be started.
    #[error("the invocation records' writer thread could not start: {0}")]
    Writer(#[source] std::io::Error),
}

/// A host's invocation records: the stream's subscriber that keeps them
/// and the reader the API asks.
pub struct Records {
    host: String,
    tx: SyncSender<Msg>,
    reader: Arc<Mutex<rusqlite::Connection>>,
    path: String,
    dropped: AtomicU64,
    last_drop_warning: Mutex<Option<Instant>>,
}

enum Msg {
    Record(Box<Record>),
    Flush(SyncSender<()>),
}

impl Records {
    /// Open (or create) the records in `data_dir` of the host `host`,
    /// keeping as much as `config` says, and start their writer.
    pub fn open(
        data_dir: &Path,
        host: String,
        config: RecordsConfig,
    ) -> Result<Arc<Records>, RecordsError> {
        let path = data_dir.join("invocations.db");
        let shown = path.display().to_string();
        let fail = |source| RecordsError::Store {
            path: shown.clone(),
            source,
        };
        let (writer, host_id) = store::open_writer(&path, &host).map_err(fail)?;
        let reader = store::open_reader(&path).map_err(fail)?;
        let (tx, rx) = std::sync::mpsc::sync_channel(CHANNEL);
        std::thread::Builder::new()
            .name("fnhost-records".into())
            .spawn(move || write(writer, host_id, rx, config))
            .map_err(RecordsError::Writer)?;
        Ok(Arc::new(Records {
            host,
            tx,
            reader: Arc::new(Mutex::new(reader)),
            path: shown,
            dropped: AtomicU64::new(0),
            last_drop_warning: Mutex::new(None),
        }))
    }

    /// This host's id, as its records name it.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// Records dropped because the writer fell behind, since the start.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Wait until every record taken so far is written (at shutdown, and
    /// for tests).
    pub async fn flush(&self) {
        let (done, wait) = std::sync::mpsc::sync_channel(1);
        let tx = self.tx.clone();
        crate::task::blocking(move || {
            if tx.send(Msg::Flush(done)).is_ok() {
                let _ = wait.recv();
            }
        })
        .await
    }

    /// One page of records.
    pub async fn query(&self, query: Query) -> Result<Page, RecordsError> {
        let reader = self.reader.clone();
        let path = self.path.clone();
        crate::task::blocking(move || {
            let conn = reader.lock().unwrap_or_else(|e| e.into_inner());
            store::query(&conn, &query).map_err(|source| RecordsError::Store { path, source })
        })
        .await
    }

    fn take(&self, info: &InvocationInfo, outcome: &Outcome) {
        let record = Record::of(info, outcome, &self.host);
        match self.tx.try_send(Msg::Record(Box::new(record))) {
            Ok(()) => {}
            Err(refused) => {
                let why = match refused {
                    TrySendError::Full(_) => {
                        "invocation records are written slower than invocations end"
                    }
                    TrySendError::Disconnected(_) => {
                        "the invocation records' writer has stopped (see the log for why)"
                    }
                };
                let dropped = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
                let mut last = self
                    .last_drop_warning
                    .lock()
                    .unwrap_or_else(|e| e.into_inner());
                if last.is_none_or(|at| at.elapsed() >= Duration::from_secs(60)) {
                    *last = Some(Instant::now());
                    tracing::warn!(
                        dropped,
                        invocation = %info.id,
                        "{why}: records dropped (the invocations themselves are unaffected)"
                    );
                }
            }
        }
    }
}

impl InvocationSubscriber for Records {
    fn on_event(&self, event: &InvocationEvent<'_>) {
        if let InvocationEvent::Ended(info, outcome) = event {
            self.take(info, outcome);
        }
    }
}

/// The writer thread: batches in, one transaction each, pruning between.
fn write(mut conn: rusqlite::Connection, host: i64, rx: Receiver<Msg>, config: RecordsConfig) {
    let prune = |conn: &mut rusqlite::Connection| {
        let cutoff = crate::clock::now_ms().saturating_sub(config.max_age.as_millis() as u64);
        if let Err(e) = store::prune(conn, &config, cutoff) {
            tracing::warn!(error = %e, "old invocation records could not be pruned; will try again");
        }
    };
    // What a shorter retention, or the time the host was down, left over.
    prune(&mut conn);
    let mut last_prune = Instant::now();
    loop {
        let first = match rx.recv_timeout(PRUNE_EVERY) {
            Ok(msg) => Some(msg),
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => None,
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => return,
        };
        // Let records pile up for a moment: one transaction (and one
        // wake-up of this thread) per gathering, not per invocation.
        if matches!(first, Some(Msg::Record(_))) {
            std::thread::sleep(GATHER);
        }
        let mut batch = Vec::new();
        let mut flushes = Vec::new();
        let mut next = first;
        while let Some(msg) = next {
            match msg {
                Msg::Record(r) => batch.push(*r),
                Msg::Flush(done) => flushes.push(done),
            }
            next = match batch.len() < MAX_BATCH {
                true => rx.try_recv().ok(),
                false => None,
            };
        }
        if !batch.is_empty()
            && let Err(e) = store::insert(&mut conn, host, &batch)
        {
            tracing::warn!(records = batch.len(), error = %e, "invocation records could not be written; these are lost (the invocations themselves are unaffected)");
        }
        if last_prune.elapsed() >= PRUNE_EVERY {
            last_prune = Instant::now();
            prune(&mut conn);
        }
        for done in flushes {
            let _ = done.send(());
        }
    }
}

impl Record {
    /// The record of an ended invocation, before the store gives it its `seq`.
    fn of(info: &InvocationInfo, outcome: &Outcome, host: &str) -> Record {
        let kind = OutcomeKind::of(outcome);
        let logs = &outcome.logs;
        Record {
            seq: 0,
            id: info.id.clone(),
            function: info.function.clone(),
            version: info.version,
            trigger: info.trigger.as_str().into(),
            attempt: info.attempt,
            job_id: info.job_id.clone(),
            message_id: info.delivered.as_ref().map(|d| d.message_id.clone()),
            correlation_id: info
                .delivered
                .as_ref()
                .and_then(|d| d.correlation_id.clone()),
            host: host.to_string(),
            trusted: info.trusted,
            ended_at_ms: crate::clock::now_ms(),
            queued_ms: info.queued.map(|q| q.as_millis() as u64),
            duration_us: outcome.elapsed.as_micros() as u64,
            fuel: outcome.fuel_used,
            peak_memory_bytes: outcome.peak_memory_bytes,
            outcome: kind.as_str().into(),
            reason: outcome.result.as_ref().err().map(|f| {
                let reason = f.to_string();
                match reason.len() > MAX_REASON_BYTES {
                    true => format!(
                        "{}… ({} bytes)",
                        crate::text::cut(&reason, MAX_REASON_BYTES),
                        reason.len()
                    ),
                    false => reason,
                }
            }),
            status: outcome.result.as_ref().ok().map(|o| o.status),
            log_bytes: (logs.stdout.len() + logs.stderr.len()) as u64,
            log_dropped_bytes: logs.stdout_dropped + logs.stderr_dropped,
            // A trusted function's output stays out of the public store.
            logs: match info.trusted || (logs.stdout.is_empty() && logs.stderr.is_empty()) {
                true => None,
                false => Some(RecordLogs {
                    stdout: logs.stdout.clone(),
                    stderr: logs.stderr.clone(),
                }),
            },
        }
    }
}

#[cfg(test)]
mod tests;
