//! The embedded queue store: SQLite (`<data-dir>/queues.db`, WAL,
//! `synchronous=FULL`) behind one writer thread that commits in groups.
//!
//! Every change is sent to the writer thread, which takes everything that
//! is waiting (up to [`MAX_BATCH`]), applies it in one transaction and
//! commits once: one fsync covers many enqueues, leases and acks, and no
//! caller hears `Ok` before its change is on disk. Reads that may visit a
//! whole queue (stats, peek, dead letters, the queue list, a job record) go
//! to a reader thread with its own connection instead, which sees every
//! committed change (WAL readers do not block the writer): a dashboard
//! counting a million messages must not hold up every enqueue and ack.
//!
//! A receive that finds nothing may wait (long polling, as in SQS): the
//! writer parks it, and the batch that next makes messages of its queue
//! receivable (sends, a job, a redrive, the settlement of a grouped message,
//! a retry without delay) leases them to it in the same transaction. A
//! message then reaches a waiting worker with the commit that stores it, not
//! one commit later. Leases made for a receive whose caller has gone are
//! given back at once.
//! Knows nothing of wasm, functions or HTTP.

use super::{
    BoxFuture, Clock, DEDUP_WINDOW, DeadLetter, Delivery, MAX_WAIT, Message, NewMessage,
    QueueBackend, QueueError, QueueStats, Receipt, Sent, Settlement,
};
use crate::jobs::{JobRecord, JobState, JobStore, JobUpdate, NewJob};
use rusqlite::{Connection, OptionalExtension, Transaction, params};
use std::path::Path;
use std::sync::Arc;
use std::sync::mpsc;
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

/// The most operations applied in one transaction.
pub const MAX_BATCH: usize = 2048;

/// Operations waiting for the writer; sends block (await) when it is full.
const QUEUE_DEPTH: usize = 16 * 1024;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS queue_messages (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL,
    queue TEXT NOT NULL,
    body BLOB NOT NULL,
    attributes TEXT NOT NULL,
    enqueued_at_ms INTEGER NOT NULL,
    visible_at_ms INTEGER NOT NULL,
    dequeue_count INTEGER NOT NULL DEFAULT 0,
    dedup_id TEXT,
    group_key TEXT,
    priority INTEGER NOT NULL DEFAULT 0,
    correlation_id TEXT,
    reply_to TEXT,
    lease TEXT,
    last_error TEXT,
    checkpoint BLOB
);
CREATE INDEX IF NOT EXISTS queue_messages_order ON queue_messages (queue, priority DESC, seq);
CREATE INDEX IF NOT EXISTS queue_messages_group ON queue_messages (queue, group_key, seq) WHERE group_key IS NOT NULL;
CREATE TABLE IF NOT EXISTS queue_dead_letters (
    id TEXT PRIMARY KEY,
    queue TEXT NOT NULL,
    body BLOB NOT NULL,
    attributes TEXT NOT NULL,
    enqueued_at_ms INTEGER NOT NULL,
    dequeue_count INTEGER NOT NULL,
    dedup_id TEXT,
    group_key TEXT,
    priority INTEGER NOT NULL,
    correlation_id TEXT,
    reply_to TEXT,
    error TEXT NOT NULL,
    function TEXT,
    dead_at_ms INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS queue_dead_letters_queue ON queue_dead_letters (queue, dead_at_ms);
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    function TEXT NOT NULL,
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    progress INTEGER,
    progress_message TEXT,
    result_status INTEGER,
    result_headers TEXT,
    result BLOB,
    error TEXT,
    created_at_ms INTEGER NOT NULL,
    started_at_ms INTEGER,
    finished_at_ms INTEGER,
    expires_at_ms INTEGER,
    callback_url TEXT,
    reply_to TEXT,
    correlation_id TEXT,
    not_before_ms INTEGER
);
CREATE INDEX IF NOT EXISTS jobs_expiry ON jobs (expires_at_ms) WHERE expires_at_ms IS NOT NULL;
CREATE TABLE IF NOT EXISTS queue_dedup (
    queue TEXT NOT NULL,
    dedup_id TEXT NOT NULL,
    message_id TEXT NOT NULL,
    expires_at_ms INTEGER NOT NULL,
    PRIMARY KEY (queue, dedup_id)
);
";

const MESSAGE_COLUMNS: &str = "id, queue, body, attributes, enqueued_at_ms, visible_at_ms, dequeue_count, dedup_id, group_key, priority, correlation_id, reply_to, last_error";

type Reply<T> = oneshot::Sender<Result<T, QueueError>>;

enum Op {
    Send(String, Vec<NewMessage>, Reply<Vec<Sent>>),
    /// Queue, most messages, visibility, how long to wait for one.
    Receive(String, usize, Duration, Duration, Reply<Vec<Delivery>>),
    Settle(Receipt, Settlement, Vec<(String, NewMessage)>, Reply<bool>),
    Retry(Receipt, Duration, String, Reply<bool>),
    Renew(Receipt, Duration, Reply<bool>),
    Checkpoint(Receipt, Vec<u8>, Reply<bool>),
    /// Leases nobody received: the messages are receivable again at once.
    Release(Vec<Receipt>, Reply<()>),
    Submit(NewJob, Reply<JobRecord>),
    JobUpdate(String, JobUpdate, Reply<bool>),
    JobGet(String, Reply<Option<JobRecord>>),
    Stats(String, Reply<QueueStats>),
    Backlog(String, u64, Reply<u64>),
    Pending(String, u64, Reply<u64>),
    Queues(Reply<Vec<String>>),
    Peek(String, usize, Reply<Vec<Message>>),
    DeadLetters(String, usize, Reply<Vec<DeadLetter>>),
    Redrive(String, Option<Vec<String>>, Reply<u64>),
    PurgeDead(String, Option<Vec<String>>, Reply<u64>),
    Purge(String, Reply<u64>),
}

impl Op {
    /// Reads that are answered by the reader thread: they change nothing and
    /// may visit a whole queue. (`Backlog` and `Pending` stay with the
    /// writer: they are capped, and their callers want them in step with the
    /// leases and settlements.)
    fn is_read(&self) -> bool {
        matches!(
            self,
            Op::Stats(..) | Op::Peek(..) | Op::DeadLetters(..) | Op::Queues(..) | Op::JobGet(..)
        )
    }
}

/// The embedded queue store's handle (cheap to clone).
#[derive(Clone)]
pub struct EmbeddedQueues {
    tx: mpsc::SyncSender<Op>,
    reads: mpsc::SyncSender<Op>,
}

