//! The embedded queue store: SQLite (`<data-dir>/queues.db`, WAL,
//! `synchronous=FULL`) behind one writer thread that commits in groups.
//!
//! Every change is sent to the writer thread ([`writer`]), which takes
//! everything that is waiting (up to [`MAX_BATCH`]), applies it in one
//! transaction and commits once: one fsync covers many enqueues, leases and
//! acks, and no caller hears `Ok` before its change is on disk. One bad
//! operation never fails the others of its batch: a batch in which one
//! fails is rolled back and applied again in halves, down to the operation
//! at fault, which alone hears its error. Reads that may visit a whole queue
//! (stats, peek, dead letters, the queue list, a job record) go to a reader
//! thread with its own connection instead, which sees every committed change
//! (WAL readers do not block the writer): a dashboard counting a million
//! messages must not hold up every enqueue and ack.
//!
//! A receive that finds nothing may wait (long polling, as in SQS): the
//! writer parks it, and the batch that next makes messages of its queue
//! receivable (sends, a job, a redrive, the settlement of a grouped message,
//! a retry without delay) leases them to it in the same transaction. A
//! message then reaches a waiting worker with the commit that stores it, not
//! one commit later. Leases made for a receive whose caller has gone are
//! given back at once.
//!
//! The writer and reader threads are in [`writer`], the requests they take
//! in [`ops`], and the SQL in [`messages`] (messages, leases, dead letters)
//! and [`jobs`] (async job records). Knows nothing of wasm, functions or
//! HTTP.

mod apply;
mod jobs;
mod messages;
mod ops;
mod writer;

use crate::jobs::{JobRecord, JobStore, JobUpdate, NewJob};
use crate::queue::{
    Clock, DeadLetter, Delivery, Message, NewMessage, QueueError, QueueStats, Receipt, Sent,
    Settlement,
};
use crate::queue::{QueueAdmin, QueueDelivery};
use crate::task::BoxFuture;
use messages::MESSAGE_COLUMNS;
use ops::{Answer, Op, Req};
use rusqlite::Connection;
use std::path::Path;
use std::sync::Arc;
use std::sync::mpsc;
use std::time::Duration;
use tokio::sync::oneshot;

pub use writer::MAX_BATCH;

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
    not_before_ms INTEGER,
    callback_pending INTEGER NOT NULL DEFAULT 0
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

/// The embedded queue store's handle (cheap to clone).
#[derive(Clone)]
pub struct EmbeddedQueues {
    tx: mpsc::SyncSender<Op>,
    reads: mpsc::SyncSender<Op>,
    clock: Arc<dyn Clock>,
}

impl EmbeddedQueues {
    /// Open (or create) the store in `data_dir` and start its writer thread.
    pub fn open(data_dir: &Path, clock: Arc<dyn Clock>) -> Result<EmbeddedQueues, QueueError> {
        messages::draw_lease_prefix()?;
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
            ("jobs", "callback_pending", "INTEGER NOT NULL DEFAULT 0"),
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
        conn.execute_batch(
            "CREATE INDEX IF NOT EXISTS jobs_callbacks ON jobs (finished_at_ms) WHERE callback_pending = 1;",
        )
        .map_err(db)?;
        drop_message_id_index(&mut conn).map_err(db)?;
        let reader = Connection::open(data_dir.join("queues.db")).map_err(db)?;
        reader.pragma_update(None, "query_only", true).map_err(db)?;
        reader.busy_timeout(Duration::from_secs(5)).map_err(db)?;
        reader.set_prepared_statement_cache_capacity(32);
        let (reads, read_rx) = mpsc::sync_channel::<Op>(QUEUE_DEPTH);
        let read_clock = clock.clone();
        std::thread::Builder::new()
            .name("fnhost-queue-reader".into())
            .spawn(move || writer::read_loop(reader, read_clock, read_rx))
            .map_err(|e| QueueError::backend(format!("cannot start the queue reader: {e}")))?;
        let (tx, rx) = mpsc::sync_channel(QUEUE_DEPTH);
        let writer = writer::Writer::new(conn, clock.clone());
        std::thread::Builder::new()
            .name("fnhost-queue-writer".into())
            .spawn(move || writer.run(rx))
            .map_err(|e| QueueError::backend(format!("cannot start the queue writer: {e}")))?;
        Ok(EmbeddedQueues { tx, reads, clock })
    }