impl EmbeddedQueues {
    /// Open (or create) the store in `data_dir` and start its writer thread.
    pub fn open(data_dir: &Path, clock: Arc<dyn Clock>) -> Result<EmbeddedQueues, QueueError> {
        let mut conn = Connection::open(data_dir.join("queues.db")).map_err(db)?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(db)?;
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(db)?;
        conn.set_prepared_statement_cache_capacity(64);
        // Up to 64 MiB of pages cached (the default is 2 MiB): a backlog's
        // rows and indexes stay in memory instead of being re-read per batch.
        conn.pragma_update(None, "cache_size", -65536).map_err(db)?;
        conn.execute_batch(SCHEMA).map_err(db)?;
        // Columns added after the first release of their tables.
        for (table, column, ty) in [
            ("queue_messages", "checkpoint", "BLOB"),
            ("jobs", "not_before_ms", "INTEGER"),
        ] {
            let present: bool = conn
                .prepare(&format!(
                    "SELECT 1 FROM pragma_table_info('{table}') WHERE name = '{column}'"
                ))
                .and_then(|mut s| s.exists([]))
                .map_err(db)?;
            if !present {
                conn.execute_batch(&format!("ALTER TABLE {table} ADD COLUMN {column} {ty}"))
                    .map_err(db)?;
            }
        }
        drop_message_id_index(&mut conn).map_err(db)?;
        let reader = Connection::open(data_dir.join("queues.db")).map_err(db)?;
        reader.pragma_update(None, "query_only", true).map_err(db)?;
        reader.busy_timeout(Duration::from_secs(5)).map_err(db)?;
        reader.set_prepared_statement_cache_capacity(32);
        let (reads, read_rx) = mpsc::sync_channel::<Op>(QUEUE_DEPTH);
        let read_clock = clock.clone();
        std::thread::Builder::new()
            .name("fnhost-queue-reader".into())
            .spawn(move || read_loop(reader, read_clock, read_rx))
            .map_err(|e| QueueError::Backend(format!("cannot start the queue reader: {e}")))?;
        let (tx, rx) = mpsc::sync_channel(QUEUE_DEPTH);
        let writer = Writer {
            conn,
            clock,
            parked: Vec::new(),
            orphans: Orphans::default(),
            batches: 0,
        };
        std::thread::Builder::new()
            .name("fnhost-queue-writer".into())
            .spawn(move || writer.run(rx))
            .map_err(|e| QueueError::Backend(format!("cannot start the queue writer: {e}")))?;
        Ok(EmbeddedQueues { tx, reads })
    }

    fn call<T: Send + 'static>(
        &self,
        op: impl FnOnce(Reply<T>) -> Op,
    ) -> BoxFuture<'_, Result<T, QueueError>> {
        let (reply, rx) = oneshot::channel();
        let handed = self.hand_over(op(reply));
        Box::pin(async move {
            handed.await?;
            rx.await.map_err(|_| stopped())?
        })
    }

    /// Hand `op` to its thread now, not when the returned future is first
    /// polled, so a caller's operations reach the store in the order it made
    /// them (a settlement made before a receive is applied before it). The
    /// future finishes the hand-over when the channel was full.
    fn hand_over(
        &self,
        op: Op,
    ) -> impl std::future::Future<Output = Result<(), QueueError>> + Send + 'static {
        let tx = if op.is_read() { &self.reads } else { &self.tx };
        let waiting = match tx.try_send(op) {
            Ok(()) => Ok(None),
            Err(mpsc::TrySendError::Full(op)) => Ok(Some((tx.clone(), op))),
            Err(mpsc::TrySendError::Disconnected(_)) => Err(stopped()),
        };
        async move {
            // The channel is bounded: when the writer falls behind, wait off the
            // async threads rather than grow without limit.
            if let Some((tx, op)) = waiting? {
                tokio::task::spawn_blocking(move || tx.send(op).map_err(|_| ()))
                    .await
                    .map_err(|_| stopped())?
                    .map_err(|_| stopped())?;
            }
            Ok(())
        }
    }
}

/// A receive's answer on its way. Dropped before it was taken (a worker
/// stopping while its receive waits), the leases it carries are given back
/// at once instead of after their visibility timeout; leases committed after
/// the drop are given back by the writer (see `leases_later`).
struct Receiving {
    rx: Option<oneshot::Receiver<Result<Vec<Delivery>, QueueError>>>,
    tx: mpsc::SyncSender<Op>,
}

impl Drop for Receiving {
    fn drop(&mut self) {
        let Some(mut rx) = self.rx.take() else { return };
        // Closed first: an answer is either already here or never sent (the
        // writer then gives its leases back itself).
        rx.close();
        if let Ok(Ok(unreceived)) = rx.try_recv()
            && !unreceived.is_empty()
        {
            let (reply, _) = oneshot::channel();
            let receipts = unreceived.into_iter().map(|d| d.receipt).collect();
            let _ = self.tx.try_send(Op::Release(receipts, reply));
        }
    }
}

/// Stores made before receipts named rows by number kept a unique index on
/// message ids, which every send and ack had to update. Rebuild such a
/// `queue_messages` table without it, keeping every message and the row
/// numbers' high-water mark (so a number is never reused), in one
/// transaction.
fn drop_message_id_index(conn: &mut Connection) -> rusqlite::Result<()> {
    let old: bool = conn
        .prepare(
            "SELECT 1 FROM sqlite_master WHERE type = 'index' AND tbl_name = 'queue_messages'
             AND name LIKE 'sqlite_autoindex_queue_messages%'",
        )?
        .exists([])?;
    if !old {
        return Ok(());
    }
    let tx = conn.transaction()?;
    let high: i64 = tx.query_row(
        "SELECT MAX(COALESCE((SELECT seq FROM sqlite_sequence WHERE name = 'queue_messages'), 0),
                    COALESCE((SELECT MAX(seq) FROM queue_messages), 0))",
        [],
        |r| r.get(0),
    )?;
    tx.execute_batch(
        "DROP INDEX IF EXISTS queue_messages_order;
         DROP INDEX IF EXISTS queue_messages_group;
         ALTER TABLE queue_messages RENAME TO queue_messages_with_id_index;",
    )?;
    tx.execute_batch(SCHEMA)?;
    tx.execute_batch(&format!(
        "INSERT INTO queue_messages (seq, {MESSAGE_COLUMNS}, lease, checkpoint)
         SELECT seq, {MESSAGE_COLUMNS}, lease, checkpoint FROM queue_messages_with_id_index;
         DROP TABLE queue_messages_with_id_index;
         DELETE FROM sqlite_sequence WHERE name IN ('queue_messages', 'queue_messages_with_id_index');"
    ))?;
    tx.execute(
        "INSERT INTO sqlite_sequence (name, seq) VALUES ('queue_messages', ?1)",
        [high],
    )?;
    tx.commit()
}

/// The reader thread: one read at a time, each in its own read transaction
/// (so a stats call's two counts agree), answered at once.
fn read_loop(mut conn: Connection, clock: Arc<dyn Clock>, rx: mpsc::Receiver<Op>) {
    while let Ok(op) = rx.recv() {
        match conn.transaction() {
            Ok(tx) => {
                let answer = apply_one(&tx, clock.now_ms(), op, &mut Woken::default());
                drop(tx);
                (answer.0)(None);
            }
            Err(e) => fail(op, &db(e)),
        }
    }
}

fn stopped() -> QueueError {
    QueueError::Backend("the queue writer has stopped".into())
}

fn db(e: rusqlite::Error) -> QueueError {
    QueueError::Backend(e.to_string())
}

impl QueueBackend for EmbeddedQueues {
    fn send(&self, queue: &str, msg: NewMessage) -> BoxFuture<'_, Result<Sent, QueueError>> {
        let fut = self.send_batch(queue, vec![msg]);
        Box::pin(async move { Ok(fut.await?.remove(0)) })
    }

    fn send_batch(
        &self,
        queue: &str,
        msgs: Vec<NewMessage>,
    ) -> BoxFuture<'_, Result<Vec<Sent>, QueueError>> {
        if let Err(e) = msgs.iter().try_for_each(|m| super::validate(queue, m)) {
            return Box::pin(async move { Err(e) });
        }
        self.call(|r| Op::Send(queue.to_string(), msgs, r))
    }

    fn receive_waiting(
        &self,
        queue: &str,
        max: usize,
        visibility: Duration,
        wait: Duration,
    ) -> BoxFuture<'_, Result<Vec<Delivery>, QueueError>> {
        let (reply, rx) = oneshot::channel();
        let handed = self.hand_over(Op::Receive(queue.to_string(), max, visibility, wait, reply));
        let mut receiving = Receiving {
            rx: Some(rx),
            tx: self.tx.clone(),
        };
        Box::pin(async move {
            handed.await?;
            let Some(rx) = receiving.rx.as_mut() else {
                return Err(stopped());
            };
            let answer = rx.await;
            receiving.rx.take(); // taken: nothing to give back
            answer.map_err(|_| stopped())?
        })
    }

    fn settle(
        &self,
        receipt: Receipt,
        how: Settlement,
        then: Vec<(String, NewMessage)>,
    ) -> BoxFuture<'_, Result<bool, QueueError>> {
        if let Err(e) = then.iter().try_for_each(|(q, m)| super::validate(q, m)) {
            return Box::pin(async move { Err(e) });
        }
        self.call(|r| Op::Settle(receipt, how, then, r))
    }

    fn retry(
        &self,
        receipt: Receipt,
        delay: Duration,
        error: String,
    ) -> BoxFuture<'_, Result<bool, QueueError>> {
        self.call(|r| Op::Retry(receipt, delay, error, r))
    }

    fn release(&self, receipts: Vec<Receipt>) -> BoxFuture<'_, Result<(), QueueError>> {
        self.call(|r| Op::Release(receipts, r))
    }

    fn checkpoint(
        &self,
        receipt: Receipt,
        state: Vec<u8>,
    ) -> BoxFuture<'_, Result<bool, QueueError>> {
        self.call(|r| Op::Checkpoint(receipt, state, r))
    }

    fn renew(
        &self,
        receipt: Receipt,
        visibility: Duration,
    ) -> BoxFuture<'_, Result<bool, QueueError>> {
        self.call(|r| Op::Renew(receipt, visibility, r))
    }

    fn stats(&self, queue: &str) -> BoxFuture<'_, Result<QueueStats, QueueError>> {
        self.call(|r| Op::Stats(queue.to_string(), r))
    }

    fn backlog(&self, queue: &str, cap: u64) -> BoxFuture<'_, Result<u64, QueueError>> {
        self.call(|r| Op::Backlog(queue.to_string(), cap, r))
    }

    fn pending(&self, queue: &str, cap: u64) -> BoxFuture<'_, Result<u64, QueueError>> {
        self.call(|r| Op::Pending(queue.to_string(), cap, r))
    }

    fn queues(&self) -> BoxFuture<'_, Result<Vec<String>, QueueError>> {
        self.call(Op::Queues)
    }

    fn peek(&self, queue: &str, max: usize) -> BoxFuture<'_, Result<Vec<Message>, QueueError>> {
        self.call(|r| Op::Peek(queue.to_string(), max, r))
    }

    fn dead_letters(
        &self,
        queue: &str,
        max: usize,
    ) -> BoxFuture<'_, Result<Vec<DeadLetter>, QueueError>> {
        self.call(|r| Op::DeadLetters(queue.to_string(), max, r))
    }

    fn redrive(
        &self,
        queue: &str,
        ids: Option<Vec<String>>,
    ) -> BoxFuture<'_, Result<u64, QueueError>> {
        self.call(|r| Op::Redrive(queue.to_string(), ids, r))
    }

    fn purge_dead_letters(
        &self,
        queue: &str,
        ids: Option<Vec<String>>,
    ) -> BoxFuture<'_, Result<u64, QueueError>> {
        self.call(|r| Op::PurgeDead(queue.to_string(), ids, r))
    }

    fn purge(&self, queue: &str) -> BoxFuture<'_, Result<u64, QueueError>> {
        self.call(|r| Op::Purge(queue.to_string(), r))
    }
}

impl JobStore for EmbeddedQueues {
    fn submit(&self, job: NewJob) -> BoxFuture<'_, Result<JobRecord, QueueError>> {
        self.call(|r| Op::Submit(job, r))
    }

    fn update(&self, id: String, update: JobUpdate) -> BoxFuture<'_, Result<bool, QueueError>> {
        self.call(|r| Op::JobUpdate(id, update, r))
    }

    fn get(&self, id: String) -> BoxFuture<'_, Result<Option<JobRecord>, QueueError>> {
        self.call(|r| Op::JobGet(id, r))
    }
}

struct Writer {
    conn: Connection,
    clock: Arc<dyn Clock>,
    /// Receives waiting for messages, in the order they arrived.
    parked: Vec<Parked>,
    orphans: Orphans,
    batches: u64,
}