    /// Hand `req` to its thread and wait for the answer, picked by `pick`.
    fn call<T: Send + 'static>(
        &self,
        req: Req,
        pick: fn(Answer) -> Option<T>,
    ) -> BoxFuture<'_, Result<T, QueueError>> {
        let (reply, rx) = oneshot::channel();
        let handed = self.hand_over(Op { req, reply });
        Box::pin(async move {
            handed.await?;
            let answer = rx.await.map_err(|_| stopped())??;
            pick(answer).ok_or_else(|| {
                QueueError::backend("the queue store answered with the wrong kind of result")
            })
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
        let tx = if op.req.is_read() {
            &self.reads
        } else {
            &self.tx
        };
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

    /// Settle with replies (checked before anything reaches the writer)
    /// and, for a job, its record's end.
    fn settle_with(
        &self,
        receipt: Receipt,
        how: Settlement,
        then: Vec<(String, NewMessage)>,
        job: Option<(String, JobUpdate)>,
    ) -> BoxFuture<'_, Result<bool, QueueError>> {
        let now = self.clock.now_ms();
        if let Err(e) = then
            .iter()
            .try_for_each(|(q, m)| crate::queue::validate(q, m, now))
        {
            return Self::refuse(e);
        }
        self.call(Req::Settle(receipt, how, then, job), done)
    }

    /// Refuse at once, before anything reaches the writer.
    fn refuse<T: Send + 'static>(e: QueueError) -> BoxFuture<'static, Result<T, QueueError>> {
        Box::pin(async move { Err(e) })
    }
}

/// A receive's answer on its way. Dropped before it was taken (a worker
/// stopping while its receive waits), the leases it carries are given back
/// at once instead of after their visibility timeout; leases committed after
/// the drop are given back by the writer.
struct Receiving {
    rx: Option<oneshot::Receiver<Result<Answer, QueueError>>>,
    tx: mpsc::SyncSender<Op>,
}

impl Drop for Receiving {
    fn drop(&mut self) {
        let Some(mut rx) = self.rx.take() else { return };
        // Closed first: an answer is either already here or never sent (the
        // writer then gives its leases back itself).
        rx.close();
        if let Ok(Ok(Answer::Deliveries(unreceived))) = rx.try_recv()
            && !unreceived.is_empty()
        {
            let receipts = unreceived.into_iter().map(|d| d.receipt).collect();
            let _ = self.tx.try_send(Op::unanswered(Req::Release(receipts)));
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

fn stopped() -> QueueError {
    QueueError::backend("the queue writer has stopped")
}

fn db(e: rusqlite::Error) -> QueueError {
    QueueError::caused_by(e)
}

impl QueueDelivery for EmbeddedQueues {
    fn send(&self, queue: &str, msg: NewMessage) -> BoxFuture<'_, Result<Sent, QueueError>> {
        let fut = self.send_batch(queue, vec![msg]);
        Box::pin(async move { Ok(fut.await?.remove(0)) })
    }

    fn send_batch(
        &self,
        queue: &str,
        msgs: Vec<NewMessage>,
    ) -> BoxFuture<'_, Result<Vec<Sent>, QueueError>> {
        let now = self.clock.now_ms();
        if let Err(e) = msgs
            .iter()
            .try_for_each(|m| crate::queue::validate(queue, m, now))
        {
            return Self::refuse(e);
        }
        self.call(Req::Send(queue.to_string(), msgs), |a| match a {
            Answer::Sent(s) => Some(s),
            _ => None,
        })
    }

    fn receive_waiting(
        &self,
        queue: &str,
        max: usize,
        visibility: Duration,
        wait: Duration,
    ) -> BoxFuture<'_, Result<Vec<Delivery>, QueueError>> {
        let (reply, rx) = oneshot::channel();
        let req = Req::Receive {
            queue: queue.to_string(),
            max,
            visibility,
            wait,
        };
        let handed = self.hand_over(Op { req, reply });
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
            match answer.map_err(|_| stopped())?? {
                Answer::Deliveries(d) => Ok(d),
                _ => Err(QueueError::backend(
                    "the queue store answered a receive with the wrong kind of result",
                )),
            }
        })
    }

    fn settle(
        &self,
        receipt: Receipt,
        how: Settlement,
        then: Vec<(String, NewMessage)>,
    ) -> BoxFuture<'_, Result<bool, QueueError>> {
        self.settle_with(receipt, how, then, None)
    }

    fn retry(
        &self,
        receipt: Receipt,
        delay: Duration,
        error: String,
    ) -> BoxFuture<'_, Result<bool, QueueError>> {
        self.call(Req::Retry(receipt, delay, error), done)
    }

    fn release(&self, receipts: Vec<Receipt>) -> BoxFuture<'_, Result<(), QueueError>> {
        self.call(Req::Release(receipts), |a| match a {
            Answer::Nothing => Some(()),
            _ => None,
        })
    }

    fn checkpoint(
        &self,
        receipt: Receipt,
        state: Vec<u8>,
    ) -> BoxFuture<'_, Result<bool, QueueError>> {
        self.call(Req::Checkpoint(receipt, state), done)
    }

    fn renew(
        &self,
        receipt: Receipt,
        visibility: Duration,
    ) -> BoxFuture<'_, Result<bool, QueueError>> {
        self.call(Req::Renew(receipt, visibility), done)
    }

    fn bury(
        &self,
        queue: &str,
        msg: NewMessage,
        error: String,
    ) -> BoxFuture<'_, Result<String, QueueError>> {
        self.call(Req::Bury(queue.to_string(), msg, error), |a| match a {
            Answer::Id(id) => Some(id),
            _ => None,
        })
    }

    fn backlog(&self, queue: &str, cap: u64) -> BoxFuture<'_, Result<u64, QueueError>> {
        self.call(Req::Backlog(queue.to_string(), cap), count)
    }

    fn pending(&self, queue: &str, cap: u64) -> BoxFuture<'_, Result<u64, QueueError>> {
        self.call(Req::Pending(queue.to_string(), cap), count)
    }
}