/// A receive that found nothing and waits, until `until`, for messages.
struct Parked {
    queue: String,
    max: usize,
    visibility: Duration,
    until: Instant,
    reply: Reply<Vec<Delivery>>,
}

/// Queues in which a batch may have made messages receivable: the parked
/// receives of these (and only these) look again before the commit.
#[derive(Default)]
struct Woken(Vec<String>);

impl Woken {
    fn add(&mut self, queue: &str) {
        if !self.0.iter().any(|q| q == queue) {
            self.0.push(queue.to_string());
        }
    }

    fn has(&self, queue: &str) -> bool {
        self.0.iter().any(|q| q == queue)
    }
}

/// Sends a reply, given the commit's error if it failed.
type AfterCommit = Box<dyn FnOnce(Option<&QueueError>) + Send>;

/// A reply to send once the batch's commit has succeeded or failed, and the
/// store's error if the operation itself failed there (which rolls back the
/// whole batch: a half-applied operation must not be committed).
struct Pending(AfterCommit, Option<QueueError>);

impl Writer {
    fn run(mut self, rx: mpsc::Receiver<Op>) {
        loop {
            // Wait for an operation, or until the first parked receive is due.
            let first = match self.parked.iter().map(|p| p.until).min() {
                None => match rx.recv() {
                    Ok(op) => Some(op),
                    Err(_) => break,
                },
                Some(due) => match rx.recv_timeout(due.saturating_duration_since(Instant::now())) {
                    Ok(op) => Some(op),
                    Err(mpsc::RecvTimeoutError::Timeout) => None,
                    Err(mpsc::RecvTimeoutError::Disconnected) => break,
                },
            };
            let mut ops: Vec<Op> = first.into_iter().collect();
            while ops.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(op) => ops.push(op),
                    Err(_) => break,
                }
            }
            self.expire();
            if !ops.is_empty() {
                self.apply(ops);
            }
        }
    }

    /// Answer the parked receives whose wait is over with nothing (their
    /// callers look again, and see delayed messages that have come due),
    /// and forget those whose callers have gone.
    fn expire(&mut self) {
        let now = Instant::now();
        let mut kept = Vec::with_capacity(self.parked.len());
        for p in self.parked.drain(..) {
            if p.reply.is_closed() {
                continue;
            }
            if p.until <= now {
                let _ = p.reply.send(Ok(Vec::new()));
            } else {
                kept.push(p);
            }
        }
        self.parked = kept;
    }

    fn apply(&mut self, ops: Vec<Op>) {
        let now = self.clock.now_ms();
        self.batches += 1;
        let tidy = self.batches.is_multiple_of(1000);
        let tx = match self.conn.transaction() {
            Ok(tx) => tx,
            Err(e) => {
                let err = db(e);
                for op in ops {
                    fail(op, &err);
                }
                return;
            }
        };
        let mut pending = Vec::with_capacity(ops.len());
        let mut woken = Woken::default();
        let mut ops = ops.into_iter();
        // The first operation the store fails (or after which SQLite rolled
        // the transaction back itself) dooms the batch: the rest are not
        // applied (they would run outside the transaction), and no waiting
        // receive is served from it.
        let mut doomed = false;
        for op in ops.by_ref() {
            match op {
                Op::Receive(queue, max, visibility, wait, reply) => {
                    match receive(&tx, now, &queue, max, visibility) {
                        Ok(found) if found.is_empty() && !wait.is_zero() => {
                            self.parked.push(Parked {
                                queue,
                                max,
                                visibility,
                                until: Instant::now() + wait.min(MAX_WAIT),
                                reply,
                            })
                        }
                        found => pending.push(leases_later(reply, found, &self.orphans)),
                    }
                }
                op => pending.push(apply_one(&tx, now, op, &mut woken)),
            }
            if pending.last().is_some_and(|p| p.1.is_some()) || tx.is_autocommit() {
                doomed = true;
                break;
            }
        }
        let skipped: Vec<Op> = ops.collect();
        // Lease what this batch made receivable to the receives waiting for
        // it, in the order they began waiting, in this same transaction.
        if !doomed && !woken.0.is_empty() {
            let mut waiting = Vec::with_capacity(self.parked.len());
            for p in std::mem::take(&mut self.parked) {
                if p.reply.is_closed() {
                    continue;
                }
                if !woken.has(&p.queue) {
                    waiting.push(p);
                    continue;
                }
                match receive(&tx, now, &p.queue, p.max, p.visibility) {
                    Ok(found) if found.is_empty() => waiting.push(p),
                    found => pending.push(leases_later(p.reply, found, &self.orphans)),
                }
            }
            self.parked = waiting;
        }
        if tidy && !doomed {
            let _ = exec(
                &tx,
                "DELETE FROM queue_dedup WHERE expires_at_ms <= ?1",
                [now],
            );
            let _ = exec(&tx, "DELETE FROM jobs WHERE expires_at_ms <= ?1", [now]);
        }
        // An operation the store failed part-way through (or one after
        // which SQLite rolled the transaction back itself) fails the whole
        // batch: every caller hears the error and may try again, and nothing
        // half-done is committed.
        let failure = pending.iter().find_map(|p| p.1.clone());
        let committed = if doomed || failure.is_some() || tx.is_autocommit() {
            drop(tx);
            let cause = failure.map_or_else(
                || "the store rolled the transaction back".to_string(),
                |e| e.to_string(),
            );
            Err(QueueError::Backend(format!(
                "a queue operation failed ({cause}); its whole batch was rolled back, retry it"
            )))
        } else {
            tx.commit().map_err(db)
        };
        for p in pending {
            (p.0)(committed.as_ref().err());
        }
        if let Err(e) = &committed {
            for op in skipped {
                fail(op, e);
            }
        }
        // Leases whose receiver had gone by the time they were committed (a
        // worker stopping): give the messages back now rather than after
        // their visibility timeout.
        let orphans = std::mem::take(&mut *self.orphans.lock().unwrap_or_else(|e| e.into_inner()));
        if !orphans.is_empty() {
            let (reply, _) = oneshot::channel();
            self.apply(vec![Op::Release(orphans, reply)]);
        }
    }
}

/// Answer an op with an error without applying it.
fn fail(op: Op, err: &QueueError) {
    match op {
        Op::Send(_, _, r) => drop(r.send(Err(err.clone()))),
        Op::Receive(_, _, _, _, r) => drop(r.send(Err(err.clone()))),
        Op::Settle(_, _, _, r)
        | Op::Retry(_, _, _, r)
        | Op::Renew(_, _, r)
        | Op::Checkpoint(_, _, r)
        | Op::JobUpdate(_, _, r) => drop(r.send(Err(err.clone()))),
        Op::Submit(_, r) => drop(r.send(Err(err.clone()))),
        Op::Release(_, r) => drop(r.send(Err(err.clone()))),
        Op::JobGet(_, r) => drop(r.send(Err(err.clone()))),
        Op::Stats(_, r) => drop(r.send(Err(err.clone()))),
        Op::Backlog(_, _, r) | Op::Pending(_, _, r) => drop(r.send(Err(err.clone()))),
        Op::Queues(r) => drop(r.send(Err(err.clone()))),
        Op::Peek(_, _, r) => drop(r.send(Err(err.clone()))),
        Op::DeadLetters(_, _, r) => drop(r.send(Err(err.clone()))),
        Op::Redrive(_, _, r) | Op::PurgeDead(_, _, r) | Op::Purge(_, r) => {
            drop(r.send(Err(err.clone())))
        }
    }
}

/// Leases committed for a receiver that had gone, to give back.
type Orphans = Arc<std::sync::Mutex<Vec<Receipt>>>;

/// [`later`] for a receive: leases its receiver is no longer there to take
/// are added to `orphans`, to be given back.
fn leases_later(
    reply: Reply<Vec<Delivery>>,
    result: Result<Vec<Delivery>, QueueError>,
    orphans: &Orphans,
) -> Pending {
    let orphans = orphans.clone();
    later_or(reply, result, move |unreceived| {
        let mut orphans = orphans.lock().unwrap_or_else(|e| e.into_inner());
        orphans.extend(unreceived.into_iter().map(|d| d.receipt));
    })
}

/// The reply to an op applied in a batch, sent once the batch's commit has
/// succeeded (with `result`) or failed (with the commit's error).
fn later<T: Send + 'static>(reply: Reply<T>, result: Result<T, QueueError>) -> Pending {
    later_or(reply, result, |_| {})
}

/// [`later`], handing a committed result its caller is no longer there to
/// take to `unheard`.
fn later_or<T: Send + 'static>(
    reply: Reply<T>,
    result: Result<T, QueueError>,
    unheard: impl FnOnce(T) + Send + 'static,
) -> Pending {
    let failed = match &result {
        Err(e @ QueueError::Backend(_)) => Some(e.clone()),
        _ => None,
    };
    Pending(
        Box::new(move |commit_err| {
            let answer = match commit_err {
                Some(e) => Err(e.clone()),
                None => result,
            };
            if let Err(Ok(value)) = reply.send(answer) {
                unheard(value);
            }
        }),
        failed,
    )
}

/// Mark the queue of row `seq` as woken: its message is receivable now.
fn wake_row(tx: &Transaction<'_>, seq: i64, woken: &mut Woken) -> rusqlite::Result<()> {
    let queue: String = tx
        .prepare_cached("SELECT queue FROM queue_messages WHERE seq = ?1")?
        .query_row([seq], |r| r.get(0))?;
    woken.add(&queue);
    Ok(())
}

/// Apply one op inside the batch's transaction; its reply is sent after the
/// commit. Queues in which it may have made messages receivable are added
/// to `woken`.
fn apply_one(tx: &Transaction<'_>, now: u64, op: Op, woken: &mut Woken) -> Pending {
    match op {
        Op::Send(queue, msgs, r) => {
            woken.add(&queue);
            later(r, msgs.into_iter().map(|m| send(tx, now, &queue, m)).collect())
        }
        Op::Receive(queue, max, vis, _, r) => later(r, receive(tx, now, &queue, max, vis)),
        Op::Settle(rc, how, then, r) => later(r, settle(tx, now, &rc, how, then, woken)),
        Op::Retry(rc, delay, error, r) => later(
            r,
            exec(tx,
                "UPDATE queue_messages SET visible_at_ms = ?3, lease = NULL, last_error = ?4 WHERE seq = ?1 AND lease = ?2",
                params![seq_of(&rc), rc.lease, now + delay.as_millis() as u64, error],
            )
            .and_then(|n| {
                // Receivable again at once: a waiting receive may take it.
                if n == 1 && delay.is_zero() {
                    wake_row(tx, seq_of(&rc), woken)?;
                }
                Ok(n == 1)
            })
            .map_err(db),
        ),
        Op::Renew(rc, vis, r) => later(
            r,
            exec(tx,
                "UPDATE queue_messages SET visible_at_ms = ?3 WHERE seq = ?1 AND lease = ?2",
                params![seq_of(&rc), rc.lease, now + vis.as_millis() as u64],
            )
            .map(|n| n == 1)
            .map_err(db),
        ),
        Op::Release(receipts, r) => {
            let released = receipts.iter().try_for_each(|rc| {
                let n = exec(
                    tx,
                    "UPDATE queue_messages SET lease = NULL, visible_at_ms = ?3,
                     dequeue_count = MAX(dequeue_count - 1, 0) WHERE seq = ?1 AND lease = ?2",
                    params![seq_of(rc), rc.lease, now],
                )?;
                // Receivable again at once: a waiting receive may take it.
                if n == 1 {
                    wake_row(tx, seq_of(rc), woken)?;
                }
                Ok(())
            });
            later(r, released.map_err(db))
        }
        Op::Checkpoint(rc, state, r) => later(
            r,
            exec(tx,
                "UPDATE queue_messages SET checkpoint = ?3 WHERE seq = ?1 AND lease = ?2",
                params![seq_of(&rc), rc.lease, state],
            )
            .map(|n| n == 1)
            .map_err(db),
        ),
        Op::Submit(job, r) => {
            woken.add(&crate::jobs::job_queue(&job.function));
            later(r, submit(tx, now, job))
        }
        Op::JobUpdate(id, update, r) => later(r, job_update(tx, now, &id, update)),
        Op::JobGet(id, r) => later(r, job_get(tx, now, &id)),
        Op::Stats(queue, r) => later(r, stats(tx, now, &queue)),
        Op::Backlog(queue, cap, r) => later(
            r,
            // Visits at most `cap` rows, where a full count visits the whole queue.
            tx.prepare_cached(
                "SELECT COUNT(*) FROM (SELECT 1 FROM queue_messages
                 WHERE queue = ?1 AND (visible_at_ms <= ?2 OR lease IS NOT NULL) LIMIT ?3 + 0)",
            )
            .and_then(|mut s| s.query_row(params![queue, now, cap], |r| r.get(0)))
            .map_err(db),
        ),
        Op::Pending(queue, cap, r) => later(
            r,
            tx.prepare_cached(
                "SELECT COUNT(*) FROM (SELECT 1 FROM queue_messages WHERE queue = ?1 LIMIT ?2 + 0)",
            )
            .and_then(|mut s| s.query_row(params![queue, cap], |r| r.get(0)))
            .map_err(db),
        ),
        Op::Queues(r) => later(r, queues(tx)),
        Op::Peek(queue, max, r) => later(r, peek(tx, &queue, max)),
        Op::DeadLetters(queue, max, r) => later(r, dead_letters(tx, &queue, max)),
        Op::Redrive(queue, ids, r) => {
            woken.add(&queue);
            later(r, redrive(tx, now, &queue, ids.as_deref()))
        }
        Op::PurgeDead(queue, ids, r) => later(r, purge_dead(tx, &queue, ids.as_deref())),
        Op::Purge(queue, r) => later(
            r,
            exec(tx, "DELETE FROM queue_messages WHERE queue = ?1", [queue]).map(|n| n as u64).map_err(db),
        ),
    }
}