impl QueueAdmin for EmbeddedQueues {
    fn stats(&self, queue: &str) -> BoxFuture<'_, Result<QueueStats, QueueError>> {
        self.call(Req::Stats(queue.to_string()), |a| match a {
            Answer::Stats(s) => Some(s),
            _ => None,
        })
    }

    fn queues(&self) -> BoxFuture<'_, Result<Vec<String>, QueueError>> {
        self.call(Req::Queues, |a| match a {
            Answer::Names(n) => Some(n),
            _ => None,
        })
    }

    fn peek(&self, queue: &str, max: usize) -> BoxFuture<'_, Result<Vec<Message>, QueueError>> {
        self.call(Req::Peek(queue.to_string(), max), |a| match a {
            Answer::Messages(m) => Some(m),
            _ => None,
        })
    }

    fn dead_letters(
        &self,
        queue: &str,
        max: usize,
    ) -> BoxFuture<'_, Result<Vec<DeadLetter>, QueueError>> {
        self.call(Req::DeadLetters(queue.to_string(), max), |a| match a {
            Answer::DeadLetters(d) => Some(d),
            _ => None,
        })
    }

    fn redrive(
        &self,
        queue: &str,
        ids: Option<Vec<String>>,
    ) -> BoxFuture<'_, Result<u64, QueueError>> {
        self.call(Req::Redrive(queue.to_string(), ids), count)
    }

    fn purge_dead_letters(
        &self,
        queue: &str,
        ids: Option<Vec<String>>,
    ) -> BoxFuture<'_, Result<u64, QueueError>> {
        self.call(Req::PurgeDead(queue.to_string(), ids), count)
    }

    fn purge(&self, queue: &str) -> BoxFuture<'_, Result<u64, QueueError>> {
        self.call(Req::Purge(queue.to_string()), count)
    }
}

fn done(a: Answer) -> Option<bool> {
    match a {
        Answer::Done(b) => Some(b),
        _ => None,
    }
}

fn count(a: Answer) -> Option<u64> {
    match a {
        Answer::Count(n) => Some(n),
        _ => None,
    }
}

impl JobStore for EmbeddedQueues {
    fn submit(&self, job: NewJob) -> BoxFuture<'_, Result<JobRecord, QueueError>> {
        if let Err(e) =
            crate::queue::check_schedule(job.delay_ms, job.not_before_ms, self.clock.now_ms())
        {
            return Self::refuse(e);
        }
        self.call(Req::Submit(job), |a| match a {
            Answer::Job(j) => Some(j),
            _ => None,
        })
    }

    fn update(&self, id: String, update: JobUpdate) -> BoxFuture<'_, Result<bool, QueueError>> {
        self.call(Req::JobUpdate(id, update), done)
    }

    fn get(&self, id: String) -> BoxFuture<'_, Result<Option<JobRecord>, QueueError>> {
        self.call(Req::JobGet(id), |a| match a {
            Answer::MaybeJob(j) => Some(j),
            _ => None,
        })
    }

    fn settle_job(
        &self,
        receipt: Receipt,
        how: Settlement,
        then: Vec<(String, NewMessage)>,
        id: String,
        update: JobUpdate,
    ) -> BoxFuture<'_, Result<bool, QueueError>> {
        self.settle_with(receipt, how, then, Some((id, update)))
    }

    fn pending_callbacks(&self, max: usize) -> BoxFuture<'_, Result<Vec<JobRecord>, QueueError>> {
        self.call(Req::PendingCallbacks(max), |a| match a {
            Answer::Jobs(j) => Some(j),
            _ => None,
        })
    }
}

#[cfg(test)]
mod tests;