/// Run a statement through the connection's statement cache: the hot
/// statements (ack, lease, retry, renew) are parsed once, not per message.
fn exec<P: rusqlite::Params>(
    tx: &Transaction<'_>,
    sql: &str,
    params: P,
) -> rusqlite::Result<usize> {
    tx.prepare_cached(sql)?.execute(params)
}

fn send(tx: &Transaction<'_>, now: u64, queue: &str, m: NewMessage) -> Result<Sent, QueueError> {
    if let Some(dedup) = &m.dedup_id {
        let existing: Option<String> = tx
            .query_row(
                "SELECT message_id FROM queue_dedup WHERE queue = ?1 AND dedup_id = ?2 AND expires_at_ms > ?3",
                params![queue, dedup, now],
                |r| r.get(0),
            )
            .optional()
            .map_err(db)?;
        if let Some(id) = existing {
            return Ok(Sent {
                id,
                duplicate: true,
            });
        }
    }
    let id = uuid::Uuid::now_v7().to_string();
    let attributes =
        serde_json::to_string(&m.attributes).map_err(|e| QueueError::Invalid(e.to_string()))?;
    tx.prepare_cached(
        "INSERT INTO queue_messages (id, queue, body, attributes, enqueued_at_ms, visible_at_ms, dedup_id, group_key, priority, correlation_id, reply_to)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
    )
    .and_then(|mut s| {
        s.execute(params![
            id,
            queue,
            m.body,
            attributes,
            now,
            m.not_before_ms.unwrap_or(now).max(now + m.delay_ms.unwrap_or(0)),
            m.dedup_id,
            m.group,
            m.priority,
            m.correlation_id,
            m.reply_to
        ])
    })
    .map_err(db)?;
    if let Some(dedup) = &m.dedup_id {
        exec(tx,
            "INSERT OR REPLACE INTO queue_dedup (queue, dedup_id, message_id, expires_at_ms) VALUES (?1, ?2, ?3, ?4)",
            params![queue, dedup, id, now + DEDUP_WINDOW.as_millis() as u64],
        )
        .map_err(db)?;
    }
    Ok(Sent {
        id,
        duplicate: false,
    })
}

fn row_to_message(r: &rusqlite::Row<'_>) -> rusqlite::Result<Message> {
    let attributes: String = r.get(3)?;
    Ok(Message {
        id: r.get(0)?,
        queue: r.get(1)?,
        body: r.get(2)?,
        attributes: serde_json::from_str(&attributes).unwrap_or_default(),
        enqueued_at_ms: r.get(4)?,
        visible_at_ms: r.get(5)?,
        dequeue_count: r.get(6)?,
        dedup_id: r.get(7)?,
        group: r.get(8)?,
        priority: r.get(9)?,
        correlation_id: r.get(10)?,
        reply_to: r.get(11)?,
        last_error: r.get(12)?,
        checkpoint: None,
    })
}

/// Receivable messages in delivery order: by priority, then enqueue order;
/// a grouped message only when no earlier message of its group remains.
const READY: &str = "FROM queue_messages m WHERE m.queue = ?1 AND m.visible_at_ms <= ?2
     AND (m.group_key IS NULL OR NOT EXISTS (
         SELECT 1 FROM queue_messages o WHERE o.queue = m.queue AND o.group_key = m.group_key AND o.seq < m.seq))
     ORDER BY m.priority DESC, m.seq LIMIT ?3 + 0";
// (`LIMIT ?3 + 0`, not `LIMIT ?3`: SQLite plans with a bare LIMIT
// parameter's value and so re-prepares the statement whenever it is bound
// to a new value, which cost a re-parse on every receive.)

/// The receive query, built once.
static RECEIVE: std::sync::LazyLock<String> =
    std::sync::LazyLock::new(|| format!("SELECT {MESSAGE_COLUMNS}, checkpoint, seq {READY}"));

/// A fresh lease token for the row `seq`: the row number first, so a
/// receipt finds its row by primary key (no index on message ids to keep up
/// on every send and ack), then a token unguessable across restarts (a random
/// prefix drawn once) and unique within the process (a counter), made
/// without a syscall per message.
fn lease_token(seq: i64) -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static PREFIX: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
        let mut b = [0u8; 8];
        let _ = getrandom::fill(&mut b);
        crate::files::hex(&b)
    });
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!(
        "{seq}.{}{:016x}",
        *PREFIX,
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// The row a receipt names (see [`lease_token`]); a receipt that names none
/// matches no row.
fn seq_of(rc: &Receipt) -> i64 {
    rc.lease
        .split_once('.')
        .and_then(|(seq, _)| seq.parse().ok())
        .unwrap_or(-1)
}

fn receive(
    tx: &Transaction<'_>,
    now: u64,
    queue: &str,
    max: usize,
    vis: Duration,
) -> Result<Vec<Delivery>, QueueError> {
    if max == 0 {
        return Ok(Vec::new());
    }
    let mut messages: Vec<(i64, Message)> = {
        let mut stmt = tx.prepare_cached(&RECEIVE).map_err(db)?;
        stmt.query_map(params![queue, now, max as i64], |r| {
            Ok((
                r.get(14)?,
                Message {
                    checkpoint: r.get(13)?,
                    ..row_to_message(r)?
                },
            ))
        })
        .map_err(db)?
        .collect::<Result<_, _>>()
        .map_err(db)?
    };
    let visible_at = now + vis.as_millis() as u64;
    let mut update = tx
        .prepare_cached(
            "UPDATE queue_messages SET visible_at_ms = ?2, dequeue_count = dequeue_count + 1, lease = ?3 WHERE seq = ?1",
        )
        .map_err(db)?;
    let mut out = Vec::with_capacity(messages.len());
    for (seq, mut m) in messages.drain(..) {
        let lease = lease_token(seq);
        update
            .execute(params![seq, visible_at, lease])
            .map_err(db)?;
        m.visible_at_ms = visible_at;
        m.dequeue_count += 1;
        out.push(Delivery {
            receipt: Receipt {
                id: m.id.clone(),
                lease,
            },
            message: m,
        });
    }
    Ok(out)
}

/// Ack or dead-letter a leased message and, only if that happened, send
/// `then`, in the batch's transaction. The sends were validated before they
/// reached the writer, so what can still fail here is the storage itself;
/// such a failure rolls back the whole batch (see `Writer::apply`), so no
/// savepoint is needed (one would cost a statement journal per settlement).
/// The queues of `then`, and the message's own queue when it was grouped (its
/// group's next message is receivable now), are added to `woken`.
fn settle(
    tx: &Transaction<'_>,
    now: u64,
    rc: &Receipt,
    how: Settlement,
    then: Vec<(String, NewMessage)>,
    woken: &mut Woken,
) -> Result<bool, QueueError> {
    if let Settlement::DeadLetter { error, function } = how {
        let moved = exec(
            tx,
            "INSERT INTO queue_dead_letters (id, queue, body, attributes, enqueued_at_ms, dequeue_count, dedup_id, group_key, priority, correlation_id, reply_to, error, function, dead_at_ms)
             SELECT id, queue, body, attributes, enqueued_at_ms, dequeue_count, dedup_id, group_key, priority, correlation_id, reply_to, ?3, ?4, ?5
             FROM queue_messages WHERE seq = ?1 AND lease = ?2",
            params![seq_of(rc), rc.lease, error, function, now],
        )
        .map_err(db)?;
        if moved == 0 {
            return Ok(false);
        }
    }
    // Looked up, then deleted by row number (both by primary key): a
    // `DELETE ... RETURNING` would build a temporary table per settlement.
    let held: Option<(String, bool)> = tx
        .prepare_cached(
            "SELECT queue, group_key IS NOT NULL FROM queue_messages WHERE seq = ?1 AND lease = ?2",
        )
        .and_then(|mut s| {
            s.query_row(params![seq_of(rc), rc.lease], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .optional()
        })
        .map_err(db)?;
    let Some((queue, grouped)) = held else {
        return Ok(false);
    };
    exec(
        tx,
        "DELETE FROM queue_messages WHERE seq = ?1",
        [seq_of(rc)],
    )
    .map_err(db)?;
    if grouped {
        woken.add(&queue);
    }
    for (queue, m) in then {
        woken.add(&queue);
        send(tx, now, &queue, m)?;
    }
    Ok(true)
}

fn stats(tx: &Transaction<'_>, now: u64, queue: &str) -> Result<QueueStats, QueueError> {
    let (ready, delayed, in_flight, oldest): (u64, u64, u64, Option<u64>) = tx
        .prepare_cached(
            "SELECT
                COALESCE(SUM(visible_at_ms <= ?2), 0),
                COALESCE(SUM(visible_at_ms > ?2 AND lease IS NULL), 0),
                COALESCE(SUM(visible_at_ms > ?2 AND lease IS NOT NULL), 0),
                MIN(CASE WHEN visible_at_ms <= ?2 THEN enqueued_at_ms END)
             FROM queue_messages WHERE queue = ?1",
        )
        .and_then(|mut s| {
            s.query_row(params![queue, now], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
            })
        })
        .map_err(db)?;
    let dead_letters: u64 = tx
        .query_row(
            "SELECT COUNT(*) FROM queue_dead_letters WHERE queue = ?1",
            [queue],
            |r| r.get(0),
        )
        .map_err(db)?;
    Ok(QueueStats {
        queue: queue.to_string(),
        ready,
        delayed,
        in_flight,
        dead_letters,
        oldest_ready_age_ms: oldest.map(|t| now.saturating_sub(t)),
    })
}

fn queues(tx: &Transaction<'_>) -> Result<Vec<String>, QueueError> {
    let mut stmt = tx
        .prepare("SELECT queue FROM queue_messages UNION SELECT queue FROM queue_dead_letters ORDER BY 1")
        .map_err(db)?;
    let names = stmt
        .query_map([], |r| r.get(0))
        .map_err(db)?
        .collect::<Result<_, _>>()
        .map_err(db)?;
    Ok(names)
}

fn peek(tx: &Transaction<'_>, queue: &str, max: usize) -> Result<Vec<Message>, QueueError> {
    let mut stmt = tx
        .prepare(&format!(
            "SELECT {MESSAGE_COLUMNS}, checkpoint FROM queue_messages WHERE queue = ?1 ORDER BY priority DESC, seq LIMIT ?2"
        ))
        .map_err(db)?;
    let rows = stmt
        .query_map(params![queue, max as i64], |r| {
            Ok(Message {
                checkpoint: r.get(13)?,
                ..row_to_message(r)?
            })
        })
        .map_err(db)?;
    rows.collect::<Result<_, _>>().map_err(db)
}

fn dead_letters(
    tx: &Transaction<'_>,
    queue: &str,
    max: usize,
) -> Result<Vec<DeadLetter>, QueueError> {
    let mut stmt = tx
        .prepare(
            "SELECT id, queue, body, attributes, enqueued_at_ms, dead_at_ms, dequeue_count, dedup_id, group_key, priority, correlation_id, reply_to, error, function
             FROM queue_dead_letters WHERE queue = ?1 ORDER BY dead_at_ms, id LIMIT ?2",
        )
        .map_err(db)?;
    let rows = stmt
        .query_map(params![queue, max as i64], |r| {
            let error: String = r.get(12)?;
            Ok(DeadLetter {
                message: Message {
                    last_error: Some(error.clone()),
                    ..row_to_message(r)?
                },
                attempts: r.get(6)?,
                error,
                function: r.get(13)?,
                dead_at_ms: r.get(5)?,
            })
        })
        .map_err(db)?;
    rows.collect::<Result<_, _>>().map_err(db)
}

/// `AND id IN (...)` for an optional id list, with its parameters after `first`.
fn id_filter(ids: Option<&[String]>, first: usize) -> String {
    match ids {
        None => String::new(),
        Some(ids) => {
            let marks: Vec<String> = (0..ids.len()).map(|i| format!("?{}", first + i)).collect();
            format!(" AND id IN ({})", marks.join(", "))
        }
    }
}

fn redrive(
    tx: &Transaction<'_>,
    now: u64,
    queue: &str,
    ids: Option<&[String]>,
) -> Result<u64, QueueError> {
    let filter = id_filter(ids, 3);
    let mut values: Vec<&dyn rusqlite::ToSql> = vec![&queue, &now];
    for id in ids.unwrap_or_default() {
        values.push(id);
    }
    let moved = tx
        .execute(
            &format!(
                "INSERT INTO queue_messages (id, queue, body, attributes, enqueued_at_ms, visible_at_ms, dedup_id, group_key, priority, correlation_id, reply_to, last_error)
                 SELECT id, queue, body, attributes, enqueued_at_ms, ?2, dedup_id, group_key, priority, correlation_id, reply_to, error
                 FROM queue_dead_letters WHERE queue = ?1{filter} ORDER BY dead_at_ms, id"
            ),
            values.as_slice(),
        )
        .map_err(db)?;
    values.remove(1);
    exec(
        tx,
        &format!(
            "DELETE FROM queue_dead_letters WHERE queue = ?1{}",
            id_filter(ids, 2)
        ),
        values.as_slice(),
    )
    .map_err(db)?;
    Ok(moved as u64)
}

fn purge_dead(
    tx: &Transaction<'_>,
    queue: &str,
    ids: Option<&[String]>,
) -> Result<u64, QueueError> {
    let mut values: Vec<&dyn rusqlite::ToSql> = vec![&queue];
    for id in ids.unwrap_or_default() {
        values.push(id);
    }
    let n = tx
        .execute(
            &format!(
                "DELETE FROM queue_dead_letters WHERE queue = ?1{}",
                id_filter(ids, 2)
            ),
            values.as_slice(),
        )
        .map_err(db)?;
    Ok(n as u64)
}

fn submit(tx: &Transaction<'_>, now: u64, job: NewJob) -> Result<JobRecord, QueueError> {
    let id = uuid::Uuid::now_v7().to_string();
    let queue = crate::jobs::job_queue(&job.function);
    let visible_at = job
        .not_before_ms
        .unwrap_or(now)
        .max(now + job.delay_ms.unwrap_or(0));
    exec(tx,
        "INSERT INTO queue_messages (id, queue, body, attributes, enqueued_at_ms, visible_at_ms, correlation_id, reply_to)
         VALUES (?1, ?2, ?3, '[]', ?4, ?5, ?6, ?7)",
        params![id, queue, job.payload, now, visible_at, job.correlation_id, job.reply_to],
    )
    .map_err(db)?;
    let not_before = (visible_at > now).then_some(visible_at);
    exec(tx,
        "INSERT INTO jobs (id, function, state, created_at_ms, callback_url, reply_to, correlation_id, not_before_ms)
         VALUES (?1, ?2, 'queued', ?3, ?4, ?5, ?6, ?7)",
        params![id, job.function, now, job.callback_url, job.reply_to, job.correlation_id, not_before],
    )
    .map_err(db)?;
    job_get(tx, now, &id)?.ok_or_else(|| QueueError::Backend("the new job vanished".into()))
}

fn job_update(
    tx: &Transaction<'_>,
    now: u64,
    id: &str,
    update: JobUpdate,
) -> Result<bool, QueueError> {
    let n = match update {
        JobUpdate::Started { attempt } => exec(
            tx,
            "UPDATE jobs SET state = 'running', attempts = ?2, started_at_ms = COALESCE(started_at_ms, ?3) WHERE id = ?1",
            params![id, attempt, now],
        ),
        JobUpdate::Progress { percent, message } => exec(
            tx,
            "UPDATE jobs SET progress = ?2, progress_message = ?3 WHERE id = ?1",
            params![id, percent, message],
        ),
        JobUpdate::Retrying { error } => exec(
            tx,
            "UPDATE jobs SET state = 'queued', error = ?2 WHERE id = ?1",
            params![id, error],
        ),
        JobUpdate::Finished {
            state,
            output,
            error,
            retention_ms,
        } => {
            let (status, headers, body) = match output {
                Some(o) => (
                    Some(o.status),
                    Some(serde_json::to_string(&o.headers).unwrap_or_default()),
                    Some(o.body),
                ),
                None => (None, None, None),
            };
            exec(tx,
                "UPDATE jobs SET state = ?2, result_status = ?3, result_headers = ?4, result = ?5, error = ?6,
                 finished_at_ms = ?7, expires_at_ms = ?8,
                 progress = CASE WHEN ?2 = 'succeeded' THEN 100 ELSE progress END WHERE id = ?1",
                params![id, state.as_str(), status, headers, body, error, now, now + retention_ms],
            )
        }
    };
    n.map(|n| n == 1).map_err(db)
}

fn job_get(tx: &Transaction<'_>, now: u64, id: &str) -> Result<Option<JobRecord>, QueueError> {
    tx.query_row(
        "SELECT id, function, state, attempts, progress, progress_message, result_status, result_headers, result, error,
                created_at_ms, started_at_ms, finished_at_ms, expires_at_ms, callback_url, reply_to, correlation_id, not_before_ms
         FROM jobs WHERE id = ?1 AND (expires_at_ms IS NULL OR expires_at_ms > ?2)",
        params![id, now],
        |r| {
            let state: String = r.get(2)?;
            let headers: Option<String> = r.get(7)?;
            Ok(JobRecord {
                id: r.get(0)?,
                function: r.get(1)?,
                state: JobState::parse(&state),
                attempts: r.get(3)?,
                progress: r.get(4)?,
                progress_message: r.get(5)?,
                result_status: r.get(6)?,
                result_headers: headers.and_then(|h| serde_json::from_str(&h).ok()).unwrap_or_default(),
                result: r.get(8)?,
                error: r.get(9)?,
                created_at_ms: r.get(10)?,
                started_at_ms: r.get(11)?,
                finished_at_ms: r.get(12)?,
                expires_at_ms: r.get(13)?,
                callback_url: r.get(14)?,
                reply_to: r.get(15)?,
                correlation_id: r.get(16)?,
                not_before_ms: r.get(17)?,
            })
        },
    )
    .optional()
    .map_err(db)
}

#[cfg(test)]
mod tests;
